"""Which weights write into the residual stream, per architecture: what a weight edit touches.

A pre-norm decoder's residual stream is written by its embeddings (token, and position where
the model has them) and, in every block, by two output projections whose results are added to
the stream as they are: the attention's (``o_proj``, GPT-2's ``attn.c_proj``) and the MLP's
(``down_proj``, ``mlp.c_proj``). Editing those weights changes the stream exactly as a hook on
the same modules' outputs would:

- a constant push on block L's output is a bias on block L's *last* writer, the MLP's output
  projection (the attention's would not do: the block's MLP reads the attention's output, so a
  bias there is also seen by the MLP). Where that projection has no bias, the config's flag
  adds one (Llama's ``mlp_bias``), and the same flag adds biases to sibling projections too
  (``flag_siblings``: they are written as zeros). Qwen2, Qwen3 and Mistral have no flag that
  gives their MLP a bias (Qwen3's ``attention_bias`` reaches only the attention), so a push
  cannot be written into their weights;
- directional ablation (Arditi et al.) orthogonalises every one of those matrices and biases.

Architectures whose sub-modules' outputs are normalised again before they reach the stream
(Gemma 2/3 and OLMo 2's post-norms) are not listed: an edit of the projection would not fix the
direction of what is added. :func:`architecture` refuses them, and any other unlisted one, by
name (:class:`ArchitectureError`, exit 2), pointing to the exports that need no weight edit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, TypedDict

import torch

from traitlens.store.errors import InputError

if TYPE_CHECKING:
    from transformers import PreTrainedModel


class ArchitectureError(InputError):
    """The model's architecture cannot carry this edit in its weights (exit 2)."""


@dataclass(frozen=True)
class Architecture:
    """Where one architecture's residual writers are. Paths are dotted module paths:
    ``embeddings`` and ``final_norm`` from the model's root, the rest within a block."""

    model_type: str
    embeddings: tuple[str, ...]  # modules whose outputs start the stream (added together)
    attn_out: str  # the attention's output projection
    mlp_out: str  # the MLP's output projection
    final_norm: str  # the norm the LM head reads
    push: str | None  # the MLP output projection whose bias carries a constant push; None: it cannot have one
    bias_flag: str | None = None  # the config flag giving ``push`` a bias (None: it always has one)
    flag_siblings: tuple[str, ...] = ()  # the other projections the flag gives a bias (kept zero)
    conv1d: bool = False  # weights stored [in, out] (GPT-2's Conv1D) instead of nn.Linear's [out, in]


class _Paths(TypedDict):
    embeddings: tuple[str, ...]
    attn_out: str
    mlp_out: str
    final_norm: str


_LLAMA_LIKE: _Paths = {"embeddings": ("model.embed_tokens",), "attn_out": "self_attn.o_proj",
                       "mlp_out": "mlp.down_proj", "final_norm": "model.norm"}
ARCHITECTURES = {
    "llama": Architecture("llama", **_LLAMA_LIKE, push="mlp.down_proj", bias_flag="mlp_bias",
                          flag_siblings=("mlp.gate_proj", "mlp.up_proj")),
    # no config flag gives Qwen3's, Qwen2's or Mistral's MLP a bias
    "qwen3": Architecture("qwen3", **_LLAMA_LIKE, push=None),
    "qwen2": Architecture("qwen2", **_LLAMA_LIKE, push=None),
    "mistral": Architecture("mistral", **_LLAMA_LIKE, push=None),
    "gpt2": Architecture("gpt2", embeddings=("transformer.wte", "transformer.wpe"), attn_out="attn.c_proj",
                         mlp_out="mlp.c_proj", final_norm="transformer.ln_f", push="mlp.c_proj", conv1d=True),
}
OTHER_EXPORTS = ("`--format gguf` (llama.cpp control vector) or `--format safetensors` (steering-vectors, repeng), "
                 "which steer at run time without editing weights")


def architecture(model: torch.nn.Module, additive: bool = False) -> Architecture:
    """The model's :class:`Architecture`, checked against its modules; ``additive``: it must be
    able to carry a constant push as a bias. :class:`ArchitectureError` names the model type."""
    from traitlens.pipeline.model.sites import find_blocks, get_module

    kind = getattr(model.config, "model_type", type(model).__name__)
    arch = ARCHITECTURES.get(kind)
    if arch is None:
        raise ArchitectureError(
            f"the {kind} architecture ({type(model).__name__}) is not one traitlens can edit as weights (it edits "
            f"{', '.join(sorted(ARCHITECTURES))}); export the vector as {OTHER_EXPORTS}")
    if additive and arch.push is None:
        raise ArchitectureError(
            f"the {kind} architecture's MLP output projection cannot take a bias (no config flag adds one), so a "
            f"constant push on a block's output cannot be written into its weights; use --operation ablate, or export "
            f"the vector as "
            f"{OTHER_EXPORTS}")
    block_path, blocks = find_blocks(model)
    try:
        for path in arch.embeddings + (arch.final_norm,):
            get_module(model, path)
        for path in (arch.attn_out, arch.mlp_out) + ((arch.push,) + arch.flag_siblings
                                                     if additive and arch.push is not None else ()):
            get_module(blocks[0], path)
    except (AttributeError, IndexError) as e:
        raise ArchitectureError(f"{type(model).__name__} (model type {kind}) lacks a module traitlens expects "
                                f"there ({e}); export the vector as {OTHER_EXPORTS}") from None
    return arch


def block_module(model: torch.nn.Module, layer: int, path: str) -> torch.nn.Module:
    """The module at ``path`` within block ``layer``."""
    from traitlens.pipeline.model.sites import find_blocks, get_module

    return get_module(find_blocks(model)[1][layer], path)


def root_module(model: torch.nn.Module, path: str) -> torch.nn.Module:
    """The module at ``path`` from the model's root (embeddings, the final norm)."""
    from traitlens.pipeline.model.sites import get_module

    return get_module(model, path)


def ties_embeddings(model: PreTrainedModel) -> bool:
    """True when the LM head reads the input embedding matrix itself (tied weights)."""
    out, inp = model.get_output_embeddings(), model.get_input_embeddings()  # type: ignore[no-untyped-call]
    return out is not None and inp is not None and out.weight is inp.weight
