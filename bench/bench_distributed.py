"""Capture on a Dask cluster: what reaches the driver per prompt when workers write their own
chunks, against the driver writing everything (``--no-workers-write``), side by side.

    python bench/bench_distributed.py [--prompts 4000] [--workers 2] [--layers 8] [--d 256]

A ``LocalCluster`` of worker processes and a random-weight Llama (``traitlens.testing.make_model``,
``--layers`` blocks of width ``--d``) capture the same corpus (pooling last + mean, every layer)
into two fresh stores. Printed per mode: prompts/s, bytes the driver received per prompt
(the arrays and strings of every result, ``PendingBatch.nbytes``, recorded in the run's counts), and whether the two stores hold
the same values, value for value. On two CPU cores the model, not the driver, sets the pace;
the bytes are what changes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=4000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--d", type=int, default=256)
    args = ap.parse_args()
    from distributed import Client, LocalCluster

    from traitlens.pipeline.capture.ingest import IngestConfig, ingest
    from traitlens.pipeline.model.loading import load_model
    from traitlens.store import Store
    from traitlens.testing import make_model, write_corpus

    root = Path(tempfile.mkdtemp(prefix="traitlens-bench-dist-"))
    try:
        model = make_model("llama", root / "model", n_layers=args.layers, d=args.d)
        corpus = write_corpus(root / "c.jsonl", args.prompts)
        lm = load_model(str(model), device="cpu", dtype="float32", log=lambda *a: None)
        rows = []
        with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            for mode in (True, False):
                cfg = IngestConfig(model=str(model), poolings=["last", "mean"], batch_size=32, workers_write=mode)
                t = time.perf_counter()
                res = ingest(root / f"s-{mode}", [corpus], cfg=cfg, lm=lm, progress=False, client=client)
                secs = time.perf_counter() - t
                counts = json.loads(Store.open(root / f"s-{mode}").runs().to_pylist()[-1]["counts"])
                rows.append((mode, res.n_captured / secs, counts["bytes_received"] / res.n_captured,
                             counts["workers_write"]))
        a, b = Store.open(root / "s-True"), Store.open(root / "s-False")
        same = all(np.array_equal(a.activations(g, l)[np.argsort(a.group_rows(g)["prompt_id"].to_numpy())],
                                  b.activations(g, l)[np.argsort(b.group_rows(g)["prompt_id"].to_numpy())])
                   for g in a.groups() for l in a.layers(g))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    floats = 2 * args.layers * args.d * 4
    print(f"{args.prompts:,} prompts, {args.workers} workers, {args.layers} layers x d {args.d}, pooling last + mean "
          f"(one prompt's values as float32: {floats:,} bytes)\n")
    print("| mode | prompts/s | bytes to the driver per prompt |\n|---|---:|---:|")
    for mode, rate, per, used in rows:
        name = "workers write their chunks" if used else "driver writes (--no-workers-write)"
        print(f"| {name} | {rate:,.0f} | {per:,.0f} |")
    print(f"\nstored values equal, value for value: {same}")


if __name__ == "__main__":
    main()
