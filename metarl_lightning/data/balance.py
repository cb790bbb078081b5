"""Assign task slots to rollout workers by step cost, not by count.

Meta-World classes differ in step cost (mujoco contacts: the stick/assembly/push classes are
slow, the button classes fast; ~2.6x for the fast classes, ~5x for the stock ones), and a phase
lasts as long as its slowest worker, so the slots are spread with the
longest-processing-time-first rule (Graham 1969: within 4/3 of the optimal makespan): the
costliest slot goes to the least loaded worker, repeatedly.
"""

from __future__ import annotations

# Relative cost of one env.step of the fast classes training steps by default (envs/fast.py;
# random actions, one thread; the cheapest class = 1), from `OMP_NUM_THREADS=1 python
# benchmarks/step_costs.py` (classes timed interleaved, median of 20 rounds), 2026-12-01 on the
# project's 2-core VM with nothing else running. The fast path removes per-step Python that
# every class paid alike, so these spread 2.6x where the stock classes spread 5x (MT10's
# reach-v3 vs push-v3: 1.2x here, 1.9x stock).
STEP_COST: dict[str, float] = {
    "assembly-v3": 2.40,
    "basketball-v3": 1.62,
    "bin-picking-v3": 2.03,
    "box-close-v3": 2.33,
    "button-press-topdown-v3": 1.02,
    "button-press-topdown-wall-v3": 1.09,
    "button-press-v3": 1.00,
    "button-press-wall-v3": 1.17,
    "coffee-button-v3": 1.49,
    "coffee-pull-v3": 2.23,
    "coffee-push-v3": 2.11,
    "dial-turn-v3": 1.60,
    "disassemble-v3": 2.38,
    "door-close-v3": 1.56,
    "door-lock-v3": 1.53,
    "door-open-v3": 2.03,
    "door-unlock-v3": 1.54,
    "hand-insert-v3": 1.81,
    "drawer-close-v3": 1.57,
    "drawer-open-v3": 1.60,
    "faucet-open-v3": 1.56,
    "faucet-close-v3": 1.56,
    "hammer-v3": 2.39,
    "handle-press-side-v3": 1.31,
    "handle-press-v3": 1.80,
    "handle-pull-side-v3": 1.56,
    "handle-pull-v3": 1.47,
    "lever-pull-v3": 1.55,
    "pick-place-wall-v3": 2.04,
    "pick-out-of-hole-v3": 1.91,
    "pick-place-v3": 2.12,
    "plate-slide-v3": 1.67,
    "plate-slide-side-v3": 1.71,
    "plate-slide-back-v3": 1.55,
    "plate-slide-back-side-v3": 1.63,
    "peg-insert-side-v3": 1.91,
    "peg-unplug-side-v3": 2.11,
    "soccer-v3": 2.02,
    "stick-push-v3": 2.55,
    "stick-pull-v3": 2.42,
    "push-v3": 1.92,
    "push-wall-v3": 1.92,
    "push-back-v3": 1.95,
    "reach-v3": 1.58,
    "reach-wall-v3": 1.79,
    "shelf-place-v3": 2.12,
    "sweep-into-v3": 1.95,
    "sweep-v3": 2.03,
    "window-open-v3": 1.40,
    "window-close-v3": 1.50,
}
# The stock classes' relative costs (benchmark.fast_step=false), from
# `OMP_NUM_THREADS=1 python benchmarks/step_costs.py --stock` (classes timed interleaved, median of 20
# rounds), 2026-12-01 on the project's 2-core VM while other jobs loaded it (load average ~8):
# absolute times were inflated, the ratios agree with issue 12's unloaded figures (push-v3 vs
# window-open-v3: 3.6x here, 3.2x there). Classes not listed cost DEFAULT_COST.
STOCK_STEP_COST: dict[str, float] = {
    "assembly-v3": 1.84,
    "basketball-v3": 1.68,
    "bin-picking-v3": 1.82,
    "box-close-v3": 1.63,
    "button-press-topdown-v3": 1.08,
    "button-press-topdown-wall-v3": 1.10,
    "button-press-v3": 1.24,
    "button-press-wall-v3": 1.00,
    "coffee-button-v3": 1.23,
    "coffee-pull-v3": 4.58,
    "coffee-push-v3": 4.28,
    "dial-turn-v3": 1.29,
    "disassemble-v3": 1.80,
    "door-close-v3": 2.15,
    "door-lock-v3": 1.31,
    "door-open-v3": 2.22,
    "door-unlock-v3": 1.41,
    "hand-insert-v3": 3.05,
    "drawer-close-v3": 1.24,
    "drawer-open-v3": 1.13,
    "faucet-open-v3": 1.03,
    "faucet-close-v3": 1.15,
    "hammer-v3": 1.85,
    "handle-press-side-v3": 1.12,
    "handle-press-v3": 1.40,
    "handle-pull-side-v3": 1.49,
    "handle-pull-v3": 1.48,
    "lever-pull-v3": 2.20,
    "pick-place-wall-v3": 4.08,
    "pick-out-of-hole-v3": 1.78,
    "pick-place-v3": 4.00,
    "plate-slide-v3": 2.45,
    "plate-slide-side-v3": 2.42,
    "plate-slide-back-v3": 2.37,
    "plate-slide-back-side-v3": 2.00,
    "peg-insert-side-v3": 2.68,
    "peg-unplug-side-v3": 1.50,
    "soccer-v3": 3.95,
    "stick-push-v3": 4.56,
    "stick-pull-v3": 4.56,
    "push-v3": 4.33,
    "push-wall-v3": 4.60,
    "push-back-v3": 4.12,
    "reach-v3": 2.30,
    "reach-wall-v3": 2.72,
    "shelf-place-v3": 5.14,
    "sweep-into-v3": 4.09,
    "sweep-v3": 2.95,
    "window-open-v3": 1.20,
    "window-close-v3": 1.21,
}
DEFAULT_COST = 2.0


def slot_costs(class_names: list[str], fast_step: bool = True) -> list[float]:
    """The step cost of each slot from its class name (e.g. 'reach-v3'), for the fast classes
    (envs/fast.py) or the stock ones."""
    table = STEP_COST if fast_step else STOCK_STEP_COST
    return [table.get(name, DEFAULT_COST) for name in class_names]


def assign_slots(costs: list[float], num_workers: int) -> list[list[int]]:
    """Partition slot indices over `num_workers` (clamped to the slot count) by LPT. Each group is
    sorted; ties go to the lower slot / worker index, so the result is deterministic."""
    num_workers = max(1, min(num_workers, len(costs)))
    groups: list[list[int]] = [[] for _ in range(num_workers)]
    load = [0.0] * num_workers
    for slot in sorted(range(len(costs)), key=lambda s: (-costs[s], s)):
        w = min(range(num_workers), key=lambda i: (load[i], i))
        groups[w].append(slot)
        load[w] += costs[slot]
    return [sorted(g) for g in groups]


def makespan_share(costs: list[float], groups: list[list[int]]) -> float:
    """Predicted share of a phase the least loaded worker waits for the most loaded one."""
    loads = [sum(costs[s] for s in g) for g in groups]
    return (max(loads) - min(loads)) / max(max(loads), 1e-12)
