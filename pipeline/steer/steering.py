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

from traitlens.pipeline.model.hooks import block_outputs, forward_hooks, hidden, pad_token_id, with_hidden
from traitlens.pipeline.model.loading import LoadedModel
from traitlens.pipeline.model.sites import find_blocks


def _unit(vector) -> torch.Tensor:
    v = torch.as_tensor(np.asarray(vector, dtype=np.float32))
    return v / v.norm()


def block_output(lm: LoadedModel, layer: int, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """Block ``layer``'s output ``[B, T, d]`` for a batch, from the base model (no LM head, and no
    block past ``layer`` runs)."""
    return block_outputs(lm, [layer], input_ids, attention_mask)[layer]


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
        x = hidden(output)
        return with_hidden(output, x + (alpha * scale) * v.to(x.dtype))

    with forward_hooks([(blocks[layer], hook)]):
        yield state


@contextmanager
def ablation(lm: LoadedModel, vector, layers: list[int] | None = None):
    """Within the block, the direction is projected out of the given blocks' outputs (all if None)."""
    _, blocks = find_blocks(lm.model)
    v = _unit(vector).to(lm.device)

    def hook(module, inputs, output):
        x = hidden(output)
        vv = v.to(x.dtype)
        return with_hidden(output, x - (x @ vv).unsqueeze(-1) * vv)

    with forward_hooks([(blocks[l], hook) for l in (layers if layers is not None else range(len(blocks)))]):
        yield


@torch.inference_mode()
def generate(lm: LoadedModel, input_ids: list[int], max_new_tokens: int = 40, sample: bool = False, seed: int = 0,
             temperature: float = 1.0) -> list[int]:
    """Greedy (or seeded sampled) continuation token ids of one prompt."""
    if sample:
        torch.manual_seed(seed)
    ids = torch.tensor([input_ids], device=lm.device)
    out = lm.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                            do_sample=sample, temperature=temperature if sample else None, top_p=None, top_k=None,
                            pad_token_id=pad_token_id(lm.tokenizer))
    return out[0, len(input_ids):].tolist()
