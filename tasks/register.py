"""Stage `register`: record the model, its lineage and metrics; move `production`; store embeddings.

Reads `layout.model_dir(register.stage)` and the model folders of its ancestors (a card's
`parent` names the parent stage and weights sha256), `layout.eval_metrics`, the eval gate's
`summary.json`, `layout.curated` and `layout.pairs`. Params: `register`, `storage`, `device`
(and `gate_eval.model`, to know which model the gate judged).

Writes registry rows (run, datasets, model versions with lineage edges, metrics, gate result,
the `production` alias only if the gate passed), the weights into the artifact store, image and
caption embeddings of every curated row into the embedding store, and `layout.registration`.
Everything is keyed by content (weights sha256, dataset hash, embedding id), so running it
again on the same model writes no duplicate rows and returns the same version.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

from storage.artifacts import ArtifactStore, sha256_file
from storage.embeddings import EmbeddingStore
from storage.registry import (
    DatasetRecord,
    ModelRecord,
    Registry,
    current_code_version,
)
from tasks.device import pick_device
from tasks.errors import StageError
from tasks.layout import Layout
from tasks.pair_table import read_pairs
from tasks.params import PipelineParams
from tasks.stage_cli import stage_main

PRODUCTION = "production"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "open_clip_config.json"
CARD_FILE = "card.json"


# ---------------------------------------------------------------- reading the inputs
def _read_json(path: Path, what: str, hint: str) -> Any:
    if not path.exists():
        raise StageError(f"{what} {path} not found: {hint}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise StageError(f"{what} {path} is not valid JSON ({exc}): {hint}") from None


def read_model_folder(model_dir: Path) -> dict[str, Any]:
    """Config, card and weights sha256 of a model folder; StageError if it is incomplete."""
    missing = [f for f in (WEIGHTS_FILE, CONFIG_FILE) if not (model_dir / f).is_file()]
    if missing:
        raise StageError(
            f"model folder {model_dir} lacks {', '.join(missing)}: "
            "run the stage that trains this model first"
        )
    config = _read_json(model_dir / CONFIG_FILE, "model config", "re-save the model")
    card = (
        json.loads((model_dir / CARD_FILE).read_text()) if (model_dir / CARD_FILE).is_file() else {}
    )
    sha = sha256_file(model_dir / WEIGHTS_FILE)
    if card.get("weights_sha256") not in (None, sha):
        raise StageError(
            f"{model_dir}: card.json says weights sha256 {card['weights_sha256'][:12]}... but "
            f"{WEIGHTS_FILE} hashes to {sha[:12]}...: the folder was partly overwritten; "
            "re-run the stage that writes it"
        )
    return {"dir": model_dir, "config": config, "card": card, "sha256": sha}


def model_chain(layout: Layout, stage: str) -> list[dict[str, Any]]:
    """The target model folder and its ancestors, oldest first.

    An ancestor is followed only while its folder holds exactly the weights the child's card
    names; otherwise the chain stops there and the child keeps the parent's sha256 only.
    """
    chain = [read_model_folder(layout.model_dir(stage))]
    seen = {stage}
    while True:
        parent = chain[0]["card"].get("parent") or {}
        parent_stage, parent_sha = parent.get("stage"), parent.get("weights_sha256")
        chain[0]["parent_sha256"] = parent_sha
        if not parent_stage or parent_stage in seen:
            break
        folder = layout.model_dir(parent_stage)
        if not (folder / WEIGHTS_FILE).is_file():
            break
        info = read_model_folder(folder)
        if parent_sha is not None and info["sha256"] != parent_sha:
            break  # the parent folder was retrained since: it is not this model's parent
        info["stage"] = parent_stage
        seen.add(parent_stage)
        chain.insert(0, info)
    chain[-1]["stage"] = stage
    return chain


def dataset_facts(path: Path, name: str) -> dict[str, Any]:
    """Content hash (sha256 of the Parquet bytes), row count and rows per split."""
    if not path.is_file():
        raise StageError(f"{name} table {path} not found: run the stage that writes it first")
    splits = pq.read_table(path, columns=["split"]).column("split").to_pylist()
    counts: dict[str, int] = {}
    for split in splits:
        counts[str(split)] = counts.get(str(split), 0) + 1
    return {"content_hash": sha256_file(path), "num_rows": len(splits), "row_counts": counts}


def numeric_metrics(values: dict[str, Any]) -> tuple[dict[str, float], list[str]]:
    """The scalar numeric metrics of one stage's entry, and the keys that were not scalars."""
    keep, skipped = {}, []
    for key, value in values.items():
        if isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value):
            keep[key] = float(value)
        else:
            skipped.append(key)
    return keep, sorted(skipped)


# ---------------------------------------------------------------- models and embeddings
def load_registered_model(
    record: ModelRecord, artifacts: ArtifactStore, device: torch.device | str = "cpu"
) -> Any:
    """Load a registered version: from its model folder if it still holds these weights, else
    rebuilt from the registry's config and the artifact store's weights file."""
    from tasks.models import load_model

    folder = Path(record.model_dir) if record.model_dir else None
    weights_in_folder = folder / WEIGHTS_FILE if folder is not None else None
    if (
        weights_in_folder is not None
        and weights_in_folder.is_file()
        and sha256_file(weights_in_folder) == record.weights_sha256
    ):
        return load_model(folder, device)
    weights = artifacts.get(record.weights_sha256, verify=True)
    with tempfile.TemporaryDirectory(prefix="clipops-registered-") as tmp:
        config = {
            "model_name": record.open_clip_name,
            "model_cfg": record.model_cfg,
            "preprocess_cfg": record.preprocess_cfg,
        }
        Path(tmp, CONFIG_FILE).write_text(json.dumps(config))
        Path(tmp, CARD_FILE).write_text(json.dumps(record.card))
        shutil.copyfile(weights, Path(tmp, WEIGHTS_FILE))
        return load_model(tmp, device)


def write_embeddings(
    store: EmbeddingStore,
    loaded: Any,
    name: str,
    version: int,
    curated: pd.DataFrame,
    batch_size: int,
) -> dict[str, int]:
    """Encode every curated row's image and caption and upsert them under `name` v`version`."""
    from tasks.models import encode_images, encode_texts

    images = encode_images(loaded, list(curated["image"]), batch_size=batch_size)
    # Many pairs share a caption (templates): encode each distinct caption once.
    unique, inverse = np.unique(curated["caption"].to_numpy(dtype=str), return_inverse=True)
    texts = encode_texts(loaded, list(unique), batch_size=batch_size)[inverse]
    meta = curated[["id", "caption", "source", "label", "split"]]
    return {
        "image": store.upsert(name, version, "image", meta, images),
        "text": store.upsert(name, version, "text", meta, texts),
    }


# ---------------------------------------------------------------- the stage
def _register_chain(
    registry: Registry,
    artifacts: ArtifactStore,
    params: PipelineParams,
    chain: list[dict[str, Any]],
    datasets: dict[str, DatasetRecord],
    metrics: dict[str, Any],
    run_id: int,
) -> tuple[list[ModelRecord], list[str]]:
    """Register each folder of the chain (oldest first) with its parent edge and metrics."""
    name, code = params.register.model_name, current_code_version()
    data_hashes = {d.name: d.content_hash for d in datasets.values()}
    records: list[ModelRecord] = []
    skipped: list[str] = []
    for position, info in enumerate(chain):
        parent = records[-1] if records else None
        if parent is None and info.get("parent_sha256"):
            parent = registry.find_model(name, info["parent_sha256"])  # registered earlier
        artifacts.put(info["dir"] / WEIGHTS_FILE, sha256=info["sha256"])
        record = registry.register_model(
            name,
            stage=info["stage"],
            open_clip_name=info["config"]["model_name"],
            model_cfg=info["config"]["model_cfg"],
            preprocess_cfg=info["config"].get("preprocess_cfg", {}),
            weights_sha256=info["sha256"],
            parent=parent,
            parent_sha256=info.get("parent_sha256"),
            params=info["card"].get("params", {}),
            card=info["card"],
            data_hashes=data_hashes,
            code_version=code,
            model_dir=str(info["dir"]),
            run_id=run_id,
            datasets=datasets,
        )
        is_target = position == len(chain) - 1
        # Ancestors get evaluate.json metrics only when first registered: later evaluations
        # of a retrained pipeline describe other weights under the same stage name.
        if (is_target or record.created) and isinstance(metrics.get(info["stage"]), dict):
            values, not_numeric = numeric_metrics(metrics[info["stage"]])
            registry.log_metrics(name, record.version, values)
            skipped += [f"{info['stage']}.{k}" for k in not_numeric]
        records.append(registry.get_model(name, record.version) if not record.created else record)
    return records, skipped


def run(params: PipelineParams, layout: Layout) -> dict[str, Any]:
    """Register the model of `register.stage`; see the module docstring."""
    cfg = params.register
    chain = model_chain(layout, cfg.stage)
    metrics = _read_json(layout.eval_metrics, "metrics file", "run the evaluate stage first")
    if not isinstance(metrics, dict) or not isinstance(metrics.get(cfg.stage), dict):
        raise StageError(
            f"{layout.eval_metrics} has no metrics for {cfg.stage!r} "
            f"(has {sorted(metrics) if isinstance(metrics, dict) else type(metrics).__name__}): "
            "add it to evaluate.models and run evaluate"
        )
    gate = _read_json(
        layout.gate_dir("eval") / "summary.json", "eval gate verdict", "run gate_eval first"
    )
    if not isinstance(gate, dict) or not isinstance(gate.get("passed"), bool):
        raise StageError("the eval gate summary.json has no boolean 'passed': re-run gate_eval")
    facts = {
        "curated": dataset_facts(layout.curated, "curated"),
        "pairs": dataset_facts(layout.pairs, "pair"),
    }

    registry = Registry.from_params(params.storage, layout.root)
    artifacts = ArtifactStore.from_params(params.storage, layout.root)
    store = EmbeddingStore.from_params(params.storage, layout.root)
    run_id = registry.record_run("register", params.model_dump(mode="json"))
    try:
        summary = _register(params, layout, chain, metrics, gate, facts, run_id,
                            registry, artifacts, store)  # fmt: skip
    except BaseException:
        registry.finish_run(run_id, "failed")
        registry.close()
        raise
    registry.finish_run(run_id, "succeeded")
    registry.close()
    layout.registration.parent.mkdir(parents=True, exist_ok=True)
    tmp = layout.registration.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2, default=str))
    tmp.replace(layout.registration)
    return summary


def _register(
    params: PipelineParams,
    layout: Layout,
    chain: list[dict[str, Any]],
    metrics: dict[str, Any],
    gate: dict[str, Any],
    facts: dict[str, dict[str, Any]],
    run_id: int,
    registry: Registry,
    artifacts: ArtifactStore,
    store: EmbeddingStore,
) -> dict[str, Any]:
    cfg = params.register
    name = cfg.model_name
    paths = {"curated": layout.curated, "pairs": layout.pairs}
    datasets = {
        key: registry.register_dataset(key, path=paths[key].relative_to(layout.root), **facts[key])
        for key in ("curated", "pairs")
    }
    edges = {"trained_on": datasets["curated"], "raw_pairs": datasets["pairs"]}
    records, skipped = _register_chain(registry, artifacts, params, chain, edges, metrics, run_id)
    target = records[-1]
    registry.record_gate("eval", gate["passed"], gate, run_id=run_id, model=target)

    before = registry.get_alias(name, PRODUCTION)
    if params.gate_eval.model != cfg.stage:
        moved, reason = (
            False,
            (
                f"the eval gate judged {params.gate_eval.model!r}, not {cfg.stage!r}: "
                "set gate_eval.model = register.stage"
            ),
        )
    elif not gate["passed"]:
        moved, reason = False, "the eval gate failed"
    else:
        registry.set_alias(name, PRODUCTION, target.version)
        moved = before is None or before.version != target.version
        reason = "the eval gate passed" + ("" if moved else f"; already v{target.version}")
    production = registry.get_alias(name, PRODUCTION)

    curated = read_pairs(layout.curated)
    wanted = set(curated["id"].astype(str))
    stored = {m: store.source_ids(name, target.version, m) for m in ("image", "text")}
    if stored["image"] == stored["text"] == wanted:
        rows, reused = {"image": 0, "text": 0}, True  # same weights + same rows: same vectors
    else:
        from tasks.models import load_model

        # The folder's weights were hashed a moment ago and equal the target's sha256.
        loaded = load_model(chain[-1]["dir"], pick_device(params.device))
        rows = write_embeddings(store, loaded, name, target.version, curated, cfg.batch_size)
        reused = False
    # Rows of pairs that left the curated table (same weights, re-curated data) must go too.
    pruned = store.prune(name, target.version, wanted)
    protect = set(registry.aliases(name).values())
    removed = store.cleanup(name, cfg.keep_versions, protect=protect)
    return {
        "model_name": name,
        "model_version": target.version,
        "stage": target.stage,
        "weights_sha256": target.weights_sha256,
        "new_version": target.created,
        "parent_version": target.parent_version,
        "chain": [{"stage": r.stage, "version": r.version, "new": r.created} for r in records],
        "gate_passed": gate["passed"],
        "alias_moved": moved,
        "alias_reason": reason,
        "production_version": production.version if production is not None else None,
        "embedding_rows_written": rows,
        "embeddings_already_present": reused,
        "embedding_rows_pruned": pruned,
        "embedding_rows_total": store.count(model_name=name, model_version=target.version),
        "embedding_versions_removed": removed,
        "datasets": {
            k: {"content_hash": d.content_hash, "rows": d.num_rows} for k, d in datasets.items()
        },  # fmt: skip
        "metrics_not_numeric": skipped,
        "run_id": run_id,
        "registry": registry.url,
    }


def main(argv: list[str] | None = None) -> int:
    return stage_main("register", run, argv)


if __name__ == "__main__":
    sys.exit(main())
