"""MetaCLIP metadata: PMI bigrams on a crafted corpus, the id-hash caption sample, entries."""

import json
from pathlib import Path

import pytest

from tasks.curation.metadata import CaptionSample, build_metadata, mine_bigrams
from tasks.errors import StageError
from tasks.params import CurateParams


def crafted_corpus() -> list[str]:
    """'new york' always together; 'the' and 'red' everywhere (frequent, not associated)."""
    captions = []
    for i in range(200):
        captions.append(f"the red car number{i} in new york.")
        captions.append(f"the red house, the red door{i}")
        captions.append(f"a red ball{i} on the grass")
    captions += ["hot dog stand"] * 5  # strongly associated but rare
    return captions


def test_pmi_bigrams_keep_associated_pairs_only() -> None:
    found = mine_bigrams(crafted_corpus(), min_count=20, min_pmi=2.0, max_entries=100)
    by_text = {b["bigram"]: b for b in found}
    assert "new york" in by_text and by_text["new york"]["count"] == 200
    # 'the red' is frequent but both words are everywhere: its PMI is low
    assert "the red" not in by_text
    assert "hot dog" not in by_text  # below min_count
    assert not any("," in b or "." in b for b in by_text)  # punctuation ends a word run
    # "in new" and "new york" each occur 200 times: ties are broken by text
    assert [b["bigram"] for b in found[:2]] == sorted(b["bigram"] for b in found[:2])
    low_count = mine_bigrams(crafted_corpus(), min_count=5, min_pmi=2.0, max_entries=100)
    assert "hot dog" in {b["bigram"] for b in low_count}
    assert len(mine_bigrams(crafted_corpus(), 1, 0.0, max_entries=3)) == 3


def test_caption_sample_depends_on_ids_not_order() -> None:
    ids = [f"id{i}" for i in range(500)]
    caps = [f"caption {i}" for i in range(500)]
    one = CaptionSample(50)
    one.add(ids, caps)
    chunked = CaptionSample(50)
    for start in (400, 0, 250, 100):  # shuffled chunks of uneven sizes
        end = {400: 500, 0: 100, 250: 400, 100: 250}[start]
        chunked.add(ids[start:end], caps[start:end])
    assert one.captions() == chunked.captions() and len(one.captions()) == 50


def test_entry_list_sources_order_and_dedup(tmp_path: Path) -> None:
    user = tmp_path / "entries.json"
    user.write_text(json.dumps(["new  york", "zebra crossing", "the"]))
    params = CurateParams(wordfreq_top_n=3, metadata_file=str(user))
    entries = build_metadata(params, ["cat", "the", None], tmp_path, ["new york", "red car"])
    assert entries == ["new york", "zebra crossing", "the", "to", "and", "red car", "cat"]
    user.write_text(json.dumps(["ok", ""]))
    with pytest.raises(StageError, match="entry 1"):
        build_metadata(params, [], tmp_path)
