"""Metadata at scale: what `info`, `query count(*)`, `verify --no-values` and `compact` cost
as stores grow, before and after compaction (whole processes, as a user runs them).

    python bench/bench_metadata.py [--sizes 100000,1000000,10000000] [--before-max 1000000] [--keep DIR]
                                   [--before-code DIR]

Each store is written through the project's own ``CommitWriter`` (random activations, 2 layers,
d 16, one commit per 256 prompts, as a long ingest commits), in two ways:

- ``uncompacted``: without the writer lock, so nothing is merged: one ``rows`` part per commit,
  as every store written before compaction existed (only for sizes up to ``--before-max``);
  with ``--before-code DIR`` (an earlier release's source, e.g. ``git archive 4b6f66b | tar -x
  -C DIR``) the same commands also run with that code on this store (``uncompacted, old code``);
- ``auto``: holding the lock, as ``traitlens ingest`` writes now: the tables compact as they grow;

then ``traitlens compact`` merges each table into one file (``compact``). The prompts table
is written in parts of 1M records straight from Arrow arrays (what ``add_prompts`` writes,
without building 10M Python dicts). Start-up is measured on its own (``python -c pass`` and
``import traitlens.workflows.cli``) so the table shows what each command costs beyond it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pyarrow as pa
from old_code import old_code_env

CLI = [sys.executable, "-m", "traitlens.workflows.cli"]
COMMIT = 256
LAYERS = [0, 1]
D = 16


def timed(cmd: list[str], env: dict | None = None) -> float:
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed: {(p.stdout + p.stderr)[-2000:]}")
    return time.perf_counter() - t


def build(path: Path, n: int, lock: bool) -> float:
    """Write an ``n``-prompt store; returns seconds."""
    from traitlens.store import GroupKey, PendingBatch, Store, tables

    t0 = time.perf_counter()
    store = Store.open(path, create=True)
    ids = np.char.add("p", np.char.zfill(np.arange(n).astype(str), 9))
    stamp = pa.scalar(time.time_ns() // 1000, pa.timestamp("us", tz="UTC"))
    for s in range(0, n, 1_000_000):
        chunk = ids[s:s + 1_000_000]
        m = len(chunk)
        t = pa.table({"prompt_id": pa.array(chunk), "text": pa.array(np.char.add("prompt ", chunk)),
                      "messages": pa.nulls(m, pa.string()), "dataset": pa.array(["bench"] * m),
                      "trait": pa.array(["bulk"] * m), "label": pa.array(np.where(np.arange(m) % 2, 1, -1), pa.int8()),
                      "split": pa.array(["train"] * m), "source": pa.nulls(m, pa.string()),
                      "extra": pa.nulls(m, pa.string()), "added_at": pa.repeat(stamp, m)})
        tables.write_part(store.tables_path / "prompts", t, tables.PROMPTS_SCHEMA)
    key = GroupKey("bench-model", "raw", "resid", "last")
    rng = np.random.default_rng(0)
    block = {l: rng.standard_normal((COMMIT, D)).astype(np.float32) for l in LAYERS}
    idlist = ids.tolist()
    with store.lock("bench") if lock else nullcontext():
        w = store.writer([key], LAYERS, D, "bench-run", chunk_rows=COMMIT)
        for s in range(0, n, COMMIT):
            b = idlist[s:s + COMMIT]
            w.add(PendingBatch(prompt_ids=b, token_counts=np.full(len(b), 7, np.int32),
                               truncated=np.zeros(len(b), np.int32), responses=[None] * len(b),
                               pooled={("resid", "last"): {l: v[:len(b)] for l, v in block.items()}}))
            if s and s % 1_000_000 == 0:
                print(f"  {s:,} prompts written ({time.perf_counter() - t0:.0f} s)", flush=True)
        w.commit()
    return time.perf_counter() - t0


def files(store: Path, table: str) -> int:
    from traitlens.store.tables import part_files

    return len(part_files(store / "tables" / table))


def measure(store: Path, env: dict | None = None) -> dict:
    base = CLI + ["--store", str(store)]
    return {"files": files(store, "rows"),
            "info": timed(base + ["info"], env),
            "count": timed(base + ["query", "SELECT count(*) FROM rows"], env),
            "verify": timed(base + ["verify", "--no-values", "--quiet"], env)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000,10000000")
    ap.add_argument("--before-max", type=int, default=1_000_000, help="largest size also built the 0.2.0 way")
    ap.add_argument("--keep", default=None, help="build the stores here and keep them")
    ap.add_argument("--before-code", default=None, help="an earlier release's source folder, run on the uncompacted store")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="traitlens-bench-meta-"))
    root.mkdir(parents=True, exist_ok=True)
    floor = {"python -c pass": timed([sys.executable, "-c", "pass"]),
             "import traitlens.workflows.cli": timed([sys.executable, "-c", "import traitlens.workflows.cli"])}
    results = []
    try:
        for n in sizes:
            for how in (["uncompacted"] if n <= args.before_max else []) + ["auto"]:
                path = root / f"{how}-{n}"
                if not (path / "store.json").exists():
                    print(f"building {n:,} prompts ({how}) ...", flush=True)
                    secs = build(path, n, lock=how == "auto")
                    print(f"  built in {secs:.0f} s", flush=True)
                if how == "uncompacted" and args.before_code:
                    meta = json.loads((path / "store.json").read_text())  # nothing compacted: a valid version 1
                    (path / "store.json").write_text(json.dumps({**meta, "version": 1}))
                    results.append((n, "uncompacted, old code", measure(path, old_code_env(Path(args.before_code)))))
                    print(f"  {n:,} uncompacted, old code: {results[-1][2]}", flush=True)
                results.append((n, how, measure(path)))
                print(f"  {n:,} {how}: {results[-1][2]}", flush=True)
                if how == "auto":
                    t = timed(CLI + ["--store", str(path), "compact", "--grace", "0"])
                    r = measure(path)
                    r["compact"] = t
                    results.append((n, "compacted", r))
                    print(f"  {n:,} compacted: {r}", flush=True)
                elif not args.keep:
                    shutil.rmtree(path, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print()
    for k, v in floor.items():
        print(f"start-up floor: {k}: {v:.2f} s")
    print("\n| prompts | store written | rows files | info s | count(*) s | verify --no-values s | compact s |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for n, how, r in results:
        c = f"{r['compact']:.1f}" if "compact" in r else ""
        print(f"| {n:,} | {how} | {r['files']:,} | {r['info']:.2f} | {r['count']:.2f} | {r['verify']:.2f} | {c} |")


if __name__ == "__main__":
    main()
