"""A re-ingest that finds nothing new, without its receipt, beside reading the corpus it has to read.

    python bench/bench_reingest.py [--sizes 1000,1000000] [--repeats 3] [--keep DIR] [--before-code DIR]

Receipts (``pipeline/capture/receipts.py``) answer an unchanged rerun by hashing the corpus; but
they are a cache in ``$TRAITLENS_HOME``: a cron job on another machine or user, a cleared home,
or a corpus written again (same records, other bytes) has none. Such a rerun must read the
corpus and compare it with the store. This bench measures it, per corpus size, as whole
processes (what cron runs), each the median of ``--repeats``:

- ``start-up``: ``python -c "import traitlens.workflows.cli"``, the floor of any command;
- ``read the corpus``: ``pyarrow.json.read_json`` of the file, nothing else: the cost the issue
  asks a no-op to match ("as fast as reading the corpus");
- ``plan``: the ingest's first pass alone (``scan_corpus`` + ``decide`` against the store): read,
  validate and hash every record, then one DuckDB join against the store's tables;
- ``ingest, no receipt``: ``traitlens ingest CORPUS --model M`` with the receipt deleted before
  each run: the plan, the store's refusals under its lock, and no model load (no torch);
- ``ingest, receipt``: the same rerun answered from its receipt (hashing the corpus bytes);
- with ``--before-code DIR`` (an earlier release's source, e.g. ``git archive 9ff0073 | tar -x
  -C DIR``): that code's rerun without its receipt, per size, on the same store (``--before-repeats``
  runs, 1 by default; its median).

The store. The corpus is ``--sizes`` JSONL lines of ~80 bytes (``{"text", "label", "trait", "dataset"}``).
The first 1,000 prompts are captured by a real ``ingest`` with a tiny random-weight model
(``traitlens.testing.make_model``; layer 0, ``last`` pooling), which creates the group, records
its capture policy and caches the model's identity. The remaining prompts are written without a
model: the plan's own scan of the corpus decides which records are new, their ``prompts`` rows
are written as an ingest writes them, and their activation rows are zeros committed through the
store's writer (``Store.writer``), so ``rows``, the arrays and the commit marks are all a real
store's (``traitlens verify --no-values`` passes); only the activation values are random, not a
model's, and a no-op re-ingest never reads them. The store is then compacted (``traitlens
compact``), as the issue's figures were measured.

Each figure is wall seconds and, beside it, the CPU seconds (user + system, all threads) of the
process: on a shared machine the wall time moves with the other processes' load (printed before
and after), the CPU time much less.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from old_code import old_code_env

CLI = [sys.executable, "-m", "traitlens.workflows.cli"]
SEED = 1_000  # prompts captured with the model; the rest are filled without it
READ = "import sys, pyarrow.json as pj; t = pj.read_json(sys.argv[1]); print(t.num_rows)"
PLAN = ("import sys; from traitlens.pipeline.capture.plan import scan_corpus; from traitlens.store import Store\n"
        "store = Store.open(sys.argv[2])\n"
        "with scan_corpus([sys.argv[1]]) as s:\n    s.decide(store, store.groups())\n"
        "    print(s.n_records, s.count(2), s.count(8))")


def write_corpus(path: Path, n: int) -> None:
    with path.open("w") as f:
        for start in range(0, n, 100_000):
            f.write("".join(json.dumps({"text": f"prompt {i}: a short statement", "label": 1 if i % 2 else -1,
                                        "trait": "bulk", "dataset": "bulk"}) + "\n"
                            for i in range(start, min(n, start + 100_000))))


def ingest_args(store: Path, corpus: Path, model: Path) -> list[str]:
    return ["--store", str(store), "ingest", str(corpus), "--model", str(model), "--quiet", "--pooling", "last",
            "--layers", "0"]


def build_store(store: Path, corpus: Path, model: Path, n: int) -> None:
    """The first :data:`SEED` prompts captured by the model, the rest filled without it (see the module)."""
    import numpy as np

    from traitlens.pipeline.capture.ingest import IngestConfig, ingest
    from traitlens.pipeline.capture.plan import CAPTURE, NEW, scan_corpus
    from traitlens.store import PendingBatch, Store

    seed = corpus.with_name(f"seed-{corpus.name}")
    with corpus.open() as src, seed.open("w") as dst:
        for _, line in zip(range(SEED), src):
            dst.write(line)
    ingest(store, [seed], cfg=IngestConfig(model=str(model), poolings=["last"], layers="0", chunk_rows=4096),
           progress=False, log=lambda *a: None)
    if n <= SEED:
        return
    s = Store.open(store)
    (group,) = s.groups()
    d = s.layer_array(group, 0).shape[1]
    with s.lock("bench fill"), scan_corpus([corpus]) as scan, s.run("bench-fill", {"note": "no model"}) as run:
        scan.decide(s, [group])
        w = s.writer([group], {"resid": [0]}, d, run.run_id, chunk_rows=4096)
        rng = np.random.default_rng(0)
        for window in scan.windows(65_536, want=NEW | CAPTURE):
            s.write_prompts([r.as_row() for r, f in window if f & NEW], [])
            ids = [r.prompt_id for r, f in window if f & CAPTURE]
            k = len(ids)
            w.add(PendingBatch(ids, np.full(k, 8, np.int32), np.zeros(k, np.int32), [None] * k,
                               {("resid", "last"): {0: rng.standard_normal((k, d), np.float32)}}), max_seconds=1e9)
        w.commit()
    subprocess.run(CLI + ["--store", str(store), "compact", "--grace", "0"], check=True, capture_output=True)
    check = subprocess.run(CLI + ["--store", str(store), "verify", "--no-values", "-q"], capture_output=True, text=True)
    if check.returncode:
        raise SystemExit(f"the bench's store is not clean: {check.stdout[-2000:]}")


def timed(cmd: list[str], before=None, env=None) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds, last output line) of one process."""
    if before:
        before()
    r0, t = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    secs, r1 = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed: {(p.stdout + p.stderr)[-2000:]}")
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return secs, cpu, (p.stdout.strip().splitlines() or [""])[-1]


@dataclass
class Figure:
    wall: float  # median
    cpu: float  # median
    walls: list[float]
    last: str

    def __str__(self) -> str:
        return f"{self.wall:.2f} ({self.cpu:.2f})"


def median_of(repeats: int, cmd: list[str], before=None, env=None) -> Figure:
    runs = [timed(cmd, before, env) for _ in range(repeats)]
    return Figure(statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs),
                  [round(r[0], 2) for r in runs], runs[-1][2])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,1000000")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--keep", default=None, help="build (or reuse) the corpora, stores and model here")
    ap.add_argument("--before-code", default=None,
                    help="an earlier release's source folder (git archive REV | tar -x -C DIR): its no-receipt "
                         "ingest, once per size, side by side")
    ap.add_argument("--before-repeats", type=int, default=1, help="runs of the --before-code rerun per size")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="traitlens-bench-reingest-"))
    home = root / "home"  # a private TRAITLENS_HOME: its receipts and the tiny model's identity
    os.environ["TRAITLENS_HOME"] = str(home)
    from traitlens.pipeline.capture import receipts
    from traitlens.testing import make_model

    def drop_receipts():
        shutil.rmtree(receipts.traitlens_home() / "receipts", ignore_errors=True)

    rows, befores = [], []
    try:
        root.mkdir(parents=True, exist_ok=True)
        model = root / "tiny-llama"
        if not (model / "config.json").exists():
            make_model("llama", model)
        load_before = os.getloadavg()
        startup = median_of(args.repeats, [sys.executable, "-c", "import traitlens.workflows.cli"])
        for n in sizes:
            corpus, store = root / f"c{n}.jsonl", root / f"s{n}.store"
            if not corpus.exists():
                write_corpus(corpus, n)
            if not (store / "store.json").exists():
                t = time.perf_counter()
                build_store(store, corpus, model, n)
                print(f"built the {n:,}-prompt store in {time.perf_counter() - t:.0f} s", flush=True)
            cmd = CLI + ingest_args(store, corpus, model)
            read = median_of(args.repeats, [sys.executable, "-c", READ, str(corpus)])
            plan = median_of(args.repeats, [sys.executable, "-c", PLAN, str(corpus), str(store)])
            cold = median_of(args.repeats, cmd, before=drop_receipts)
            assert "model was not loaded" in cold.last and f" {n} already stored" in cold.last, cold.last
            warm = median_of(args.repeats, cmd)
            assert "nothing new since run" in warm.last, warm.last
            if args.before_code:
                old = median_of(args.before_repeats, cmd, before=drop_receipts,
                                env=old_code_env(Path(args.before_code)))
                assert "0 prompts captured" in old.last, old.last
                befores.append((n, old))
            rows.append((n, corpus.stat().st_size, read, plan, cold, warm))
            print(f"{n:,}: {cold.last}", flush=True)
        load_after = os.getloadavg()
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; load average "
          f"{load_before[0]:.1f} before, {load_after[0]:.1f} after; median of {args.repeats} whole processes, wall "
          f"seconds (CPU seconds); start-up (import traitlens.workflows.cli) {startup}\n")
    print("| prompts | corpus MB | read the corpus (pyarrow) | plan | ingest, no receipt | no receipt / read "
          "| ingest, receipt |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n, size, read, plan, cold, warm in rows:
        print(f"| {n:,} | {size / 1e6:.1f} | {read} | {plan} | {cold} | {cold.wall / read.wall:.1f}x | {warm} |")
    if len(rows) > 1:
        (n0, _, read0, _, cold0, _), (n1, _, read1, _, cold1, _) = rows[0], rows[-1]
        print(f"\ngrowth from {n0:,} to {n1:,} prompts: ingest without its receipt {cold1.wall - cold0.wall:+.2f} s "
              f"wall ({cold1.cpu - cold0.cpu:+.2f} s CPU); reading the corpus {read1.wall - read0.wall:+.2f} s wall "
              f"({read1.cpu - read0.cpu:+.2f} s CPU)")
    if len(befores) > 1:
        (n0, old0), (n1, old1) = befores[0], befores[-1]
        print(f"growth from {n0:,} to {n1:,} prompts, the code in {args.before_code}: {old1.wall - old0.wall:+.2f} s "
              f"wall ({old1.cpu - old0.cpu:+.2f} s CPU)")
    for n, old in befores:
        print(f"the code in {args.before_code} at {n:,} prompts, the same rerun without its receipt (median of "
              f"{args.before_repeats}): {old}; each run {old.walls}")
    for n, _, read, plan, cold, warm in rows:
        print(f"wall seconds of each run at {n:,}: read {read.walls}, plan {plan.walls}, no receipt {cold.walls}, "
              f"receipt {warm.walls}")


if __name__ == "__main__":
    main()
