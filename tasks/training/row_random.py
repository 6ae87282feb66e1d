"""Randomness keyed by row, so a batch's augmentations do not depend on how it is split.

The trainer builds step `t`'s batch from a generator seeded by (seed, t). A batch source that
draws `n` values from that generator gives row i a different value when the batch is cut
into micro-batches or spread over ranks (the draws are consumed in order). `row_uniforms`
instead draws ONE key from the generator and hashes (key, row id, draw number) into
uniform numbers, so a row gets the same numbers whichever slice of the batch it is in.
Sources that use it declare `split_invariant = True` (tasks.training.data.PairTensors does);
the trainer then builds each rank's and micro-batch's rows directly.

The hash is SplitMix64's finaliser (Steele et al., 2014) on uint64 in numpy (wrap-around
arithmetic is defined there), 24 bits per float32 in [0, 1).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_DRAW = np.uint64(0xD1B54A32D192ED03)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def derive_seed(seed: int, *path: object) -> int:
    """A 63-bit seed determined by `seed` and a path such as ("step", 12): stable across runs."""
    text = "/".join(str(p) for p in (seed, *path))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * _MIX1
    x = (x ^ (x >> np.uint64(27))) * _MIX2
    return x ^ (x >> np.uint64(31))


def row_uniforms(generator: torch.Generator, rows: torch.Tensor, draws: int) -> torch.Tensor:
    """`[len(rows), draws]` float32 uniforms in [0, 1), a function of (generator state, row id).

    Consumes exactly one value from `generator`, however many rows there are, so every
    slice of a batch built from equally seeded generators sees the same numbers per row.
    The result is on `rows.device`.
    """
    key = int(torch.randint(0, 2**62, (1,), generator=generator))
    ids = rows.detach().to("cpu", torch.int64).numpy().astype(np.uint64)
    draw = np.arange(draws, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = np.uint64(key) + ids[:, None] * _GOLDEN + draw[None, :] * _DRAW
        bits = _splitmix64(_splitmix64(x)) >> np.uint64(40)
    out = torch.from_numpy((bits.astype(np.float64) / float(1 << 24)).astype(np.float32))
    return out.to(rows.device)
