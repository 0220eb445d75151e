"""Specificity beyond the corpus, with and without a background, per method, on the default model.

    python bench/specificity.py --trait desire-for-acquiring-power [--persona DIR] [--layers 10-16]

The issue's setting on the shared persona data (``../shared/data/persona``): one trait's
statements, 80 a side to train on and 100 a side held out (test), and 600 statements of the
other five persona traits (both sides, unlabelled) as the background: 300 in the train split, 300
held out. The held-out pool is then 500 statements (100 positives, base rate 0.20) and its top
decile the top 50, as in the issue. Everything is captured once (``last`` pooling, chat
template, the layers asked for), then extracted twice with every method:

- without a background: the held-out background alone (no train-split prompt), so no method gets
  extra negatives, and every vector is still read on the same pool;
- with it: the 300 train-split background statements join the negatives of mean_diff, probe and
  gradient.

Prints a Markdown table per method at the layer the selection rule picks (held-out AUROC, ties by
Cohen's d), and the floors (random direction, token count, base rate). The corpus files are
written to a temporary folder, never into the project.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from traitlens.pipeline.capture.corpus import prompt_id_for
from traitlens.pipeline.capture.ingest import ingest
from traitlens.pipeline.capture.settings import IngestConfig
from traitlens.pipeline.extract.config import ExtractConfig
from traitlens.pipeline.extract.jobs import extract
from traitlens.queries.selection import best_per_method
from traitlens.store.vocabulary import METHOD_NAMES
from traitlens.testing import SHARED_DATA

PERSONA = SHARED_DATA / "persona"


def statements(path: Path) -> list[tuple[str, int]]:
    out = []
    for line in path.read_text().splitlines():
        r = json.loads(line)
        out.append((r["statement"], 1 if r["answer_matching_behavior"].strip() == "Yes" else -1))
    return out


def write_corpora(folder: Path, persona: Path, trait: str, n_train: int, n_test: int, n_background: int, seed: int):
    """(trait corpus, background corpus, background test ids, background ids)."""
    rng = np.random.default_rng(seed)
    own = statements(persona / f"{trait}.jsonl")
    recs = []
    for label in (1, -1):
        side = [s for s, l in own if l == label]
        pick = rng.choice(len(side), n_train + n_test, replace=False)
        recs += [{"text": side[i], "trait": trait, "label": label, "split": "train" if k < n_train else "test"}
                 for k, i in enumerate(pick)]
    others = [s for f in sorted(persona.glob("*.jsonl")) if f.stem != trait for s, _ in statements(f)]
    others = sorted(set(others) - {r["text"] for r in recs})
    pick = rng.choice(len(others), 2 * n_background, replace=False)
    bg = [{"text": others[i], "trait": "background", "split": "train" if k < n_background else "test"}
          for k, i in enumerate(pick)]
    (folder / f"{trait}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (folder / "background.jsonl").write_text("".join(json.dumps(r) + "\n" for r in bg))
    ids = {prompt_id_for(r["text"], None) for r in bg}
    held = {prompt_id_for(r["text"], None) for r in bg if r["split"] == "test"}
    return folder / f"{trait}.jsonl", folder / "background.jsonl", held, ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trait", default="desire-for-acquiring-power")
    ap.add_argument("--persona", type=Path, default=PERSONA, help="[default: the shared data's persona/ folder]")
    ap.add_argument("--layers", default="10-16")
    ap.add_argument("--n-train", type=int, default=80)
    ap.add_argument("--n-test", type=int, default=100)
    ap.add_argument("--n-background", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not (args.persona / f"{args.trait}.jsonl").exists():
        raise SystemExit(f"no persona data for {args.trait} at {args.persona} (pass --persona)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = str(tmp / "store")
        corpus, background, held_ids, all_ids = write_corpora(tmp, args.persona, args.trait, args.n_train, args.n_test,
                                                              args.n_background, args.seed)
        t0 = time.perf_counter()
        res = ingest(store, [corpus, background], cfg=IngestConfig(layers=args.layers), progress=False,
                     log=lambda *a: None)
        t_ingest = time.perf_counter() - t0
        cfg = ExtractConfig(n_boot=0)
        t0 = time.perf_counter()
        runs = {"without": extract(store, args.trait, cfg=cfg, background=(held_ids, "held-out background only")),
                "with": extract(store, args.trait, cfg=ExtractConfig(n_boot=0), background=(all_ids, "background"))}
        t_extract = time.perf_counter() - t0
    best = {k: best_per_method(r.records) for k, r in runs.items()}
    any_rec = runs["with"].records[0]
    print(f"\n{args.trait}: {any_rec['n_pos']} + {any_rec['n_neg']} train, {any_rec['n_held_pos']} + "
          f"{any_rec['n_held_neg']} held out (test), {any_rec['n_background']} held-out background statements "
          f"(base rate {any_rec['spec_base']:.2f}, top decile = {int(np.ceil(0.1 * (any_rec['n_held_pos'] + any_rec['n_held_neg'] + any_rec['n_background'])))}); "
          f"layers {args.layers}; ingest {res.n_captured} prompts in {t_ingest:.0f} s, both extractions {t_extract:.0f} s\n")
    print("| method | without: layer, AUROC | top-decile precision | AUROC vs background | with: layer, AUROC "
          "| top-decile precision | AUROC vs background |")
    print("|---|---|---|---|---|---|---|")
    for m in METHOD_NAMES:
        a, b = best["without"][m], best["with"][m]
        print(f"| {m} | L{a['layer']} {a['auroc']:.3f} | {a['spec_precision']:.2f} | {a['spec_auroc']:.3f} | "
              f"L{b['layer']} {b['auroc']:.3f} | {b['spec_precision']:.2f} | {b['spec_auroc']:.3f} |")
    for k, recs in runs.items():
        real = [r for r in recs.records if r["method"] != "random"]
        top = max(real, key=lambda r: r["spec_precision"])
        print(f"\n{k} a background, the best top-decile precision of any method and layer (chosen on the held-out "
              f"pool itself, so optimistic): {top['method']} L{top['layer']} {top['spec_precision']:.2f} "
              f"(AUROC vs background {top['spec_auroc']:.3f})")
    print(f"token count alone, AUROC vs background: {any_rec['spec_floor_length']:.3f}")


if __name__ == "__main__":
    main()
