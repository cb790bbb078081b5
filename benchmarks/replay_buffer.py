"""Replay storage for MT-SAC: the plain per-task tensor ring (data/offpolicy.py) against torchrl's
ReplayBuffer with a tensor storage, on MT10's shapes. One round = add one vector-env step (one
transition per task) + draw a task-balanced batch (batch_per_task from every task), as one
gradient step of data/offpolicy.py does. torchrl has no task-balanced sampler, so it gets one
ReplayBuffer per task (extend + sample each). `pip install torchrl` to run the torchrl half.

    OMP_NUM_THREADS=1 python benchmarks/replay_buffer.py
"""

from __future__ import annotations

import argparse
import time

import torch

from metarl_lightning.data.offpolicy import TaskReplayBuffer


def step(tasks: int, obs_dim: int, act_dim: int) -> dict[str, torch.Tensor]:
    return {"obs": torch.randn(tasks, obs_dim), "actions": torch.rand(tasks, act_dim),
            "rewards": torch.rand(tasks), "next_obs": torch.randn(tasks, obs_dim),
            "terminated": torch.zeros(tasks)}


def time_ring(args) -> float:
    buf = TaskReplayBuffer(args.tasks, args.capacity, args.obs_dim, args.act_dim)
    for _ in range(args.fill):
        buf.add(**step(args.tasks, args.obs_dim, args.act_dim))
    data = [step(args.tasks, args.obs_dim, args.act_dim) for _ in range(args.rounds)]
    start = time.perf_counter()
    for s in data:
        buf.add(**s)
        batch = buf.sample(args.batch_per_task)
    assert batch["obs"].shape == (args.tasks, args.batch_per_task, args.obs_dim)
    return (time.perf_counter() - start) / args.rounds


def time_torchrl(args) -> float:
    from tensordict import TensorDict
    from torchrl.data import LazyTensorStorage, ReplayBuffer

    bufs = [ReplayBuffer(storage=LazyTensorStorage(args.capacity), batch_size=args.batch_per_task)
            for _ in range(args.tasks)]
    as_td = lambda s, i: TensorDict({k: v[i:i + 1] for k, v in s.items()}, batch_size=[1])
    for _ in range(args.fill):
        s = step(args.tasks, args.obs_dim, args.act_dim)
        for i, b in enumerate(bufs):
            b.extend(as_td(s, i))
    data = [step(args.tasks, args.obs_dim, args.act_dim) for _ in range(args.rounds)]
    start = time.perf_counter()
    for s in data:
        for i, b in enumerate(bufs):
            b.extend(as_td(s, i))
        batch = torch.stack([b.sample()["obs"] for b in bufs])  # (tasks, n, obs)
    assert batch.shape == (args.tasks, args.batch_per_task, args.obs_dim)
    return (time.perf_counter() - start) / args.rounds


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tasks", type=int, default=10)
    p.add_argument("--capacity", type=int, default=100_000)  # per task: 1e6 over MT10
    p.add_argument("--obs-dim", type=int, default=49)  # 39 + one-hot of 10
    p.add_argument("--act-dim", type=int, default=4)
    p.add_argument("--batch-per-task", type=int, default=128)
    p.add_argument("--fill", type=int, default=5000)
    p.add_argument("--rounds", type=int, default=500)
    args = p.parse_args()
    torch.manual_seed(0)
    ring = time_ring(args)
    print(f"ring:    {ring * 1e3:.3f} ms per add + task-balanced sample")
    try:
        trl = time_torchrl(args)
    except ImportError:
        print("torchrl not installed: pip install torchrl")
        return
    print(f"torchrl: {trl * 1e3:.3f} ms per add + task-balanced sample ({trl / ring:.1f}x ring)")


if __name__ == "__main__":
    main()
