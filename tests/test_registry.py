"""Registry on a real SQLite file: versions, idempotency, aliases, metrics, gates, lineage."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from sqlalchemy import func, select

from storage.registry import Registry, RegistryError, resolve_url
from storage.registry_schema import GateResultRow, LineageRow, ModelRow
from tasks.params import StorageParams

CFG = {"embed_dim": 8, "vision_cfg": {"image_size": 32}, "text_cfg": {"context_length": 8}}


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    reg = Registry.from_params(StorageParams(), tmp_path)
    yield reg
    reg.close()


def register(reg: Registry, weights: str, name: str = "clip", **kw) -> object:
    return reg.register_model(
        name, stage=kw.pop("stage", "finetuned"), open_clip_name="cfg", model_cfg=CFG,
        weights_sha256=sha(weights), **kw,
    )  # fmt: skip


def test_relative_sqlite_path_is_under_the_root(tmp_path: Path) -> None:
    url = resolve_url("sqlite:///store/registry.db", tmp_path)
    assert url == f"sqlite:///{tmp_path.resolve()}/store/registry.db"
    assert resolve_url("postgresql://u:p@host/db", tmp_path) == "postgresql://u:p@host/db"
    reg = Registry.from_params(StorageParams(), tmp_path)
    register(reg, "w")
    reg.close()
    assert (tmp_path / "store" / "registry.db").stat().st_size > 0


def test_missing_registry_is_reported_when_not_creating(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="nothing is registered yet"):
        Registry.from_params(StorageParams(), tmp_path, create=False)
    assert not (tmp_path / "store").exists()


def test_versions_increase_per_name_and_same_weights_is_idempotent(registry: Registry) -> None:
    a = register(registry, "a")
    b = register(registry, "b")
    other = register(registry, "a", name="other")
    again = register(registry, "a")
    assert (a.version, b.version, other.version) == (1, 2, 1)
    assert a.created and b.created and not again.created
    assert again.version == 1 and again.id == a.id
    with registry._tx() as s:
        assert s.scalar(select(func.count()).select_from(ModelRow)) == 3
    assert [m.version for m in registry.list_models("clip")] == [1, 2]
    assert registry.model_names() == ["clip", "other"]


def test_bad_weights_hash_and_unknown_names_are_clear_errors(registry: Registry) -> None:
    with pytest.raises(ValueError, match="64 lowercase hex"):
        registry.register_model("clip", stage="s", open_clip_name="c", model_cfg={},
                                weights_sha256="xyz")  # fmt: skip
    register(registry, "a")
    with pytest.raises(RegistryError, match="unknown model name 'nope'.*clip"):
        registry.get_model("nope")
    with pytest.raises(RegistryError, match=r"no version 7 \(registered versions: \[1\]\)"):
        registry.get_model("clip", 7)
    with pytest.raises(RegistryError):
        registry.set_alias("clip", "production", 9)


def test_alias_moves_and_production_metrics(registry: Registry) -> None:
    assert registry.production_metrics("clip") is None
    v1 = register(registry, "a")
    v2 = register(registry, "b")
    registry.log_metrics("clip", v1.version, {"zeroshot_acc1": 0.5, "recall@1": 0.25})
    registry.log_metrics("clip", v2.version, {"zeroshot_acc1": 0.75})
    registry.set_alias("clip", "production", v1.version)
    assert registry.production_metrics("clip") == {"zeroshot_acc1": 0.5, "recall@1": 0.25}
    registry.set_alias("clip", "production", v2.version)
    assert registry.get_alias("clip", "production").version == 2
    assert registry.production_metrics("clip") == {"zeroshot_acc1": 0.75}
    assert registry.aliases("clip") == {"production": 2}
    assert registry.get_model("clip", 2).aliases == ("production",)
    assert registry.get_model("clip", 1).aliases == ()
    # logging a key again overwrites it, it does not add a second row
    registry.log_metrics("clip", v2.version, {"zeroshot_acc1": 0.8})
    assert registry.get_model("clip", 2).metrics == {"zeroshot_acc1": 0.8}
    with pytest.raises(ValueError, match="not a number"):
        registry.log_metrics("clip", 2, {"bad": "high"})


def test_lineage_follows_parents_and_datasets(registry: Registry) -> None:
    curated = registry.register_dataset("curated", sha("d1"), 10, "data/c.parquet", {"train": 8})
    same = registry.register_dataset("curated", sha("d1"), 10, "data/c.parquet", {"train": 8})
    assert same.id == curated.id
    teacher = register(registry, "t", stage="teacher", datasets={"trained_on": curated})
    student = register(registry, "s", stage="student", parent=teacher,
                       datasets={"trained_on": curated})  # fmt: skip
    tuned = register(registry, "f", parent=student)
    assert tuned.parent_version == student.version and tuned.parent_sha256 == sha("s")
    tree = registry.lineage(tuned.version)
    assert tree.model.version == 3
    (rel, student_tree), = tree.parents  # fmt: skip
    assert rel == "derived_from" and student_tree.model.stage == "student"
    assert [d.name for _, d in student_tree.datasets] == ["curated"]
    assert student_tree.parents[0][1].model.stage == "teacher"
    assert student_tree.parents[0][1].parents == []
    # adding an edge twice stores it once
    registry.add_lineage(tuned, dataset=curated, relation="trained_on")
    registry.add_lineage(tuned, dataset=curated, relation="trained_on")
    with registry._tx() as s:
        edges = s.scalar(
            select(func.count()).select_from(LineageRow).where(LineageRow.child_id == tuned.id)
        )
    assert edges == 2  # derived_from student + trained_on curated


def test_lineage_needs_a_name_when_several_exist(registry: Registry) -> None:
    register(registry, "a")
    register(registry, "b", name="other")
    with pytest.raises(RegistryError, match="name the model"):
        registry.lineage(1)
    assert registry.lineage(1, name="other").model.name == "other"


def test_runs_and_gate_results(registry: Registry) -> None:
    run = registry.record_run("register", {"register": {"k": 1}})
    assert registry.get_run(run)["status"] == "running"
    registry.finish_run(run, "succeeded")
    info = registry.get_run(run)
    assert info["status"] == "succeeded" and info["finished_at"] >= info["started_at"]
    assert info["params"] == {"register": {"k": 1}}
    # this test runs inside the clipops git checkout: the commit is recorded
    assert info["code_version"] is None or len(info["code_version"].split("+")[0]) == 40
    model = register(registry, "a")
    first = registry.record_gate(
        "eval", True, {"passed": True, "acc": 0.9}, run_id=run, model=model
    )
    again = registry.record_gate(
        "eval", True, {"acc": 0.9, "passed": True}, run_id=run, model=model
    )
    other = registry.record_gate("eval", False, {"passed": False}, run_id=run, model=model)
    assert first.id == again.id and other.id != first.id
    with registry._tx() as s:
        assert s.scalar(select(func.count()).select_from(GateResultRow)) == 2
    assert [g.passed for g in registry.gate_results("eval")] == [True, False]
    with pytest.raises(ValueError, match="status"):
        registry.finish_run(run, "running")
    with pytest.raises(RegistryError, match="unknown run"):
        registry.finish_run(999)
