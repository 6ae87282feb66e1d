"""Caption language identification and the language filter's reason code."""

import pandas as pd
import pytest

from tasks.curation.language import LANGUAGE_REASONS, detect_languages, language_filter
from tasks.errors import StageError
from tasks.params import DigitsSource
from tasks.sources.digits import CLASS_NAMES
from tasks.sources.textiles import CAPTIONS


def _bundled_english_captions() -> list[str]:
    digits = DigitsSource()
    templates = digits.train_templates + digits.eval_templates
    captions = [t.format(name) for t in templates for name in CLASS_NAMES]
    captions += [c for group in CAPTIONS.values() for c in group]
    captions += ["a small red circle in the top left", "a large blue star in the center"]
    return captions


def test_detects_clear_languages_with_confidence() -> None:
    codes, probs = detect_languages(
        [
            "ein roter Hund läuft über die grüne Wiese",
            "un chat noir dort sur le canapé",
            "猫がソファの上で寝ている",
        ]
    )
    assert codes == ["de", "fr", "ja"]
    assert probs.dtype.kind == "f" and (probs > 0.8).all()


def test_foreign_caption_gets_reason_and_english_ones_do_not() -> None:
    english = _bundled_english_captions()
    german = "ein roter Hund läuft über die grüne Wiese"
    captions = pd.Series(
        [*english, german, "IMG_2031.JPG", ""], index=range(100, 103 + len(english))
    )
    verdict = language_filter(captions, ["en"], 0.5)
    assert verdict.index.equals(captions.index)
    assert verdict["reason"].iloc[: len(english)].isna().all(), "short English captions rejected"
    assert verdict["reason"].iloc[len(english)] == "caption_language"
    assert "'de'" in verdict["detail"].iloc[len(english)]
    assert verdict["reason"].iloc[-2:].isna().all()  # no language / empty: other filters' job
    assert set(verdict["reason"].dropna()) <= set(LANGUAGE_REASONS)


def test_allowing_the_language_keeps_it() -> None:
    captions = pd.Series(["ein roter Hund läuft über die grüne Wiese"])
    assert language_filter(captions, ["en", "de"], 0.5)["reason"].isna().all()


def test_bad_arguments_are_clear_errors() -> None:
    with pytest.raises(StageError, match="unknown language code"):
        language_filter(pd.Series(["a cat"]), ["english"], 0.5)
    with pytest.raises(StageError, match="empty"):
        language_filter(pd.Series(["a cat"]), [], 0.5)
    with pytest.raises(StageError, match="min_confidence"):
        language_filter(pd.Series(["a cat"]), ["en"], 1.5)
