"""Draw the two diagrams the docs show, with matplotlib (no other tool needed):

    python docs/diagrams.py        # writes docs/pipeline.png and docs/architecture.png

- ``pipeline.png`` (README): a corpus through ingest into the store, vectors out of it, and what
  is done with them, each step under the command that does it;
- ``architecture.png`` (docs/architecture.md): the five floors and the stages inside
  ``pipeline``, with the edges the layering test allows.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

HERE = Path(__file__).resolve().parent
INK, MUTED = "#1f2933", "#52606d"
FILL = {"data": "#e3f2fd", "store": "#fff3e0", "stage": "#e8f5e9", "out": "#f3e5f5", "floor": "#f5f7fa"}


def box(ax, x, y, w, h, title, lines=(), kind="stage", size=10):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.012,rounding_size=0.02", linewidth=1.2,
                                edgecolor=INK, facecolor=FILL[kind]))
    ax.text(x + w / 2, y + h - 0.035, title, ha="center", va="top", fontsize=size, weight="bold", color=INK)
    for i, line in enumerate(lines):
        ax.text(x + w / 2, y + h - 0.085 - 0.042 * i, line, ha="center", va="top", fontsize=size - 2, color=MUTED)


def arrow(ax, a, b, label=None, rad=0.0):
    ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=14, linewidth=1.3, color=INK,
                                 connectionstyle=f"arc3,rad={rad}"))
    if label:
        ax.text((a[0] + b[0]) / 2, (a[1] + b[1]) / 2 + 0.025, label, ha="center", va="bottom", fontsize=8.5,
                color=INK, family="monospace")


def pipeline(path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(12, 4.6), dpi=150)
    ax.set(xlim=(-0.01, 1.26), ylim=(-0.02, 0.64))
    ax.axis("off")
    box(ax, 0.01, 0.30, 0.17, 0.25, "prompt corpus", ["JSONL, CSV, JSON, text", "text + label (+1/-1)", "trait, split, dataset"],
        "data")
    box(ax, 0.29, 0.24, 0.27, 0.37, "activation store", ["Zarr: one array per", "model/site/pooling/layer",
                                                         "Parquet: prompts, rows, runs,", "vectors, steering, scores ...",
                                                         "commit marks, verify, repair"], "store")
    box(ax, 0.68, 0.33, 0.20, 0.22, "trait vectors", ["6 methods x every layer", "held-out metrics, floors",
                                                      "provenance, stability"], "stage")
    box(ax, 1.00, 0.36, 0.24, 0.22, "steered model", ["push / ablate at a site", "effect, KL, interval,",
                                                      "random floor"], "out")
    box(ax, 1.00, 0.05, 0.24, 0.20, "other tools", ["safetensors, GGUF (llama.cpp),", "repeng, steering-vectors"], "out")
    box(ax, 0.35, 0.01, 0.45, 0.15, "SQL over everything (DuckDB views)", ["rank, query, nearest(), a read-only dashboard"],
        "floor", size=9.5)
    arrow(ax, (0.185, 0.43), (0.285, 0.43), "ingest")
    arrow(ax, (0.565, 0.44), (0.675, 0.44), "extract")
    arrow(ax, (0.885, 0.47), (0.995, 0.47), "steer")
    ax.text(0.94, 0.40, "evaluate", ha="center", fontsize=8.5, color=INK, family="monospace")
    arrow(ax, (0.86, 0.33), (0.995, 0.17), "export", rad=0.15)
    arrow(ax, (0.43, 0.235), (0.47, 0.165))
    arrow(ax, (0.74, 0.165), (0.77, 0.325), "rank")
    fig.savefig(path, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return path


def architecture(path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(11, 6.2), dpi=150)
    ax.set(xlim=(-0.01, 1.11), ylim=(-0.01, 1.05))
    ax.axis("off")
    floors = [("traitlens.testing  (tests/support)", "tiny random models, synthetic stores, corpora, a headless browser", 0.88),
              ("workflows", "the CLI verbs, specs, run / refresh / schedule, report, dashboard, demo", 0.74),
              ("pipeline", "", 0.30),
              ("queries", "read-only DuckDB views, ranking, the one selection rule", 0.16),
              ("store", "Zarr arrays, Parquet tables, commit protocol, locks, runs, verify, compaction", 0.02)]
    for name, what, y in floors:
        h = 0.42 if name == "pipeline" else 0.11
        box(ax, 0.02, y, 1.06, h, name, [what] if what else [], "floor", size=11)
    stages = [("capture", ["corpus -> activations", "plan, batches, commits"], 0.05),
              ("extract", ["activations -> vectors", "metrics, floors, export"], 0.30),
              ("steer", ["vectors -> a running model", "steer, monitor, evaluate"], 0.55),
              ("interop", ["the one adapter:", "other tools in and out"], 0.80)]
    for name, lines, x in stages:
        box(ax, x, 0.48, 0.22, 0.15, name, lines, "out" if name == "interop" else "stage")
    box(ax, 0.05, 0.33, 0.47, 0.11, "model", ["loading, sites, layers, encode, hooks, generation"], "store")
    box(ax, 0.56, 0.33, 0.27, 0.11, "runtime", ["signals, Dask cluster, memory"], "store")
    for x in (0.16, 0.41):
        arrow(ax, (x, 0.475), (x, 0.445))
    arrow(ax, (0.66, 0.475), (0.66, 0.445))
    ax.text(0.55, 1.04, "each floor imports only itself and the floors below it; "
            "stages never import each other (tests/test_layering.py)", ha="center", va="top", fontsize=9.5, color=INK)
    fig.savefig(path, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return path


if __name__ == "__main__":
    for p in (pipeline(HERE / "pipeline.png"), architecture(HERE / "architecture.png")):
        print(f"wrote {p}")
