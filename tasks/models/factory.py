"""A thin factory over open_clip: name -> model, preprocess, tokenizer; local checkpoints; locks.

open_clip does the building. This layer adds what clipops needs on top: repo configs by
name, local `pretrained` paths only (never a download), towers locked on request, and a
loud, specific error when weights do not fit the config they are loaded into.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2

from tasks.models import zoo

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "model.safetensors"


class ModelLoadError(RuntimeError):
    """Weights could not be loaded: missing file, or they belong to a different config."""


@dataclass
class LoadedModel:
    """A model with everything needed to use it and save it again.

    `model_cfg` is the complete open_clip config the model was built from, `preprocess` the
    eval-time PIL transform, `tokenizer` maps a list of strings to token ids, `card` the
    saved card (empty for a freshly created model).
    """

    model: torch.nn.Module
    preprocess: Callable[[Any], torch.Tensor]
    tokenizer: Callable[..., torch.Tensor]
    name: str
    model_cfg: dict[str, Any]
    preprocess_cfg: dict[str, Any]
    card: dict[str, Any] = field(default_factory=dict)

    @property
    def image_size(self) -> int:
        """Side of the square input image."""
        size = self.preprocess_cfg["size"]
        return int(size if isinstance(size, int) else size[0])

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def make_tokenizer(model_cfg: dict[str, Any]) -> Callable[..., torch.Tensor]:
    """The tokenizer a config implies: the HF tokenizer of an HF tower, else CLIP's BPE."""
    text_cfg = model_cfg.get("text_cfg", {})
    context_length = text_cfg.get("context_length", open_clip.tokenizer.DEFAULT_CONTEXT_LENGTH)
    kwargs = dict(text_cfg.get("tokenizer_kwargs", {}))
    if text_cfg.get("hf_tokenizer_name"):
        return open_clip.tokenizer.HFTokenizer(
            text_cfg["hf_tokenizer_name"],
            context_length=context_length,
            tokenizer_mode=text_cfg.get("tokenizer_mode"),
            **kwargs,
        )
    return open_clip.tokenizer.SimpleTokenizer(context_length=context_length, **kwargs)


def hf_pad_id(model: torch.nn.Module) -> int | None:
    """The pad token id of an HF text tower (which masks padding), else None."""
    config = getattr(getattr(model, "text", None), "config", None)
    return getattr(config, "pad_token_id", None)


def trim_padding(tokens: torch.Tensor, pad_id: int | None) -> torch.Tensor:
    """Drop trailing columns that are padding in every row.

    An HF tower masks padding, so its output is unchanged while the cost scales with the
    longest caption in the batch instead of the context length (~3x less for our captions).
    """
    if pad_id is None or tokens.numel() == 0:
        return tokens
    used = (tokens != pad_id).any(dim=0).nonzero()
    return tokens[:, : int(used.max()) + 1] if len(used) else tokens


def length_order(tokens: torch.Tensor, pad_id: int | None) -> torch.Tensor:
    """Row order by token count (stable), so batches of similar length waste little padding.

    With `trim_padding` this roughly halves text-tower time on mixed-length captions; callers
    restore the original order with `order.argsort()`.
    """
    if pad_id is None:
        return torch.arange(len(tokens))
    return torch.argsort((tokens != pad_id).sum(dim=1), stable=True)


def build_model(
    name: str, model_cfg: dict[str, Any], device: torch.device | str = "cpu"
) -> LoadedModel:
    """Instantiate `model_cfg` with open_clip (random init; HF towers get their local weights).

    The config goes through open_clip's `local-dir:` loader from a temp folder, so the model,
    its preprocess config and tokenizer come from exactly the config given, not from a
    registry entry that might have the same name and a different shape.
    """
    model_cfg = zoo.resolve_config(model_cfg)
    # transformers draws a per-tensor "Loading weights" bar for the 22M MiniLM tower: noise.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory(prefix="clipops-build-") as tmp:
        Path(tmp, CONFIG_FILE).write_text(json.dumps({"model_name": name, "model_cfg": model_cfg}))
        # open_clip logs a warning when a local dir has no weights; that is expected here.
        logger = logging.getLogger()
        level = logger.level
        logger.setLevel(logging.ERROR)
        try:
            model = open_clip.create_model(f"local-dir:{tmp}", device=device)
        finally:
            logger.setLevel(level)
    tokenizer = make_tokenizer(model_cfg)
    preprocess_cfg = dict(open_clip.get_model_preprocess_cfg(model))
    preprocess = image_transform_v2(PreprocessCfg(**preprocess_cfg), is_train=False)
    return LoadedModel(model, preprocess, tokenizer, name, model_cfg, preprocess_cfg)


def _describe_source_config(path: Path) -> str:
    """Name the config a checkpoint was saved with, when a clipops config sits next to it."""
    cfg_path = path.parent / CONFIG_FILE
    if cfg_path.exists():
        saved = json.loads(cfg_path.read_text())
        return f"config {saved.get('model_name')!r} ({cfg_path})"
    return "an unknown config (no open_clip_config.json next to it)"


def load_weights(model: torch.nn.Module, path: str | Path, target_name: str) -> None:
    """Load a checkpoint into `model` strictly, via open_clip's converters.

    A mismatch raises ModelLoadError naming the checkpoint's config and the target config,
    with the first missing / unexpected / mis-shaped keys, instead of a bare state-dict dump.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"checkpoint {path} not found (only local files are loaded)")
    try:
        open_clip.load_checkpoint(model, str(path), strict=True, device="cpu")
    except RuntimeError as exc:
        first = str(exc).splitlines()[:4]
        raise ModelLoadError(
            f"weights {path} were saved for {_describe_source_config(path)} and do not fit "
            f"config {target_name!r}: {' '.join(first)} ... load them with the config they "
            "were trained with"
        ) from None


def _resolve_checkpoint(pretrained: str | Path) -> Path:
    """A checkpoint file, or a clipops model folder holding one."""
    path = Path(pretrained)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    if not path.is_file():
        raise ModelLoadError(
            f"pretrained checkpoint {pretrained} not found: give a local .safetensors/.pt file "
            "or a model folder (no downloads are made)"
        )
    return path


def apply_locks(model: torch.nn.Module, lock_text: bool, lock_image: bool) -> None:
    """Freeze whole towers; a locked HF text tower keeps only its projection trainable."""
    if lock_text:
        model.lock_text_tower(unlocked_layers=0, freeze_layer_norm=True)
    if lock_image:
        model.lock_image_tower(unlocked_groups=0, freeze_bn_stats=False)


def create_model(
    name: str,
    pretrained: str | Path | None = None,
    device: torch.device | str = "cpu",
    lock_text: bool = False,
    lock_image: bool = False,
) -> LoadedModel:
    """Build a repo or built-in open_clip model, optionally from a local checkpoint.

    Args:
        name: repo config name (`tasks/model_configs/*.json`) or any open_clip built-in name.
        pretrained: local checkpoint file or clipops model folder; None = fresh init
            (an HF text tower still starts from its pretrained local weights).
        device: where the model lives.
        lock_text / lock_image: freeze that tower (see `apply_locks`).
    Returns:
        LoadedModel with `.model .preprocess .tokenizer .name .model_cfg` (card empty).
    """
    loaded = build_model(name, zoo.get_model_config(name), device="cpu")
    if pretrained is not None:
        load_weights(loaded.model, _resolve_checkpoint(pretrained), name)
    apply_locks(loaded.model, lock_text, lock_image)
    loaded.model.to(device)
    return loaded


def trainable_parameters(model: torch.nn.Module) -> int:
    """Number of parameters that receive gradients."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def vision_parameters(model: torch.nn.Module) -> int:
    """Number of parameters in the image tower."""
    return sum(p.numel() for p in model.visual.parameters())
