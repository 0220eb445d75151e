"""Rank a trait's vectors: the best (layer, method, site, pooling) by a held-out metric.

Every (group, layer, method) cell counts once, with its newest vector, ordered by the one rule
of :mod:`.selection` (so ``rank``'s first row is what ``steer`` and ``monitor`` use). The random
baseline is ranked apart and printed as the floor. ``heatmap`` draws layers x methods for one
group and boxes the picked cell. ``lens_summary`` gives each vector's stored logit-lens tokens.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from traitlens.store.vocabulary import METHOD_NAMES

from .connection import QueryError, StoreSQL
from .selection import METRICS as RANK_BY
from .selection import latest_cells_sql, order_by, usable_sql

if TYPE_CHECKING:
    from traitlens.store.store import Store

__all__ = ["RANK_BY", "in_method_order", "latest_cells_sql", "rank", "grid", "heatmap", "lens_summary"]
COLUMNS = ("model_key", "fmt", "site", "pooling", "layer", "method", "auroc", "balanced_accuracy", "cohens_d",
           "stability", "agreement", "steer_shift", "steer_kl", "steer_capability", "spec_precision", "spec_auroc", "n_pos", "n_neg",
           "n_held_pos", "n_held_neg", "floor_length", "floor_dataset", "spec_base", "spec_floor_length",
           "n_background", "vector_id")
# shown in rank's table only when a background gave them (extract --background)
SPECIFICITY = ("spec_precision", "spec_auroc")


def rank(q: StoreSQL, trait: str, by: str = "auroc", top: int = 10) -> tuple[pa.Table, pa.Table]:
    """(top rows, the random baseline's best row) for ``trait`` ordered by ``by``."""
    cols = ", ".join(COLUMNS)
    base = latest_cells_sql()
    best = q.query(f"SELECT {cols} FROM ({base}) WHERE method <> 'random' AND {usable_sql()} ORDER BY {order_by(by)} "
                   "LIMIT ?", [trait, int(top)])
    if best.num_rows == 0:
        traits = [r["trait"] for r in q.query("SELECT DISTINCT trait FROM metrics ORDER BY 1").to_pylist()]
        raise QueryError(f"no vectors for trait {trait!r}; traits with vectors: {', '.join(traits) or 'none'} "
                         f"(run `traitlens extract --trait {trait}`)")
    floor = q.query(f"SELECT {cols} FROM ({base}) WHERE method = 'random' AND {usable_sql()} ORDER BY {order_by(by)} "
                    "LIMIT 1",
                    [trait])
    return best, floor


def in_method_order(methods: Iterable[str]) -> list[str]:
    """``methods`` as grids show them: the built-in ones in the order of
    :data:`~traitlens.store.vocabulary.METHOD_NAMES`, then any other."""
    return sorted(methods, key=lambda m: (METHOD_NAMES.index(m) if m in METHOD_NAMES else len(METHOD_NAMES), m))


def grid(q: StoreSQL, trait: str, by: str, group: dict[str, Any]) -> tuple[list[int], list[str], list[list[float]]]:
    """``by`` for every (layer, method) of one group: (layers, methods, values[layer][method])."""
    t = q.query(f"SELECT layer, method, {by} AS v FROM ({latest_cells_sql()}) WHERE model_key = ? AND fmt = ? "
                "AND site = ? AND pooling = ? ORDER BY layer, method",
                [trait, group["model_key"], group["fmt"], group["site"], group["pooling"]]).to_pylist()
    layers = sorted({r["layer"] for r in t})
    methods = in_method_order({r["method"] for r in t})
    vals = {(r["layer"], r["method"]): r["v"] for r in t}
    return layers, methods, [[vals.get((l, m), float("nan")) for m in methods] for l in layers]


def heatmap(q: StoreSQL, trait: str, by: str, group: dict[str, Any], path: Path) -> Path:
    """PNG: layers (rows) x methods (columns) coloured by ``by`` for ``group`` (a row of
    :func:`rank`: its group, and its (layer, method) cell is boxed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Rectangle

    layers, methods, values = grid(q, trait, by, group)
    V = np.asarray(values, dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(methods), 1.2 + 0.28 * len(layers)))
    lo = 0.5 if by in ("auroc", "balanced_accuracy", "train_auroc") else np.nanmin(V)
    im = ax.imshow(V, aspect="auto", cmap="viridis", vmin=lo, vmax=np.nanmax(V))
    ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
    ax.set_yticks(range(len(layers)), [str(l) for l in layers])
    ax.set_ylabel("layer")
    for i in range(V.shape[0]):
        for j in range(V.shape[1]):
            if np.isfinite(V[i, j]):
                ax.text(j, i, f"{V[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if V[i, j] < (lo + np.nanmax(V)) / 2 else "black")
    if group.get("layer") in layers and group.get("method") in methods:  # the picked cell (rank's first row)
        i, j = layers.index(group["layer"]), methods.index(group["method"])
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    fig.colorbar(im, ax=ax, label=by)
    ax.set_title(f"{trait}: held-out {by}\n{group['model_key']} / {group['site']} / {group['pooling']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def lens_summary(store: Store) -> dict[str, str]:
    """``{vector_id: "tok tok tok | tok tok tok"}``: the top 3 promoted and suppressed tokens."""
    rows = store.table("lens").to_pylist()
    newest: dict[str, tuple[Any, str]] = {}  # the newest reading of each vector wins
    for r in rows:
        if r["vector_id"] not in newest or r["created_at"] > newest[r["vector_id"]][0]:
            newest[r["vector_id"]] = (r["created_at"], r["run_id"])
    latest = {v: run for v, (_, run) in newest.items()}
    out: dict[str, dict[str, list[str]]] = {}
    for r in sorted(rows, key=lambda r: r["rank"]):
        if r["run_id"] == latest[r["vector_id"]] and r["rank"] < 3:
            out.setdefault(r["vector_id"], {"promotes": [], "suppresses": []})[r["direction"]].append(repr(r["token"]))
    return {v: " ".join(d["promotes"]) + " | " + " ".join(d["suppresses"]) for v, d in out.items()}
