"""One PNG per trait's steering sweep, three panels read left to right:

1. the Pareto plot: every measured setting's shift (with its 95% interval) against its KL on
   neutral prompts (log axis), coloured by layer; the front joined, the pick starred, the KL
   budget dashed, the random direction in grey;
2. effect against alpha, a line per layer of the pick's method with its interval band (the
   random direction at the pick's layer in grey);
3. steerability: the histogram of per-sample slopes of the measure against alpha at the pick
   (random's at the same layer beside it), with the wrong-way side shaded.

Works on steering rows and sample rows as :class:`.search.SweepResult` holds them or as the
``steering`` / ``steering_samples`` tables return them (dicts with the same keys).
:func:`together_figure` draws pushes measured at once (``evaluate --add``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from traitlens.pipeline.steer.rule import front, pick, pushed


def sample_slopes(samples: list[dict], method: str, layer: int) -> np.ndarray:
    """Per-sample steerability at one (method, layer): the least-squares slope of each held-out
    sample's measure over every alpha measured there (``-alpha`` too where ``minus`` was),
    the unsteered value at alpha 0: ``[n_samples]``."""
    from traitlens.pipeline.steer.stats import slopes

    points: dict[str, dict[float, float]] = {}
    for s in samples:
        if s["measure"] != "effect" or s["method"] != method or s["layer"] != layer or s["alpha"] is None:
            continue  # (an ablation's samples have no alpha)
        p = points.setdefault(s["sample"], {0.0: s["unsteered"]})
        p[float(s["alpha"])] = s["plus"]
        if s.get("minus") is not None:
            p[-float(s["alpha"])] = s["minus"]
    if not points:
        return np.zeros(0)
    alphas = sorted(set.intersection(*(set(p) for p in points.values())))
    if len(alphas) < 2:
        return np.zeros(0)
    return slopes(alphas, [[p[a] for a in alphas] for p in points.values()])


def steering_figure(rows: list[dict], samples: list[dict], trait: str, path: Path, kl_budget: float,
                    kind: str = "") -> Path:
    """Write the three-panel PNG of one trait's sweep to ``path``; return it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    path = Path(path)
    rows = [r for r in pushed(rows) if r.get("kl") is not None]  # (ablations are not on an alpha axis)
    own = [r for r in rows if r["method"] != "random"]
    rand = [r for r in rows if r["method"] == "random"]
    chosen = pick(rows, kl_budget)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    layers = sorted({r["layer"] for r in own})
    cmap = plt.get_cmap("viridis")
    colour = {l: cmap(i / max(1, len(layers) - 1)) for i, l in enumerate(layers)}
    markers = {m: "osD^vP*X"[i % 8] for i, m in enumerate(sorted({r["method"] for r in own}))}  # combined vectors add methods
    floor_kl = 1e-5  # KL axis is logarithmic; alpha-0 rows (KL exactly 0) sit on its floor

    ax = axes[0]
    for r in own:
        ax.errorbar(max(r["kl"], floor_kl), r["shift"], yerr=_yerr(r), fmt=markers[r["method"]], ms=5,
                    color=colour[r["layer"]], alpha=0.8, elinewidth=0.7)
    for r in rand:
        ax.errorbar(max(r["kl"], floor_kl), r["shift"], yerr=_yerr(r), fmt="x", color="grey", ms=6, elinewidth=0.7)
    f = front(rows)
    ax.plot([max(r["kl"], floor_kl) for r in f], [r["shift"] for r in f], color="black", lw=0.8, label="Pareto front")
    if chosen:
        ax.plot(max(chosen["kl"], floor_kl), chosen["shift"], marker="*", ms=16, color="red", ls="none",
                label=f"pick: {chosen['method']} L{chosen['layer']} a{chosen['alpha']:g}")
    ax.axvline(kl_budget, color="red", ls="--", lw=0.8, label=f"KL budget {kl_budget:g}")
    for m, mk in markers.items():
        ax.plot([], [], mk, color="black", ls="none", label=m)
    if rand:
        ax.plot([], [], "x", color="grey", ls="none", label="random direction")
    ax.set_xscale("log")
    # plain tick labels: the default scientific ones go through mathtext, which hunts for fonts
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("KL on neutral prompts (nats, log)")
    ax.set_ylabel(f"shift ({kind})" if kind else "shift")
    ax.set_title(f"{trait}: effect against damage (colour: layer {layers[0]}-{layers[-1]})" if layers else trait,
                 fontsize=9)
    ax.legend(fontsize=6.5, loc="best")

    ax = axes[1]
    method = chosen["method"] if chosen else (own[0]["method"] if own else None)
    for l in layers:
        line = sorted((r for r in own if r["method"] == method and r["layer"] == l), key=lambda r: r["alpha"])
        if not line:
            continue
        a = [r["alpha"] for r in line]
        ax.plot(a, [r["shift"] for r in line], "o-", color=colour[l], ms=3, lw=1, label=f"L{l}")
        if all(r.get("ci_low") is not None for r in line):
            ax.fill_between(a, [r["ci_low"] for r in line], [r["ci_high"] for r in line], color=colour[l], alpha=0.15)
    if chosen:
        line = sorted((r for r in rand if r["layer"] == chosen["layer"]), key=lambda r: r["alpha"])
        if line:
            ax.errorbar([r["alpha"] for r in line], [r["shift"] for r in line], yerr=np.array([_yerr(r)[:, 0] for r in line]).T,
                        fmt="x--", color="grey", lw=0.8, label=f"random L{chosen['layer']}")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel("alpha (units of the layer's mean token norm)")
    ax.set_ylabel("shift, 95% interval band")
    ax.set_title(f"effect against alpha: {method}", fontsize=9)
    ax.legend(fontsize=6.5, ncol=2)

    ax = axes[2]
    if chosen:
        s = sample_slopes(samples, chosen["method"], chosen["layer"])
        r = sample_slopes(samples, "random", chosen["layer"])
        bins = np.histogram_bin_edges(np.concatenate([s, r]) if len(r) else s, bins=25) if len(s) else 10
        if len(s):
            ax.hist(s, bins=bins, alpha=0.7, color="C0", label=f"{chosen['method']} L{chosen['layer']} ({len(s)} samples)")
        if len(r):
            ax.hist(r, bins=bins, alpha=0.5, color="grey", label=f"random L{chosen['layer']}")
        ax.axvspan(min(ax.get_xlim()[0], 0), 0, color="red", alpha=0.06, label="wrong way (slope < 0)")
        ax.legend(fontsize=6.5)
        ax.set_title(f"steerability at the pick ({'wrong way ' + format(chosen['wrong_way'], '.0%') if chosen.get('wrong_way') is not None else ''})",
                     fontsize=9)
    else:
        ax.text(0.5, 0.5, f"no setting within KL {kl_budget:g}", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("per-sample slope of the measure against alpha")
    ax.set_ylabel("samples")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _yerr(r: dict) -> np.ndarray:
    """Asymmetric error bar ``[[below], [above]]`` of a row's 95% interval (zero without one)."""
    if r.get("ci_low") is None or r.get("ci_high") is None:
        return np.zeros((2, 1))
    return np.array([[max(0.0, r["shift"] - r["ci_low"])], [max(0.0, r["ci_high"] - r["shift"])]])


def together_figure(rows: list[dict], trait: str, path: Path, kind: str = "", names: list[str] | None = None
                    ) -> Path:
    """PNG of pushes measured together (:mod:`.together`): each part's shift with its 95% interval
    (the sum of the pushes alone marked beside the whole) and its KL on neutral prompts.
    ``names``: a label per row [default: its part and its first push's label]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    names = [n[:60] for n in names] if names else [
        ("together" if r["part"] == "together" else "random twin" if r["part"] == "random"
         else "alone: " + r["pushes"][0].split(" (")[0])[:48] for r in rows]
    colours = ["C3" if r["part"] == "together" else "grey" if r["part"] == "random" else "C0" for r in rows]
    y = np.arange(len(rows))[::-1]
    fig, axes = plt.subplots(1, 2, figsize=(11, 1.2 + 0.45 * len(rows)), sharey=True)
    ax = axes[0]
    for yi, r, c in zip(y, rows, colours):
        ax.errorbar(r["shift"], yi, xerr=np.array(_yerr(r)), fmt="o", color=c, capsize=3)
    parts = [r for r in rows if r["part"] == "alone"]
    if parts:
        ax.plot(sum(r["shift"] for r in parts), y[0], marker="|", ms=18, color="black", ls="none",
                label="sum of the pushes alone")
        ax.legend(fontsize=7, loc="best")
    ax.axvline(0, color="grey", lw=0.5)
    ax.set_yticks(y, names, fontsize=7)
    ax.set_xlabel(f"shift ({kind}), 95% interval" if kind else "shift, 95% interval")
    ax.set_title(f"{trait}: pushes together and alone", fontsize=9)
    ax = axes[1]
    for yi, r, c in zip(y, rows, colours):
        err = np.array([[max(0.0, r["kl"] - (r.get("kl_low") or r["kl"]))], [max(0.0, (r.get("kl_high") or r["kl"]) - r["kl"])]])
        ax.errorbar(r["kl"], yi, xerr=err, fmt="s", color=c, capsize=3)
    ax.set_xlabel("KL on neutral prompts (nats), 95% interval")
    ax.set_title("damage", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
