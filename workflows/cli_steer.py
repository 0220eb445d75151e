"""CLI verbs that run the model with a vector: ``monitor``, ``steer``, ``evaluate``, ``lm-eval``."""

from __future__ import annotations

from pathlib import Path

import click

from traitlens.pipeline.steer.settings import GRID_MAX, REPLY_TOKENS, TRIALS  # (no torch at import)
from traitlens.queries.budget import KL_BUDGET
from traitlens.store.finite import check_float
from traitlens.store.vocabulary import EVALUATION_KINDS, KL_MEASURES, NAMED_SITES, NORMS, POSITIONS

from .cli_base import EXIT_INPUT, FiniteFloat, FiniteFloats, _fail, _output, cli


def _pick_vector(store, trait: str, model_key: str, layer: int | None, method: str | None, vector_id: str | None):
    """The vector to use: by id; else the one :mod:`traitlens.queries.selection`'s rule picks
    (within ``layer`` / ``method`` when given) — the same one ``rank`` lists first."""
    from traitlens.queries import StoreSQL
    from traitlens.queries.selection import chosen_vector

    with StoreSQL(store) as q:
        v = chosen_vector(q, trait, vector_id, model_key=model_key, layer=layer, method=method)
    if v is None and vector_id:
        _fail(f"--vector-id {vector_id}: no vector has that id; `traitlens vectors` lists the stored ids (with their "
              "trait, layer and method)", EXIT_INPUT)
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
    from traitlens.queries.selection import named_vector

    with StoreSQL(store) as q:
        v = named_vector(q, name, model_key, layer, method)
    is_id = v is not None and v["vector_id"] == name
    return (_pick_vector(store, None, model_key, None, None, name) if is_id
            else _pick_vector(store, name, model_key, layer, method, None))


def _bundle_vector(path: str, vector_id: str | None, layer: int | None, method: str | None):
    """``(bundle, its vector)`` for ``--vector DIR``: every file's hash checked first (exit 2 naming a
    changed one); among several vectors ``--vector-id`` / ``--layer`` / ``--method`` choose (else
    the bundle's first, its pick)."""
    from traitlens.workflows.bundles import load

    b = load(path)
    return b, b.choose(vector_id, layer, method)[0]


def _check_bundle_model(vec: dict, lm) -> None:
    from traitlens.pipeline.extract.bundle import model_mismatch

    if vec["model_key"] != lm.key:
        _fail(f"vector {vec['vector_id']}: {model_mismatch(vec['model_key'], lm.key)}", EXIT_INPUT)


def _load(model, quiet=False, option: str = "--model"):
    from traitlens.pipeline.model.loading import load_model

    return load_model(model, log=(lambda *a: None) if quiet else (lambda m: click.echo(m, err=True)), option=option)


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
@click.option("--threshold", type=FiniteFloat(), default=None, help="Commitment threshold [default: the vector's, learned on train].")
@click.option("--velocity-tol", type=FiniteFloat(min=0), default=None,
              help="|velocity| counted as settled [default: half the generated tokens' velocity std].")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="PNG [default: monitor-<trait>.png].")
@click.option("--keep", is_flag=True, help="Append the trajectories to the store's trajectories table (SQL).")
@click.option("--add", "adds", multiple=True, metavar="TRAIT_OR_ID[:LAYER[:ALPHA]]",
              help="Steer while monitoring: a push (as `steer --add`); repeat for several.")
@click.option("--alpha", type=FiniteFloat(float32=True), default=0.25, show_default=True, help="The strength of an --add without one.")
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
        a = parts[2] if len(parts) > 2 and parts[2] else alpha
    except ValueError:
        _fail(f"--add {spec!r}: use TRAIT_OR_VECTOR_ID[:LAYER[:ALPHA]], e.g. agreeableness:16:0.1", EXIT_INPUT)
    a = check_float(a, f"--add {spec!r}: ALPHA", float32=True)  # the rule of every float option
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
                seqs: list[list[int]], chosen: dict | None = None) -> list:
    """The pushes ``steer`` applies: one per ``--add TRAIT_OR_VECTOR_ID[:LAYER[:ALPHA]]``, else the
    one ``--trait`` / ``--vector-id`` names (or ``chosen``: a bundle's vector). Each push's scale
    is the mean token norm of its layer over every prompt of the run (one unit for the whole batch)."""
    import torch

    from traitlens.pipeline.model.hooks import pad_batch, pad_token_id
    from traitlens.pipeline.steer.steering import Push, mean_token_norm

    wanted = [_parse_add(store, lm, spec, alpha, method) for spec in specs]
    if not specs:
        if not (trait or vector_id or chosen):
            _fail("give --trait, --vector-id, --vector DIR or one --add per vector", EXIT_INPUT)
        vec = chosen if chosen is not None else _pick_vector(store, trait, lm.key, layer, method, vector_id)
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
@click.option("--alpha", type=FiniteFloat(float32=True), default=0.25, show_default=True,
              help="Strength in units of the layer's mean token norm; negative pushes away.")
@click.option("--file", "file_", type=click.Path(exists=True, dir_okay=False),
              help="One prompt a line, generated as left-padded batches (the same replies as one at a time).")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--model", default=None)
@click.option("--layer", type=click.IntRange(min=0), default=None)
@click.option("--method", default=None)
@click.option("--vector-id", default=None)
@click.option("--vector", "vector_dir", type=click.Path(), default=None, metavar="DIR",
              help="A bundle (`traitlens bundle`): steer with its vector, its files' hashes checked first "
                   "(--vector-id / --layer / --method choose among several; --model defaults to the recorded one).")
@click.option("--site", type=click.Choice(NAMED_SITES), default="resid", show_default=True,
              help="Where the push is added (or the direction ablated): the block's output or its attention / MLP "
                   "sub-module's.")
@click.option("--positions", default="all", show_default=True,
              help=" | ".join(POSITIONS) + " | A:B (token positions A to B-1 of each sequence).")
@click.option("--norm", type=click.Choice(NORMS), default="typical", show_default=True,
              help="alpha's unit: the mean token norm without massive-activation tokens (typical) or over all.")
@click.option("--condition", default=None, metavar="TRAIT_OR_ID",
              help="Conditional steering: push only prompts whose projection on this vector passes its threshold.")
@click.option("--condition-threshold", type=FiniteFloat(), default=None,
              help="[default: learned on the condition trait's held-out split, best F1; stored in `conditions`]")
@click.option("--ablate", is_flag=True, help="Project the direction out instead of adding it.")
@click.option("--all-layers", is_flag=True, help="With --ablate: at every block, not only the vector's layer.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=40, show_default=True)
@click.option("--chat/--no-chat", default=None)
@click.pass_context
def steer(ctx, prompt, trait, adds, alpha, file_, batch_size, model, layer, method, vector_id, site, positions, norm,
          condition, condition_threshold, ablate, all_layers, max_new_tokens, chat, vector_dir=None):
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
    chosen = None
    if vector_dir:  # a bundle: its vector, checked, instead of the store's
        if adds:
            _fail("--vector DIR steers with the bundle's vector; leave out --add", EXIT_INPUT)
        bundle, chosen = _bundle_vector(vector_dir, vector_id, layer, method)
        model = model if model is not None else bundle.model_spec()
    store = Store.open(ctx.obj["store"]) if chosen is None or condition else None
    lm = _load(model)
    if chosen is not None:
        _check_bundle_model(chosen, lm)
    seqs = [_prompt_ids(lm, p, chat) for p in prompts]
    dec = lambda x: lm.tokenizer.decode(x, skip_special_tokens=True)  # noqa: E731
    if ablate:
        if adds or condition:
            _fail("--ablate takes one vector (--trait or --vector-id), without --add or --condition", EXIT_INPUT)
        vec = chosen if chosen is not None else _pick_vector(store, trait, lm.key, layer, method, vector_id)
        where = None if all_layers else [vec["layer"] if layer is None else layer]
        click.echo(f"vector {vec['vector_id']} ({vec['trait']}, {vec['method']}): ablated at {site} of "
                   + ("every layer" if all_layers else f"layer {where[0]}"))
    else:
        items = _pushes_for(store, lm, list(adds), trait, layer, method, vector_id, alpha, norm, site, positions, seqs,
                            chosen)
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
@click.option("--trait", default=None, help="The trait to evaluate [or --vector DIR: the bundle's].")
@click.option("--steering", "do_steering", is_flag=True, required=True, help="Run the causal steering evaluation.")
@click.option("--kind", type=click.Choice(EVALUATION_KINDS), default="persona",
              show_default=True, help="persona: Yes-No log-odds on trait statements; refusal: P(refusal opening) on "
              "harmless requests; refusal_first_token: P(first reply token starts a refusal opening); expression "
              "(any trait): how much replies to neutral prompts express the trait, read by the unsteered model on "
              "the trait's detection vector, 0 = held-out negatives, 1 = positives; refusal_rate (heretic's figure): "
              "the share of greedy replies to held-out harmful requests that refuse (refusal markers, and the "
              "--judge where given), shown as refusals per 100, with the KL read on held-out harmless requests.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=32, show_default=True,
              help="Reply length for --kind expression and refusal_rate.")
@click.option("--kl", "kl_measure", type=click.Choice(KL_MEASURES), default=KL_MEASURES[0], show_default=True,
              help="The KL every damage figure reports: the mean over every position of each neutral prompt, or at "
                   "the reply's first token only (heretic's first-token KL).")
@click.option("--refusal-markers", type=click.Path(exists=True, dir_okay=False), default=None,
              help="--kind refusal_rate: the phrases (one a line, matched case-blind anywhere in a reply) that make a "
                   "reply a refusal, replacing the built-in list.")
@click.option("--ablate", is_flag=True,
              help="Also project each swept vector out of the residual stream (directional ablation, every block; "
                   "what `export --operation ablate` writes), beside the random direction ablated the same way.")
@click.option("--capability", "capability_tasks", default=None, metavar="TASKS",
              help="lm-evaluation-harness tasks (comma list) run unsteered and at every measured setting; their "
                   "changes, with 95% intervals, go to the capability table (needs traitlens[eval]).")
@click.option("--capability-include", "capability_include", multiple=True, type=click.Path(file_okay=False),
              help="A folder of lm-eval task YAML files (repeat for several); a task whose dataset is a local "
                   "json/jsonl file runs offline.")
@click.option("--capability-limit", type=click.IntRange(min=1), default=None,
              help="Documents per lm-eval task (lm-eval's --limit) [default: all].")
@click.option("--capability-budget", type=FiniteFloat(min=0), default=None,
              help="The pick must also keep the worst fall of any --capability metric within this (the metric's "
                   "own units) [default: no limit; the fall is a third Pareto objective either way].")
@click.option("--methods", "--method", "methods", default="mean_diff", show_default=True,
              help="Comma list of methods to sweep, or all (every stored method but random).")
@click.option("--layers", default=None, help="[default: the 5 layers around the detection pick's layer]; all or 8-16,20")
@click.option("--alphas", type=FiniteFloats(float32=True), default="0.05,0.1,0.25,0.5", show_default=True,
              help="Strengths, in units of the layer's mean token norm (--norm).")
@click.option("--n", "n_texts", type=click.IntRange(min=1), default=40, show_default=True, help="Held-out prompts to measure on.")
@click.option("--norm", type=click.Choice(NORMS), default="typical", show_default=True,
              help="alpha's unit: the mean token norm without massive-activation tokens (typical) or over all.")
@click.option("--prompts", "prompts_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Neutral prompts for the damage measures (KL, replies), one a line [default: the project's own set].")
@click.option("--kl-budget", type=FiniteFloat(min=0), default=KL_BUDGET, show_default=True,
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
@click.option("--vector", "vector_dir", type=click.Path(), default=None, metavar="DIR",
              help="A bundle (`traitlens bundle`): evaluate its vectors (its hashes checked first; its vectors and "
                   "prompts are added to the store, created if absent; --model defaults to the recorded one).")
@click.pass_context
def evaluate(ctx, trait, do_steering, kind, max_new_tokens, kl_measure, refusal_markers, ablate, capability_tasks,
             capability_include, capability_limit, capability_budget, methods, layers, alphas, n_texts, norm,
             prompts_file, kl_budget, trials, reply_tokens, judge_model, description, no_random, plot, adds, site,
             positions, model, vector_dir=None):
    """Sweep method x layer x strength: how much does steering along each vector move behaviour,
    with what interval, and for how much damage (KL on neutral prompts, the steered replies'
    perplexity and repetition, and with --capability the lm-eval tasks' scores)? Small grids run
    whole, larger ones through Optuna; the random direction is measured at the front and the pick;
    the Pareto front of (shift, KL) and the pick within --kl-budget are printed and plotted, with
    the pick's side effects on the --capability tasks beside random's. With --ablate each vector
    is also projected out; --kind refusal_rate prints refusals per 100 against KL, adding and
    ablating. With --add, the given pushes are measured together instead (each alone beside them,
    and the random floor)."""
    from traitlens.pipeline.model.layers import parse_layers
    from traitlens.pipeline.steer.plots import steering_figure
    from traitlens.pipeline.steer.records import front_line, refusal_lines, summary_lines
    from traitlens.pipeline.steer.search import around, evaluator_for, stored_methods, sweep
    from traitlens.queries import StoreSQL
    from traitlens.store import Store, file_stem
    from traitlens.store.store import new_run_id

    cells = None
    if vector_dir:  # a bundle: its vectors (and prompts) join the store, and the sweep measures them
        from traitlens.workflows.bundles import adopt, load

        if adds or layers:
            _fail("--vector DIR measures the bundle's vectors at their layers; leave out --add and --layers", EXIT_INPUT)
        bundle = load(vector_dir)
        if trait not in (None, bundle.trait):
            _fail(f"--trait {trait}: the bundle {vector_dir} holds vectors of {bundle.trait!r}", EXIT_INPUT)
        trait, model = bundle.trait, model if model is not None else bundle.model_spec()
        cells = {(r["method"], int(r["layer"])): r for r in bundle.records}
    elif not trait:
        _fail("give --trait, or --vector DIR (a bundle)", EXIT_INPUT)
    neutral = None
    if prompts_file:
        neutral = [l.strip() for l in Path(prompts_file).read_text().splitlines() if l.strip()]
        if not neutral:
            _fail(f"--prompts {prompts_file}: no prompts (one a line)", EXIT_INPUT)
    out_png = Path(_output(ctx, plot or f"evaluate-{file_stem(trait, 'trait')}.png", "--plot"))
    if cells is not None:  # (once every option is checked)
        adopt(ctx.obj["store"], bundle)
    store = Store.open(ctx.obj["store"])
    lm = _load(model)
    with StoreSQL(store) as q:
        stored = stored_methods(q, trait, lm.key)
    method_list = stored if methods.strip() == "all" else [m.strip() for m in methods.split(",") if m.strip()]
    if cells is not None:
        _check_bundle_model(next(iter(cells.values())), lm)
        if ctx.get_parameter_source("methods") == click.core.ParameterSource.DEFAULT:
            method_list = sorted({m for m, _ in cells})
    unknown = [m for m in method_list if m not in stored]
    if unknown or not method_list:
        _fail(f"--methods {methods!r}: {trait!r} has no {', '.join(unknown) or 'methods'} vectors on {lm.key}; "
              f"stored: {', '.join(stored) or 'none'}", EXIT_INPUT)
    markers = None
    if refusal_markers:
        if kind != "refusal_rate":
            _fail("--refusal-markers is for --kind refusal_rate", EXIT_INPUT)
        markers = [l.strip().lower() for l in Path(refusal_markers).read_text().splitlines() if l.strip()]
        if not markers:
            _fail(f"--refusal-markers {refusal_markers}: no phrases (one a line)", EXIT_INPUT)
    tasks = [t.strip() for t in (capability_tasks or "").split(",") if t.strip()]
    if (capability_include or capability_limit or capability_budget is not None) and not tasks:
        _fail("--capability-include, --capability-limit and --capability-budget go with --capability TASKS",
              EXIT_INPUT)
    judge = None
    if judge_model:
        from traitlens.pipeline.steer.judge import Judge

        same = judge_model == (model or "default") or judge_model == lm.path  # rated outside any steering
        judge = Judge(lm if same else _load(judge_model, option="--judge"), trait, description)
    if adds and (tasks or ablate):
        _fail(f"{'--capability' if tasks else '--ablate'} goes with a sweep, not with --add", EXIT_INPUT)
    capability = None
    if tasks:
        from traitlens.pipeline.steer.capability import Capability

        capability = Capability(lm, tasks, list(capability_include), capability_limit)
        click.echo(f"capability: {capability.describe()}, unsteered and at every setting")
    evaluator, what = evaluator_for(store, lm, trait, kind, n_texts, norm, neutral, max_new_tokens, judge, reply_tokens,
                                    kl=kl_measure, markers=markers, capability=capability)
    click.echo(what)
    if adds:
        if layers or methods != "mean_diff":
            _fail("--add measures the given pushes; leave out --layers and --methods (they choose a sweep)", EXIT_INPUT)
        return _evaluate_together(store, lm, trait, evaluator, list(adds), site, positions, not no_random, out_png)
    layer_list = (sorted({l for _, l in cells}) if cells is not None else parse_layers(layers, lm.n_layers) if layers
                  else around(_pick_vector(store, trait, lm.key, None, None, None)["layer"], lm.n_layers))
    res = sweep(store, trait, evaluator, method_list, layer_list, alphas, kl_budget, trials,
                random_floor=not (no_random or "random" in method_list), log=lambda m: click.echo(m, err=True),
                ablate=ablate, capability_budget=capability_budget, vectors=cells)
    run_id = new_run_id("evaluate")
    stored, samples = res.save(store, run_id)
    _print_sweep(res, kind, len(evaluator.texts), bool(judge), kl_measure)
    if evaluator.rejected:
        click.echo(f"judge: {len(evaluator.rejected)} answers rejected, e.g. {evaluator.rejected[0]}", err=True)
    for line in refusal_lines(res.rows):
        click.echo(line)
    click.echo("\n" + front_line(res.rows))
    with StoreSQL(store) as q:
        for line in summary_lines(q, trait, kind, res.rows, kl_budget, capability_budget):
            click.echo(line)
    click.echo(f"search: {res.search}")
    steering_figure(res.rows, samples, trait, out_png, kl_budget, kind)
    click.echo(f"plot: {out_png}")
    n_cap = len(res.capability_records(run_id)) if capability else 0
    click.echo(f"stored {len(stored)} rows in the steering table and {len(samples)} in steering_samples"
               + (f", {n_cap} in capability ({capability.runs} lm-eval runs)" if capability else "")
               + f" (run {run_id}); `traitlens rank --trait {trait} --by steering`")


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
               f"{'ppl':>6} {'dist-2':>6}   ({evaluator.kind}, n={len(evaluator.texts)}; KL: {evaluator.kl})")
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


def _print_sweep(res, kind: str, n: int, judged: bool, kl_measure: str = "all-positions") -> None:
    """One line per measured setting, the trait's rows then the floor's (ablations last); the
    worst capability fall where lm-eval tasks were run."""
    capable = any(r.get("capability_fall") is not None for r in res.rows)
    click.echo(f"{'method':<10} {'layer':>5} {'alpha':>6} {'unsteered':>10} {'+v':>8} {'-v':>8} {'shift':>7} "
               f"{'95% CI':>17} {'wrong way':>9} {'KL nats':>8} {'ppl':>7} {'dist-2':>6}"
               + (f" {'judge':>6}" if judged else "") + (f" {'cap.fall':>8}" if capable else "")
               + f"   ({kind}, n={n}; KL: {kl_measure})")
    num = lambda x, w, f: f"{'-':>{w}}" if x is None else f"{x:>{w}{f}}"  # noqa: E731
    for r in sorted(res.rows, key=lambda r: (r.get("operation") == "ablate", r["method"] == "random", r["method"],
                                             r["layer"], r["alpha"] if r["alpha"] is not None else 0.0)):
        ci = f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]"
        alpha = f"{'ablate':>6}" if r.get("operation") == "ablate" else f"{r['alpha']:>6.2f}"
        click.echo(f"{r['method']:<10} {r['layer']:>5} {alpha} {r['unsteered']:>10.3f} {r['plus']:>8.3f} "
                   f"{num(r['minus'], 8, '.3f')} {r['shift']:>7.3f} {ci:>17} {r['wrong_way']:>9.0%} {r['kl']:>8.4f} "
                   f"{num(r.get('perplexity'), 7, '.1f')} {num(r.get('distinct2'), 6, '.2f')}"
                   + (f" {num(r.get('judge'), 6, '.1f')}" if judged else "")
                   + (f" {num(r.get('capability_fall'), 8, '.3f')}" if capable else ""))
    if res.rows and res.rows[0].get("perplexity_unsteered") is not None:
        u = res.rows[0]
        click.echo(f"unsteered replies: perplexity {u['perplexity_unsteered']:.1f}, distinct-2 "
                   f"{u['distinct2_unsteered']:.2f}" + (f", judge {u['judge_unsteered']:.1f}"
                                                        if judged and u.get("judge_unsteered") is not None else ""))


@cli.command("lm-eval", context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                          "help_option_names": ["--help"]})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def lm_eval_command(args):
    """lm-evaluation-harness with the `traitlens` model registered: every argument goes to lm-eval's
    own CLI (`traitlens lm-eval -h` shows lm-eval's help). The model steers with stored vectors:

    \b
      traitlens lm-eval --model traitlens --tasks TASK \\
        --model_args pretrained=MODEL,store=STORE,vector=TRAIT_OR_ID,layer=L,alpha=A

    model_args, besides every `hf` one: vector=TRAIT_OR_ID[:LAYER[:ALPHA]] (several joined by +),
    layer, alpha (default 0: no hook, the plain `hf` scores), method, site (resid | attn_out |
    mlp_out), positions (all | generated | prompt | last-prompt | A:B; loglikelihood tasks take
    all or A:B), norm (typical | all: alpha's unit, the layer's mean token norm over traitlens's
    neutral prompts, as `export` writes it), scale (the unit itself), ablate=true (project the
    vectors out everywhere instead). Needs traitlens[eval] (lm-eval 0.4.x)."""
    from traitlens.pipeline.steer.capability import require_lm_eval

    require_lm_eval()
    from traitlens.pipeline.steer.harness import run_cli

    run_cli(list(args))
