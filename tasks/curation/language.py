"""Offline caption language identification (py3langid) and DataComp's language filter.

py3langid ships its naive-Bayes model (97 languages, ISO 639-1 codes where one exists,
otherwise ISO 639-3, e.g. "pcm"; "zxx" means no linguistic content) inside the wheel, so
nothing is downloaded. It was chosen over lingua-language-detector for speed: on 10k
captions it ran ~23x faster on one core (see bench/language_id.py), and lingua's wheel is
96 MB.

Short captions ("a red circle") are hard for any detector: the top guess is often a wrong
language with a low probability. So the filter rejects a caption only when a language
outside `allowed` wins with probability >= `min_confidence`; a low-confidence guess keeps
the row. On the bundled English captions this rule rejects none at 0.5 (bench figures).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from tasks.curation.filters import empty_verdict
from tasks.errors import StageError

LANGUAGE_REASONS = {
    "caption_language": (
        "the caption's detected language is not an allowed one, with probability >= "
        "the minimum confidence"
    ),
}
NO_LANGUAGE = "zxx"  # py3langid's code for text without language (digits, file names)
_PROGRESS_MIN = 20_000


@lru_cache(maxsize=1)
def _identifier():
    """py3langid's bundled model with normalised probabilities (loaded once, ~0.5 s)."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def known_languages() -> list[str]:
    """The language codes the bundled model can return, sorted."""
    return sorted(set(_identifier().nb_classes))


def detect_languages(captions: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Language code and its probability (float32 in [0, 1]) for each caption.

    Each distinct caption is classified once (template pools repeat captions a lot).
    """
    identifier = _identifier()
    texts = ["" if c is None else str(c) for c in captions]
    unique, inverse = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
    codes = np.empty(len(unique), dtype=object)
    probs = np.empty(len(unique), dtype=np.float32)
    for k, text in enumerate(
        tqdm(unique, desc="language id", unit="caption", disable=len(unique) < _PROGRESS_MIN)
    ):
        codes[k], probs[k] = identifier.classify(text)
    return codes[inverse].tolist(), probs[inverse]


def language_filter(
    captions: pd.Series, allowed: Sequence[str], min_confidence: float
) -> pd.DataFrame:
    """Reject a caption when a language outside `allowed` is detected with p >= min_confidence.

    Returns `reason` (`caption_language` or None) and `detail` ("detected 'de' (p=0.997);
    allowed: en"), index-aligned with `captions`. Text without language ("zxx") is kept.
    """
    allowed = [str(code) for code in allowed]
    if not allowed:
        raise StageError("language filter: `allowed` is empty; list codes such as ['en']")
    unknown = sorted(set(allowed) - set(known_languages()))
    if unknown:
        raise StageError(
            f"language filter: unknown language code(s) {unknown}; the detector knows "
            f"{', '.join(known_languages())}"
        )
    if not 0.0 <= min_confidence <= 1.0:
        raise StageError(f"language filter: min_confidence {min_confidence} is not in [0, 1]")
    codes, probs = detect_languages(captions.tolist())
    codes_arr = np.asarray(codes, dtype=object)
    rejected = ~np.isin(codes_arr, [*allowed, NO_LANGUAGE]) & (probs >= min_confidence)
    verdict = empty_verdict(captions.index)
    if rejected.any():
        allowed_text = ", ".join(allowed)
        verdict.loc[rejected, "reason"] = "caption_language"
        verdict.loc[rejected, "detail"] = [
            f"detected {code!r} (p={p:.3f}); allowed: {allowed_text}"
            for code, p in zip(codes_arr[rejected], probs[rejected], strict=True)
        ]
    return verdict
