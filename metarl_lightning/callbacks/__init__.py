from metarl_lightning.callbacks.budget import EnvStepBudget
from metarl_lightning.callbacks.evaluation import MetaEvalCallback
from metarl_lightning.callbacks.interrupt import CheckpointOnInterrupt
from metarl_lightning.callbacks.progress import IterationProgressBar
from metarl_lightning.callbacks.video import VideoCallback

__all__ = ["CheckpointOnInterrupt", "EnvStepBudget", "IterationProgressBar", "MetaEvalCallback",
           "VideoCallback"]
