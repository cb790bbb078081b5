from metarl_lightning.evaluation.adapter import MetaLearnerAgent
from metarl_lightning.evaluation.protocol import EvalResult, Evaluator

__all__ = ["EvalResult", "Evaluator", "MetaLearnerAgent"]
