"""Batch text encoding: each distinct caption once, on its token prefix; same features and
gradients as open_clip's encode_text on every row at the full context."""

from __future__ import annotations

import copy

import pytest
import torch

from tasks.models import create_model
from tasks.models.factory import build_model
from tasks.training.data import dedupe_ok, encode_batch_text, text_prefix_length

CAPTIONS = ["a red circle.", "a small blue square at the top left of the picture.", "two"]
REPEATED = [*CAPTIONS, "two", "a red circle.", "two"]  # captions repeat in real batches


def _tiny_clip(**text_cfg):
    """A small real open_clip CLIP (CLIP BPE tokenizer, 32-token context)."""
    cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "head_width": 16,
                       "patch_size": 8},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2,
                     "layers": 2, **text_cfg},
    }  # fmt: skip
    torch.manual_seed(0)
    return build_model("tiny-clip", cfg)


def _features_and_grads(model, tokens):
    model.zero_grad(set_to_none=True)
    feats = encode_batch_text(model, {"text": tokens})
    (feats * torch.linspace(-1, 1, feats.shape[1])).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return feats.detach(), grads


def test_causal_clip_text_dedupes_uses_the_prefix_and_matches_the_full_context():
    loaded = _tiny_clip()
    tokens = loaded.tokenizer(REPEATED)
    length = text_prefix_length(loaded.model, tokens)
    assert length == int(tokens.argmax(dim=-1).max()) + 1 < tokens.shape[1]
    assert loaded.model.training and dedupe_ok(loaded.model)

    trimmed, trimmed_grads = _features_and_grads(loaded.model, tokens)
    full = loaded.model.encode_text(tokens, normalize=True)
    assert torch.allclose(trimmed, full.detach(), atol=1e-5)

    # gradients too: the reference runs open_clip's own encode_text on the full context
    reference = copy.deepcopy(loaded.model)
    reference.zero_grad(set_to_none=True)
    ref = reference.encode_text(tokens, normalize=True)
    (ref * torch.linspace(-1, 1, ref.shape[1])).sum().backward()
    for name, param in reference.named_parameters():
        if param.grad is None:
            assert name not in trimmed_grads or trimmed_grads[name].abs().max() == 0
            continue
        assert torch.allclose(trimmed_grads[name], param.grad, rtol=1e-4, atol=1e-5), name


def test_no_prefix_without_a_causal_mask_or_with_first_token_pooling():
    for text_cfg in ({"no_causal_mask": True}, {"pool_type": "first"}):
        loaded = _tiny_clip(**text_cfg)
        tokens = loaded.tokenizer(CAPTIONS)
        assert text_prefix_length(loaded.model, tokens) is None
        feats = encode_batch_text(loaded.model, {"text": tokens})
        assert torch.allclose(feats, loaded.model.encode_text(tokens, normalize=True))


def test_hf_text_tower_prefix_matches_full_padding():
    loaded = create_model("clipops-vit-xs-minilm", lock_text=False)
    model = loaded.model.train()
    assert not dedupe_ok(model)  # MiniLM drops out in training: copies would differ
    model.eval()  # no dropout, so the two passes are comparable
    assert dedupe_ok(model)
    tokens = loaded.tokenizer(REPEATED)
    length = text_prefix_length(model, tokens)
    assert length is not None and length < tokens.shape[1]
    with torch.no_grad():
        trimmed = encode_batch_text(model, {"text": tokens})
        full = model.encode_text(tokens, normalize=True)
    assert torch.allclose(trimmed, full, atol=1e-5)


@pytest.mark.parametrize("pool", ["argmax", "eos"])
def test_prefix_length_follows_the_pooled_token(pool):
    loaded = _tiny_clip(pool_type=pool, eos_id=49407)
    tokens = loaded.tokenizer(CAPTIONS)
    ends = (tokens == 49407).int().argmax(dim=-1)
    assert text_prefix_length(loaded.model, tokens) == int(ends.max()) + 1
