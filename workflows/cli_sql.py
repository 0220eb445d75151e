"""CLI verbs for SQL: ``query``, ``sql`` (interactive), ``rank``."""

from __future__ import annotations

from pathlib import Path

import click

from traitlens.store import strict_json
from traitlens.store.location import write_text_atomically

from .cli_base import EXIT_INPUT, FiniteFloat, _fail, _output, cli, write_bytes_atomically


def _print_table(t, max_rows: int = 200) -> None:
    """A pyarrow Table as aligned text columns (vectors shortened)."""
    from .results import text_table

    for line in text_table(t, max_rows):
        click.echo(line)


def _write_result(t, fmt_: str, output: str | None) -> None:
    import pyarrow.csv as pcsv

    if fmt_ == "table":
        _print_table(t)
    elif fmt_ == "json":
        text = strict_json.dumps(t.to_pylist(), default=str)
        write_text_atomically(output, text) if output else click.echo(text)
    elif fmt_ == "csv":
        import io

        flat = t.select([c for c in t.column_names])
        buf = io.BytesIO()
        pcsv.write_csv(_lists_as_json(flat), buf)
        write_bytes_atomically(output, buf.getvalue()) if output else click.echo(buf.getvalue().decode(), nl=False)
    else:
        _write_parquet(t, output)
        click.echo(f"wrote {output} ({t.num_rows} rows)")


def _write_parquet(t, output: str) -> None:
    """``t`` as a Parquet file, whole or not at all; a column type Parquet cannot hold is an input error."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from traitlens.store.location import write_atomically

    try:
        write_atomically(Path(output), lambda f: pq.write_table(t, f))
    except pa.ArrowNotImplementedError as e:
        _fail(f"--format parquet: {str(e).splitlines()[0]}; cast that column in the SQL (e.g. ::VARCHAR), or use "
              "--format csv or json", EXIT_INPUT)


def _lists_as_json(t):
    import pyarrow as pa

    cols = []
    for name in t.column_names:
        col = t[name]
        if pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type) or pa.types.is_struct(col.type):
            col = pa.array([strict_json.dumps(v, default=str) for v in col.to_pylist()])
        cols.append(col)
    return pa.table(cols, names=t.column_names)


@cli.command()
@click.argument("sql")
@click.option("--format", "fmt_", type=click.Choice(["table", "csv", "json", "parquet"]), default="table",
              show_default=True, help="json: one array of row objects.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Write here instead of stdout (never inside the store).")
@click.option("--timeout", type=FiniteFloat(min=0, min_open=True), default=3600, show_default=True,
              help="Stop a statement after this many seconds.")
@click.pass_context
def query(ctx, sql, fmt_, output, timeout):
    """Run read-only SQL over the store. Views: prompts, rows, runs, vectors, metrics, groups,
    act_L<layer> (activations, streamed), macro nearest(vector_id, k)."""
    from traitlens.workflows import api

    _output(ctx, output, "-o")
    if fmt_ == "parquet" and not output:
        _fail("--format parquet needs -o FILE", EXIT_INPUT)
    _write_result(api.query(ctx.obj["store"], sql, timeout).to_arrow(), fmt_, output)


@cli.command()
@click.pass_context
def sql(ctx):
    """Interactive read-only SQL prompt (history kept in $TRAITLENS_HOME/sql_history)."""
    from traitlens.pipeline.model.loading import traitlens_home
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
            except KeyboardInterrupt as e:  # Ctrl-C stops the statement, not the session; SIGTERM ends it
                if getattr(e, "exit_code", 130) != 130:
                    raise
                click.echo("(statement cancelled)", err=True)
            buf = ""
    if readline is not None:
        readline.write_history_file(hist)


@cli.command()
@click.option("--trait", required=True)
@click.option("--by", default="auroc", show_default=True,
              help="auroc | balanced_accuracy | cohens_d | separation | stability | agreement | train_auroc | steering "
                   "(the best causal shift within the KL budget, from `traitlens evaluate --steering`) | "
                   "spec_precision | spec_auroc (beyond the corpus, from `extract --background`)")
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--format", "fmt_", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="json: {\"by\", \"rows\": [...], \"floor\": {...} or null}.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None,
              help="Also write a heatmap PNG of layers x methods here (the best cell boxed).")
@click.pass_context
def rank(ctx, trait, by, top, fmt_, plot):
    """The best (layer, method, site, pooling) for a trait, with stability and agreement."""
    from traitlens.workflows import api

    res = api.rank(ctx.obj["store"], trait, by, top, plot=plot)
    if fmt_ == "json":
        click.echo(strict_json.dumps(res.as_json(), default=str))
        return
    for line in res.lines():
        click.echo(line)
