"""The on-disk model format: `model.safetensors` + `open_clip_config.json` + `card.json`.

The folder loads three ways: `load_model(dir)` here, open_clip's `local-dir:<dir>` schema,
and plain `open_clip.add_model_config(<name>.json)` + `create_model_and_transforms(name,
pretrained=<dir>/model.safetensors)` (the model_cfg is complete, HF paths resolved).
Exception: an upcycled MoE model (the `moe` fine-tuning recipe) loads only with
`load_model`, which rebuilds the experts from the `moe` layout in the config or card
(tasks.models.moe); open_clip's own loaders build dense blocks and reject its weights.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from tasks.models import moe, zoo
from tasks.models.factory import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    LoadedModel,
    ModelLoadError,
    build_model,
    load_weights,
)

CARD_FILE = "card.json"


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _state_dict_for_saving(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies; tied or shared tensors are cloned so safetensors accepts them."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def save_model(
    model: torch.nn.Module,
    model_name: str,
    model_cfg: dict[str, Any],
    out_dir: str | Path,
    card: dict[str, Any],
    preprocess_cfg: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write a model folder and return the card as written.

    Args:
        model: the open_clip model (its state dict is saved, on CPU).
        model_name: the config name (e.g. `clipops-vit-s-minilm`).
        model_cfg: the complete open_clip config the model was built from.
        out_dir: target folder (created; existing files are replaced atomically).
        card: stage, parent ({"stage", "weights_sha256"} or None), params, metrics, ...;
            `weights_sha256` and `model_name` are filled in here.
        preprocess_cfg: image preprocessing; defaults to the one open_clip set on the model.
    """
    import open_clip

    from tasks.training import distributed

    out = Path(out_dir)
    if not distributed.is_main_process():
        # Under torchrun every rank holds the same weights; rank 0 writes, the others wait
        # for it and return the card it wrote.
        distributed.barrier()
        return read_card(out)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / WEIGHTS_FILE
    tmp = out / (WEIGHTS_FILE + ".tmp")
    save_file(_state_dict_for_saving(model), str(tmp), metadata={"model_name": model_name})
    os.replace(tmp, weights)

    if preprocess_cfg is None:
        preprocess_cfg = dict(open_clip.get_model_preprocess_cfg(model))
    config = {
        "model_name": model_name,
        "model_cfg": zoo.resolve_config(model_cfg),
        "preprocess_cfg": {
            k: list(v) if isinstance(v, tuple) else v for k, v in preprocess_cfg.items()
        },
    }
    # An upcycled (MoE) image tower is not an open_clip config: record its layout so
    # load_model can rebuild it (see tasks.models.moe).
    moe_layout = moe.layout_of(model)
    if moe_layout is not None:
        config[moe.MOE_KEY] = moe_layout
        card = {**card, moe.MOE_KEY: moe_layout}
    _atomic_write_text(out / CONFIG_FILE, json.dumps(config, indent=2))
    # The bare config under the model's own name, for `open_clip.add_model_config(<file>)`
    # (open_clip names a config after its file), so get_tokenizer(name) works too.
    _atomic_write_text(out / f"{model_name}.json", json.dumps(config["model_cfg"], indent=2))

    full_card = {
        "stage": card.get("stage"),
        "parent": card.get("parent"),
        "model_name": model_name,
        "weights_sha256": sha256_file(weights),
        "params": card.get("params", {}),
        "metrics": card.get("metrics", {}),
    }
    full_card.update({k: v for k, v in card.items() if k not in full_card})
    _atomic_write_text(out / CARD_FILE, json.dumps(full_card, indent=2, default=str))
    distributed.barrier()
    return full_card


def read_model_config(model_dir: str | Path) -> dict[str, Any]:
    """The parsed `open_clip_config.json` of a model folder."""
    path = Path(model_dir) / CONFIG_FILE
    if not path.exists():
        raise ModelLoadError(
            f"{path} not found: {model_dir} is not a clipops model folder "
            "(run the stage that trains it first)"
        )
    return json.loads(path.read_text())


def read_card(model_dir: str | Path) -> dict[str, Any]:
    """The card of a model folder ({} when it has none)."""
    path = Path(model_dir) / CARD_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def _apply_preprocess_cfg(loaded: LoadedModel, preprocess_cfg: dict[str, Any]) -> None:
    """Use the preprocessing saved with the model (JSON lists back to tuples)."""
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2

    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in preprocess_cfg.items()}
    open_clip.set_model_preprocess_cfg(loaded.model, cfg)
    loaded.preprocess_cfg = cfg
    loaded.preprocess = image_transform_v2(PreprocessCfg(**cfg), is_train=False)


def load_model(
    model_dir: str | Path, device: torch.device | str = "cpu", model_name: str | None = None
) -> LoadedModel:
    """Load a saved model folder, in eval mode, with its preprocess, tokenizer and card.

    `model_name` builds a different config and loads these weights into it (strictly): if
    they do not fit, ModelLoadError names both configs.
    """
    model_dir = Path(model_dir)
    saved = read_model_config(model_dir)
    weights = model_dir / WEIGHTS_FILE
    if model_name is None or model_name == saved["model_name"]:
        name, cfg = saved["model_name"], saved["model_cfg"]
    else:
        name, cfg = model_name, zoo.get_model_config(model_name)
    loaded = build_model(name, cfg, device="cpu")
    if name == saved["model_name"] and saved.get("preprocess_cfg"):
        _apply_preprocess_cfg(loaded, saved["preprocess_cfg"])
    card = read_card(model_dir)
    # MoE layout: from the config, else from the card (the registry keeps the card).
    moe.restore_layout(loaded.model, saved.get(moe.MOE_KEY) or card.get(moe.MOE_KEY))
    load_weights(loaded.model, weights, name)
    loaded.model.to(device).eval()
    loaded.card = card
    return loaded
