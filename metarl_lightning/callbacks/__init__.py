from metarl_lightning.callbacks.evaluation import MetaEvalCallback
from metarl_lightning.callbacks.interrupt import CheckpointOnInterrupt

__all__ = ["CheckpointOnInterrupt", "MetaEvalCallback"]
