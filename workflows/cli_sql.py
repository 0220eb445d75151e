"""CLI verbs for SQL: ``query``, ``sql`` (interactive), ``rank``."""

from __future__ import annotations

from pathlib import Path

import click

from traitlens.store import strict_json

from .cli_base import EXIT_INPUT, FiniteFloat, _fail, _output, cli, write_bytes_atomically, write_text_atomically


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
    from traitlens.queries import StoreSQL

    _output(ctx, output, "-o")
    if fmt_ == "parquet" and not output:
        _fail("--format parquet needs -o FILE", EXIT_INPUT)
    with StoreSQL(ctx.obj["store"]) as q:
        _write_result(q.query(sql, timeout=timeout), fmt_, output)


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
    from traitlens.queries import StoreSQL
    from traitlens.queries.ranking import heatmap
    from traitlens.queries.ranking import rank as run_rank

    if plot:
        _output(ctx, plot, "--plot")
    with StoreSQL(ctx.obj["store"]) as q:
        best, floor = run_rank(q, trait, by, top)
        f = floor.to_pylist()[0] if floor.num_rows else None
        from traitlens.pipeline.extract.floors import floor_flag

        rows = best.to_pylist()
        random_auroc = f["auroc"] if f is not None else None
        flags = {r["vector_id"]: floor_flag(r, random_auroc) for r in rows}
        if fmt_ == "json":
            from traitlens.queries.selection import RULE

            for r in rows:
                r["below_floor"] = flags[r["vector_id"]]
            click.echo(strict_json.dumps({"trait": trait, "by": by, "order": RULE.format(by=by), "rows": rows,
                                          "floor": f}, default=str))
        else:
            from traitlens.queries.selection import RULE, metric_column, tie_note

            from traitlens.queries.ranking import SPECIFICITY

            hidden = ["model_key", "fmt", "n_held_pos", "n_held_neg", "floor_length", "floor_dataset", "spec_base",
                      "spec_floor_length", "n_background"]
            if all(r["spec_auroc"] is None for r in rows):
                hidden += list(SPECIFICITY)
            _print_table(best.drop_columns(hidden))
            click.echo(f"order: {RULE.format(by=by)}")
            if f is not None:
                value = f[metric_column(by)]
                click.echo(f"floor (random direction, best layer {f['layer']}): {by} "
                           + ("not measured" if value is None else f"{value:.3f}"))
            nuisance = [(name, rows[0][col]) for name, col in (("token count", "floor_length"),
                                                               ("dataset", "floor_dataset"))
                        if rows[0][col] is not None]
            if nuisance:
                click.echo("floors (not the trait, fitted on train, held-out AUROC): "
                           + ", ".join(f"{name} {v:.3f}" for name, v in nuisance))
            spec = _specificity_line(rows[0], f)
            if spec:
                click.echo(spec)
            for r in rows:
                if flags[r["vector_id"]]:
                    click.echo(f"flag: {r['method']} L{r['layer']}: {flags[r['vector_id']]}")
            note = tie_note(rows, metric_column(by), (rows[0]["n_held_pos"] or 0) + (rows[0]["n_held_neg"] or 0))
            if note:
                click.echo(f"note: {note}")
            for line in _detection_and_steering(q, trait):
                click.echo(line)
            from traitlens.queries.ranking import lens_summary

            said = lens_summary(q.store).get(rows[0]["vector_id"])
            if said:
                click.echo(f"logit lens of the first row (promotes | suppresses): {said}")
        if plot:
            heatmap(q, trait, by, best.to_pylist()[0], Path(plot))
            if fmt_ != "json":
                click.echo(f"heatmap: {plot}")


def _specificity_line(r: dict, floor: dict | None) -> str | None:
    """The first row's out-of-corpus specificity beside its floors (base rate, token count,
    random direction), with a warning when length alone does as well; None when its vector was
    extracted without a background."""
    if r.get("spec_auroc") is None:
        return None
    from traitlens.pipeline.extract.floors import FLOOR_MARGIN

    rnd = ""
    if floor is not None and floor.get("spec_auroc") is not None:
        rnd = f"; random direction: precision {floor['spec_precision']:.3f}, AUROC {floor['spec_auroc']:.3f}"
    line = (f"beyond the corpus ({r['n_background']} held-out background prompts): top-decile precision "
            f"{r['spec_precision']:.3f} (base rate {r['spec_base']:.3f}), AUROC against the background "
            f"{r['spec_auroc']:.3f}; floors: token count AUROC {r['spec_floor_length']:.3f}{rnd}")
    if r["spec_auroc"] - r["spec_floor_length"] < FLOOR_MARGIN:
        line += ("\nflag: against the background the token count alone does as well as this vector: it may read "
                 "length, not the trait")
    return line


def _detection_and_steering(q, trait: str) -> list[str]:
    """The detection and steering picks side by side (nothing before `evaluate --steering` ran)."""
    from traitlens.pipeline.steer.records import stored_rows, summary_lines

    kind, rows, _ = stored_rows(q, trait)
    return summary_lines(q, trait, kind, rows) if rows else []
