"""Watch a trait move token by token while the model generates.

``trajectory(lm, prompt_ids, vector, layer)`` generates (greedy, or sampled with a seed; under
steering pushes if given), then reads block ``layer``'s output at every prompt and generated
position in one causal forward pass (the same states generation computed) and projects them
onto the vector. ``trajectories`` does many prompts as batches, with the same results. The result
holds per-token projection, velocity, acceleration and the commitment point
(:mod:`traitlens.pipeline.steer.temporal` defines each).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from traitlens.pipeline.steer import temporal
from traitlens.pipeline.model.loading import LoadedModel
from traitlens.pipeline.model.hooks import block_outputs, pad_batch, pad_token_id
from traitlens.pipeline.steer.steering import generate, generate_batch, pushes


@dataclass
class Trajectory:
    tokens: list[str]  # [T] decoded token strings, prompt then generated
    token_ids: list[int]
    n_prompt: int
    layer: int
    projection: np.ndarray  # [T]
    velocity: np.ndarray  # [T]
    acceleration: np.ndarray  # [T]
    threshold: float
    commitment: int | None  # token index, or None
    response: str = ""
    meta: dict = field(default_factory=dict)

    def rows(self) -> list[dict]:
        return [{"position": i, "token": t, "generated": i >= self.n_prompt, "projection": float(p),
                 "velocity": float(v), "acceleration": float(a)}
                for i, (t, p, v, a) in enumerate(zip(self.tokens, self.projection, self.velocity, self.acceleration))]


def hidden_states(lm: LoadedModel, ids: list[int], layer: int) -> np.ndarray:
    """Block ``layer``'s output for one unpadded sequence: ``[T, d]`` float64."""
    return block_outputs(lm, [layer], torch.tensor([ids]))[layer][0].double().cpu().numpy()


def read_states(lm: LoadedModel, seqs: list[list[int]], layer: int, n_prompt: list[int], items=()) -> list[np.ndarray]:
    """Block ``layer``'s output for each full sequence (prompt + reply) in one right-padded
    pass, under the pushes generation ran with (their positions counted from each prompt's
    length ``n_prompt``): ``[T_i, d]`` float64 each."""
    ids, mask = pad_batch(seqs, pad_token_id(lm.tokenizer), "right", lm.device)
    with pushes(lm, list(items), prompt_len=torch.tensor(n_prompt)):
        h = block_outputs(lm, [layer], ids, mask)[layer].double().cpu().numpy()
    return [h[i, :len(s)] for i, s in enumerate(seqs)]


def analyse(lm: LoadedModel, ids: list[int], n_prompt: int, H: np.ndarray, vector, layer: int,
            threshold: float | None = None, velocity_tol: float | None = None, smooth_window: int = 1) -> Trajectory:
    """The trajectory of one generated sequence from its states ``H`` ``[T, d]``."""
    p = temporal.projection(H, vector)
    if smooth_window > 1:
        p = temporal.smooth(p, smooth_window)
    vel = temporal.derivative(p, order=1)
    acc = temporal.derivative(p, order=2)
    thr = float(threshold) if threshold is not None else 0.0  # callers pass the vector's learned threshold
    gen = np.zeros(len(ids), dtype=bool)
    gen[n_prompt:] = True
    # "near zero" velocity, by default: half the generated tokens' typical token-to-token change
    # (prompt tokens are left out: chat-template tokens swing far more than text does)
    tol = velocity_tol if velocity_tol is not None else 0.5 * float(np.nanstd(vel[gen]) if gen.sum() > 1 else 1.0)
    direction = "above" if (p[gen].mean() if gen.any() else 0) >= thr else "below"
    com = temporal.commitment_point(np.where(gen, p, np.nan), thr, tol, mask=gen, direction=direction)
    toks = [lm.tokenizer.decode([t]) for t in ids]
    return Trajectory(toks, list(ids), n_prompt, layer, p, vel, acc, thr, com,
                      lm.tokenizer.decode(ids[n_prompt:], skip_special_tokens=True),
                      {"velocity_tol": tol, "direction": direction})


def trajectory(lm: LoadedModel, prompt_ids: list[int], vector, layer: int, max_new_tokens: int = 40,
               sample: bool = False, seed: int = 0, threshold: float | None = None,
               velocity_tol: float | None = None, smooth_window: int = 1, items=()) -> Trajectory:
    """Generate (under the pushes ``items``, if any) and project every token's state at
    ``layer`` onto ``vector`` (unit-normalised)."""
    if sample:
        with pushes(lm, list(items)):
            new = generate(lm, prompt_ids, max_new_tokens, sample=True, seed=seed)
    else:
        new = generate_batch(lm, [list(prompt_ids)], list(items), max_new_tokens)[0]
    ids = list(prompt_ids) + new
    H = read_states(lm, [ids], layer, [len(prompt_ids)], items)[0]
    return analyse(lm, ids, len(prompt_ids), H, vector, layer, threshold, velocity_tol, smooth_window)


def trajectories(lm: LoadedModel, prompts: list[list[int]], vector, layer: int, max_new_tokens: int = 40,
                 threshold: float | None = None, velocity_tol: float | None = None, smooth_window: int = 1,
                 items=(), batch_size: int = 8) -> list[Trajectory]:
    """:func:`trajectory` (greedy) of many prompts, generated and read as batches: the same
    trajectories as one at a time."""
    out = []
    for b in range(0, len(prompts), batch_size):
        chunk = [list(p) for p in prompts[b:b + batch_size]]
        full = [p + n for p, n in zip(chunk, generate_batch(lm, chunk, list(items), max_new_tokens))]
        states = read_states(lm, full, layer, [len(p) for p in chunk], items)
        out += [analyse(lm, ids, len(p), H, vector, layer, threshold, velocity_tol, smooth_window)
                for p, ids, H in zip(chunk, full, states)]
    return out


def plot(traj: Trajectory, path: Path, title: str = "") -> Path:
    """PNG: projection along tokens (generated tokens on the axis), threshold, commitment point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    T = len(traj.tokens)
    start = max(0, traj.n_prompt - 8)  # a little prompt context, then the generation
    xs = np.arange(start, T)
    fig, ax = plt.subplots(figsize=(min(18, 2 + 0.32 * len(xs)), 4.2))
    ax.axvspan(start - 0.5, traj.n_prompt - 0.5, color="0.92", label="prompt")
    ax.plot(xs, traj.projection[start:], marker="o", ms=3, lw=1.4, label=f"projection (layer {traj.layer})")
    ax.axhline(traj.threshold, ls="--", color="0.4", lw=1, label=f"threshold {traj.threshold:.2f}")
    if traj.commitment is not None:
        ax.axvline(traj.commitment, color="red", lw=1.5, label=f"commitment at token {traj.commitment}")
    labels = [repr(t)[1:-1][:12] for t in traj.tokens[start:]]  # escapes: \n, control bytes
    ax.set_xticks(xs, labels, rotation=70, fontsize=7)
    ax.set_ylabel("projection on trait vector")
    ax.set_title(title or "trait projection per token", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
