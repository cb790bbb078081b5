from metarl_lightning.data.collector import RolloutCollector
from metarl_lightning.data.datamodule import MetaBatchStream, MetaWorldDataModule, make_vector_env

__all__ = ["MetaBatchStream", "MetaWorldDataModule", "RolloutCollector", "make_vector_env"]
