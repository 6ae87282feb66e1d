"""Model configs for the teacher and the students: by name or JSON path, and scaled down.

- `model_config("clipops-vit-s-minilm")` or `model_config("path/to/My-ViT.json")`: the
  complete open_clip config (a JSON path is named after its file, as open_clip names it);
- `scaled_config(teacher_cfg, 0.5)`: TinyCLIP's progressive students: the teacher's vision
  width and depth times the fraction, heads scaled with the width and `head_width` kept
  (so manual inheritance keeps whole heads), text tower and embed_dim unchanged;
- `build_from_config(...)`: the model, optionally with a local checkpoint and/or only the
  image tower of another checkpoint (LiT), towers locked on request.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import open_clip
import torch

from tasks.models.factory import (
    WEIGHTS_FILE,
    LoadedModel,
    ModelLoadError,
    apply_locks,
    build_model,
    load_weights,
)
from tasks.models.zoo import UnknownModelError, get_model_config

OPEN_CLIP_HEAD_WIDTH = 64  # open_clip's default vision head_width


def model_config(name_or_path: str) -> tuple[str, dict[str, Any]]:
    """(name, config) of a repo/open_clip model name or of an open_clip JSON config file."""
    path = Path(name_or_path)
    if path.suffix == ".json":
        if not path.is_file():
            raise UnknownModelError(f"model config file {path} not found")
        try:
            cfg = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise UnknownModelError(f"model config {path} is not valid JSON: {exc}") from None
        if not isinstance(cfg, dict) or not {"embed_dim", "vision_cfg", "text_cfg"} <= set(cfg):
            raise UnknownModelError(
                f"model config {path} needs embed_dim, vision_cfg and text_cfg (open_clip format)"
            )
        return path.stem, cfg
    return name_or_path, get_model_config(name_or_path)


def vision_shape(cfg: dict[str, Any]) -> tuple[int, int, int]:
    """(layers, width, head_width) of a ViT config; other towers are refused."""
    vision = cfg.get("vision_cfg", {})
    layers, width = vision.get("layers"), vision.get("width")
    if not isinstance(layers, int) or not isinstance(width, int) or "timm_model_name" in vision:
        raise ValueError(
            "progressive distillation scales open_clip ViT towers (int layers and width); "
            f"this vision_cfg is {vision}"
        )
    return layers, width, int(vision.get("head_width", OPEN_CLIP_HEAD_WIDTH))


def scaled_config(teacher_cfg: dict[str, Any], fraction: float) -> dict[str, Any]:
    """The teacher config with its vision width (heads) and depth times `fraction`."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    layers, width, head_width = vision_shape(teacher_cfg)
    heads = max(1, width // head_width)
    cfg = copy.deepcopy(teacher_cfg)
    cfg["vision_cfg"]["layers"] = max(1, round(layers * fraction))
    cfg["vision_cfg"]["width"] = max(1, round(heads * fraction)) * head_width
    cfg["vision_cfg"]["head_width"] = head_width
    return cfg


def scaled_name(teacher_name: str, fraction: float) -> str:
    """A readable name for a scaled config, e.g. `clipops-vit-s-minilm-p50`."""
    return f"{teacher_name}-p{round(fraction * 100):d}"


def load_image_tower(model: torch.nn.Module, pretrained: str | Path) -> None:
    """Load only the `visual.*` tensors of a checkpoint (file or model folder), strictly."""
    path = Path(pretrained)
    path = path / WEIGHTS_FILE if path.is_dir() else path
    if not path.is_file():
        raise ModelLoadError(f"image-tower checkpoint {pretrained} not found (local files only)")
    state = open_clip.factory.load_state_dict(str(path), device="cpu")
    visual = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
    if not visual:
        raise ModelLoadError(f"{path} holds no visual.* tensors: not a CLIP checkpoint")
    try:
        model.visual.load_state_dict(visual, strict=True)
    except RuntimeError as exc:
        first = " ".join(str(exc).splitlines()[:3])
        raise ModelLoadError(
            f"the image tower in {path} does not fit this config's vision_cfg/embed_dim: {first}"
        ) from None


def build_from_config(
    name: str,
    cfg: dict[str, Any],
    pretrained: str | Path | None = None,
    pretrained_image: str | Path | None = None,
    lock_text: bool = False,
    lock_image: bool = False,
    device: torch.device | str = "cpu",
) -> LoadedModel:
    """Build `cfg`; load a whole checkpoint, then (optionally) another image tower; lock."""
    loaded = build_model(name, cfg, device="cpu")
    if pretrained is not None:
        path = Path(pretrained)
        path = path / WEIGHTS_FILE if path.is_dir() else path
        if not path.is_file():
            raise ModelLoadError(
                f"pretrained checkpoint {pretrained} not found: give a local .safetensors/.pt "
                "file or a model folder (no downloads are made)"
            )
        load_weights(loaded.model, path, name)
    if pretrained_image is not None:
        load_image_tower(loaded.model, pretrained_image)
    apply_locks(loaded.model, lock_text, lock_image)
    loaded.model.to(device)
    return loaded
