"""The curate stage end to end on a tiny real pair table, and gate_curated on its output."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tasks import curate, gate_curated
from tasks.curation.filters import FILTER_REASONS
from tasks.curation.stream import CURATE_REASONS
from tasks.errors import GateFailed
from tasks.layout import Layout
from tasks.models import create_model, save_model
from tasks.pair_table import read_pairs, write_pairs, write_quarantine
from tasks.params import parse_params


def png(seed: int, size: tuple[int, int] = (8, 8)) -> bytes:
    """A real PNG whose pixels depend on `seed`, so different seeds give different bytes."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def pair(pid: str, image: bytes, caption: str, label: str | None, split: str, **kw) -> dict:
    img = Image.open(io.BytesIO(image))
    return {
        "id": pid,
        "sha256": hashlib.sha256(image).hexdigest(),
        "image": image,
        "width": img.width,
        "height": img.height,
        "caption": caption,
        "source": kw.get("source", "shapes"),
        "label": label,
        "split": split,
    }


def build_pool(root: Path) -> Layout:
    """300 'cat', 40 'dog', 10 'fox' train captions, 20 eval rows, one row per failure kind."""
    rows = []
    seed = 0
    for label, n in [("cat", 300), ("dog", 40), ("fox", 10)]:
        for i in range(n):
            seed += 1
            rows.append(
                pair(f"t{seed:04d}", png(seed), f"a picture of a {label} no {i}", label, "train")
            )
    eval_rows = [
        pair(f"e{i:03d}", png(10_000 + i), f"an image of a {lab}", lab, "eval")
        for i, lab in enumerate(["cat", "dog", "fox", "cat"] * 5)
    ]
    rows += eval_rows
    rows += [
        pair("x_words", png(20_001), "cat", "cat", "train"),
        pair("x_chars", png(20_002), "a b", "cat", "train"),
        pair("x_small", png(20_003, (4, 4)), "a small cat", "cat", "train"),
        pair("x_aspect", png(20_004, (40, 8)), "a wide cat", "cat", "train"),
        # same bytes as t0001 but a larger id: the duplicate, not the original, goes
        pair("x_dup", png(1), "a second cat copy", "cat", "train"),
        pair("x_evalcopy", eval_rows[0]["image"], "a leaked cat", "cat", "train"),
        pair("x_nomatch", png(20_005), "something else entirely", None, "train"),
    ]
    layout = Layout.at(root)
    write_pairs(pd.DataFrame(rows), layout.pairs)
    write_quarantine(
        pd.DataFrame(
            {
                "row": ["user:bad.png", "user:empty.png"],
                "source": ["user", "user"],
                "reason": ["image_undecodable", "image_empty"],
                "detail": ["truncated", "0 bytes"],
            }
        ),
        layout.quarantine,
    )
    return layout


PARAMS = parse_params(
    {
        "curate": {"wordfreq_top_n": 0, "bigram_sample_rows": 0, "balance_t": 50, "seed": 3},
        "gate": {"min_rows": 10, "max_quarantine_fraction": 0.2},
    }
)


@pytest.fixture(scope="module")
def curated_layout(tmp_path_factory: pytest.TempPathFactory) -> Layout:
    layout = build_pool(tmp_path_factory.mktemp("curate"))
    curate.run(PARAMS, layout)
    return layout


def test_reasons_and_accounting(curated_layout: Layout) -> None:
    layout = curated_layout
    report = json.loads(layout.curation_report.read_text())
    removed = pd.read_parquet(layout.curation_removed).set_index("id")
    assert removed.loc["x_words", "reason"] == "caption_too_few_words"
    assert removed.loc["x_chars", "reason"] == "caption_too_short"
    assert removed.loc["x_small", "reason"] == "image_too_small"
    assert removed.loc["x_aspect", "reason"] == "aspect_ratio_too_extreme"
    assert removed.loc["x_dup", "reason"] == "exact_duplicate"
    assert "t0001" in removed.loc["x_dup", "detail"]
    assert removed.loc["x_evalcopy", "reason"] == "eval_copy"
    assert removed.loc["x_nomatch", "reason"] == "no_entry_match"
    # t0001 is the original of x_dup: balancing may sample it out, dedup never removes it
    assert removed.reason.get("t0001") in (None, "balanced_out")
    kept, filtered, quarantined = report["kept"], report["filtered"], report["quarantined"]
    assert report["rows_in"] == 377 + 2
    assert report["rows_in"] == sum(kept.values()) + sum(filtered.values()) + sum(
        quarantined.values()
    )
    assert quarantined == {"image_empty": 1, "image_undecodable": 1}
    assert filtered["balanced_out"] == len(removed[removed["reason"] == "balanced_out"])
    assert json.loads((layout.curate_dir / "metadata.json").read_text()) == ["cat", "dog", "fox"]


def test_balancing_follows_t_and_eval_passes_through(curated_layout: Layout) -> None:
    layout = curated_layout
    curated = read_pairs(layout.curated)
    train = curated[curated["split"] == "train"]
    per_label = train["label"].value_counts()
    # cat: Binomial(300, 50/300), sd ~6.5: 5 sd either side; dog and fox are tail (p = 1)
    assert abs(per_label["cat"] - 50) <= 33
    assert per_label["dog"] == 40 and per_label["fox"] == 10
    pairs = read_pairs(layout.pairs)
    eval_in = pairs[pairs["split"] == "eval"].reset_index(drop=True)
    eval_out = curated[curated["split"] == "eval"].reset_index(drop=True)
    pd.testing.assert_frame_equal(eval_in, eval_out)
    csv_path, png_path = curate.entry_plot_paths(layout)
    plot = pd.read_csv(csv_path)
    assert plot["count_before"].tolist() == [300, 40, 10]
    assert png_path.stat().st_size > 1000


def test_gate_curated_passes_then_fails_on_broken_curation(curated_layout: Layout) -> None:
    layout = curated_layout
    summary = gate_curated.run(PARAMS, layout)
    assert summary["passed"] and summary["expectations"] >= 20
    assert (layout.gate_dir("curated") / "docs" / "index.html").exists()

    # break it: undo balancing (put every balanced_out row back) and copy an eval image in
    pairs = read_pairs(layout.pairs).set_index("id")
    curated = read_pairs(layout.curated)
    removed = pd.read_parquet(layout.curation_removed)
    back = pairs.loc[removed.loc[removed["reason"] == "balanced_out", "id"]].reset_index()
    leak = pairs.loc[["x_evalcopy"]].reset_index()
    write_pairs(pd.concat([curated, back, leak], ignore_index=True), layout.curated)
    with pytest.raises(GateFailed) as failure:
        gate_curated.run(PARAMS, layout)
    message = str(failure.value)
    assert "excess_over_upper" in message and "'cat'" in message
    assert "eval_copy_of" in message and "x_evalcopy" in message
    assert "kept_train_gap" in message
    assert "index.html" in message
    verdict = json.loads((layout.gate_dir("curated") / "summary.json").read_text())
    assert verdict["passed"] is False


def nudged(image: bytes) -> bytes:
    """The same picture with one channel of one pixel moved by 3: new bytes, same look."""
    pixels = np.array(Image.open(io.BytesIO(image)).convert("RGB"))
    pixels[0, 0, 0] = (int(pixels[0, 0, 0]) + 3) % 256
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def test_every_reason_code_is_reachable(tmp_path: Path) -> None:
    """One pool with a row for each reason; a second run with a real (tiny) score model."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    layout = build_pool(tmp_path / "project")
    pairs = read_pairs(layout.pairs)
    by_id = pairs.set_index("id")
    extra = [
        pair("x_near", nudged(by_id.loc["t0002", "image"]), "a near copy of a cat", "cat", "train"),
        pair("x_evalnear", nudged(by_id.loc["e001", "image"]), "a copied dog", "dog", "train"),
        pair("x_german", png(30_001), "ein Hund und eine Katze spielen im Garten", None, "train"),
        pair("extra/k1", png(30_002), "a fox in the snow", "fox", "train"),
    ]
    write_pairs(pd.concat([pairs, pd.DataFrame(extra)], ignore_index=True), layout.pairs)
    pool = pa.table({"key": ["k1"], "caption": ["another fox with the same id"]})
    pq.write_table(pool, tmp_path / "project" / "extra.parquet")
    params = parse_params(
        {
            "curate": {
                "wordfreq_top_n": 0,
                "bigram_sample_rows": 0,
                "balance_t": 50,
                "seed": 3,
                "pool": ["extra.parquet"],
            }
        }
    )
    report = curate.run(params, layout)
    removed = pd.read_parquet(layout.curation_removed).set_index("id")
    assert removed.loc["x_near", "reason"] == "near_duplicate"
    assert removed.loc["x_evalnear", "reason"] == "eval_near_copy"
    assert "e001" in removed.loc["x_evalnear", "detail"]
    assert removed.loc["x_german", "reason"] == "caption_language"
    assert removed.loc["extra/k1", "reason"] == "duplicate_id"
    assert report["rows_in"] == len(pairs) + len(extra) + 1 + 2  # + pool row + quarantine

    reasons = set(removed["reason"])
    expected = set(CURATE_REASONS)
    assert set(FILTER_REASONS) < expected
    model_reasons = {"semantic_duplicate", "low_clip_score"}  # next test: they need a model
    assert reasons == expected - model_reasons, expected ^ reasons


def test_model_steps_semdedup_and_clip_score(tmp_path: Path) -> None:
    """SemDeDup and the CLIP-score filter under a real (randomly initialised) tiny model."""
    layout = Layout.at(tmp_path)
    rows = [
        pair(f"t{i:03d}", png(i, (16, 16)), f"a cat number {i}", "cat", "train") for i in range(30)
    ]
    rows += [
        pair(f"u{i:03d}", nudged(png(i, (16, 16))), f"a cat copy {i}", "cat", "train")
        for i in range(5)
    ]
    rows += [pair("e000", png(999, (16, 16)), "an eval cat", "cat", "eval")]
    write_pairs(pd.DataFrame(rows), layout.pairs)
    write_quarantine(pd.DataFrame(columns=["row", "source", "reason", "detail"]), layout.quarantine)
    loaded = create_model("clipops-vit-s-text-s")
    save_model(loaded.model, "clipops-vit-s-text-s", loaded.model_cfg, tmp_path / "m", {})
    curate_params = {
        "wordfreq_top_n": 0,
        "bigram_sample_rows": 0,
        "balance_t": 1000,
        "near_dedup": False,  # so the nudged copies reach SemDeDup
        "score_model": "m",
        "semdedup_clusters": 3,
        "semdedup_epsilon": 0.001,
        "score_fraction": 0.5,
    }
    report = curate.run(parse_params({"device": "cpu", "curate": curate_params}), layout)
    assert report["score_model"]["rows_embedded"] == 35
    removed = pd.read_parquet(layout.curation_removed).set_index("id")
    semantic = removed[removed["reason"] == "semantic_duplicate"]
    # SemDeDup keeps the member farthest from its centroid: one of each (t_i, u_i) pair goes
    assert sorted(i[1:] for i in semantic.index) == [f"{i:03d}" for i in range(5)]
    for row_id, detail in semantic["detail"].items():
        twin = ("u" if row_id[0] == "t" else "t") + row_id[1:]
        assert f"to kept id {twin}" in detail
    # the top half of the 30 survivors by image-text cosine is kept
    assert report["filtered"]["low_clip_score"] == 15 and report["kept"]["train"] == 15
    assert report["steps"]["semantic_duplicate"] == "ran" == report["steps"]["low_clip_score"]
