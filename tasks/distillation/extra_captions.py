"""Extra captions for the reinforced dataset (MobileCLIP stores 5 synthetic captions per image).

Here no captioning model ships offline, so the extra captions are other TRUE captions of the
same image, from one of two places (`reinforce.extra_captions`):

- `templates`: the bundled sources' other training wordings: every other digits train
  template with the image's digit (never the eval templates, which zero-shot keeps unseen),
  the other textile captions of its label, and for generated shapes the same scene in the
  other object order and two plain rewordings; user rows get none;
- a path to a user CSV (`id,caption`, one row per caption, an id may repeat) or JSONL
  (`{"id": ..., "captions": [...]}` or `{"id": ..., "caption": ...}` per line).

`none` switches them off. Per image the real caption is removed, duplicates dropped, and at
most `reinforce.max_extra_captions` kept (a seeded choice per pair id when there are more).
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from tasks.distillation.augment_params import image_rng
from tasks.errors import StageError
from tasks.params import PipelineParams
from tasks.sources.textiles import CAPTIONS as TEXTILE_CAPTIONS

SHAPE_REWORDINGS = ("a picture of {}.", "there is {}.")


@dataclass
class ExtraCaptions:
    """Extra captions per pair id, and what was dropped (reason -> count) on the way."""

    by_id: dict[str, list[str]]
    source: str
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.by_id.values())


def template_alternatives(source: str, label: str | None, caption: str, params: PipelineParams):
    """Other true captions of a bundled-source image (see the module docstring)."""
    if source == "digits" and label:
        return [t.format(label) for t in params.ingest.digits.train_templates]
    if source == "textiles" and label in TEXTILE_CAPTIONS:
        return list(TEXTILE_CAPTIONS[label])
    if source == "shapes":
        objects = caption.split(" and ")
        out = [" and ".join(reversed(objects))] if len(objects) > 1 else []
        return out + [t.format(caption) for t in SHAPE_REWORDINGS]
    return []


def read_caption_file(path: Path) -> tuple[dict[str, list[str]], dict[str, int]]:
    """id -> captions from a CSV or JSONL file; bad rows are counted by reason, not fatal."""
    if not path.is_file():
        raise StageError(
            f"reinforce.extra_captions file {path} not found: give a CSV/JSONL path, "
            "'templates' or 'none'"
        )
    found: dict[str, list[str]] = defaultdict(list)
    dropped: dict[str, int] = defaultdict(int)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or not {"id", "caption"} <= set(reader.fieldnames):
                raise StageError(
                    f"{path} needs the columns id and caption (has {reader.fieldnames})"
                )
            for row in reader:
                _add(found, dropped, row.get("id"), [row.get("caption")])
    elif suffix in (".jsonl", ".ndjson"):
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                dropped["malformed_json"] += 1
                continue
            if not isinstance(record, dict):
                dropped["malformed_json"] += 1
                continue
            captions = record.get("captions", [record.get("caption")])
            _add(found, dropped, record.get("id"), captions if isinstance(captions, list) else [])
    else:
        raise StageError(
            f"reinforce.extra_captions file {path}: unknown format {suffix!r} "
            "(use .csv with id,caption or .jsonl with id and captions)"
        )
    return dict(found), dict(dropped)


def _add(found, dropped, pair_id, captions) -> None:
    if not isinstance(pair_id, str) or not pair_id.strip():
        dropped["missing_id"] += 1
        return
    for caption in captions:
        if isinstance(caption, str) and caption.strip():
            found[pair_id.strip()].append(caption.strip())
        else:
            dropped["empty_caption"] += 1


def select(pair_id: str, real: str, candidates: list[str], max_n: int, seed: int) -> list[str]:
    """Distinct candidates other than the real caption, at most `max_n` (seeded by pair id)."""
    distinct = [c for c in dict.fromkeys(candidates) if c != real]
    if len(distinct) <= max_n:
        return distinct
    rng = image_rng(seed, f"extra-captions:{pair_id}")
    keep = sorted(rng.choice(len(distinct), size=max_n, replace=False).tolist())
    return [distinct[i] for i in keep]


def extra_captions_for(train: pd.DataFrame, params: PipelineParams, root: Path) -> ExtraCaptions:
    """The extra captions of every train row, as `reinforce.extra_captions` asks."""
    cfg = params.reinforce
    setting = cfg.extra_captions.strip()
    ids, reals = train["id"].tolist(), train["caption"].tolist()
    if setting == "none":
        return ExtraCaptions({pid: [] for pid in ids}, "none")
    if setting == "templates":
        sources = train["source"].tolist()
        labels = train["label"].tolist() if "label" in train else [None] * len(train)
        by_id = {
            pid: select(
                pid,
                real,
                template_alternatives(src, lab if isinstance(lab, str) else None, real, params),
                cfg.max_extra_captions,
                cfg.seed,
            )
            for pid, real, src, lab in zip(ids, reals, sources, labels, strict=True)
        }
        return ExtraCaptions(by_id, "templates")
    path = Path(setting)
    path = path if path.is_absolute() else root / path
    found, dropped = read_caption_file(path)
    known = set(ids)
    unknown = [pid for pid in found if pid not in known]
    if unknown:
        dropped["id_not_in_train_split"] = sum(len(found[pid]) for pid in unknown)
    by_id = {
        pid: select(pid, real, found.get(pid, []), cfg.max_extra_captions, cfg.seed)
        for pid, real in zip(ids, reals, strict=True)
    }
    return ExtraCaptions(by_id, str(path), dropped)
