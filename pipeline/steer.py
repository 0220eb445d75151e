"""Steer a model with a vector during forward passes and generation: add it, or ablate it.

- add: ``x <- x + alpha * scale * v`` on block ``layer``'s output (the residual stream), at
  every position or only at generated ones;
- ablate: ``x <- x - (x · v) v`` on the output of one block or of every block, removing the
  direction wherever it appears.
``alpha`` is in units of the layer's mean activation norm (``scale``, measured on the prompts
being steered unless given), so one alpha means the same push on any model. By default the
mean leaves out massive-activation outlier tokens (``norm="typical"``); ``norm="all"`` is the
plain mean over every token, which in SmolLM2 is about five times larger from layer 11 on
(its first token's norm is ~25,000 against ~150), so alpha 0.25 there is about 1.25 here.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

from .models import LoadedModel
from .sites import find_blocks


def _unit(vector) -> torch.Tensor:
    v = torch.as_tensor(np.asarray(vector, dtype=np.float32))
    return v / v.norm()


def _replace_output(output, new):
    if isinstance(output, tuple):
        return (new,) + tuple(output[1:])
    return new


@torch.inference_mode()
def block_output(lm: LoadedModel, layer: int, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """Block ``layer``'s output ``[B, T, d]`` for a batch, from the base model (no LM head)."""
    _, blocks = find_blocks(lm.model)
    seen = []
    h = blocks[layer].register_forward_hook(lambda m, i, o: seen.append(o[0] if isinstance(o, tuple) else o))
    kwargs = {"input_ids": input_ids.to(lm.device), "use_cache": False}
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask.long().to(lm.device)
    try:
        getattr(lm.model, lm.model.base_model_prefix, lm.model)(**kwargs)
    finally:
        h.remove()
    return seen[0]


MASSIVE = 10.0  # a token whose norm is this many times the median is a "massive activation"
NORMS = ("typical", "all")


@torch.inference_mode()
def mean_token_norm(lm: LoadedModel, layer: int, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    norm: str = "typical") -> float:
    """Mean L2 norm of block ``layer``'s output over the real tokens of a batch.

    ``norm="typical"`` leaves out massive activations (norm > 10x the median; in SmolLM2 the
    first token reaches ~25,000 against ~150 from layer 11 on, which alone would multiply the
    mean by five); ``norm="all"`` keeps every token."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}")
    x = block_output(lm, layer, input_ids, attention_mask).float()
    norms = x.norm(dim=-1)[attention_mask.bool().to(x.device)]
    if norm == "all":
        return float(norms.mean())
    return float(norms[norms <= MASSIVE * norms.median()].mean())


@contextmanager
def steering(lm: LoadedModel, vector, layer: int, alpha: float, scale: float = 1.0, positions: str = "all"):
    """Within the block, every forward pass adds ``alpha * scale * v`` at block ``layer``.

    ``positions='generated'`` leaves the prompt's forward pass alone and steers only the
    positions generated after it (with a KV cache each later pass is one new position).
    """
    if positions not in ("all", "generated"):
        raise ValueError("positions must be all or generated")
    _, blocks = find_blocks(lm.model)
    v = _unit(vector).to(lm.device)
    state = {"calls": 0}

    def hook(module, inputs, output):
        state["calls"] += 1
        if positions == "generated" and state["calls"] == 1:
            return None
        x = output[0] if isinstance(output, tuple) else output
        return _replace_output(output, x + (alpha * scale) * v.to(x.dtype))

    handle = blocks[layer].register_forward_hook(hook)
    try:
        yield state
    finally:
        handle.remove()


@contextmanager
def ablation(lm: LoadedModel, vector, layers: list[int] | None = None):
    """Within the block, the direction is projected out of the given blocks' outputs (all if None)."""
    _, blocks = find_blocks(lm.model)
    v = _unit(vector).to(lm.device)

    def hook(module, inputs, output):
        x = output[0] if isinstance(output, tuple) else output
        vv = v.to(x.dtype)
        return _replace_output(output, x - (x @ vv).unsqueeze(-1) * vv)

    handles = [blocks[l].register_forward_hook(hook) for l in (layers if layers is not None else range(len(blocks)))]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.inference_mode()
def generate(lm: LoadedModel, input_ids: list[int], max_new_tokens: int = 40, sample: bool = False, seed: int = 0,
             temperature: float = 1.0) -> list[int]:
    """Greedy (or seeded sampled) continuation token ids of one prompt."""
    if sample:
        torch.manual_seed(seed)
    ids = torch.tensor([input_ids], device=lm.device)
    tok = lm.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out = lm.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                            do_sample=sample, temperature=temperature if sample else None, top_p=None, top_k=None,
                            pad_token_id=pad)
    return out[0, len(input_ids):].tolist()
