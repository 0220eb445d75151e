"""CLI verbs that run the model with a vector: ``monitor``, ``steer``, ``evaluate``."""

from __future__ import annotations

from pathlib import Path

import click

from traitlens.pipeline.steer.settings import GRID_MAX, REPLY_TOKENS, TRIALS  # (no torch at import)
from traitlens.queries.budget import KL_BUDGET
from traitlens.store.vocabulary import EVALUATION_KINDS, NAMED_SITES, NORMS, POSITIONS

from .cli_base import EXIT_INPUT, _fail, _output, cli


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


def _named_vector(store, model_key: str, name: str, layer: int | None = None, method: str | None = None):
    """The vector ``name`` names: a stored vector id, else that trait's pick (within ``layer`` /
    ``method``), as :func:`_pick_vector` checks it."""
    from traitlens.queries import StoreSQL

    with StoreSQL(store) as q:
        is_id = q.query("SELECT count(*) AS n FROM vectors WHERE vector_id = ?", [name]).to_pylist()[0]["n"]
    return (_pick_vector(store, None, model_key, None, None, name) if is_id
            else _pick_vector(store, name, model_key, layer, method, None))


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
@click.option("--add", "adds", multiple=True, metavar="TRAIT_OR_ID[:LAYER[:ALPHA]]",
              help="Steer while monitoring: a push (as `steer --add`); repeat for several.")
@click.option("--alpha", type=float, default=0.25, show_default=True, help="The strength of an --add without one.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
              help="Greedy --file prompts run as batches of this many (the same trajectories as one at a time).")
@click.option("--chat/--no-chat", default=None)
@click.pass_context
def monitor(ctx, prompt, trait, file_, model, layer, method, vector_id, max_new_tokens, sample, seed, smooth, threshold,
            velocity_tol, plot, keep, adds, alpha, batch_size, chat):
    """Generate while projecting every token's state onto a trait vector; table + PNG."""
    import numpy as np

    from traitlens.pipeline.capture.corpus import prompt_id_for
    from traitlens.pipeline.steer.monitor import plot as draw
    from traitlens.pipeline.steer.monitor import trajectories, trajectory
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
    seqs = [_prompt_ids(lm, text, chat) for text in prompts]
    items = (_pushes_for(store, lm, list(adds), None, None, None, None, alpha, "typical", "resid", "all", seqs)
             if adds else [])
    if items:
        click.echo("steering while monitoring: " + "; ".join(p.describe() for p in items))
    thr = vec["threshold"] if threshold is None else threshold
    if sample:
        trs = [trajectory(lm, s, vec["vector"], vec["layer"], max_new_tokens, True, seed, threshold=thr,
                          velocity_tol=velocity_tol, smooth_window=smooth, items=items) for s in seqs]
    else:
        trs = trajectories(lm, seqs, vec["vector"], vec["layer"], max_new_tokens, thr, velocity_tol, smooth, items,
                           batch_size)
    for k, (text, tr) in enumerate(zip(prompts, trs)):
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


def _parse_add(store, lm, spec: str, alpha: float, method: str | None) -> tuple[dict, int, float]:
    """(vector, layer, alpha) of one ``--add TRAIT_OR_VECTOR_ID[:LAYER[:ALPHA]]``: LAYER defaults
    to the vector's, ALPHA to ``alpha``; a layer the model lacks is an input error."""
    parts = spec.split(":")
    try:
        if len(parts) > 3 or not parts[0]:
            raise ValueError
        at = int(parts[1]) if len(parts) > 1 and parts[1] else None
        a = float(parts[2]) if len(parts) > 2 and parts[2] else alpha
    except ValueError:
        _fail(f"--add {spec!r}: use TRAIT_OR_VECTOR_ID[:LAYER[:ALPHA]], e.g. agreeableness:16:0.1", EXIT_INPUT)
    vec = _named_vector(store, lm.key, parts[0], at, method)
    at = vec["layer"] if at is None else at
    if not 0 <= at < lm.n_layers:
        _fail(f"--add {spec!r}: layer {at}; the model has layers 0-{lm.n_layers - 1}", EXIT_INPUT)
    return vec, at, a


def _check_positions(positions: str) -> None:
    """``--positions``, or an input error saying what is accepted."""
    from traitlens.pipeline.steer.steering import check_positions

    try:
        check_positions(positions)
    except ValueError as e:
        _fail(f"--positions: {e}", EXIT_INPUT)


def _label(vec: dict) -> str:
    return f"{vec['trait']} {vec['method']} ({vec['vector_id']}, extracted at L{vec['layer']})"


def _pushes_for(store, lm, specs: list[str], trait, layer, method, vector_id, alpha, norm, site, positions,
                seqs: list[list[int]]) -> list:
    """The pushes ``steer`` applies: one per ``--add TRAIT_OR_VECTOR_ID[:LAYER[:ALPHA]]``, else the
    one ``--trait`` / ``--vector-id`` names. Each push's scale is the mean token norm of its
    layer over every prompt of the run (one unit for the whole batch)."""
    import torch

    from traitlens.pipeline.model.hooks import pad_batch, pad_token_id
    from traitlens.pipeline.steer.steering import Push, mean_token_norm

    wanted = [_parse_add(store, lm, spec, alpha, method) for spec in specs]
    if not specs:
        if not (trait or vector_id):
            _fail("give --trait, --vector-id or one --add per vector", EXIT_INPUT)
        vec = _pick_vector(store, trait, lm.key, layer, method, vector_id)
        wanted.append((vec, vec["layer"] if layer is None else layer, alpha))
    ids, mask = pad_batch(seqs, pad_token_id(lm.tokenizer), "right", torch.device("cpu"))
    out = []
    for vec, at, a in wanted:
        if not 0 <= at < lm.n_layers:
            _fail(f"layer {at} of {vec['trait']}: the model has layers 0-{lm.n_layers - 1}", EXIT_INPUT)
        scale = mean_token_norm(lm, at, ids, mask, norm)
        out.append(Push(vec["vector"], at, a, scale, site, positions, label=_label(vec)))
    return out


def _condition(store, lm, name: str, threshold: float | None, seqs: list[list[int]], prompts: list[str]) -> list[bool]:
    """Which prompts pass the condition vector ``name`` (a trait's pick or a vector id): their
    projection, pooled as the vector's rows were, above the threshold (learned on held-out data
    unless given). Prints the condition and each prompt's projection."""
    from traitlens.pipeline.extract.conditions import condition_threshold
    from traitlens.pipeline.steer.steering import condition_scores

    vec = _named_vector(store, lm.key, name)
    if threshold is None:
        c = condition_threshold(store, vec)
        threshold = c["threshold"]
        how = (f"learned on {c['split']} ({c['n_pos']} positives, {c['n_neg']} negatives): best F1 {c['f1']:.3f}, "
               f"precision {c['precision']:.3f}, recall {c['recall']:.3f}")
    else:
        how = "given"
    try:
        scores = condition_scores(lm, vec["vector"], vec["layer"], vec["pooling"], seqs)
    except ValueError as e:
        _fail(f"--condition {name}: {e}", EXIT_INPUT)
    click.echo(f"condition: {vec['trait']} {vec['method']} L{vec['layer']} ({vec['vector_id']}, {vec['pooling']} "
               f"pooling), threshold {threshold:.4f} ({how})")
    for p, s in zip(prompts, scores):
        click.echo(f"  {s:+.4f} {'>' if s > threshold else '<='} threshold: {'steer' if s > threshold else 'leave'} "
                   f"{p[:70]!r}")
    return [bool(s > threshold) for s in scores]


@cli.command()
@click.argument("prompt", required=False)
@click.option("--trait", default=None, help="The vector's trait (its best-ranked vector) [or --add / --vector-id].")
@click.option("--add", "adds", multiple=True, metavar="TRAIT_OR_ID[:LAYER[:ALPHA]]",
              help="A push; repeat for several at once (they add up). LAYER defaults to the vector's, ALPHA to --alpha.")
@click.option("--alpha", type=float, default=0.25, show_default=True,
              help="Strength in units of the layer's mean token norm; negative pushes away.")
@click.option("--file", "file_", type=click.Path(exists=True, dir_okay=False),
              help="One prompt a line, generated as left-padded batches (the same replies as one at a time).")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--model", default=None)
@click.option("--layer", type=click.IntRange(min=0), default=None)
@click.option("--method", default=None)
@click.option("--vector-id", default=None)
@click.option("--site", type=click.Choice(NAMED_SITES), default="resid", show_default=True,
              help="Where the push is added (or the direction ablated): the block's output or its attention / MLP "
                   "sub-module's.")
@click.option("--positions", default="all", show_default=True,
              help=" | ".join(POSITIONS) + " | A:B (token positions A to B-1 of each sequence).")
@click.option("--norm", type=click.Choice(NORMS), default="typical", show_default=True,
              help="alpha's unit: the mean token norm without massive-activation tokens (typical) or over all.")
@click.option("--condition", default=None, metavar="TRAIT_OR_ID",
              help="Conditional steering: push only prompts whose projection on this vector passes its threshold.")
@click.option("--condition-threshold", type=float, default=None,
              help="[default: learned on the condition trait's held-out split, best F1; stored in `conditions`]")
@click.option("--ablate", is_flag=True, help="Project the direction out instead of adding it.")
@click.option("--all-layers", is_flag=True, help="With --ablate: at every block, not only the vector's layer.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=40, show_default=True)
@click.option("--chat/--no-chat", default=None)
@click.pass_context
def steer(ctx, prompt, trait, adds, alpha, file_, batch_size, model, layer, method, vector_id, site, positions, norm,
          condition, condition_threshold, ablate, all_layers, max_new_tokens, chat):
    """Generate with and without the vector(s) and print both."""
    from traitlens.pipeline.model.generation import greedy_batch
    from traitlens.pipeline.steer.steering import ablation, generate_batch
    from traitlens.store import Store

    _check_positions(positions)
    prompts = [prompt] if prompt else []
    if file_:
        prompts += [l for l in Path(file_).read_text().splitlines() if l.strip()]
    if not prompts:
        _fail("give a PROMPT or --file", EXIT_INPUT)
    store = Store.open(ctx.obj["store"])
    lm = _load(model)
    seqs = [_prompt_ids(lm, p, chat) for p in prompts]
    dec = lambda x: lm.tokenizer.decode(x, skip_special_tokens=True)  # noqa: E731
    if ablate:
        if adds or condition:
            _fail("--ablate takes one vector (--trait or --vector-id), without --add or --condition", EXIT_INPUT)
        vec = _pick_vector(store, trait, lm.key, layer, method, vector_id)
        where = None if all_layers else [vec["layer"] if layer is None else layer]
        click.echo(f"vector {vec['vector_id']} ({vec['trait']}, {vec['method']}): ablated at {site} of "
                   + ("every layer" if all_layers else f"layer {where[0]}"))
    else:
        items = _pushes_for(store, lm, list(adds), trait, layer, method, vector_id, alpha, norm, site, positions, seqs)
        click.echo("applied " + "; ".join(p.describe() for p in items))
    passes = [True] * len(seqs)
    if condition:
        passes = _condition(store, lm, condition, condition_threshold, seqs, prompts)
    for b in range(0, len(seqs), batch_size):
        chunk = seqs[b:b + batch_size]
        plain = greedy_batch(lm, chunk, max_new_tokens)
        if ablate:
            with ablation(lm, vec["vector"], where, site):
                steered = greedy_batch(lm, chunk, max_new_tokens)
        else:
            steered = generate_batch(lm, chunk, [p.only(passes[b:b + len(chunk)]) for p in items], max_new_tokens)
        for k, (u, st) in enumerate(zip(plain, steered)):
            head = f"\n=== {prompts[b + k]!r} ===" if len(prompts) > 1 else ""
            click.echo(f"{head}\n--- unsteered ---\n{dec(u)}\n\n--- steered"
                       + ("" if passes[b + k] else " (condition not met: unsteered)") + f" ---\n{dec(st)}")


@cli.command()
@click.option("--trait", required=True)
@click.option("--steering", "do_steering", is_flag=True, required=True, help="Run the causal steering evaluation.")
@click.option("--kind", type=click.Choice(EVALUATION_KINDS), default="persona",
              show_default=True, help="persona: Yes-No log-odds on trait statements; refusal: P(refusal opening) on "
              "harmless requests; refusal_first_token: P(first reply token starts a refusal opening); expression "
              "(any trait): how much replies to neutral prompts express the trait, read by the unsteered model on "
              "the trait's detection vector, 0 = held-out negatives, 1 = positives.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=32, show_default=True,
              help="Reply length for --kind expression.")
@click.option("--methods", "--method", "methods", default="mean_diff", show_default=True,
              help="Comma list of methods to sweep, or all (every stored method but random).")
@click.option("--layers", default=None, help="[default: the 5 layers around the detection pick's layer]; all or 8-16,20")
@click.option("--alphas", default="0.05,0.1,0.25,0.5", show_default=True,
              help="Strengths, in units of the layer's mean token norm (--norm).")
@click.option("--n", "n_texts", type=click.IntRange(min=1), default=40, show_default=True, help="Held-out prompts to measure on.")
@click.option("--norm", type=click.Choice(NORMS), default="typical", show_default=True,
              help="alpha's unit: the mean token norm without massive-activation tokens (typical) or over all.")
@click.option("--prompts", "prompts_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Neutral prompts for the damage measures (KL, replies), one a line [default: the project's own set].")
@click.option("--kl-budget", type=click.FloatRange(min=0), default=KL_BUDGET, show_default=True,
              help="The pick is the largest shift whose mean KL on the neutral prompts stays within this (nats).")
@click.option("--trials", type=click.IntRange(min=1), default=TRIALS, show_default=True,
              help=f"Settings Optuna measures when the grid has more than {GRID_MAX}.")
@click.option("--reply-tokens", type=click.IntRange(min=0), default=REPLY_TOKENS, show_default=True,
              help="Length of the steered replies to neutral prompts whose perplexity and distinct-2 are measured "
                   "(0: skip; --kind expression reads its own replies).")
@click.option("--judge", "judge_model", default=None,
              help="A local chat model (path, or default) that rates each steered reply for the trait, 0-100.")
@click.option("--description", default=None, help="The trait in words, for the judge's rubric [default: its name].")
@click.option("--no-random", is_flag=True, help="Skip the random direction's evaluation (the floor).")
@click.option("--plot", type=click.Path(dir_okay=False), default=None,
              help="PNG of the Pareto plot, effect against alpha and steerability [default: evaluate-<trait>.png].")
@click.option("--add", "adds", multiple=True, metavar="TRAIT_OR_ID[:LAYER[:ALPHA]]",
              help="Instead of a sweep, measure these pushes applied together (repeat for several; ALPHA defaults "
                   "to 0.25), each alone and as random directions; stored in steering_together.")
@click.option("--site", type=click.Choice(NAMED_SITES), default="resid", show_default=True,
              help="With --add: where the pushes are added.")
@click.option("--positions", default="all", show_default=True,
              help="With --add: " + " | ".join(POSITIONS) + " | A:B.")
@click.option("--model", default=None)
@click.pass_context
def evaluate(ctx, trait, do_steering, kind, max_new_tokens, methods, layers, alphas, n_texts, norm, prompts_file,
             kl_budget, trials, reply_tokens, judge_model, description, no_random, plot, adds, site, positions, model):
    """Sweep method x layer x strength: how much does steering along each vector move behaviour,
    with what interval, and for how much damage (KL on neutral prompts, the steered replies'
    perplexity and repetition)? Small grids run whole, larger ones through Optuna; the random
    direction is measured at the front and the pick; the Pareto front of (shift, KL) and the pick
    within --kl-budget are printed and plotted. With --add, the given pushes are measured
    together instead (each alone beside them, and the random floor)."""
    from traitlens.pipeline.model.layers import parse_layers
    from traitlens.pipeline.steer.plots import steering_figure
    from traitlens.pipeline.steer.records import front_line, summary_lines
    from traitlens.pipeline.steer.search import around, evaluator_for, stored_methods, sweep
    from traitlens.queries import StoreSQL
    from traitlens.store import Store, file_stem
    from traitlens.store.store import new_run_id

    try:
        alpha_list = [float(a) for a in alphas.split(",") if a.strip()]
    except ValueError:
        _fail(f"--alphas {alphas!r}: give a comma list of numbers, e.g. 0.1,0.25", EXIT_INPUT)
    if not alpha_list:
        _fail("--alphas: give at least one strength", EXIT_INPUT)
    neutral = None
    if prompts_file:
        neutral = [l.strip() for l in Path(prompts_file).read_text().splitlines() if l.strip()]
        if not neutral:
            _fail(f"--prompts {prompts_file}: no prompts (one a line)", EXIT_INPUT)
    out_png = Path(_output(ctx, plot or f"evaluate-{file_stem(trait, 'trait')}.png", "--plot"))
    store = Store.open(ctx.obj["store"])
    lm = _load(model)
    with StoreSQL(store) as q:
        stored = stored_methods(q, trait, lm.key)
    method_list = stored if methods.strip() == "all" else [m.strip() for m in methods.split(",") if m.strip()]
    unknown = [m for m in method_list if m not in stored]
    if unknown or not method_list:
        _fail(f"--methods {methods!r}: {trait!r} has no {', '.join(unknown) or 'methods'} vectors on {lm.key}; "
              f"stored: {', '.join(stored) or 'none'}", EXIT_INPUT)
    judge = None
    if judge_model:
        from traitlens.pipeline.steer.judge import Judge

        same = judge_model == (model or "default") or judge_model == lm.path  # rated outside any steering
        judge = Judge(lm if same else _load(judge_model), trait, description)
    evaluator, what = evaluator_for(store, lm, trait, kind, n_texts, norm, neutral, max_new_tokens, judge, reply_tokens)
    click.echo(what)
    if adds:
        if layers or methods != "mean_diff":
            _fail("--add measures the given pushes; leave out --layers and --methods (they choose a sweep)", EXIT_INPUT)
        return _evaluate_together(store, lm, trait, evaluator, list(adds), site, positions, not no_random, out_png)
    layer_list = (parse_layers(layers, lm.n_layers) if layers else
                  around(_pick_vector(store, trait, lm.key, None, None, None)["layer"], lm.n_layers))
    res = sweep(store, trait, evaluator, method_list, layer_list, alpha_list, kl_budget, trials,
                random_floor=not (no_random or "random" in method_list), log=lambda m: click.echo(m, err=True))
    run_id = new_run_id("evaluate")
    stored, samples = res.save(store, run_id)
    _print_sweep(res, kind, len(evaluator.texts), bool(judge))
    if evaluator.rejected:
        click.echo(f"judge: {len(evaluator.rejected)} answers rejected, e.g. {evaluator.rejected[0]}", err=True)
    click.echo("\n" + front_line(res.rows))
    with StoreSQL(store) as q:
        for line in summary_lines(q, trait, kind, res.rows, kl_budget):
            click.echo(line)
    click.echo(f"search: {res.search}")
    steering_figure(res.rows, samples, trait, out_png, kl_budget, kind)
    click.echo(f"plot: {out_png}")
    click.echo(f"stored {len(stored)} rows in the steering table and {len(samples)} in steering_samples (run {run_id}); "
               f"`traitlens rank --trait {trait} --by steering`")


def _evaluate_together(store, lm, trait, evaluator, specs, site, positions, random_floor, out_png) -> None:
    """``evaluate --add ...``: the pushes measured together, alone and as random directions;
    printed, plotted and stored in ``steering_together``."""
    from traitlens.pipeline.steer.plots import together_figure
    from traitlens.pipeline.steer.together import additivity_line, floor_line, measure_together, together_records
    from traitlens.store.store import new_run_id

    _check_positions(positions)
    wanted = [_parse_add(store, lm, spec, 0.25, None) for spec in specs]
    items = [evaluator.push(vec["vector"], at, a, site, positions, _label(vec)) for vec, at, a in wanted]
    click.echo("measuring together: " + "; ".join(p.describe() for p in items))
    rows = measure_together(evaluator, items, random_floor, log=lambda m: click.echo(m, err=True))
    short = [f"{v['trait']} L{at} {a:+g}" for v, at, a in wanted]
    names = ([" + ".join(short)] + (short if len(short) > 1 else [])  # the parts in measure_together's order
             + ([" + ".join(f"random L{at} {a:+g}" for _, at, a in wanted)] if random_floor else []))
    width = max(len(n) for n in names)
    click.echo(f"{'part':<9} {'pushes':<{width}} {'shift':>7} {'95% CI':>17} {'wrong way':>9} {'KL nats':>8} "
               f"{'ppl':>6} {'dist-2':>6}   ({evaluator.kind}, n={len(evaluator.texts)})")
    num = lambda x, f: "-" if x is None else format(x, f)  # noqa: E731
    for r, what in zip(rows, names):
        click.echo(f"{r['part']:<9} {what:<{width}} {r['shift']:>+7.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}] "
                   f"{r['wrong_way']:>9.0%} {r['kl']:>8.4f} {num(r.get('perplexity'), '.1f'):>6} "
                   f"{num(r.get('distinct2'), '.2f'):>6}")
    if rows[0].get("perplexity_unsteered") is not None:
        click.echo(f"unsteered replies: perplexity {rows[0]['perplexity_unsteered']:.1f}, distinct-2 "
                   f"{rows[0]['distinct2_unsteered']:.2f}")
    for line in (additivity_line(rows), floor_line(rows)):
        if line:
            click.echo(line)
    run_id = new_run_id("evaluate")
    records = together_records(trait, rows, items, [v for v, _, _ in wanted], run_id)
    with store.lock("evaluate --add"):
        store.append("steering_together", records)
    together_figure(rows, trait, out_png, evaluator.kind, [f"{r['part']}: {n}" for r, n in zip(rows, names)])
    click.echo(f"plot: {out_png}")
    click.echo(f"stored {len(records)} rows in steering_together (combination {records[0]['combination_id']}, "
               f"run {run_id})")


def _print_sweep(res, kind: str, n: int, judged: bool) -> None:
    """One line per measured setting, the trait's rows then the floor's."""
    click.echo(f"{'method':<10} {'layer':>5} {'alpha':>6} {'unsteered':>10} {'+v':>8} {'-v':>8} {'shift':>7} "
               f"{'95% CI':>17} {'wrong way':>9} {'KL nats':>8} {'ppl':>7} {'dist-2':>6}"
               + (f" {'judge':>6}" if judged else "") + f"   ({kind}, n={n})")
    num = lambda x, w, f: f"{'-':>{w}}" if x is None else f"{x:>{w}{f}}"  # noqa: E731
    for r in sorted(res.rows, key=lambda r: (r["method"] == "random", r["method"], r["layer"], r["alpha"])):
        ci = f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]"
        click.echo(f"{r['method']:<10} {r['layer']:>5} {r['alpha']:>6.2f} {r['unsteered']:>10.3f} {r['plus']:>8.3f} "
                   f"{num(r['minus'], 8, '.3f')} {r['shift']:>7.3f} {ci:>17} {r['wrong_way']:>9.0%} {r['kl']:>8.4f} "
                   f"{num(r.get('perplexity'), 7, '.1f')} {num(r.get('distinct2'), 6, '.2f')}"
                   + (f" {num(r.get('judge'), 6, '.1f')}" if judged else ""))
    if res.rows and res.rows[0].get("perplexity_unsteered") is not None:
        u = res.rows[0]
        click.echo(f"unsteered replies: perplexity {u['perplexity_unsteered']:.1f}, distinct-2 "
                   f"{u['distinct2_unsteered']:.2f}" + (f", judge {u['judge_unsteered']:.1f}"
                                                        if judged and u.get("judge_unsteered") is not None else ""))
