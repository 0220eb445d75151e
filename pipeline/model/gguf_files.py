"""GGUF files as ``--model``: which ones transformers can dequantise, and how to ask it to.

transformers reads a GGUF file's config, tokenizer and weights and dequantises the weights into
an ordinary float model (what traitlens hooks and fingerprints like any other). Whether it can
depends on the file's ``general.architecture``; :func:`check_gguf` reads that one field (the file
is memory-mapped, no tensor is read) and refuses an architecture transformers has no mapping for,
before the load, naming the ones it has. Recent transformers can also keep some architectures'
weights packed in GGUF blocks; :func:`gguf_load_kwargs` asks for the dequantised model always, so
every GGUF loads the same way (and no kernel is fetched from a hub).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from traitlens.store.errors import InputError


class GgufError(InputError):
    """A GGUF file transformers cannot turn into a model (exit 2)."""


def gguf_architecture(path: Path) -> str:
    """The file's ``general.architecture`` (``llama``, ``qwen2``, ...)."""
    from gguf import GGUFReader

    try:
        field = GGUFReader(str(path)).fields.get("general.architecture")
    except Exception as e:  # not a GGUF file, or a damaged one
        raise GgufError(f"--model {path}: not a readable GGUF file ({type(e).__name__}: {e})") from None
    if field is None:
        raise GgufError(f"--model {path}: the GGUF file has no general.architecture field")
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def dequantisable_architectures() -> set[str]:
    """Every ``general.architecture`` the installed transformers can load from GGUF: its legacy
    mapping, and the newer per-architecture conversions (transformers >= 5)."""
    names: set[str] = set()
    try:
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

        names |= set(GGUF_SUPPORTED_ARCHITECTURES)
    except ImportError:
        pass
    try:
        from transformers.integrations.gguf.gguf_conversion_mapping import GGUF_ARCHS

        names |= set(GGUF_ARCHS)
    except ImportError:
        pass
    return names - {"general", "tokenizer"}  # sections of the mapping, not architectures


def _spellings(arch: str) -> set[str]:
    """The names transformers looks an architecture up under (llama.cpp writes ``qwen2moe``,
    ``gpt-oss``, ``t5encoder``; transformers maps them to ``qwen2_moe``, ``gpt_oss``, ``t5``)."""
    a = arch.replace("-", "_")
    out = {arch, a, a.replace("moe", "_moe")}
    if "t5" in arch:
        out.add("t5")
    return out


def check_gguf(path: Path) -> str:
    """The file's architecture, or a :class:`GgufError` when transformers cannot dequantise it."""
    import transformers

    arch = gguf_architecture(path)
    known = dequantisable_architectures()
    if not _spellings(arch) & known:
        raise GgufError(
            f"--model {path}: its architecture {arch!r} is not one transformers {transformers.__version__} can "
            f"dequantise from GGUF (it can: {', '.join(sorted(known))}); pass the original checkpoint instead "
            "(a Hugging Face folder or id), or a newer transformers")
    return arch


def gguf_load_kwargs(path: Path) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments for the GGUF file ``path`` (the folder is the first
    argument): the file's name, and, where transformers could keep the blocks packed, a request
    for the dequantised model."""
    kwargs: dict[str, Any] = {"gguf_file": Path(path).name}
    try:
        from transformers.utils.quantization_config import GgufConfig
    except ImportError:  # older transformers: GGUF always dequantises
        return kwargs
    kwargs["quantization_config"] = GgufConfig(dequantize=True)
    return kwargs
