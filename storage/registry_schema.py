"""The registry's tables (SQLAlchemy 2 ORM), declared once.

Every table works on SQLite (the embedded default) and on Postgres: JSON columns use the
portable `JSON` type and timestamps are stored as UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    """Timezone-aware now; SQLite drops the zone, so readers treat naive values as UTC."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base of every registry table."""

    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class RunRow(Base):
    """One invocation of a stage or flow that wrote to the registry."""

    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))  # what ran, e.g. "register"
    status: Mapped[str] = mapped_column(String(20))  # running | succeeded | failed
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    code_version: Mapped[str | None] = mapped_column(String(100), nullable=True)


class DatasetRow(Base):
    """A dataset version: the same name and content hash is one row however often it is seen."""

    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("name", "content_hash", name="uq_dataset_name_hash"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    content_hash: Mapped[str] = mapped_column(String(64))  # sha256 of the file bytes
    num_rows: Mapped[int] = mapped_column(Integer)
    row_counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # e.g. per split
    path: Mapped[str] = mapped_column(String(1000))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ModelRow(Base):
    """A model version; versions count up per name and a weights hash appears once per name."""

    __tablename__ = "models"
    __table_args__ = (
        UniqueConstraint("name", "version", name="uq_model_name_version"),
        UniqueConstraint("name", "weights_sha256", name="uq_model_name_weights"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    version: Mapped[int] = mapped_column(Integer)
    stage: Mapped[str] = mapped_column(String(50))  # teacher | student | finetuned | ...
    open_clip_name: Mapped[str] = mapped_column(String(200))
    model_cfg: Mapped[dict[str, Any]] = mapped_column(JSON)
    preprocess_cfg: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    weights_sha256: Mapped[str] = mapped_column(String(64), index=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("models.id"), nullable=True)
    parent_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    card: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    data_hashes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    code_version: Mapped[str | None] = mapped_column(String(100), nullable=True)
    model_dir: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    parent: Mapped[ModelRow | None] = relationship(remote_side="ModelRow.id")


class MetricRow(Base):
    """One metric of one model version; logging the same key again overwrites the value."""

    __tablename__ = "metrics"
    __table_args__ = (UniqueConstraint("model_id", "key", name="uq_metric_model_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    key: Mapped[str] = mapped_column(String(200))
    value: Mapped[float] = mapped_column(Float)


class AliasRow(Base):
    """A movable name (e.g. `production`) pointing at one version of a model name."""

    __tablename__ = "aliases"
    __table_args__ = (UniqueConstraint("name", "alias", name="uq_alias_name_alias"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    alias: Mapped[str] = mapped_column(String(100))
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class GateResultRow(Base):
    """The verdict of a quality gate, tied to the run that recorded it and optionally a model."""

    __tablename__ = "gate_results"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"), nullable=True)
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id"), nullable=True)
    gate: Mapped[str] = mapped_column(String(100))
    passed: Mapped[bool] = mapped_column(Boolean)
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    summary_sha256: Mapped[str] = mapped_column(String(64))  # makes re-recording idempotent
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class LineageRow(Base):
    """An edge child model -> parent (a model it was derived from, or a dataset it used)."""

    __tablename__ = "lineage"
    __table_args__ = (
        UniqueConstraint(
            "child_id", "parent_model_id", "parent_dataset_id", "relation", name="uq_lineage_edge"
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    child_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    parent_model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id"), nullable=True)
    parent_dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id"), nullable=True)
    relation: Mapped[str] = mapped_column(String(50))  # derived_from | trained_on | ...
