"""params.yaml validation: the file in the repo is valid and bad values are named clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tasks.params import ParamsError, PipelineParams, load_params, parse_params

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_repo_params_yaml_is_valid_and_complete() -> None:
    params = load_params(REPO_ROOT / "params.yaml")
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    # every section of the schema is spelled out in params.yaml, so people see every knob
    assert set(raw) == set(PipelineParams.model_fields)
    assert params.teacher.epochs >= 1


def test_out_of_range_value_names_key_value_and_range() -> None:
    with pytest.raises(ParamsError) as err:
        parse_params({"teacher": {"epochs": 0}, "curate": {"balance_t": -5}})
    message = str(err.value)
    assert "teacher.epochs = 0" in message
    assert "greater than or equal to 1" in message
    assert "curate.balance_t = -5" in message


def test_unknown_key_is_rejected() -> None:
    with pytest.raises(ParamsError, match="teacher.epochz"):
        parse_params({"teacher": {"epochz": 3}})


def test_missing_file_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="run from the project root"):
        load_params(tmp_path / "nope.yaml")


def test_user_source_needs_both_paths() -> None:
    with pytest.raises(ParamsError, match="both images_dir and captions_file"):
        parse_params({"ingest": {"user": {"images_dir": "x"}}})


def test_generated_defaults_round_trip() -> None:
    from tasks.params import default_params_yaml

    assert parse_params(yaml.safe_load(default_params_yaml())) == PipelineParams()


def test_non_mapping_file_is_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "params.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ParamsError, match="mapping of sections"):
        load_params(bad)
