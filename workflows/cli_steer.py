"""CLI verbs that run the model with a vector: ``monitor``, ``steer``, ``evaluate``."""

from __future__ import annotations

from pathlib import Path

import click

from .cli_base import EXIT_INPUT, _fail, _output, cli

KL_BUDGET = 0.1  # nats: the default damage budget of `evaluate`'s pick (see the README's steering figure)


def _pick_vector(store, trait: str, model_key: str, layer: int | None, method: str | None, vector_id: str | None):
    """The vector to use: by id; else the one :mod:`traitlens.queries.selection`'s rule picks
    (within ``layer`` / ``method`` when given) — the same one ``rank`` lists first."""
    from traitlens.queries import StoreSQL
    from traitlens.queries.selection import chosen_vector

    with StoreSQL(store) as q:
        v = chosen_vector(q, trait, vector_id, model_key=model_key, layer=layer, method=method)
    if v is None:
        _fail(f"no vector for trait {trait!r} on model {model_key}" + (f" at layer {layer}" if layer is not None else "")
              + (f" by {method}" if method else "") + f"; run `traitlens extract --trait {trait}` with this --model",
              EXIT_INPUT)
    if v["model_key"] != model_key:
        _fail(f"vector {v['vector_id']} was extracted on {v['model_key']}, not {model_key}; pass the matching --model",
              EXIT_INPUT)
    return v


def _load(model, quiet=False):
    from traitlens.pipeline.model.loading import load_model

    return load_model(model, log=(lambda *a: None) if quiet else (lambda m: click.echo(m, err=True)))


def _prompt_ids(lm, text: str, chat: bool | None):
    from traitlens.pipeline.model.encode import render_ids, uses_chat

    return render_ids(lm.tokenizer, text, None, uses_chat(lm.tokenizer, chat))


@cli.command()
@click.argument("prompt", required=False)
@click.option("--trait", required=True)
@click.option("--file", "file_", type=click.Path(exists=True, dir_okay=False), help="One prompt a line (batch mode).")
@click.option("--model", default=None, help="[default: SmolLM2-135M-Instruct]")
@click.option("--layer", type=click.IntRange(min=0), default=None, help="[default: the best-ranked vector's layer]")
@click.option("--method", default=None, help="[default: the best-ranked vector's method]")
@click.option("--vector-id", default=None)
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=40, show_default=True)
@click.option("--sample", is_flag=True, help="Sample instead of greedy decoding.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--smooth", type=click.IntRange(min=1), default=1, show_default=True, help="Moving-average window over tokens.")
@click.option("--threshold", type=float, default=None, help="Commitment threshold [default: the vector's, learned on train].")
@click.option("--velocity-tol", type=float, default=None,
              help="|velocity| counted as settled [default: half the generated tokens' velocity std].")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="PNG [default: monitor-<trait>.png].")
@click.option("--keep", is_flag=True, help="Append the trajectories to the store's trajectories table (SQL).")
@click.option("--chat/--no-chat", default=None)
@click.pass_context
def monitor(ctx, prompt, trait, file_, model, layer, method, vector_id, max_new_tokens, sample, seed, smooth, threshold,
            velocity_tol, plot, keep, chat):
    """Generate while projecting every token's state onto a trait vector; table + PNG."""
    import numpy as np

    from traitlens.pipeline.capture.corpus import prompt_id_for
    from traitlens.pipeline.steer.monitor import plot as draw
    from traitlens.pipeline.steer.monitor import trajectory
    from traitlens.store import Store, file_stem
    from traitlens.store.store import new_run_id, now_utc

    prompts = [prompt] if prompt else []
    if file_:
        prompts += [l for l in Path(file_).read_text().splitlines() if l.strip()]
    if not prompts:
        _fail("give a PROMPT or --file", EXIT_INPUT)
    store = Store.open(ctx.obj["store"])
    lm = _load(model)
    vec = _pick_vector(store, trait, lm.key, layer, method, vector_id)
    run_id, records = new_run_id("monitor"), []
    for k, text in enumerate(prompts):
        tr = trajectory(lm, _prompt_ids(lm, text, chat), vec["vector"], vec["layer"], max_new_tokens, sample, seed,
                        threshold=vec["threshold"] if threshold is None else threshold, velocity_tol=velocity_tol,
                        smooth_window=smooth)
        click.echo(f"\n{text!r} -> {tr.response!r}")
        click.echo(f"vector {vec['vector_id']} ({vec['method']}, layer {vec['layer']}, held-out AUROC "
                   f"{vec['auroc']:.3f}); threshold {tr.threshold:.3f}")
        click.echo(f"{'pos':>4} {'token':<16} {'projection':>10} {'velocity':>9} {'accel':>8}")
        for r in tr.rows()[max(0, tr.n_prompt - 3):]:
            mark = " <- commitment" if tr.commitment == r["position"] else ""
            token = r["token"].replace("\n", "\\n")[:16]
            click.echo(f"{r['position']:>4} {token:<16} {r['projection']:>10.3f} "
                       f"{r['velocity']:>9.3f} {r['acceleration']:>8.3f}{mark}")
        click.echo("commitment: " + (f"token {tr.commitment} ({tr.tokens[tr.commitment]!r})" if tr.commitment is not None
                                     else "none (the projection never settles past the threshold)"))
        out = Path(_output(ctx, plot or f"monitor-{file_stem(trait, 'trait')}.png", "--plot"))
        if len(prompts) > 1:
            out = out.with_name(f"{out.stem}-{k}{out.suffix}")
        draw(tr, out, title=f"{trait} — layer {vec['layer']} {vec['method']} — {text[:60]}")
        click.echo(f"plot: {out}")
        if keep:
            pid, stamp = prompt_id_for(text, None), now_utc()
            records += [{**r, "run_id": run_id, "prompt_id": pid, "model_key": lm.key, "vector_id": vec["vector_id"],
                         "layer": vec["layer"], "commitment": tr.commitment, "created_at": stamp}
                        for r in tr.rows() if np.isfinite(r["projection"])]
    if records:
        with store.lock("monitor --keep"):
            store.append("trajectories", records)
        click.echo(f"kept {len(records)} token rows in the trajectories table (run {run_id})")


@cli.command()
@click.argument("prompt")
@click.option("--trait", required=True)
@click.option("--alpha", type=float, default=0.25, show_default=True,
              help="Strength in units of the layer's mean token norm; negative pushes away.")
@click.option("--model", default=None)
@click.option("--layer", type=click.IntRange(min=0), default=None)
@click.option("--method", default=None)
@click.option("--vector-id", default=None)
@click.option("--positions", type=click.Choice(["all", "generated"]), default="all", show_default=True)
@click.option("--norm", type=click.Choice(["typical", "all"]), default="typical", show_default=True,
              help="alpha's unit: the mean token norm without massive-activation tokens (typical) or over all.")
@click.option("--ablate", is_flag=True, help="Project the direction out instead of adding it.")
@click.option("--all-layers", is_flag=True, help="With --ablate: at every block, not only the vector's layer.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=40, show_default=True)
@click.option("--chat/--no-chat", default=None)
@click.pass_context
def steer(ctx, prompt, trait, alpha, model, layer, method, vector_id, positions, norm, ablate, all_layers,
          max_new_tokens, chat):
    """Generate with and without the vector and print both."""
    import torch

    from traitlens.pipeline.steer.steering import ablation, generate, mean_token_norm, steering
    from traitlens.store import Store

    store = Store.open(ctx.obj["store"])
    lm = _load(model)
    vec = _pick_vector(store, trait, lm.key, layer, method, vector_id)
    ids = _prompt_ids(lm, prompt, chat)
    plain = generate(lm, ids, max_new_tokens)
    t = torch.tensor([ids])
    if ablate:
        with ablation(lm, vec["vector"], None if all_layers else [vec["layer"]]):
            steered = generate(lm, ids, max_new_tokens)
        how = f"ablated at {'every layer' if all_layers else 'layer ' + str(vec['layer'])}"
    else:
        scale = mean_token_norm(lm, vec["layer"], t, torch.ones_like(t), norm)
        with steering(lm, vec["vector"], vec["layer"], alpha, scale, positions):
            steered = generate(lm, ids, max_new_tokens)
        how = f"alpha {alpha:+g} x mean norm ({norm}) {scale:.1f} at layer {vec['layer']} ({positions} positions)"
    dec = lambda x: lm.tokenizer.decode(x, skip_special_tokens=True)  # noqa: E731
    click.echo(f"vector {vec['vector_id']} ({trait}, {vec['method']}, layer {vec['layer']}); {how}")
    click.echo(f"\n--- unsteered ---\n{dec(plain)}\n\n--- steered ---\n{dec(steered)}")


@cli.command()
@click.option("--trait", required=True)
@click.option("--steering", "do_steering", is_flag=True, required=True, help="Run the causal steering evaluation.")
@click.option("--kind", type=click.Choice(["persona", "refusal", "refusal_first_token", "expression"]), default="persona",
              show_default=True, help="persona: Yes-No log-odds on trait statements; refusal: P(refusal opening) on "
              "harmless requests; refusal_first_token: P(first reply token starts a refusal opening); expression "
              "(any trait): how much replies to neutral prompts express the trait, read by the unsteered model on "
              "the trait's detection vector, 0 = held-out negatives, 1 = positives.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=32, show_default=True,
              help="Reply length for --kind expression.")
@click.option("--method", default="mean_diff", show_default=True)
@click.option("--layers", default=None, help="[default: the 5 layers around the method's best layer]")
@click.option("--alphas", default="0.25,0.5", show_default=True)
@click.option("--n", "n_texts", type=click.IntRange(min=1), default=40, show_default=True, help="Held-out prompts to measure on.")
@click.option("--norm", type=click.Choice(["typical", "all"]), default="typical", show_default=True,
              help="alpha's unit: the mean token norm without massive-activation tokens (typical) or over all.")
@click.option("--prompts", "prompts_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Neutral prompts for the damage (KL) measure, one a line [default: the project's own set].")
@click.option("--kl-budget", type=click.FloatRange(min=0), default=KL_BUDGET, show_default=True,
              help="The pick is the largest shift whose mean KL on the neutral prompts stays within this (nats).")
@click.option("--no-random", is_flag=True, help="Skip the random direction's evaluation (the floor).")
@click.option("--model", default=None)
@click.pass_context
def evaluate(ctx, trait, do_steering, kind, max_new_tokens, method, layers, alphas, n_texts, norm, prompts_file,
             kl_budget, no_random, model):
    """Sweep layer x strength: how much does steering along the vector move behaviour, with what
    interval, and for how much damage (KL on neutral prompts)? The random direction is measured
    alike; the Pareto front of (shift, KL) and the pick within --kl-budget are printed."""
    from traitlens.pipeline.steer.evaluate import evaluate_vector, steering_records
    from traitlens.pipeline.steer.stats import pareto_front
    from traitlens.pipeline.model.layers import parse_layers
    from traitlens.store import Store
    from traitlens.store.store import new_run_id

    try:
        alpha_list = [float(a) for a in alphas.split(",") if a.strip()]
    except ValueError:
        _fail(f"--alphas {alphas!r}: give a comma list of numbers, e.g. 0.25,0.5", EXIT_INPUT)
    if not alpha_list:
        _fail("--alphas: give at least one strength", EXIT_INPUT)
    neutral = None
    if prompts_file:
        neutral = [l.strip() for l in Path(prompts_file).read_text().splitlines() if l.strip()]
        if not neutral:
            _fail(f"--prompts {prompts_file}: no prompts (one a line)", EXIT_INPUT)
    store = Store.open(ctx.obj["store"])
    lm = _load(model)
    best = _pick_vector(store, trait, lm.key, None, method, None)
    layer_list = (parse_layers(layers, lm.n_layers) if layers else
                  [l for l in range(best["layer"] - 2, best["layer"] + 3) if 0 <= l < lm.n_layers])
    from traitlens.queries.selection import held_out_texts

    expression = None
    if kind == "expression":  # replies to neutral prompts, read on the trait's detection pick
        import numpy as np

        from traitlens.pipeline.steer.damage import NEUTRAL_PROMPTS
        from traitlens.pipeline.steer.expression import Expression

        detect = _pick_vector(store, trait, lm.key, None, None, None)
        sides = [held_out_texts(store, trait, s, detect["held_split"], n_texts) for s in (1, -1)]
        if not all(sides):
            _fail(f"--kind expression calibrates on held-out ({detect['held_split']}) texts of both labels; "
                  f"{trait!r} lacks one", EXIT_INPUT)
        unit = np.asarray(detect["vector"], np.float64)
        expression = Expression(unit / np.linalg.norm(unit), detect["layer"], max_new_tokens,
                                chat=detect["fmt"] == "chat").calibrate(lm, *sides)
        texts = neutral or list(NEUTRAL_PROMPTS)
        click.echo(f"expression: replies of {max_new_tokens} tokens to {len(texts)} neutral prompts, read on "
                   f"{detect['method']} L{detect['layer']} ({detect['vector_id']}), calibrated on held-out texts")
    else:
        want = 1 if kind == "persona" else -1  # trait statements, or harmless requests (refusal kinds)
        texts = held_out_texts(store, trait, want, best["held_split"], n_texts)
        if not texts:
            _fail(f"no held-out ({best['held_split']}) prompts with label {want:+d} for {trait!r}", EXIT_INPUT)
    run_id, all_rows, all_samples, measured, detection = new_run_id("evaluate"), [], [], {}, {}
    methods = [method]
    if not (no_random or method == "random"):
        from traitlens.queries import StoreSQL
        from traitlens.queries.selection import chosen_vector

        with StoreSQL(store) as q:
            have_random = all(chosen_vector(q, trait, None, model_key=lm.key, layer=l, method="random") is not None
                              for l in layer_list)
        if have_random:
            methods.append("random")
        else:
            click.echo("note: no random vectors at these layers (extract with --methods ...,random): no floor", err=True)
    click.echo(f"{'method':<10} {'layer':>5} {'alpha':>6} {'unsteered':>10} {'+v':>8} {'-v':>8} {'shift':>7} "
               f"{'95% CI':>17} {'wrong way':>9} {'KL nats':>8}   ({kind}, n={len(texts)})")
    for m in methods:
        for l in layer_list:
            vec = _pick_vector(store, trait, lm.key, l, m, None)
            detection[(m, l)] = vec["cohens_d"]
            rows = evaluate_vector(lm, vec["vector"], l, alpha_list, kind, texts, norm, neutral, expression=expression)
            for r in rows:
                minus = f"{r['minus']:8.3f}" if r["minus"] is not None else f"{'-':>8}"
                ci = f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]"
                click.echo(f"{m:<10} {l:>5} {r['alpha']:>6.2f} {r['unsteered']:>10.3f} {r['plus']:>8.3f} {minus} "
                           f"{r['shift']:>7.3f} {ci:>17} {r['wrong_way']:>9.0%} {r['kl']:>8.4f}")
                measured[(m, l, r["alpha"])] = r
            agg, per = steering_records(vec, rows, run_id)
            all_rows, all_samples = all_rows + agg, all_samples + per
    with store.lock("evaluate"):
        store.append("steering_samples", all_samples)  # the samples first: a steering row never lacks them
        store.append("steering", all_rows)
    mine = [(k, r) for k, r in measured.items() if k[0] == method]
    front = [mine[i] for i in pareto_front([r["shift"] for _, r in mine], [r["kl"] for _, r in mine])]
    click.echo("\nPareto front (shift up, KL down): " + ", ".join(
        f"L{k[1]} a{k[2]:g} ({r['shift']:+.3f}, KL {r['kl']:.4f})" for k, r in front))
    if len(layer_list) >= 3:  # does the best detector steer best? (AxBench: often not)
        from scipy.stats import spearmanr

        best_shift = [max(r["shift"] for k, r in mine if k[1] == l) for l in layer_list]
        rho = spearmanr([detection[(method, l)] for l in layer_list], best_shift).statistic
        click.echo(f"detection (held-out Cohen's d) against steering (best shift) across {len(layer_list)} layers: "
                   f"Spearman {rho:+.2f}")
    within = [(k, r) for k, r in mine if r["kl"] <= kl_budget]
    if not within:
        click.echo(f"pick: none: every setting costs more than --kl-budget {kl_budget:g} nats")
    else:
        (m, l, a), r = max(within, key=lambda kr: kr[1]["shift"])
        line = (f"pick (largest shift within KL {kl_budget:g}): {m} L{l} alpha {a:g}: shift {r['shift']:+.3f} "
                f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}], KL {r['kl']:.4f}, wrong way {r['wrong_way']:.0%}")
        floor = measured.get(("random", l, a))
        if floor is not None:
            overlaps = r["ci_low"] <= floor["ci_high"] and floor["ci_low"] <= r["ci_high"]
            line += (f"; random at the same setting {floor['shift']:+.3f} [{floor['ci_low']:+.3f}, "
                     f"{floor['ci_high']:+.3f}]" + (" — NOT shown to steer (the intervals overlap)" if overlaps else ""))
        click.echo(line)
    click.echo(f"stored {len(all_rows)} rows in the steering table and {len(all_samples)} in steering_samples; "
               f"`traitlens rank --trait {trait} --by steer_shift`")
