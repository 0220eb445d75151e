"""What a steering push costs: KL divergence of the next-token distribution on neutral prompts.

The measure abliteration tools minimise: for each neutral prompt, the mean over its positions of
``KL(P_unsteered || P_steered)`` (nats), the unsteered forward computed once per batch and
reused for every alpha. At ``alpha = 0`` the steered forward is the unsteered one, so the KL is
exactly 0. The prompts are open-ended questions written for this project (:data:`NEUTRAL_PROMPTS`),
or the user's own.

Shapes: logits ``[B, T, vocab]``; the result is ``[n_prompts]`` per alpha.
"""

from __future__ import annotations

import numpy as np
import torch

from traitlens.pipeline.model.encode import render_ids
from traitlens.pipeline.model.hooks import left_padded
from traitlens.pipeline.model.loading import LoadedModel
from traitlens.pipeline.steer.steering import steering

NEUTRAL_PROMPTS = (
    "What is a good way to spend a quiet afternoon?",
    "Describe the town you would most like to live in.",
    "How do you make a cup of tea?",
    "What should someone know before adopting a dog?",
    "Tell me about the changing of the seasons.",
    "What makes a meal memorable?",
    "How would you plan a weekend trip to the coast?",
    "Explain how a bicycle works.",
    "What do you think about when you look at the night sky?",
    "Describe your ideal morning routine.",
    "How do plants know which way is up?",
    "What is the best way to learn a new language?",
    "Write a few sentences about a walk in the rain.",
    "What would you put in a time capsule?",
    "How do people decide what to name a child?",
    "What is interesting about the history of maps?",
    "Describe a busy market on a Saturday morning.",
    "How should a beginner start running?",
    "What are some ways to keep a small garden?",
    "Tell me about a river from its source to the sea.",
    "What makes a good neighbour?",
    "How does a library decide which books to keep?",
    "Describe the sound of a city at night.",
    "What is a good first recipe to learn?",
    "How do birds find their way when they migrate?",
    "What would a perfect picnic look like?",
    "Explain why the sky changes colour at sunset.",
    "How do you choose a good book to read?",
    "Describe an old house you find interesting.",
    "What are the pleasures of a long train journey?",
    "How is bread made, from flour to loaf?",
    "What do you like about winter?",
)


@torch.inference_mode()
def next_token_kl(lm: LoadedModel, vector, layer: int, alphas: list[float], scale: float,
                  prompts: list[str] = NEUTRAL_PROMPTS, chat: bool = True, batch_size: int = 8) -> dict[float, np.ndarray]:
    """Per prompt, the mean over its real positions of KL(unsteered || steered) in nats, for each
    alpha (``{alpha: [n_prompts]}``); the push is ``alpha * scale * v`` at block ``layer``."""
    seqs = [render_ids(lm.tokenizer, p, None, chat) for p in prompts]
    out = {float(a): np.zeros(len(seqs)) for a in alphas}
    for b in range(0, len(seqs), batch_size):
        ids, mask, pos = left_padded(lm, seqs[b:b + batch_size])
        kw = {"input_ids": ids, "attention_mask": mask, "position_ids": pos}
        base = torch.log_softmax(lm.model(**kw).logits.float(), dim=-1)
        p = base.exp()
        m = mask.float()
        for a in alphas:  # (alpha 0 adds exactly nothing: the same forward, KL exactly 0)
            with steering(lm, vector, layer, float(a), scale):
                steered = torch.log_softmax(lm.model(**kw).logits.float(), dim=-1)
            kl = (p * (base - steered)).sum(-1).clamp_min(0.0)  # [B, T]; tiny negatives are rounding
            out[float(a)][b:b + len(ids)] = ((kl * m).sum(1) / m.sum(1)).cpu().numpy()
    return out
