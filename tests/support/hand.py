"""Hand computations with plain torch and transformers (no traitlens code) that tests hold
traitlens's own numbers against."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def typical_norm(folder, layer: int) -> float:
    """alpha's unit by hand: the mean norm of block ``layer``'s output (``hidden_states[layer + 1]``)
    over the real tokens of traitlens's neutral prompts, each in the chat template when the
    tokenizer has one, tokens above 10x the median norm left out. (Not the last block: Hugging
    Face applies the final norm to the last hidden state.)"""
    from traitlens.pipeline.steer.damage import NEUTRAL_PROMPTS  # the prompts only: data, not code

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    norms = []
    for p in NEUTRAL_PROMPTS:
        text = tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True) \
            if tok.chat_template else p
        ids = tok(text, add_special_tokens=not tok.chat_template, return_tensors="pt")
        with torch.no_grad():
            norms.append(model(**ids, output_hidden_states=True).hidden_states[layer + 1][0].norm(dim=-1))
    n = torch.cat(norms)
    return float(n[n <= 10 * n.median()].mean())
