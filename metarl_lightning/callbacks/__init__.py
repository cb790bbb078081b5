from metarl_lightning.callbacks.evaluation import MetaEvalCallback
from metarl_lightning.callbacks.interrupt import CheckpointOnInterrupt
from metarl_lightning.callbacks.video import VideoCallback

__all__ = ["CheckpointOnInterrupt", "MetaEvalCallback", "VideoCallback"]
