"""A tiny but real CLIP training run, in-process or as a worker process (`python -m`).

The trainer tests compare runs that must end with the same weights: accumulation against
one batch, two torchrun processes against one, a run killed and resumed against an
uninterrupted one. They share this builder so every run starts from the same model and
data: 8x8 sklearn digits upscaled to 32 px (real images, no PNG round trip), template
captions, and an open_clip CLIP small enough to step in milliseconds.

As a worker (under torchrun or alone):
    python -m tests.tiny_training --out DIR [--accum 2] [--checkpoint-every 2] ...
writes DIR/<variant>/weights.pt and DIR/<variant>/loss.csv (rank 0), for each variant.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
from sklearn.datasets import load_digits

from tasks.params import TrainParams
from tasks.training import Augment, ClipObjective, PairTensors, train
from tasks.training.objective import Features

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEMPLATES = ["a photo of the digit {}.", "a handwritten {}.", "the number {} written by hand."]
VOCAB = 64  # the captions' BPE tokens, renumbered in order (pad stays 0, end-of-text highest)


def caption_tokens(captions: list[str]) -> torch.Tensor:
    """CLIP BPE tokens of `captions`, renumbered onto a compact vocabulary of VOCAB ids.

    The order of ids is kept, so padding is still 0 and end-of-text still the largest id
    (open_clip pools the text at the argmax token); the embedding table stays tiny.
    """
    tokens = open_clip.tokenizer.SimpleTokenizer(context_length=16)(captions)
    used, compact = torch.unique(tokens, return_inverse=True)
    if len(used) > VOCAB:
        raise ValueError(f"{len(used)} distinct tokens do not fit VOCAB={VOCAB}")
    return compact


def tiny_clip(seed: int = 0) -> torch.nn.Module:
    """A 2-layer ViT (width 32, 16 patches) + 1-layer text transformer CLIP, seeded."""
    torch.manual_seed(seed)
    return open_clip.model.CLIP(
        embed_dim=32,
        vision_cfg=open_clip.model.CLIPVisionCfg(
            layers=2, width=32, head_width=16, patch_size=8, image_size=32
        ),
        text_cfg=open_clip.model.CLIPTextCfg(
            context_length=16, vocab_size=VOCAB, width=32, heads=2, layers=1
        ),
    )


class SequentialAugmentPairs(PairTensors):
    """PairTensors drawing its crops from the generator in batch order (not per row), as a
    source without `split_invariant` does: the trainer must build whole global batches."""

    split_invariant = False

    def batch(self, index: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        uniforms = torch.rand(len(index), 5, generator=generator)
        out = super().batch(index, torch.Generator())  # unaugmented rows
        scale = (self.augment.crop_scale_min, 1.0)
        from tasks.images import random_resized_crop_flip

        out["image"] = random_resized_crop_flip(
            out["image"], generator, scale=scale, flip_p=self.augment.flip_p, uniforms=uniforms
        )
        return out


def tiny_pairs(rows: int, augment: bool = False, sequential: bool = False) -> PairTensors:
    """`rows` real digits as a PairTensors source (crop 0.7 + flip 0.5 when `augment`)."""
    digits = load_digits()
    pick = np.random.default_rng(0).choice(len(digits.images), size=rows, replace=False)
    gray = torch.from_numpy((digits.images[pick] / 16.0 * 255).astype(np.uint8))
    upscaled = gray.repeat_interleave(4, dim=1).repeat_interleave(4, dim=2)  # 8 -> 32 px
    images = upscaled[:, None].repeat(1, 3, 1, 1)
    captions = [
        TEMPLATES[k % len(TEMPLATES)].format(NAMES[digits.target[i]]) for k, i in enumerate(pick)
    ]
    uniques = sorted(set(captions))
    index = torch.tensor([uniques.index(c) for c in captions])
    tokens = caption_tokens(uniques)
    aug = Augment(crop_scale_min=0.7, flip_p=0.5) if augment else Augment()
    cls = SequentialAugmentPairs if sequential else PairTensors
    return cls(
        images,
        index,
        tokens,
        None,
        open_clip.constants.OPENAI_DATASET_MEAN,
        open_clip.constants.OPENAI_DATASET_STD,
        aug,
    )


class SlowClipObjective(ClipObjective):
    """ClipObjective that sleeps per step, so a test can kill the run mid-way."""

    def __init__(self, sleep_s: float) -> None:
        super().__init__()
        self.sleep_s = sleep_s

    def features(self, model: torch.nn.Module, batch: dict) -> Features:
        if self.sleep_s:
            time.sleep(self.sleep_s)
        return super().features(model, batch)


VARIANTS = {
    "rowwise": {"augment": True, "sequential": False},
    "sequential": {"augment": True, "sequential": True},
    "plain": {"augment": False, "sequential": False},
}


def last_grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The gradients of the last step (left in `.grad` by the trainer, after clipping)."""
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def run_variant(
    variant: str, params: TrainParams, out: Path | None, rows: int, sleep_s: float = 0.0
) -> torch.nn.Module:
    """Train the tiny model on one data variant and return it; with `out`, rank 0 saves
    weights.pt, grads.pt (last step), loss.csv and result.json there."""
    model = tiny_clip(params.seed)
    data = tiny_pairs(rows, **VARIANTS[variant])
    objective = SlowClipObjective(sleep_s)  # one type, slept or not: it is fingerprinted
    log = out / "loss.csv" if out is not None else None
    result = train(model, data, objective, params, torch.device("cpu"), log, desc=variant)
    if out is not None and int(os.environ.get("RANK", "0")) == 0:
        torch.save(model.state_dict(), out / "weights.pt")
        torch.save(last_grads(model), out / "grads.pt")
        (out / "result.json").write_text(json.dumps(result.__dict__))
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--variants", default="rowwise")
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--accum", type=int, default=1)
    parser.add_argument("--checkpoint-every", type=int, default=0)
    parser.add_argument("--sleep", type=float, default=0.0)
    args = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1) if "WORLD_SIZE" not in os.environ else 1)
    params = worker_params(args.batch, args.epochs, args.accum, args.checkpoint_every)
    for variant in args.variants.split(","):
        out = Path(args.out) / variant
        out.mkdir(parents=True, exist_ok=True)
        run_variant(variant, params, out, args.rows, args.sleep)


def worker_params(batch: int, epochs: int, accum: int = 1, checkpoint_every: int = 0):
    """The TrainParams every comparison uses (lr high enough that steps move the weights)."""
    return TrainParams(
        epochs=epochs,
        batch_size=batch,
        lr=5e-3,
        warmup_steps=1,
        seed=7,
        accum_steps=accum,
        checkpoint_every=checkpoint_every,
    )


if __name__ == "__main__":
    main()
