"""Where every stage reads and writes, relative to one project root.

`dvc.yaml` declares the same paths; a stage never invents a path of its own, so the
DVC CLI, the Prefect flow and the tests (with a tmp root) all see one layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    """Paths of every declared stage input and output under `root`."""

    root: Path

    @classmethod
    def at(cls, root: str | Path) -> Layout:
        return cls(Path(root).resolve())

    # ingest
    @property
    def ingest_dir(self) -> Path:
        return self.root / "data" / "ingest"

    @property
    def pairs(self) -> Path:
        return self.ingest_dir / "pairs.parquet"

    @property
    def quarantine(self) -> Path:
        return self.ingest_dir / "quarantine.parquet"

    @property
    def ingest_report(self) -> Path:
        return self.root / "reports" / "ingest.json"

    # gates (one folder per gate: summary JSON + data-docs HTML)
    def gate_dir(self, gate: str) -> Path:
        return self.root / "reports" / "gates" / gate

    # curate
    @property
    def curate_dir(self) -> Path:
        return self.root / "data" / "curate"

    @property
    def curated(self) -> Path:
        return self.curate_dir / "curated.parquet"

    @property
    def curation_removed(self) -> Path:
        return self.curate_dir / "removed.parquet"

    @property
    def curation_report(self) -> Path:
        return self.root / "reports" / "curation.json"

    # models: one folder per stage, in the on-disk model format of tasks.models.io
    def model_dir(self, stage: str) -> Path:
        return self.root / "models" / stage

    # reinforce: a LanceDB directory holding the reinforced dataset
    @property
    def reinforced_db(self) -> Path:
        return self.root / "data" / "reinforced"

    # distill: the student vs the teacher and the from-scratch student (zero-shot acc1)
    @property
    def distill_metrics(self) -> Path:
        return self.root / "metrics" / "distill.json"

    # evaluate
    @property
    def eval_metrics(self) -> Path:
        return self.root / "metrics" / "evaluate.json"

    @property
    def plots_dir(self) -> Path:
        return self.root / "plots"

    # training curves, one CSV per training stage (DVC plots)
    def train_log(self, stage: str) -> Path:
        return self.plots_dir / f"{stage}_loss.csv"

    # register
    @property
    def registration(self) -> Path:
        return self.root / "reports" / "registration.json"

    # the stores (not DVC outputs: they persist across runs and are queried by people)
    @property
    def store_dir(self) -> Path:
        return self.root / "store"
