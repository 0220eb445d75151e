"""Corpora of any length: peak memory and time of reading and planning an ingest, as corpora grow.

    python bench/bench_corpus_stream.py [--sizes 100000,1000000,10000000] [--ingest 100000]
                                        [--before-code DIR] [--keep DIR]

Each figure is one whole process, measured with GNU ``/usr/bin/time`` (peak resident set, wall
seconds):

- ``plan``: what ``traitlens ingest`` does before the model: validate every line and decide,
  per record, keep / new / capture (``pipeline/capture/plan.py``; pass 1 + DuckDB);
- ``read (old code)``: with ``--before-code`` (an earlier release's source folder, e.g.
  ``git archive 4b6f66b | tar -x -C DIR``), that release's ``read_corpus``, which held every
  record in memory (skipped above 1M lines, where it would need many GB);
- ``ingest``: a fresh ``traitlens ingest`` of the first ``--ingest`` lines with a tiny
  random-weight model (``traitlens.testing.make_model``), both codes when given.

Lines are JSONL persona-style statements with a label, about 70 bytes each.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from old_code import old_code_env

PLAN = ("import sys; from traitlens.pipeline.capture.plan import scan_corpus\n"
        "with scan_corpus([sys.argv[1]]) as s:\n    s.decide()\n    print(s.n_records, s.n_duplicates)")
READ_OLD = ("import sys; from traitlens.pipeline.capture.corpus import read_corpus\n"
            "r, d = read_corpus([sys.argv[1]]); print(len(r), d)")


def measured(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """(peak RSS in MB, wall seconds) of one process."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as out:
        p = subprocess.run(["/usr/bin/time", "-f", "%M %e", "-o", out.name, *cmd], capture_output=True, text=True,
                           env=env)
        if p.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed: {(p.stdout + p.stderr)[-2000:]}")
        kb, secs = out.read().split()[-2:]
    return int(kb) / 1024, float(secs)


def write_corpus(path: Path, n: int) -> None:
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"statement": f"I think statement number {i} is true", "label": 1 if i % 2 else -1,
                                "trait": "bulk"}) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000,10000000")
    ap.add_argument("--ingest", type=int, default=100_000, help="lines of the fresh-ingest row (0: skip)")
    ap.add_argument("--before-code", default=None)
    ap.add_argument("--keep", default=None)
    args = ap.parse_args()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="traitlens-bench-stream-"))
    root.mkdir(parents=True, exist_ok=True)
    old = old_code_env(Path(args.before_code)) if args.before_code else None
    rows = []
    try:
        for n in [int(x) for x in args.sizes.split(",")]:
            corpus = root / f"corpus-{n}.jsonl"
            if not corpus.exists():
                write_corpus(corpus, n)
            rows.append((n, "plan", *measured([sys.executable, "-c", PLAN, str(corpus)])))
            print(rows[-1], flush=True)
            if old is not None and n <= 1_000_000:
                rows.append((n, "read (old code)", *measured([sys.executable, "-c", READ_OLD, str(corpus)], old)))
                print(rows[-1], flush=True)
        if args.ingest:
            from traitlens.testing import make_model

            model = make_model("llama", root / "tiny-llama")
            corpus = root / f"corpus-{args.ingest}.jsonl"
            if not corpus.exists():
                write_corpus(corpus, args.ingest)
            for label, env in [("ingest", None)] + ([("ingest (old code)", old)] if old is not None else []):
                store = root / f"store-{label.replace(' ', '-')}"
                shutil.rmtree(store, ignore_errors=True)
                cmd = [sys.executable, "-m", "traitlens.workflows.cli", "--store", str(store), "ingest", str(corpus),
                       "--model", str(model), "--quiet", "--pooling", "last", "--layers", "0", "--batch-size", "256"]
                rows.append((args.ingest, label, *measured(cmd, env)))
                print(rows[-1], flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print("\n| lines | what | peak RSS MB | seconds |\n|---:|---|---:|---:|")
    for n, what, mb, secs in rows:
        print(f"| {n:,} | {what} | {mb:,.0f} | {secs:.1f} |")


if __name__ == "__main__":
    main()
