"""What the dashboard shows, as JSON-ready dicts: every function reads the store, none writes.

Each takes an open :class:`~traitlens.queries.StoreSQL` (the same read-only views and guard as
``traitlens query``) and returns plain lists and dicts: NaN and infinities become ``None`` with
the reason beside them (:mod:`traitlens.store.strict_json`), timestamps ISO strings. Lists are
paged (``page``, ``PAGE`` rows each; a page past the last is :class:`NotFound`) and no function
reads a whole layer: per-token projections read only the token rows of the prompts on the page.
"""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pyarrow as pa

from traitlens.queries import StoreSQL
from traitlens.queries.connection import QueryError
from traitlens.queries.ranking import RANK_BY, in_method_order, latest_cells_sql, rank
from traitlens.queries.selection import best_vector, metric_column
from traitlens.store import GroupKey, strict_json
from traitlens.store.errors import InputError

PAGE = 50
SQL_ROWS = 1000  # rows of a console result sent to the page or downloaded as CSV (`traitlens query` has them all)
METRIC_COLUMNS = ("auroc", "balanced_accuracy", "cohens_d", "separation", "stability", "agreement", "train_auroc",
                  "steer_shift", "p_value", "floor_length", "floor_dataset", "n_pos", "n_neg", "n_held_pos",
                  "n_held_neg")


class NotFound(InputError):
    """Nothing of that name in the store (the app answers 404)."""


def clean(value):
    """A value as strict JSON can hold it: NaN and infinities are null with their reason beside
    them (:func:`traitlens.store.strict_json.clean`), timestamps ISO strings, bytes hex."""
    return strict_json.clean(_plain(value))


def _plain(value):
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    if isinstance(value, np.generic):
        return value.item()
    return value


def rows(table: pa.Table, drop=("vector",)) -> list[dict]:
    return [clean({k: v for k, v in r.items() if k not in drop}) for r in table.to_pylist()]


MAX_PAGE = 10**9  # a page number beyond this is a typo (and its OFFSET would overflow DuckDB's integers)


def check_page(page) -> int:
    """A page number from a request: a whole number from 0 to :data:`MAX_PAGE`, else an
    :class:`InputError` (400)."""
    try:
        n = int(page)
    except (TypeError, ValueError):
        raise InputError(f"page={str(page)[:40]!r}: must be a whole number (0 is the first page)") from None
    if not 0 <= n <= MAX_PAGE:
        raise InputError(f"page={n}: must be from 0 (the first page) to {MAX_PAGE:,}")
    return n


def _page(page: int) -> tuple[int, int]:
    page = check_page(page)
    return PAGE, page * PAGE


def _past_the_end(page: int, total: int) -> None:
    """A page past the last one (page 0 of an empty list is not): :class:`NotFound` (404)."""
    if page > 0 and page * PAGE >= total:
        pages = max(1, -(-total // PAGE))
        raise NotFound(f"page={page}: past the last page ({pages} page{'s' if pages > 1 else ''} of {PAGE}, "
                       f"{total} items; pages count from 0)")


def overview(q: StoreSQL, page: int = 0) -> dict:
    """Groups with their prompt counts, traits with their labels and vectors, the latest runs."""
    counts = q.store.group_counts()
    groups = [{**g.as_dict(), "path": g.path, "prompts": n, "layers": q.store.layers(g)} for g, n in counts.items()]
    traits = rows(q.query(
        "SELECT p.trait, count(*) FILTER (WHERE label = 1) AS positive, count(*) FILTER (WHERE label = -1) AS negative, "
        "count(*) FILTER (WHERE label = 0) AS unlabelled, count(DISTINCT dataset) AS datasets, "
        "coalesce(any_value(v.n), 0) AS vectors FROM prompts p "
        "LEFT JOIN (SELECT trait, count(*) AS n FROM vectors_all GROUP BY trait) v USING (trait) "
        "GROUP BY p.trait ORDER BY p.trait"))
    return {"store": str(q.store.root), "groups": groups, "traits": traits, "runs": runs(q, page)}


def runs(q: StoreSQL, page: int = 0) -> dict:
    limit, offset = _page(page)
    total = q.query("SELECT count(*) AS n FROM runs").to_pylist()[0]["n"]
    _past_the_end(page, total)
    items = rows(q.query("SELECT run_id, stage, status, started_at, ended_at, counts, message FROM runs "
                         "ORDER BY started_at DESC NULLS LAST, run_id LIMIT ? OFFSET ?", [limit, offset]))
    for r in items:
        r["counts"] = json.loads(r["counts"]) if r.get("counts") else {}
    return {"total": total, "page": page, "page_size": limit, "items": items}


def trait(q: StoreSQL, name: str, by: str = "auroc") -> dict:
    """A trait's layers x methods grid per group (every metric per cell), its pick, its floors,
    its steering measurements and its top scores."""
    if by not in RANK_BY:
        raise InputError(f"by={by!r}: one of {', '.join(RANK_BY)}")
    cells = rows(q.query(f"SELECT model_key, fmt, site, pooling, layer, method, vector_id, "
                         f"{', '.join(METRIC_COLUMNS)}, created_at FROM ({latest_cells_sql()}) "
                         "ORDER BY model_key, fmt, site, pooling, layer, method", [name]))
    if not cells:
        raise NotFound(f"no vectors for trait {name!r}")
    groups = []
    for g in sorted({(c["model_key"], c["fmt"], c["site"], c["pooling"]) for c in cells}):
        mine = [c for c in cells if (c["model_key"], c["fmt"], c["site"], c["pooling"]) == g]
        groups.append({**dict(zip(("model_key", "fmt", "site", "pooling"), g)), "path": GroupKey(*g).path,
                       "layers": sorted({c["layer"] for c in mine}),
                       "methods": in_method_order({c["method"] for c in mine}), "cells": mine})
    pick = best_vector(q, name)
    best, floor = rank(q, name, by, top=1)
    top_cell = best.to_pylist()[0]
    steering = rows(q.query("SELECT vector_id, method, layer, alpha, kind, n, unsteered, plus, minus, shift, ci_low, "
                            "ci_high, wrong_way, kl, kl_low, kl_high, detail, run_id, created_at FROM steering "
                            "WHERE trait = ? ORDER BY vector_id, kind, alpha", [name]))
    for r in steering:  # alpha's unit (the norm) tells two sweeps of one vector apart
        try:
            r["norm"] = json.loads(r.pop("detail") or "{}").get("norm", "typical")
        except ValueError:
            r["norm"] = "typical"
    top = rows(q.query("SELECT prompt_id, score, calibrated, percentile, text, dataset, label FROM scored "
                       "WHERE vector_id = ? ORDER BY score DESC LIMIT 20", [pick["vector_id"]])) if pick else []
    random_floor = floor.to_pylist()[0][metric_column(by)] if floor.num_rows else None
    return clean({"trait": name, "by": by, "groups": groups, "pick": pick and pick["vector_id"],
                  "floors": {"random": random_floor, "length": top_cell["floor_length"],
                             "dataset": top_cell["floor_dataset"]},
                  "steering": steering, "top_scores": top})


def vector(q: StoreSQL, vector_id: str) -> dict:
    """One vector: provenance, metrics, nearest vectors, steering rows, its scores' summary."""
    found = q.query("SELECT * EXCLUDE (vector) FROM vectors_all WHERE vector_id = ?", [vector_id]).to_pylist()
    if not found:
        raise NotFound(f"no vector {vector_id!r}")
    raw = found[0]
    v = clean(raw)
    if isinstance(v.get("params"), str):  # stored as JSON text
        try:
            v["params"] = json.loads(v["params"])
        except ValueError:
            pass
    try:
        nearest = rows(q.query("SELECT * FROM nearest(?, 10)", [vector_id]))
    except QueryError:  # several widths: no single FLOAT[d] view, so no macro
        nearest = []
    steering = rows(q.query("SELECT alpha, kind, n, scale, unsteered, plus, minus, shift, ci_low, ci_high, wrong_way, "
                            "steerability, kl, created_at FROM steering WHERE vector_id = ? ORDER BY kind, alpha",
                            [vector_id]))
    scores = rows(q.query("SELECT count(*) AS n, avg(score) AS mean, min(score) AS min, max(score) AS max "
                          "FROM scores WHERE vector_id = ?", [vector_id]))[0]
    return {"vector": v, "metrics": clean({k: raw.get(k) for k in METRIC_COLUMNS}), "nearest": nearest,
            "steering": steering, "scores": scores}


def vector_values(q: StoreSQL, vector_id: str) -> dict:
    """The unit vector itself, with what an export needs."""
    found = q.query("SELECT vector_id, trait, method, layer, model_key, fmt, site, pooling, held_split, vector "
                    "FROM vectors_all WHERE vector_id = ?", [vector_id]).to_pylist()
    if not found:
        raise NotFound(f"no vector {vector_id!r}")
    return found[0]


def trajectories(q: StoreSQL, vector_id: str | None = None, page: int = 0) -> dict:
    """Stored monitor trajectories (one per run and prompt), each with its tokens' projection,
    velocity and acceleration and the commitment position; newest first, paged."""
    limit, offset = _page(page)
    where, params = ("WHERE vector_id = ?", [vector_id]) if vector_id else ("", [])
    keys = q.query(f"SELECT run_id, prompt_id, vector_id, layer, max(created_at) AS kept_at, count(*) AS tokens "
                   f"FROM trajectories {where} GROUP BY run_id, prompt_id, vector_id, layer "
                   "ORDER BY kept_at DESC, run_id, prompt_id LIMIT ? OFFSET ?", params + [limit, offset]).to_pylist()
    total = q.query(f"SELECT count(*) AS n FROM (SELECT DISTINCT run_id, prompt_id, vector_id, layer FROM trajectories "
                    f"{where})", params).to_pylist()[0]["n"]
    _past_the_end(page, total)
    items = []
    for k in keys:
        toks = rows(q.query("SELECT position, token, generated, projection, velocity, acceleration, commitment "
                            "FROM trajectories WHERE run_id = ? AND prompt_id = ? AND vector_id = ? AND layer = ? "
                            "ORDER BY position", [k["run_id"], k["prompt_id"], k["vector_id"], k["layer"]]))
        commit = next((t["commitment"] for t in toks if t["commitment"] is not None), None)
        items.append({**clean(k), "commitment": commit,
                      "tokens": [{x: t[x] for x in ("position", "token", "generated", "projection", "velocity",
                                                    "acceleration")} for t in toks]})
    return {"total": total, "page": page, "page_size": limit, "items": items}


def held_out_tokens(q: StoreSQL, vector_id: str, page: int = 0, tokenizer_for=None) -> dict:
    """Per-token projections of the vector's held-out prompts, from a ``tokens`` group of the
    same model, format and site when the store has one (else ``available: false``): only the
    token rows of the page's prompts are read. Tokens are decoded with ``tokenizer_for(model_key)``
    when it gives a tokenizer, else shown as ids."""
    from traitlens.store.arrays import get_group

    v = vector_values(q, vector_id)
    key = GroupKey(v["model_key"], v["fmt"], v["site"], "tokens")
    if key not in q.store.group_counts() or v["layer"] not in q.store.layers(key):
        return {"available": False, "reason": f"no tokens group {key.path} with layer {v['layer']}: capture the "
                f"held-out prompts with `traitlens ingest --pooling tokens --layers {v['layer']}` to see them here",
                "items": [], "total": 0, "page": page, "page_size": PAGE}
    limit, offset = _page(page)
    split = v["held_split"] or "test"
    sel = ("SELECT r.prompt_id, r.token_start, r.token_count, p.text, p.label FROM rows r JOIN prompts p "
           "USING (prompt_id) WHERE r.model_key = ? AND r.fmt = ? AND r.site = ? AND r.pooling = 'tokens' "
           "AND p.trait = ? AND p.split = ? AND p.label <> 0")
    params = [key.model_key, key.fmt, key.site, v["trait"], split]
    total = q.query(f"SELECT count(*) AS n FROM ({sel})", params).to_pylist()[0]["n"]
    _past_the_end(page, total)
    picked = q.query(f"{sel} ORDER BY p.label DESC, r.prompt_id LIMIT ? OFFSET ?", params + [limit, offset]).to_pylist()
    grp = get_group(q.store.zarr_root(), key.path)
    arr = q.store.layer_array(key, v["layer"])
    ids = grp["token_ids"]
    unit = np.asarray(v["vector"], np.float64)
    tokenizer = tokenizer_for(v["model_key"]) if tokenizer_for is not None else None
    items = []
    for r in picked:
        s, n = int(r["token_start"]), int(r["token_count"])
        proj = np.asarray(arr[s:s + n], np.float64) @ unit
        tok = [int(t) for t in np.asarray(ids[s:s + n])]
        text = [tokenizer.decode([t]) for t in tok] if tokenizer is not None else [f"<{t}>" for t in tok]
        vel = np.diff(proj, prepend=proj[:1])
        items.append(clean({"prompt_id": r["prompt_id"], "label": r["label"], "text": r["text"],
                            "tokens": [{"position": i, "token": text[i], "token_id": tok[i], "projection": float(proj[i]),
                                        "velocity": float(vel[i])} for i in range(n)]}))
    return {"available": True, "split": split, "layer": v["layer"], "group": key.path, "total": total, "page": page,
            "page_size": limit, "items": items}


def capped(q: StoreSQL, text: str, timeout: float = 30.0, limit: int = SQL_ROWS) -> tuple[pa.Table, bool, int | None]:
    """``(the first limit rows, whether there were more, the total or None when unknown)`` of a
    console statement through the read-only guard. A lone SELECT is run with a LIMIT (a
    million-row answer is never built for a page or a download)."""
    q.check(text)
    statements = q.con.extract_statements(text)
    lone_select = len(statements) == 1 and statements[0].type.name == "SELECT"
    body = text.strip().rstrip(";")
    t = q.query(f"SELECT * FROM ({body}) LIMIT {int(limit) + 1}" if lone_select else text, timeout=timeout)
    more = t.num_rows > limit
    return t.slice(0, limit), more, None if more and lone_select else t.num_rows


def sql(q: StoreSQL, text: str, timeout: float = 30.0, limit: int = SQL_ROWS) -> dict:
    """A console statement: columns and the first ``limit`` rows (:func:`capped`);
    ``rows_total`` is None when there are more (``traitlens query`` writes them all)."""
    t, more, total = capped(q, text, timeout, limit)
    return {"columns": t.column_names, "types": [str(f.type) for f in t.schema],
            "rows_total": total, "truncated": more, "rows": rows(t, drop=())}
