"""The ingest stage end to end: real sources, a hand-made bad user folder, determinism, CLI."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from tasks import ingest
from tasks.errors import StageError
from tasks.layout import Layout
from tasks.pair_table import (
    INGEST_QUARANTINE_REASONS,
    PAIR_SCHEMA,
    QUARANTINE_SCHEMA,
    read_pairs,
)
from tasks.params import PipelineParams, parse_params

ONLY_USER = {"digits": {"enabled": False}, "textiles": {"enabled": False}}
ONLY_USER["shapes"] = {"enabled": False}
USER_LIMITS = {"max_image_bytes": 4096, "min_image_side": 8, "max_image_side": 64}


def _noise_png(size: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _save(img: Image.Image, path: Path, fmt: str = "PNG") -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)
    return path.read_bytes()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def bad_user_folder(tmp_path: Path) -> dict:
    """A user folder with good images and one row per quarantine reason (and a few more)."""
    base = tmp_path / "user"
    images = base / "images"
    _save(Image.new("RGB", (32, 32), (200, 30, 30)), images / "ok.png")
    jpeg = _save(Image.new("RGB", (24, 20), (30, 200, 30)), images / "ok.jpg", "JPEG")
    _save(Image.new("RGB", (200, 100), (30, 30, 200)), images / "big.png")
    _save(Image.new("L", (16, 16), 90), images / "sub" / "nested.png")
    (images / "empty.png").write_bytes(b"")
    (images / "huge.png").write_bytes(_noise_png(64, 0))  # ~12 kB > max_image_bytes=4096
    (images / "garbage.png").write_bytes(b"\x89PNG but really just text " * 8)
    truncated = _noise_png(24, 1)
    (images / "truncated.png").write_bytes(truncated[: len(truncated) // 2])
    buf = io.BytesIO()
    rng = np.random.default_rng(2)
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(buf, "JPEG")
    (images / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) * 2 // 3])
    _save(Image.new("RGB", (4, 4)), images / "tiny.png")
    _save(Image.new("RGB", (32, 32)), base / "outside.png")
    os.symlink(images / "ok.png", images / "link_inside.png")
    os.symlink(base / "outside.png", images / "link_outside.png")
    os.symlink(images / "loop.png", images / "loop.png")  # resolves to itself forever

    good = b"a plain caption of a picture"
    rows: list[tuple[bytes, str]] = [  # (CSV line, expected reason or "ok")
        (b"ok.png," + good + b",square,u1,", "ok"),
        (b"ok.jpg,a small green jpeg,,,", "ok"),
        (b"big.png,a wide blue image,,,", "ok"),
        (b"sub/nested.png,a grey tile in a subfolder,,,", "ok"),
        (b"sub/../ok.png,dots that stay inside,,,", "ok"),
        (b"link_inside.png,a symlink that stays inside,,,", "ok"),
        (b"ok.png,an evaluation row,,,EVAL", "ok"),
        (b"missing.png," + good + b",,,", "image_missing"),
        (b"sub," + good + b",,,", "image_missing"),  # a directory, not a file
        (b"loop.png," + good + b",,,", "image_missing"),
        (b"empty.png," + good + b",,,", "image_empty"),
        (b"huge.png," + good + b",,,", "image_too_large"),
        (b"garbage.png," + good + b",,,", "image_undecodable"),
        (b"truncated.png," + good + b",,,", "image_undecodable"),
        (b"truncated.jpg," + good + b",,,", "image_undecodable"),
        (b"tiny.png," + good + b",,,", "image_too_small"),
        (b'ok.png,"   ",,,', "caption_empty"),
        (b"ok.png,caf\xe9 au lait in latin-1,,,", "caption_not_utf8"),
        (b"ok.png," + b"word " * 12 + b",,,", "caption_too_long"),
        (b"ok.png," + good + b",,u1,", "duplicate_id"),
        (b"ok.png,too,many,fields,in,this,row", "bad_row"),
        (b"ok.png," + good + b",,,validation", "bad_row"),
        (b"," + good + b",,,", "bad_row"),
        (b"../outside.png," + good + b",,,", "path_escape"),
        (str(base / "outside.png").encode() + b"," + good + b",,,", "path_escape"),
        (b"link_outside.png," + good + b",,,", "path_escape"),
    ]
    captions = base / "captions.csv"
    captions.write_bytes(b"file,caption,label,id,split\n" + b"\n".join(r for r, _ in rows) + b"\n")
    return {"images": images, "captions": captions, "rows": rows, "jpeg": jpeg}


def _user_params(images: Path, captions: Path, **ingest_extra) -> PipelineParams:
    section = {
        **ONLY_USER,
        **USER_LIMITS,
        "max_caption_chars": 50,
        "user": {"images_dir": str(images), "captions_file": str(captions)},
        **ingest_extra,
    }
    return parse_params({"ingest": section})


def test_every_quarantine_reason_is_reachable_and_the_run_finishes(
    bad_user_folder: dict, project: Layout
) -> None:
    params = _user_params(bad_user_folder["images"], bad_user_folder["captions"])
    report = ingest.run(params, project)

    expected = [reason for _, reason in bad_user_folder["rows"]]
    n_ok = expected.count("ok")
    assert report.rows_in == len(expected) == report.pairs + report.quarantined_total
    assert report.pairs == n_ok
    for code in INGEST_QUARANTINE_REASONS:
        assert report.quarantined[code] == expected.count(code), code
        assert report.quarantined[code] > 0, f"reason {code} not reachable"

    quarantine = pq.read_table(project.quarantine)
    assert quarantine.schema.equals(QUARANTINE_SCHEMA)
    q = quarantine.to_pandas()
    # Row i of the CSV is on line i + 2 (header first); each reason lands on its own line.
    for i, (_, reason) in enumerate(bad_user_folder["rows"]):
        if reason != "ok":
            hits = q[q["row"].str.startswith(f"captions.csv:{i + 2}")]
            assert list(hits["reason"]) == [reason], (i, hits.to_dict("records"))
    assert q["detail"].str.len().min() > 0
    assert "caf\\xe9" in q.loc[q["reason"] == "caption_not_utf8", "detail"].iloc[0]

    pairs = read_pairs(project.pairs)
    assert pq.read_schema(project.pairs).equals(PAIR_SCHEMA)
    assert (pairs["source"] == "user").all()
    assert list(pairs["split"]).count("eval") == 1
    by_caption = pairs.set_index("caption")
    assert by_caption.loc["a small green jpeg", "image"] == bad_user_folder["jpeg"]
    assert tuple(by_caption.loc["a wide blue image", ["width", "height"]]) == (64, 32)
    assert by_caption.loc["a plain caption of a picture", "id"] == "u1"
    assert by_caption.loc["a plain caption of a picture", "label"] == "square"
    assert pd.isna(by_caption.loc["a small green jpeg", "label"])
    for row in pairs.itertuples():
        assert hashlib.sha256(row.image).hexdigest() == row.sha256
        img = Image.open(io.BytesIO(row.image))
        assert img.mode == "RGB" and img.size == (row.width, row.height)

    saved = json.loads(project.ingest_report.read_text())
    assert saved["rows_in"] == report.rows_in and saved["quarantined"] == report.quarantined
    assert saved["pairs_by_source_split"] == {"user": {"train": n_ok - 1, "eval": 1}}


def test_jsonl_rows_are_checked_one_by_one(tmp_path: Path, project: Layout) -> None:
    images = tmp_path / "imgs"
    _save(Image.new("RGB", (16, 16), (1, 2, 3)), images / "a.png")
    lines = [
        (json.dumps({"file": "a.png", "caption": "first good row", "id": 7}).encode(), "ok"),
        (b'{"file": "a.png", "caption": "eval row", "split": "eval", "label": null}', "ok"),
        (b"", None),  # blank lines are not rows
        (b'{"file": "a.png", "caption": "broken json', "bad_row"),
        (b'["a.png", "a list"]', "bad_row"),
        (b'{"file": "a.png"}', "bad_row"),
        (b'{"file": "a.png", "caption": 3}', "bad_row"),
        (b'{"file": "a.png", "caption": "bad \xff\xfe bytes"}', "caption_not_utf8"),
        (b'{"file": "a.png", "caption": "lone \\ud800 surrogate"}', "caption_not_utf8"),
        (b'{"file": "a.png", "caption": "x", "id": "7"}', "duplicate_id"),
        (b'{"file": "/etc/hostname", "caption": "absolute path"}', "path_escape"),
    ]
    captions = tmp_path / "captions.jsonl"
    captions.write_bytes(b"\n".join(line for line, _ in lines))
    report = ingest.run(_user_params(images, captions), project)
    expected = [reason for _, reason in lines if reason is not None]
    assert report.rows_in == len(expected) and report.pairs == expected.count("ok")
    for code in ("bad_row", "caption_not_utf8", "duplicate_id", "path_escape"):
        assert report.quarantined[code] == expected.count(code), code
    pairs = read_pairs(project.pairs)
    assert sorted(pairs["split"]) == ["eval", "train"]
    assert "7" in set(pairs["id"])


def test_user_id_colliding_with_a_bundled_id_is_quarantined(
    tmp_path: Path, project: Layout
) -> None:
    images = tmp_path / "imgs"
    _save(Image.new("RGB", (16, 16)), images / "a.png")
    captions = tmp_path / "c.csv"
    captions.write_text("file,caption,id\na.png,a black square,shapes-000003\n")
    params = _user_params(
        images,
        captions,
        shapes={"num_pairs": 10, "exact_duplicates": 0, "near_duplicates": 0},
    )
    report = ingest.run(params, project)
    assert report.rows_in == 11 and report.pairs == 10
    assert report.quarantined["duplicate_id"] == 1
    q = pd.read_parquet(project.quarantine)
    assert list(q["source"]) == ["user"] and "shapes-000003" in q["detail"].iloc[0]


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (None, "not found"),
        (b"file,text\na.png,hello\n", "lacks \\['caption'\\]"),
        (b"", "empty"),
        (b"file,caption\n", "no data rows"),
        (b'{"path": "a.png", "text": "hello"}\n', "no line has both keys"),
    ],
)
def test_a_broken_captions_file_is_a_config_error(
    tmp_path: Path, project: Layout, write: bytes | None, message: str
) -> None:
    images = tmp_path / "imgs"
    images.mkdir()
    suffix = ".jsonl" if write and write.startswith(b"{") else ".csv"
    captions = tmp_path / f"captions{suffix}"
    if write is not None:
        captions.write_bytes(write)
    with pytest.raises(StageError, match=message):
        ingest.run(_user_params(images, captions), project)
    assert not project.pairs.exists()


def test_other_config_errors(tmp_path: Path, project: Layout) -> None:
    captions = tmp_path / "c.txt"
    captions.write_text("file,caption\na.png,hi\n")
    (tmp_path / "imgs").mkdir()
    with pytest.raises(StageError, match="use .csv, .jsonl"):
        ingest.run(_user_params(tmp_path / "imgs", captions), project)
    with pytest.raises(StageError, match="images folder .* not found"):
        ingest.run(_user_params(tmp_path / "nope", captions), project)
    with pytest.raises(StageError, match="ingest has no source"):
        ingest.run(parse_params({"ingest": ONLY_USER}), project)


def test_relative_user_paths_are_under_the_project_root(project: Layout) -> None:
    _save(Image.new("RGB", (16, 16)), project.root / "mydata" / "a.png")
    (project.root / "mydata" / "c.csv").write_text("file,caption\na.png,a black square\n")
    params = _user_params(Path("mydata"), Path("mydata/c.csv"))
    assert ingest.run(params, project).pairs == 1


def test_bundled_ingest_counts_duplicates_and_unique_eval_captions(
    tiny_params: PipelineParams, project: Layout
) -> None:
    report = ingest.run(tiny_params, project)
    pairs = read_pairs(project.pairs)
    assert pq.read_schema(project.pairs).equals(PAIR_SCHEMA)
    assert report.rows_in == report.pairs + report.quarantined_total == len(pairs)
    assert len(pd.read_parquet(project.quarantine)) == report.quarantined_total == 0
    counts = pairs.groupby(["source", "split"]).size()
    for source, splits in report.pairs_by_source_split.items():
        for split, n in splits.items():
            assert counts.get((source, split), 0) == n
    shapes = tiny_params.ingest.shapes
    assert report.rows_in_by_source == {
        "digits": 1797,
        "textiles": 60,
        "shapes": shapes.num_pairs + shapes.exact_duplicates + shapes.near_duplicates,
    }
    assert pairs["id"].is_unique
    assert set(pairs.loc[pairs.source == "digits", "label"]) == {
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"
    }  # fmt: skip
    shape_eval = pairs[(pairs.source == "shapes") & (pairs.split == "eval")]
    assert len(shape_eval) == round(shapes.heldout_fraction * shapes.num_pairs)
    assert shape_eval["caption"].is_unique
    by_id = pairs.set_index("id")
    dups = report.shapes_duplicates
    assert len(dups["exact"]) == shapes.exact_duplicates
    assert len(dups["near"]) == shapes.near_duplicates
    for copy, orig in dups["exact"].items():
        assert by_id.loc[copy, "sha256"] == by_id.loc[orig, "sha256"]
    for copy, orig in dups["near"].items():
        assert by_id.loc[copy, "sha256"] != by_id.loc[orig, "sha256"]
        assert by_id.loc[copy, "caption"] == by_id.loc[orig, "caption"]
    # Outside the injected exact copies every stored image is distinct.
    assert pairs["sha256"].nunique() == len(pairs) - shapes.exact_duplicates
    assert (pairs[["width", "height"]].max() <= tiny_params.ingest.max_image_side).all()


def test_same_params_give_byte_identical_files(tmp_path: Path) -> None:
    small = {
        "digits": {"image_size": 16},
        "textiles": {"max_images": 12},
        "shapes": {"num_pairs": 40, "exact_duplicates": 3, "near_duplicates": 3},
    }
    outputs = []
    for name, seed in [("a", 0), ("b", 0), ("c", 1)]:
        layout = Layout.at(tmp_path / name)
        ingest.run(parse_params({"seed": seed, "ingest": small}), layout)
        outputs.append(
            [_sha(layout.pairs), _sha(layout.quarantine), layout.ingest_report.read_text()]
        )
    assert outputs[0] == outputs[1]
    assert outputs[0][0] != outputs[2][0]  # the seed matters


def test_cli_runs_and_reports_config_errors(
    tmp_path: Path, project: Layout, capsys: pytest.CaptureFixture[str]
) -> None:
    images = tmp_path / "imgs"
    _save(Image.new("RGB", (16, 16)), images / "a.png")
    (tmp_path / "c.csv").write_text("file,caption\na.png,a black square\n")
    params = {"ingest": {**ONLY_USER, "user": {"images_dir": str(images)}}}
    params["ingest"]["user"]["captions_file"] = str(tmp_path / "c.csv")
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    assert ingest.main(["--params", str(params_file), "--root", str(project.root)]) == 0
    assert json.loads(capsys.readouterr().out)["pairs"] == 1

    params["ingest"]["user"]["captions_file"] = str(tmp_path / "missing.csv")
    params_file.write_text(yaml.safe_dump(params))
    assert ingest.main(["--params", str(params_file), "--root", str(project.root)]) == 1
    assert "missing.csv not found" in capsys.readouterr().err
