from metarl_lightning.algorithms.base import MetaRLModule, cosine_with_floor
from metarl_lightning.algorithms.maml_ppo import MAMLPPO

__all__ = ["MAMLPPO", "MetaRLModule", "cosine_with_floor"]
