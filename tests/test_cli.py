"""The `clipops` CLI against a registry and embedding store written by the real register stage."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tasks import register
from tasks.cli import main
from tasks.layout import Layout
from tests.test_register import build_project, make_pairs

QUOTED = "a red circle that's 'quoted' near the centre"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Layout:
    layout, params = build_project(tmp_path_factory.mktemp("cli") / "project")
    register.run(params, layout)
    return layout


def clipops(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_text_search_ranks_the_exact_caption_first(project: Layout, capsys) -> None:
    code, out, err = clipops(capsys, "search", QUOTED, "--k", "3", "--modality", "text",
                             "--root", str(project.root))  # fmt: skip
    assert code == 0, err
    assert "clipops-clip v2 (alias production)" in out
    rows = out.strip().splitlines()[3:]
    assert len(rows) == 3
    first = rows[0].split()
    assert first[0] == "1" and first[2] == "shapes-000" and float(first[1]) < 1e-4
    assert QUOTED in rows[0]


def test_image_search_finds_the_same_image(project: Layout, capsys, tmp_path: Path) -> None:
    pairs = make_pairs()
    query = tmp_path / "query.png"
    query.write_bytes(pairs.loc[7, "image"])
    # the model folder is gone: the CLI rebuilds the model from the registry + artifact store
    shutil.rmtree(project.model_dir("finetuned"))
    code, out, err = clipops(capsys, "search", "--image", str(query), "--k", "2", "--version",
                             "2", "--root", str(project.root))  # fmt: skip
    assert code == 0, err
    first = out.strip().splitlines()[3].split()
    assert first[0] == "1" and first[2] == pairs.loc[7, "id"] and float(first[1]) < 1e-4


def test_models_and_lineage_listings(project: Layout, capsys) -> None:
    code, out, _ = clipops(capsys, "models", "--root", str(project.root))
    assert code == 0
    lines = out.splitlines()
    assert "zeroshot_acc1" in lines[0]
    v1, v2 = (line.split() for line in lines[2:4])
    assert v1[:3] == ["clipops-clip", "1", "student"]
    assert v2[:4] == ["clipops-clip", "2", "finetuned", "production"] and "0.6000" in v2
    code, out, _ = clipops(capsys, "lineage", "2", "--root", str(project.root))
    assert code == 0
    assert out.splitlines()[0].startswith("clipops-clip v2 [finetuned]")
    assert "trained_on: dataset curated" in out and "(11 rows" in out
    assert "clipops-clip v1 [student]" in out


def test_clear_errors(project: Layout, capsys, tmp_path: Path) -> None:
    code, _, err = clipops(capsys, "models", "--root", str(tmp_path / "empty"))
    assert code == 1 and "nothing is registered yet" in err
    assert not (tmp_path / "empty").exists()  # asking does not create a registry
    code, _, err = clipops(capsys, "lineage", "9", "--root", str(project.root))
    assert code == 1 and "no version 9" in err
    code, _, err = clipops(capsys, "search", "x", "--alias", "staging", "--root",
                           str(project.root))  # fmt: skip
    assert code == 1 and "no alias 'staging'" in err
    code, _, err = clipops(capsys, "search", "--root", str(project.root))
    assert code == 1 and "either a text query or --image" in err
    code, _, err = clipops(capsys, "search", "x", "--model", "nope", "--root", str(project.root))
    assert code == 1 and "unknown model name 'nope'" in err
