"""MetaCLIP substring matching: the Aho-Corasick matcher agrees with the naive loop."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.curation.matching import (
    BACKENDS,
    EntryMatcher,
    MatchedEntries,
    naive_match,
    spacing,
)
from tasks.errors import StageError

# A small alphabet so that matches are frequent: letters in both cases, the characters
# spacing() treats specially, the batch paths' separators (\x00, \x01; U+00FF whose
# UTF-8 is not the byte 0xFF), unicode whose lowercase is special (final sigma, dotted I
# which lowercases to 2 chars, ß), and lone surrogates (UTF-8 cannot encode them strictly).
ALPHABET = "abAB  ,.;:?!`\t\n\r\x00\x01ÿéΣσİß\ud800\udcff"
TEXT = st.text(alphabet=ALPHABET, max_size=30)
ENTRY = st.text(alphabet=ALPHABET, max_size=5)


@st.composite
def entry_lists(draw: st.DrawFn) -> list[str]:
    """Entries with repeats, prefixes and suffixes of each other, and the empty entry."""
    base = draw(st.lists(ENTRY, min_size=1, max_size=8))
    extra = draw(
        st.lists(
            st.tuples(st.sampled_from(base), st.integers(0, 5), st.sampled_from("=<>")),
            max_size=6,
        )
    )
    # "=": a repeat, "<": a prefix, ">": a suffix of an entry already in the list
    derived = [e if op == "=" else e[:k] if op == "<" else e[k:] for e, k, op in extra]
    order = draw(st.permutations(base + derived))
    return list(order)


def assert_agrees(entries: list[str], captions: list[str], lower: bool, backend: str) -> None:
    matcher = EntryMatcher(entries, lowercase=lower, backend=backend)
    expected = [naive_match(c, entries, lowercase=lower) for c in captions]
    assert [matcher.match(c) for c in captions] == expected
    assert matcher.match_batch(captions).to_lists() == expected
    assert matcher.match_csr(captions, chunk_size=2).to_lists() == expected
    assert matcher.match_all(captions) == expected


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=250, deadline=None)
@given(captions=st.lists(TEXT, max_size=6), entries=entry_lists(), lower=st.booleans())
def test_every_path_agrees_with_the_naive_loop(
    backend: str, captions: list[str], entries: list[str], lower: bool
) -> None:
    assert_agrees(entries, captions, lower, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=60, deadline=None)
@given(
    captions=st.lists(st.text(st.characters(exclude_categories=[]), max_size=40), max_size=4),
    lower=st.booleans(),
)
def test_agrees_on_arbitrary_unicode(backend: str, captions: list[str], lower: bool) -> None:
    # any code point, surrogates included; entries cut from the captions themselves, so
    # arbitrary text still produces matches
    entries = sorted({w for c in captions for w in spacing(c).split(" ")} | {"", " "})
    assert_agrees(entries, captions, lower, backend)


@pytest.mark.parametrize(
    ("text", "spaced"),
    [
        ("a cat,\tsat.", " a cat ,  sat .  "),
        ("a;b:c?d!e`f", " a ; b : c ? d ! e ` f "),
        ("line\nbreak\r\nend", " line break  end "),
        ("", "  "),
        ("don't-stop", " don't-stop "),  # apostrophes and hyphens are not spaced out
    ],
)
def test_spacing_rule(text: str, spaced: str) -> None:
    assert spacing(text) == spaced


@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_whole_words_and_every_overlap(backend: str) -> None:
    entries = ["cat", "red cat", "at", "sat", "red", "cat sat", "Cat"]
    matcher = EntryMatcher(entries, backend=backend)
    # "red", "red cat", "cat", "cat sat" overlap: MetaCLIP counts all of them
    assert matcher.match("A red cat sat.") == [0, 1, 3, 4, 5]
    assert matcher.match("A red cat, sat.") == [0, 1, 3, 4]  # the comma splits "cat sat"
    assert matcher.match("concatenate") == []
    assert matcher.match("Cat") == [6]


@pytest.mark.parametrize("backend", BACKENDS)
def test_repeated_entries_keep_every_id(backend: str) -> None:
    entries = ["dog", "cat", "dog", "dog"]
    matcher = EntryMatcher(entries, backend=backend)
    assert matcher.match("a dog") == [0, 2, 3] == naive_match("a dog", entries)
    assert matcher.match_batch(["a dog", "a cat", "x"]).to_lists() == [[0, 2, 3], [1], []]


@pytest.mark.parametrize("backend", BACKENDS)
def test_lowercase_option(backend: str) -> None:
    assert EntryMatcher(["cat"], backend=backend).match("Cat") == []
    assert EntryMatcher(["cat"], lowercase=True, backend=backend).match("Cat") == [0]
    # entries are not lowercased: an upper-case entry never matches a lowercased caption
    assert EntryMatcher(["Cat"], lowercase=True, backend=backend).match("Cat") == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_entries_using_every_control_character_still_batch_correctly(backend: str) -> None:
    # pyahocorasick's separator must then come from beyond the control characters
    entries = [chr(c) for c in range(32)] + ["a"]
    captions = ["a \x00 a", "\x1f a", "a"]
    assert_agrees(entries, captions, lower=False, backend=backend)


def test_no_entries_or_no_captions() -> None:
    assert EntryMatcher([]).match("anything") == []
    assert EntryMatcher([]).match_all(["a", "b"]) == [[], []]
    assert EntryMatcher(["a"]).match_all([]) == []
    assert len(EntryMatcher(["a"]).match_csr([])) == 0


def test_unknown_backend_is_a_clear_error() -> None:
    with pytest.raises(StageError, match="backend 'regex' unknown"):
        EntryMatcher(["a"], backend="regex")  # type: ignore[arg-type]


def test_matched_entries_arrays() -> None:
    matcher = EntryMatcher(["a", "b", "c"])
    result = matcher.match_csr(["a b", "c", "zzz", "c a"], chunk_size=3)
    assert isinstance(result, MatchedEntries)
    assert len(result) == 4 and result.num_matches == 5
    assert result[0] == [0, 1] and result[-1] == [0, 2] and list(result)[2] == []
    assert result.offsets.tolist() == [0, 2, 3, 3, 5]
    assert result.entry_ids.dtype == np.int32
    assert result.caption_index().tolist() == [0, 0, 1, 3, 3]
    assert result.counts_per_caption().tolist() == [2, 1, 0, 2]
    with pytest.raises(IndexError):
        result[4]
