"""Assign task slots to rollout workers by step cost, not by count.

Meta-World classes differ ~5x in step cost (mujoco contacts: the coffee/door/peg classes are
slow, the button/reach classes fast), and a phase lasts as long as its slowest worker, so the
slots are spread with the longest-processing-time-first rule (Graham 1969: within 4/3 of the
optimal makespan): the costliest slot goes to the least loaded worker, repeatedly.
"""

from __future__ import annotations

# Relative cost of one env.step (random actions, one thread; the cheapest class = 1), from
# `OMP_NUM_THREADS=1 python benchmarks/step_costs.py` (classes timed interleaved, median of 20
# rounds), 2026-12-01 on the project's 2-core VM while other jobs loaded it (load average ~8):
# absolute times were inflated, the ratios agree with issue 12's unloaded figures (push-v3 vs
# window-open-v3: 3.6x here, 3.2x there). Classes not listed cost DEFAULT_COST.
STEP_COST: dict[str, float] = {
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


def slot_costs(class_names: list[str]) -> list[float]:
    """The step cost of each slot from its class name (e.g. 'reach-v3')."""
    return [STEP_COST.get(name, DEFAULT_COST) for name in class_names]


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
