"""MetaCLIP substring matching: the Aho-Corasick matcher agrees with the naive loop."""

from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.curation.matching import EntryMatcher, naive_match, spacing

# a small alphabet with the characters spacing() treats specially, so matches are frequent
TEXT = st.text(alphabet="abAB ,.;:?!`\t\n", max_size=30)
ENTRY = st.text(alphabet="abAB ,.", min_size=1, max_size=4)


def test_spacing_pads_punctuation_and_blanks_whitespace() -> None:
    assert spacing("a cat,\tsat.") == " a cat ,  sat .  "


def test_matches_whole_words_only() -> None:
    entries = ["cat", "red cat", "at", "sat"]
    matcher = EntryMatcher(entries)
    assert matcher.match("A red cat, sat.") == [0, 1, 3]
    assert matcher.match("concatenate") == []


def test_lowercase_option() -> None:
    assert EntryMatcher(["cat"]).match("Cat") == []
    assert EntryMatcher(["cat"], lowercase=True).match("Cat") == [0]


@settings(max_examples=300, deadline=None)
@given(
    captions=st.lists(TEXT, max_size=5), entries=st.lists(ENTRY, max_size=8), lower=st.booleans()
)
def test_aho_corasick_agrees_with_naive(
    captions: list[str], entries: list[str], lower: bool
) -> None:
    matcher = EntryMatcher(entries, lowercase=lower)
    for caption in captions:
        assert matcher.match(caption) == naive_match(caption, entries, lowercase=lower)
