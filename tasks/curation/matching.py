"""MetaCLIP substring matching: which metadata entries occur in a caption.

A caption matches entry e when `" e "` is a substring of `spacing(caption)`, exactly as in
MetaCLIP's `substr_matching.py` (`naive_match` below is that loop, kept as the reference).
`EntryMatcher` finds every key `" e "` at once with one Aho-Corasick automaton, reporting ALL
overlapping matches (MetaCLIP counts "red", "cat" and "red cat" in "a red cat").

The batch path (`match_batch`, `match_csr`) joins a chunk of spaced captions into one string
with a separator that occurs in no key (the byte 0xFF for the UTF-8 automaton, an unused
character for the str one), so no match can span two captions, makes one automaton call for
the chunk, and turns the matches into flat arrays (`MatchedEntries`: CSR offsets + entry
ids) with numpy, without a Python object per caption.

Backends: ahocorasick-rs (default; measured faster and smaller, see bench/README.md) and
pyahocorasick. Both give identical results; the property test checks each against the loop.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from tasks.errors import StageError

_PUNCT_TO_WRAP = (",", ".", ";", ":", "?", "!", "`")
_CHARS_TO_SPACE = ("\t", "\n", "\r")

Backend = Literal["ahocorasick_rs", "pyahocorasick"]
BACKENDS: tuple[Backend, ...] = ("ahocorasick_rs", "pyahocorasick")
DEFAULT_CHUNK_SIZE = 8192  # captions per automaton call: amortises the call, keeps strings small


def spacing(text: str) -> str:
    """MetaCLIP's normalisation: pad with spaces, space out punctuation, blank out tabs/newlines."""
    spaced = f" {text} "
    for punct in _PUNCT_TO_WRAP:
        spaced = spaced.replace(punct, f" {punct} ")
    for char in _CHARS_TO_SPACE:
        spaced = spaced.replace(char, " ")
    return spaced


def naive_match(caption: str, entries: Sequence[str], lowercase: bool = False) -> list[int]:
    """Reference matcher: the ids of every entry whose `" entry "` occurs in the caption."""
    text = spacing(caption.lower() if lowercase else caption)
    return [i for i, entry in enumerate(entries) if f" {entry} " in text]


@dataclass(frozen=True)
class MatchedEntries:
    """Matches of many captions as flat arrays (CSR): caption i matched
    `entry_ids[offsets[i]:offsets[i + 1]]`, sorted ascending and distinct."""

    offsets: np.ndarray  # int64, len = captions + 1, offsets[0] == 0
    entry_ids: np.ndarray  # int32

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> list[int]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"caption {i} out of range for {len(self)} captions")
        i %= len(self)
        return self.entry_ids[self.offsets[i] : self.offsets[i + 1]].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.to_lists())

    @property
    def num_matches(self) -> int:
        """Total (caption, entry) pairs."""
        return int(self.offsets[-1])

    def counts_per_caption(self) -> np.ndarray:
        """How many distinct entries each caption matched."""
        return np.diff(self.offsets)

    def caption_index(self) -> np.ndarray:
        """The caption of each element of `entry_ids` (same length), for numpy grouping."""
        return np.repeat(np.arange(len(self), dtype=np.int64), self.counts_per_caption())

    def to_lists(self) -> list[list[int]]:
        """One sorted list of entry ids per caption (what `EntryMatcher.match` returns)."""
        flat = self.entry_ids.tolist()
        bounds = self.offsets.tolist()
        return [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    @classmethod
    def concat(cls, parts: Sequence[MatchedEntries]) -> MatchedEntries:
        """The matches of consecutive caption chunks, as one result."""
        if not parts:
            return cls(np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int32))
        shifts = np.cumsum([0] + [p.num_matches for p in parts[:-1]])
        offsets = np.concatenate(
            [parts[0].offsets[:1]] + [p.offsets[1:] + s for p, s in zip(parts, shifts, strict=True)]
        )
        return cls(offsets.astype(np.int64), np.concatenate([p.entry_ids for p in parts]))


def _utf8(text: str) -> bytes:
    # surrogatepass: a lone surrogate (from a badly decoded caption) encodes too; the
    # encoding stays one code point -> one byte sequence, so byte matches are char matches
    return text.encode("utf-8", "surrogatepass")


def _caption_of(ends: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Caption index of each match end, for texts of `lengths` joined by a 1-unit separator."""
    starts = np.concatenate(([0], np.cumsum(lengths + 1)[:-1]))
    return np.searchsorted(starts, ends, side="right") - 1


class _RustAutomaton:
    """ahocorasick-rs over UTF-8 bytes; overlapping search reports every key occurrence.

    Captions are joined with the byte 0xFF, which never occurs in UTF-8, so in no key.
    """

    def __init__(self, keys: list[str]) -> None:
        import ahocorasick_rs

        self._automaton = ahocorasick_rs.BytesAhoCorasick(
            [_utf8(k) for k in keys], matchkind=ahocorasick_rs.MATCHKIND_STANDARD
        )

    def key_ids(self, text: str) -> Iterable[int]:
        found = self._automaton.find_matches_as_indexes(_utf8(text), True)
        return (k for k, _start, _end in found)

    def find(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(key id, caption index) of every match in `texts`."""
        encoded = [_utf8(t) for t in texts]
        lengths = np.fromiter(map(len, encoded), np.int64, len(encoded))
        found = self._automaton.find_matches_as_indexes(b"\xff".join(encoded), True)
        flat = np.fromiter(itertools.chain.from_iterable(found), np.int64, 3 * len(found))
        return flat[0::3], _caption_of(flat[2::3], lengths)


class _PythonCAutomaton:
    """pyahocorasick over str; `iter` (not `iter_long`) reports every key occurrence.

    Captions are joined with a character that occurs in no key, so no match spans two.
    """

    def __init__(self, keys: list[str]) -> None:
        import ahocorasick

        self._automaton = ahocorasick.Automaton(ahocorasick.STORE_INTS)
        for key_id, key in enumerate(keys):
            self._automaton.add_word(key, key_id)
        self._automaton.make_automaton()
        self._separator = _separator(keys)

    def key_ids(self, text: str) -> Iterable[int]:
        return (k for _end, k in self._automaton.iter(text))

    def find(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(key id, caption index) of every match in `texts`."""
        lengths = np.fromiter(map(len, texts), np.int64, len(texts))
        found = list(self._automaton.iter(self._separator.join(texts)))
        flat = np.fromiter(itertools.chain.from_iterable(found), np.int64, 2 * len(found))
        return flat[1::2], _caption_of(flat[0::2], lengths)  # iter's end is inclusive


def _separator(keys: Iterable[str]) -> str:
    """A character in no key: a match can then never cover it, so never spans two captions."""
    used = set("".join(keys))
    # control characters first: ASCII keeps the joined string compact (1 byte per char)
    for code in itertools.chain(range(0x00, 0x20), range(0xE000, 0xF900), range(0x10000, 0x110000)):
        if chr(code) not in used:
            return chr(code)
    raise StageError("metadata entries use every Unicode character: no caption separator left")


class EntryMatcher:
    """Aho-Corasick matcher over a fixed entry list; agrees with `naive_match` on any input.

    Entry ids are list positions. A repeated entry keeps all its ids (as the naive loop does).
    """

    def __init__(
        self, entries: Sequence[str], lowercase: bool = False, backend: Backend = "ahocorasick_rs"
    ) -> None:
        if backend not in BACKENDS:
            raise StageError(f"matching backend {backend!r} unknown: use one of {BACKENDS}")
        self.entries = list(entries)
        if len(self.entries) >= 2**31:
            raise StageError(f"{len(self.entries)} metadata entries: at most 2**31 - 1 supported")
        self.lowercase = lowercase
        self.backend = backend

        key_of_entry: dict[str, int] = {}
        key_per_entry = np.empty(len(self.entries), dtype=np.int64)
        for entry_id, entry in enumerate(self.entries):
            key_per_entry[entry_id] = key_of_entry.setdefault(f" {entry} ", len(key_of_entry))
        keys = list(key_of_entry)
        # key id -> entry ids (CSR); entry ids of one key stay ascending (stable sort)
        order = np.argsort(key_per_entry, kind="stable")
        self._key_entries = order.astype(np.int32)
        self._key_offsets = np.searchsorted(key_per_entry[order], np.arange(len(keys) + 1))
        self._unique = len(keys) == len(self.entries)
        self._automaton: _RustAutomaton | _PythonCAutomaton | None = None
        if keys:
            automaton_cls = _RustAutomaton if backend == "ahocorasick_rs" else _PythonCAutomaton
            self._automaton = automaton_cls(keys)

    def _text(self, caption: str) -> str:
        return spacing(caption.lower() if self.lowercase else caption)

    def _entries_of_keys(self, key_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(index into key_ids, entry id) for every entry behind each key."""
        if self._unique:
            return np.arange(len(key_ids)), self._key_entries[self._key_offsets[key_ids]]
        per_key = self._key_offsets[key_ids + 1] - self._key_offsets[key_ids]
        source = np.repeat(np.arange(len(key_ids)), per_key)
        first = np.repeat(self._key_offsets[key_ids] - np.cumsum(per_key) + per_key, per_key)
        return source, self._key_entries[first + np.arange(len(source))]

    def match(self, caption: str) -> list[int]:
        """Sorted ids of the entries found in `caption`."""
        if self._automaton is None:
            return []
        key_ids = set(self._automaton.key_ids(self._text(caption)))
        if self._unique:
            return sorted(int(self._key_entries[self._key_offsets[k]]) for k in key_ids)
        found = (
            self._key_entries[self._key_offsets[k] : self._key_offsets[k + 1]] for k in key_ids
        )
        return sorted(int(e) for ids in found for e in ids)

    def match_batch(self, captions: Sequence[str]) -> MatchedEntries:
        """The matches of `captions` as flat arrays, with one automaton call for all of them."""
        if self._automaton is None or not captions:
            offsets = np.zeros(len(captions) + 1, dtype=np.int64)
            return MatchedEntries(offsets, np.zeros(0, dtype=np.int32))
        key_ids, caption_of_match = self._automaton.find([self._text(c) for c in captions])
        source, entry_ids = self._entries_of_keys(key_ids)
        # sorting puts the pairs in (caption, entry) order; then drop repeats within a caption.
        # Stable sort: the codes arrive in caption order already, and timsort uses those runs.
        code = np.sort(caption_of_match[source] * len(self.entries) + entry_ids, kind="stable")
        if len(code):
            code = code[np.concatenate(([True], code[1:] != code[:-1]))]
        caption_idx, entry_ids = np.divmod(code, len(self.entries))
        offsets = np.searchsorted(caption_idx, np.arange(len(captions) + 1))
        return MatchedEntries(offsets.astype(np.int64), entry_ids.astype(np.int32))

    def match_csr(
        self,
        captions: Sequence[str],
        progress: bool = False,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> MatchedEntries:
        """`match_batch` over any number of captions, chunk by chunk (progress bar on request)."""
        starts = range(0, len(captions), chunk_size)
        if progress:
            from tqdm import tqdm

            starts = tqdm(starts, desc="metaclip matching", unit="chunk", leave=False)
        return MatchedEntries.concat(
            [self.match_batch(captions[s : s + chunk_size]) for s in starts]
        )

    def match_all(self, captions: Sequence[str], progress: bool = False) -> list[list[int]]:
        """`[match(c) for c in captions]`, computed by the batch path (progress bar on request)."""
        return self.match_csr(list(captions), progress=progress).to_lists()
