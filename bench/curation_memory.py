"""Benchmark: peak memory and speed of the streamed curation on a generated 1M-row pool.

Writes a text-only pool (bench.text_pool: captions with English word frequencies, image
fields null) and curates it with the streamed driver `tasks.curation.stream.curate_pool`
(metadata: wordfreq's English words + bigrams mined from the pool; basic and language
filters, matching, balancing, kept shards and ids) in a child process, so the peak RSS
measured (`ru_maxrss`) is the curation's alone. The budget is 2 GiB.

    .venv/bin/python -m bench.curation_memory [--rows 1000000 --chunk-rows 2000 ...]

Prints a table; writes reports/bench/curation_memory.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/curation_memory.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.text_pool import write_text_pool

NAME = "curation_memory"
BUDGET_MIB = 2048


def _peak_rss_mib(who: int) -> float:
    # Linux reports ru_maxrss in KiB
    return resource.getrusage(who).ru_maxrss / 1024


class _RssSampler:
    """Samples this process's resident memory every `interval` s on a daemon thread."""

    def __init__(self, interval: float = 0.2) -> None:
        self.samples: list[tuple[float, float]] = []  # (seconds since start, MiB)
        self._interval = interval
        self._stop = threading.Event()
        self._start = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def rss_mib() -> float | None:
        try:  # Linux: resident pages are the second field of /proc/self/statm
            pages = int(Path("/proc/self/statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            return None
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            rss = self.rss_mib()
            if rss is not None:
                self.samples.append((time.perf_counter() - self._start, rss))

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def peak_by_phase(self, timings: dict[str, float]) -> dict[str, float]:
        """Peak sampled RSS within each phase; phases follow each other in `timings` order."""
        peaks: dict[str, float] = {}
        end = 0.0
        for phase, seconds in timings.items():
            start, end = end, end + seconds
            inside = [mib for t, mib in self.samples if start <= t < end]
            if inside:
                peaks[phase] = round(max(inside), 1)
        return peaks


def _curate_child(inputs: list[str], out_dir: str, config: dict[str, Any], conn: Any) -> None:
    """In the child: curate, then send back a summary of the report and this process's usage."""
    from tasks.curation.stream import curate_pool
    from tasks.params import CurateParams

    params = CurateParams(**config)
    with _RssSampler() as sampler:
        started = time.perf_counter()
        report = curate_pool([Path(p) for p in inputs], Path(out_dir), params)
        wall = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    timings = report.get("timings_s") or {}
    phases = {k: v for k, v in timings.items() if k != "total_s"}
    conn.send(
        {
            "wall_s": wall,
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "peak_rss_mib": usage.ru_maxrss / 1024,
            "peak_rss_by_phase_mib": sampler.peak_by_phase(phases),
            "report": {
                k: report.get(k)
                for k in (
                    "rows_in",
                    "kept",
                    "filtered",
                    "quarantined",
                    "t",
                    "t_source",
                    "matches_before",
                    "matches_after",
                    "timings_s",
                )
            },
            "entries": report.get("entries"),
        }
    )
    conn.close()


def run_benchmark(
    rows: int, rows_per_shard: int, work_dir: Path, config: dict[str, Any], seed: int = 0
) -> dict[str, Any]:
    """Generate the pool, curate it in a child process, return the measurements."""
    started = time.perf_counter()
    shards = write_text_pool(work_dir / "pool", rows, rows_per_shard, seed)
    generate_s = time.perf_counter() - started
    pool_bytes = sum(p.stat().st_size for p in shards)
    generator_peak = _peak_rss_mib(resource.RUSAGE_SELF)

    context = multiprocessing.get_context("spawn")  # a fresh interpreter: nothing inherited
    receive, send = context.Pipe(duplex=False)
    child = context.Process(
        target=_curate_child,
        args=([str(p) for p in shards], str(work_dir / "curated"), config, send),
    )
    child.start()
    send.close()
    summary = receive.recv()
    child.join()
    if child.exitcode != 0:
        raise RuntimeError(f"the curation child exited with {child.exitcode}")

    report = summary["report"]
    peak = summary["peak_rss_mib"]
    return {
        "benchmark": NAME,
        "rows": rows,
        "shards": len(shards),
        "rows_per_shard": rows_per_shard,
        "pool_parquet_mib": round(pool_bytes / 2**20, 1),
        "generate_s": round(generate_s, 2),
        "generator_peak_rss_mib": round(generator_peak, 1),
        "curate_wall_s": round(summary["wall_s"], 2),
        "curate_cpu_s": round(summary["cpu_s"], 2),
        "rows_per_s_wall": round(rows / summary["wall_s"], 1),
        "rows_per_cpu_s": round(rows / summary["cpu_s"], 1),
        "curate_peak_rss_mib": round(peak, 1),
        "curate_peak_rss_by_phase_mib": summary["peak_rss_by_phase_mib"],
        "children_peak_rss_mib": round(_peak_rss_mib(resource.RUSAGE_CHILDREN), 1),
        "budget_mib": BUDGET_MIB,
        "within_budget": peak <= BUDGET_MIB,
        "entries": summary["entries"],
        "config": config,
        "report": report,
        "driver": "tasks.curation.stream.curate_pool",
        "python": platform.python_version(),
    }


def format_table(result: dict[str, Any]) -> str:
    r = result["report"]
    kept = sum((r.get("kept") or {}).values())
    rows = [
        ("pool rows (text only)", f"{result['rows']:,} in {result['shards']} shards"),
        ("metadata entries", f"{result['entries']:,}" if result["entries"] else "-"),
        ("kept / filtered", f"{kept:,} / {r.get('filtered')}"),
        ("balance t", f"{r.get('t')} ({r.get('t_source')})"),
        (
            "curate wall",
            f"{result['curate_wall_s']:.1f} s ({result['rows_per_s_wall']:,.0f} rows/s)",
        ),
        (
            "curate CPU",
            f"{result['curate_cpu_s']:.1f} s ({result['rows_per_cpu_s']:,.0f} rows/CPU-s)",
        ),
        ("curate peak RSS", f"{result['curate_peak_rss_mib']:,.0f} MiB (budget {BUDGET_MIB:,})"),
        (
            "peak RSS by phase",
            ", ".join(
                f"{k.removesuffix('_s')} {v:,.0f}"
                for k, v in result["curate_peak_rss_by_phase_mib"].items()
            )
            + " MiB",
        ),
        ("generator peak RSS", f"{result['generator_peak_rss_mib']:,.0f} MiB"),
        ("within budget", str(result["within_budget"])),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(
        ["Streamed curation of a generated pool"] + [f"{k:<{width}}  {v}" for k, v in rows]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rows-per-shard", type=int, default=100_000)
    parser.add_argument("--chunk-rows", type=int, default=2000, help="curate.chunk_rows")
    parser.add_argument("--wordfreq-top-n", type=int, default=500_000)
    parser.add_argument("--balance-t", type=int, default=600)
    parser.add_argument("--no-language", action="store_true", help="skip the language filter")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", type=Path, default=None, help="kept if given")
    parser.add_argument("--out-dir", type=Path, default=Path("reports/bench"))
    args = parser.parse_args(argv)

    config: dict[str, Any] = {
        "chunk_rows": args.chunk_rows,
        "wordfreq_top_n": args.wordfreq_top_n,
        "balance_t": args.balance_t,
        "seed": args.seed,
    }
    if args.no_language:
        config["language_allowed"] = []
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="clipops-curation-bench-"))
    try:
        result = run_benchmark(args.rows, args.rows_per_shard, work_dir, config, args.seed)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work_dir, ignore_errors=True)
    print(format_table(result))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / f"{NAME}.json"
    out.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0 if result["within_budget"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
