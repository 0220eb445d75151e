"""What every ``traitlens`` verb shares: the command group, exit codes, one-line failures.

Exit codes: 0 success; 1 a failure the message explains; 2 bad usage or bad input;
3 the store is locked by another live run (so cron wrappers can tell it apart); 130 interrupted
(Ctrl-C); 143 terminated (SIGTERM, handled like Ctrl-C: what is complete is committed and the run
is recorded as interrupted). Every error the project explains is a
:class:`~traitlens.store.errors.TraitlensError` carrying its exit code, so the group catches
that one class (and imports no stage, so no verb pays for torch it does not use).

The verbs live in ``cli`` (info, ingest, verify), ``cli_vectors``, ``cli_sql``, ``cli_steer``,
``cli_workflow`` and ``cli_bundle``; each imports this module, never another verb's.
"""

from __future__ import annotations

import os
import sys

import click

from traitlens.store.errors import EXIT_FAIL, EXIT_INPUT, EXIT_LOCKED, TraitlensError  # noqa: F401

EXIT_INTERRUPTED = 130


def _default_store() -> str:
    return os.environ.get("TRAITLENS_STORE", "traitstore")


def _fail(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _output(ctx, path, option: str):
    """An output path of a command, refused (exit 2) when it would land inside the store or in
    a folder that does not exist (checked before any work, so nothing is computed for nothing)."""
    from traitlens.store.location import check_output_path

    check_output_path(path, ctx.obj["store"], option)  # an InputError: the group prints it, exit 2
    return path


def write_bytes_atomically(path, data: bytes) -> None:
    """An output file written whole or not at all (a temporary beside it, renamed): a failure
    or an interrupt never leaves a truncated or empty file behind."""
    from pathlib import Path

    from traitlens.store.location import write_atomically

    write_atomically(Path(path), lambda f: f.write(data))


def _exit_now(code: int) -> None:
    """Exit at once after an interrupt. Everything committed is already on disk (parts are
    fsynced, chunks written); a plain exit would wait for worker threads still inside a fit
    (Dask's pool is joined at exit), which made Ctrl-C take effect 30-40 s late."""
    if not _OWN_PROCESS:  # called in-process (tests, an embedding app): exit the ordinary way
        sys.exit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


_OWN_PROCESS = False  # set by own_process(): the process is the `traitlens` command itself


def own_process() -> None:
    """Called by ``main()``: interrupts may end the process at once (see :func:`_exit_now`)."""
    global _OWN_PROCESS
    _OWN_PROCESS = True


class Guarded(click.Group):
    """Turns the project's own exceptions into one-line errors with the right exit code."""

    def invoke(self, ctx):
        try:
            return self._invoke(ctx)
        except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM (see pipeline.interrupts), also during the imports
            from traitlens.pipeline.runtime.interrupts import interrupt_exit_code, interrupt_reason

            click.echo(f"\n{str(e) or interrupt_reason(e)}", err=True)
            _exit_now(interrupt_exit_code(e))

    def _invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except TraitlensError as e:  # every error the project explains, with its own exit code
            _fail(str(e), e.exit_code)
        except OSError as e:  # full disk, read-only store, permissions: say so, and what survived
            import errno

            if e.errno == errno.EPIPE:  # `traitlens rank | head`: the reader left; nothing failed, nothing to say
                if _OWN_PROCESS:
                    sys.stdout = open(os.devnull, "w")  # (the interpreter's final flush would raise again)
                sys.exit(128 + 13)  # as if killed by SIGPIPE, like other command-line tools
            why = {errno.ENOSPC: "the disk is full", errno.EROFS: "the store is on a read-only file system",
                   errno.EACCES: "permission denied", errno.EPERM: "permission denied"}.get(e.errno, "an I/O error")
            _fail(f"cannot write: {why} ({e}). Everything committed before this is intact; fix it and rerun the "
                  "same command to continue (`traitlens verify --repair` drops any uncommitted tail)", EXIT_FAIL)


@click.group(cls=Guarded, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--store", "store_path", default=_default_store, show_default="$TRAITLENS_STORE or ./traitstore",
              metavar="PATH|URL", help="Store folder, or an fsspec URL (s3://bucket/store, gs://..., memory://...).")
@click.version_option(package_name="traitlens")
@click.pass_context
def cli(ctx, store_path):
    """traitlens: prompt corpora -> activations (Zarr + Parquet) -> trait vectors, with SQL on top."""
    from traitlens.store.location import check_lasting
    from traitlens.store.location import store_path as as_store_path

    try:
        ctx.obj = {"store": as_store_path(store_path)}
        if _OWN_PROCESS:  # run in-process (tests, an embedding app) a memory:// store outlives the command
            check_lasting(ctx.obj["store"])
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--store") from None


class FiniteFloat(click.FloatRange):
    """A float option: finite (NaN and infinities fail every range check silently, so they are
    refused first), within its bounds, and where ``float32`` asks, small enough for float32.
    The rule is :func:`traitlens.store.finite.check_float`'s, which workflow specs and formulas
    use too; every float option of every verb has this type (a test walks the command tree).
    A ``FloatRange`` so that help shows its range as click's does."""

    name = "float"

    def __init__(self, min: float | None = None, max: float | None = None, min_open: bool = False,
                 max_open: bool = False, nonzero: bool = False, float32: bool = False):
        super().__init__(min=min, max=max, min_open=min_open, max_open=max_open)
        self.bounds = dict(min=min, max=max, min_open=min_open, max_open=max_open, nonzero=nonzero, float32=float32)

    def _describe_range(self) -> str:  # (click's reads "x<=None" for no bounds)
        return "" if self.min is None and self.max is None else super()._describe_range()

    def convert(self, value, param, ctx):
        from traitlens.store.finite import float_problem

        x, problem = float_problem(value, **self.bounds)
        if problem is not None:
            self.fail(f"{str(value)[:40]!r}: {problem}", param, ctx)
        return x

    def get_metavar(self, param, ctx=None):  # as click's FloatRange and FLOAT show themselves
        return "FLOAT RANGE" if self.bounds["min"] is not None or self.bounds["max"] is not None else "FLOAT"


class FiniteFloats(FiniteFloat):
    """A comma list of floats (``0.1,0.25,-0.5``), each under :class:`FiniteFloat`'s rule; at
    least one."""

    name = "floats"

    def convert(self, value, param, ctx):
        if isinstance(value, (list, tuple)):
            return [super(FiniteFloats, self).convert(a, param, ctx) for a in value]
        items = [a.strip() for a in str(value).split(",") if a.strip()]
        if not items:
            self.fail("give a comma list of numbers, e.g. 0.1,0.25", param, ctx)
        return [super(FiniteFloats, self).convert(a, param, ctx) for a in items]

    def get_metavar(self, param, ctx=None):
        return "TEXT"  # a comma list, as before it was checked


def _quiet_libraries() -> None:
    """Silence transformers and the hub's progress bars. Through the environment they read at
    import: importing transformers here (a second) would cost every run that needs no model."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:  # already imported: tell it directly
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
