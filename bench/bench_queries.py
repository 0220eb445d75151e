"""Query latencies: ranking over 10,000 vectors, a 1,000 x 1,000 cosine join, and a projection
of 100,000 activation rows, each beside the plain numpy/Zarr equivalent in the same process.

    python bench/bench_queries.py [--vectors 10000] [--rows 100000] [--d 576]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from traitlens.pipeline.capture.corpus import prompt_id_for
from traitlens.queries import StoreSQL
from traitlens.queries.ranking import rank
from traitlens.store import GroupKey, PendingBatch, Store
from traitlens.store.store import now_utc
from traitlens.store.vocabulary import METHOD_NAMES

KEY = GroupKey("bench-0000", "raw", "resid", "last")


def timed(fn, repeat=3):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def fake_vectors(store: Store, n: int, d: int, rng) -> None:
    methods = list(METHOD_NAMES)
    V = rng.standard_normal((n, d)).astype(np.float32)
    V /= np.linalg.norm(V, axis=1, keepdims=True)
    stamp = now_utc()
    recs = [{"vector_id": f"v{i:07d}", "model_key": KEY.model_key, "fmt": "raw", "site": "resid", "pooling": "last",
             "layer": i % 30, "trait": f"trait{(i // 180) % 50}", "method": methods[(i // 30) % 6], "params": "{}",
             "fingerprint": "x", "n_pos": 500, "n_neg": 500, "d": d, "raw_norm": 1.0, "vector": V[i].tolist(),
             "auroc": float(rng.random()), "balanced_accuracy": float(rng.random()), "stability": float(rng.random()),
             "cohens_d": float(rng.random() * 3), "agreement": float(rng.random()), "created_at": stamp}
            for i in range(n)]
    store.append("vectors", recs)
    return V


def fake_layer(store: Store, n: int, d: int, rng) -> np.ndarray:
    ids = [prompt_id_for(f"bench {i}", None) for i in range(n)]
    store.add_prompts([{"prompt_id": p, "text": f"bench {i}", "dataset": f"ds{i % 4}", "trait": "t",
                        "label": 1 if i % 2 else -1, "split": "train"} for i, p in enumerate(ids)])
    w = store.writer([KEY], [0], d, "bench", chunk_rows=1024)
    for s in range(0, n, 8192):
        e = min(n, s + 8192)
        w.add(PendingBatch(ids[s:e], np.full(e - s, 4, np.int32), np.zeros(e - s, np.int32), [None] * (e - s),
                           {("resid", "last"): {0: rng.standard_normal((e - s, d), dtype=np.float32)}}))
    w.commit()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vectors", type=int, default=10_000)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--d", type=int, default=576)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    tmp = Path(tempfile.mkdtemp(prefix="traitlens-bench-q-"))
    try:
        store = Store.open(tmp / "s", create=True)
        V = fake_vectors(store, args.vectors, args.d, rng)
        fake_layer(store, args.rows, args.d, rng)
        q = StoreSQL(store)
        lines = []
        t_rank, _ = timed(lambda: rank(q, "trait7", "auroc", 10))
        lines.append(("rank one trait over %d vectors" % args.vectors, t_rank, None))
        t_open, _ = timed(lambda: StoreSQL(store).close())
        lines.append(("open the store's SQL views", t_open, None))
        sql = ("SELECT a.vector_id AS a, b.vector_id AS b, array_cosine_similarity(a.vector, b.vector) AS c "
               "FROM (SELECT * FROM vectors ORDER BY vector_id LIMIT 1000) a, "
               "(SELECT * FROM vectors ORDER BY vector_id LIMIT 1000 OFFSET 1000) b")
        t_join, out = timed(lambda: q.query(sql))
        t_np, _ = timed(lambda: V[:1000] @ V[1000:2000].T)
        assert out.num_rows == 1_000_000
        lines.append(("1,000 x 1,000 cosine join (SQL)", t_join, t_np))
        vid = "v0000014"
        proj = (f"SELECT p.dataset, p.label, avg(array_inner_product(a.vector, v.vector)) AS m FROM act_L0 a "
                f"JOIN prompts p USING (prompt_id), (SELECT vector FROM vectors WHERE vector_id = '{vid}') v "
                f"GROUP BY ALL")
        t_proj, _ = timed(lambda: q.query(proj))
        arr = store.zarr_root()[KEY.path]["L0"]
        t_read, _ = timed(lambda: np.asarray(arr[:], dtype=np.float32))
        lines.append((f"projection of {args.rows:,} rows by dataset and label", t_proj, t_read))
        print("\n| query | seconds | plain equivalent (s) |")
        print("|---|---|---|")
        for name, t, ref in lines:
            print(f"| {name} | {t:.3f} | {'' if ref is None else f'{ref:.3f}'} |")
        print("\nplain equivalents: numpy matmul of the same 1,000 x 1,000 unit vectors; reading the whole "
              "layer from Zarr into float32 (disk + decompression, no SQL)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
