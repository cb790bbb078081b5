"""The methods, imported on first use (PEP 562): a rollout worker imports `algorithms.sampling`,
and an eager package import would pull in Lightning with every method. Measured on the loaded
2-core VM: a spawned worker's imports took ~5.2 s this way and ~3.2 s lazily; tests/test_workers.py
130 s vs 74 s back to back."""

import importlib

_LAZY = {"MetaRLModule": "base", "cosine_with_floor": "base", "MAMLPPO": "maml_ppo",
         "MTPPO": "mt_ppo", "MTSAC": "mt_sac", "RL2PPO": "rl2_ppo"}
__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"metarl_lightning.algorithms.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'metarl_lightning.algorithms' has no attribute {name!r}")
