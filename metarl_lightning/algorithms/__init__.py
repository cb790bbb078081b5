from metarl_lightning.algorithms.maml_ppo import MAMLPPO, cosine_with_floor

__all__ = ["MAMLPPO", "cosine_with_floor"]
