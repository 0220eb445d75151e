"""CLI verbs for vectors: ``extract``, ``vectors``, ``export``, ``import``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from traitlens.store import strict_json
from traitlens.store.vocabulary import EVALUATION_KINDS, EXPORT_FORMATS, FORMATS, METHOD_NAMES, NORMS, OPERATIONS

from .cli_base import EXIT_INPUT, FiniteFloat, _fail, _output, cli


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
    from traitlens.pipeline.extract.config import ExtractConfig
    from traitlens.workflows import api

    cfg = ExtractConfig(methods=methods, layers=layers, model=model, fmt=fmt, site=site, pooling=pooling, where=where,
                        train_split=train_split, held_split=held_split, n_boot=n_boot, seed=seed, memory_budget=memory,
                        params={"probe": {"C": probe_c, "penalty": penalty}})
    res = api.extract(ctx.obj["store"], trait, cfg, background=list(background), scheduler=scheduler,
                      progress=not quiet)
    for line in ([] if quiet else res.best_lines()) + [res.done_line()]:
        click.echo(line)


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
    from traitlens.workflows import api

    res = api.export(ctx.obj["store"], traits[0], fmt_, method=method, layers=layers or "all", model=model, alpha=alpha,
                     norm=norm, scale=scale, model_hint=model_hint, device=device, output=output, bundle=bundle_rows,
                     log=lambda m: click.echo(m, err=True))
    for line in res.lines():
        click.echo(line)


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


def _load_for_export(model, device):
    from traitlens.workflows.api import load_for_export

    return load_for_export(model, device, log=lambda m: click.echo(m, err=True))


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
    from traitlens.pipeline.extract.config import ScoreConfig
    from traitlens.workflows import api

    cfg = ScoreConfig(vector_id=vector_id, where=where, top=top, model=model, generate=generate)
    res = api.score(ctx.obj["store"], trait, list(corpus), cfg, output=output, background=list(background),
                    vector=vector_dir)
    lines = res.lines()
    for line in lines[:len(res.before) + 1]:  # what was captured or generated first, and the score line
        click.echo(line)
    for line in res.notes:
        click.echo(line, err=True)
    for line in lines[len(res.before) + 1:]:
        click.echo(line)
