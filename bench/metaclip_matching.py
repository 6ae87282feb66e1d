"""Benchmark: MetaCLIP's naive substring loop vs our Aho-Corasick matcher, in one process.

Same captions, same >= 500k-entry metadata list (bench.synthetic_text). The naive loop
(`naive_match`: `" entry " in spacing(caption)` for every entry, as in MetaCLIP's
substr_matching.py) takes ~50 ms a caption at 500k entries, so it runs on the first few
hundred captions; ours run on all of them and must give identical matches on that subset.
"Matching + balancing" adds what curation does next: per-entry counts, p = t / max(count, t),
and the seeded keep draw (tasks.curation.balancing).

The matchers are single-threaded. The process is pinned to one CPU where the OS allows, and
rates are captions per CPU-second of this process (= captions/s/core); wall-clock rates
are reported beside them (on a shared machine they are lower).

    .venv/bin/python -m bench.metaclip_matching [--entries 500000 --captions 100000 ...]

Prints a table; writes reports/bench/metaclip_matching.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

if __package__ in (None, ""):  # run as `python bench/metaclip_matching.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from bench.synthetic_text import CaptionGenerator, metaclip_like_entries
from tasks.curation.balancing import (
    EntryCounts,
    balance,
    balance_flat,
    entry_probabilities,
    id_hashes,
)
from tasks.curation.matching import BACKENDS, EntryMatcher, MatchedEntries, naive_match

T = TypeVar("T")
NAME = "metaclip_matching"


def pin_to_one_cpu() -> int | None:
    """Pin this process to one CPU it may run on; return it (None where unsupported)."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return cpu


def timed(fn: Callable[[], T], repeats: int = 1) -> tuple[T, float, float]:
    """(result, best CPU seconds, best wall seconds) over `repeats` runs."""
    best_cpu = best_wall = float("inf")
    result: T
    for _ in range(repeats):
        cpu, wall = time.process_time(), time.perf_counter()
        result = fn()
        best_cpu = min(best_cpu, time.process_time() - cpu)
        best_wall = min(best_wall, time.perf_counter() - wall)
    return result, best_cpu, best_wall


def balance_csr(
    ids: Sequence[str], matches: MatchedEntries, num_entries: int, t: int, seed: int
) -> np.ndarray:
    """Counts, p and the keep draw over flat matches (what the streamed curate does)."""
    counts = EntryCounts.from_flat(matches.entry_ids, num_entries).counts
    p = entry_probabilities(counts, t)
    return balance_flat(id_hashes(ids), matches.caption_index(), matches.entry_ids, p, seed)


def balance_lists(
    ids: Sequence[str], matches: list[list[int]], num_entries: int, t: int, seed: int
) -> np.ndarray:
    """The same over one Python list of entry ids per caption."""
    counts = EntryCounts.from_matches(matches, num_entries).counts
    return balance(ids, matches, counts, t, seed)


def _match_each(match: Callable[[str], list[int]], captions: Sequence[str]) -> list[list[int]]:
    return [match(c) for c in captions]


def _measured_row(
    method: str,
    match: Callable[[], Any],
    balance_of: Callable[[Any], np.ndarray],
    repeats: int,
    reference: dict[str, Any] | None = None,
    **extra: Any,
) -> tuple[Any, dict[str, Any]]:
    """Time `match()` then `balance_of(matches)`; the row's ratios are to `reference`."""
    found, cpu, wall = timed(match, repeats)
    kept, balance_cpu, _ = timed(partial(balance_of, found), repeats)
    n = len(found)
    row = _row(method, n, cpu, wall, **extra)
    row["balance_cpu_s"] = round(balance_cpu, 4)
    row["match_balance_per_s_per_core"] = round(n / (cpu + balance_cpu), 2)
    row["kept_fraction"] = round(float(kept.mean()), 4) if n else None
    if reference is not None:
        row["x_naive_matching"] = round(
            row["captions_per_s_per_core"] / reference["captions_per_s_per_core"], 1
        )
        row["x_naive_match_balance"] = round(
            row["match_balance_per_s_per_core"] / reference["match_balance_per_s_per_core"], 1
        )
    return found, row


def _row(method: str, captions: int, cpu_s: float, wall_s: float, **extra: Any) -> dict:
    return {
        "method": method,
        "captions": captions,
        "cpu_s": round(cpu_s, 4),
        "wall_s": round(wall_s, 4),
        "captions_per_s_per_core": round(captions / cpu_s, 1) if cpu_s > 0 else None,
        "captions_per_s_wall": round(captions / wall_s, 1) if wall_s > 0 else None,
        **extra,
    }


def run_benchmark(
    num_entries: int = 500_000,
    num_captions: int = 100_000,
    naive_captions: int = 300,
    per_caption_captions: int = 20_000,
    t: int = 100,
    seed: int = 0,
    repeats: int = 3,
) -> dict[str, Any]:
    """Measure every matcher on the same captions; raise if any disagrees with the loop."""
    started = time.perf_counter()
    entries = metaclip_like_entries(num_entries, seed=seed)
    captions = CaptionGenerator(seed).batch(num_captions)
    ids = [f"bench/{i}" for i in range(num_captions)]
    naive_n = min(naive_captions, num_captions)
    per_caption_n = min(per_caption_captions, num_captions)
    setup_s = time.perf_counter() - started

    num = len(entries)

    def balance_first(found: Any) -> np.ndarray:
        """Balance the first len(found) captions (their ids), flat or list matches."""
        if isinstance(found, MatchedEntries):
            return balance_csr(ids[: len(found)], found, num, t, seed)
        return balance_lists(ids[: len(found)], found, num, t, seed)

    # the reference: MetaCLIP's loop on the first naive_n captions, timed once (it is slow)
    naive, naive_row = _measured_row(
        "naive loop (MetaCLIP substr_matching)",
        partial(_match_each, partial(naive_match, entries=entries), captions[:naive_n]),
        balance_first,
        repeats=1,
    )
    rows = [naive_row]

    all_matches: dict[str, list[list[int]]] = {}
    for backend in BACKENDS:
        matcher, build_cpu, build_wall = timed(partial(EntryMatcher, entries, backend=backend))
        found, row = _measured_row(
            f"{backend}, batch (match_csr)",
            partial(matcher.match_csr, captions),
            balance_first,
            repeats,
            naive_row,
            build_cpu_s=round(build_cpu, 3),
            build_wall_s=round(build_wall, 3),
        )
        lists = found.to_lists()
        if lists[:naive_n] != naive:
            raise AssertionError(f"{backend} batch matches differ from the naive loop")
        all_matches[backend] = lists
        rows.append(row)
        # the per-caption API (`match`), balanced from Python lists
        one_by_one, row = _measured_row(
            f"{backend}, per caption (match)",
            partial(_match_each, matcher.match, captions[:per_caption_n]),
            balance_first,
            repeats,
            naive_row,
        )
        if one_by_one != lists[:per_caption_n]:
            raise AssertionError(f"{backend} match() differs from its batch path")
        rows.append(row)
        del matcher
    first, *others = all_matches.values()
    matches_per_caption = float(np.mean([len(m) for m in first]))
    return {
        "benchmark": NAME,
        "entries": len(entries),
        "captions": num_captions,
        "naive_captions": naive_n,
        "balance_t": t,
        "seed": seed,
        "repeats_best_of": repeats,
        "matches_per_caption": round(matches_per_caption, 2),
        "captions_without_match": int(sum(not m for m in first)),
        "backends_agree_on_all_captions": all(o == first for o in others),
        "identical_to_naive": True,  # checked above: a difference raises
        "single_threaded": True,
        "rows": rows,
        "setup_s": round(setup_s, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def format_table(result: dict[str, Any]) -> str:
    """The result as a fixed-width table."""
    head = (
        f"{'method':40s} {'captions':>9s} {'build CPU s':>11s} {'match c/s/core':>15s} "
        f"{'+balance c/s/core':>18s} {'x naive':>9s} {'wall c/s':>10s}"
    )
    lines = [
        f"MetaCLIP matching: {result['entries']:,} entries, "
        f"{result['matches_per_caption']} matches/caption, t={result['balance_t']}, "
        f"single-threaded, rates per CPU-second (best of {result['repeats_best_of']})",
        head,
        "-" * len(head),
    ]
    for r in result["rows"]:
        build = f"{r['build_cpu_s']:.2f}" if "build_cpu_s" in r else "-"
        ratio = f"{r['x_naive_match_balance']:,.0f}x" if "x_naive_match_balance" in r else "1x"
        lines.append(
            f"{r['method']:40s} {r['captions']:>9,d} {build:>11s} "
            f"{r['captions_per_s_per_core']:>15,.1f} {r['match_balance_per_s_per_core']:>18,.1f} "
            f"{ratio:>9s} {r['captions_per_s_wall']:>10,.1f}"
        )
    lines.append(
        f"identical to the naive loop on its {result['naive_captions']} captions: "
        f"{result['identical_to_naive']}; backends agree on all {result['captions']:,}: "
        f"{result['backends_agree_on_all_captions']}; peak RSS {result['peak_rss_mib']:,.0f} MiB"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=500_000)
    parser.add_argument("--captions", type=int, default=100_000)
    parser.add_argument("--naive-captions", type=int, default=300)
    parser.add_argument("--per-caption-captions", type=int, default=20_000)
    parser.add_argument("--t", type=int, default=100, help="balancing threshold")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the best counts")
    parser.add_argument("--out-dir", type=Path, default=Path("reports/bench"))
    parser.add_argument("--no-pin", action="store_true", help="do not pin to one CPU")
    args = parser.parse_args(argv)

    cpu = None if args.no_pin else pin_to_one_cpu()
    result = run_benchmark(
        args.entries,
        args.captions,
        args.naive_captions,
        args.per_caption_captions,
        args.t,
        args.seed,
        args.repeats,
    )
    result["pinned_cpu"] = cpu
    print(format_table(result))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / f"{NAME}.json"
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
