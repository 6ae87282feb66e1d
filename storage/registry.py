"""The model registry: runs, datasets, model versions, metrics, aliases, gate results, lineage.

One `Registry` wraps one SQLAlchemy URL (`sqlite:///store/registry.db` by default; a relative
SQLite path is resolved under the project root; `postgresql://...` works unchanged). Tables are
created on first use. Registering the same weights twice under one name returns the existing
version, so re-running the register stage never creates duplicates.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from storage.registry_schema import (
    AliasRow,
    Base,
    DatasetRow,
    GateResultRow,
    LineageRow,
    MetricRow,
    ModelRow,
    RunRow,
    utcnow,
)

RUN_STATUSES = ("running", "succeeded", "failed")


class RegistryError(LookupError):
    """An unknown model name, version or alias, or a registry that does not exist yet."""


@dataclass(frozen=True)
class DatasetRecord:
    """A registered dataset version."""

    id: int
    name: str
    content_hash: str
    num_rows: int
    row_counts: dict[str, Any]
    path: str
    created_at: datetime


@dataclass(frozen=True)
class ModelRecord:
    """A registered model version with its metrics and the aliases pointing at it."""

    id: int
    name: str
    version: int
    stage: str
    open_clip_name: str
    model_cfg: dict[str, Any]
    preprocess_cfg: dict[str, Any]
    weights_sha256: str
    parent_version: int | None
    parent_sha256: str | None
    params: dict[str, Any]
    card: dict[str, Any]
    data_hashes: dict[str, Any]
    code_version: str | None
    model_dir: str | None
    run_id: int | None
    created_at: datetime
    metrics: dict[str, float] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    created: bool = False  # True only on the register call that inserted the row


@dataclass(frozen=True)
class GateRecord:
    """A recorded gate verdict."""

    id: int
    run_id: int | None
    model_version: int | None
    gate: str
    passed: bool
    summary: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class Lineage:
    """A model version, the datasets it used and (recursively) the models it came from."""

    model: ModelRecord
    datasets: list[tuple[str, DatasetRecord]]  # (relation, dataset)
    parents: list[tuple[str, Lineage]]  # (relation, parent lineage)


def resolve_url(url: str, root: str | Path | None = None) -> str:
    """Resolve a relative SQLite database path under `root`; leave every other URL as is."""
    parsed: URL = make_url(url)
    database = parsed.database
    if not parsed.drivername.startswith("sqlite") or not database or database == ":memory:":
        return url
    path = Path(database)
    if not path.is_absolute() and root is not None:
        path = Path(root).resolve() / path
    return parsed.set(database=str(path)).render_as_string(hide_password=False)


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL, or None for other back ends and in-memory SQLite."""
    parsed = make_url(url)
    if not parsed.drivername.startswith("sqlite") or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def current_code_version(repo_dir: str | Path | None = None) -> str | None:
    """The git commit of the clipops code (suffix `+dirty` for uncommitted changes), or None."""
    repo_dir = Path(repo_dir) if repo_dir else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo_dir), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo_dir), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None  # not a git checkout (e.g. an installed wheel): record no version
    return f"{commit}+dirty" if dirty else commit


def _json_safe(value: Any) -> Any:
    """Round-trip through JSON so numpy scalars, Paths and tuples are stored as plain JSON."""
    return json.loads(json.dumps(value, default=str))


def _as_utc(value: datetime) -> datetime:
    # SQLite returns naive datetimes; everything is written in UTC.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class Registry:
    """SQLAlchemy-backed registry. `Registry(url)` or `Registry.from_params(storage, root)`."""

    def __init__(self, url: str, *, create: bool = True) -> None:
        db_file = sqlite_path(url)
        if db_file is not None:
            if not create and not db_file.exists():
                raise RegistryError(
                    f"no registry at {db_file}: nothing is registered yet "
                    "(run the register stage: `python -m tasks.register`)"
                )
            db_file.parent.mkdir(parents=True, exist_ok=True)
        self.url = url
        self.engine = create_engine(url, future=True)
        Base.metadata.create_all(self.engine)
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def from_params(cls, storage: Any, root: str | Path, *, create: bool = True) -> Registry:
        """Open the registry named by `StorageParams.registry_url`, relative paths under root."""
        return cls(resolve_url(storage.registry_url, root), create=create)

    def close(self) -> None:
        """Release the connection pool (SQLite files can then be removed on every OS)."""
        self.engine.dispose()

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        with self._session() as session, session.begin():
            yield session

    # runs
    def record_run(
        self,
        name: str,
        params: dict[str, Any] | None = None,
        *,
        status: str = "running",
        code_version: str | None = None,
    ) -> int:
        """Insert a run row and return its id; code_version defaults to the current git commit."""
        if status not in RUN_STATUSES:
            raise ValueError(f"run status {status!r} is not one of {RUN_STATUSES}")
        with self._tx() as s:
            row = RunRow(
                name=name,
                status=status,
                params=_json_safe(params or {}),
                code_version=code_version if code_version is not None else current_code_version(),
                finished_at=None if status == "running" else utcnow(),
            )
            s.add(row)
            s.flush()
            return row.id

    def finish_run(self, run_id: int, status: str = "succeeded") -> None:
        """Mark a run finished with `status` (succeeded | failed)."""
        if status not in RUN_STATUSES[1:]:
            raise ValueError(f"a finished run's status must be one of {RUN_STATUSES[1:]}")
        with self._tx() as s:
            row = s.get(RunRow, run_id)
            if row is None:
                raise RegistryError(f"unknown run id {run_id}")
            row.status = status
            row.finished_at = utcnow()

    def get_run(self, run_id: int) -> dict[str, Any]:
        """A run as a dict (id, name, status, started_at, finished_at, params, code_version)."""
        with self._tx() as s:
            row = s.get(RunRow, run_id)
            if row is None:
                raise RegistryError(f"unknown run id {run_id}")
            return {
                "id": row.id,
                "name": row.name,
                "status": row.status,
                "started_at": _as_utc(row.started_at),
                "finished_at": _as_utc(row.finished_at) if row.finished_at else None,
                "params": row.params,
                "code_version": row.code_version,
            }

    # datasets
    def register_dataset(
        self,
        name: str,
        content_hash: str,
        num_rows: int,
        path: str | Path,
        row_counts: dict[str, Any] | None = None,
    ) -> DatasetRecord:
        """Record a dataset version; the same (name, content hash) returns the existing row."""
        if num_rows < 0:
            raise ValueError(f"dataset {name!r}: num_rows must be >= 0, got {num_rows}")
        with self._tx() as s:
            row = s.scalar(
                select(DatasetRow).where(
                    DatasetRow.name == name, DatasetRow.content_hash == content_hash
                )
            )
            if row is None:
                row = DatasetRow(
                    name=name,
                    content_hash=content_hash,
                    num_rows=int(num_rows),
                    row_counts=_json_safe(row_counts or {}),
                    path=str(path),
                )
                s.add(row)
                s.flush()
            return self._dataset_record(row)

    @staticmethod
    def _dataset_record(row: DatasetRow) -> DatasetRecord:
        return DatasetRecord(
            id=row.id,
            name=row.name,
            content_hash=row.content_hash,
            num_rows=row.num_rows,
            row_counts=row.row_counts,
            path=row.path,
            created_at=_as_utc(row.created_at),
        )

    # models
    def register_model(
        self,
        name: str,
        *,
        stage: str,
        open_clip_name: str,
        model_cfg: dict[str, Any],
        weights_sha256: str,
        preprocess_cfg: dict[str, Any] | None = None,
        parent: ModelRecord | None = None,
        parent_sha256: str | None = None,
        params: dict[str, Any] | None = None,
        card: dict[str, Any] | None = None,
        data_hashes: dict[str, Any] | None = None,
        code_version: str | None = None,
        model_dir: str | Path | None = None,
        run_id: int | None = None,
        datasets: dict[str, DatasetRecord] | None = None,
    ) -> ModelRecord:
        """Register a model version (next version number for `name`) and its lineage edges.

        If `weights_sha256` is already registered under `name`, nothing is written and the
        existing record is returned (`.created` is False). `datasets` maps a relation (e.g.
        "trained_on") to a dataset; `parent` adds a model->model "derived_from" edge.
        """
        if len(weights_sha256) != 64 or any(c not in "0123456789abcdef" for c in weights_sha256):
            raise ValueError(
                f"weights_sha256 must be 64 lowercase hex chars, got {weights_sha256!r}"
            )
        if parent is not None and parent_sha256 is None:
            parent_sha256 = parent.weights_sha256
        existing = self.find_model(name, weights_sha256)
        if existing is not None:
            return existing
        try:
            with self._tx() as s:
                latest = s.scalar(select(func.max(ModelRow.version)).where(ModelRow.name == name))
                row = ModelRow(
                    name=name,
                    version=(latest or 0) + 1,
                    stage=stage,
                    open_clip_name=open_clip_name,
                    model_cfg=_json_safe(model_cfg),
                    preprocess_cfg=_json_safe(preprocess_cfg or {}),
                    weights_sha256=weights_sha256,
                    parent_id=parent.id if parent is not None else None,
                    parent_sha256=parent_sha256,
                    params=_json_safe(params or {}),
                    card=_json_safe(card or {}),
                    data_hashes=_json_safe(data_hashes or {}),
                    code_version=code_version,
                    model_dir=str(model_dir) if model_dir is not None else None,
                    run_id=run_id,
                )
                s.add(row)
                s.flush()
                if parent is not None:
                    s.add(
                        LineageRow(
                            child_id=row.id, parent_model_id=parent.id, relation="derived_from"
                        )
                    )
                for relation, dataset in (datasets or {}).items():
                    s.add(
                        LineageRow(child_id=row.id, parent_dataset_id=dataset.id, relation=relation)
                    )
                model_id = row.id
        except IntegrityError:
            # A concurrent writer registered the same weights (or took the version number)
            # between our check and insert: its row is the answer.
            existing = self.find_model(name, weights_sha256)
            if existing is None:
                raise
            return existing
        record = self._model_by_id(model_id)
        return ModelRecord(**{**record.__dict__, "created": True})

    def find_model(self, name: str, weights_sha256: str) -> ModelRecord | None:
        """The version of `name` with these weights, or None."""
        with self._tx() as s:
            row = s.scalar(
                select(ModelRow).where(
                    ModelRow.name == name, ModelRow.weights_sha256 == weights_sha256
                )
            )
            return self._model_record(s, row) if row is not None else None

    def get_model(self, name: str, version: int | None = None) -> ModelRecord:
        """A version of `name` (the latest when version is None); RegistryError if unknown."""
        with self._tx() as s:
            query = select(ModelRow).where(ModelRow.name == name)
            if version is None:
                query = query.order_by(ModelRow.version.desc()).limit(1)
            else:
                query = query.where(ModelRow.version == int(version))
            row = s.scalar(query)
            if row is None:
                raise RegistryError(self._unknown_model_message(s, name, version))
            return self._model_record(s, row)

    def _model_by_id(self, model_id: int) -> ModelRecord:
        with self._tx() as s:
            row = s.get(ModelRow, model_id)
            if row is None:
                raise RegistryError(f"unknown model id {model_id}")
            return self._model_record(s, row)

    def _unknown_model_message(self, s: Session, name: str, version: int | None) -> str:
        names = list(s.scalars(select(ModelRow.name).distinct().order_by(ModelRow.name)))
        if name not in names:
            known = ", ".join(names) if names else "none registered yet"
            return f"unknown model name {name!r} (registered names: {known})"
        versions = list(
            s.scalars(
                select(ModelRow.version).where(ModelRow.name == name).order_by(ModelRow.version)
            )
        )
        return f"model {name!r} has no version {version} (registered versions: {versions})"

    def _model_record(self, s: Session, row: ModelRow) -> ModelRecord:
        metrics = {
            m.key: m.value for m in s.scalars(select(MetricRow).where(MetricRow.model_id == row.id))
        }
        aliases = tuple(
            sorted(s.scalars(select(AliasRow.alias).where(AliasRow.model_id == row.id)))
        )
        return ModelRecord(
            id=row.id,
            name=row.name,
            version=row.version,
            stage=row.stage,
            open_clip_name=row.open_clip_name,
            model_cfg=row.model_cfg,
            preprocess_cfg=row.preprocess_cfg,
            weights_sha256=row.weights_sha256,
            parent_version=row.parent.version if row.parent is not None else None,
            parent_sha256=row.parent_sha256,
            params=row.params,
            card=row.card,
            data_hashes=row.data_hashes,
            code_version=row.code_version,
            model_dir=row.model_dir,
            run_id=row.run_id,
            created_at=_as_utc(row.created_at),
            metrics=metrics,
            aliases=aliases,
        )

    def list_models(self, name: str | None = None) -> list[ModelRecord]:
        """Every version of `name` (every model when None), oldest first."""
        with self._tx() as s:
            query = select(ModelRow).order_by(ModelRow.name, ModelRow.version)
            if name is not None:
                query = query.where(ModelRow.name == name)
            return [self._model_record(s, row) for row in s.scalars(query)]

    def model_names(self) -> list[str]:
        """Registered model names, sorted."""
        with self._tx() as s:
            return list(s.scalars(select(ModelRow.name).distinct().order_by(ModelRow.name)))

    # metrics
    def log_metrics(self, name: str, version: int, metrics: dict[str, float]) -> None:
        """Set metrics of a model version (a key logged again is overwritten)."""
        clean: dict[str, float] = {}
        for key, value in metrics.items():
            try:
                clean[str(key)] = float(value)
            except (TypeError, ValueError):
                raise ValueError(
                    f"metric {key!r} of {name} v{version} is not a number: {value!r}"
                ) from None
        model = self.get_model(name, version)
        with self._tx() as s:
            existing = {
                m.key: m for m in s.scalars(select(MetricRow).where(MetricRow.model_id == model.id))
            }
            for key, value in clean.items():
                if key in existing:
                    existing[key].value = value
                else:
                    s.add(MetricRow(model_id=model.id, key=key, value=value))

    # aliases
    def set_alias(self, name: str, alias: str, version: int) -> ModelRecord:
        """Point `alias` of `name` at `version` (moving it if it pointed elsewhere)."""
        model = self.get_model(name, version)
        with self._tx() as s:
            row = s.scalar(select(AliasRow).where(AliasRow.name == name, AliasRow.alias == alias))
            if row is None:
                s.add(AliasRow(name=name, alias=alias, model_id=model.id))
            elif row.model_id != model.id:
                row.model_id = model.id
                row.updated_at = utcnow()
        return self.get_model(name, version)

    def get_alias(self, name: str, alias: str) -> ModelRecord | None:
        """The version `alias` points at, or None when the alias is not set."""
        with self._tx() as s:
            row = s.scalar(select(AliasRow).where(AliasRow.name == name, AliasRow.alias == alias))
            if row is None:
                return None
            model = s.get(ModelRow, row.model_id)
            return self._model_record(s, model) if model is not None else None

    def aliases(self, name: str) -> dict[str, int]:
        """alias -> version for every alias of `name`."""
        with self._tx() as s:
            rows = s.execute(
                select(AliasRow.alias, ModelRow.version)
                .join(ModelRow, AliasRow.model_id == ModelRow.id)
                .where(AliasRow.name == name)
            )
            return {alias: version for alias, version in rows}

    def production_metrics(self, name: str) -> dict[str, float] | None:
        """Metrics of the `production` version of `name`, or None if nothing is in production."""
        record = self.get_alias(name, "production")
        return dict(record.metrics) if record is not None else None

    # gates
    def record_gate(
        self,
        gate: str,
        passed: bool,
        summary: dict[str, Any] | None = None,
        *,
        run_id: int | None = None,
        model: ModelRecord | None = None,
    ) -> GateRecord:
        """Record a gate verdict; the same verdict for the same gate and model is stored once."""
        summary = _json_safe(summary or {})
        digest = hashlib.sha256(
            json.dumps([gate, bool(passed), summary], sort_keys=True).encode()
        ).hexdigest()
        model_id = model.id if model is not None else None
        with self._tx() as s:
            row = s.scalar(
                select(GateResultRow).where(
                    GateResultRow.gate == gate,
                    GateResultRow.summary_sha256 == digest,
                    GateResultRow.model_id.is_(None)
                    if model_id is None
                    else GateResultRow.model_id == model_id,
                )
            )
            if row is None:
                row = GateResultRow(
                    run_id=run_id,
                    model_id=model_id,
                    gate=gate,
                    passed=bool(passed),
                    summary=summary,
                    summary_sha256=digest,
                )
                s.add(row)
                s.flush()
            return GateRecord(
                id=row.id,
                run_id=row.run_id,
                model_version=model.version if model is not None else None,
                gate=row.gate,
                passed=row.passed,
                summary=row.summary,
                created_at=_as_utc(row.created_at),
            )

    def gate_results(self, gate: str | None = None) -> list[GateRecord]:
        """Recorded gate verdicts, oldest first (one gate's when `gate` is given)."""
        with self._tx() as s:
            query = select(GateResultRow).order_by(GateResultRow.id)
            if gate is not None:
                query = query.where(GateResultRow.gate == gate)
            out = []
            for row in s.scalars(query):
                model = s.get(ModelRow, row.model_id) if row.model_id is not None else None
                out.append(
                    GateRecord(
                        id=row.id,
                        run_id=row.run_id,
                        model_version=model.version if model is not None else None,
                        gate=row.gate,
                        passed=row.passed,
                        summary=row.summary,
                        created_at=_as_utc(row.created_at),
                    )
                )
            return out

    # lineage
    def add_lineage(
        self,
        child: ModelRecord,
        *,
        parent: ModelRecord | None = None,
        dataset: DatasetRecord | None = None,
        relation: str,
    ) -> None:
        """Add one edge child -> parent model or child -> dataset (idempotent)."""
        if (parent is None) == (dataset is None):
            raise ValueError("a lineage edge needs exactly one of parent= or dataset=")
        with self._tx() as s:
            query = select(LineageRow).where(
                LineageRow.child_id == child.id, LineageRow.relation == relation
            )
            # NULLs never compare equal in SQL, so the unique constraint cannot dedupe these
            # edges: look for the same edge explicitly.
            if parent is not None:
                query = query.where(LineageRow.parent_model_id == parent.id)
            else:
                query = query.where(LineageRow.parent_dataset_id == dataset.id)
            if s.scalar(query) is None:
                s.add(
                    LineageRow(
                        child_id=child.id,
                        parent_model_id=parent.id if parent is not None else None,
                        parent_dataset_id=dataset.id if dataset is not None else None,
                        relation=relation,
                    )
                )

    def lineage(self, version: int, name: str | None = None) -> Lineage:
        """The lineage tree of a model version: its datasets and, recursively, its parents.

        `name` may be omitted when exactly one model name is registered.
        """
        if name is None:
            names = self.model_names()
            if len(names) != 1:
                raise RegistryError(
                    "name the model: registered names are "
                    + (", ".join(names) if names else "none (nothing registered yet)")
                )
            name = names[0]
        return self._lineage_of(self.get_model(name, version), seen=set())

    def _lineage_of(self, model: ModelRecord, seen: set[int]) -> Lineage:
        seen = seen | {model.id}
        with self._tx() as s:
            edges = list(s.scalars(select(LineageRow).where(LineageRow.child_id == model.id)))
            datasets = [
                (e.relation, self._dataset_record(s.get(DatasetRow, e.parent_dataset_id)))
                for e in edges
                if e.parent_dataset_id is not None
            ]
            parent_ids = [
                (e.relation, e.parent_model_id) for e in edges if e.parent_model_id is not None
            ]
        parents = [
            (relation, self._lineage_of(self._model_by_id(pid), seen))
            for relation, pid in parent_ids
            if pid not in seen  # guards against a cycle written by hand
        ]
        return Lineage(model=model, datasets=datasets, parents=parents)
