"""Hook points: named sites resolved per architecture, and generic dotted module paths.

Named sites (``layer`` indexes the transformer blocks, 0-based):
- ``resid``: the block's output (the residual stream after block ``layer``), which equals
  ``output_hidden_states[layer + 1]`` except for the last block, where Hugging Face applies
  the final norm to the last hidden state;
- ``attn_out``: the attention sub-module's output (before it is added to the residual);
- ``mlp_out``: the MLP sub-module's output.
Blocks are found as ``model.layers`` (Llama, Mistral, Qwen, Gemma), ``transformer.h`` (GPT-2,
GPT-J), ``gpt_neox.layers`` (GPT-NeoX, Pythia) and more; any other site is a dotted module path,
with ``{layer}`` standing for the block index (``model.layers.{layer}.mlp.act_fn``).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

import torch

from traitlens.store.layout import safe_name

from traitlens.pipeline.model.layers import SiteError, parse_layers  # noqa: F401  (re-exported: part of this module's API)

BLOCK_LIST_PATHS = ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers",
                    "transformer.blocks", "model.language_model.layers", "transformer.layers", "layers", "h")
ATTN_NAMES = ("self_attn", "attn", "attention", "self_attention")
MLP_NAMES = ("mlp", "feed_forward", "ffn")


@dataclass(frozen=True)
class HookPoint:
    """One module whose output is captured, stored as ``site`` / ``layer``."""

    site: str  # the name used in the store (safe)
    layer: int
    module_path: str


def get_module(model: torch.nn.Module, path: str) -> torch.nn.Module:
    mod = model
    for part in path.split("."):
        mod = getattr(mod, part) if not part.isdigit() else cast(torch.nn.ModuleList, mod)[int(part)]
    return mod


def find_blocks(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList]:
    """The transformer block list and its dotted path."""
    n = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layer", None)
    for path in BLOCK_LIST_PATHS:
        try:
            mod = get_module(model, path)
        except (AttributeError, IndexError):
            continue
        if isinstance(mod, torch.nn.ModuleList) and (n is None or len(mod) == n):
            return path, mod
    for path, mod in model.named_modules():  # unknown architecture: the ModuleList of the right length
        if isinstance(mod, torch.nn.ModuleList) and len(mod) == n:
            return path, mod
    raise SiteError(f"cannot find the transformer blocks of {type(model).__name__}; pass a dotted --site path")


def _nearest(model: torch.nn.Module, path: str, n: int = 5) -> str:
    names = [name for name, _ in model.named_modules() if name]
    near = difflib.get_close_matches(path, names, n=n, cutoff=0.4)
    return ", ".join(near) if near else ", ".join(names[:n])


def _child(block: torch.nn.Module, names: Iterable[str], what: str, block_path: str) -> str:
    for name in names:
        if hasattr(block, name) and isinstance(getattr(block, name), torch.nn.Module):
            return name
    children = [n for n, _ in block.named_children()]
    raise SiteError(f"cannot find the {what} module in {block_path} (children: {children}); pass a dotted --site path")


def resolve_sites(model: torch.nn.Module, sites: list[str], layers: list[int]) -> list[HookPoint]:
    """Resolve site names to modules before any forward pass; unknown paths list near matches."""
    block_path, blocks = find_blocks(model)
    points: list[HookPoint] = []
    for site in sites:
        if site == "resid":
            points += [HookPoint("resid", l, f"{block_path}.{l}") for l in layers]
        elif site in ("attn_out", "mlp_out"):
            names = ATTN_NAMES if site == "attn_out" else MLP_NAMES
            child = _child(blocks[0], names, "attention" if site == "attn_out" else "MLP", f"{block_path}.0")
            points += [HookPoint(site, l, f"{block_path}.{l}.{child}") for l in layers]
        else:
            templ = site
            if "{layer}" in templ:
                expanded = [(l, templ.replace("{layer}", str(l))) for l in layers]
            else:
                nums = re.findall(r"\.(\d+)(?:\.|$)", templ)
                expanded = [(int(nums[0]) if nums else 0, templ)]
            for l, path in expanded:
                try:
                    mod = get_module(model, path)
                except (AttributeError, IndexError, TypeError):
                    mod = None
                if not isinstance(mod, torch.nn.Module):
                    raise SiteError(f"--site {site!r}: module {path!r} does not exist; nearest: {_nearest(model, path)}")
            name = safe_name(templ.replace("{layer}", "N"), "site")
            points += [HookPoint(name, l, path) for l, path in expanded]
    for p in points:  # named sites too: catch architectures where the child is missing in a later block
        try:
            get_module(model, p.module_path)
        except (AttributeError, IndexError):
            raise SiteError(f"module {p.module_path!r} does not exist; nearest: {_nearest(model, p.module_path)}") from None
    return points
