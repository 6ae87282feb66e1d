"""The memoised text-tower features equal a fresh forward pass and are keyed by the weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tasks.models import create_model
from tasks.models.text_features import cache_dir, pooled_features, tower_fingerprint

CAPTIONS = [
    "a photo of the digit seven.",
    "a small red circle in the top left and a large blue square in the center",
    "x",
    "",
    "a photo of the digit seven.",
]


@pytest.fixture(scope="module")
def loaded():
    return create_model("clipops-vit-xs-minilm", lock_text=True)


def _reference(loaded) -> torch.Tensor:
    """The tower's own forward pass, one caption at a time, untrimmed."""
    text = loaded.model.text.eval()
    rows = []
    with torch.no_grad():
        for caption in CAPTIONS:
            x = loaded.tokenizer([caption])
            mask = (x != text.config.pad_token_id).long()
            rows.append(text.pooler(text.transformer(input_ids=x, attention_mask=mask), mask))
    return torch.cat(rows)


def test_cached_features_equal_a_fresh_forward(loaded, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CLIPOPS_CACHE_DIR", str(tmp_path))
    first = pooled_features(loaded.model, loaded.tokenizer, CAPTIONS)
    torch.testing.assert_close(first, _reference(loaded), atol=1e-5, rtol=1e-4)
    shards = list((tmp_path / "text_features").rglob("*.npz"))
    assert len(shards) == 1

    # the second call is served from disk: same values, no new shard
    again = pooled_features(loaded.model, loaded.tokenizer, list(reversed(CAPTIONS)))
    assert torch.equal(again, first.flip(0))
    assert list((tmp_path / "text_features").rglob("*.npz")) == shards


def test_changed_tower_weights_get_a_new_key(loaded) -> None:
    before = tower_fingerprint(loaded.model)
    other = create_model("clipops-vit-xs-minilm", lock_text=True)
    assert tower_fingerprint(other.model) == before  # same pretrained weights, same key
    with torch.no_grad():
        other.model.text.transformer.embeddings.word_embeddings.weight[0, 0] += 1.0
    assert tower_fingerprint(other.model) != before


def test_cache_can_be_switched_off(loaded, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CLIPOPS_CACHE_DIR", "off")
    assert cache_dir() is None
    off = pooled_features(loaded.model, loaded.tokenizer, CAPTIONS)
    torch.testing.assert_close(off, _reference(loaded), atol=1e-5, rtol=1e-4)
