"""``expression``: how much a steered model's replies express a trait, for any trait.

Under steering, the model replies greedily (``max_new_tokens``) to neutral prompts. The replies
are then read by the *unsteered* model: the mean, over the reply's tokens, of block
``layer``'s output projected on the trait's detection vector (its unit direction). The reading
is calibrated on held-out texts of the trait, each read the same way as a reply to a fixed
question, so that 0 is the negative texts' mean and 1 the positive texts' mean.

Unlike the persona and refusal measures, this one needs no question format: any trait with a
detection vector has it. The evaluator runs the generation under steering; :class:`Expression`
holds what must not be steered (the reading and its calibration).

Shapes: block outputs ``[B, T, d]``; a reading is ``[n]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from traitlens.pipeline.model.encode import render_ids
from traitlens.pipeline.model.hooks import block_outputs, pad_batch, pad_token_id
from traitlens.pipeline.model.loading import LoadedModel

CALIBRATION_QUESTION = "Say something."  # the question held-out texts are read as replies to


def _reply_ids(lm: LoadedModel, prompt: str, reply: str, chat: bool) -> tuple[list[int], int]:
    """Token ids of a conversation whose assistant reply is ``reply``, and where the reply starts."""
    head = render_ids(lm.tokenizer, prompt, None, chat)
    body = lm.tokenizer(reply, add_special_tokens=False)["input_ids"]
    return head + body, len(head)


@torch.inference_mode()
def read_replies(lm: LoadedModel, unit: np.ndarray, layer: int, convs: list[tuple[list[int], int]],
                 batch_size: int = 8) -> np.ndarray:
    """Mean projection on ``unit`` of block ``layer``'s output over each reply's tokens: ``[n]``.
    ``convs``: (ids, index where the reply starts)."""
    u = torch.as_tensor(unit, dtype=torch.float32)
    out = np.zeros(len(convs))
    for b in range(0, len(convs), batch_size):
        chunk = convs[b:b + batch_size]
        ids, mask = pad_batch([c[0] for c in chunk], pad_token_id(lm.tokenizer), "right", lm.device)
        h = block_outputs(lm, [layer], ids, mask)[layer].float().cpu()  # [B, T, d]
        proj = h @ u  # [B, T]
        for i, (seq, start) in enumerate(chunk):
            # an empty reply reads the position it would have started from (the prompt's last)
            lo = start if len(seq) > start else start - 1
            out[b + i] = float(proj[i, lo:len(seq)].mean())
    return out


@dataclass
class Expression:
    """The measure's reading: ``read(lm, prompts, replies)`` reads replies unsteered and
    calibrated (the evaluator generates them under steering, ``max_new_tokens`` long);
    ``calibrate`` sets the scale."""

    unit: np.ndarray  # [d] the detection vector, unit length
    layer: int
    max_new_tokens: int = 32
    chat: bool = True
    lo: float = 0.0  # reading of the held-out negatives (maps to 0)
    hi: float = 1.0  # reading of the held-out positives (maps to 1)

    def calibrate(self, lm: LoadedModel, positives: list[str], negatives: list[str]) -> "Expression":
        read = lambda texts: read_replies(  # noqa: E731
            lm, self.unit, self.layer, [_reply_ids(lm, CALIBRATION_QUESTION, t, self.chat) for t in texts])
        self.lo, self.hi = float(np.nanmean(read(negatives))), float(np.nanmean(read(positives)))
        if not np.isfinite(self.hi - self.lo) or self.hi == self.lo:
            raise ValueError("the held-out positives and negatives read alike: no calibrated scale")
        return self

    def read(self, lm: LoadedModel, prompts: list[str], replies: list[str]) -> np.ndarray:
        raw = read_replies(lm, self.unit, self.layer, [_reply_ids(lm, p, r, self.chat) for p, r in zip(prompts, replies)])
        return (raw - self.lo) / (self.hi - self.lo)
