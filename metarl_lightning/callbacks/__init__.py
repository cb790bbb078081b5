from metarl_lightning.callbacks.evaluation import MetaEvalCallback

__all__ = ["MetaEvalCallback"]
