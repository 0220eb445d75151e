"""Interop with the tools users already have: TransformerLens caches in, steering libraries out.

In: :func:`ingest_activation_cache` stores the activations of a TransformerLens
``ActivationCache`` (``HookedTransformer`` or ``TransformerBridge``; any mapping of hook name
to ``[batch, pos, d]`` tensors works) as pooled rows of a traitlens store, with the same
commit protocol, prompt table and incremental skipping as ``traitlens ingest``.

Out: :func:`load_directions` reads back what :mod:`.export` wrote (safetensors or GGUF) as
``{layer: [d] float32}``; :func:`to_steering_vector` builds a ``steering_vectors.SteeringVector``;
repeng loads the GGUF export directly (``ControlVector.import_gguf(path)``) and llama.cpp with
``--control-vector``. Layer N everywhere means the output of decoder block N (0-based):
TransformerLens ``blocks.N.hook_resid_post``, Hugging Face ``hidden_states[N + 1]``,
repeng's and steering-vectors' layer N.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from traitlens.store import GroupKey, PendingBatch, Store, safe_name
from traitlens.store.vocabulary import PROMPT_POOLINGS

from traitlens.pipeline.capture.corpus import CorpusError, ReadOptions, record_from_object
from traitlens.pipeline.capture.splits import assign_splits
from traitlens.pipeline.capture.ingest import still_to_capture
from traitlens.pipeline.capture.pooling import pool_last, pool_mean

# hook names per site: HookedTransformer's, then TransformerBridge's own names
CACHE_HOOKS = {
    "resid": (r"blocks\.(\d+)\.hook_resid_post", r"blocks\.(\d+)\.hook_out"),
    "attn_out": (r"blocks\.(\d+)\.hook_attn_out", r"blocks\.(\d+)\.attn\.hook_out"),
    "mlp_out": (r"blocks\.(\d+)\.hook_mlp_out", r"blocks\.(\d+)\.mlp\.hook_out"),
}


def cache_layers(cache, site: str) -> dict[int, str]:
    """``{layer: hook name}`` of one site in a cache (the first naming scheme that matches)."""
    if site not in CACHE_HOOKS:
        raise ValueError(f"site {site!r}: a cache can give {', '.join(CACHE_HOOKS)}")
    names = list(cache.keys())
    for pattern in CACHE_HOOKS[site]:
        rx = re.compile(pattern + "$")
        found = {int(m.group(1)): n for n in names if (m := rx.match(n))}
        if found:
            return dict(sorted(found.items()))
    raise ValueError(f"the cache holds no {site} hooks (looked for {' or '.join(CACHE_HOOKS[site])}); "
                     f"run run_with_cache without a names_filter that drops them. Some of its names: {names[:6]}")


def _model_key(cache, model_key: str | None) -> str:
    if model_key:
        return safe_name(model_key, "model_key")
    cfg = getattr(getattr(cache, "model", None), "cfg", None)
    name = getattr(cfg, "model_name", None)
    if not name:
        raise ValueError("pass model_key=...: the cache does not say which model made it. Use a key that names "
                         "the checkpoint; vectors of different keys are never mixed")
    return safe_name(f"{name}-tl", "model_key")


def ingest_activation_cache(store_path, cache, prompts: list, attention_mask: torch.Tensor | None = None,
                            model_key: str | None = None, sites=("resid",), poolings=PROMPT_POOLINGS,
                            fmt: str = "raw", read_opts: ReadOptions | None = None, chunk_rows: int = 256) -> dict:
    """Store a TransformerLens cache's activations, pooled per prompt; returns counts.

    ``cache[hook]`` is ``[B, T, d]`` (a cache made with ``remove_batch_dim=True`` is ``[T, d]``
    and needs one prompt). ``prompts`` are B strings or corpus-style dicts (``text``, ``label``,
    ``trait``, ``split``, ...) validated like corpus lines. ``attention_mask`` ``[B, T]`` marks
    real tokens (default: all of them) and may pad on either side. Prompts already stored for
    the model key are skipped, as ``ingest`` skips them.
    """
    opts = read_opts or ReadOptions()
    if not prompts:
        raise ValueError("no prompts given")
    bad = [p for p in poolings if p not in PROMPT_POOLINGS]
    if bad:
        raise ValueError(f"pooling {bad[0]!r}: from a cache traitlens stores {' or '.join(PROMPT_POOLINGS)}")
    records = []
    for i, p in enumerate(prompts):
        obj = {"text": p} if isinstance(p, str) else p
        records.append(record_from_object(obj, Path("<prompts>"), i + 1, opts, "activation_cache"))
    key = _model_key(cache, model_key)
    by_site = {s: cache_layers(cache, s) for s in sites}
    layers = sorted(set.intersection(*(set(v) for v in by_site.values())))
    if not layers:
        raise ValueError(f"the cache's sites {list(sites)} share no layer: {({s: list(v) for s, v in by_site.items()})}")
    first = cache[by_site[sites[0]][layers[0]]]
    if first.ndim == 2:
        if len(records) != 1:
            raise ValueError(f"the cache has no batch axis ([T, d]) but {len(records)} prompts were given")
        unbatch = True
        B, T, d = 1, first.shape[0], first.shape[1]
    else:
        unbatch = False
        B, T, d = first.shape
    if B != len(records):
        raise ValueError(f"the cache holds {B} sequences but {len(records)} prompts were given")
    mask = torch.ones((B, T), dtype=torch.bool) if attention_mask is None else attention_mask.to(torch.bool).cpu()
    if tuple(mask.shape) != (B, T):
        raise ValueError(f"attention_mask is {tuple(mask.shape)}; the cache's activations are [{B}, {T}, d]")
    if not bool(mask.any(dim=1).all()):
        raise CorpusError("<prompts>", int((~mask.any(dim=1)).nonzero()[0]) + 1, None, "has no real token in attention_mask")

    # pool everything before the store is opened: a malformed cache costs nothing stored
    pooled_all = {}
    for s in sites:
        for p in poolings:
            fn = pool_last if p == "last" else pool_mean
            pooled_all[(s, p)] = {}
            for layer in layers:
                h = torch.as_tensor(cache[by_site[s][layer]]).detach().cpu()
                h = h.unsqueeze(0) if unbatch else h
                if tuple(h.shape) != (B, T, d):
                    raise ValueError(f"cache[{by_site[s][layer]!r}] is {tuple(h.shape)}; expected [{B}, {T}, {d}]")
                pooled_all[(s, p)][layer] = fn(h, mask).numpy()
    counts_all = mask.sum(dim=1).numpy().astype(np.int32)

    groups = [GroupKey(key, fmt, s, p) for s in sites for p in poolings]
    if Store.exists(store_path):  # a layer set or width the store's groups do not hold: refuse before writing
        Store.open(store_path).check_extend(groups, layers, d)
    store = Store.open(store_path, create=True)
    config = {"model_key": key, "sites": list(sites), "layers": layers, "poolings": list(poolings), "fmt": fmt}
    with store.lock("ingest from an ActivationCache"), store.run("ingest-cache", config, start=False) as run:
        writer = store.writer(groups, layers, d, run.run_id, chunk_rows)
        have = store.table("prompts", columns=["prompt_id", "dataset", "trait", "label", "split"]).to_pylist()
        splits = assign_splits(records, {(p["prompt_id"], p["dataset"], p["trait"]): (p["label"], p["split"])
                                         for p in have})  # stratified by label, as an ingest does
        n_new, _ = store.add_prompts([{**r.as_row(), "split": s} for r, s in zip(records, splits)])
        keep = still_to_capture(records, writer.done_prompt_ids())
        if keep:
            run.start()
            run.counts = {"captured": 0}
            writer.add(PendingBatch(prompt_ids=[records[i].prompt_id for i in keep], token_counts=counts_all[keep],
                                    truncated=np.zeros(len(keep), np.int32), responses=[None] * len(keep),
                                    pooled={g: {l: v[keep] for l, v in by_l.items()}
                                            for g, by_l in pooled_all.items()}))
            writer.commit()
            run.counts = {"captured": writer.n_committed}
    run_id = run.run_id
    return {"run_id": run_id, "model_key": key, "fmt": fmt, "layers": layers, "n_new_prompts": n_new,
            "n_captured": len(keep), "n_skipped": len(records) - len(keep)}


def load_directions(path: str | Path, model_key: str | None = None) -> dict[int, np.ndarray]:
    """``{layer: vector [d] float32}`` from a traitlens export (safetensors or GGUF). With
    ``model_key`` (the model it will steer), an export whose card names another model is
    refused with a message naming both."""
    from traitlens.pipeline.extract.export import check_card, read_card

    path = Path(path)
    if model_key is not None:
        check_card(read_card(path), model_key, path)
    if path.suffix == ".gguf":
        import gguf

        reader = gguf.GGUFReader(str(path))
        tensors = {t.name: np.asarray(t.data, dtype=np.float32).reshape(-1) for t in reader.tensors}
    else:
        from safetensors.numpy import load_file

        tensors = load_file(str(path))
    out = {}
    for name, v in tensors.items():
        m = re.fullmatch(r"direction\.(\d+)", name)
        if m:
            out[int(m.group(1))] = v.astype(np.float32)
    if not out:
        raise ValueError(f"{path} holds no direction.<layer> tensors: was it written by `traitlens export`?")
    return dict(sorted(out.items()))


def to_steering_vector(directions: dict[int, np.ndarray] | str | Path, scale: float = 1.0,
                       model_key: str | None = None):
    """A ``steering_vectors.SteeringVector`` adding ``scale * v`` at each layer's block output.

    ``directions`` is ``{layer: vector}`` or a file :func:`load_directions` reads (checked
    against ``model_key`` when given). Apply it with
    ``with sv.apply(model): model.generate(...)`` (steering-vectors' own API).
    """
    try:
        from steering_vectors import SteeringVector
    except ImportError:
        raise ImportError("steering-vectors is not installed: pip install steering-vectors") from None
    if not isinstance(directions, dict):
        directions = load_directions(directions, model_key)
    acts = {int(l): torch.as_tensor(np.asarray(v, dtype=np.float32) * scale) for l, v in directions.items()}
    return SteeringVector(layer_activations=acts, layer_type="decoder_block")
