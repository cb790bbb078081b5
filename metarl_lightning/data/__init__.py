from metarl_lightning.data.collector import RolloutCollector
from metarl_lightning.data.datamodule import MetaBatchStream, MetaWorldDataModule

__all__ = ["MetaBatchStream", "MetaWorldDataModule", "RolloutCollector"]
