"""Steer a model with a vector during forward passes and generation: add it, or ablate it.

- add: ``x <- x + alpha * scale * v`` on block ``layer``'s output (the residual stream) or on
  its attention or MLP sub-module's output, at every position or at those a selector picks
  (generated, prompt, last-prompt, ``A:B``); several :class:`Push` es at once add up;
- ablate: ``x <- x - (x · v) v`` on the output of one block (or sub-module) or of every
  block, removing the direction wherever it appears.
``alpha`` is in units of the layer's mean activation norm (``scale``, measured on the prompts
being steered unless given), so one alpha means the same push on any model. By default the
mean leaves out massive-activation outlier tokens (``norm="typical"``); ``norm="all"`` is the
plain mean over every token, which in SmolLM2 is about five times larger from layer 11 on
(its first token's norm is ~25,000 against ~150), so alpha 0.25 there is about 1.25 here.
"""

from __future__ import annotations

import math
import re
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from traitlens.store.errors import InputError
from traitlens.store.finite import FLOAT32_MAX

from traitlens.pipeline.model.hooks import block_outputs, forward_hooks, hidden, pad_token_id, with_hidden
from traitlens.pipeline.model.loading import LoadedModel
from traitlens.pipeline.model.sites import find_blocks
from traitlens.store.vocabulary import NAMED_SITES, NORMS, POSITIONS, PROMPT_POOLINGS


def _unit(vector) -> torch.Tensor:
    v = torch.as_tensor(np.asarray(vector, dtype=np.float32))
    return v / v.norm()


def block_output(lm: LoadedModel, layer: int, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """Block ``layer``'s output ``[B, T, d]`` for a batch, from the base model (no LM head, and no
    block past ``layer`` runs)."""
    return block_outputs(lm, [layer], input_ids, attention_mask)[layer]


MASSIVE = 10.0  # a token whose norm is this many times the median is a "massive activation"


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


def check_positions(spec: str) -> str:
    """``spec`` if it is a position selector: one of :data:`POSITIONS` or ``A:B`` (either end may
    be left out: ``:5``, ``3:``); else ValueError saying what is accepted."""
    if spec in POSITIONS or re.fullmatch(r"\d*:\d*", spec or ""):
        return spec
    raise ValueError(f"positions {spec!r}: use {', '.join(POSITIONS)} or A:B (token positions A to B-1)")


def position_mask(spec: str, start: int, width: int, prompt_len: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    """Which of the ``width`` columns of a forward pass a push touches: bool ``[B, width]``.

    Column ``j`` of row ``i`` is the token at position ``start + j - pad[i]`` of that row's own
    sequence (``pad``: left padding per row; ``start``: columns the earlier passes of this
    generation covered, so with a KV cache each later pass is one new position). ``prompt_len``
    ``[B]``: each row's prompt length (its real tokens in the first pass). Left padding is never
    touched."""
    pos = start + torch.arange(width).unsqueeze(0) - pad.unsqueeze(1)  # [B, width]
    real = pos >= 0
    plen = prompt_len.unsqueeze(1)
    if spec == "all":
        sel = real
    elif spec == "generated":
        sel = pos >= plen
    elif spec == "prompt":
        sel = real & (pos < plen)
    elif spec == "last-prompt":
        sel = pos == plen - 1
    else:
        a, b = check_positions(spec).split(":")
        sel = real & (pos >= int(a or 0))
        if b:
            sel &= pos < int(b)
    return sel


@dataclass(frozen=True)
class Push:
    """One push: ``alpha * scale * v / |v|`` added to the output of ``site`` at block ``layer``
    (``resid``: the block; ``attn_out`` / ``mlp_out``: its attention or MLP sub-module), at the
    selected ``positions`` (:func:`position_mask`). ``label`` names it in what is printed."""

    vector: object  # [d]
    layer: int
    alpha: float
    scale: float = 1.0
    site: str = "resid"
    positions: str = "all"
    label: str = ""
    rows: tuple | None = None  # which rows of the batch it applies to (conditional steering); None: all

    def __post_init__(self):  # the push itself must be a number float32 can hold (NaN would pass silently)
        size = float(self.alpha) * float(self.scale)
        if not math.isfinite(size) or abs(size) > FLOAT32_MAX:
            raise InputError(f"alpha {self.alpha:g} x the layer's norm {self.scale:g} is not a finite float32 "
                             f"number{f' ({self.label})' if self.label else ''}: use a smaller strength")

    def describe(self) -> str:
        return (f"{self.label + ': ' if self.label else ''}alpha {self.alpha:+g} x {self.scale:.1f} at {self.site} "
                f"L{self.layer} ({self.positions} positions)")

    def only(self, rows) -> "Push":
        """This push, applied to the batch rows where ``rows`` is true."""
        from dataclasses import replace

        return replace(self, rows=tuple(bool(r) for r in rows))


def site_module(lm: LoadedModel, site: str, layer: int) -> torch.nn.Module:
    """The module whose output ``site`` names at block ``layer`` (resid, attn_out, mlp_out)."""
    from traitlens.pipeline.model.sites import get_module, resolve_sites

    if site not in NAMED_SITES:
        raise ValueError(f"site {site!r}: steer at {', '.join(NAMED_SITES[:-1])} or {NAMED_SITES[-1]}")
    (point,) = resolve_sites(lm.model, [site], [layer])
    return get_module(lm.model, point.module_path)


@contextmanager
def pushes(lm: LoadedModel, items: list[Push], pad: torch.Tensor | None = None,
           prompt_len: torch.Tensor | None = None):
    """Within the block, every forward pass adds each push (pushes add up, including several on
    one module). ``pad``: left padding per row of the batch being run (zeros if None), so the
    position selectors count each row's own tokens. ``prompt_len`` ``[B]``: each row's prompt
    length when one pass reads prompt and reply together (default: the first pass is the
    prompt, as in generation with a KV cache). Yields the per-push state (``calls``)."""
    states = []
    pairs = []
    for item in items:
        check_positions(item.positions)
        v = _unit(item.vector).to(lm.device)
        state = {"calls": 0, "start": 0, "prompt_len": None}
        states.append(state)

        def hook(module, inputs, output, item=item, v=v, state=state):
            x = hidden(output)
            B, T = x.shape[0], x.shape[1]
            p = torch.zeros(B, dtype=torch.long) if pad is None else pad.to("cpu").long()
            if state["prompt_len"] is None:  # the first pass is the prompt's, unless told
                state["prompt_len"] = T - p if prompt_len is None else prompt_len.to("cpu").long()
            state["calls"] += 1
            push = (item.alpha * item.scale) * v.to(x.dtype)
            if item.positions == "all" and pad is None and item.rows is None:  # (with padding, "all" leaves it alone)
                out = x + push
            else:
                m = position_mask(item.positions, state["start"], T, state["prompt_len"], p)
                if item.rows is not None:
                    m &= torch.tensor(item.rows, dtype=torch.bool).unsqueeze(1)
                out = x + m.to(x.device).unsqueeze(-1).to(x.dtype) * push
            state["start"] += T
            return with_hidden(output, out)

        pairs.append((site_module(lm, item.site, item.layer), hook))
    with forward_hooks(pairs):
        yield states


@contextmanager
def steering(lm: LoadedModel, vector, layer: int, alpha: float, scale: float = 1.0, positions: str = "all",
             site: str = "resid"):
    """Within the block, every forward pass adds ``alpha * scale * v`` at block ``layer`` (one
    :class:`Push`; ``positions='generated'`` leaves the prompt's pass alone and steers only the
    positions generated after it)."""
    with pushes(lm, [Push(vector, layer, alpha, scale, site, positions)]) as states:
        yield states[0]


def _projecting_out(v: torch.Tensor):
    """A forward hook that projects the unit ``v`` out of a module's output: ``x - (x . v) v``."""
    def hook(module, inputs, output):
        x = hidden(output)
        vv = v.to(x.dtype)
        return with_hidden(output, x - (x @ vv).unsqueeze(-1) * vv)

    return hook


@contextmanager
def ablation(lm: LoadedModel, vector, layers: list[int] | None = None, site: str = "resid"):
    """Within the block, the direction is projected out of the outputs of ``site`` (resid: the
    block; attn_out / mlp_out: its sub-module) at the given blocks (all if None)."""
    _, blocks = find_blocks(lm.model)
    hook = _projecting_out(_unit(vector).to(lm.device))
    chosen = layers if layers is not None else range(len(blocks))
    with forward_hooks([(site_module(lm, site, l), hook) for l in chosen]):
        yield


def orthonormal(vectors) -> np.ndarray:
    """An orthonormal basis ``[d, k]`` of the span of ``vectors`` (Gram-Schmidt in their order;
    a vector already in the span of those before it adds nothing)."""
    basis: list[np.ndarray] = []
    for v in vectors:
        u = np.asarray(v, dtype=np.float64)
        u = u / np.linalg.norm(u)
        for b in basis:
            u = u - (u @ b) * b
        if np.linalg.norm(u) > 1e-6:
            basis.append(u / np.linalg.norm(u))
    return np.stack(basis, axis=1)


@contextmanager
def directional_ablation(lm: LoadedModel, vectors, blocks: list[int] | None = None, embeddings: bool = True,
                         unembedding: bool = False):
    """Directional ablation as Arditi et al. define it, as hooks: the span of ``vectors`` is
    projected out of every write into the residual stream, so no residual state holds a
    component in it: the embeddings' outputs (``embeddings``) and the attention and MLP outputs
    of the chosen blocks (all if None; :func:`ablation` at ``attn_out`` and ``mlp_out``, one
    orthonormal direction at a time, which together project out the span). ``unembedding``:
    also out of the final norm's output, the LM head's input. This is what orthogonalising
    those modules' weights computes (:mod:`.weights`), tied unembedding included."""
    from contextlib import ExitStack

    from traitlens.pipeline.model.writers import architecture, root_module

    arch = architecture(lm.model)
    basis = orthonormal(vectors).T  # [k, d]
    stack_paths = (arch.embeddings if embeddings else ()) + ((arch.final_norm,) if unembedding else ())
    with ExitStack() as stack:
        for u in basis:
            for site in ("attn_out", "mlp_out"):
                stack.enter_context(ablation(lm, u, blocks, site))
            hook = _projecting_out(torch.as_tensor(u, dtype=torch.float32).to(lm.device))
            stack.enter_context(forward_hooks([(root_module(lm.model, p), hook) for p in stack_paths]))
        yield


def ablated(lm: LoadedModel, directions: list, blocks: list[int] | None = None, embeddings: bool = True):
    """The hooks an ablation export is checked against (a context manager): the span of
    ``directions`` projected out of every residual writer of ``blocks`` (all if None) and of the
    embeddings (``embeddings``), and out of the LM head's input when the embeddings are tied to it
    (orthogonalising the shared matrix edits the head too; see :mod:`.weights`): what
    ``export --operation ablate`` writes, and what ``evaluate --ablate`` measures."""
    from traitlens.pipeline.model.writers import ties_embeddings

    return directional_ablation(lm, directions, blocks, embeddings, ties_embeddings(lm.model) and embeddings)


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


@torch.inference_mode()
def generate_batch(lm: LoadedModel, seqs: list[list[int]], items: list[Push], max_new_tokens: int = 40
                   ) -> list[list[int]]:
    """Greedy continuations of several prompts as one left-padded batch under ``items`` (the
    position selectors count each row's own tokens): new token ids per prompt, up to and
    including its first EOS."""
    from traitlens.pipeline.model.generation import greedy_batch

    width = max(len(s) for s in seqs)
    pad = torch.tensor([width - len(s) for s in seqs])
    with pushes(lm, items, pad):
        return greedy_batch(lm, seqs, max_new_tokens)


@torch.inference_mode()
def condition_scores(lm: LoadedModel, vector, layer: int, pooling: str, seqs: list[list[int]]) -> np.ndarray:
    """Each prompt's projection on ``vector`` at block ``layer``, its state pooled as the vector's
    rows were (``last``: the last token; ``mean``: the mean over its tokens): ``[n]``, unsteered."""
    from traitlens.pipeline.model.hooks import pad_batch

    if pooling not in PROMPT_POOLINGS:
        raise ValueError(f"a condition vector of {pooling} pooling cannot be read from a prompt alone; use one of "
                         f"{' or '.join(PROMPT_POOLINGS)} pooling")
    ids, mask = pad_batch(seqs, pad_token_id(lm.tokenizer), "right", lm.device)
    h = block_output(lm, layer, ids, mask).float()  # [B, T, d]
    m = mask.float().unsqueeze(-1)
    pooled = ((h * m).sum(1) / m.sum(1) if pooling == "mean"
              else h[torch.arange(len(seqs)), mask.long().sum(1) - 1])
    v = torch.as_tensor(np.asarray(vector, dtype=np.float32)).to(pooled.device)
    return (pooled @ v).cpu().double().numpy()
