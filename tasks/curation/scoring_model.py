"""The model that scores and embeds a pool for curation: a registered version or a model folder.

`spec` "production" is the version behind the registry's `production` alias (the one name
that has the alias; "production:<name>" picks a name when several do); anything else is a
model folder (absolute, or relative to the project root) in the format of tasks.models.io.
A registered version loads from its model folder when that still holds its weights, else
from the artifact store (tasks.register.load_registered_model).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tasks.errors import StageError
from tasks.models.factory import LoadedModel, ModelLoadError

PRODUCTION = "production"


def _load_production(
    name: str | None, root: Path, registry_url: str, artifacts_uri: str, device: str
) -> LoadedModel:
    from storage.artifacts import ArtifactStore
    from storage.registry import Registry, RegistryError, resolve_url
    from tasks.register import load_registered_model

    try:
        registry = Registry(resolve_url(registry_url, root), create=False)
    except RegistryError as exc:
        raise StageError(
            f"scoring model 'production': {exc}; or give a model folder as the scoring model"
        ) from None
    try:
        if name is None:
            names = [n for n in registry.model_names() if registry.get_alias(n, PRODUCTION)]
            if not names:
                raise StageError(
                    f"scoring model 'production': no model in {registry_url} has a production "
                    "alias yet (run the pipeline through register with a passing gate_eval), "
                    "or give a model folder"
                )
            if len(names) > 1:
                raise StageError(
                    f"scoring model 'production' is ambiguous: {names} all have one; "
                    f"write 'production:<name>', e.g. 'production:{names[0]}'"
                )
            name = names[0]
        record = registry.get_alias(name, PRODUCTION)
        if record is None:
            raise StageError(
                f"scoring model 'production:{name}': model {name!r} has no production alias "
                f"(aliases: {registry.aliases(name) or 'none'})"
            )
        store = ArtifactStore.from_params(_Storage(artifacts_uri), root)
        try:
            return load_registered_model(record, store, device)
        except (ModelLoadError, FileNotFoundError, KeyError, ValueError) as exc:
            raise StageError(
                f"scoring model {name} v{record.version} (production) could not be loaded: "
                f"{exc}; its folder {record.model_dir} changed and the artifact store "
                f"{store.root} lacks weights {record.weights_sha256[:12]}..."
            ) from None
    finally:
        registry.close()


class _Storage:
    """The one StorageParams field ArtifactStore.from_params reads."""

    def __init__(self, artifacts_uri: str) -> None:
        self.artifacts_uri = artifacts_uri


def load_scoring_model(
    spec: str,
    root: Path,
    registry_url: str,
    *,
    artifacts_uri: str = "store/artifacts",
    device: str = "cpu",
) -> LoadedModel:
    """Load the scoring model named by `spec` ("production", "production:<name>" or a folder).

    Raises StageError naming what is missing (no registry, no production alias, no folder,
    weights that do not load) and what to do.
    """
    spec = str(spec).strip()
    if spec == PRODUCTION or spec.startswith(PRODUCTION + ":"):
        name = spec.split(":", 1)[1] if ":" in spec else None
        return _load_production(name or None, Path(root), registry_url, artifacts_uri, device)
    from tasks.models.io import load_model

    folder = Path(spec)
    if not folder.is_absolute():
        folder = Path(root) / folder
    if not folder.is_dir():
        raise StageError(
            f"scoring model {spec!r}: {folder} is not a folder; give 'production' or a model "
            "folder written by a training stage (models/<stage>)"
        )
    try:
        return load_model(folder, device)
    except ModelLoadError as exc:
        raise StageError(f"scoring model {spec!r}: {exc}") from None


def embed_pool(
    loaded: LoadedModel,
    images: Sequence[bytes | None],
    captions: Sequence[str],
    batch_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(image, text) embeddings `[N, dim]` float32 with unit rows; rows without image are NaN.

    Each distinct caption is encoded once (template pools repeat captions).
    """
    from tasks.models.encode import encode_images, encode_texts

    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    dim = int(loaded.model_cfg["embed_dim"])
    image_emb = np.full((len(images), dim), np.nan, dtype=np.float32)
    present = [k for k, img in enumerate(images) if img is not None]
    if present:
        image_emb[present] = encode_images(
            loaded, [bytes(images[k]) for k in present], batch_size=batch_size
        )
    unique, inverse = np.unique(
        np.asarray([str(c) for c in captions], dtype=object), return_inverse=True
    )
    if len(unique):
        text_emb = encode_texts(loaded, list(unique), batch_size=batch_size)[inverse]
    else:
        text_emb = np.zeros((0, dim), dtype=np.float32)
    return image_emb, text_emb.astype(np.float32, copy=False)
