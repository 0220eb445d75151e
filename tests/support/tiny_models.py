"""Tiny random-weight models built from configs, saved as ordinary Hugging Face folders.

Two architectures on purpose: Llama (rotary positions, ``model.layers``) and GPT-2
(absolute position embeddings, ``transformer.h``), so padding bugs that rotary attention
forgives still show on GPT-2. Qwen2 and Qwen3 (Llama's layout with other bias flags and Qwen3's
q/k norms) are there for the weight exports, which are written per architecture; ``tie``
ties the LM head to the embeddings (as SmolLM2 and GPT-2 do).
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast,
                          Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TRAIN_TEXT = [
    "the quick brown fox jumps over the lazy dog",
    "I love helping people and I am always kind to others",
    "I enjoy causing trouble and I do not care about anyone",
    "How do I bake bread? Please explain step by step.",
    "Write a poem about the sea, the sky and the stars.",
] * 20


def make_tokenizer(chat: bool) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TRAIN_TEXT, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>")
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def make_model(arch: str, folder: Path, seed: int = 0, n_layers: int = 3, d: int = 32, tie: bool | None = None) -> Path:
    """Build and save a tiny ``llama``, ``gpt2``, ``qwen2`` or ``qwen3`` model with its tokenizer
    (a chat template for all but GPT-2); ``tie``: tie the LM head to the embeddings
    [default: the architecture's default]. Returns the folder."""
    torch.manual_seed(seed)
    tok = make_tokenizer(chat=arch != "gpt2")
    common = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                  pad_token_id=tok.pad_token_id, **({} if tie is None else {"tie_word_embeddings": tie}))
    llama_like = dict(hidden_size=d, num_hidden_layers=n_layers, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=2 * d, max_position_embeddings=128, **common)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**llama_like))
    elif arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**llama_like))
    elif arch == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(head_dim=d // 4, **llama_like))
    elif arch == "gpt2":
        cfg = GPT2Config(n_embd=d, n_layer=n_layers, n_head=4, n_positions=128, **common)
        model = GPT2LMHeadModel(cfg)
    else:
        raise ValueError(arch)
    model.eval()
    folder = Path(folder)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
