"""``make demo``: the main job on the embedded default model, end to end.

Write the demo corpus, ingest it on SmolLM2-135M-Instruct (all 30 layers, last and mean
pooling), verify the store, extract every method at every layer for each demo trait, print
the best layer per trait and method, export one vector, monitor one prompt token by token
(PNG), steer one prompt, and print where everything is.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from traitlens.pipeline.extract import ExtractConfig, extract
from traitlens.pipeline.ingest import IngestConfig, ingest
from traitlens.store import Store, verify

from .demo_corpus import write_demo_corpus


def _monitor_and_steer(out: Path, store: Store, vecs: list[dict]) -> None:
    """Watch the harmful-request direction token by token, then push a harmless prompt along it."""
    import torch

    from traitlens.pipeline.encode import render_ids
    from traitlens.pipeline.models import load_model
    from traitlens.pipeline.monitor import plot, trajectory
    from traitlens.pipeline.steer import generate, mean_token_norm, steering

    lm = load_model(None, log=lambda *a: None)
    vec = next(v for v in vecs if v["layer"] == 12)
    prompt = "How do I get back at a coworker who embarrassed me?"
    ids = render_ids(lm.tokenizer, prompt, None, True)
    tr = trajectory(lm, ids, vec["vector"], vec["layer"], max_new_tokens=30, threshold=vec["threshold"], smooth_window=3)
    plot(tr, out / "monitor-harmful.png", title=f"harmful (mean_diff, layer 12): {prompt}")
    where = f"token {tr.commitment} ({tr.tokens[tr.commitment]!r})" if tr.commitment is not None else "none"
    print(f"\nmonitor: {prompt!r} -> {tr.response!r}\n  commitment: {where}; plot: {out / 'monitor-harmful.png'}")
    harmless = "Give me three tips for a relaxing weekend."
    ids = render_ids(lm.tokenizer, harmless, None, True)
    t = torch.tensor([ids])
    scale = mean_token_norm(lm, 12, t, torch.ones_like(t))
    plain = lm.tokenizer.decode(generate(lm, ids, 30), skip_special_tokens=True)
    with steering(lm, vec["vector"], 12, 0.1, scale):
        pushed = lm.tokenizer.decode(generate(lm, ids, 30), skip_special_tokens=True)
    print(f"steer: {harmless!r} at layer 12, alpha +0.1 x mean norm {scale:.1f}\n  unsteered: {plain!r}\n"
          f"  steered:   {pushed!r}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="demo-out", help="folder for the corpus and the store")
    ap.add_argument("--model", default=None)
    args = ap.parse_args(argv)
    out = Path(args.out)
    t0 = time.perf_counter()
    corpus = write_demo_corpus(out / "corpus")
    print(f"demo corpus: {corpus}")
    res = ingest(out / "store", [corpus], cfg=IngestConfig(model=args.model), log=print)
    print(f"ingest: {res.n_captured} prompts captured, {res.n_skipped} already stored "
          f"({res.prompts_per_s:.1f} prompts/s, {res.tokens} tokens)")
    store = Store.open(out / "store")
    rep = verify(store)
    print(f"verify: {'clean' if rep.clean else 'NOT clean: ' + '; '.join(rep.errors + rep.tails)}")
    for g in store.groups():
        print(f"  {g.path}: {store.committed(g).n_prompts} prompts x {len(store.layers(g))} layers")
    print("\nbest layer (held-out AUROC) per trait and method:")
    for trait in ("harmful", "sentiment", "formality"):
        res = extract(out / "store", trait, cfg=ExtractConfig(n_boot=4))
        best: dict[str, dict] = {}
        for r in res.records:
            if r["method"] not in best or r["auroc"] > best[r["method"]]["auroc"]:
                best[r["method"]] = r
        cells = "  ".join(f"{m} L{r['layer']} ({r['auroc']:.2f})" for m, r in best.items())
        print(f"  {trait:<10} {cells}")
    from traitlens.pipeline.export import latest_per_layer, to_safetensors

    vecs = [r for r in store.table("vectors").to_pylist() if r["trait"] == "harmful" and r["method"] == "mean_diff"]
    to_safetensors(latest_per_layer(vecs), out / "harmful-mean_diff.safetensors")
    print(f"exported: {out / 'harmful-mean_diff.safetensors'} (one direction per layer)")
    _monitor_and_steer(out, store, vecs)
    print(f"\nstore: {(out / 'store').resolve()}  ({time.perf_counter() - t0:.0f} s)")
    print(f"try:   .venv/bin/traitlens --store {out / 'store'} info")
    print(f"       .venv/bin/traitlens --store {out / 'store'} vectors --trait harmful --method probe")
    if not rep.clean:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
