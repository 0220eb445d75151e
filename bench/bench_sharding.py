"""Does Zarr v3 sharding pay for large stores? Today's layer arrays against sharded ones, side by side.

    python bench/bench_sharding.py [--rows 262144] [--d 576] [--shard 4096]

One layer array of ``--rows`` x ``--d`` float16 (SmolLM2's width), with the store's codec (Zstd
level 0 with a checksum), written three ways into a fresh local folder:

- ``chunks``: today's layout, one chunk file per 256 rows, written in 256-row commits;
- ``shards, 256-row commits``: shards of ``--shard`` rows holding 256-row chunks, written as an
  ingest commits (each commit rewrites its whole shard: read, merge, write);
- ``shards, shard-sized commits``: the same shards, each written once by one commit.

For each: files on disk, write seconds, a full read, 200 random 256-row block reads, and the
listing ``verify`` does (every chunk key of the array). Ratios are to ``chunks``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

CHUNK = 256


def make(path: Path, rows: int, d: int, shard: int | None):
    store = zarr.storage.LocalStore(str(path))
    return zarr.create_array(store, shape=(rows, d), chunks=(CHUNK, d), shards=(shard, d) if shard else None,
                             dtype="float16", fill_value=0, compressors=ZstdCodec(level=0, checksum=True))


def files(path: Path) -> int:
    return sum(len(f) for _, _, f in os.walk(path))


def case(root: Path, name: str, data: np.ndarray, shard: int | None, commit: int, rng) -> dict:
    path = root / name.replace(" ", "_").replace(",", "")
    arr = make(path, len(data), data.shape[1], shard)
    t = time.perf_counter()
    for s in range(0, len(data), commit):
        arr[s:s + commit] = data[s:s + commit]
    write = time.perf_counter() - t
    t = time.perf_counter()
    back = np.asarray(zarr.open_array(zarr.storage.LocalStore(str(path)), mode="r")[:])
    read = time.perf_counter() - t
    assert np.array_equal(back, data)
    r = zarr.open_array(zarr.storage.LocalStore(str(path)), mode="r")
    starts = rng.integers(0, len(data) // CHUNK, 200) * CHUNK
    t = time.perf_counter()
    for s in starts:
        np.asarray(r[s:s + CHUNK])
    random_read = time.perf_counter() - t
    t = time.perf_counter()
    n_files = files(path)
    listing = time.perf_counter() - t
    return {"name": name, "files": n_files, "write": write, "read": read, "random": random_read, "listing": listing,
            "bytes": sum(f.stat().st_size for f in path.rglob("*") if f.is_file())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=262_144)
    ap.add_argument("--d", type=int, default=576)
    ap.add_argument("--shard", type=int, default=4096)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    data = rng.standard_normal((args.rows, args.d)).astype(np.float16)
    root = Path(tempfile.mkdtemp(prefix="traitlens-bench-shard-"))
    try:
        res = [case(root, "chunks", data, None, CHUNK, rng),
               case(root, "shards, 256-row commits", data, args.shard, CHUNK, rng),
               case(root, "shards, shard-sized commits", data, args.shard, args.shard, rng)]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    base = res[0]
    print(f"{args.rows:,} rows x d {args.d} float16, chunks of {CHUNK} rows, shards of {args.shard} rows\n")
    print("| layout | files | MB | write s | full read s | 200 random blocks s | listing s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in res:
        def rel(k):
            return f"{r[k]:.2f}" + ("" if r is base else f" ({r[k] / base[k]:.2f}x)")
        print(f"| {r['name']} | {r['files']:,} | {r['bytes'] / 1e6:,.0f} | {rel('write')} | {rel('read')} | "
              f"{rel('random')} | {rel('listing')} |")


if __name__ == "__main__":
    main()
