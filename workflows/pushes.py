"""The vectors and pushes a steering command names, resolved against the store and the model.

``steer``, ``monitor`` and ``evaluate --add`` (the command line and ``tl.steer`` /
``tl.evaluate``) name vectors the same ways: a trait (its pick, the vector ``rank`` lists
first, within ``layer`` / ``method`` when given), a vector id, a bundle (``--vector DIR``), or
``--add TRAIT_OR_VECTOR_ID[:LAYER[:ALPHA]]``; ``--condition`` names the vector whose threshold
decides which prompts are pushed. A name that resolves to nothing is an
:class:`~traitlens.store.errors.InputError` (exit 2) saying what to run.
"""

from __future__ import annotations

from traitlens.store.errors import InputError
from traitlens.store.finite import check_float


def load(model, log=None, option: str = "--model"):
    """The model ``model`` names (None: the default model), loading messages to ``log``; an error
    names ``option``."""
    from traitlens.pipeline.model.loading import load_model

    return load_model(model, log=log or (lambda *a: None), option=option)


def bundle_vector(path: str, vector_id: str | None, layer: int | None, method: str | None):
    """``(bundle, its vector)`` for ``--vector DIR``: every file's hash checked first (exit 2 naming a
    changed one); among several vectors ``--vector-id`` / ``--layer`` / ``--method`` choose (else
    the bundle's first, its pick)."""
    from .bundles import load as load_bundle

    b = load_bundle(path)
    return b, b.choose(vector_id, layer, method)[0]


def check_bundle_model(vec: dict, lm) -> None:
    """A bundle's vector is of the loaded model, or an input error saying which model it needs."""
    from traitlens.pipeline.extract.bundle import model_mismatch

    if vec["model_key"] != lm.key:
        raise InputError(f"vector {vec['vector_id']}: {model_mismatch(vec['model_key'], lm.key)}")


def prompt_ids(lm, text: str, chat: bool | None) -> list[int]:
    """``text`` rendered for the model (in its chat template unless ``chat`` is False) as token ids."""
    from traitlens.pipeline.model.encode import render_ids, uses_chat

    return render_ids(lm.tokenizer, text, None, uses_chat(lm.tokenizer, chat))


def pick_vector(store, trait: str | None, model_key: str, layer: int | None, method: str | None,
                vector_id: str | None) -> dict:
    """The vector to use: by id; else the one :mod:`traitlens.queries.selection`'s rule picks
    (within ``layer`` / ``method`` when given) — the same one ``rank`` lists first."""
    from traitlens.queries import StoreSQL
    from traitlens.queries.selection import chosen_vector

    with StoreSQL(store) as q:
        v = chosen_vector(q, trait, vector_id, model_key=model_key, layer=layer, method=method)
    if v is None and vector_id:
        raise InputError(f"--vector-id {vector_id}: no vector has that id; `traitlens vectors` lists the stored ids "
                         "(with their trait, layer and method)")
    if v is None:
        raise InputError(f"no vector for trait {trait!r} on model {model_key}"
                         + (f" at layer {layer}" if layer is not None else "") + (f" by {method}" if method else "")
                         + f"; run `traitlens extract --trait {trait}` with this --model")
    if v["model_key"] != model_key:
        raise InputError(f"vector {v['vector_id']} was extracted on {v['model_key']}, not {model_key}; pass the "
                         "matching --model")
    return v


def named_vector(store, model_key: str, name: str, layer: int | None = None, method: str | None = None) -> dict:
    """The vector ``name`` names: a stored vector id, else that trait's pick (within ``layer`` /
    ``method``), as :func:`pick_vector` checks it."""
    from traitlens.queries import StoreSQL
    from traitlens.queries.selection import named_vector as named

    with StoreSQL(store) as q:
        v = named(q, name, model_key, layer, method)
    is_id = v is not None and v["vector_id"] == name
    return (pick_vector(store, None, model_key, None, None, name) if is_id
            else pick_vector(store, name, model_key, layer, method, None))


def parse_add(store, lm, spec: str, alpha: float, method: str | None) -> tuple[dict, int, float]:
    """(vector, layer, alpha) of one ``--add TRAIT_OR_VECTOR_ID[:LAYER[:ALPHA]]``: LAYER defaults
    to the vector's, ALPHA to ``alpha``; a layer the model lacks is an input error."""
    parts = spec.split(":")
    try:
        if len(parts) > 3 or not parts[0]:
            raise ValueError
        at = int(parts[1]) if len(parts) > 1 and parts[1] else None
        a = parts[2] if len(parts) > 2 and parts[2] else alpha
    except ValueError:
        raise InputError(f"--add {spec!r}: use TRAIT_OR_VECTOR_ID[:LAYER[:ALPHA]], e.g. agreeableness:16:0.1") from None
    a = check_float(a, f"--add {spec!r}: ALPHA", float32=True)  # the rule of every float option
    vec = named_vector(store, lm.key, parts[0], at, method)
    at = vec["layer"] if at is None else at
    if not 0 <= at < lm.n_layers:
        raise InputError(f"--add {spec!r}: layer {at}; the model has layers 0-{lm.n_layers - 1}")
    return vec, at, a


def check_positions(positions: str) -> None:
    """``--positions``, or an input error saying what is accepted."""
    from traitlens.pipeline.steer.steering import check_positions as check

    try:
        check(positions)
    except ValueError as e:
        raise InputError(f"--positions: {e}") from None


def label(vec: dict) -> str:
    """A vector in words, as a push describes it."""
    return f"{vec['trait']} {vec['method']} ({vec['vector_id']}, extracted at L{vec['layer']})"


def pushes_for(store, lm, specs: list[str], trait, layer, method, vector_id, alpha, norm, site, positions,
               seqs: list[list[int]], chosen: dict | None = None) -> list:
    """The pushes ``steer`` applies: one per ``--add TRAIT_OR_VECTOR_ID[:LAYER[:ALPHA]]``, else the
    one ``--trait`` / ``--vector-id`` names (or ``chosen``: a bundle's vector). Each push's scale
    is the mean token norm of its layer over every prompt of the run (one unit for the whole batch)."""
    import torch

    from traitlens.pipeline.model.hooks import pad_batch, pad_token_id
    from traitlens.pipeline.steer.steering import Push, mean_token_norm

    wanted = [parse_add(store, lm, spec, alpha, method) for spec in specs]
    if not specs:
        if not (trait or vector_id or chosen):
            raise InputError("give --trait, --vector-id, --vector DIR or one --add per vector")
        vec = chosen if chosen is not None else pick_vector(store, trait, lm.key, layer, method, vector_id)
        wanted.append((vec, vec["layer"] if layer is None else layer, alpha))
    ids, mask = pad_batch(seqs, pad_token_id(lm.tokenizer), "right", torch.device("cpu"))
    out = []
    for vec, at, a in wanted:
        if not 0 <= at < lm.n_layers:
            raise InputError(f"layer {at} of {vec['trait']}: the model has layers 0-{lm.n_layers - 1}")
        scale = mean_token_norm(lm, at, ids, mask, norm)
        out.append(Push(vec["vector"], at, a, scale, site, positions, label=label(vec)))
    return out


def condition(store, lm, name: str, threshold: float | None, seqs: list[list[int]],
              prompts: list[str]) -> tuple[list[bool], list[str]]:
    """(which prompts pass the condition vector ``name`` (a trait's pick or a vector id), the lines
    saying so): their projection, pooled as the vector's rows were, above the threshold (learned
    on held-out data unless given); the lines give the condition and each prompt's projection."""
    from traitlens.pipeline.extract.conditions import condition_threshold
    from traitlens.pipeline.steer.steering import condition_scores

    vec = named_vector(store, lm.key, name)
    if threshold is None:
        c = condition_threshold(store, vec)
        threshold = c["threshold"]
        how = (f"learned on {c['split']} ({c['n_pos']} positives, {c['n_neg']} negatives): best F1 {c['f1']:.3f}, "
               f"precision {c['precision']:.3f}, recall {c['recall']:.3f}")
    else:
        how = "given"
    try:
        scores = condition_scores(lm, vec["vector"], vec["layer"], vec["pooling"], seqs)
    except ValueError as e:
        raise InputError(f"--condition {name}: {e}") from None
    lines = [f"condition: {vec['trait']} {vec['method']} L{vec['layer']} ({vec['vector_id']}, {vec['pooling']} "
             f"pooling), threshold {threshold:.4f} ({how})"]
    for p, s in zip(prompts, scores):
        lines.append(f"  {s:+.4f} {'>' if s > threshold else '<='} threshold: {'steer' if s > threshold else 'leave'} "
                     f"{p[:70]!r}")
    return [bool(s > threshold) for s in scores], lines
