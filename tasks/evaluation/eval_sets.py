"""The held-out sets the evaluate stage scores, cut once from the curated table.

- digits: `split == "eval"`, `source == "digits"`; classes = the sorted distinct labels;
  prompts = only `ingest.digits.eval_templates` (never the training templates).
- textiles: the textile eval rows (nominal / local defect / global defect), prompts from
  `evaluate.textiles_templates`, which share no wording with the textile training captions.
- retrieval: eval rows of `evaluate.retrieval_sources` whose caption is unique to one image.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from tasks.errors import StageError
from tasks.evaluation.retrieval import RetrievalSet, unique_caption_rows
from tasks.params import PipelineParams


@dataclass
class LabelledSet:
    """Images with class labels plus the prompts that define the zero-shot classifier."""

    name: str
    images: list[bytes]
    labels: list[str]
    classnames: list[str]
    templates: list[str]


@dataclass
class EvalSets:
    """Everything one model is scored on; built once, shared by every model."""

    digits: LabelledSet
    textiles: LabelledSet | None  # None when the textile source is absent from the eval rows
    retrieval: RetrievalSet
    skipped: dict[str, str] = field(default_factory=dict)  # optional task -> why it was not run

    def counts(self) -> dict[str, int]:
        """Row counts per set, for the stage summary."""
        return {
            "digits": len(self.digits.images),
            "textiles": len(self.textiles.images) if self.textiles else 0,
            "retrieval_captions": len(self.retrieval.captions),
            "retrieval_images": len(self.retrieval.images),
            "retrieval_dropped_repeated_captions": self.retrieval.dropped_repeated_captions,
        }


def _labelled(rows: pd.DataFrame, name: str, templates: list[str]) -> LabelledSet:
    unlabelled = int(rows["label"].isna().sum())
    if unlabelled:
        raise StageError(
            f"{unlabelled} eval rows of source {name!r} have no label; zero-shot needs the class "
            "of every image: re-run ingest, which labels every row of this source"
        )
    labels = rows["label"].astype(str).tolist()
    return LabelledSet(
        name=name,
        images=rows["image"].tolist(),
        labels=labels,
        classnames=sorted(set(labels)),
        templates=list(templates),
    )


def build_eval_sets(curated: pd.DataFrame, params: PipelineParams) -> EvalSets:
    """Cut the digits, textiles and retrieval sets out of the curated table's eval rows."""
    eval_rows = curated[curated["split"] == "eval"]
    if eval_rows.empty:
        raise StageError(
            "the curated table has no rows with split == 'eval'; check ingest.*.heldout_fraction"
        )
    digits = eval_rows[eval_rows["source"] == "digits"]
    if digits.empty:
        raise StageError(
            "no digits eval rows in the curated table: zero-shot accuracy (read by the eval gate "
            "and the registry) is measured on them; enable ingest.digits"
        )
    digit_set = _labelled(digits, "digits", params.ingest.digits.eval_templates)
    if len(digit_set.classnames) < 2:
        raise StageError(
            f"digits eval rows hold only the class(es) {digit_set.classnames}; zero-shot needs >= 2"
        )
    skipped: dict[str, str] = {}
    textiles = eval_rows[eval_rows["source"] == "textiles"]
    textile_set = None
    if textiles.empty:
        skipped["textiles_zeroshot"] = "no textiles eval rows (ingest.textiles disabled?)"
    else:
        textile_set = _labelled(textiles, "textiles", params.evaluate.textiles_templates)
        if len(textile_set.classnames) < 2:
            skipped["textiles_zeroshot"] = (
                f"textiles eval rows hold only the class(es) {textile_set.classnames}; "
                "zero-shot needs >= 2"
            )
            textile_set = None
    retrieval_rows = eval_rows[eval_rows["source"].isin(params.evaluate.retrieval_sources)]
    retrieval = unique_caption_rows(retrieval_rows)
    if len(retrieval.captions) < 2:
        raise StageError(
            f"retrieval needs >= 2 eval rows with unique captions from sources "
            f"{params.evaluate.retrieval_sources}; found {len(retrieval_rows)} rows, "
            f"{retrieval.dropped_repeated_captions} dropped for repeated captions. "
            "Enable ingest.shapes or set evaluate.retrieval_sources"
        )
    return EvalSets(digits=digit_set, textiles=textile_set, retrieval=retrieval, skipped=skipped)
