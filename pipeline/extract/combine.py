"""Vector arithmetic: a new stored vector from others, with provenance pointing at its parents.

``traitlens vectors combine "agreeableness - 0.5*neuroticism" --layer 16 --name agreeable-calm``
makes ``sum_i c_i * unit(v_i)`` from the named vectors (a trait name: the vector the selection
rule picks at that layer; or a vector id), optionally orthogonalised against other vectors
(Gram-Schmidt: the part along each is removed), and stores it as a vectors row: method = its
name, ``params`` = the formula, the parents' ids and coefficients, and held-out metrics on a
trait's contrastive rows (the first term's trait unless ``score_trait``), the same metrics any
extracted vector has. It is then ranked, evaluated and exported like any other.

Terms are separated by `` + `` or `` - `` with spaces (trait names may contain hyphens); a
term is ``[coefficient*]name``.
"""

from __future__ import annotations

import json
import re

import numpy as np

from traitlens.pipeline.extract.methods import ExtractionError
from traitlens.queries import StoreSQL
from traitlens.queries.selection import best_vector, chosen_vector
from traitlens.store import Store, strict_json
from traitlens.store.finite import check_float
from traitlens.store.vocabulary import METHOD_NAMES



def parse_formula(expr: str) -> list[tuple[float, str]]:
    """``"a - 0.5*b + 2 * c"`` -> ``[(1.0, "a"), (-0.5, "b"), (2.0, "c")]``."""
    text, first = expr.strip(), "+"
    if not text:
        raise ExtractionError("the formula is empty; write e.g. \"agreeableness - 0.5*neuroticism\"")
    if text[0] in "+-":  # a leading sign: "-b + a"
        first, text = text[0], text[1:].lstrip()
    pieces = re.split(r"\s+([+-])\s+", text)
    signs, bodies = [first] + pieces[1::2], pieces[0::2]
    terms = []
    for sign, body in zip(signs, bodies):
        m = re.fullmatch(r"\s*(?:([0-9]*\.?[0-9]+(?:[eE][+-]?\d+)?)\s*\*\s*)?([A-Za-z0-9_.][A-Za-z0-9_.\-]*)\s*", body)
        if m is None:
            raise ExtractionError(f"formula {expr!r}: cannot read the term {body.strip()!r}; terms are "
                                  "[coefficient*]name, separated by ' + ' or ' - ' with spaces")
        coef = check_float(m.group(1), f"formula {expr!r}: the coefficient", float32=True) if m.group(1) else 1.0
        terms.append((coef if sign == "+" else -coef, m.group(2)))
    return terms


def resolve(q: StoreSQL, name: str, layer: int, model_key: str | None) -> dict:
    """A vector id, else the trait's vector the selection rule picks at ``layer``."""
    v = chosen_vector(q, None, name)  # a vector id (refused if its values are not finite)
    if v is not None:
        return v
    v = best_vector(q, name, model_key=model_key, layer=layer)
    if v is None:
        raise ExtractionError(f"{name!r} is neither a vector id nor a trait with a vector at layer {layer}"
                              + (f" on {model_key}" if model_key else "") + " (`traitlens vectors` lists them)")
    return v


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def held_out_record(store: Store, key, layer: int, trait: str, vec: np.ndarray, held_split: str = "auto") -> dict:
    """The fields of a vectors row that scoring the unit ``vec`` ``[d]`` at ``layer`` of group
    ``key`` on ``trait``'s contrastive rows gives: the group, layer and trait, the rows'
    fingerprint and counts, the vector, and the held-out metrics any extracted vector has (no
    bootstrap: stability and agreement are None). The caller adds method, params, raw_norm,
    cosines and info. For a vector made elsewhere: combined (here) or imported (:mod:`.imported`)."""
    from traitlens.pipeline.extract.contrastive import contrastive_set
    from traitlens.pipeline.extract.fitting import read_rows
    from traitlens.pipeline.extract.metrics import projection_metrics

    cset = contrastive_set(store, key, trait, held_split=held_split)
    arr = store.layer_array(key, layer, int(max(cset.train_rows.max(), cset.held_rows.max())) + 1)
    p_train, p_held = read_rows(arr, cset.train_rows) @ vec, read_rows(arr, cset.held_rows) @ vec
    return {**key.as_dict(), "layer": int(layer), "trait": trait, "fingerprint": cset.fingerprint, "where_sql": None,
            "n_pos": cset.n_pos, "n_neg": cset.n_neg, "held_split": cset.held_split, "n_boot": 0, "seed": 0,
            "n_held_pos": int(cset.held_pos.sum()), "n_held_neg": int((~cset.held_pos).sum()), "out_of_core": False,
            "d": int(len(vec)), "vector": np.asarray(vec, np.float32).tolist(),
            **projection_metrics(p_train, cset.train_pos, p_held, cset.held_pos), "stability": None,
            "agreement": None}


def combine(store_path, expr: str, layer: int, name: str, orthogonal_to: list[str] = (), score_trait: str | None = None,
            model_key: str | None = None) -> dict:
    """Store the combined vector; returns its vectors row (with ``vector_id``)."""
    from traitlens.pipeline.extract.jobs import save_vectors
    from traitlens.pipeline.extract.metrics import cosine
    from traitlens.store.store import new_run_id

    if name in METHOD_NAMES or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", name):
        raise ExtractionError(f"--name {name!r}: give a new method name (letters, digits, - _ .), not one of "
                              f"{', '.join(METHOD_NAMES)}")
    store = Store.open(store_path)
    terms = parse_formula(expr)
    with StoreSQL(store) as q:
        parents = [resolve(q, n, layer, model_key) for _, n in terms]
        others = [resolve(q, n, layer, model_key) for n in orthogonal_to]
    groups = {(p["model_key"], p["fmt"], p["site"], p["pooling"], p["layer"]) for p in parents + others}
    if len(groups) != 1:
        raise ExtractionError(f"the vectors of {expr!r} come from different groups or layers ({sorted(groups)}): "
                              "combine vectors of one model, site, pooling and layer")
    raw = sum(c * _unit(p["vector"]) for (c, _), p in zip(terms, parents))
    basis: list[np.ndarray] = []
    for o in others:  # Gram-Schmidt: remove the span of the vectors it must be orthogonal to
        u = _unit(o["vector"])
        for b in basis:
            u = u - (u @ b) * b
        if np.linalg.norm(u) > 1e-8:
            basis.append(u / np.linalg.norm(u))
    for b in basis:
        raw = raw - (raw @ b) * b
    norm = float(np.linalg.norm(raw))
    if not norm > 1e-8:
        raise ExtractionError(f"{expr!r} is the zero vector at layer {layer}: nothing left to store")
    vec = raw / norm
    first = parents[0]
    key = next(g for g in store.groups() if (g.model_key, g.fmt, g.site, g.pooling) ==
               (first["model_key"], first["fmt"], first["site"], first["pooling"]))
    params = {"formula": expr, "parents": [p["vector_id"] for p in parents], "coefficients": [c for c, _ in terms],
              "orthogonal_to": [o["vector_id"] for o in others]}
    rec = {**held_out_record(store, key, layer, score_trait or first["trait"], vec, first["held_split"]),
           "method": name, "params": json.dumps(params, sort_keys=True), "raw_norm": norm,
           "cosines": json.dumps({p["vector_id"]: round(cosine(vec, np.asarray(p["vector"])), 6)
                                  for p in parents + others}),
           "info": strict_json.dumps({"combined": True, **params})}
    with store.lock("vectors combine"):
        save_vectors(store, [rec], new_run_id("combine"))
    return rec
