"""A bundle's card (README.md): YAML front matter that model hubs and ``vectors --library`` index,
and a short human card saying what the vectors detect, how well (intervals beside every score,
the floors beside them), their known limits and how to load them.

The front matter follows Hugging Face's model-card metadata (``library_name``, ``license``,
``tags``, ``base_model`` where the model is a hub id); everything traitlens knows sits under
``traitlens:``, strict (a value that is not a finite number is null, and ``traitlens.nulls``
says why, as does every other null).
"""

from __future__ import annotations

import numpy as np

from traitlens.store.strict_json import document

from traitlens.pipeline.extract.export import LAYER_CONVENTION, NOT_MEASURABLE
from traitlens.pipeline.extract.floors import floor_flag
from traitlens.pipeline.extract.metrics import auroc_interval, cohens_d_interval

NOT_EVALUATED = "not evaluated for steering: run `traitlens evaluate --steering --vector DIR`"
SMALL_HELD_OUT = 30  # fewer held-out rows per class than this: the card says the interval is wide


def _num(x):
    return None if x is None or (isinstance(x, float) and not np.isfinite(x)) else x


def vector_entry(r: dict, pick: dict | None, random_auroc: float | None, nulls: dict, path: str) -> dict:
    """One vector's entry in the front matter: its held-out metrics with 95% intervals, its floors,
    its steering pick (largest shift within the KL budget) where evaluated."""
    a_lo, a_hi = auroc_interval(r["auroc"], r["n_held_pos"], r["n_held_neg"])
    d_lo, d_hi = cohens_d_interval(r["cohens_d"], r["n_held_pos"], r["n_held_neg"])
    entry = {
        "vector_id": r["vector_id"], "method": r["method"], "layer": int(r["layer"]), "tensor": r["vector_id"],
        "held_out": {"split": r["held_split"], "n_pos": r["n_held_pos"], "n_neg": r["n_held_neg"],
                     "auroc": r["auroc"], "auroc_ci95": [a_lo, a_hi],
                     "balanced_accuracy": r["balanced_accuracy"], "cohens_d": r["cohens_d"],
                     "cohens_d_ci95": [d_lo, d_hi], "stability": r["stability"]},
        "train": {"n_pos": r["n_pos"], "n_neg": r["n_neg"]},
        "floors": {"token_count": r.get("floor_length"), "source_dataset": r.get("floor_dataset"),
                   "random_direction": random_auroc},
        "floor_flag": floor_flag(r, random_auroc),
    }
    if r.get("floor_dataset") is None:
        nulls[f"{path}.floors.source_dataset"] = "the trait's rows come from one dataset: no dataset floor"
    if random_auroc is None:
        nulls[f"{path}.floors.random_direction"] = "no random vector at this layer (extract with --methods ...,random)"
    if entry["floor_flag"] is None:
        nulls[f"{path}.floor_flag"] = "clears every floor by the margin"
    if pick is None:
        entry["steering"] = None
        nulls[f"{path}.steering"] = NOT_EVALUATED
    else:
        entry["steering"] = {"kind": pick["kind"], "alpha": pick["alpha"], "n": pick["n"], "shift": pick["shift"],
                             "shift_ci95": [pick["ci_low"], pick["ci_high"]], "kl": pick["kl"],
                             "kl_ci95": [pick.get("kl_low"), pick.get("kl_high")], "wrong_way": pick.get("wrong_way")}
    return entry


def front_matter(trait: str, model: dict, group: dict, records: list[dict], picks: dict[str, dict],
                 random_aurocs: dict[str, float | None], license_: str, notes: dict[str, str]) -> dict:
    """The card's YAML front matter. ``model``: key, name, spec (hub id or folder, None: the
    default), weights SHA-256; ``group``: fmt, site, pooling; ``picks``: ``{vector_id: steering
    pick}``; ``random_aurocs``: ``{vector_id: the random direction's AUROC at its layer}``;
    ``notes``: ``{field: reason}`` for what the bundle leaves out."""
    nulls = dict(notes)
    vectors = [vector_entry(r, picks.get(r["vector_id"]), random_aurocs.get(r["vector_id"]), nulls, f"vectors.{i}")
               for i, r in enumerate(records)]
    body = document({"format": "traitlens bundle 1", "trait": trait,
                     "model": {"key": model["key"], "name": model["name"], "weights_sha256": model.get("weights_sha256")},
                     **group, "layer_convention": LAYER_CONVENTION,
                     "methods": sorted({r["method"] for r in records}),
                     "layers": sorted({int(r["layer"]) for r in records}), "vectors": vectors, "nulls": nulls},
                    NOT_MEASURABLE)
    front = {"library_name": "traitlens", "license": license_,
             "tags": ["traitlens", "steering-vector", "trait-vector", "activation-steering", trait]}
    hub = model.get("hub_id")
    if hub:
        front["base_model"] = hub
    front["traitlens"] = body
    return front


def _ci(pair, f=".3f") -> str:
    lo, hi = pair
    return "-" if lo is None or hi is None else f"{lo:{f}} to {hi:{f}}"


def _v(x, f=".3f") -> str:
    return "-" if x is None else format(x, f)


def card_body(front: dict, prompts_included: bool, capability_rows: int | None, commands: dict[str, str],
              datasets: list[str]) -> str:
    """The human card (Markdown) below the front matter: what the vectors detect, how well, their
    floors, known limits and how to load them."""
    t = front["traitlens"]
    vecs = t["vectors"]
    first = vecs[0]
    lines = [f"# {t['trait']}: trait vectors for {t['model']['name']}", "",
             f"**What it detects.** Directions in {t['model']['name']}'s `{t['site']}` activations "
             f"({t['pooling']} pooling over {t['fmt']} prompts) along which prompts labelled +1 for "
             f"*{t['trait']}* project higher than prompts labelled -1. Fitted on {first['train']['n_pos']} positive "
             f"and {first['train']['n_neg']} negative training prompts"
             + (f" from {', '.join(datasets)}" if datasets else "") + f"; judged on the held-out "
             f"`{first['held_out']['split']}` split ({first['held_out']['n_pos']} + {first['held_out']['n_neg']}).",
             "", "**How well** (held-out; 95% intervals: AUROC by Hanley & McNeil, Cohen's d by Hedges & Olkin; "
             "floors: the AUROC of the token count, of the source dataset and of a random direction):", "",
             "| vector | method | layer | AUROC (95% CI) | Cohen's d (95% CI) | stability | floors: length / dataset / random | steering shift (95% CI), KL nats |",
             "|---|---|---|---|---|---|---|---|"]
    for v in vecs:
        h, fl, s = v["held_out"], v["floors"], v["steering"]
        steer = (f"{s['shift']:+.3f} ({_ci(s['shift_ci95'], '+.3f')}), KL {_v(s['kl'], '.4f')} at alpha "
                 f"{s['alpha']:g} ({s['kind']})" if s else "not evaluated")
        lines.append(f"| `{v['vector_id']}` | {v['method']} | {v['layer']} | {_v(h['auroc'])} ({_ci(h['auroc_ci95'])}) "
                     f"| {_v(h['cohens_d'], '.2f')} ({_ci(h['cohens_d_ci95'], '.2f')}) | {_v(h['stability'], '.3f')} | "
                     f"{_v(fl['token_count'])} / {_v(fl['source_dataset'])} / {_v(fl['random_direction'])} | {steer} |")
    limits = [f"Made on `{t['model']['key']}`: a direction of one model means nothing in another's activations "
              "(`steer`, `score` and `export` refuse another model)."]
    for v in vecs:
        if v["floor_flag"]:
            limits.append(f"`{v['vector_id']}`: {v['floor_flag']}.")
        n = min(v["held_out"]["n_pos"] or 0, v["held_out"]["n_neg"] or 0)
        if n < SMALL_HELD_OUT:
            limits.append(f"`{v['vector_id']}`: only {n} held-out prompts in the smaller class: its interval is wide.")
    if any(v["steering"] is None for v in vecs):
        limits.append("Steering effect not measured for " + ", ".join(f"`{v['vector_id']}`" for v in vecs
                                                                       if v["steering"] is None)
                      + ": detection is not control (`traitlens evaluate --steering --vector DIR` measures it).")
    limits.append("Capability damage: " + ("not measured (the store had no capability table)." if capability_rows is None
                                           else f"{capability_rows} row{'' if capability_rows == 1 else 's'} in "
                                           "`evidence/capability.parquet`."))
    if 0 in t["layers"]:
        limits.append("Layer 0 cannot go into a llama.cpp control vector (its loader refuses direction.0).")
    if not prompts_included:
        limits.append("The prompts are left out (`--no-prompts`): `evidence/prompts.parquet` holds their ids and "
                      "hashes only, so `traitlens reproduce` needs a store that holds them.")
    lines += ["", "**Known limits.**", ""] + [f"- {l}" for l in limits]
    lines += ["", "**How to load it.** Every tensor of `vectors.safetensors` is a unit vector named by its vector id; "
              f"{t['layer_convention']}.", "", "```python",
              "from safetensors import safe_open", "",
              "with safe_open(\"vectors.safetensors\", \"numpy\") as f:",
              f"    v = f.get_tensor(\"{first['vector_id']}\")  # [d] float32, unit norm", "```", "",
              "With traitlens, from the folder that holds the bundle (each command checks every file's SHA-256 "
              "first and refuses a changed bundle):", "", "```sh"]
    lines += [commands[k] for k in ("steer", "score", "evaluate", "gguf", "merged", "reproduce") if k in commands]
    lines += ["```", "", "Evidence: `evidence/metrics.parquet` (the vectors' rows), `evidence/steering.parquet` "
              "(steering evaluations, the random floor's included), `evidence/prompts.parquet`; `reproduce.json` "
              "records the model, the corpus hash, the commands and versions, and every file's SHA-256.", ""]
    return "\n".join(lines)
