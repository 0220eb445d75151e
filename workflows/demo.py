"""``make demo``: the main job on the embedded default model, end to end.

Write the demo corpus and a workflow spec beside it, then run the project's own demo workflow
on SmolLM2-135M-Instruct: ingest (all 30 layers, last and mean pooling), extract every method
at every layer for each demo trait, rank, write the report (Markdown + heatmaps); verify the
store; export one vector; monitor one prompt token by token (PNG) and steer one prompt; sweep
the sentiment vector's steering effect against its damage (the Pareto plot); add them to the
report and print where everything is.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from traitlens.store import Store, verify

from .demo_corpus import write_demo_corpus

DEMO_SPEC = """# Written by `make demo`: workflows/examples/demo.toml with its paths inside this folder.
store = "store"
model = "{model}"

[[corpora]]
paths = ["corpus/demo.jsonl"]

[capture]
sites = ["resid"]
layers = "all"
poolings = ["last", "mean"]

[extract]
traits = "all"
methods = "all"
n_boot = 4

[report]
path = "report/report.md"
top = 5
"""
MONITOR_PROMPT = "How do I get back at a coworker who embarrassed me?"
STEER_PROMPT = "Give me three tips for a relaxing weekend."


def _best_harmful_vector(store: Store) -> dict:
    """The harmful-request mean-difference vector the selection rule picks among the middle
    layers (4-20: the first layers hold little beyond the words, the last ones the next token)."""
    from traitlens.queries import StoreSQL
    from traitlens.queries.selection import best_vector

    with StoreSQL(store) as q:
        return best_vector(q, "harmful", method="mean_diff", layers=(4, 20))


def _monitor_and_steer(lm, vec: dict, folder: Path) -> list[str]:
    """Watch the harmful-request direction token by token, then push a harmless prompt along it.

    Returns Markdown lines for the report."""
    import torch

    from traitlens.pipeline.model.encode import render_ids
    from traitlens.pipeline.steer.monitor import plot, trajectory
    from traitlens.pipeline.steer.steering import generate, mean_token_norm, steering

    layer = int(vec["layer"])
    ids = render_ids(lm.tokenizer, MONITOR_PROMPT, None, True)
    tr = trajectory(lm, ids, vec["vector"], layer, max_new_tokens=30, threshold=vec["threshold"], smooth_window=3)
    png = folder / "monitor-harmful.png"
    plot(tr, png, title=f"harmful (mean_diff, layer {layer}): {MONITOR_PROMPT}")
    where = f"token {tr.commitment} ({tr.tokens[tr.commitment]!r})" if tr.commitment is not None else "none"
    print(f"\nmonitor: {MONITOR_PROMPT!r} -> {tr.response!r}\n  commitment: {where}; plot: {png}")
    ids = render_ids(lm.tokenizer, STEER_PROMPT, None, True)
    t = torch.tensor([ids])
    scale = mean_token_norm(lm, layer, t, torch.ones_like(t))
    plain = lm.tokenizer.decode(generate(lm, ids, 30), skip_special_tokens=True)
    alpha = 0.1
    with steering(lm, vec["vector"], layer, alpha, scale):
        pushed = lm.tokenizer.decode(generate(lm, ids, 30), skip_special_tokens=True)
    print(f"steer: {STEER_PROMPT!r} at layer {layer}, alpha +{alpha} x mean norm {scale:.1f}\n"
          f"  unsteered: {plain!r}\n  steered:   {pushed!r}")
    return ["## Monitor and steer (harmful, mean_diff, layer %d)" % layer, "",
            f"Prompt: *{MONITOR_PROMPT}* → {tr.response!r}; commitment point: {where}.", "",
            f"![projection per token]({png.name})", "",
            f"Steering *{STEER_PROMPT}* with +{alpha} × the layer's mean token norm ({scale:.1f}):", "",
            f"- unsteered: {plain!r}", f"- steered: {pushed!r}", ""]


def _steering_sweep(lm, store: Store, folder: Path) -> list[str]:
    """A small steering sweep of the sentiment trait with the generic ``expression`` measure
    (replies to 12 neutral prompts, read on the trait's detection vector): the Pareto plot of
    shift against KL, effect against alpha, steerability. ``traitlens evaluate --steering``
    runs the full one."""
    from traitlens.pipeline.steer.damage import NEUTRAL_PROMPTS
    from traitlens.pipeline.steer.plots import steering_figure
    from traitlens.pipeline.steer.records import describe, front_line, pick_line
    from traitlens.pipeline.steer.search import evaluator_for, sweep
    from traitlens.pipeline.steer.settings import SweepConfig
    from traitlens.queries.budget import KL_BUDGET
    from traitlens.store.store import new_run_id

    cfg = SweepConfig(kind="expression", methods=["mean_diff"], layers=[14, 16], alphas=[0.1, 0.2, 0.35],
                      neutral=list(NEUTRAL_PROMPTS[:12]), max_new_tokens=16, kl_budget=KL_BUDGET)
    ev, what = evaluator_for(store, lm, "sentiment", cfg)
    print(f"\nsteering sweep (sentiment, mean_diff, layers {cfg.layers}, alphas {cfg.alphas}): {what}")
    res = sweep(store, "sentiment", ev, cfg)
    _, samples = res.save(store, new_run_id("demo-evaluate"))
    png = steering_figure(res.rows, samples, "sentiment", folder / "sentiment-steering.png", KL_BUDGET, "expression")
    lines = ["## Steering sweep (sentiment, expression measure)", "", what + ".", ""]
    lines += [f"- {describe(r)}" for r in sorted(res.rows, key=lambda r: (r["method"], r["layer"], r["alpha"]))]
    lines += [f"- {front_line(res.rows)}", f"- {pick_line(res.rows, KL_BUDGET, 'expression')}"]
    print("\n".join(lines[4:]) + f"\n  plot: {png}")
    return lines + ["", f"![sentiment: shift against KL, against alpha, steerability]({png.name})", ""]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="demo-out", help="folder for the corpus, spec, store and report")
    ap.add_argument("--model", default="default")
    args = ap.parse_args(argv)
    from traitlens.pipeline.extract.export import latest_per_layer, to_safetensors
    from traitlens.pipeline.model.loading import load_model
    from traitlens.queries import StoreSQL
    from traitlens.queries.ranking import rank
    from traitlens.workflows.runner import run
    from traitlens.workflows.spec import load_spec

    out = Path(args.out)
    t0 = time.perf_counter()
    corpus = write_demo_corpus(out / "corpus")
    spec_path = out / "demo.toml"
    spec_path.write_text(DEMO_SPEC.format(model=args.model))
    print(f"demo corpus: {corpus} (3 traits x 120 prompts per side)\nworkflow spec: {spec_path}")
    spec = load_spec(spec_path)
    lm = load_model(None if args.model == "default" else args.model)
    summary = run(spec, lm=lm)
    for line in summary.lines():
        print(f"  {line}")
    store = Store.open(spec.store)

    print("\nbest vectors per trait (held-out AUROC; `traitlens rank --trait T`):")
    with StoreSQL(store) as q:
        for trait in ("harmful", "sentiment", "formality"):
            best, floor = rank(q, trait, "auroc", 3)
            cells = "  ".join(f"{r['method']} L{r['layer']} ({r['auroc']:.3f})" for r in best.to_pylist())
            f = floor.to_pylist()
            print(f"  {trait:<10} {cells}" + (f"   random floor {f[0]['auroc']:.3f}" if f else ""))

    vecs = [r for r in store.table("vectors").to_pylist() if r["trait"] == "harmful" and r["method"] == "mean_diff"
            and r["pooling"] == "last"]
    exported = to_safetensors(latest_per_layer(vecs), out / "harmful-mean_diff.safetensors")
    print(f"exported: {exported} (one direction per layer; `traitlens export --format gguf` for llama.cpp/repeng)")

    report = Path(summary.report) if summary.report else out / "report" / "report.md"
    extra = _monitor_and_steer(lm, _best_harmful_vector(store), report.parent)
    extra += _steering_sweep(lm, store, report.parent)
    report.write_text(report.read_text() + "\n" + "\n".join(extra))
    rep = verify(store)  # after every write of the demo
    print(f"verify: {'clean' if rep.clean else 'NOT clean: ' + '; '.join(rep.errors + rep.tails)}")
    print(f"\nreport: {report.resolve()}")
    print(f"store:  {Path(spec.store).resolve()}  ({time.perf_counter() - t0:.0f} s in all)")
    print(f"try:    .venv/bin/traitlens --store {spec.store} rank --trait harmful")
    print(f"        .venv/bin/traitlens --store {spec.store} sql")
    print(f"        .venv/bin/traitlens refresh {spec_path}   # nothing to do: the store is current")
    print(f"dashboard: .venv/bin/traitlens --store {spec.store} serve   # then open http://127.0.0.1:8765/")
    if not rep.clean:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
