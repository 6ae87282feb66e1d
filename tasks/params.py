"""Typed, validated parameters for every stage (the one schema behind params.yaml).

The DVC CLI, the Prefect flow form and the tests all build these models, so a bad value
is rejected the same way everywhere: with the key, the value and the allowed range.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class StrictModel(BaseModel):
    """Unknown keys are errors: a typo in params.yaml must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class DigitsSource(StrictModel):
    """scikit-learn's 8x8 handwritten digits, captioned from templates."""

    enabled: bool = True
    image_size: int = Field(32, ge=8, le=512, description="side of the upscaled RGB image")
    heldout_fraction: float = Field(0.3, gt=0.0, lt=1.0, description="images kept for evaluation")
    train_templates: list[str] = Field(
        default_factory=lambda: [
            "a photo of the digit {}.",
            "a handwritten {}.",
            "the number {} written by hand.",
            "a scan of the digit {}.",
            "a blurry picture of a handwritten {}.",
            "a small drawing of the number {}.",
        ],
        min_length=1,
    )
    eval_templates: list[str] = Field(
        default_factory=lambda: [
            "an image of the number {}.",
            "a pixelated {} digit.",
            "someone wrote the digit {}.",
        ],
        min_length=1,
        description="templates never seen in training; zero-shot evaluation uses only these",
    )


class TextilesSource(StrictModel):
    """conformal-clip-data textile images: nominal / local / global defects."""

    enabled: bool = True
    max_images: int | None = Field(None, ge=1, description="cap per run (None = all 2,000)")
    heldout_fraction: float = Field(0.3, gt=0.0, lt=1.0)


class ShapesSource(StrictModel):
    """Generated compositional scenes (shape x colour x size x position) with exact captions."""

    enabled: bool = True
    num_pairs: int = Field(2000, ge=10, le=1_000_000)
    image_size: int = Field(64, ge=16, le=512)
    heldout_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    exact_duplicates: int = Field(40, ge=0, description="injected byte-identical copies")
    near_duplicates: int = Field(40, ge=0, description="injected re-encoded / jittered copies")


class UserSource(StrictModel):
    """A folder of images plus a CSV or JSONL of captions (columns: file, caption[, label, id])."""

    images_dir: str | None = None
    captions_file: str | None = None

    @model_validator(mode="after")
    def _both_or_neither(self) -> UserSource:
        if (self.images_dir is None) != (self.captions_file is None):
            raise ValueError("user data needs both images_dir and captions_file, or neither")
        return self


class IngestParams(StrictModel):
    digits: DigitsSource = DigitsSource()
    textiles: TextilesSource = TextilesSource()
    shapes: ShapesSource = ShapesSource()
    user: UserSource = UserSource()
    max_image_bytes: int = Field(20_000_000, ge=1024, description="larger files are quarantined")
    min_image_side: int = Field(8, ge=1, description="smaller images are quarantined")
    max_image_side: int = Field(
        128, ge=16, le=4096, description="larger images are downscaled (aspect kept) before storing"
    )
    max_caption_chars: int = Field(1000, ge=10)


class GateParams(StrictModel):
    """Thresholds of the data-quality gates (Great Expectations suites)."""

    min_rows: int = Field(100, ge=1)
    max_quarantine_fraction: float = Field(0.05, ge=0.0, le=1.0)
    max_caption_chars: int = Field(1000, ge=10)
    min_image_side: int = Field(8, ge=1, description="raw images need both sides >= this")
    known_sources: list[str] = Field(
        default_factory=lambda: ["digits", "textiles", "shapes", "user"],
        min_length=1,
        description="values the pair table's `source` column may take",
    )
    balance_alpha: float = Field(
        1e-3,
        gt=0.0,
        lt=1.0,
        description="gate_curated: chance a correctly balanced table fails the per-entry bound",
    )


class CurateParams(StrictModel):
    """The curate stage: streamed over the pair table plus `pool` inputs, chunk by chunk."""

    pool: list[str] = Field(
        default_factory=list,
        description="extra pool inputs: files or folders of webdataset tar shards / Parquet tables",
    )
    chunk_rows: int = Field(2000, ge=1, le=1_000_000, description="rows read per chunk")
    shard_rows: int = Field(
        10_000, ge=1, le=10_000_000, description="rows per curated output shard"
    )
    max_member_bytes: int = Field(
        20_000_000, ge=1024, description="larger tar members are quarantined"
    )
    min_caption_words: int = Field(2, ge=0, description="DataComp basic: more than N-1 words")
    min_caption_chars: int = Field(5, ge=0)
    min_image_side: int = Field(8, ge=1)
    max_aspect_ratio: float = Field(3.0, ge=1.0)
    language_allowed: list[str] = Field(
        default_factory=lambda: ["en"],
        description="caption languages kept (ISO 639-1); empty list = no language filter",
    )
    language_min_confidence: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="remove a caption another language wins with p >= this",
    )
    exact_dedup: bool = True
    near_dedup: bool = Field(True, description="drop perceptual-hash near-duplicate train images")
    near_dup_max_distance: int = Field(
        6, ge=0, le=64, description="pHash Hamming distance (of 64 bits) of a near-duplicate"
    )
    near_dup_thumbnail_check: bool = Field(
        True, description="confirm pHash pairs by 8x8 thumbnails (pHash alone merges drawings)"
    )
    near_dup_max_thumb_distance: float = Field(
        0.008, ge=0.0, le=2.0, description="1 - thumbnail correlation that confirms a pair"
    )
    eval_near_copy_distance: int | None = Field(
        6, ge=0, le=64, description="pHash distance to an eval image that removes a train row"
    )
    semdedup: bool = Field(True, description="SemDeDup (needs score_model for embeddings)")
    semdedup_clusters: int = Field(20, ge=1, le=1_000_000, description="k-means clusters")
    semdedup_epsilon: float = Field(
        0.02, gt=0.0, lt=1.0, description="drop pairs with cosine > 1 - epsilon in a cluster"
    )
    score_model: str | None = Field(
        None, description="'production' or a model folder: CLIP-score filter + SemDeDup embeddings"
    )
    score_fraction: float | None = Field(
        None, gt=0.0, le=1.0, description="keep this top fraction by CLIP score (DataComp: 0.3)"
    )
    score_threshold: float | None = Field(
        None, ge=-1.0, le=1.0, description="keep pairs with CLIP score >= this"
    )
    score_batch_size: int = Field(256, ge=1, description="embedding batch size")
    wordfreq_top_n: int = Field(
        2000, ge=0, le=500_000, description="metadata entries from wordfreq"
    )
    bigram_sample_rows: int = Field(
        100_000, ge=0, description="captions sampled (by id hash) to mine bigrams; 0 = none"
    )
    bigram_min_count: int = Field(20, ge=1, description="a mined bigram occurs this often")
    bigram_min_pmi: float = Field(
        3.4, description="ln p(xy)/(p(x)p(y)) at least this (ln 30 = 3.4)"
    )
    bigram_max_entries: int = Field(1000, ge=0, description="most frequent mined bigrams kept")
    include_class_names: bool = True
    metadata_file: str | None = Field(None, description="extra entries: a JSON list of strings")
    balance_t: int | None = Field(
        600, ge=1, description="MetaCLIP threshold t: entries above t are sampled"
    )
    balance_tail_share: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="derive t: share of all matches kept (MetaCLIP 2); set balance_t null",
    )
    keep_unmatched: bool = Field(False, description="MetaCLIP drops pairs matching no entry")
    lowercase: bool = Field(
        False, description="lowercase captions before matching (MetaCLIP matches case-sensitively)"
    )
    seed: int = 0

    @model_validator(mode="after")
    def _one_threshold(self) -> CurateParams:
        if (self.balance_t is None) == (self.balance_tail_share is None):
            raise ValueError(
                "set exactly one of curate.balance_t and curate.balance_tail_share "
                f"(got {self.balance_t} and {self.balance_tail_share})"
            )
        if self.score_fraction is not None and self.score_threshold is not None:
            raise ValueError("set at most one of curate.score_fraction and curate.score_threshold")
        return self


class TrainParams(StrictModel):
    """What every training stage shares (one trainer, see tasks/training)."""

    epochs: int = Field(6, ge=1, le=10_000)
    batch_size: int = Field(128, ge=2, le=65_536)
    lr: float = Field(2e-3, gt=0.0, le=1.0)
    weight_decay: float = Field(0.1, ge=0.0, le=10.0)
    warmup_steps: int = Field(50, ge=0)
    grad_clip: float | None = Field(1.0, gt=0.0)
    seed: int = 0
    crop_scale_min: float = Field(
        1.0, gt=0.0, le=1.0, description="random resized crop area share (1.0 = no crop)"
    )
    flip_p: float = Field(
        0.0, ge=0.0, le=1.0, description="horizontal flip chance (0: captions name left/right)"
    )
    accum_steps: int = Field(
        1,
        ge=1,
        le=4096,
        description="gradient accumulation: micro-batches per step; batch_size stays the global "
        "batch (each process runs batch_size / (accum_steps x processes) at a time)",
    )
    checkpoint_every: int = Field(
        200, ge=0, description="steps between resumable checkpoints (0 = none)"
    )
    resume: bool = Field(
        True, description="continue from this stage's checkpoint when a killed run left one"
    )

    @model_validator(mode="after")
    def _accum_divides_batch(self) -> TrainParams:
        if self.batch_size % self.accum_steps:
            raise ValueError(
                f"batch_size={self.batch_size} is not divisible by accum_steps="
                f"{self.accum_steps}: each micro-batch must have the same size"
            )
        return self


class TeacherParams(TrainParams):
    """The teacher: any architecture, optionally from a local checkpoint, towers lockable.

    Locking the image tower is LiT (locked-image tuning): the text tower learns to match a
    PRETRAINED image tower, so `lock_image` needs `pretrained` (whole checkpoint) or
    `pretrained_image` (image-tower weights only). A locked random image tower would make the
    teacher worthless, so that combination is refused, as is locking both towers.
    """

    model: str = Field(
        "clipops-vit-s-minilm",
        description="repo config name, open_clip name, or a path to an open_clip JSON config",
    )
    pretrained: str | None = Field(None, description="local checkpoint path (no downloads)")
    pretrained_image: str | None = Field(
        None, description="local checkpoint whose image tower (visual.*) is loaded, e.g. for LiT"
    )
    lock_text: bool = Field(True, description="lock the pretrained text tower (LLM2CLIP idea)")
    lock_image: bool = Field(
        False, description="lock the pretrained image tower (LiT); needs pretrained weights"
    )
    epochs: int = Field(
        4, ge=1, le=10_000, description="4 reach digits zero-shot acc1 ~0.86 on the bundled mix"
    )

    @model_validator(mode="after")
    def _lockable(self) -> TeacherParams:
        if self.lock_image and self.lock_text:
            raise ValueError(
                "lock_image and lock_text are both true: nothing would train; unlock one tower"
            )
        if self.lock_image and self.pretrained is None and self.pretrained_image is None:
            raise ValueError(
                "lock_image (LiT) needs pretrained image weights: set teacher.pretrained or "
                "teacher.pretrained_image to a local checkpoint"
            )
        return self


class ReinforceParams(StrictModel):
    num_augmentations: int = Field(5, ge=1, le=100, description="k: views per image (MobileCLIP)")
    crop_scale_min: float = Field(0.6, gt=0.0, le=1.0)
    flip_p: float = Field(
        0.5, ge=0.0, le=1.0, description="chance a stored view is mirrored (teacher sees it too)"
    )
    batch_size: int = Field(256, ge=1)
    seed: int = 0
    extra_captions: str = Field(
        "templates",
        min_length=1,
        description="extra captions per image: none | templates (other train templates of the "
        "bundled sources) | path to a CSV/JSONL of id -> caption(s)",
    )
    max_extra_captions: int = Field(
        5, ge=1, le=100, description="extra captions kept per image (MobileCLIP: 5 synthetic)"
    )
    teachers: list[str] = Field(
        default_factory=lambda: ["models/teacher"],
        min_length=1,
        description="teacher model folders (relative to the project root); several = an "
        "ensemble whose embeddings are concatenated",
    )


class DistillParams(TrainParams):
    """Student training on the reinforced dataset; its views come from `reinforce`, so the
    inherited crop_scale_min / flip_p are not used here.

    Loss: `tinyclip` = alpha*w*affinity + (1-alpha)*w*CLIP at teacher scale
    `teacher_logit_scale`; `mobileclip` = w0*CLIP + w1*KD, teacher scale fixed at 100.
    """

    student: str = Field(
        "clipops-vit-xs-minilm",
        description="student config name or JSON path (with progressive: unused)",
    )
    inherit: bool = Field(True, description="TinyCLIP manual weight inheritance from the teacher")
    loss: Literal["tinyclip", "mobileclip"] = Field(
        "tinyclip", description="tinyclip (alpha, weight) or mobileclip (w0, w1)"
    )
    alpha: float = Field(1.0, ge=0.0, le=1.0, description="tinyclip: share of the affinity loss")
    weight: float = Field(1.0, gt=0.0, description="tinyclip: distillation weight w")
    w0: float = Field(0.0, ge=0.0, description="mobileclip: weight of the CLIP loss")
    w1: float = Field(1.0, ge=0.0, description="mobileclip: weight of the KD loss")
    epochs: int = Field(
        16, ge=1, le=10_000, description="16 keeps >= 0.9x the teacher's digits acc1 (8: 0.81x)"
    )
    teacher_logit_scale: float | None = Field(
        100.0,
        gt=0.0,
        le=1000.0,
        description="tinyclip: fixed teacher logit scale (as MobileCLIP: 100); null = the "
        "teacher's own",
    )
    extra_caption_p: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="chance a step uses one of an image's extra captions instead of the real one",
    )
    progressive: list[float | str] = Field(
        default_factory=list,
        description="TinyCLIP multi-stage: fractions of the teacher's vision width and depth "
        "(or config names/paths), e.g. [0.75, 0.5]; the last stage is the student; [] = one "
        "stage with `student`",
    )
    stage_epochs: int | None = Field(
        None, ge=1, le=10_000, description="epochs per non-final progressive stage (null: epochs)"
    )
    compare_scratch: bool = Field(
        False,
        description="also train the student architecture from scratch (plain contrastive, same "
        "steps and batch size) and report its digits acc1 in metrics/distill.json; off by "
        "default: it costs as much as the distillation (~80 s), see bench/distill_vs_scratch",
    )
    lock_text: bool = Field(True, description="lock the student's pretrained text tower")
    max_vision_fraction: float = Field(
        0.25, gt=0.0, le=1.0, description="largest allowed student/teacher vision parameter ratio"
    )

    @model_validator(mode="after")
    def _valid_settings(self) -> DistillParams:
        for step in self.progressive:
            if isinstance(step, float) and not 0.0 < step < 1.0:
                raise ValueError(f"progressive fractions must be in (0, 1), got {step}")
        if self.loss == "mobileclip" and self.w0 + self.w1 <= 0:
            raise ValueError("mobileclip needs w0 + w1 > 0")
        return self


RecipeName = Literal["contrastive", "m2mix", "cleanclip", "locked-text", "moe"]


class FinetuneParams(TrainParams):
    """A fine-tuning recipe (tasks/finetuning), then a WiSE-FT sweep choosing the saved weights."""

    recipe: RecipeName = Field(
        "contrastive",
        description="contrastive | m2mix (geodesic mixup) | cleanclip | locked-text | moe",
    )
    base: Literal["student", "teacher"] = "student"
    epochs: int = Field(2, ge=1, le=10_000)
    lr: float = Field(2e-4, gt=0.0, le=1.0)
    warmup_steps: int = Field(10, ge=0)
    lock_text: bool = Field(True, description="keep the pretrained text tower locked")
    # geodesic multi-modal mixup (m2mix)
    m2mix_weight: float = Field(0.01, ge=0.0, le=10.0, description="weight of the mixup term")
    m2mix_beta: float = Field(0.5, gt=0.0, le=100.0, description="lambda ~ Beta(beta, beta)")
    m2mix_temperature: float = Field(0.07, gt=0.0, le=10.0, description="mixup logits / tau")
    # CleanCLIP
    clip_weight: float = Field(1.0, ge=0.0, le=100.0, description="cleanclip: cross-modal term")
    inmodal_weight: float = Field(
        1.0, ge=0.0, le=100.0, description="cleanclip: in-modal self-supervised term"
    )
    view_crop_scale_min: float = Field(
        0.5, gt=0.0, le=1.0, description="cleanclip: crop area share of the augmented image view"
    )
    view_flip_p: float = Field(0.5, ge=0.0, le=1.0, description="cleanclip: view flip chance")
    text_views: int = Field(
        2, ge=1, le=16, description="cleanclip: augmented variants stored per unique caption"
    )
    word_drop_p: float = Field(
        0.15, ge=0.0, lt=1.0, description="cleanclip: chance a caption word is deleted"
    )
    word_swaps: int = Field(1, ge=0, le=10, description="cleanclip: random word swaps per view")
    # CLIP-MoE upcycling
    moe_experts: int = Field(4, ge=2, le=64, description="experts per upcycled ViT FFN")
    moe_top_k: int = Field(2, ge=1, le=64, description="experts each token is routed to")
    moe_balance_weight: float = Field(
        0.01, ge=0.0, le=10.0, description="weight of the Switch load-balancing term"
    )
    moe_train: Literal["router", "router_experts", "all"] = Field(
        "router_experts",
        description="what moe trains: routers only (needs diverse experts), +experts, or all",
    )
    # WiSE-FT
    wise_ft_alphas: list[float] = Field(
        default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0],
        description="theta = (1-a) base + a fine-tuned, scored per a; [] = keep the fine-tuned",
    )
    wise_ft_val_fraction: float = Field(
        0.1, gt=0.0, lt=0.5, description="train rows held out to choose alpha (not trained on)"
    )

    @model_validator(mode="after")
    def _valid_recipe_settings(self) -> FinetuneParams:
        if self.moe_top_k > self.moe_experts:
            raise ValueError(
                f"moe_top_k ({self.moe_top_k}) must not exceed moe_experts ({self.moe_experts})"
            )
        bad = [a for a in self.wise_ft_alphas if not 0.0 <= a <= 1.0]
        if bad:
            raise ValueError(f"wise_ft_alphas must lie in [0, 1], got {bad}")
        if len(set(self.wise_ft_alphas)) != len(self.wise_ft_alphas):
            raise ValueError(f"wise_ft_alphas has repeated values: {self.wise_ft_alphas}")
        return self


class EvaluateParams(StrictModel):
    models: list[Literal["teacher", "student", "finetuned"]] = Field(
        default_factory=lambda: ["teacher", "student", "finetuned"], min_length=1
    )
    recall_at: list[int] = Field(default_factory=lambda: [1, 5, 10], min_length=1)
    batch_size: int = Field(256, ge=1)
    textiles_templates: list[str] = Field(
        default_factory=lambda: [
            "an image of woven material: {}.",
            "a textile sample labelled {}.",
            "fabric inspection result: {}.",
        ],
        min_length=1,
        description="zero-shot prompts for the textile eval rows; no wording of the train captions",
    )
    retrieval_sources: list[str] = Field(
        default_factory=lambda: ["shapes", "user"],
        min_length=1,
        description="sources whose eval captions describe one image (class-level ones do not)",
    )

    @model_validator(mode="after")
    def _valid_eval_settings(self) -> EvaluateParams:
        if any(k < 1 for k in self.recall_at):
            raise ValueError(f"recall_at values must be >= 1, got {self.recall_at}")
        bad = [t for t in self.textiles_templates if "{}" not in t]
        if bad:
            raise ValueError(f"textiles_templates need a '{{}}' slot for the class name: {bad}")
        return self


class GateEvalParams(StrictModel):
    model: Literal["teacher", "student", "finetuned"] = "finetuned"
    min_zeroshot_acc1: float = Field(0.5, ge=0.0, le=1.0)
    max_regression: float = Field(0.02, ge=0.0, le=1.0, description="allowed drop vs production")


class RegisterParams(StrictModel):
    model_name: str = Field("clipops-clip", pattern=r"^[a-z0-9][a-z0-9._-]*$")
    stage: Literal["teacher", "student", "finetuned"] = "finetuned"
    batch_size: int = Field(256, ge=1)
    keep_versions: int = Field(3, ge=1, description="embedding versions kept per model name")


class StorageParams(StrictModel):
    """Store locations: relative paths are under the project root."""

    registry_url: str = "sqlite:///store/registry.db"
    lancedb_uri: str = "store/lancedb"
    artifacts_uri: str = "store/artifacts"


# `register` is a stage name; pydantic warns only because ABCMeta also has .register.
warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)


class PipelineParams(StrictModel):
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    ingest: IngestParams = IngestParams()
    gate: GateParams = GateParams()
    curate: CurateParams = CurateParams()
    teacher: TeacherParams = TeacherParams()
    reinforce: ReinforceParams = ReinforceParams()
    distill: DistillParams = DistillParams()
    finetune: FinetuneParams = FinetuneParams()
    evaluate: EvaluateParams = EvaluateParams()
    gate_eval: GateEvalParams = GateEvalParams()
    register: RegisterParams = RegisterParams()
    storage: StorageParams = StorageParams()


class ParamsError(ValueError):
    """params.yaml (or a flow parameter) holds a value outside its allowed range."""


def _describe(errors: list[dict[str, Any]], data: dict[str, Any]) -> str:
    lines = []
    for err in errors:
        key = ".".join(str(part) for part in err["loc"])
        value: Any = data
        for part in err["loc"]:
            value = value.get(part, "<missing>") if isinstance(value, dict) else "<missing>"
        lines.append(f"  {key} = {value!r}: {err['msg']}")
    return "invalid parameters:\n" + "\n".join(lines)


def parse_params(data: dict[str, Any] | None) -> PipelineParams:
    """Validate a params mapping; raise ParamsError naming each bad key and its allowed range."""
    data = data or {}
    try:
        return PipelineParams.model_validate(data)
    except ValidationError as exc:
        raise ParamsError(_describe(exc.errors(), data)) from None


def load_params(path: str | Path = "params.yaml") -> PipelineParams:
    """Read and validate params.yaml."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path} not found: run from the project root or pass --params PATH")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path} is not valid YAML: {exc}") from None
    if data is not None and not isinstance(data, dict):
        raise ParamsError(f"{path} must hold a mapping of sections, not {type(data).__name__}")
    return parse_params(data)


def _yaml_lines(model: BaseModel, indent: int = 0) -> list[str]:
    """params.yaml text for `model`: every field, with its description as a comment."""
    pad = "  " * indent
    lines: list[str] = []
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        comment = f"  # {field.description}" if field.description else ""
        if isinstance(value, BaseModel):
            if indent == 0 and lines:
                lines.append("")
            lines.append(f"{pad}{name}:{comment}")
            lines.extend(_yaml_lines(value, indent + 1))
        else:
            dumped = yaml.safe_dump(
                {name: value}, default_flow_style=False, width=1000, sort_keys=False
            ).strip()
            first, *rest = dumped.splitlines()
            lines.append(f"{pad}{first}{comment}")
            lines.extend(f"{pad}{line}" for line in rest)
    return lines


def default_params_yaml() -> str:
    """The defaults of every stage as commented YAML (how params.yaml is generated)."""
    header = "# clipops parameters: validated by tasks/params.py (python -m tasks.params --check)\n"
    return header + "\n".join(_yaml_lines(PipelineParams())) + "\n"


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tasks.params")
    parser.add_argument("--check", metavar="PATH", help="validate a params file")
    parser.add_argument("--write-defaults", metavar="PATH", help="write the defaults as YAML")
    args = parser.parse_args(argv)
    if args.write_defaults:
        Path(args.write_defaults).write_text(default_params_yaml())
    if args.check:
        try:
            load_params(args.check)
        except ParamsError as exc:
            print(exc)
            return 2
        print(f"{args.check}: valid")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
