"""Padded tokens per batch: ``--max-tokens auto`` from free memory, and halving on out-of-memory.

:func:`auto_max_tokens` sizes the budget from what is free once the model is loaded
(``torch.cuda.mem_get_info`` on each GPU the model runs on, the smallest; available RAM on CPU)
and an estimate of what one token of a batch needs in flight: the block's working tensors
(residual, attention projections, the MLP's intermediate), float32 copies for mean pooling,
the rows of ``tokens`` pooling kept until the batch leaves the device, the KV cache with
``--generate``, and on CPU the attention score matrix (CUDA's fused attention does not
materialise it). It is an estimate; :class:`Backoff` catches what it gets wrong.

:class:`Backoff` captures batch after batch; when one raises an out-of-memory error it frees
the device's cached memory, splits that batch in two (by count, longest prompts first, so the
corpus order of rows is kept) and retries the halves, and lowers the budget for every later
batch to what the first half needed. A batch that failed never reached the writer, so no row is
lost or written twice. One prompt alone that does not fit is an error naming its length.
"""

from __future__ import annotations

import torch

from traitlens.store.errors import TraitlensError

from traitlens.pipeline.model.placement import devices

MIN_TOKENS, MAX_TOKENS = 256, 1 << 20
SHARE = {"cuda": 0.7, "cpu": 0.4}  # of the free memory a batch may take (other work shares a CPU's RAM)
_OOM_TEXT = ("out of memory", "can't allocate memory", "cublas_status_alloc_failed", "mps backend out of memory")


class DoesNotFit(TraitlensError):
    """One prompt alone is too big for the device (exit 1)."""


def is_out_of_memory(e: BaseException) -> bool:
    """A device (or host allocator) out-of-memory error, as torch raises them."""
    if isinstance(e, torch.OutOfMemoryError if hasattr(torch, "OutOfMemoryError") else torch.cuda.OutOfMemoryError):
        return True
    return isinstance(e, RuntimeError) and any(t in str(e).lower() for t in _OOM_TEXT)


def free_memory(model: torch.nn.Module) -> tuple[int, str]:
    """(bytes free for activations, where that was read): the smallest free memory of the GPUs
    the model runs on, or the host's available RAM."""
    gpus = [d for d in devices(model) if d.type == "cuda"]
    if gpus:
        free = {d: torch.cuda.mem_get_info(d)[0] for d in gpus}
        d = min(free, key=free.get)
        return free[d], f"{free[d] / 2**30:.1f} GiB free on {d}"
    import psutil

    avail = psutil.virtual_memory().available
    return avail, f"{avail / 2**30:.1f} GiB of available RAM"


def bytes_per_token(lm, n_points: int, poolings: list[str], generate: int, max_length: int) -> int:
    """What one token of a batch holds in flight during capture (an estimate; see the module)."""
    cfg = lm.model.config
    d = lm.d_model
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", None) or 1
    head_dim = getattr(cfg, "head_dim", None) or d // heads
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    d_ff = getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * d
    elem = torch.finfo(lm.model.dtype).bits // 8 if lm.model.dtype.is_floating_point else 2
    block = elem * (6 * d + (heads + 2 * kv) * head_dim + 4 * d_ff)  # residual, norms, q/k/v, attention out, MLP
    pooling_temps = 8 * d if any(p.endswith("mean") for p in poolings) else 0  # float32 copy + masked sum
    kept = 4 * d * n_points if "tokens" in poolings else 0  # float32 token rows until the copy to the host
    cache = elem * 2 * lm.n_layers * kv * head_dim if generate else 0
    scores = elem * 2 * heads * min(max_length, 4096) if lm.device.type != "cuda" else 0
    return int(block + pooling_temps + kept + cache + scores)


def auto_max_tokens(lm, n_points: int, poolings: list[str], generate: int, max_length: int) -> tuple[int, str]:
    """``--max-tokens auto``: (padded tokens per batch, a line saying where it came from)."""
    free, where = free_memory(lm.model)
    share = SHARE["cuda"] if lm.device.type == "cuda" else SHARE["cpu"]
    per = bytes_per_token(lm, n_points, poolings, generate, max_length)
    tokens = int(min(max(free * share // per, MIN_TOKENS), MAX_TOKENS)) // 64 * 64
    return tokens, (f"--max-tokens auto: {tokens:,} padded tokens per batch ({share:.0%} of {where}, "
                    f"~{per / 1024:.0f} KiB per token)")


def padded_tokens(batch) -> int:
    """What a batch of encoded prompts pads to: its longest prompt x its size."""
    return max(len(e.ids) for e in batch) * len(batch)


def free_cached(device: torch.device) -> None:
    """Hand the allocator's cached blocks back after an out-of-memory error (CUDA)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


class Backoff:
    """Capture batches within a token budget that halves on out-of-memory errors."""

    def __init__(self, max_tokens: int):
        self.max_tokens = max_tokens
        self.first: tuple[int, int, int] | None = None  # (prompts, longest, padded) of the first batch that failed
        self.n_failed = 0

    def fit(self, batch: list) -> list[list]:
        """``batch`` cut into consecutive pieces within the current budget (itself when it fits)."""
        if padded_tokens(batch) <= self.max_tokens or len(batch) == 1:
            return [batch]
        per = max(1, self.max_tokens // max(len(e.ids) for e in batch))
        return [batch[i:i + per] for i in range(0, len(batch), per)]

    def capture(self, capture, batch: list, device: torch.device):
        """Yield ``(piece, capture(piece))`` for consecutive pieces of ``batch``, halving a piece
        that runs out of memory and retrying it."""
        todo = self.fit(batch)
        while todo:
            piece = todo.pop(0)
            failed = None
            try:
                out = capture(piece)
            except Exception as e:  # noqa: BLE001 (only out-of-memory is handled; the rest is re-raised)
                if not is_out_of_memory(e):
                    raise
                failed = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            if failed is None:
                yield piece, out
                continue
            # out of the except block: the error's frames (and their tensors) are gone now
            free_cached(device)
            self.n_failed += 1
            if self.first is None:
                self.first = (len(piece), max(len(e.ids) for e in piece), padded_tokens(piece))
            if len(piece) == 1:
                raise DoesNotFit(f"prompt {piece[0].prompt_id} ({len(piece[0].ids)} tokens, {piece[0].source}) does not fit "
                                 f"in memory even alone ({failed}); lower --max-length, or give the model more room "
                                 "(--device-map auto over more GPUs, --load-in 4bit, a smaller --dtype)")
            half = (len(piece) + 1) // 2
            self.max_tokens = min(self.max_tokens, padded_tokens(piece[:half]))
            todo = [p for q in [piece[:half], piece[half:]] + todo for p in self.fit(q)]  # all within the new budget

    def summary(self) -> str | None:
        """The one log line about out-of-memory retries, or None when there were none."""
        if not self.n_failed:
            return None
        n, longest, padded = self.first
        return (f"out of memory {self.n_failed} time(s), first on a batch of {n} prompts x {longest} tokens "
                f"({padded:,} padded tokens): each such batch was halved and retried, no prompt lost or written "
                f"twice; settled on --max-tokens {self.max_tokens} (pass it next time to skip the retries)")
