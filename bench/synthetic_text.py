"""Offline, seeded text for the curation benchmarks: a MetaCLIP-sized entry list and
alt-text-like captions whose words follow English word frequencies (Zipf).

Entries (`metaclip_like_entries`): MetaCLIP's "0".."99", every English word wordfreq knows
(~320k, its top-N list), then bigrams of frequent words drawn by frequency until the list
reaches the requested size (MetaCLIP 1 caps its list at 500k entries).

Captions (`CaptionGenerator`): web alt-text templates ("Vintage x y - Z | W", "a photo of
...", lists with commas) filled with words drawn from wordfreq's English frequencies, so a
few entries ("the", "of") match most captions and most entries match rarely: the head and
tail that MetaCLIP balancing flattens.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import lru_cache

import numpy as np

# {w}: a word, {W}: a capitalised word, {n}: a number; everything else is literal
CAPTION_TEMPLATES = (
    "{W} {w} {w} {w}",
    "a photo of the {w} {w} {w}",
    "{W} {w} {w} - {W} {w} | {W}",
    "{W} {w}, {w} {w} and {w} {w}",
    "{W} {w} {w} {w} {w}: {w} {w} {n}",
    "Close-up of {w} {w} on {w} {w} background",
    "{W} {w} {w} in {w} {w}, {w} {n}",
    "{w} {w} {w} {w} {w} {w} {w}.",
    "{W} {W} {w} {n} {w} {w} for {w}",
    "{W} {w} {w}? {W} {w} {w} {w}!",
    "{W} {w} {w} {w} with {w} {w} and {w} {w}, {w} {w} {w} {n}",
    "{W} {w} {w} {w} {w} {w}; {w} {w} {w} {w} {w}",
)
_SLOT = re.compile(r"\{([wWn])\}")


@lru_cache(maxsize=1)
def english_frequencies() -> tuple[list[str], np.ndarray]:
    """wordfreq's English words, most frequent first, and their frequencies (sum to 1)."""
    from wordfreq import get_frequency_dict

    table = get_frequency_dict("en")
    words = sorted(table, key=lambda w: (-table[w], w))
    freq = np.array([table[w] for w in words], dtype=np.float64)
    return words, freq / freq.sum()


def metaclip_like_entries(
    num_entries: int, seed: int = 0, max_words: int | None = None, bigram_pool: int = 20_000
) -> list[str]:
    """Exactly `num_entries` distinct entries.

    Order: numbers, wordfreq's top-N English words (at most `max_words`), then bigrams of
    the `bigram_pool` most frequent words drawn by frequency (seeded), as many as needed.
    """
    from wordfreq import top_n_list

    entries = dict.fromkeys(str(i) for i in range(100))
    for word in top_n_list("en", max_words if max_words is not None else 1_000_000):
        if len(entries) >= num_entries:
            break
        entries.setdefault(word)
    words, freq = english_frequencies()
    bigram_pool = min(bigram_pool, len(words))
    if num_entries - len(entries) > bigram_pool * (bigram_pool - 1) // 2:
        raise ValueError(f"{num_entries} entries: more than the bigrams of {bigram_pool} words")
    head = words[:bigram_pool]
    cdf = np.cumsum(freq[:bigram_pool])
    rng = np.random.default_rng(seed)
    while len(entries) < num_entries:
        draws = np.searchsorted(cdf, rng.random((2, 65_536)) * cdf[-1], side="right")
        for a, b in zip(*np.minimum(draws, bigram_pool - 1).tolist(), strict=True):
            if a != b:
                entries.setdefault(f"{head[a]} {head[b]}")
    return list(entries)[:num_entries]


class CaptionGenerator:
    """Seeded alt-text-like captions; `batch(n)` draws the next n (vectorised word draws)."""

    def __init__(self, seed: int = 0) -> None:
        self.words, freq = english_frequencies()
        self._cdf = np.cumsum(freq)
        self._rng = np.random.default_rng(seed)
        self._templates = [
            (_SLOT.split(t)[0::2], _SLOT.findall(t)) for t in CAPTION_TEMPLATES
        ]  # (literal pieces, slot kinds): pieces interleave with slots

    def _words(self, n: int) -> list[str]:
        idx = np.searchsorted(self._cdf, self._rng.random(n) * self._cdf[-1], side="right")
        return [self.words[i] for i in np.minimum(idx, len(self.words) - 1).tolist()]

    def batch(self, n: int) -> list[str]:
        """The next `n` captions."""
        choice = self._rng.integers(0, len(self._templates), n)
        captions: list[str] = [""] * n
        for t, (pieces, slots) in enumerate(self._templates):
            rows = np.flatnonzero(choice == t).tolist()
            words = iter(self._words(len(rows) * len(slots)))
            numbers = iter(self._rng.integers(1, 2030, len(rows) * len(slots)).tolist())
            for row in rows:
                parts = [pieces[0]]
                for kind, piece in zip(slots, pieces[1:], strict=True):
                    word = str(next(numbers)) if kind == "n" else next(words)
                    parts.append(word.capitalize() if kind == "W" else word)
                    parts.append(piece)
                captions[row] = "".join(parts)
        return captions

    def stream(self, total: int, batch_size: int = 65_536) -> Iterator[list[str]]:
        """`total` captions in batches of at most `batch_size`."""
        for start in range(0, total, batch_size):
            yield self.batch(min(batch_size, total - start))
