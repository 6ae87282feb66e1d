"""Trainer throughput: clipops' trainer vs `open_clip_train.main`, and reinforced vs online KD.

    .venv/bin/python -m bench.train_throughput            # default size (a few minutes)
    .venv/bin/python -m bench.train_throughput --rows 64 --batch-size 16 --epochs 2  # smoke

One run, one process, the same machine state for both systems:

1. Data: the bundled sources through the real `ingest` and `curate` stage functions into a
   tmp project; a seeded sample of `--rows` curated TRAIN rows is kept (the curated table is
   rewritten to that sample, so the reinforce stage sees the same rows). open_clip_train reads
   the same rows as image files plus a CSV. (`--data shapes`: generated shapes pairs
   through ingest only, for smoke runs.)
2. For each model config (a locked pretrained MiniLM text tower, and an unlocked text tower):
   our trainer (`tasks.training.train`, `ClipObjective`, `PairTensors`) and
   `open_clip_train.main([...])` in-process, with the same batch size, epochs, AdamW
   (betas 0.9/0.98, eps 1e-6, weight decay), warm-up + cosine lr, grad clip 1.0, fp32, the
   same thread count, no data-loader workers, the same augmentation (random resized crop
   with area share in [0.9, 1], open_clip's default) and the same tower locks.
3. Distillation: the student trained from the reinforced table (`ReinforcedTensors` +
   `AffinityObjective`, teacher never run) vs the same student, data and loss with the
   teacher run online on each batch's freshly sampled views (same rounds as above).

What is timed: a stamp (wall and process CPU time) when each step starts fetching its batch,
and one when training ends. "steady" = from the start of step `--skip-steps` to the end
(model build, data preparation, and the first steps' warm-up excluded); "all" = every
step; "end to end" = model build + data preparation + training (ours: decode images once,
tokenise / embed unique captions; open_clip_train: the whole `main()` call); "data_share"
= the steady-state share of wall time spent building batches. Rates are
samples/s; ratios are ours / open_clip_train (and online / reinforced epoch time). Each
config runs `--repeats` rounds in alternating order and reports the median per-round ratio
(a shared machine's load drifts; a round compares two runs made back to back).
Writes reports/bench/train_throughput.json and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `python bench/train_throughput.py` from anywhere
    sys.path.insert(0, str(REPO_ROOT))

from tasks import curate, ingest, reinforce  # noqa: E402
from tasks.distill import AffinityObjective  # noqa: E402
from tasks.distillation.affinity_loss import AffinityMimickingLoss  # noqa: E402
from tasks.distillation.augment_params import sample_view, view_theta, warp  # noqa: E402
from tasks.distillation.inherit import inherit_weights  # noqa: E402
from tasks.distillation.reinforced_data import ReinforcedTensors  # noqa: E402
from tasks.distillation.reinforced_table import read_reinforced  # noqa: E402
from tasks.layout import Layout  # noqa: E402
from tasks.models import (  # noqa: E402
    LoadedModel,
    create_model,
    encode_texts,
    register_repo_configs,
    save_model,
)
from tasks.pair_table import read_pairs, write_pairs  # noqa: E402
from tasks.params import PipelineParams, TrainParams, parse_params  # noqa: E402
from tasks.training import Augment, ClipObjective, PairTensors, train  # noqa: E402
from tasks.training.data import Batch  # noqa: E402

DEFAULT_OUT = REPO_ROOT / "reports" / "bench" / "train_throughput.json"
# (config, lock_text): the teacher default (small ViT + locked pretrained MiniLM, LLM2CLIP's
# idea) and a from-scratch text tower that trains end to end.
DEFAULT_CONFIGS = ("clipops-vit-s-minilm:locked", "clipops-vit-s-text-s:unlocked")
STUDENT = "clipops-vit-xs-minilm"
OPEN_CLIP_CROP_SCALE = 0.9  # open_clip's default AugmentationCfg.scale = (0.9, 1.0)


# --- settings -----------------------------------------------------------------------------


@dataclass
class BenchSettings:
    """Everything that must be equal between the systems compared."""

    rows: int = 512
    batch_size: int = 128
    epochs: int = 2
    repeats: int = 3
    skip_steps: int = 2
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 4
    grad_clip: float = 1.0
    seed: int = 0
    threads: int = 2
    # "bundled": digits, textiles and shapes through ingest + curate; "shapes": generated
    # shapes through ingest only (a smoke-test size, no curation)
    data: str = "bundled"
    configs: tuple[str, ...] = DEFAULT_CONFIGS
    distill: bool = True
    distill_epochs: int = 2
    num_augmentations: int = 5
    student: str = STUDENT

    def train_params(self, epochs: int | None = None) -> TrainParams:
        return TrainParams(
            epochs=epochs or self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=self.weight_decay,
            warmup_steps=self.warmup_steps,
            grad_clip=self.grad_clip,
            seed=self.seed,
            crop_scale_min=OPEN_CLIP_CROP_SCALE,
            flip_p=0.0,
        )


def parse_config(spec: str) -> tuple[str, bool]:
    """`name:locked` / `name:unlocked` -> (name, lock_text)."""
    name, _, lock = spec.partition(":")
    if lock not in {"locked", "unlocked"}:
        raise ValueError(f"config {spec!r}: expected NAME:locked or NAME:unlocked")
    return name, lock == "locked"


# --- timing -------------------------------------------------------------------------------


@dataclass
class StepClock:
    """Wall and process-CPU stamps at the start of every step, plus one at the end."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    data_wall: list[float] = field(default_factory=list)  # seconds spent building each batch
    end_wall: float = float("nan")
    end_cpu: float = float("nan")

    def tick(self) -> None:
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())

    def untick(self) -> None:
        self.wall.pop()
        self.cpu.pop()

    def batch_built(self) -> None:
        """Called when the batch of the step last ticked is ready."""
        self.data_wall.append(time.perf_counter() - self.wall[-1])

    def stop(self) -> None:
        self.end_wall, self.end_cpu = time.perf_counter(), time.process_time()

    def rates(self, batch_size: int, skip: int) -> dict[str, float]:
        """samples/s over all steps and over steps `skip..` (steady state), wall and CPU."""
        steps = len(self.wall)
        if steps == 0:
            raise RuntimeError("no training step was timed")
        skip = min(skip, steps - 1)
        steady_wall = self.end_wall - self.wall[skip]
        steady_cpu = self.end_cpu - self.cpu[skip]
        all_wall = self.end_wall - self.wall[0]
        return {
            "steps": steps,
            "timed_steps": steps - skip,
            "steady_s": round(steady_wall, 3),
            "samples_per_s": round((steps - skip) * batch_size / steady_wall, 2),
            "samples_per_cpu_s": round((steps - skip) * batch_size / steady_cpu, 2),
            "samples_per_s_all_steps": round(steps * batch_size / all_wall, 2),
            "first_step_s": round(self.wall[1] - self.wall[0], 3) if steps > 1 else None,
            "data_share": round(sum(self.data_wall[skip:]) / steady_wall, 4),
        }


class TimedBatches:
    """A `BatchSource` wrapper that stamps the clock whenever the trainer asks for a batch."""

    def __init__(self, source: Any, clock: StepClock) -> None:
        self.source, self.clock = source, clock

    def __len__(self) -> int:
        return len(self.source)

    def to(self, device: torch.device) -> TimedBatches:
        self.source = self.source.to(device)
        return self

    def batch(self, index: torch.Tensor, generator: torch.Generator) -> Batch:
        self.clock.tick()
        batch = self.source.batch(index, generator)
        self.clock.batch_built()
        return batch

    def __getattr__(self, name: str) -> Any:  # anything else the trainer may ask of the source
        return getattr(self.source, name)


class TimedLoader:
    """A DataLoader wrapper for open_clip_train: stamps the clock before each batch is loaded."""

    def __init__(self, loader: Any, clock: StepClock) -> None:
        self.loader, self.clock = loader, clock
        self.num_batches, self.num_samples = loader.num_batches, loader.num_samples

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        it = iter(self.loader)
        while True:
            self.clock.tick()
            try:
                batch = next(it)
            except StopIteration:
                self.clock.untick()
                return
            self.clock.batch_built()
            yield batch


# --- data ---------------------------------------------------------------------------------


def pipeline_params(settings: BenchSettings) -> PipelineParams:
    """The params for ingest/curate/reinforce: defaults, or a shapes-only mix for smoke runs."""
    data: dict[str, Any] = {
        "seed": settings.seed,
        "device": "cpu",
        "reinforce": {"num_augmentations": settings.num_augmentations, "seed": settings.seed},
    }
    if settings.data == "shapes":
        pairs = max(200, int(settings.rows * 1.6))
        data["ingest"] = {
            "digits": {"enabled": False},
            "textiles": {"enabled": False},
            "shapes": {"num_pairs": pairs, "exact_duplicates": 0, "near_duplicates": 0},
        }
    elif settings.data != "bundled":
        raise ValueError(f"--data must be 'bundled' or 'shapes', got {settings.data!r}")
    return parse_params(data)


def prepare_rows(settings: BenchSettings, layout: Layout) -> pd.DataFrame:
    """Ingest + curate into `layout`; keep a seeded sample of `rows` train rows (in place)."""
    params = pipeline_params(settings)
    with _quiet():
        ingest.run(params, layout)
        if settings.data == "bundled":
            curate.run(params, layout)
    # generated shapes carry exact captions and no injected copies: used as ingested
    curated = read_pairs(layout.curated if settings.data == "bundled" else layout.pairs)
    train_rows = curated[curated["split"] == "train"]
    if len(train_rows) < settings.rows:
        raise ValueError(
            f"--rows {settings.rows} but curation kept only {len(train_rows)} train rows"
        )
    keep = train_rows.sample(n=settings.rows, random_state=settings.seed).sort_index()
    write_pairs(keep.reset_index(drop=True), layout.curated)  # reinforce reads this table
    return keep.reset_index(drop=True)


def write_csv_dataset(rows: pd.DataFrame, out_dir: Path) -> Path:
    """The rows as image files plus a tab-separated CSV (filepath, title) for open_clip_train."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, data in enumerate(rows["image"]):
        with Image.open(io.BytesIO(data)) as img:
            ext = (img.format or "png").lower()
        path = out_dir / f"{i:06d}.{ext}"
        path.write_bytes(data)
        paths.append(str(path))
    csv = out_dir / "train.csv"
    pd.DataFrame({"filepath": paths, "title": rows["caption"].tolist()}).to_csv(
        csv, sep="\t", index=False
    )
    return csv


# --- the two systems ----------------------------------------------------------------------


@dataclass
class SystemRun:
    """One system's measurement on one config."""

    rates: dict[str, Any]
    setup_s: float
    end_to_end_s: float
    final_loss: float


def run_ours(
    settings: BenchSettings, rows: pd.DataFrame, name: str, lock_text: bool
) -> tuple[SystemRun, LoadedModel]:
    """Our trainer on the rows; returns the measurement and the trained model."""
    clock = StepClock()
    started = time.perf_counter()
    torch.manual_seed(settings.seed)
    loaded = create_model(name, lock_text=lock_text)
    augment = Augment(crop_scale_min=OPEN_CLIP_CROP_SCALE, flip_p=0.0)
    data = PairTensors.from_frame(rows, loaded, augment)
    setup = time.perf_counter() - started
    result = train(
        loaded.model,
        TimedBatches(data, clock),
        ClipObjective(),
        settings.train_params(),
        torch.device("cpu"),
        desc=f"ours {name}",
    )
    clock.stop()
    run = SystemRun(
        rates=clock.rates(settings.batch_size, settings.skip_steps),
        setup_s=round(setup, 3),
        end_to_end_s=round(time.perf_counter() - started, 3),
        final_loss=round(result.final_loss, 4),
    )
    return run, loaded


def open_clip_args(
    settings: BenchSettings, name: str, lock_text: bool, csv: Path, run_name: str
) -> list[str]:
    """The open_clip_train command line equivalent to our settings."""
    args = [
        "--model", name,
        "--train-data", str(csv),
        "--dataset-type", "csv",
        "--csv-separator", "\t",
        "--csv-img-key", "filepath",
        "--csv-caption-key", "title",
        "--batch-size", str(settings.batch_size),
        "--epochs", str(settings.epochs),
        "--lr", str(settings.lr),
        "--wd", str(settings.weight_decay),
        "--warmup", str(settings.warmup_steps),
        "--beta1", "0.9", "--beta2", "0.98", "--eps", "1e-6",
        "--grad-clip-norm", str(settings.grad_clip),
        "--lr-scheduler", "cosine",
        "--precision", "fp32",
        "--device", "cpu",
        "--workers", "0",
        "--seed", str(settings.seed),
        "--save-frequency", "0",
        "--logs", "none",  # no checkpoint written (it would land after the timed steps anyway)
        "--name", run_name,
        "--report-to", "",
    ]  # fmt: skip
    if lock_text:
        args += ["--lock-text", "--lock-text-unlocked-layers", "0", "--lock-text-freeze-layer-norm"]
    return args


@contextlib.contextmanager
def _patched(module: Any, name: str, value: Any) -> Iterator[None]:
    original = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, original)


def run_open_clip(
    settings: BenchSettings, csv: Path, name: str, lock_text: bool, workdir: Path
) -> SystemRun:
    """`open_clip_train.main` in-process on the CSV; its data loader and epochs are timed."""
    import open_clip_train.main as oc_main

    register_repo_configs()  # open_clip.add_model_config for the repo configs (local MiniLM)
    clock = StepClock()
    last_loss: dict[str, torch.Tensor] = {}

    def timed_get_data(*args: Any, **kwargs: Any) -> dict[str, Any]:
        data = oc_main_get_data(*args, **kwargs)
        data["train"].dataloader = TimedLoader(data["train"].dataloader, clock)
        return data

    def timed_epoch(*args: Any, **kwargs: Any) -> None:
        oc_train_one_epoch(*args, **kwargs)
        clock.stop()  # the last epoch's stamp is the end of training

    def loss_with_record(args: Any) -> torch.nn.Module:
        loss = oc_create_loss(args)
        loss.register_forward_hook(lambda _m, _i, out: last_loss.update(out))
        return loss

    def file_logging(log_file: str | None, level: int, include_host: bool = False) -> None:
        # open_clip logs to stderr and a file; keep the file (same work), drop the console
        # (including a handler basicConfig may have put on the root logger earlier).
        for handler in list(logging.root.handlers):
            logging.root.removeHandler(handler)
            removed.append(handler)
        if log_file:
            handler = logging.FileHandler(log_file)
            handler.setFormatter(logging.Formatter("%(asctime)s | %(levelname)s | %(message)s"))
            logging.root.addHandler(handler)
            added.append(handler)
        logging.root.setLevel(level)

    oc_main_get_data, oc_train_one_epoch = oc_main.get_data, oc_main.train_one_epoch
    oc_create_loss = oc_main.create_loss
    added: list[logging.Handler] = []
    removed: list[logging.Handler] = []
    root_level = logging.root.level
    run_name = f"{name}-{'locked' if lock_text else 'unlocked'}-{time.time_ns()}"
    cwd = os.getcwd()
    started = time.perf_counter()
    try:
        os.chdir(workdir)  # `--logs none` still makes ./none/<name>/out.log
        with (
            warnings.catch_warnings(),
            _patched(oc_main, "get_data", timed_get_data),
            _patched(oc_main, "train_one_epoch", timed_epoch),
            _patched(oc_main, "create_loss", loss_with_record),
            _patched(oc_main, "setup_logging", file_logging),
        ):
            # its DataLoader asks for pinned memory, which a CPU-only torch cannot give
            warnings.filterwarnings("ignore", message="'pin_memory' argument is set as true")
            code = oc_main.main(open_clip_args(settings, name, lock_text, csv, run_name))
    finally:
        os.chdir(cwd)
        for handler in added:
            logging.root.removeHandler(handler)
            handler.close()
        for handler in removed:
            logging.root.addHandler(handler)
        logging.root.setLevel(root_level)
    end_to_end = time.perf_counter() - started
    if code not in (None, 0):
        raise RuntimeError(f"open_clip_train.main exited with {code} (see {workdir}/none)")
    loss = sum(float(v.detach()) for k, v in last_loss.items() if k.endswith("loss"))
    return SystemRun(
        rates=clock.rates(settings.batch_size, settings.skip_steps),
        setup_s=round(clock.wall[0] - started, 3),
        end_to_end_s=round(end_to_end, 3),
        final_loss=round(loss, 4),
    )


def compare_config(
    settings: BenchSettings, rows: pd.DataFrame, csv: Path, spec: str, workdir: Path
) -> tuple[dict[str, Any], LoadedModel]:
    """Both systems on one config, `repeats` times in alternating order (ours first on even
    rounds): on a shared machine the load drifts, so each round's ratio compares two runs
    made back to back, and the reported ratio is the median over rounds."""
    name, lock_text = parse_config(spec)
    torch.set_num_threads(settings.threads)
    rounds: list[tuple[SystemRun, SystemRun]] = []
    trained = None
    for r in range(settings.repeats):
        if r % 2 == 0:
            ours, trained = run_ours(settings, rows, name, lock_text)
            theirs = run_open_clip(settings, csv, name, lock_text, workdir)
        else:
            theirs = run_open_clip(settings, csv, name, lock_text, workdir)
            ours, _ = run_ours(settings, rows, name, lock_text)
        rounds.append((ours, theirs))

    def ratios(key: str) -> float:
        return round(float(np.median([_ratio(o.rates[key], t.rates[key]) for o, t in rounds])), 3)

    record = {
        "config": name,
        "text_tower": "locked" if lock_text else "trained",
        "ours": _summary([o for o, _ in rounds]),
        "open_clip_train": _summary([t for _, t in rounds]),
        "ratio_steady": ratios("samples_per_s"),
        "ratio_steady_cpu": ratios("samples_per_cpu_s"),
        "ratio_all_steps": ratios("samples_per_s_all_steps"),
        "ratio_end_to_end": round(
            float(np.median([_ratio(t.end_to_end_s, o.end_to_end_s) for o, t in rounds])), 3
        ),
        "ratio_steady_per_round": [
            _ratio(o.rates["samples_per_s"], t.rates["samples_per_s"]) for o, t in rounds
        ],
    }
    return record, trained


def _summary(runs: list[SystemRun]) -> dict[str, Any]:
    """Medians over rounds of one system's rates, plus every round."""
    keys = ("samples_per_s", "samples_per_cpu_s", "samples_per_s_all_steps", "data_share")
    out: dict[str, Any] = {k: round(float(np.median([r.rates[k] for r in runs])), 4) for k in keys}
    out["setup_s"] = round(float(np.median([r.setup_s for r in runs])), 3)
    out["end_to_end_s"] = round(float(np.median([r.end_to_end_s for r in runs])), 3)
    out["steps"] = runs[0].rates["steps"]
    out["timed_steps"] = runs[0].rates["timed_steps"]
    out["rounds"] = [asdict(r) for r in runs]
    return out


def _ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b > 0 else float("nan")


# --- distillation: reinforced table vs the teacher online ---------------------------------


class OnlineTeacherBatches:
    """The distill batch source without a reinforced table: the teacher runs on every batch.

    Each step samples a fresh view per image (the same crop/flip distribution as the
    reinforce stage), re-creates it like `ReinforcedTensors` does, and runs the teacher's
    image tower on it (no grad). Teacher text embeddings are computed once per caption up
    front, as any sensible online setup would (captions are not augmented), so the measured
    difference is the per-step teacher image forward.
    """

    def __init__(
        self,
        student_data: PairTensors,
        teacher: LoadedModel,
        teacher_text: torch.Tensor,
        scale_min: float,
        flip_p: float,
    ) -> None:
        if teacher.image_size != student_data.images.shape[-1]:
            raise ValueError("online teacher views need teacher and student at the same size")
        cfg = teacher.preprocess_cfg
        if (tuple(cfg["mean"]), tuple(cfg["std"])) != (student_data.mean, student_data.std):
            raise ValueError("online teacher views need the same normalisation for both models")
        self.data, self.teacher, self.teacher_text = student_data, teacher.model, teacher_text
        self.scale_min, self.flip_p = scale_min, flip_p

    def __len__(self) -> int:
        return len(self.data)

    def to(self, device: torch.device) -> OnlineTeacherBatches:
        self.data = self.data.to(device)
        self.teacher = self.teacher.to(device).eval()
        self.teacher_text = self.teacher_text.to(device)
        return self

    def batch(self, index: torch.Tensor, generator: torch.Generator) -> Batch:
        seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
        rng = np.random.default_rng(seed)
        views = [sample_view(rng, self.scale_min, self.flip_p) for _ in range(len(index))]
        base = self.data.batch(index, generator)  # no augmentation: normalised images
        image = warp(base["image"], view_theta(views))
        with torch.no_grad():
            teacher_image = F.normalize(self.teacher.encode_image(image), dim=-1)
        out = dict(base)
        out.update(image=image, teacher_image=teacher_image, teacher_text=self.teacher_text[index])
        return out


def _student(settings: BenchSettings, teacher: LoadedModel) -> LoadedModel:
    torch.manual_seed(settings.seed)
    student = create_model(settings.student, lock_text=True)
    inherit_weights(teacher.model, student.model)
    return student


def _distill_epoch_time(
    settings: BenchSettings, student: LoadedModel, data: Any, scale: float
) -> dict[str, Any]:
    clock = StepClock()
    loss = AffinityMimickingLoss(alpha=1.0, weight=1.0, teacher_logit_scale=scale)
    epochs = settings.distill_epochs
    train(
        student.model,
        TimedBatches(data, clock),
        AffinityObjective(loss),
        settings.train_params(epochs),
        torch.device("cpu"),
        desc="distill",
    )
    clock.stop()
    rates = clock.rates(settings.batch_size, settings.skip_steps)
    steps_per_epoch = rates["steps"] // epochs
    rates["epoch_s"] = round(steps_per_epoch * settings.batch_size / rates["samples_per_s"], 3)
    return rates


def compare_distill(
    settings: BenchSettings, layout: Layout, teacher: LoadedModel, rows: pd.DataFrame
) -> dict[str, Any]:
    """Student epoch time from the reinforced table vs with the teacher run online."""
    save_model(teacher.model, teacher.name, teacher.model_cfg, layout.model_dir("teacher"), {})
    params = pipeline_params(settings)
    started = time.perf_counter()
    with _quiet():
        reinforce.run(params, layout)
    reinforce_s = time.perf_counter() - started
    table = read_reinforced(layout.reinforced_db)
    scale = 100.0

    teacher.model.eval()
    # teacher text embeddings once per caption (memoised pooled features + projection)
    teacher_text = torch.from_numpy(encode_texts(teacher, rows["caption"].tolist()))

    def reinforced() -> dict[str, Any]:
        student = _student(settings, teacher)
        source = ReinforcedTensors.build(table, student)
        return _distill_epoch_time(settings, student, source, scale)

    def online() -> dict[str, Any]:
        student = _student(settings, teacher)
        source = OnlineTeacherBatches(
            PairTensors.from_frame(rows, student),
            teacher,
            teacher_text,
            params.reinforce.crop_scale_min,
            params.reinforce.flip_p,
        )
        return _distill_epoch_time(settings, student, source, scale)

    rounds = []  # alternating order, as for the trainer comparison
    for r in range(settings.repeats):
        first, second = (reinforced, online) if r % 2 == 0 else (online, reinforced)
        a, b = first(), second()
        rounds.append((a, b) if r % 2 == 0 else (b, a))
    per_round = [_ratio(o["epoch_s"], s["epoch_s"]) for s, o in rounds]
    stored_s = float(np.median([s["epoch_s"] for s, _ in rounds]))
    online_s = float(np.median([o["epoch_s"] for _, o in rounds]))
    saved = online_s - stored_s
    return {
        "student": settings.student,
        "teacher": teacher.name,
        "rows": len(rows),
        "num_augmentations": settings.num_augmentations,
        "epochs": settings.distill_epochs,
        "reinforced_epoch_s": round(stored_s, 3),
        "online_teacher_epoch_s": round(online_s, 3),
        "online_teacher_runs": "image tower on each batch's fresh views; captions embedded once",
        "ratio_epoch_time_online_over_reinforced": round(float(np.median(per_round)), 3),
        "ratio_per_round": per_round,
        "reinforce_stage_s": round(reinforce_s, 3),
        "break_even_epochs": round(reinforce_s / saved, 2) if saved > 0 else None,
        "rounds": [{"reinforced": s, "online_teacher": o} for s, o in rounds],
    }


# --- report -------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence stage progress bars and prints (the bench prints its own table)."""
    with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
        yield


def machine_info(settings: BenchSettings) -> dict[str, Any]:
    import open_clip

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": settings.threads,
        "device": "cpu",
        "precision": "fp32",
    }


def format_table(report: dict[str, Any]) -> str:
    """A plain-text table of the figures (samples/s and ratios)."""
    lines = [
        f"{'config':<22} {'text':<7} {'ours/s':>8} {'oc/s':>8} {'ratio':>6} "
        f"{'cpu ratio':>9} {'all-steps':>9} {'e2e':>6} {'data% ours/oc':>13}"
    ]
    for rec in report["configs"]:
        lines.append(
            f"{rec['config']:<22} {rec['text_tower']:<7} "
            f"{rec['ours']['samples_per_s']:>8.1f} "
            f"{rec['open_clip_train']['samples_per_s']:>8.1f} "
            f"{rec['ratio_steady']:>5.2f}x {rec['ratio_steady_cpu']:>8.2f}x "
            f"{rec['ratio_all_steps']:>8.2f}x {rec['ratio_end_to_end']:>5.2f}x "
            f"{100 * rec['ours']['data_share']:>6.1f}/"
            f"{100 * rec['open_clip_train']['data_share']:<6.1f}"
        )
    d = report.get("distill")
    if d:
        lines.append(
            f"distill {d['student']}: epoch {d['reinforced_epoch_s']:.2f}s from the "
            f"reinforced table vs {d['online_teacher_epoch_s']:.2f}s with the teacher online "
            f"({d['ratio_epoch_time_online_over_reinforced']:.2f}x); reinforce stage "
            f"{d['reinforce_stage_s']:.1f}s once (break-even {d['break_even_epochs']} epochs)"
        )
    load = report["load_average"]
    lines.append(f"load average (1 min) before/after: {load['before'][0]}/{load['after'][0]}")
    return "\n".join(lines)


def run_bench(settings: BenchSettings, out: Path | None = DEFAULT_OUT) -> dict[str, Any]:
    """Run every comparison once and write the JSON report; return it.

    The process's torch thread count is restored afterwards, so a caller (a test session)
    keeps its own setting: float sums, hence bit-exact results, depend on it."""
    threads_before = torch.get_num_threads()
    try:
        return _run_bench(settings, out)
    finally:
        torch.set_num_threads(threads_before)


def _run_bench(settings: BenchSettings, out: Path | None) -> dict[str, Any]:
    torch.set_num_threads(settings.threads)
    load_before = os.getloadavg()
    started_utc = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="clipops-bench-train-") as tmp:
        root = Path(tmp)
        # a cold, private text-feature cache: setup times include embedding the captions
        cache_env = os.environ.get("CLIPOPS_CACHE_DIR")
        os.environ["CLIPOPS_CACHE_DIR"] = str(root / "cache")
        try:
            layout = Layout.at(root / "project")
            rows = prepare_rows(settings, layout)
            csv = write_csv_dataset(rows, root / "csv")
            configs, teacher = [], None
            for spec in settings.configs:
                record, trained = compare_config(settings, rows, csv, spec, root)
                configs.append(record)
                teacher = teacher or trained  # the first config is the distillation teacher
            distill = None
            if settings.distill and teacher is not None:
                distill = compare_distill(settings, layout, teacher, rows)
        finally:
            if cache_env is None:
                os.environ.pop("CLIPOPS_CACHE_DIR", None)
            else:
                os.environ["CLIPOPS_CACHE_DIR"] = cache_env
    report = {
        "started_utc": started_utc,
        "settings": asdict(settings),
        "timed": (
            "steady: from the start of step skip_steps to the end of training; all_steps: "
            "every step; end_to_end: model build + data preparation + training"
        ),
        "machine": machine_info(settings),
        "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
        "configs": configs,
        "distill": distill,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
    return report


def parse_args(argv: list[str] | None) -> tuple[BenchSettings, Path]:
    defaults = BenchSettings()
    p = argparse.ArgumentParser(prog="python -m bench.train_throughput", description=__doc__)
    p.add_argument("--rows", type=int, default=defaults.rows, help="curated train rows used")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--skip-steps", type=int, default=defaults.skip_steps, help="warm-up steps")
    p.add_argument("--threads", type=int, default=defaults.threads)
    p.add_argument(
        "--repeats", type=int, default=defaults.repeats, help="rounds per config (median ratio)"
    )
    p.add_argument("--data", choices=["bundled", "shapes"], default=defaults.data)
    p.add_argument(
        "--configs",
        default=",".join(defaults.configs),
        help="comma-separated NAME:locked|unlocked (text tower)",
    )
    p.add_argument("--no-distill", action="store_true", help="skip the distillation comparison")
    p.add_argument("--distill-epochs", type=int, default=defaults.distill_epochs)
    p.add_argument("--num-augmentations", type=int, default=defaults.num_augmentations)
    p.add_argument("--student", default=defaults.student, help="distilled student config")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    a = p.parse_args(argv)
    settings = BenchSettings(
        rows=a.rows,
        batch_size=a.batch_size,
        epochs=a.epochs,
        skip_steps=a.skip_steps,
        threads=a.threads,
        repeats=a.repeats,
        data=a.data,
        configs=tuple(s for s in a.configs.split(",") if s),
        distill=not a.no_distill,
        distill_epochs=a.distill_epochs,
        num_augmentations=a.num_augmentations,
        student=a.student,
    )
    return settings, a.out


def main(argv: list[str] | None = None) -> int:
    settings, out = parse_args(argv)
    report = run_bench(settings, out)
    print(format_table(report))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
