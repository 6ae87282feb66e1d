"""The stores behind small interfaces: registry (SQLAlchemy), embeddings (LanceDB), artifacts.

Import from the submodules (`storage.registry`, `storage.embeddings`, `storage.artifacts`);
the names below load lazily so that opening the registry does not import LanceDB.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Registry": "storage.registry",
    "RegistryError": "storage.registry",
    "ModelRecord": "storage.registry",
    "DatasetRecord": "storage.registry",
    "Lineage": "storage.registry",
    "EmbeddingStore": "storage.embeddings",
    "ArtifactStore": "storage.artifacts",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'storage' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
