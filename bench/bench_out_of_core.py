"""Out-of-core extraction: a store bigger than the memory budget, peak RSS measured.

    python bench/bench_out_of_core.py [--gb 4] [--layers 0-3] [--memory 1GB] [--keep DIR]
    python bench/bench_out_of_core.py --rows 1000000 --n-layers 1 --layers 0 --methods mean_diff,probe \
        [--baseline /tmp/v010]   # e.g. git archive <rev> | tar -x -C /tmp/v010

Writes a synthetic store (``--rows`` rows, or about ``--gb`` GB, of float16 activations,
``--n-layers`` layers x d=576, a planted direction per layer) through the real store API, then
runs `traitlens extract` (``--methods``, default all six) on ``--layers`` in a child process
under ``--memory`` and reports its time per layer, the activations it processed per second
beside a plain block-by-block numpy read of the same layer (its own child process), its peak
resident memory (the child's ru_maxrss, its own workers included), and how well the planted
directions were found.

``--baseline DIR``: a source tree of an earlier traitlens. Its own store (same seed, built by
its own code, since store formats differ between versions) and its extraction run in the same
invocation, one after the other, and the ratio of the two is printed: the figure a speed-up
claim rests on, measured side by side rather than against a number from another day.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from traitlens.pipeline.capture.corpus import prompt_id_for
from traitlens.pipeline.capture.splits import hash_split
from traitlens.store import GroupKey, PendingBatch, Store

KEY = GroupKey("synthetic-ooc", "raw", "resid", "last")
D, L = 576, 30


def build(path: Path, gb: float, seed: int = 0, n: int | None = None, L: int = L) -> tuple[int, dict]:
    n = n or int(gb * 2**30 / (L * D * 2))
    rng = np.random.default_rng(seed)
    dirs = {l: (u := rng.standard_normal(D)) / np.linalg.norm(u) for l in range(L)}
    ids = [prompt_id_for(f"ooc {i}", None) for i in range(n)]
    labels = np.where(rng.random(n) < 0.5, 1, -1)
    store = Store.open(path, create=True)
    store.add_prompts([{"prompt_id": p, "text": f"ooc {i}", "dataset": "ooc", "trait": "planted",
                        "label": int(labels[i]), "split": hash_split(p)} for i, p in enumerate(ids)])
    w = store.writer([KEY], list(range(L)), D, "build", chunk_rows=1024)
    step = 4096
    t = time.perf_counter()
    for s in range(0, n, step):
        e = min(n, s + step)
        y = labels[s:e].astype(np.float32)
        pooled = {l: (rng.standard_normal((e - s, D), dtype=np.float32) + np.outer(y * 1.0, dirs[l]).astype(np.float32))
                  for l in range(L)}
        w.add(PendingBatch(ids[s:e], np.full(e - s, 8, np.int32), np.zeros(e - s, np.int32), [None] * (e - s),
                           {("resid", "last"): pooled}))
    w.commit()
    print(f"built {n:,} rows x {L} layers x d={D}: {n * L * D * 2 / 2**30:.2f} GB of float16 "
          f"in {time.perf_counter() - t:.0f} s", flush=True)
    return n, {l: v.tolist() for l, v in dirs.items()}


CHILD = """
import json, resource, sys, time
from traitlens.pipeline.extract.config import ExtractConfig
from traitlens.pipeline.extract.jobs import extract
t = time.perf_counter()
res = extract(sys.argv[1], "planted", layers=sys.argv[2],
              cfg=ExtractConfig(methods=sys.argv[4].split(","), n_boot=2, memory_budget=int(sys.argv[3])),
              skip_unchanged=False)  # measure the work, never a lookup of vectors a previous run stored
peak = max(resource.getrusage(w).ru_maxrss for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
print(json.dumps({"seconds": time.perf_counter() - t, "peak_gb": peak / 2**20, "records": [
    {k: r[k] for k in ("layer", "method", "auroc", "out_of_core", "vector")} for r in res.records]}))
"""


PLAIN_READ = """
import sys, time
import numpy as np
import zarr
arr = zarr.open_group(sys.argv[1] + "/activations.zarr", mode="r")["synthetic-ooc/raw/resid/last/L" + sys.argv[2]]
t = time.perf_counter()
step = arr.chunks[0] * 16
total = 0.0
for s in range(0, arr.shape[0], step):
    total += float(np.asarray(arr[s:s + step], dtype=np.float32).sum())
print(time.perf_counter() - t)
"""


def version_env(source: str | None, tmp: Path) -> dict:
    """The environment a child runs in: this checkout, or ``source`` as the ``traitlens`` package
    (a folder holding a link named traitlens, first on PYTHONPATH)."""
    env = dict(os.environ)
    if source:
        shim = tmp / "shim"
        shim.mkdir(parents=True, exist_ok=True)
        link = shim / "traitlens"
        if not link.exists():
            link.symlink_to(Path(source).resolve())
        env["PYTHONPATH"] = os.pathsep.join([str(shim)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def measure(root: Path, args, budget: int, env: dict) -> dict:
    """Build the store if needed (in a child, with that version's code), extract, and read it plainly."""
    meta = root.parent / (root.name + ".dirs.json")
    if not (root / "store.json").exists():
        build_args = [sys.executable, str(Path(__file__).resolve()), "--build-only", "--keep", str(root), "--n-layers", str(args.n_layers),
                      "--gb", str(args.gb)] + (["--rows", str(args.rows)] if args.rows else [])
        subprocess.run(build_args, env=env, check=True, cwd=tempfile.gettempdir())
    dirs = {int(k): np.asarray(v) for k, v in json.loads(meta.read_text()).items()}
    disk = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 2**30
    p = subprocess.run([sys.executable, "-c", CHILD, str(root), args.layers, str(budget), args.methods],
                       capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
    if p.returncode:
        raise SystemExit(p.stderr)
    out = json.loads(p.stdout.strip().splitlines()[-1])
    recs = out["records"]
    layers = sorted({r["layer"] for r in recs})
    import zarr

    arr = zarr.open_group(str(root / "activations.zarr"), mode="r")[f"{KEY.path}/L{layers[0]}"]
    r = subprocess.run([sys.executable, "-c", PLAIN_READ, str(root), str(layers[0])], capture_output=True, text=True)
    cos = {m: np.mean([abs(np.dot(r["vector"], dirs[r["layer"]])) for r in recs if r["method"] == m])
           for m in sorted({r["method"] for r in recs})}
    return {"seconds": out["seconds"], "per_layer": out["seconds"] / len(layers), "peak_gb": out["peak_gb"],
            "layer_mb": arr.shape[0] * arr.shape[1] * arr.dtype.itemsize / 2**20, "rows": arr.shape[0],
            "plain_s": float(r.stdout.strip().splitlines()[-1]), "disk_gb": disk, "cos": cos,
            "out_of_core": all(r["out_of_core"] for r in recs)}


def report(name: str, m: dict, args) -> None:
    print(f"[{name}] store: {m['disk_gb']:.2f} GB on disk, {m['rows']:,} rows; extract layers {args.layers} "
          f"({args.methods}, n_boot 2) with --memory {args.memory}: {m['seconds']:.0f} s ({m['per_layer']:.1f} s per "
          f"layer, {m['layer_mb'] / m['per_layer']:.0f} MB/s of float16 activations), peak RSS {m['peak_gb']:.2f} GB, "
          f"out of core: {m['out_of_core']}")
    print(f"[{name}] plain numpy read of one layer ({m['layer_mb']:.0f} MB, block by block): {m['plain_s']:.1f} s, "
          f"{m['layer_mb'] / m['plain_s']:.0f} MB/s")
    print(f"[{name}] mean |cos| to the planted direction: " + ", ".join(f"{k} {c:.3f}" for k, c in m["cos"].items()),
          flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=4.0)
    ap.add_argument("--layers", default="0-3")
    ap.add_argument("--memory", default="1GB")
    ap.add_argument("--keep", default=None, help="build (or reuse) the store here instead of a temp folder")
    ap.add_argument("--rows", type=int, default=None, help="rows to build (instead of --gb)")
    ap.add_argument("--n-layers", type=int, default=L, help="layers to build")
    ap.add_argument("--methods", default="mean_diff,pca_diff,ica,probe,gradient,random")
    ap.add_argument("--baseline", default=None, help="source tree of an earlier traitlens to run side by side")
    ap.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.build_only:  # (run as a child, by the version whose store format it writes)
        root = Path(args.keep)
        n, dirs = build(root, args.gb, n=args.rows, L=args.n_layers)
        (root.parent / (root.name + ".dirs.json")).write_text(json.dumps(dirs))
        return
    budget = int(float(args.memory.lower().rstrip("gb")) * 2**30)
    tmp = Path(tempfile.mkdtemp(prefix="traitlens-ooc-"))
    root = Path(args.keep) if args.keep else tmp / "s"
    try:
        runs = {}
        if args.baseline:
            runs["baseline"] = measure(root.parent / (root.name + "-baseline"), args, budget,
                                       version_env(args.baseline, tmp))
            report("baseline", runs["baseline"], args)
        runs["this"] = measure(root, args, budget, version_env(None, tmp))
        report("this", runs["this"], args)
        if args.baseline:
            print(f"speed-up per layer, side by side: {runs['baseline']['per_layer'] / runs['this']['per_layer']:.2f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(root.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
