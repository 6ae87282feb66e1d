"""MetaCLIP metadata: the list of entries captions are matched against (index = entry id).

MetaCLIP builds ~500k entries from WordNet and Wikipedia unigrams, Wikipedia bigrams with
high PMI and titles. Offline we use (a) an optional user JSON list, (b) the top-N English
words of `wordfreq`, (c) bigrams mined from the pool's own captions by PMI, on a bounded,
order-independent sample of captions (`CaptionSample`), and (d) the class names of the
bundled sets. The list is written to data/curate/metadata.json, a versioned DVC output.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from tasks.curation.balancing import id_hashes
from tasks.curation.matching import spacing
from tasks.errors import StageError
from tasks.params import CurateParams


def load_metadata_file(path: str | Path) -> list[str]:
    """Read a user metadata file: a JSON list of non-empty strings."""
    path = Path(path)
    if not path.exists():
        raise StageError(f"curate.metadata_file {path} not found: give a JSON list of strings")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StageError(f"curate.metadata_file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, list):
        raise StageError(f"curate.metadata_file {path} must hold a JSON list, got {type(data)}")
    bad = [(i, v) for i, v in enumerate(data) if not isinstance(v, str) or not v.strip()]
    if bad:
        i, value = bad[0]
        raise StageError(
            f"curate.metadata_file {path}: entry {i} = {value!r} is not a non-empty string "
            f"({len(bad)} bad entries in all)"
        )
    return data


class CaptionSample:
    """The `size` captions whose id hashes are smallest: a bottom-k sample of the pool.

    Which captions are sampled depends only on their ids, never on shard order or chunking,
    and memory stays at about 2 * size captions however large the pool is.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._hashes = np.zeros(0, dtype=np.uint64)
        self._ids = np.zeros(0, dtype=object)
        self._captions = np.zeros(0, dtype=object)

    def add(self, ids: Iterable[str], captions: Iterable[str]) -> None:
        ids = np.asarray(list(ids), dtype=object)
        if self.size == 0 or len(ids) == 0:
            return
        self._hashes = np.concatenate([self._hashes, id_hashes(ids)])
        self._ids = np.concatenate([self._ids, ids])
        self._captions = np.concatenate([self._captions, np.asarray(list(captions), dtype=object)])
        if len(self._hashes) > 2 * self.size:
            self._prune()

    def _prune(self) -> None:
        # ties on the 64-bit hash are broken by id, so the sample is a function of the id set
        order = np.lexsort((self._ids, self._hashes))[: self.size]
        self._hashes, self._ids, self._captions = (
            self._hashes[order],
            self._ids[order],
            self._captions[order],
        )

    def captions(self) -> list[str]:
        """The sampled captions, ordered by id hash."""
        self._prune()
        return [str(c) for c in self._captions]


def caption_token_runs(caption: str, lowercase: bool) -> list[list[str]]:
    """Word runs of a caption as matching sees it (`spacing`); punctuation ends a run."""
    text = spacing(caption.lower() if lowercase else caption)
    runs: list[list[str]] = [[]]
    for token in text.split():
        if any(ch.isalnum() for ch in token):
            runs[-1].append(token)
        elif runs[-1]:
            runs.append([])
    return [r for r in runs if r]


def mine_bigrams(
    captions: Iterable[str],
    min_count: int,
    min_pmi: float,
    max_entries: int,
    lowercase: bool = False,
) -> list[dict[str, float | int | str]]:
    """Bigrams "x y" of adjacent caption words with count >= min_count and PMI >= min_pmi.

    PMI = ln(p(xy) / (p(x) p(y))) with p(xy) = c(xy) / bigram tokens and p(x) = c(x) / word
    tokens. The `max_entries` most frequent qualifying bigrams are returned (ties by text),
    each as {bigram, count, pmi}.
    """
    unigrams: Counter[str] = Counter()
    bigrams: Counter[tuple[str, str]] = Counter()
    for caption in captions:
        for run in caption_token_runs(caption, lowercase):
            unigrams.update(run)
            bigrams.update(zip(run, run[1:], strict=False))
    n_uni, n_bi = sum(unigrams.values()), sum(bigrams.values())
    found = []
    for (x, y), count in bigrams.items():
        if count < min_count:
            continue
        pmi = math.log(count * n_uni * n_uni / (n_bi * unigrams[x] * unigrams[y]))
        if pmi >= min_pmi:
            found.append({"bigram": f"{x} {y}", "count": count, "pmi": round(pmi, 4)})
    found.sort(key=lambda b: (-b["count"], b["bigram"]))
    return found[:max_entries]


def build_metadata(
    params: CurateParams,
    class_names: Iterable[str],
    root: str | Path = ".",
    bigrams: Iterable[str] = (),
) -> list[str]:
    """Entries in a stable order: the user's list, wordfreq words, mined bigrams, class names.

    Entries are whitespace-normalised and deduplicated (first occurrence wins), because a
    repeated entry would double-count its matches. `root` resolves a relative metadata_file.
    """
    entries: list[str] = []
    if params.metadata_file:
        path = Path(params.metadata_file)
        entries.extend(load_metadata_file(path if path.is_absolute() else Path(root) / path))
    if params.wordfreq_top_n:
        from wordfreq import top_n_list  # a few MB of word lists: load only when used

        entries.extend(top_n_list("en", params.wordfreq_top_n))
    entries.extend(bigrams)
    if params.include_class_names:
        entries.extend(sorted({str(c) for c in class_names if c is not None and str(c).strip()}))

    seen: set[str] = set()
    unique: list[str] = []
    for entry in entries:
        norm = " ".join(entry.split())
        if norm and norm not in seen:
            seen.add(norm)
            unique.append(norm)
    return unique


def write_metadata(entries: list[str], path: str | Path) -> None:
    """Write the entry list as JSON (the list index is the entry id)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entries, ensure_ascii=False, indent=0), encoding="utf-8")


def read_metadata(path: str | Path) -> list[str]:
    """Read an entry list written by `write_metadata`."""
    return json.loads(Path(path).read_text(encoding="utf-8"))
