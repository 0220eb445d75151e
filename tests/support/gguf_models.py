"""A Hugging Face Llama folder written as a GGUF file, the way llama.cpp's converter writes one.

For the tests of ``--model FILE.gguf``: the tensors get llama.cpp's names (``blk.N.attn_q``...),
the query and key projections llama.cpp's row permutation (which transformers undoes when it
loads the file), and the tokenizer travels as GGUF metadata (``tokenizer.ggml.*``, a byte-level
BPE: ``gpt2``). ``qtype`` stores the 2-D weights quantised (``Q8_0``: blocks of 32 values with a
float16 scale) instead of as float32; ``architecture`` overrides ``general.architecture`` (a
name transformers cannot dequantise, for the error path).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's reordering of a rotary projection's rows (``convert_hf_to_gguf.LlamaModel.permute``)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(folder: Path, path: Path, qtype: str | None = None, architecture: str | None = None) -> Path:
    """Write the Llama model in ``folder`` (``make_model("llama", ...)``) as the GGUF file ``path``."""
    import gguf
    from safetensors.numpy import load_file

    cfg = json.loads((Path(folder) / "config.json").read_text())
    tok = json.loads((Path(folder) / "tokenizer.json").read_text())
    tok_cfg = json.loads((Path(folder) / "tokenizer_config.json").read_text())
    weights = load_file(str(Path(folder) / "model.safetensors"))
    n_head, n_kv, n_layers = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["num_hidden_layers"]
    arch = gguf.MODEL_ARCH.LLAMA
    names = gguf.TensorNameMap(arch, n_layers)

    w = gguf.GGUFWriter(str(path), architecture or "llama")
    w.add_name("tiny llama")
    w.add_block_count(n_layers)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(float(cfg.get("rope_theta") or cfg.get("rope_parameters", {}).get("rope_theta", 10000.0)))
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_vocab_size(cfg["vocab_size"])
    w.add_rope_dimension_count(cfg["hidden_size"] // n_head)
    # the tokenizer: byte-level BPE, its tokens in id order, its merges, its special ids
    vocab = tok["model"]["vocab"] | {t["content"]: t["id"] for t in tok["added_tokens"]}
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    special = {t["content"] for t in tok["added_tokens"] if t.get("special")}
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]])
    w.add_bos_token_id(vocab[tok_cfg["bos_token"]])
    w.add_eos_token_id(vocab[tok_cfg["eos_token"]])
    w.add_unk_token_id(vocab[tok_cfg["unk_token"]])
    w.add_pad_token_id(vocab[tok_cfg["pad_token"]])
    w.add_add_bos_token(False)
    template = Path(folder) / "chat_template.jinja"
    template = template.read_text() if template.exists() else tok_cfg.get("chat_template")
    if template:
        w.add_chat_template(template)
    for hf_name, value in weights.items():
        value = value.astype(np.float32)
        if hf_name.endswith("self_attn.q_proj.weight"):
            value = _permute(value, n_head)
        elif hf_name.endswith("self_attn.k_proj.weight"):
            value = _permute(value, n_kv)
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ValueError(f"no llama.cpp name for {hf_name}")
        if qtype is not None and value.ndim == 2:
            kind = gguf.GGMLQuantizationType[qtype]
            w.add_tensor(name, gguf.quants.quantize(value, kind), raw_dtype=kind)  # bytes; the writer derives the shape
        else:
            w.add_tensor(name, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(path)
