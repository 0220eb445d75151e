"""What a vector says: its logit-lens reading, the tokens it promotes and suppresses.

The vector (unit length) goes through the model's final norm and unembedding, as a residual
state would before the next-token prediction: ``logits = W_U norm(v) (+ b)``, ``[vocab]``.
The highest logits are the tokens it promotes, the lowest the ones it suppresses. For a
middle layer this is a rough reading (later blocks still transform the state), which is why
it is shown beside held-out and steering metrics, never instead of them.
"""

from __future__ import annotations

import numpy as np
import torch

from traitlens.pipeline.model.hooks import base_model
from traitlens.pipeline.model.loading import LoadedModel

FINAL_NORMS = ("norm", "ln_f", "final_layernorm", "final_layer_norm")


def final_norm(lm: LoadedModel) -> torch.nn.Module:
    """The model's last norm before the unembedding (Llama ``model.norm``, GPT-2 ``transformer.ln_f``, ...)."""
    base = base_model(lm)
    for name in FINAL_NORMS:
        mod = getattr(base, name, None)
        if isinstance(mod, torch.nn.Module):
            return mod
    raise ValueError(f"cannot find the final norm of {type(lm.model).__name__} (looked for {', '.join(FINAL_NORMS)})")


@torch.inference_mode()
def lens_logits(lm: LoadedModel, vector) -> np.ndarray:
    """``W_U final_norm(unit(v)) (+ bias)``: ``[vocab]`` float64."""
    v = torch.as_tensor(np.asarray(vector, dtype=np.float32))
    v = (v / v.norm()).to(lm.device)
    head = lm.model.get_output_embeddings()
    normed = final_norm(lm)(v.view(1, 1, -1).to(head.weight.dtype))
    return head(normed).view(-1).double().cpu().numpy()


def logit_lens(lm: LoadedModel, vector, top: int = 10) -> dict[str, list[tuple[int, str, float]]]:
    """``{"promotes": [(token id, token, logit)], "suppresses": [...]}``, ``top`` each, strongest first."""
    logits = lens_logits(lm, vector)
    order = np.argsort(logits)
    pick = {"promotes": order[::-1][:top], "suppresses": order[:top]}
    return {k: [(int(i), lm.tokenizer.decode([int(i)]), float(logits[i])) for i in ids] for k, ids in pick.items()}


def lens_records(lm: LoadedModel, vec: dict, top: int, run_id: str) -> list[dict]:
    """``lens`` table rows of one stored vector."""
    from traitlens.store.store import now_utc

    stamp, out = now_utc(), []
    for direction, tokens in logit_lens(lm, vec["vector"], top).items():
        out += [{"vector_id": vec["vector_id"], "model_key": lm.key, "direction": direction, "rank": k,
                 "token_id": tid, "token": tok, "logit": logit, "run_id": run_id, "created_at": stamp}
                for k, (tid, tok, logit) in enumerate(tokens)]
    return out
