"""The one hook layer: how every stage runs a forward pass and reads or changes a module's output.

Capture, steering, ablation, monitoring and the causal evaluation all go through here (as
TransformerLens's hook points and nnsight's hooks sit apart from model wiring):

- :func:`hidden` / :func:`with_hidden`: a module's hidden state out of its output (blocks return
  a tuple whose first item is the hidden state ``[B, T, d]``) and back in;
- :func:`forward_hooks`: register hooks for a block of code, removed however it ends;
- :func:`block_outputs`: the outputs of some blocks for a batch, from the base model (no LM
  head), the forward stopped once the deepest of them ran (:class:`StopForward`);
- :func:`pad_token_id`, :func:`pad_batch`, :func:`position_ids_from_mask`: one padding policy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from traitlens.pipeline.model.sites import find_blocks

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from traitlens.pipeline.model.loading import LoadedModel

ModuleOutput = torch.Tensor | tuple[Any, ...] | list[Any]  # what a module returns: its hidden state first
Hook = Callable[[torch.nn.Module, Any, Any], Any]  # a forward hook: (module, inputs, output) -> new output or None


class StopForward(Exception):
    """Raised by a hook once everything wanted has been seen: the rest of the forward is skipped."""


def hidden(output: ModuleOutput) -> torch.Tensor:
    """The hidden state ``[B, T, d]`` in a module's output (the first item of a tuple or list)."""
    state: torch.Tensor = output[0] if isinstance(output, (tuple, list)) else output
    return state


def with_hidden(output: ModuleOutput, new: torch.Tensor) -> ModuleOutput:
    """``output`` with its hidden state replaced by ``new`` (what a forward hook returns)."""
    if isinstance(output, tuple):
        return (new,) + tuple(output[1:])
    if isinstance(output, list):
        return [new] + list(output[1:])
    return new


@contextmanager
def forward_hooks(pairs: Iterable[tuple[torch.nn.Module, Hook]]) -> Iterator[list[torch.utils.hooks.RemovableHandle]]:
    """Register ``(module, hook)`` forward hooks for the block; all are removed on the way out."""
    handles: list[torch.utils.hooks.RemovableHandle] = []
    try:
        for module, hook in pairs:
            handles.append(module.register_forward_hook(hook))
        yield handles
    finally:
        for h in handles:
            h.remove()


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id padding uses: the tokenizer's pad token, else its EOS, else 0 (padded positions are
    masked out everywhere, so the id only has to exist in the vocabulary)."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if isinstance(tid, int):
            return tid
    return 0


def pad_batch(seqs: list[list[int]], pad_id: int, side: str,
              device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` and bool ``attention_mask``, both ``[B, T]``, padded on ``side``."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.bool)
    for i, s in enumerate(seqs):
        if side == "right":
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = True
        else:
            ids[i, T - len(s):] = torch.tensor(s)
            mask[i, T - len(s):] = True
    return ids.to(device), mask.to(device)


def position_ids_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so a left-padded prompt sees the positions it
    would see alone (matters for absolute position embeddings such as GPT-2's)."""
    return (mask.long().cumsum(dim=1) - 1).clamp(min=0)


def left_padded(lm: LoadedModel, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``input_ids``, long ``attention_mask`` and ``position_ids`` ``[B, T]`` of a left-padded
    batch: every prompt ends at the last position, so one next-token read serves the batch."""
    ids, mask = pad_batch(seqs, pad_token_id(lm.tokenizer), "left", lm.device)
    return ids, mask.long(), position_ids_from_mask(mask)


def base_model(lm: LoadedModel) -> torch.nn.Module:
    """The model without its LM head (what capture and block reads call)."""
    base: torch.nn.Module = getattr(lm.model, lm.model.base_model_prefix, lm.model)
    return base


@torch.inference_mode()
def block_outputs(lm: LoadedModel, layers: list[int], input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
                  ) -> dict[int, torch.Tensor]:
    """``{layer: block output [B, T, d]}`` for a batch, from the base model; blocks past the
    deepest one asked for never run."""
    _, blocks = find_blocks(lm.model)
    wanted = sorted(set(layers))
    seen: dict[int, torch.Tensor] = {}

    def hook_for(layer: int) -> Hook:
        def hook(module: torch.nn.Module, inputs: Any, output: ModuleOutput) -> None:
            seen[layer] = hidden(output)
            if len(seen) == len(wanted):
                raise StopForward()
        return hook

    kwargs: dict[str, Any] = {"input_ids": input_ids.to(lm.device), "use_cache": False}
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask.long().to(lm.device)
    with forward_hooks([(blocks[l], hook_for(l)) for l in wanted]):
        try:
            base_model(lm)(**kwargs)
        except StopForward:
            pass
    return seen
