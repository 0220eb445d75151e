"""CLI verbs for workflows: ``run``, ``refresh``, ``schedule``."""

from __future__ import annotations

import time

import click

from .cli_base import EXIT_INPUT, _fail, _quiet_libraries, cli


def _run_spec(spec_path, refresh: bool, quiet: bool, scheduler: str | None):
    from traitlens.pipeline.capture.corpus import CorpusError
    from traitlens.store import InputError, StoreLocked
    from traitlens.store.location import check_lasting

    from . import cli_base

    from .runner import run
    from .spec import SpecError, load_spec

    try:  # values are checked by the run itself, unless a receipt answers a refresh first
        spec = load_spec(spec_path, check_values=not refresh)
        if cli_base._OWN_PROCESS:
            check_lasting(spec.store, f"{spec_path}: store")
    except (SpecError, InputError) as e:
        _fail(str(e), EXIT_INPUT)
    if quiet:
        _quiet_libraries()
    log = (lambda *a, **k: None) if quiet else (lambda m: click.echo(m, err=True))
    try:
        return run(spec, refresh=refresh, progress=not quiet, log=log, scheduler=scheduler)
    except StoreLocked:
        raise
    except (CorpusError, SpecError, ValueError) as e:
        _fail(str(e), EXIT_INPUT)


@cli.command(name="run")
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--scheduler", default=None, help="Dask scheduler address for extraction [default: spec, env, local].")
@click.option("--quiet", "-q", is_flag=True)
def run_cmd(spec, scheduler, quiet):
    """Run a workflow spec (TOML/YAML): ingest, extract, evaluate, rank, report."""
    s = _run_spec(spec, False, quiet, scheduler)
    for line in s.lines():
        click.echo(line)
    click.echo(f"run {s.run_id} done in {s.seconds:.0f} s")


@cli.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--scheduler", default=None)
@click.option("--quiet", "-q", is_flag=True)
def refresh(spec, scheduler, quiet):
    """Bring a spec's store up to date: only new prompts are captured, only stale vectors recomputed."""
    s = _run_spec(spec, True, quiet, scheduler)
    if not s.changed:
        click.echo("refresh: nothing to do (no new prompts, every vector current)")
        return
    for line in s.lines():
        click.echo(line)
    click.echo(f"refresh {s.run_id} done in {s.seconds:.0f} s")


@cli.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--every", required=True, help="Interval: 30s, 15m, 1h, 1d.")
@click.option("--max-runs", type=click.IntRange(min=1), default=None, help="Stop after this many refreshes [default: never].")
@click.option("--quiet", "-q", is_flag=True)
def schedule(spec, every, max_runs, quiet):
    """Refresh a spec on an interval, for machines without cron (a held lock skips that tick)."""
    from traitlens.store import StoreLocked

    from .report import utc_stamp
    from .runner import parse_every

    try:
        period = parse_every(every)
    except ValueError as e:
        _fail(str(e), EXIT_INPUT)
    n = 0
    while max_runs is None or n < max_runs:
        t = time.monotonic()
        try:
            s = _run_spec(spec, True, quiet, None)
            click.echo(f"{utc_stamp()} refresh: " + ("nothing to do" if not s.changed else
                                                     f"{s.captured} captured, {s.vectors_new} new vectors"))
        except StoreLocked as e:
            click.echo(f"{utc_stamp()} skipped: {e}", err=True)
        except SystemExit as e:  # a failed refresh is reported; the schedule goes on
            if e.code not in (0, None):
                click.echo(f"{utc_stamp()} refresh failed (exit {e.code}); next in {every}", err=True)
        n += 1
        if max_runs is not None and n >= max_runs:
            break
        time.sleep(max(0.0, period - (time.monotonic() - t)))
