"""CLI verbs for vectors: ``extract``, ``vectors``, ``export``, ``import``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from traitlens.store import strict_json
from traitlens.store.vocabulary import (EVALUATION_KINDS, EXPORT_FORMATS, FORMATS, LOOSE_KIND, METHOD_NAMES, NORMS,
                                        OPERATIONS)

from .cli_base import EXIT_INPUT, FiniteFloat, _fail, _output, cli, write_text_atomically


def _group_options(f):
    f = click.option("--model", default=None, help="Model key (or its prefix) when the store holds several.")(f)
    f = click.option("--fmt", type=click.Choice(FORMATS), default=None, help="Prompt format, if both are stored.")(f)
    f = click.option("--site", default="resid", show_default=True)(f)
    f = click.option("--pooling", default="last", show_default=True)(f)
    return f


@cli.command()
@click.option("--trait", required=True, help="Trait to extract (as in the prompts table).")
@click.option("--methods", default="all", show_default=True,
              help=f"Comma list of {', '.join(METHOD_NAMES)}; or all.")
@click.option("--layers", default="all", show_default=True, help="all | 0-15 | 3,7,11 (stored layers only).")
@_group_options
@click.option("--where", default=None, help="SQL condition over prompts columns choosing the contrastive rows, "
              "e.g. \"dataset = 'a' AND length(text) < 200\".")
@click.option("--train-split", default="train", show_default=True)
@click.option("--held-split", default="auto", show_default=True, help="auto = val if present, else test.")
@click.option("--n-boot", default=8, show_default=True, help="Bootstrap resamples for stability (0 = skip).")
@click.option("--seed", default=0, show_default=True)
@click.option("--memory", "memory", default="1GB", show_default=True,
              help="Memory budget for the whole run; layers that do not fit stream out of core.")
@click.option("--C", "probe_c", type=FiniteFloat(min=0, min_open=True), default=1.0, show_default=True, help="Probe inverse regularisation.")
@click.option("--penalty", default="l2", type=click.Choice(["l2", "l1"]), show_default=True, help="Probe penalty.")
@click.option("--scheduler", default=None,
              help="Dask scheduler address, or threads | processes [default: $DASK_SCHEDULER_ADDRESS, else "
                   "forked local processes for 4+ layers, threads below].")
@click.option("--background", "background", multiple=True, type=click.Path(exists=True),
              help="An unlabelled corpus (any format ingest reads), ingested into the same group first: its "
                   "train-split prompts join the negatives of mean_diff, probe and gradient, the rest give every "
                   "vector an out-of-corpus specificity figure (rank shows it). Repeatable.")
@click.option("--quiet", "-q", is_flag=True)
@click.pass_context
def extract(ctx, trait, methods, layers, model, fmt, site, pooling, where, train_split, held_split, n_boot, seed,
            memory, probe_c, penalty, scheduler, background, quiet):
    """Fit trait vectors at every layer with every method; store them with held-out metrics."""
    from traitlens.pipeline.extract.config import ExtractConfig, parse_size
    from traitlens.pipeline.extract.jobs import extract as run_extract

    cfg = ExtractConfig(n_boot=n_boot, seed=seed, memory_budget=parse_size(memory),
                        params={"probe": {"C": probe_c, "penalty": penalty}})
    bg = None
    if background:
        from traitlens.pipeline.capture.plan import read_corpus

        bg = ({r.prompt_id for r in read_corpus(list(background))[0]}, ", ".join(background))
    res = run_extract(ctx.obj["store"], trait, methods, layers, model, fmt, site, pooling, train_split, held_split,
                      where=where, cfg=cfg, scheduler=scheduler, progress=not quiet, background=bg)
    from traitlens.queries.selection import best_per_method

    best = best_per_method(res.records)  # the rule `rank` uses: AUROC, then Cohen's d, then stability
    if not quiet:
        spec = bg is not None
        click.echo(f"{'method':<10} {'best layer':>10} {'AUROC':>7} {'bal.acc':>7} {'d':>6} {'stability':>9}"
                   + (f" {'spec.P10':>8} {'spec.AUROC':>10}" if spec else "")
                   + f"  (held-out: {res.records[0]['held_split']})")
        for m in (m for m in res.methods if m in best):  # (a method with no usable vector has no line)
            r = best[m]
            click.echo(f"{m:<10} {r['layer']:>10} {r['auroc']:>7.3f} {r['balanced_accuracy']:>7.3f} "
                       f"{r['cohens_d']:>6.2f} {r['stability']:>9.3f}"
                       + (f" {r['spec_precision']:>8.3f} {r['spec_auroc']:>10.3f}" if spec else ""))
        if spec:
            r0 = res.records[0]
            click.echo(f"spec.P10: share of held-out positives in the top decile of them, the held-out negatives and "
                       f"{r0['n_background']} held-out background prompts (base rate {r0['spec_base']:.3f}); "
                       f"spec.AUROC: positives against the background; token count alone: "
                       f"{r0['spec_floor_length']:.3f}")
    click.echo(f"extract done: {len(res.records)} vectors ({res.n_new} new, {res.n_existing} already stored) for "
               f"{trait!r} on {res.key.path}, {len(res.layers)} layers x {len(res.methods)} methods in "
               f"{res.seconds:.1f} s; run {res.run_id}")


def _vector_rows(store, trait=None, method=None):
    t = store.table("vectors")
    rows = [r for r in t.to_pylist() if (trait is None or r["trait"] == trait) and (method is None or r["method"] == method)]
    return rows


@cli.group(invoke_without_command=True)
@click.option("--trait", default=None)
@click.option("--method", default=None)
@click.option("--format", "fmt_", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--library", "library_dir", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="List the bundles under DIR instead (`traitlens bundle`): their front matter, each bundle's "
                   "hashes checked.")
@click.pass_context
def vectors(ctx, trait, method, fmt_, library_dir=None):
    """List stored vectors with their held-out metrics (and logit-lens tokens once `vectors lens`
    has read them), or with --library the bundles under a folder; `vectors combine` makes new
    ones from others."""
    if ctx.invoked_subcommand is not None:
        return
    if library_dir is not None:
        return _print_library(library_dir, trait, method, fmt_)
    from traitlens.store import Store

    store = Store.open(ctx.obj["store"])
    rows = _vector_rows(store, trait, method)
    from traitlens.queries.ranking import lens_summary

    lens = lens_summary(store)
    cols = ["vector_id", "trait", "model_key", "site", "pooling", "layer", "method", "auroc", "balanced_accuracy",
            "cohens_d", "stability", "n_pos", "n_neg", "floor_length", "floor_dataset", "params"]
    if fmt_ == "json":
        click.echo(strict_json.dumps([{**{c: r[c] for c in cols}, "lens": lens.get(r["vector_id"])} for r in rows],
                                     indent=1, default=str))
        return
    if not rows:
        click.echo("no vectors stored (run `traitlens extract --trait T`)")
        return
    def num(v, w=6, f=".3f"):  # vectors stored before 0.2.0 have no nuisance floors; combined ones no stability
        return f"{v:>{w}{f}}" if v is not None else f"{'-':>{w}}"

    click.echo(f"{'vector_id':<16} {'trait':<16} {'layer':>5} {'method':<9} {'AUROC':>6} {'bal.acc':>7} {'d':>6} "
               f"{'stab':>5} {'f.len':>6} {'f.data':>6}  group" + ("  promotes | suppresses" if lens else ""))
    for r in sorted(rows, key=lambda r: (r["trait"], r["model_key"], r["layer"], r["method"])):
        click.echo(f"{r['vector_id']:<16} {r['trait'][:16]:<16} {r['layer']:>5} {r['method']:<9} {r['auroc']:>6.3f} "
                   f"{r['balanced_accuracy']:>7.3f} {r['cohens_d']:>6.2f} {num(r['stability'], 5, '.2f')} "
                   f"{num(r['floor_length'])} {num(r['floor_dataset'])}  "
                   f"{r['model_key']}/{r['fmt']}/{r['site']}/{r['pooling']}"
                   + (f"  {lens[r['vector_id']]}" if r["vector_id"] in lens else ""))
    click.echo("f.len / f.data: held-out AUROC of token count / source dataset alone (fitted on train): the floors "
               "a vector must clear")


def _print_library(folder, trait, method, fmt_) -> None:
    """``vectors --library DIR``: one row per bundled vector (trait, model, method, layer, metrics)."""
    from traitlens.workflows.bundles import library

    rows = [r for r in library(folder) if (trait is None or r.get("trait") == trait)
            and (method is None or r.get("method") == method)]
    if fmt_ == "json":
        click.echo(strict_json.dumps(rows, indent=1, default=str))
        return
    if not rows:
        click.echo(f"no bundles under {folder} (`traitlens bundle --trait T -o DIR` writes one)")
        return
    num = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    click.echo(f"{'trait':<16} {'model':<24} {'method':<9} {'layer':>5} {'AUROC':>6} {'95% CI':>13} {'d':>6} "
               f"{'shift':>7} {'KL':>7}  bundle (status)")
    for r in rows:
        ci = r.get("auroc_ci95") or [None, None]
        ci_text = "-" if None in ci else f"{ci[0]:.3f}-{ci[1]:.3f}"
        click.echo(f"{str(r.get('trait'))[:16]:<16} {str(r.get('model'))[:24]:<24} {str(r.get('method')):<9} "
                   f"{num(r.get('layer'), 'd'):>5} {num(r.get('auroc'), '.3f'):>6} {ci_text:>13} "
                   f"{num(r.get('cohens_d'), '.2f'):>6} {num(r.get('steer_shift'), '+.3f'):>7} "
                   f"{num(r.get('steer_kl'), '.4f'):>7}  {r['bundle']} ({r['status']})")


@vectors.command("combine")
@click.argument("formula")
@click.option("--layer", type=click.IntRange(min=0), required=True, help="The layer of every vector in the formula.")
@click.option("--name", required=True, help="The new vector's method name (how rank, evaluate and export call it).")
@click.option("--orthogonal-to", multiple=True, help="Remove the part along this vector (trait or id); repeatable.")
@click.option("--score-trait", default=None, help="The trait whose held-out rows score it [default: the first term's].")
@click.option("--model", default=None, help="Model key when vectors of several models exist.")
@click.pass_context
def combine(ctx, formula, layer, name, orthogonal_to, score_trait, model):
    """Store a vector made from others: FORMULA like "agreeableness - 0.5*neuroticism" (trait names
    or vector ids; terms separated by ' + ' or ' - ' with spaces), unit parents, with provenance."""
    from traitlens.pipeline.extract.combine import combine as run_combine

    rec = run_combine(ctx.obj["store"], formula, layer, name, list(orthogonal_to), score_trait, model)
    params = json.loads(rec["params"])
    click.echo(f"stored {rec['vector_id']}: {rec['trait']} {name} L{layer} = {formula}"
               + (f", orthogonal to {', '.join(orthogonal_to)}" if orthogonal_to else ""))
    click.echo(f"parents: {', '.join(params['parents'])}; cosines {rec['cosines']}")
    click.echo(f"held-out ({rec['held_split']}) on {rec['trait']}: AUROC {rec['auroc']:.3f}, Cohen's d "
               f"{rec['cohens_d']:.2f}; `traitlens rank --trait {rec['trait']}` lists it as method {name}")


@vectors.command("lens")
@click.option("--trait", required=True)
@click.option("--method", default=None, help="[default: every method]")
@click.option("--layers", default="all", show_default=True)
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--model", default=None, help="[default: SmolLM2-135M-Instruct]; must be the vectors' model")
@click.pass_context
def lens(ctx, trait, method, layers, top, model):
    """Read each of a trait's current vectors through the model's final norm and unembedding: the
    tokens it promotes and suppresses (stored in the `lens` table; `vectors` and `rank` show them)."""
    from traitlens.pipeline.model.layers import parse_layers
    from traitlens.pipeline.model.loading import load_model
    from traitlens.pipeline.steer.lens import lens_records
    from traitlens.queries import StoreSQL
    from traitlens.queries.selection import latest_cells_sql
    from traitlens.store import Store
    from traitlens.store.store import new_run_id

    store = Store.open(ctx.obj["store"])
    lm = load_model(model, log=lambda m: click.echo(m, err=True))
    with StoreSQL(store) as q:
        cells = q.query(f"SELECT v.* FROM ({latest_cells_sql()}) m JOIN vectors v USING (vector_id) WHERE "
                        "m.model_key = ? AND m.method <> 'random' ORDER BY m.layer, m.method", [trait, lm.key]).to_pylist()
    if method:
        cells = [c for c in cells if c["method"] == method]
    if layers != "all":
        keep = set(parse_layers(layers, lm.n_layers))
        cells = [c for c in cells if c["layer"] in keep]
    if not cells:
        _fail(f"no vectors of {trait!r} on {lm.key}" + (f" by {method}" if method else "") + "; run `traitlens "
              f"extract --trait {trait}` with this model", EXIT_INPUT)
    run_id, rows = new_run_id("lens"), []
    for c in cells:
        recs = lens_records(lm, c, top, run_id)
        rows += recs
        show = lambda d: " ".join(repr(r["token"]) for r in recs if r["direction"] == d)  # noqa: E731
        click.echo(f"{c['method']:<10} L{c['layer']:<3} promotes {show('promotes')}\n{'':<15}suppresses {show('suppresses')}")
    with store.lock("vectors lens"):
        store.append("lens", rows)
    click.echo(f"stored {len(rows)} rows in the lens table (run {run_id})")


@cli.command()
@click.option("--trait", "traits", multiple=True,
              help="The trait whose vectors to export; repeat to compose several in one merged/peft export.")
@click.option("--vector-id", "vector_ids", multiple=True, help="merged/peft: a stored vector (at its own layer); repeatable.")
@click.option("--method", default="mean_diff", show_default=True)
@click.option("--layers", default=None, show_default="all (safetensors, gguf)",
              help="all | 0-15 | 3,7,11. merged/peft with --trait: the layer(s) whose vector is pushed or ablated.")
@click.option("--model", default=None,
              help="The model: default, a folder or a Hugging Face id (loaded for merged/peft and for the GGUF's "
                   "per-layer norms); for safetensors/gguf also a stored model key or its prefix.")
@click.option("--format", "fmt_", type=click.Choice(EXPORT_FORMATS), default="safetensors", show_default=True,
              help="gguf: llama.cpp / repeng control vector (no layer 0); easysteer: EasySteer's layer-keyed GGUF "
                   "(every layer); merged: a Hugging Face model folder with the steering in its weights; peft: the "
                   "ablation as a LoRA adapter.")
@click.option("--operation", type=click.Choice(OPERATIONS), default=None,
              help="merged/peft: add the push (a bias on the block's output) or ablate the direction (weight "
                   "orthogonalisation).")
@click.option("--alpha", type=FiniteFloat(float32=True), default=None,
              help="The push, in units of the layer's mean token norm (as `steer --alpha`): merged --operation add; "
                   "gguf: print the llama.cpp strength per layer.")
@click.option("--ablate-blocks", default="all", show_default=True,
              help="--operation ablate: all (the embeddings and every block), or the blocks to edit (0-11); add "
                   "'embed' to edit the embeddings too (embed,0-11).")
@click.option("--norm", type=click.Choice(NORMS), default="typical", show_default=True,
              help="alpha's unit: the layer's mean token norm over the neutral prompts, without massive-activation "
                   "tokens (typical) or over all.")
@click.option("--check-kind", type=click.Choice(EVALUATION_KINDS),
              default="persona", show_default=True, help="merged/peft: the measure the self-check compares (as "
              "`evaluate --kind`).")
@click.option("--check-n", type=click.IntRange(min=1), default=16, show_default=True,
              help="merged/peft: held-out prompts the self-check measures the effect on.")
@click.option("--scale", type=FiniteFloat(nonzero=True, float32=True), default=1.0, show_default=True,
              help="Multiply the unit vectors by this (safetensors, gguf).")
@click.option("--model-hint", default=None, help="GGUF controlvector.model_hint [default: the model's config "
              "model_type, as repeng writes it; llama when the model is not on this machine].")
@click.option("--device", default="auto", show_default=True, help="Where the model runs: auto | cpu | cuda | mps.")
@click.option("-o", "--output", type=click.Path(), default=None, help="The file (safetensors, gguf) or new folder "
              "(merged, peft).")
@click.option("--vector", "vector_dir", type=click.Path(), default=None, metavar="DIR",
              help="Export a bundle's vectors (`traitlens bundle`), its hashes checked first; --model defaults to "
                   "the recorded one (merged/peft: they join the store, created if absent, for the self-check).")
@click.pass_context
def export(ctx, traits, vector_ids, method, layers, model, fmt_, operation, alpha, ablate_blocks, norm, check_kind,
           check_n, scale, model_hint, device, output, vector_dir=None):
    """Write vectors for use outside traitlens: safetensors or a GGUF control vector (llama.cpp, repeng,
    EasySteer) with the vector card, or the steering written into weights (--format merged: a Hugging
    Face folder; --format peft: a LoRA adapter), checked against traitlens's own hook before it is kept."""
    bundle_rows = None
    if vector_dir:  # a bundle: its vectors, checked, instead of the store's
        bundle_rows, traits, vector_ids, method, model = _bundle_export(ctx, vector_dir, traits, vector_ids, method,
                                                                        layers, model, fmt_)
    if fmt_ in ("merged", "peft"):
        return _export_weights(ctx, traits, vector_ids, method, layers, model, fmt_, operation, alpha, ablate_blocks,
                               norm, check_kind, check_n, device, output, bundle_rows)
    if operation or vector_ids:
        _fail(f"--operation and --vector-id are for --format merged or peft; --format {fmt_} writes one trait's "
              "directions", EXIT_INPUT)
    if len(traits) != 1:
        _fail(f"--format {fmt_} exports one trait's vectors: give one --trait", EXIT_INPUT)
    _export_directions(ctx, traits[0], method, layers or "all", model, fmt_, alpha, norm, scale, model_hint, device,
                       output, bundle_rows)


def _bundle_export(ctx, path, traits, vector_ids, method, layers, model, fmt_):
    """``export --vector DIR``: (the bundle's rows and steering picks for safetensors/gguf, or
    (the bundle, its rows) for merged/peft, whose vectors join the store once the options are
    checked and go by id; traits; vector ids; method; model)."""
    from traitlens.pipeline.model.layers import parse_layers
    from traitlens.workflows.bundles import load, steering_picks

    b = load(path)
    if traits and tuple(traits) != (b.trait,):
        _fail(f"--trait: the bundle {path} holds vectors of {b.trait!r}", EXIT_INPUT)
    rows = [r for r in b.records if not vector_ids or r["vector_id"] in vector_ids]
    if ctx.get_parameter_source("method") != click.core.ParameterSource.DEFAULT:
        rows = [r for r in rows if r["method"] == method]
    elif len({r["method"] for r in rows}) == 1:
        method = rows[0]["method"]
    if layers and layers != "all":
        keep = set(parse_layers(layers, max([r["layer"] for r in b.records]) + 1))
        rows = [r for r in rows if r["layer"] in keep]
    if not rows:
        _fail(f"the bundle {path} holds no vector matching --vector-id / --method / --layers: it holds "
              + ", ".join(f"{r['vector_id']} ({r['method']} L{r['layer']})" for r in b.records), EXIT_INPUT)
    model = model if model is not None else b.model_spec()
    if fmt_ in ("merged", "peft"):
        return (b, rows), (), tuple(r["vector_id"] for r in rows), method, model
    steering = b.table("steering")
    picks = steering_picks(steering.to_pylist() if steering is not None else [], {r["vector_id"] for r in rows})
    return (rows, picks), (b.trait,), (), method, model


def _loadable_model(spec: str | None, model_key: str) -> str | None:
    """Why ``spec`` cannot give ``model_key``'s norms without a download or a wasted load, or None
    when it may (the default model or a checkpoint on this machine whose name the key carries)."""
    from traitlens.pipeline.model.identity import DEFAULT_MODEL, checkpoint_folder, default_model_status, is_default
    from traitlens.store.layout import safe_name

    if is_default(spec):
        name, ready = DEFAULT_MODEL, default_model_status()["ready"]
    else:
        folder = checkpoint_folder(spec)
        name, ready = (folder.resolve().name if Path(spec).expanduser().exists() else spec.rstrip("/").split("/")[-1],
                       folder is not None)
    if not model_key.startswith(safe_name(name, "model name") + "-"):
        return (f"the vectors are of model {model_key} and --model {spec or 'default'} is {name}: pass --model with "
                "that checkpoint (a folder or a cached Hugging Face id) to measure its layers' norms")
    if not ready:
        return f"--model {spec or 'default'} is not on this machine"
    return None


def _export_directions(ctx, trait, method, layers, model, fmt_, alpha, norm, scale, model_hint, device, output,
                       bundle_rows=None):
    """safetensors / gguf / easysteer: one trait's directions, one per layer, with the vector card
    (``bundle_rows``: (a bundle's rows, their steering picks) instead of the store's)."""
    from traitlens.pipeline.extract.export import (LAYER0_NOTE, gguf_records, latest_per_layer, llama_cpp_lines,
                                                   to_gguf, to_safetensors, vector_card)
    from traitlens.pipeline.model.layers import parse_layers
    from traitlens.store import Store

    rows = (_vector_rows(Store.open(ctx.obj["store"]), trait, method) if bundle_rows is None else
            [r for r in bundle_rows[0] if r["method"] == method])
    if not rows:
        _fail(f"no {method} vectors for trait {trait!r}; run `traitlens extract --trait {trait}`", EXIT_INPUT)
    lm = None
    if model and any(r["model_key"].startswith(model) for r in rows):  # a stored key or its prefix
        rows = [r for r in rows if r["model_key"].startswith(model)]
    elif model:  # a checkpoint: its key chooses the vectors
        lm = _load_for_export(model, device)
        rows = [r for r in rows if r["model_key"] == lm.key]
        if not rows:
            _fail(f"no {method} vectors for trait {trait!r} of {lm.key} (what --model {model} loads)", EXIT_INPUT)
    groups = sorted({(r["model_key"], r["fmt"], r["site"], r["pooling"]) for r in rows})
    if len(groups) > 1:
        _fail(f"vectors of several groups match: {groups}; pass --model", EXIT_INPUT)
    if layers != "all":
        keep = set(parse_layers(layers, max(r["layer"] for r in rows) + 1))
        rows = [r for r in rows if r["layer"] in keep]
    rows = latest_per_layer(rows)
    notes = {}
    if fmt_ != "safetensors":
        rows, dropped = gguf_records(rows, easysteer=fmt_ == "easysteer")  # an InputError for layer 0 alone
        if dropped:
            notes["layer 0"] = LAYER0_NOTE
    from traitlens.store import file_stem

    out = Path(_output(ctx, output or f"{file_stem(trait, 'trait')}-{file_stem(method, 'method')}."
                       f"{'safetensors' if fmt_ == 'safetensors' else 'gguf'}", "-o"))
    norms, hint = None, model_hint
    why = None if lm is not None else _loadable_model(model, rows[0]["model_key"])
    if why is None:
        from traitlens.pipeline.steer.weight_export import layer_norms, norm_source

        lm = lm or _load_for_export(model, device)
        if lm.key != rows[0]["model_key"]:
            why = f"the vectors are of model {rows[0]['model_key']}; --model {model or 'default'} loads {lm.key}"
        else:
            norms = layer_norms(lm, [r["layer"] for r in rows], norm)
            notes["norm"] = norm_source(norm)
            hint = hint or lm.model.config.model_type
    if why is not None:
        notes["norm"] = f"not measured: {why}"
    if hint is None:
        hint = "llama"
        if fmt_ != "safetensors":
            notes["model_hint"] = "llama: the model's config was not read (pass --model, or --model-hint)"
    picks = (_steering_picks(ctx.obj["store"], trait, {r["vector_id"] for r in rows}) if bundle_rows is None
             else bundle_rows[1])
    card = vector_card(rows, scale, picks, norms, alpha if norms is not None else None, notes)
    if fmt_ == "safetensors":
        to_safetensors(rows, out, scale, card)
    else:
        to_gguf(rows, out, hint, scale, card, easysteer=fmt_ == "easysteer")
    from traitlens.store.layout import format_layer_list

    evaluated = sum("steering" in v for v in card["layers"].values())
    click.echo(f"wrote {out} ({len(rows)} layers: {format_layer_list([r['layer'] for r in rows])}; {method}, scale "
               f"{scale}); card: model {card['model_key']}, {card['site']}/{card['pooling']}, held-out metrics"
               + (f", steering picks of {evaluated} layers" if evaluated else "")
               + (f"; controlvector.model_hint {hint}" if fmt_ != "safetensors" else ""))
    if "layer 0" in notes:
        click.echo(f"note: {LAYER0_NOTE}")
    if norms is None:
        click.echo(f"per-layer norms {notes['norm']}")
    elif alpha is None:
        click.echo("per-layer mean token norms are in the card; pass --alpha A for the llama.cpp strength of a "
                   "traitlens alpha (alpha x norm / scale)")
    elif fmt_ != "safetensors":
        click.echo(f"llama.cpp, alpha {alpha:g} (strength = alpha x the layer's mean token norm / scale {scale:g}); one "
                   "layer at a time, as traitlens steers:")
        for line, (layer, entry) in zip(llama_cpp_lines(out, card), card["layers"].items()):
            click.echo(f"  L{layer} (norm {entry['norm']:.4g}): {line}")
    else:
        click.echo(f"steering-vectors multiplier for alpha {alpha:g} (alpha x norm / scale), per layer: "
                   + ", ".join(f"L{l} {e['llama_cpp_strength']:.4g}" for l, e in card["layers"].items()))


def _load_for_export(model, device):
    from traitlens.pipeline.model.loading import load_model

    return load_model(model, device=device, dtype="float32", log=lambda m: click.echo(m, err=True))


def _export_weights(ctx, traits, vector_ids, method, layers, model, fmt_, operation, alpha, ablate_blocks, norm,
                    check_kind, check_n, device, output, bundle=None):
    """merged / peft: the pushes or the ablation written into weights, checked against the hook
    (``bundle``: (a bundle, its rows to write), added to the store once the options pass)."""
    from traitlens.pipeline.extract.export import latest_per_layer
    from traitlens.pipeline.model.layers import parse_layers
    from traitlens.pipeline.steer.weight_export import export_weights, summary
    from traitlens.store import Store, file_stem

    if operation is None:
        _fail(f"--format {fmt_} needs --operation add or ablate", EXIT_INPUT)
    if fmt_ == "peft" and operation == "add":
        _fail("--format peft carries an ablation (a low-rank weight change); a constant push is a bias, which a LoRA "
              "adapter cannot add: use --format merged --operation add", EXIT_INPUT)
    if operation == "add" and alpha is None:
        _fail("--operation add needs --alpha (the push in units of the layer's mean token norm, as `steer --alpha`)",
              EXIT_INPUT)
    if not (traits or vector_ids):
        _fail("give --trait (with --layers) or --vector-id: the vectors to write into the weights", EXIT_INPUT)
    if traits and not layers:
        _fail("--layers: name the layer(s) whose vector to write, e.g. --layers 12 (--layers all would edit every "
              "layer's vector)", EXIT_INPUT)
    out = Path(output or f"{'-'.join(file_stem(t, 'trait') for t in traits) or 'vectors'}-{operation}-{fmt_}")
    if out.exists():  # (before the file-output check, which would call an existing folder a folder)
        _fail(f"-o {out} exists: a weight export writes a new folder and never overwrites one", EXIT_INPUT)
    out = Path(_output(ctx, str(out), "-o"))
    if bundle is not None:
        from traitlens.workflows.bundles import adopt

        adopt(ctx.obj["store"], *bundle)
    store = Store.open(ctx.obj["store"])
    everything = _vector_rows(store)
    lm = _load_for_export(model, device)
    embeddings, blocks = True, None
    if operation == "ablate" and ablate_blocks.strip() != "all":
        parts = [p.strip() for p in ablate_blocks.split(",") if p.strip()]
        embeddings = "embed" in parts
        rest = ",".join(p for p in parts if p != "embed")
        blocks = parse_layers(rest, lm.n_layers) if rest else []
        if not (blocks or embeddings):
            _fail(f"--ablate-blocks {ablate_blocks!r} edits nothing: give all, blocks (0-11), embed, or both", EXIT_INPUT)
    rows = []
    for vid in vector_ids:
        found = [r for r in everything if r["vector_id"] == vid]
        if not found:
            _fail(f"--vector-id {vid}: no such vector (`traitlens vectors` lists them)", EXIT_INPUT)
        rows.append(found[0])
    for trait in traits:
        mine = [r for r in everything if r["trait"] == trait and r["method"] == method]
        if not mine:
            _fail(f"no {method} vectors for trait {trait!r}; run `traitlens extract --trait {trait}`", EXIT_INPUT)
        here = [r for r in mine if r["model_key"] == lm.key]
        if not here:
            _fail(f"the store holds {trait!r} vectors of model {', '.join(sorted({r['model_key'] for r in mine}))}, "
                  f"not of {lm.key} (what --model {model or 'default'} loads): a direction of one model means nothing "
                  "in another's weights; pass the --model they were extracted with", EXIT_INPUT)
        want = parse_layers(layers, lm.n_layers)
        chosen = [r for r in latest_per_layer(here) if r["layer"] in want]
        missing = sorted(set(want) - {r["layer"] for r in chosen})
        if missing:
            _fail(f"{trait!r} has no {method} vector at layer(s) {missing} on {lm.key}", EXIT_INPUT)
        rows += chosen
    card = export_weights(store, lm, rows, out, operation, fmt_, alpha, blocks, embeddings, norm, check_kind, check_n,
                          log=lambda m: click.echo(m, err=True))
    for v in card["vectors"]:
        push = (f": alpha {v['alpha']:g} x norm {v['norm']:.2f} = a push of {v['push_norm']:.2f} on block "
                f"{v['layer']}'s output" if operation == "add" else "")
        click.echo(f"{v['trait']} {v['method']} L{v['layer']} ({v['vector_id']}){push}")
    if operation == "ablate":
        where = "every block" if blocks is None else (f"blocks {blocks}" if blocks else "no block")
        click.echo(f"ablated from {where}" + (" and the embeddings" if embeddings else "")
                   + (" (tied: the LM head reads the orthogonalised embeddings too)" if card["tied_embeddings"]
                      and embeddings else ""))
    click.echo(f"checked against traitlens's hook: {summary(card)}")
    if "kl_unmerged" in card["check"] and card["tied_embeddings"] and embeddings:
        click.echo(f"note: with tied embeddings apply the adapter merged (merge_and_unload()); unmerged, peft edits only "
                   f"the input embeddings (KL {card['check']['kl_unmerged']:.3g} nats from the hook)")
    click.echo(f"wrote {out} ({fmt_}: {'a Hugging Face model folder' if fmt_ == 'merged' else 'a peft LoRA adapter'}"
               f"; card {out / 'traitlens-export.json'})")


@cli.command("import")
@click.argument("source", type=click.Path(exists=True))
@click.option("--trait", required=True, help="The trait the vectors are of: its held-out prompts score them, and "
              "rank / evaluate / steer list them under it.")
@click.option("--model", required=True, help="The stored model the vectors were made on (a model key or its prefix; "
              "`traitlens info` lists them): their width must be its width.")
@click.option("--fmt", type=click.Choice(FORMATS), default=None, help="Prompt format, if both are stored.")
@click.option("--site", default="resid", show_default=True)
@click.option("--pooling", default="last", show_default=True, help="The group whose held-out rows score them.")
@click.option("--name", default=None, help="Their method name [default: the source format: gguf, steering-vectors, "
              "persona-vectors, safetensors].")
@click.option("--layers", default=None, help="Only these layers (traitlens's: block N's output) [default: every layer "
              "the file holds that the store holds].")
@click.option("--format", "file_format", type=click.Choice(["auto", "gguf", "steering-vectors", "persona-vectors",
                                                            "safetensors"]), default="auto", show_default=True)
@click.option("--convention", type=click.Choice(["auto", "blocks", "hidden-states"]), default="auto",
              show_default=True, help="What a file's layer index means: blocks (N = block N's output: repeng, "
              "llama.cpp, steering-vectors) or hidden-states (N = hidden_states[N]: persona_vectors) [default: the "
              "format's own].")
@click.pass_context
def import_(ctx, source, trait, model, fmt, site, pooling, name, layers, file_format, convention):
    """Import vectors made by other tools (repeng / llama.cpp GGUF control vectors, steering-vectors and
    persona_vectors .pt, safetensors) from SOURCE, a file or a folder of them, made on the stored model
    --model. They enter the vectors table with their provenance (format, file hash, model) and held-out
    metrics, beside traitlens's own; a bad file is refused and nothing is written."""
    from traitlens.pipeline.extract.imported import import_vectors

    res = import_vectors(ctx.obj["store"], source, trait, model, fmt, site, pooling, name, layers, file_format,
                         convention)
    params = [json.loads(r["params"])["source"] for r in res["records"]]
    click.echo(f"{'vector_id':<16} {'layer':>5} {'method':<16} {'AUROC':>6} {'d':>6}  source")
    for r, p in zip(res["records"], params):
        click.echo(f"{r['vector_id']:<16} {r['layer']:>5} {r['method']:<16} {r['auroc']:>6.3f} {r['cohens_d']:>6.2f}  "
                   f"{p['file']} {p['tensor']} ({p['format']}, {p['convention']}, sha256 {p['sha256'][:12]})")
    for f, ls in res["skipped"].items():
        click.echo(f"note: {f}: layer(s) {ls} left out: not stored for {res['key'].path}")
    if any(r["auroc"] < 0.5 for r in res["records"]):
        click.echo("note: a held-out AUROC below 0.5 means the vector points toward the negatives of "
                   f"{trait!r}: its sign is the other tool's", err=True)
    click.echo(f"imported {res['n_new']} vectors ({res['n_existing']} already stored) for {trait!r} on "
               f"{res['key'].path}; run {res['run_id']}. `traitlens rank --trait {trait}` and `evaluate` compare them "
               "with the store's own")


def _steering_picks(store_path, trait: str, vector_ids: set[str]) -> dict[str, dict]:
    """``{vector_id: its steering pick}`` (largest shift within the KL budget) for evaluated vectors."""
    from traitlens.pipeline.steer.rule import pick
    from traitlens.queries import StoreSQL

    with StoreSQL(store_path) as q:
        rows = q.query("SELECT * FROM steering WHERE trait = ? AND kind <> ?", [trait, LOOSE_KIND]).to_pylist()
    out = {}
    for vid in vector_ids:
        p = pick([r for r in rows if r["vector_id"] == vid])
        if p is not None:
            out[vid] = p
    return out


@cli.command()
@click.option("--trait", required=True)
@click.option("--vector-id", default=None, help="Audit against this vector [default: the one `rank` lists first].")
@click.option("--top", default=20, show_default=True, type=click.IntRange(min=1), help="Rows to list.")
@click.option("--format", "fmt_", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.pass_context
def audit(ctx, trait, vector_id, top, fmt_):
    """Training prompts deep on the wrong side of a trait's vector: label noise or mixed prompts."""
    from traitlens.pipeline.extract.audit import wrong_side
    from traitlens.store import Store

    vec, rows = wrong_side(Store.open(ctx.obj["store"]), trait, vector_id, top)
    if fmt_ == "json":
        click.echo(strict_json.dumps({"vector_id": vec["vector_id"], "layer": vec["layer"], "method": vec["method"],
                                      "rows": rows}, default=str))
        return
    click.echo(f"audit of {trait!r} against {vec['method']} L{vec['layer']} ({vec['vector_id']}): train rows on the "
               f"wrong side of its threshold, deepest first (depth in within-class sd)")
    if not rows:
        click.echo("none: every train row sits on its label's side")
        return
    click.echo(f"{'depth':>6} {'label':>5} {'dataset':<14} text")
    for r in rows:
        text = " ".join(str(r["text"] or "").split())
        click.echo(f"{r['depth']:>6.2f} {r['label']:>+5d} {str(r['dataset'])[:14]:<14} {text[:90]}")


@cli.command()
@click.argument("corpus", nargs=-1, type=click.Path(exists=True))
@click.option("--trait", default=None, help="The trait whose vector scores the prompts [or --vector DIR: the bundle's].")
@click.option("--vector-id", default=None, help="Score with this vector [default: the one `rank` lists first].")
@click.option("--where", default=None, help="SQL condition over the prompts columns: score only those.")
@click.option("--top", default=10, show_default=True, type=click.IntRange(min=0), help="Highest scores to print.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Write the --top highest-scoring prompts here as JSONL (text, trait, label, score, ...).")
@click.option("--model", default=None,
              help="The model that captured the vector's rows, to capture CORPUS prompts the store lacks "
                   "[default: the default model, when the vector is its].")
@click.option("--generate", default=0, show_default=True, type=click.IntRange(min=0),
              help="Also the projection difference: generate the model's own reply (up to N tokens) to each "
                   "CORPUS chat before its last, given assistant turn, and score the dataset's reply minus the "
                   "model's (needs an assistant_mean vector); --top then ranks by that difference.")
@click.option("--vector", "vector_dir", type=click.Path(), default=None, metavar="DIR",
              help="Score with a bundle's vector (`traitlens bundle`; --vector-id chooses among several), its hashes "
                   "checked first; it and its prompts join the store (created if absent).")
@click.option("--background", "background", multiple=True, type=click.Path(exists=True),
              help="An unlabelled corpus of ordinary prompts (captured first where the store lacks them): every "
                   "score is also given as its percentile among theirs (bg.pct), so one screening threshold flags "
                   "the same share of ordinary prompts whatever the trait. Repeatable.")
@click.pass_context
def score(ctx, corpus, trait, vector_id, where, top, output, model, generate, background, vector_dir=None):
    """Score prompts on a trait vector: all of the vector's group, those of CORPUS files (captured
    first where the store lacks them, with the vector's model, site, pooling and layers), or
    --where; each (prompt, vector) is scored once, into the `scores` table."""
    from traitlens.pipeline.extract.scoring import score as run_score
    from traitlens.store import Store

    ids, pairs = None, None
    if output:
        _output(ctx, output, "-o")
    if vector_dir:  # a bundle: its vector, checked, joins the store and scores like a stored one
        from traitlens.workflows.bundles import adopt, load

        b = load(vector_dir)
        if trait not in (None, b.trait):
            _fail(f"--trait {trait}: the bundle {vector_dir} holds vectors of {b.trait!r}", EXIT_INPUT)
        chosen = b.choose(vector_id)[0]
        adopt(ctx.obj["store"], b, [chosen])
        trait, vector_id, model = b.trait, chosen["vector_id"], model if model is not None else b.model_spec()
    elif not trait:
        raise click.UsageError("give --trait, or --vector DIR (a bundle)")
    if generate and not corpus:
        raise click.UsageError("--generate needs CORPUS files: their chats' given replies are compared with the model's")
    if corpus:
        records, ids, vec = _captured(ctx, trait, vector_id, corpus, model, "CORPUS")
        if generate:
            from traitlens.workflows.screening import own_replies

            rep = own_replies(ctx.obj["store"], vec, records, generate, model)
            pairs = rep.pairs
            ids |= set(pairs.values())
            click.echo(f"replies: {rep.n_generated} generated ({rep.n_empty} empty), {len(pairs)} pairs in all"
                       + (f"; {rep.n_without_reply} records end without an assistant reply" if rep.n_without_reply
                          else ""))
    bg_ids = None
    if background:
        _, bg_ids, _ = _captured(ctx, trait, vector_id, background, model, "background")
        if ids is not None:
            ids |= bg_ids
    res = run_score(ctx.obj["store"], trait, vector_id, ids, where)
    v = res.vector
    bg_sorted = None
    if bg_ids is not None:
        import numpy as np

        from traitlens.pipeline.extract.scoring import background_scores

        bg_sorted = background_scores(Store.open(ctx.obj["store"]), v["vector_id"], bg_ids)
        if len(bg_sorted) == 0:
            _fail("--background: none of its prompts is scored on this vector (the --where condition left them "
                  "out?)", EXIT_INPUT)
        q99 = float(np.quantile(bg_sorted, 0.99))
        click.echo(f"background: {len(bg_sorted)} prompts; their 99th percentile is score {q99:.4g} (bg.pct 0.99): "
                   "a prompt above it scores higher than 99% of ordinary prompts")
    click.echo(f"score: {res.n_scored} prompts scored, {res.n_already} already scored, on {v['method']} L{v['layer']} "
               f"({v['vector_id']}) of {trait!r}" + (f"; run {res.run_id}" if res.run_id else ""))
    if res.n_missing:
        click.echo(f"note: {res.n_missing} prompts asked for are not captured for {v['model_key']}; run "
                   f"`traitlens ingest` on them with that model first", err=True)
    if pairs is not None:
        _print_projection_diffs(ctx, v, pairs, generate, top, output)
    elif top:
        _print_top_scores(ctx, v, top, output, bg_sorted)


def _captured(ctx, trait: str, vector_id, paths, model, what: str):
    """(records, their prompt ids, the vector) of corpus ``paths``, captured first into the
    vector's group where the store lacks them."""
    from traitlens.pipeline.capture.plan import read_corpus
    from traitlens.pipeline.extract.audit import chosen_vector, vector_group
    from traitlens.store import Store
    from traitlens.store.layout import format_layer_list
    from traitlens.workflows.screening import capture_missing

    store = Store.open(ctx.obj["store"])
    records, _ = read_corpus(list(paths), store=store)  # splits as the capture below gives them
    ids = {r.prompt_id for r in records}
    vec = chosen_vector(store, trait, vector_id)
    cap = capture_missing(ctx.obj["store"], vec, list(paths), ids, model)
    if cap is not None:
        store = Store.open(ctx.obj["store"])
        click.echo(f"captured {cap.n_captured} {what} prompts the store lacked ({vector_group(vec).path}, layers "
                   f"{format_layer_list(store.layers(vector_group(vec)))}) before scoring")
    return records, ids, vec


def _print_top_scores(ctx, v: dict, top: int, output, background=None) -> None:
    """The ``top`` highest scores; with ``background`` (sorted background scores) each one's
    percentile among them too (``bg.pct``, also in the ``-o`` file as ``background_percentile``)."""
    from traitlens.queries import StoreSQL

    with StoreSQL(ctx.obj["store"]) as q:
        best = q.query("SELECT prompt_id, score, calibrated, percentile, text, prompt_trait AS trait, label "
                       "FROM scored WHERE vector_id = ? ORDER BY score DESC LIMIT ?", [v["vector_id"], top]).to_pylist()
    if background is not None and best:
        from traitlens.pipeline.extract.scoring import background_percentile

        for r, pct in zip(best, background_percentile(background, [r["score"] for r in best])):
            r["background_percentile"] = float(pct)
    bg = background is not None
    if best:
        click.echo(f"{'calib.':>7} {'pctile':>6}" + (f" {'bg.pct':>6}" if bg else "") + "  text (highest scores; "
                   "calibrated: 0 = held-out negatives' mean, 1 = positives'"
                   + ("; bg.pct: percentile among the background" if bg else "") + ")")
    for r in best:
        text = " ".join(str(r["text"] or "").split())
        click.echo(f"{r['calibrated']:>7.2f} {r['percentile']:>6.3f}"
                   + (f" {r['background_percentile']:>6.3f}" if bg else "") + f"  {text[:90]}")
    if output:
        write_text_atomically(output, "".join(strict_json.dumps(r, default=str) + "\n" for r in best))
        click.echo(f"wrote {output} ({len(best)} prompts)")


def _print_projection_diffs(ctx, v: dict, pairs: dict, generate: int, top: int, output) -> None:
    """The projection differences of these pairs: their mean with a 95% interval, and the
    records whose given reply sits farthest above the model's own."""
    import numpy as np
    import pyarrow as pa

    from traitlens.queries import StoreSQL

    with StoreSQL(ctx.obj["store"]) as q:
        q.con.register("__asked", pa.table({"prompt_id": list(pairs)}))
        rows = q.query("SELECT d.prompt_id, d.diff, d.calibrated_diff, d.dataset_score, d.reply_score, d.reply, "
                       "p.messages FROM projection_diffs d JOIN __asked USING (prompt_id) "
                       "LEFT JOIN (SELECT prompt_id, any_value(messages) AS messages FROM prompts "
                       "WHERE prompt_id IN (SELECT prompt_id FROM __asked) GROUP BY prompt_id) p "
                       "USING (prompt_id) WHERE d.vector_id = ? AND d.model_key = ? AND d.generate = ? "
                       "ORDER BY d.diff DESC", [v["vector_id"], v["model_key"], generate]).to_pylist()
    if not rows:
        click.echo("projection difference: no pair is scored")
        return
    diff = np.asarray([r["calibrated_diff"] for r in rows])
    half = 1.96 * diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
    click.echo(f"projection difference (dataset reply minus the model's own, calibrated units) over {len(rows)} "
               f"pairs: mean {diff.mean():+.3f} (95% CI {diff.mean() - half:+.3f} to {diff.mean() + half:+.3f}), "
               f"{np.mean(diff > 0):.0%} above the model's own")
    best = rows[:top]
    if best:
        click.echo(f"{'diff':>7}  dataset reply | the model's own (largest differences first)")
    for r in best:
        given = json.loads(r["messages"])[-1]["content"] if r["messages"] else ""
        click.echo(f"{r['calibrated_diff']:>+7.2f}  {' '.join(given.split())[:60]} | {' '.join(str(r['reply']).split())[:40]}")
    if output:
        write_text_atomically(output, "".join(strict_json.dumps(r, default=str) + "\n" for r in best))
        click.echo(f"wrote {output} ({len(best)} records)")
