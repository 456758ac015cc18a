"""Benchmark `rlhfspec.runtime.annotation.qc.analyse` on a million generated annotations.

    python benchmarks/bench_qc.py                       # 200,000 items x 5 annotators
    python benchmarks/bench_qc.py --items 20000 --annotators 8 --repeat 3

The annotations are generated directly as numpy columns (`AnnotationTable.from_arrays`), seeded,
with the problems QC looks for planted: per-annotator accuracy, one annotator who picks the
first-shown response, one who tires after 45 minutes and works long sessions, 5% gold items,
batches that every annotator works through in turn. It then times `analyse` end to end (best of `--repeat`) and reports peak memory
twice: the tracemalloc peak of one extra traced run (numpy reports its buffers to tracemalloc)
and the process's maximum resident set size.

Why a benchmark: QC runs on every annotation delivery in CI, and real queues reach millions of
labels; `analyse` must stay vectorised (no Python loop over rows or items) to keep that cheap.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import tracemalloc
from typing import Any

import numpy as np

from rlhfspec.runtime.annotation.qc import QcReport, QcSettings, analyse
from rlhfspec.runtime.annotation.table import AnnotationTable
from rlhfspec.runtime.report.qc_report import format_text

TASK_SECONDS = 110.0
EPOCH_2026_11_02 = 1793577600.0  # Monday 2026-11-02 00:00 UTC


def generate(
    n_items: int, n_annotators: int, seed: int, n_batches: int = 5
) -> tuple[AnnotationTable, dict[str, int]]:
    """Every item labelled by every annotator; columns only, no per-row Python."""
    rng = np.random.default_rng(seed)
    names = [f"ann-{a + 1:02d}" for a in range(n_annotators)]
    accuracy = np.full(n_annotators, 0.92)
    if n_annotators >= 4:
        accuracy[3] = 0.62  # noisy
    biased = 4 if n_annotators >= 5 else -1  # picks the first-shown response 60% of the time
    tired = 5 if n_annotators >= 6 else min(2, n_annotators - 1)  # declines after 45 minutes

    truth = rng.choice(3, size=n_items, p=[0.495, 0.495, 0.01]).astype(np.int8)
    is_gold_item = rng.random(n_items) < 0.05
    item_batch = (np.arange(n_items) * n_batches // n_items).astype(np.int32)
    n = n_items * n_annotators
    annotator = np.repeat(np.arange(n_annotators, dtype=np.int32), n_items)
    # each annotator works batch after batch, the items of a batch in a random order
    item = np.concatenate(
        [np.lexsort((rng.random(n_items), item_batch)) for _ in range(n_annotators)]
    ).astype(np.int32)

    # back-to-back sessions with a 30-minute break; the tired annotator works longer ones
    position = np.tile(np.arange(n_items), n_annotators)
    length = np.where(np.arange(n_annotators) == tired, 75, 40)
    session_local = position // length[annotator]
    task_in_session = position % length[annotator]
    sessions_per_annotator = -(-n_items // length)
    session_offset = np.concatenate([[0], np.cumsum(sessions_per_annotator)[:-1]])
    session = (session_offset[annotator] + session_local).astype(np.int32)
    session_seconds = length[annotator] * TASK_SECONDS + 1800.0
    minutes = task_in_session * TASK_SECONDS / 60.0
    started = (
        EPOCH_2026_11_02
        + session_local * session_seconds
        + task_in_session * TASK_SECONDS
        + rng.integers(0, 20, n)
    )
    submitted = started + rng.uniform(40, 100, n)

    p_correct = accuracy[annotator].copy()
    fading = (annotator == tired) & (minutes >= 45)
    p_correct[fading] = np.maximum(0.55, 0.92 - (minutes[fading] - 45) / 15 * 0.37)
    correct = rng.random(n) < p_correct
    wrong_label = (truth[item] + rng.integers(1, 3, n)) % 3
    canon = np.where(correct, truth[item], wrong_label).astype(np.int8)
    swapped = rng.random(n) < 0.5  # shown order is a fair coin
    choice = np.where((canon < 2) & swapped, 1 - canon, canon).astype(np.int8)
    if biased >= 0:
        habit = (annotator == biased) & (rng.random(n) < 0.6)
        choice[habit] = 0
        canon = np.where((choice < 2) & swapped, 1 - choice, choice).astype(np.int8)

    batch = item_batch[item]
    items = [f"item-{i:07d}" for i in range(n_items)]
    table = AnnotationTable.from_arrays(
        items=items,
        annotators=names,
        sessions=[f"s{s:06d}" for s in range(int(sessions_per_annotator.sum()))],
        batches=[f"batch-{b + 1:02d}" for b in range(n_batches)],
        versions=["1.2.0"],
        item=item,
        annotator=annotator,
        session=session,
        batch=batch,
        version=np.zeros(n, dtype=np.int32),
        gold=is_gold_item[item],
        choice=choice,
        canon=canon,
        started=started.astype(np.float64),
        submitted=submitted.astype(np.float64),
        has_justification=rng.random(n) < 0.6,
    )
    gold_ids = np.flatnonzero(is_gold_item)
    gold = dict(zip([items[i] for i in gold_ids], truth[gold_ids].tolist(), strict=True))
    return table, gold


def settings_for(table: AnnotationTable) -> QcSettings:
    return QcSettings(
        gold_share=(0.03, 0.08),
        annotators_per_item=len(table.annotators),
        batches=tuple((b, "1.2.0") for b in table.batches),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--annotators", type=int, default=5)
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--seed", type=int, default=20261101)
    parser.add_argument("--repeat", type=int, default=1, help="timed runs; the best is reported")
    parser.add_argument("--no-tracemalloc", action="store_true", help="skip the traced run")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    table, gold = generate(args.items, args.annotators, args.seed, args.batches)
    settings = settings_for(table)
    generated = time.perf_counter() - t0
    print(
        f"generated {len(table):,} annotations ({args.items:,} items x {args.annotators} "
        f"annotators, {len(table.sessions):,} sessions, {len(table.batches)} batches, "
        f"{len(gold):,} gold items) in {generated:.1f} s"
    )

    best = float("inf")
    report: QcReport | None = None
    for _ in range(max(1, args.repeat)):
        start = time.perf_counter()
        report = analyse(table, gold, settings)
        best = min(best, time.perf_counter() - start)
    assert report is not None
    print(f"analyse: {best:.2f} s ({len(table) / best / 1e6:.2f} M annotations/s)")

    stats: dict[str, Any] = {}
    if not args.no_tracemalloc:
        tracemalloc.start()
        analyse(table, gold, settings)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        stats["tracemalloc_peak_mib"] = peak / 2**20
        print(f"peak memory allocated inside analyse (tracemalloc): {peak / 2**20:.0f} MiB")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_mib = rss / 2**20 if sys.platform == "darwin" else rss / 2**10
    print(f"process max RSS (data + analyse): {rss_mib:.0f} MiB")
    print()
    print(format_text(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
