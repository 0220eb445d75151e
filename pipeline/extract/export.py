"""Export stored vectors: safetensors (never pickle) and GGUF control vectors for llama.cpp,
repeng and EasySteer, each carrying its vector card.

Every file holds one direction per layer, keyed like repeng writes them: ``direction.{layer}``
where ``layer`` is the 0-based index of the block whose output the vector lives on
(:data:`LAYER_CONVENTION`). llama.cpp applies ``direction.N`` to block N's output (its loader
puts ``direction.N`` at row N-1 of a buffer whose row il-1 block il reads) and refuses
``direction.0``, so the llama.cpp GGUF leaves layer 0 out (:func:`gguf_records`); EasySteer's
layer-keyed GGUF keeps every layer and names the method (``controlvector.method``). Vectors are
unit norm; ``scale`` multiplies them.

Strength. traitlens's ``alpha`` is in units of the layer's mean token norm: the push is
``alpha * norm_L * unit(v)``. A file of unit vectors needs llama.cpp strength
``alpha * norm_L / scale`` at layer L (``--control-vector-scaled FILE:STRENGTH``, one argument,
with ``--control-vector-layer-range L L``); the card carries ``norm_L`` per layer and, for a
given alpha, that strength (:func:`llama_cpp_lines` prints the commands).

The card (:func:`vector_card`, JSON under the ``traitlens.card`` metadata key of safetensors
and key-value of GGUF) says what the file is: model key, layer convention, site, pooling,
method, trait, per layer (exactly the layers in the file) the vector id, the rows' fingerprint,
the held-out metrics, its norm and strength and, once evaluated, the steering pick's metrics,
and the code version. It is strict JSON (:func:`card_json`: a value that is not a finite number
is null, and ``nulls`` says why: :func:`traitlens.store.strict_json.document`). :func:`read_card` reads it back; loading an export for another
model is refused (:func:`check_card`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from traitlens.store import strict_json
from traitlens.store.errors import InputError
from traitlens.store.finite import FLOAT32_MAX, vector_problem


def latest_per_layer(records: list[dict]) -> list[dict]:
    """The newest vector of each layer (records of one trait, method and group)."""
    latest: dict[int, dict] = {}
    for r in sorted(records, key=lambda r: r["created_at"]):
        latest[int(r["layer"])] = r
    return [latest[l] for l in sorted(latest)]


def _by_layer(records: list[dict], scale: float = 1.0) -> dict[int, np.ndarray]:
    """``{layer: vector * scale}`` as float32; a vector that is not finite, or whose scaled
    values overflow float32, is refused (an :class:`InputError` naming it)."""
    out = {}
    for r in records:
        if r["layer"] in out:
            raise InputError(f"two vectors for layer {r['layer']}: pass one --method")
        why = vector_problem(r["vector"])
        if why is not None:
            raise InputError(f"vector {r['vector_id']} ({r['trait']} {r['method']} L{r['layer']}) cannot be exported: "
                             f"{why} (an older traitlens stored it)")
        with np.errstate(over="ignore"):
            v = np.asarray(r["vector"], dtype=np.float64) * float(scale)
        if not np.isfinite(v.astype(np.float32)).all():
            raise InputError(f"--scale {scale:g}: the scaled vector of layer {r['layer']} overflows float32 (values "
                             f"above {FLOAT32_MAX:.3g}); use a smaller scale")
        out[int(r["layer"])] = v.astype(np.float32)
    return dict(sorted(out.items()))


LAYER_CONVENTION = ("direction.N is added to the output of decoder block N (0-based): Hugging Face "
                    "hidden_states[N + 1], TransformerLens blocks.N.hook_resid_post, repeng and steering-vectors layer N")
CARD_KEY = "traitlens.card"
HELD_OUT = ("auroc", "balanced_accuracy", "cohens_d", "stability", "threshold", "held_split", "n_held_pos", "n_held_neg")
STEERING = ("kind", "alpha", "shift", "ci_low", "ci_high", "kl", "norm")


def vector_card(records: list[dict], scale: float = 1.0, steering: dict[str, dict] | None = None,
                norms: dict[int, float] | None = None, alpha: float | None = None, notes: dict | None = None) -> dict:
    """What an export holds, for whoever loads it: one entry per record, so pass exactly the
    records written. ``steering``: ``{vector_id: its steering pick row}`` (the largest shift
    within the KL budget) where a vector was evaluated; ``norms``: ``{layer: mean token norm}``
    (alpha's unit, measured by the caller); with ``alpha``, each layer's llama.cpp strength
    ``alpha * norm / scale``; ``notes``: what the file leaves out and why (``{field: reason}``)."""
    from traitlens.store.store import code_version

    head = records[0]
    notes = dict(notes or {})
    if norms is None:
        notes.setdefault("norm", "not measured: the export was written without loading the model")
    layers = {}
    for r in records:
        entry = {"vector_id": r["vector_id"], "fingerprint": r.get("fingerprint"),
                 **{k: r.get(k) for k in HELD_OUT}}
        entry["norm"] = None if norms is None else norms.get(int(r["layer"]))
        if alpha is not None and entry["norm"] is not None:
            entry["llama_cpp_strength"] = alpha * entry["norm"] / scale
        s = (steering or {}).get(r["vector_id"])
        if s is not None:
            entry["steering"] = {k: s.get(k) for k in STEERING if k in s}
        layers[str(r["layer"])] = entry
    return {"format": "traitlens vector card 1", "model_key": head["model_key"], "fmt": head["fmt"],
            "site": head["site"], "pooling": head["pooling"], "trait": head["trait"], "method": head["method"],
            "layer_convention": LAYER_CONVENTION, "scale": scale, "unit_norm": True, "alpha": alpha,
            "strength": STRENGTH, "layers": layers, "notes": notes, "code_version": code_version()}


STRENGTH = ("the push at layer L is alpha * norm_L * unit(v) (traitlens's alpha, norm_L the layer's mean token "
            "norm); this file holds scale * unit(v), so llama.cpp's strength is alpha * norm_L / scale "
            "(llama_cpp_strength), steering-vectors' multiplier the same")


NOT_MEASURABLE = " in the store: not measurable for this vector"  # why a card's metric is null


def card_json(card: dict) -> str:
    """A card (this module's, a bundle's) as strict JSON: a value that is not a finite number is
    null, and ``nulls`` says why (:func:`traitlens.store.strict_json.document`)."""
    return strict_json.dumps(strict_json.document(card, NOT_MEASURABLE), default=str)


LAYER0_NOTE = ("layer 0 is left out: llama.cpp cannot steer block 0 (its control-vector loader refuses direction.0); "
               "the EasySteer format keeps it")


NO_LAYER_ABOVE_0 = ("llama.cpp's control vectors have no layer 0 (it steers the outputs of blocks 1 and up): export "
                    "layers >= 1 (--layers 1-), or --format easysteer or safetensors, which keep layer 0")


def gguf_records(records: list[dict], easysteer: bool = False) -> tuple[list[dict], bool]:
    """(the records a GGUF file holds, whether layer 0 was left out): llama.cpp's and repeng's
    leave layer 0 out, EasySteer's keeps every layer. An :class:`InputError`
    (:data:`NO_LAYER_ABOVE_0`) when nothing is left."""
    kept = [r for r in records if easysteer or int(r["layer"]) > 0]
    if not kept:
        raise InputError(NO_LAYER_ABOVE_0)
    return kept, len(kept) < len(records)


def llama_cpp_lines(path, card: dict) -> list[str]:
    """Copy-pasteable llama.cpp arguments, one line per layer of the card that has a strength:
    ``--control-vector-scaled FILE:STRENGTH --control-vector-layer-range L L`` (current llama.cpp
    reads FILE:SCALE as one argument)."""
    lines = []
    for layer, entry in card["layers"].items():
        s = entry.get("llama_cpp_strength")
        if s is not None:
            lines.append(f"--control-vector-scaled {path}:{s:.6g} --control-vector-layer-range {layer} {layer}")
    return lines


def check_card(card: dict | None, model_key: str, where) -> None:
    """Refuse an export made for another model (ValueError naming both)."""
    if card is not None and card.get("model_key") != model_key:
        raise ValueError(f"{where} holds vectors of model {card.get('model_key')}, not of {model_key}: a direction of "
                         "one model means nothing in another's activations; export from a store of this model")


def to_safetensors(records: list[dict], path: Path, scale: float = 1.0, card: dict | None = None) -> Path:
    from safetensors.numpy import save_file

    vecs = _by_layer(records, scale)
    meta = {k: str(records[0][k]) for k in ("model_key", "fmt", "site", "pooling", "trait", "method")}
    meta["vector_ids"] = json.dumps({str(r["layer"]): r["vector_id"] for r in records})
    meta["scale"] = str(scale)
    meta[CARD_KEY] = card_json(card or vector_card(records, scale))
    save_file({f"direction.{l}": v for l, v in vecs.items()}, str(path), metadata=meta)
    return path


def to_gguf(records: list[dict], path: Path, model_hint: str = "llama", scale: float = 1.0, card: dict | None = None,
            easysteer: bool = False) -> Path:
    """A control-vector GGUF: llama.cpp's and repeng's (layer 0 left out: llama.cpp cannot steer
    it), or with ``easysteer`` EasySteer's layer-keyed one (every layer, ``controlvector.method``).
    ``model_hint``: the model's ``config.model_type``, as repeng writes it (llama.cpp's loader
    reads no metadata key; repeng's and vLLM's importers require this one). The card, when
    given, must describe the records written (:func:`gguf_records`)."""
    import gguf

    records, _ = gguf_records(records, easysteer)  # an InputError when only layer 0 was given
    vecs = _by_layer(records, scale)
    if card is not None and sorted(card["layers"], key=int) != [str(l) for l in vecs]:
        raise ValueError(f"the card lists layers {sorted(card['layers'], key=int)}, the file holds {list(vecs)}")
    writer = gguf.GGUFWriter(str(path), "controlvector")
    writer.add_string("controlvector.model_hint", model_hint)
    writer.add_uint32("controlvector.layer_count", len(vecs))
    if easysteer:
        writer.add_string("controlvector.method", str(records[0]["method"]))
    writer.add_string(CARD_KEY, card_json(card or vector_card(records, scale)))
    for layer, v in vecs.items():
        writer.add_tensor(f"direction.{layer}", v)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def read_card(path) -> dict | None:
    """The vector card of an export (None for a file written before cards, or by another tool)."""
    path = Path(path)
    if path.suffix == ".gguf":
        import gguf

        field = gguf.GGUFReader(str(path)).get_field(CARD_KEY)
        return json.loads(bytes(field.parts[-1]).decode()) if field is not None else None
    from safetensors import safe_open

    with safe_open(str(path), "numpy") as f:
        meta = f.metadata() or {}
    return json.loads(meta[CARD_KEY]) if CARD_KEY in meta else None
