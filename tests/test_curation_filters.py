"""DataComp basic filters (one reason code per rule) and exact dedup."""

import pandas as pd

from tasks.curation.dedup import eval_copies, exact_duplicates
from tasks.curation.filters import FILTER_REASONS, basic_filter
from tasks.params import CurateParams


def test_each_filter_has_its_reason() -> None:
    frame = pd.DataFrame(
        {
            "caption": ["a red cat", "cat", "a b", "a red cat", "a red cat", None],
            "width": [32, 32, 32, 4, 120, 32],
            "height": [32, 32, 32, 32, 32, 32],
        },
        index=[10, 11, 12, 13, 14, 15],
    )
    verdict = basic_filter(frame, CurateParams(min_caption_words=2, min_caption_chars=5))
    assert verdict["reason"].tolist() == [
        None,
        "caption_too_few_words",
        "caption_too_short",
        "image_too_small",
        "aspect_ratio_too_extreme",
        "caption_too_few_words",
    ]
    assert set(verdict["reason"].dropna()) <= set(FILTER_REASONS)
    assert "3.75" in verdict.loc[14, "detail"]


def test_exact_dedup_keeps_first_by_id_not_row_order() -> None:
    train = pd.DataFrame({"id": ["c", "a", "b", "d"], "sha256": ["x", "x", "y", "x"]})
    dups = exact_duplicates(train)
    assert dups["duplicate"].tolist() == [True, False, False, True]
    assert dups["kept_id"].tolist()[0] == "a"
    eval_rows = pd.DataFrame({"id": ["e1"], "sha256": ["y"]})
    assert eval_copies(train, eval_rows).tolist() == [False, False, True, False]


def test_rows_without_an_image_pass_image_rules_and_dedup() -> None:
    frame = pd.DataFrame(
        {
            "id": ["a", "b", "c", "d"],
            "sha256": [None, None, "x", "x"],
            "caption": ["a red cat", "a red cat", "a red cat", "a red cat"],
            "width": pd.array([None, None, 4, 32], dtype="Int32"),
            "height": pd.array([None, None, 32, 32], dtype="Int32"),
        }
    )
    verdict = basic_filter(frame, CurateParams(min_image_side=8))
    assert verdict["reason"].tolist() == [None, None, "image_too_small", None]
    assert verdict["detail"].tolist()[2] == "4x32: short side < 8"
    dups = exact_duplicates(frame)
    assert dups["duplicate"].tolist() == [False, False, False, True]
    assert dups["kept_id"].tolist() == [None, None, None, "c"]
    eval_rows = pd.DataFrame({"id": ["e"], "sha256": [None]})
    assert not eval_copies(frame, eval_rows).any()
