"""Export stored vectors: safetensors (never pickle) and GGUF control vectors for llama.cpp.

Both files hold one direction per layer, keyed like repeng writes them: ``direction.{layer}``
where ``layer`` is the 0-based index of the block whose output the vector lives on. llama.cpp
applies ``direction.N`` to block N's output and cannot steer block 0, so GGUF export skips
layer 0. Vectors are unit norm; ``scale`` multiplies them (llama.cpp's
``--control-vector-scaled FILE S`` scales again at load time).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def latest_per_layer(records: list[dict]) -> list[dict]:
    """The newest vector of each layer (records of one trait, method and group)."""
    latest: dict[int, dict] = {}
    for r in sorted(records, key=lambda r: r["created_at"]):
        latest[int(r["layer"])] = r
    return [latest[l] for l in sorted(latest)]


def _by_layer(records: list[dict]) -> dict[int, np.ndarray]:
    out = {}
    for r in records:
        if r["layer"] in out:
            raise ValueError(f"two vectors for layer {r['layer']}: pass one --method")
        out[int(r["layer"])] = np.asarray(r["vector"], dtype=np.float32)
    return dict(sorted(out.items()))


def to_safetensors(records: list[dict], path: Path, scale: float = 1.0) -> Path:
    from safetensors.numpy import save_file

    vecs = _by_layer(records)
    meta = {k: str(records[0][k]) for k in ("model_key", "fmt", "site", "pooling", "trait", "method")}
    meta["vector_ids"] = json.dumps({str(r["layer"]): r["vector_id"] for r in records})
    meta["scale"] = str(scale)
    save_file({f"direction.{l}": v * scale for l, v in vecs.items()}, str(path), metadata=meta)
    return path


def to_gguf(records: list[dict], path: Path, model_hint: str = "llama", scale: float = 1.0) -> Path:
    import gguf

    vecs = {l: v for l, v in _by_layer(records).items() if l > 0}
    if not vecs:
        raise ValueError("llama.cpp cannot steer layer 0; export at least one layer >= 1")
    writer = gguf.GGUFWriter(str(path), "controlvector")
    writer.add_string("controlvector.model_hint", model_hint)
    writer.add_uint32("controlvector.layer_count", len(vecs))
    for layer, v in vecs.items():
        writer.add_tensor(f"direction.{layer}", (v * scale).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
