"""Forward passes with hooks: pool the hooked outputs on the device, send one copy per batch to the host.

Speed comes from four things: the base model is called (never the LM head), the forward
stops as soon as every hooked module has produced its output (no block past the deepest
one asked for runs), batches are padded only to their own longest prompt, and each hook pools
its block's output where it runs (the ``[B, T, d]`` output is not kept past the next block: only
``[B, d]`` rows are), after which the batch's rows leave the device in one copy
(:mod:`.transfer`) that the writer thread waits for, not the model.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager

import numpy as np
import torch

from traitlens.store import PendingBatch
from traitlens.store.vocabulary import POOLINGS, PROMPT_POOLINGS

from traitlens.pipeline.model.encode import Encoded
from traitlens.pipeline.model.generation import eos_token_ids, greedy_batch
from traitlens.pipeline.model.hooks import StopForward, base_model, hidden, pad_batch, pad_token_id, position_ids_from_mask  # noqa: F401
from traitlens.pipeline.model.loading import LoadedModel
from traitlens.pipeline.capture.pooling import pool_last, pool_mean, pool_tokens
from traitlens.pipeline.capture.transfer import HostBuffers, InFlight, Layout, to_host
from traitlens.pipeline.model.sites import HookPoint, get_module


class Capturer:
    """Runs batches through a model and pools the hooked outputs.

    ``capture(encoded)`` returns a :class:`PendingBatch` whose ``pooled[(site, pooling)][layer]``
    is float32 ``[B, d]`` (``[n_tokens, d]`` for ``tokens``); ``capture_async(encoded)`` returns
    it :class:`~.transfer.InFlight` (its rows still being copied off the device).
    """

    def __init__(self, lm: LoadedModel, points: list[HookPoint], poolings: list[str], padding_side: str = "right",
                 generate: int = 0):
        bad = [p for p in poolings if p not in POOLINGS]
        if bad:
            raise ValueError(f"unknown pooling {bad}; use {', '.join(POOLINGS)}")
        if "response_mean" in poolings and generate < 1:
            raise ValueError("pooling response_mean needs --generate N (N >= 1 tokens to generate)")
        if padding_side not in ("left", "right"):
            raise ValueError("padding_side must be left or right")
        self.lm, self.points, self.poolings = lm, points, list(poolings)
        self.padding_side, self.generate = padding_side, generate
        self.pad_id = pad_token_id(lm.tokenizer)
        self.eos_ids = eos_token_ids(lm)
        model = lm.model
        self.base = base_model(lm)
        params = inspect.signature(self.base.forward).parameters
        self.takes_positions = "position_ids" in params
        # hooks are relative to the full model's module names; find them on it
        self.modules = {p: get_module(model, p.module_path) for p in points}
        self._at: dict[str, list[HookPoint]] = {}  # module path -> the points read from its output
        for p in points:
            self._at.setdefault(p.module_path, []).append(p)
        self._pooled: dict[tuple[HookPoint, str], torch.Tensor] = {}
        self._masks: dict[str, torch.Tensor] = {}  # pooling -> bool [B, T], on the input device
        self._masks_at: dict[torch.device, dict[str, torch.Tensor]] = {}  # the same, per device a block runs on
        self._seen: set[str] = set()
        self._active = False
        self._handles = []
        self.buffers = HostBuffers(pinned=lm.device.type == "cuda")
        for path in sorted(self._at):
            self._handles.append(get_module(model, path).register_forward_hook(self._make_hook(path, len(self._at))))

    def _make_hook(self, path: str, n_paths: int):
        def hook(module, inputs, output):
            if not self._active:
                return None
            h = hidden(output)
            masks = self._masks_on(h.device)
            for p in self._at[path]:
                for pooling in self.poolings:
                    self._pooled[(p, pooling)] = _pool(pooling, h, masks[pooling])
            self._seen.add(path)
            if len(self._seen) == n_paths:
                raise StopForward()
            return None

        return hook

    def _masks_on(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The pooling masks on ``device`` (a block placed by a device map runs elsewhere)."""
        if device not in self._masks_at:
            self._masks_at[device] = {k: m.to(device) for k, m in self._masks.items()}
        return self._masks_at[device]

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @contextmanager
    def _capturing(self, masks: dict[str, torch.Tensor]):
        self._pooled, self._seen, self._masks = {}, set(), masks
        self._masks_at = {}
        self._active = True
        try:
            yield
        finally:
            self._active = False
            self._masks, self._masks_at = {}, {}

    def _generate(self, seqs: list[list[int]]) -> tuple[list[list[int]], list[str]]:
        """Greedy continuation of each prompt; responses stop after their first EOS."""
        responses = greedy_batch(self.lm, seqs, self.generate, self.eos_ids)
        return responses, [self.lm.tokenizer.decode(r, skip_special_tokens=True) for r in responses]

    @torch.inference_mode()
    def forward_pooled(self, ids: torch.Tensor, mask: torch.Tensor,
                       masks: dict[str, torch.Tensor]) -> dict[tuple[HookPoint, str], torch.Tensor]:
        """Pooled rows ``{(point, pooling): [B, d] float32}`` (``[n_tokens, d]`` for ``tokens``) of a
        padded batch, each on the device its block ran on. ``masks``: pooling -> bool ``[B, T]``."""
        kwargs = {"input_ids": ids, "attention_mask": mask.long(), "use_cache": False}
        if self.takes_positions:
            kwargs["position_ids"] = position_ids_from_mask(mask)
        with self._capturing(masks):
            try:
                self.base(**kwargs)
            except StopForward:
                pass
            finally:  # an error (out of memory) must not leave pooled device tensors behind
                pooled, seen, self._pooled = self._pooled, self._seen, {}
        missing = set(self._at) - seen
        if missing:
            raise RuntimeError(f"modules {sorted(missing)} never ran in the forward pass; pick other --site paths")
        return pooled

    @staticmethod
    def _assistant_mask(batch: list[Encoded], order: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``[B, T]`` bool: the positions of each prompt's given assistant turns (``Encoded.assistant``
        spans count real tokens, so they are placed through ``order``, wherever the padding is)."""
        by_order = torch.zeros(mask.shape, dtype=torch.bool, device=mask.device)
        for b, e in enumerate(batch):
            if not e.assistant:
                raise ValueError(f"{e.source}: assistant_mean pooling needs the prompt encoded with its assistant "
                                 "spans (encode(..., assistant=True))")
            for start, end in e.assistant:
                by_order[b, start:end] = True
        return mask & by_order.gather(1, order.clamp(min=0))

    def capture(self, batch: list[Encoded]) -> PendingBatch:
        """Capture one batch of encoded prompts (and wait for its rows)."""
        return self.capture_async(batch).result()

    def capture_async(self, batch: list[Encoded]) -> InFlight:
        """Capture one batch of encoded prompts; its pooled rows are copied to the host in one
        transfer that :meth:`InFlight.result` waits for (on CUDA this returns before it lands)."""
        seqs = [e.ids for e in batch]
        responses_text: list[str | None] = [None] * len(batch)
        n_prompt = [len(s) for s in seqs]
        if self.generate:
            resp_ids, responses_text = self._generate(seqs)
            seqs = [s + r for s, r in zip(seqs, resp_ids)]
        ids, mask = pad_batch(seqs, self.pad_id, self.padding_side, self.lm.device)
        pooled = self.forward_pooled(ids, mask, self._pooling_masks(batch, mask, n_prompt))
        layout, parts = Layout(), []
        for p in self.points:
            for pooling in self.poolings:
                v = pooled[(p, pooling)]
                layout.entries.append(((p.site, pooling), p.layer, tuple(v.shape)))
                parts.append(v)
        buf, event = to_host(parts, self.buffers)
        # real tokens in row order are the sequences themselves: no copy from the device needed
        token_ids = np.concatenate([np.asarray(s, dtype=np.int32) for s in seqs]) if "tokens" in self.poolings else None
        meta = dict(prompt_ids=[e.prompt_id for e in batch], token_counts=np.asarray([len(s) for s in seqs], np.int32),
                    truncated=np.asarray([e.truncated for e in batch], dtype=np.int32),
                    responses=list(responses_text), token_ids=token_ids)
        return InFlight(meta, layout, buf, event, self.buffers)

    def _pooling_masks(self, batch: list[Encoded], mask: torch.Tensor, n_prompt: list[int]) -> dict[str, torch.Tensor]:
        """pooling -> the bool ``[B, T]`` positions it averages or picks, from the attention mask's
        real-token order: the prompt's (``last``, ``mean``), the generated response's, the given
        assistant turns', every real token's (``tokens``)."""
        order = mask.long().cumsum(dim=1) - 1  # index of each real token within its prompt
        n_p = torch.tensor(n_prompt, device=mask.device).unsqueeze(1)
        out = {}
        for pooling in self.poolings:
            if pooling in PROMPT_POOLINGS:
                out[pooling] = mask & (order < n_p)
            elif pooling == "response_mean":
                out[pooling] = mask & (order >= n_p)
            elif pooling == "assistant_mean":
                out[pooling] = self._assistant_mask(batch, order, mask)
            else:
                out[pooling] = mask
        return out


def _pool(pooling: str, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One pooling of a block's output ``h`` ``[B, T, d]`` over ``mask``: float32 rows."""
    if pooling == "last":
        return pool_last(h, mask)
    if pooling == "tokens":
        return pool_tokens(h, mask)
    return pool_mean(h, mask)  # mean, response_mean, assistant_mean: over their own masks
