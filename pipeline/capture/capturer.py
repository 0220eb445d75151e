"""Forward passes with hooks: capture pooled activations at the requested sites.

Speed comes from three things: the base model is called (never the LM head), the forward
stops as soon as every hooked module has produced its output (no block past the deepest
one asked for runs), and batches are padded only to their own longest prompt.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager

import numpy as np
import torch

from traitlens.store import PendingBatch
from traitlens.store.vocabulary import POOLINGS

from traitlens.pipeline.model.encode import Encoded
from traitlens.pipeline.model.generation import eos_token_ids, greedy_batch
from traitlens.pipeline.model.hooks import StopForward, base_model, hidden, pad_batch, pad_token_id, position_ids_from_mask  # noqa: F401
from traitlens.pipeline.model.loading import LoadedModel
from traitlens.pipeline.capture.pooling import pool_last, pool_mean, pool_tokens
from traitlens.pipeline.model.sites import HookPoint, get_module



class Capturer:
    """Runs batches through a model and pools the hooked outputs.

    ``capture(encoded)`` returns a :class:`PendingBatch` whose ``pooled[(site, pooling)][layer]``
    is float32 ``[B, d]`` (``[n_tokens, d]`` for ``tokens``).
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
        self._outputs: dict[str, torch.Tensor] = {}
        self._active = False
        self._handles = []
        paths = sorted({p.module_path for p in points})
        for path in paths:
            self._handles.append(get_module(model, path).register_forward_hook(self._make_hook(path, len(paths))))

    def _make_hook(self, path: str, n_paths: int):
        def hook(module, inputs, output):
            if not self._active:
                return None
            self._outputs[path] = hidden(output)
            if len(self._outputs) == n_paths:
                raise StopForward()
            return None

        return hook

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @contextmanager
    def _capturing(self):
        self._outputs = {}
        self._active = True
        try:
            yield
        finally:
            self._active = False

    def _generate(self, seqs: list[list[int]]) -> tuple[list[list[int]], list[str]]:
        """Greedy continuation of each prompt; responses stop after their first EOS."""
        responses = greedy_batch(self.lm, seqs, self.generate, self.eos_ids)
        return responses, [self.lm.tokenizer.decode(r, skip_special_tokens=True) for r in responses]

    @torch.inference_mode()
    def forward_outputs(self, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Hooked module outputs ``[B, T, d]`` keyed by module path, for padded ``ids``."""
        kwargs = {"input_ids": ids, "attention_mask": mask.long(), "use_cache": False}
        if self.takes_positions:
            kwargs["position_ids"] = position_ids_from_mask(mask)
        with self._capturing():
            try:
                self.base(**kwargs)
            except StopForward:
                pass
            outputs = self._outputs
        missing = {p.module_path for p in self.points} - set(outputs)
        if missing:
            raise RuntimeError(f"modules {sorted(missing)} never ran in the forward pass; pick other --site paths")
        return outputs

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
        """Capture one batch of encoded prompts."""
        seqs = [e.ids for e in batch]
        responses_text: list[str | None] = [None] * len(batch)
        n_prompt = [len(s) for s in seqs]
        if self.generate:
            resp_ids, responses_text = self._generate(seqs)
            seqs = [s + r for s, r in zip(seqs, resp_ids)]
        ids, mask = pad_batch(seqs, self.pad_id, self.padding_side, self.lm.device)
        outputs = self.forward_outputs(ids, mask)
        # prompt / response position masks, derived from the attention mask's real-token order
        order = mask.long().cumsum(dim=1) - 1  # index of each real token within its prompt
        n_p = torch.tensor(n_prompt, device=mask.device).unsqueeze(1)
        prompt_mask = mask & (order < n_p)
        resp_mask = mask & (order >= n_p)
        given_mask = self._assistant_mask(batch, order, mask) if "assistant_mean" in self.poolings else None
        pooled: dict[tuple[str, str], dict[int, np.ndarray]] = {}
        for p in self.points:
            h = outputs[p.module_path]
            for pooling in self.poolings:
                if pooling == "last":
                    v = pool_last(h, prompt_mask)
                elif pooling == "mean":
                    v = pool_mean(h, prompt_mask)
                elif pooling == "response_mean":
                    v = pool_mean(h, resp_mask)
                elif pooling == "assistant_mean":
                    v = pool_mean(h, given_mask)
                else:
                    v = pool_tokens(h, mask)
                pooled.setdefault((p.site, pooling), {})[p.layer] = v.cpu().numpy()
        counts = np.asarray([len(s) for s in seqs], dtype=np.int32)
        token_ids = ids[mask].to(torch.int32).cpu().numpy() if "tokens" in self.poolings else None
        return PendingBatch(prompt_ids=[e.prompt_id for e in batch], token_counts=counts,
                            truncated=np.asarray([e.truncated for e in batch], dtype=np.int32),
                            responses=list(responses_text), pooled=pooled, token_ids=token_ids)
