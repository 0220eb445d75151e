"""CLI verbs that run the model with a vector: ``monitor``, ``steer``, ``evaluate``, ``lm-eval``."""

from __future__ import annotations

from pathlib import Path

import click

from traitlens.pipeline.steer.settings import ALPHA, GRID_MAX, STEER_BATCH, STEER_TOKENS, SweepConfig  # (no torch)
from traitlens.store.vocabulary import EVALUATION_KINDS, KL_MEASURES, NAMED_SITES, NORMS, POSITIONS

from .cli_base import EXIT_INPUT, FiniteFloat, FiniteFloats, _fail, _output, cli
from .pushes import load
from .pushes import pick_vector as _pick_vector
from .pushes import prompt_ids as _prompt_ids
from .pushes import pushes_for as _pushes_for

SWEEP = SweepConfig()  # evaluate's defaults: the sweep's own (tl.evaluate and a spec's [evaluate] read them too)


def _load(model, quiet=False, option: str = "--model"):
    return load(model, (lambda *a: None) if quiet else (lambda m: click.echo(m, err=True)), option)


@cli.command()
@click.argument("prompt", required=False)
@click.option("--trait", required=True)
@click.option("--file", "file_", type=click.Path(exists=True, dir_okay=False), help="One prompt a line (batch mode).")
@click.option("--model", default=None, help="[default: SmolLM2-135M-Instruct]")
@click.option("--layer", type=click.IntRange(min=0), default=None, help="[default: the best-ranked vector's layer]")
@click.option("--method", default=None, help="[default: the best-ranked vector's method]")
@click.option("--vector-id", default=None)
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=STEER_TOKENS, show_default=True)
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
@click.option("--alpha", type=FiniteFloat(float32=True), default=ALPHA, show_default=True, help="The strength of an --add without one.")
@click.option("--batch-size", type=click.IntRange(min=1), default=STEER_BATCH, show_default=True,
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


@cli.command()
@click.argument("prompt", required=False)
@click.option("--trait", default=None, help="The vector's trait (its best-ranked vector) [or --add / --vector-id].")
@click.option("--add", "adds", multiple=True, metavar="TRAIT_OR_ID[:LAYER[:ALPHA]]",
              help="A push; repeat for several at once (they add up). LAYER defaults to the vector's, ALPHA to --alpha.")
@click.option("--alpha", type=FiniteFloat(float32=True), default=ALPHA, show_default=True,
              help="Strength in units of the layer's mean token norm; negative pushes away.")
@click.option("--file", "file_", type=click.Path(exists=True, dir_okay=False),
              help="One prompt a line, generated as left-padded batches (the same replies as one at a time).")
@click.option("--batch-size", type=click.IntRange(min=1), default=STEER_BATCH, show_default=True)
@click.option("--model", default=None)
@click.option("--layer", type=click.IntRange(min=0), default=None)
@click.option("--method", default=None)
@click.option("--vector-id", default=None)
@click.option("--vector", "vector_dir", type=click.Path(), default=None, metavar="DIR",
              help="A bundle (`traitlens bundle`): steer with its vector, its files' hashes checked first "
                   "(--vector-id / --layer / --method choose among several; --model defaults to the recorded one).")
@click.option("--site", type=click.Choice(NAMED_SITES), default=NAMED_SITES[0], show_default=True,
              help="Where the push is added (or the direction ablated): the block's output or its attention / MLP "
                   "sub-module's.")
@click.option("--positions", default=POSITIONS[0], show_default=True,
              help=" | ".join(POSITIONS) + " | A:B (token positions A to B-1 of each sequence).")
@click.option("--norm", type=click.Choice(NORMS), default=SWEEP.norm, show_default=True,
              help="alpha's unit: the mean token norm without massive-activation tokens (typical) or over all.")
@click.option("--condition", default=None, metavar="TRAIT_OR_ID",
              help="Conditional steering: push only prompts whose projection on this vector passes its threshold.")
@click.option("--condition-threshold", type=FiniteFloat(), default=None,
              help="[default: learned on the condition trait's held-out split, best F1; stored in `conditions`]")
@click.option("--ablate", is_flag=True, help="Project the direction out instead of adding it.")
@click.option("--all-layers", is_flag=True, help="With --ablate: at every block, not only the vector's layer.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=STEER_TOKENS, show_default=True)
@click.option("--chat/--no-chat", default=None)
@click.pass_context
def steer(ctx, prompt, trait, adds, alpha, file_, batch_size, model, layer, method, vector_id, site, positions, norm,
          condition, condition_threshold, ablate, all_layers, max_new_tokens, chat, vector_dir=None):
    """Generate with and without the vector(s) and print both."""
    from traitlens.workflows import api

    res = api.steer(ctx.obj["store"], prompt, trait=trait, add=list(adds), alpha=alpha, file=file_,
                    batch_size=batch_size, model=model, layer=layer, method=method, vector_id=vector_id, site=site,
                    positions=positions, norm=norm, condition=condition, condition_threshold=condition_threshold,
                    ablate=ablate, all_layers=all_layers, max_new_tokens=max_new_tokens, chat=chat, vector=vector_dir,
                    log=lambda m: click.echo(m, err=True), say=click.echo)
    for line in res.lines()[len(res.head):]:  # (the head was said as the run went)
        click.echo(line)


@cli.command()
@click.option("--trait", default=None, help="The trait to evaluate [or --vector DIR: the bundle's].")
@click.option("--steering", "do_steering", is_flag=True, required=True, help="Run the causal steering evaluation.")
@click.option("--kind", type=click.Choice(EVALUATION_KINDS), default=SWEEP.kind,
              show_default=True, help="persona: Yes-No log-odds on trait statements; refusal: P(refusal opening) on "
              "harmless requests; refusal_first_token: P(first reply token starts a refusal opening); expression "
              "(any trait): how much replies to neutral prompts express the trait, read by the unsteered model on "
              "the trait's detection vector, 0 = held-out negatives, 1 = positives; refusal_rate (heretic's figure): "
              "the share of greedy replies to held-out harmful requests that refuse (refusal markers, and the "
              "--judge where given), shown as refusals per 100, with the KL read on held-out harmless requests.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=SWEEP.max_new_tokens, show_default=True,
              help="Reply length for --kind expression and refusal_rate.")
@click.option("--kl", "kl_measure", type=click.Choice(KL_MEASURES), default=SWEEP.kl, show_default=True,
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
@click.option("--methods", "--method", "methods", default=",".join(SWEEP.methods), show_default=True,
              help="Comma list of methods to sweep, or all (every stored method but random).")
@click.option("--layers", default=None, help="[default: the detection pick's layer on a CPU; it and 2 on each side on "
              "a GPU]; all or 8-16,20")
@click.option("--alphas", type=FiniteFloats(float32=True), default=",".join(map(str, SWEEP.alphas)), show_default=True,
              help="Strengths, in units of the layer's mean token norm (--norm).")
@click.option("--n", "n_texts", type=click.IntRange(min=1), default=SWEEP.n, show_default=True, help="Held-out prompts to measure on.")
@click.option("--norm", type=click.Choice(NORMS), default=SWEEP.norm, show_default=True,
              help="alpha's unit: the mean token norm without massive-activation tokens (typical) or over all.")
@click.option("--prompts", "prompts_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Neutral prompts for the damage measures (KL, replies), one a line [default: the project's own set].")
@click.option("--kl-budget", type=FiniteFloat(min=0), default=SWEEP.kl_budget, show_default=True,
              help="The pick is the largest shift whose mean KL on the neutral prompts stays within this (nats).")
@click.option("--trials", type=click.IntRange(min=1), default=SWEEP.trials, show_default=True,
              help=f"Settings Optuna measures when the grid has more than {GRID_MAX}.")
@click.option("--reply-tokens", type=click.IntRange(min=0), default=SWEEP.reply_tokens, show_default=True,
              help="Length of the steered replies to neutral prompts whose perplexity and distinct-2 are measured "
                   "(0: skip; --kind expression reads its own replies).")
@click.option("--judge", "judge_model", default=None,
              help="A local chat model (path, or default) that rates each steered reply for the trait, 0-100.")
@click.option("--description", default=None, help="The trait in words, for the judge's rubric [default: its name].")
@click.option("--no-random", is_flag=True, help="Skip the random direction's evaluation (the floor).")
@click.option("--no-early-stop", is_flag=True,
              help="Measure every alpha of the grid; by default a (method, layer)'s larger alphas are skipped once a "
                   "smaller one's KL interval lies wholly above --kl-budget (they cannot be the pick).")
@click.option("--plot", type=click.Path(dir_okay=False), default=None,
              help="PNG of the Pareto plot, effect against alpha and steerability [default: evaluate-<trait>.png].")
@click.option("--add", "adds", multiple=True, metavar="TRAIT_OR_ID[:LAYER[:ALPHA]]",
              help="Instead of a sweep, measure these pushes applied together (repeat for several; ALPHA defaults "
                   f"to {ALPHA}), each alone and as random directions; stored in steering_together.")
@click.option("--site", type=click.Choice(NAMED_SITES), default=NAMED_SITES[0], show_default=True,
              help="With --add: where the pushes are added.")
@click.option("--positions", default=POSITIONS[0], show_default=True,
              help="With --add: " + " | ".join(POSITIONS) + " | A:B.")
@click.option("--model", default=None)
@click.option("--vector", "vector_dir", type=click.Path(), default=None, metavar="DIR",
              help="A bundle (`traitlens bundle`): evaluate its vectors (its hashes checked first; its vectors and "
                   "prompts are added to the store, created if absent; --model defaults to the recorded one).")
@click.pass_context
def evaluate(ctx, trait, do_steering, kind, max_new_tokens, kl_measure, refusal_markers, ablate, capability_tasks,
             capability_include, capability_limit, capability_budget, methods, layers, alphas, n_texts, norm,
             prompts_file, kl_budget, trials, reply_tokens, judge_model, description, no_random, no_early_stop, plot,
             adds, site, positions, model, vector_dir=None):
    """Sweep method x layer x strength: how much does steering along each vector move behaviour,
    with what interval, and for how much damage (KL on neutral prompts, the steered replies'
    perplexity and repetition, and with --capability the lm-eval tasks' scores)? Small grids run
    whole, larger ones through Optuna; the random direction is measured at the front and the pick;
    the Pareto front of (shift, KL) and the pick within --kl-budget are printed and plotted, with
    the pick's side effects on the --capability tasks beside random's. With --ablate each vector
    is also projected out; --kind refusal_rate prints refusals per 100 against KL, adding and
    ablating. With --add, the given pushes are measured together instead (each alone beside them,
    and the random floor)."""
    from traitlens.pipeline.steer.settings import SweepConfig
    from traitlens.workflows import api

    if not (trait or vector_dir):
        _fail("give --trait, or --vector DIR (a bundle)", EXIT_INPUT)
    neutral = markers = None
    if prompts_file:
        neutral = [l.strip() for l in Path(prompts_file).read_text().splitlines() if l.strip()]
        if not neutral:
            _fail(f"--prompts {prompts_file}: no prompts (one a line)", EXIT_INPUT)
    if refusal_markers:
        markers = [l.strip().lower() for l in Path(refusal_markers).read_text().splitlines() if l.strip()]
        if not markers:
            _fail(f"--refusal-markers {refusal_markers}: no phrases (one a line)", EXIT_INPUT)
    bundle_methods = vector_dir and ctx.get_parameter_source("methods") == click.core.ParameterSource.DEFAULT
    cfg = SweepConfig(kind=kind, methods=None if bundle_methods else methods, layers=layers, alphas=alphas, n=n_texts,
                      norm=norm, neutral=neutral, max_new_tokens=max_new_tokens, reply_tokens=reply_tokens,
                      kl_budget=kl_budget, trials=trials, random_floor=not no_random, early_stop=not no_early_stop,
                      judge=judge_model,
                      description=description, kl=kl_measure, markers=markers, ablate=ablate,
                      capability=capability_tasks or [], capability_include=list(capability_include),
                      capability_limit=capability_limit, capability_budget=capability_budget)
    res = api.evaluate(ctx.obj["store"], trait, cfg, model=model, add=list(adds), site=site, positions=positions,
                       plot=plot or True, vector=vector_dir, log=lambda m: click.echo(m, err=True), say=click.echo)
    for line in res.lines()[len(res.head):]:  # (the head was said as the run went)
        click.echo(line)
    for line in getattr(res, "notes", []):
        click.echo(line, err=True)


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
