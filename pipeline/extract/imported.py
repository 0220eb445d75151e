"""Vectors made by other tools, into the vectors table beside traitlens's own (``traitlens import``).

Layer N in traitlens is block N's output (Hugging Face ``hidden_states[N + 1]``). Each tool
indexes its own way, and each reader maps its index to that:

- GGUF control vectors (repeng's ``export_gguf``, llama.cpp's cvector-generator, traitlens's
  ``--format gguf``): tensors ``direction.N``. repeng reads layer N from ``hidden_states[N + 1]``
  and llama.cpp adds ``direction.N`` after block N: layer N.
- steering-vectors ``.pt``: ``torch.save(sv)`` of a ``SteeringVector``,
  ``torch.save(sv.layer_activations)`` (``{N: tensor}``), or a dict holding
  ``layer_activations`` and ``layer_type``. With ``layer_type`` decoder_block, N is
  ``model.layers[N]``'s output: layer N. Other layer types are refused.
- persona_vectors ``.pt``: one tensor ``[n_layers + 1, d]`` per trait whose row i is the mean
  difference of ``hidden_states[i]`` (its steering adds row i to ``model.layers[i - 1]``'s
  output): layer i - 1; row 0, the embeddings, has no block and is left out.
- safetensors: 1-D tensors named by their block (``direction.N`` as traitlens and repeng
  write, ``layers.N``, ``N``, any name ending in ``.N``): layer N; a 2-D tensor is rows by index,
  read with an explicit ``convention``.

``convention`` overrides a reader's own: ``blocks`` (index N = block N's output) or
``hidden-states`` (index N = ``hidden_states[N]``, block N - 1's output; index 0 left out).

``.pt`` files are read by ``torch.load(weights_only=True)``: tensors, containers and numbers,
plus a stand-in class registered under steering-vectors' ``SteeringVector`` name (its fields
only: no code of that package runs, none needs to be installed). Nothing else is unpickled:
a file that needs more is refused.

Every file is read and every vector checked (finite, non-zero, the group's width, a stored
layer) before the store is touched: a bad file is :class:`ImportFileError` (exit 2) and
nothing is written. Each vector then enters as a vectors row (:func:`.combine.held_out_record`:
unit norm, ``raw_norm`` its length, held-out metrics on the named trait's contrastive rows) with
its provenance in ``params``: source format, file name and SHA-256, the tensor or row it came
from, the convention, the model the user named. ``rank``, ``evaluate`` and ``steer`` then
treat it like any other method.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from traitlens.store import Store, strict_json
from traitlens.store.errors import InputError
from traitlens.store.finite import vector_problem
from traitlens.store.location import sha256_file

FORMATS = ("auto", "gguf", "steering-vectors", "persona-vectors", "safetensors")
CONVENTIONS = ("auto", "blocks", "hidden-states")
SUFFIXES = (".gguf", ".safetensors", ".pt", ".pth")
STEERING_VECTOR = "steering_vectors.steering_vector.SteeringVector"  # how torch.save(sv) names the class
CARD_FIELDS = ("model_key", "fmt", "site", "pooling", "trait", "method", "code_version")  # kept from an export's card


class ImportFileError(InputError):
    """A file that cannot be imported: the message names it and says why (exit 2)."""


@dataclass
class Source:
    """What one file holds: ``entries`` are (where in the file, index, vector [d] float64),
    the index read by ``convention`` (blocks | hidden-states)."""

    path: Path
    format: str
    convention: str
    sha256: str
    entries: list[tuple[str, int, np.ndarray]] = field(default_factory=list)
    card: dict | None = None  # a traitlens export's vector card

    def layers(self) -> dict[int, tuple[str, np.ndarray]]:
        """``{traitlens layer: (where, vector)}`` (hidden-states index 0 left out)."""
        shift = 1 if self.convention == "hidden-states" else 0
        return {i - shift: (where, v) for where, i, v in self.entries if i - shift >= 0}


class SteeringVectorFields:
    """Stand-in for steering-vectors' ``SteeringVector`` when a pickled one is read with
    ``weights_only``: the unpickler sets its fields (``layer_activations``, ``layer_type``)."""


def _fail(path: Path, why: str) -> ImportFileError:
    return ImportFileError(f"{path}: {why}; nothing was imported")


def _array(path: Path, where: str, value) -> np.ndarray:
    try:
        a = np.asarray(value.detach().cpu().double().numpy() if hasattr(value, "detach") else value, np.float64)
    except (TypeError, ValueError):
        raise _fail(path, f"{where} is not a numeric array") from None
    return a


def _layer_index(path: Path, name: str) -> int:
    """The block index a tensor name ends in (``direction.12``, ``layers.12``, ``12``)."""
    m = re.fullmatch(r"(?:.*\.)?(\d+)", str(name))
    if m is None:
        raise _fail(path, f"tensor {name!r} is not named by a layer (direction.N, layers.N or N)")
    return int(m.group(1))


def read_gguf(path: Path) -> Source:
    import gguf

    from traitlens.pipeline.extract.export import CARD_KEY

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # noqa: BLE001 - any parse failure of a foreign file is a bad file
        raise _fail(path, f"not a readable GGUF file ({type(e).__name__}: {e})") from None
    arch = reader.get_field("general.architecture")
    if arch is None or bytes(arch.parts[-1]).decode(errors="replace") != "controlvector":
        raise _fail(path, "not a control vector (general.architecture is not 'controlvector'): a model file?")
    src = Source(path, "gguf", "blocks", sha256_file(path))
    card = reader.get_field(CARD_KEY)
    if card is not None:
        src.card, src.format = json.loads(bytes(card.parts[-1]).decode()), "traitlens-gguf"
    for t in reader.tensors:
        if not t.name.startswith("direction."):
            raise _fail(path, f"tensor {t.name!r}: a control vector holds direction.N tensors only")
        v = _array(path, t.name, t.data).reshape(-1)
        src.entries.append((t.name, _layer_index(path, t.name), v))
    return src


def read_safetensors(path: Path, convention: str) -> Source:
    from safetensors import SafetensorError, safe_open
    from safetensors.numpy import load_file

    from traitlens.pipeline.extract.export import CARD_KEY

    try:
        tensors = load_file(str(path))
        with safe_open(str(path), "numpy") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise _fail(path, f"not a readable safetensors file ({e})") from None
    src = Source(path, "safetensors", convention, sha256_file(path))
    if CARD_KEY in meta:
        src.card, src.format = json.loads(meta[CARD_KEY]), "traitlens-safetensors"
    if len(tensors) == 1 and next(iter(tensors.values())).ndim == 2:
        name, table = next(iter(tensors.items()))
        if convention == "auto":
            raise _fail(path, f"tensor {name!r} is a table {table.shape} of layers: say how its rows are indexed, "
                        "--convention blocks (row N = block N's output) or hidden-states (row N = hidden_states[N])")
        src.entries = [(f"{name}[{i}]", i, _array(path, name, row)) for i, row in enumerate(table)]
        return src
    src.convention = "blocks" if convention == "auto" else convention
    for name, t in sorted(tensors.items()):
        if t.ndim != 1:
            raise _fail(path, f"tensor {name!r} has shape {t.shape}; expected one [d] vector per layer")
        src.entries.append((name, _layer_index(path, name), _array(path, name, t)))
    return src


def read_pt(path: Path, fmt: str, convention: str, layers: list[int] | None) -> Source:
    """A steering-vectors or persona_vectors ``.pt`` (see the module's notes), never unpickled
    beyond what ``weights_only`` allows."""
    import pickle

    import torch

    try:
        with torch.serialization.safe_globals([(SteeringVectorFields, STEERING_VECTOR)]):
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, AttributeError, TypeError, ValueError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise _fail(path, "cannot be read with torch.load(weights_only=True), and traitlens never unpickles more "
                    f"(it would run code from the file): {first}. Save tensors or a dict of tensors "
                    "(torch.save(sv.layer_activations, path)), or safetensors") from None
    sha = sha256_file(path)
    if isinstance(obj, SteeringVectorFields) or (isinstance(obj, dict) and "layer_activations" in obj):
        acts = getattr(obj, "layer_activations", None) if not isinstance(obj, dict) else obj["layer_activations"]
        layer_type = getattr(obj, "layer_type", None) if not isinstance(obj, dict) else obj.get("layer_type")
        if (layer_type or "decoder_block") != "decoder_block":
            raise _fail(path, f"a steering-vectors vector of layer_type {layer_type!r}; traitlens imports "
                        "decoder_block vectors (each block's output)")
        obj = acts
    if isinstance(obj, dict):
        if fmt not in ("auto", "steering-vectors"):
            raise _fail(path, f"holds a dict of layers (steering-vectors' layout), not {fmt}")
        src = Source(path, "steering-vectors", "blocks" if convention == "auto" else convention, sha)
        for k, v in sorted(obj.items(), key=lambda kv: str(kv[0])):
            if not (isinstance(k, int) or (isinstance(k, str) and k.isdigit())):
                raise _fail(path, f"key {k!r}: steering-vectors keys are layer numbers")
            if not hasattr(v, "shape") or len(v.shape) != 1:
                raise _fail(path, f"layer {k}: expected a [d] tensor")
            src.entries.append((f"layer_activations[{k}]", int(k), _array(path, f"layer {k}", v)))
        return src
    if isinstance(obj, torch.Tensor) and obj.ndim == 2:
        if fmt not in ("auto", "persona-vectors"):
            raise _fail(path, f"holds a [{obj.shape[0]}, {obj.shape[1]}] table (persona_vectors' layout), not {fmt}")
        src = Source(path, "persona-vectors", "hidden-states" if convention == "auto" else convention, sha)
        src.entries = [(f"row {i}", i, _array(path, f"row {i}", row)) for i, row in enumerate(obj)]
        return src
    if isinstance(obj, torch.Tensor) and obj.ndim == 1:
        if layers is None or len(layers) != 1:
            raise _fail(path, "holds one [d] vector with no layer: pass --layers L, the block whose output it is")
        src = Source(path, "pt-vector", "blocks", sha)
        src.entries = [("tensor", layers[0], _array(path, "tensor", obj))]
        return src
    raise _fail(path, f"holds a {type(obj).__name__}: expected a steering-vectors vector (a dict of layers) or a "
                "persona_vectors table [n_layers + 1, d]")


def read_source(path: Path, fmt: str = "auto", convention: str = "auto", layers: list[int] | None = None) -> Source:
    """One file, read by its format (``auto``: by its suffix and contents)."""
    if fmt not in FORMATS or convention not in CONVENTIONS:
        raise InputError(f"--format {fmt} / --convention {convention}: use {', '.join(FORMATS)} / "
                         f"{', '.join(CONVENTIONS)}")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise _fail(path, f"not a vector file traitlens reads ({', '.join(SUFFIXES)})")
    if suffix == ".gguf":
        src = read_gguf(path)
        src.convention = "blocks" if convention == "auto" else convention
    elif suffix == ".safetensors":
        src = read_safetensors(path, convention)
    else:
        src = read_pt(path, fmt, convention, layers)
    if not src.entries:
        raise _fail(path, "holds no vectors")
    return src


def sources(path, fmt: str = "auto", convention: str = "auto", layers: list[int] | None = None) -> list[Source]:
    """Every vector file of ``path`` (a file, or a folder's files with a known suffix), read."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)
        if not files:
            raise ImportFileError(f"{path}: no {', '.join(SUFFIXES)} files in this folder; nothing was imported")
    elif path.is_file():
        files = [path]
    else:
        raise ImportFileError(f"{path}: no such file or folder")
    return [read_source(f, fmt, convention, layers) for f in files]


def import_vectors(store_path, path, trait: str, model: str, fmt: str | None = None, site: str = "resid",
                   pooling: str = "last", name: str | None = None, layers: str | None = None,
                   file_format: str = "auto", convention: str = "auto") -> dict:
    """Import every vector of ``path`` for ``trait`` on the stored group of ``model`` (a stored
    model key or its prefix: the model the vectors were made on, checked against the group's
    width), scored like any other vector; returns ``{"records": [...], "skipped": {file: layers},
    "n_new", "n_existing", "run_id"}``."""
    from traitlens.pipeline.extract.combine import held_out_record
    from traitlens.store.vocabulary import METHOD_NAMES
    from traitlens.pipeline.extract.export import check_card
    from traitlens.pipeline.extract.jobs import resolve_group, save_vectors
    from traitlens.pipeline.model.layers import parse_layers
    from traitlens.store.store import new_run_id

    if name is not None and (name in METHOD_NAMES or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", name)):
        raise InputError(f"--name {name!r}: give a method name of your own (letters, digits, - _ .), not one of "
                         f"{', '.join(METHOD_NAMES)}")
    store = Store.open(store_path)
    key = resolve_group(store, model, fmt, site, pooling)
    stored = store.layers(key)
    width = int(store.layer_array(key, stored[0]).shape[1])
    want = parse_layers(layers, max(stored) + 1) if layers else None
    read = sources(path, file_format, convention, want)
    picked, skipped = [], {}
    for src in read:
        if src.card is not None:
            try:
                check_card(src.card, key.model_key, src.path)
            except ValueError as e:
                raise ImportFileError(f"{e}; nothing was imported") from None
        by_layer = src.layers()
        chosen = want if want is not None else sorted(by_layer)
        absent = [l for l in chosen if l not in by_layer]
        if absent:
            raise _fail(src.path, f"holds no vector for layer(s) {absent} (read as {src.convention}: it holds "
                        f"{sorted(by_layer)})")
        unstored = [l for l in chosen if l not in stored]
        if want is not None and unstored:
            raise _fail(src.path, f"layer(s) {unstored} are not stored for {key.path} (stored: {stored})")
        if unstored:
            skipped[str(src.path)] = unstored
        for layer in (l for l in chosen if l in stored):
            where, v = by_layer[layer]
            if v.shape != (width,):
                raise _fail(src.path, f"{where} has width {v.shape[0] if v.ndim == 1 else v.shape}; {key.model_key} "
                            f"(--model {model}) has width {width}: these vectors are of another model")
            with np.errstate(over="ignore"):
                norm = float(np.linalg.norm(v))
            why = vector_problem(v) or (None if np.isfinite(norm) else "too large: its norm overflows")
            if why is not None:
                raise _fail(src.path, f"{where}: {why} (not finite, or zero: no direction)")
            picked.append((src, layer, where, v / norm, norm))
    if not picked:
        raise ImportFileError(f"{path}: none of its layers is stored for {key.path} (stored: {stored}); nothing was "
                              "imported")
    records = []
    for src, layer, where, unit, norm in picked:
        method = name or src.format.replace("traitlens-", "")
        params = {"source": {"format": src.format, "file": src.path.name, "sha256": src.sha256, "tensor": where,
                             "convention": src.convention}, "model": model}
        rec = {**held_out_record(store, key, layer, trait, unit), "method": method,
               "params": json.dumps(params, sort_keys=True), "raw_norm": norm, "cosines": json.dumps({}),
               "info": strict_json.dumps({"imported": True, **params,
                                          **({"card": {k: src.card.get(k) for k in CARD_FIELDS}} if src.card else {})},
                                         default=str)}
        records.append(rec)
    run_id = new_run_id("import")
    with store.lock("import"):
        n_new, n_existing = save_vectors(store, records, run_id)
    return {"records": records, "skipped": skipped, "n_new": n_new, "n_existing": n_existing, "run_id": run_id,
            "key": key}
