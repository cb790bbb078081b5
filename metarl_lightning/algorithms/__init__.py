from metarl_lightning.algorithms.base import MetaRLModule, cosine_with_floor
from metarl_lightning.algorithms.maml_ppo import MAMLPPO
from metarl_lightning.algorithms.mt_ppo import MTPPO
from metarl_lightning.algorithms.mt_sac import MTSAC
from metarl_lightning.algorithms.rl2_ppo import RL2PPO

__all__ = ["MAMLPPO", "MTPPO", "MTSAC", "MetaRLModule", "RL2PPO", "cosine_with_floor"]
