"""Data modules, imported on first use (PEP 562; see algorithms/__init__.py for why)."""

import importlib

_LAZY = {"RolloutCollector": "metarl_lightning.data.collector",
         "MetaBatchStream": "metarl_lightning.data.datamodule",
         "MetaWorldDataModule": "metarl_lightning.data.datamodule"}
__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'metarl_lightning.data' has no attribute {name!r}")
