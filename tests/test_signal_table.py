"""The signals table of docs/guarantees.md, measured: SIGINT, SIGTERM and SIGKILL sent to each
long command (ingest, extract, compact, evaluate, score, serve) at a state of its run, never
after a sleep. Each case records what a user sees (exit code, last line) and what the store
holds after it (``verify``, the run's status, before and after the next command that takes the
lock), and asserts the cell of the table. ``pytest -s`` prints each outcome as a table row.

Where a command's work on a tiny store is over before anything can be seen from outside
(compact, score), it runs with a pause inserted at a named point of its work (:data:`PAUSING`):
the process is then exactly where a longer run would be, and the signal lands there."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from traitlens.testing import alive, descendants, end_all, store_copy, synthetic_store, wait_until, write_corpus
from traitlens.store import Store, verify

pytestmark = pytest.mark.slow  # real processes and signals: `make test-fast` leaves them out

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM, "SIGKILL": signal.SIGKILL}
WORDS = {"SIGINT": "interrupted (Ctrl-C)", "SIGTERM": "terminated (SIGTERM)"}  # a command's last line

# `traitlens ARGS` run by a Python that first makes one function stop where it is called: it
# creates the marker file (the test's cue) and waits there. argv: marker, patch name, ARGS...
PAUSING = """
import pathlib, sys, time
marker, patch = pathlib.Path(sys.argv.pop(1)), sys.argv.pop(1)

def pause():
    marker.touch()
    time.sleep(600)

if patch == "compact-reading":  # a new base being written: its .tmp-* open, its first input not yet read
    from traitlens.store import compaction
    real_batches = compaction._batches
    def _batches(*a, **kw):
        pause()
        return real_batches(*a, **kw)
    compaction._batches = _batches
elif patch == "score-scoring":  # the run recorded running, the scores computed, no scores part written
    from traitlens.store.store import Store
    real_append = Store.append
    def append(self, table, rows):
        if table == "scores":
            pause()
        return real_append(self, table, rows)
    Store.append = append
sys.argv[0] = "traitlens"
from traitlens.workflows.cli import main
main()
"""


def sigint_default():
    """Popen's ``preexec_fn``: SIGINT as a terminal delivers it (a background job inherits it ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def snapshot(root: Path) -> dict[str, str]:
    """Every file under a store (but the lock) -> its content hash."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


def cli(store: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "traitlens.workflows.cli", "--store", str(store), *map(str, args)],
                          env=ENV, capture_output=True, text=True, timeout=600)  # a hang guard only


def run_statuses(store: Path, before: set[str]) -> list[str]:
    """The status `traitlens runs` shows for each run the signalled command started."""
    shown = json.loads(cli(store, "runs", "--json", "--limit", "0").stdout)
    return [r["status"] + ("" if r["recorded"] else " (not yet recorded)") for r in shown if r["run_id"] not in before]


@dataclass
class Outcome:
    command: str
    signal: str
    code: int  # the exit status (-9: killed by SIGKILL)
    last_line: str  # the last line it wrote to stderr
    traceback: bool
    verify: str  # `traitlens verify`'s summary line, after the signal
    verify_code: int
    runs: list[str]  # the signalled command's runs as `traitlens runs` shows them, after the signal
    runs_next: list[str] = field(default_factory=list)  # ... after `verify --repair` took the lock
    unchanged: bool = False  # the store is byte for byte what it was before the command
    left: list[int] = field(default_factory=list)  # its child processes still alive after it ended
    stderr: str = ""  # the end of what it wrote to stderr (shown when an assertion fails)
    verify_lines: str = ""  # all `traitlens verify` said

    def row(self) -> str:
        return (f"| {self.command} | {self.signal} | {self.code} | {self.last_line[:90]} | {self.verify} | "
                f"{', '.join(self.runs) or '-'} -> {', '.join(self.runs_next) or '-'} | "
                f"{'unchanged' if self.unchanged else 'written'} |")


def signalled(name: str, store: Path, argv: list, ready, sig: str, patch: str | None = None, tmp: Path | None = None,
              stdout_lines: list | None = None) -> Outcome:
    """Start ``traitlens --store STORE ARGV``, wait until ``ready(process)`` (or, with ``patch``, until
    it stops at its pause), send ``sig``, and read what it did."""
    before_runs = {r["run_id"] for r in Store.open(store).runs().to_pylist()}
    before = snapshot(store)
    if patch:
        marker = tmp / f"paused-{name}-{sig}"
        cmd = [sys.executable, "-c", PAUSING, str(marker), patch, "--store", str(store), *map(str, argv)]
        ready = lambda p: marker.exists()  # noqa: E731
    else:
        cmd = [sys.executable, "-m", "traitlens.workflows.cli", "--store", str(store), *map(str, argv)]
    p = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=sigint_default)
    out: list[str] = stdout_lines if stdout_lines is not None else []
    reader = threading.Thread(target=lambda: out.extend(p.stdout), daemon=True)
    reader.start()
    children: list[int] = []
    try:
        assert wait_until(lambda: ready(p) or p.poll() is not None), f"{name}: never reached its state"
        assert p.poll() is None, f"{name} ended before the signal: {p.stderr.read()[-2000:]}"
        children = descendants(p.pid)
        p.send_signal(SIGNALS[sig])
        err = p.stderr.read()
        p.wait(timeout=600)  # a hang guard only
        wait_until(lambda: not alive(children))
        left = alive(children)
    finally:
        p.kill()
        p.wait()
        end_all(children)
    reader.join(timeout=60)
    lines = [x for x in err.splitlines() if x.strip()]
    v = cli(store, "verify")
    summary = next((x for x in reversed(v.stdout.splitlines()) if "clean" in x), v.stdout.strip()[-120:])
    outcome = Outcome(name, sig, p.returncode, lines[-1] if lines else "", "Traceback" in err,
                      re.sub(r"^\S+: ", "", summary), v.returncode, run_statuses(store, before_runs), left=left,
                      stderr=err[-3000:], verify_lines=v.stdout)
    outcome.unchanged = snapshot(store) == before
    if sig == "SIGKILL":
        assert cli(store, "verify", "--repair").returncode == 0
        outcome.runs_next = run_statuses(store, before_runs)
    print("\n" + outcome.row())
    assert not outcome.traceback and not outcome.left, outcome  # whatever the command and the signal
    if sig != "SIGKILL" and name not in ("serve", "ingest"):  # (ingest says what it committed: its test)
        assert outcome.last_line == WORDS[sig], outcome
    return outcome


@pytest.fixture(scope="module")
def captured(tmp_path_factory, tiny_llama):
    """120 prompts captured with the tiny Llama, and their mean_diff vectors: what evaluate,
    score, compact and serve work on."""
    d = tmp_path_factory.mktemp("captured")
    s = d / "s"
    assert cli(s, "ingest", write_corpus(d / "c.jsonl", 120), "--model", tiny_llama, "--quiet").returncode == 0
    assert cli(s, "extract", "--trait", "kindness", "--methods", "mean_diff", "--quiet").returncode == 0
    return s


@pytest.mark.parametrize("sig", SIGNALS)
def test_ingest(tmp_path, tiny_llama, sig):
    corpus = write_corpus(tmp_path / "c.jsonl", 1200)
    s = tmp_path / "s"
    Store.open(s, create=True)
    rows = s / "tables" / "rows"
    o = signalled("ingest", s, ["ingest", corpus, "--model", tiny_llama, "--batch-size", "8", "--device", "cpu",
                                "--quiet"], lambda p: any(rows.glob("part-*")), sig)  # its first commit made
    n = Store.open(s).committed(Store.open(s).groups()[0]).n_prompts
    assert 0 < n < 1200 and not o.traceback and not o.left
    if sig == "SIGKILL":
        assert o.code == -9 and o.runs == ["killed (not yet recorded)"] and o.runs_next == ["killed"]
    else:
        assert o.code == {"SIGINT": 130, "SIGTERM": 143}[sig] and o.verify_code == 0
        reason = {"SIGINT": "interrupted", "SIGTERM": "terminated (SIGTERM)"}[sig]
        assert o.last_line.startswith(f"{reason}: {n} prompts committed, the run is recorded as interrupted")
        assert o.runs == ["interrupted"]
    assert not verify(Store.open(s)).errors


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """Rows enough that an extraction on forked workers runs for a while."""
    path = tmp_path_factory.mktemp("fitted") / "s"
    synthetic_store(path, n=3000, d=64, layers=tuple(range(12)), chunk_rows=256)
    return path


@pytest.mark.parametrize("sig", SIGNALS)
def test_extract(tmp_path, fitted, sig):
    s = store_copy(fitted, tmp_path / "s").root
    before = len(Store.open(s).runs())
    o = signalled("extract", s, ["extract", "--trait", "planted", "--n-boot", "8", "--scheduler", "processes"],
                  lambda p: len(Store.open(s).runs()) > before and bool(descendants(p.pid)), sig)  # inside the fits
    assert not o.traceback and not o.left  # no worker outlives it, whatever the signal
    assert Store.open(s).table("vectors").num_rows == 0 and o.verify_code == 0
    if sig == "SIGKILL":
        assert o.code == -9 and o.runs == ["killed (not yet recorded)"] and o.runs_next == ["killed"]
    else:
        assert o.code == {"SIGINT": 130, "SIGTERM": 143}[sig] and o.runs == ["interrupted"]


@pytest.mark.parametrize("sig", SIGNALS)
def test_compact(tmp_path, captured, sig):
    s = store_copy(captured, tmp_path / "s").root
    want = Store.open(s).table("rows")
    o = signalled("compact", s, ["compact"], None, sig, patch="compact-reading", tmp=tmp_path)
    store = Store.open(s)
    assert store.table("rows").equals(want) and not o.traceback  # every row once, in order
    assert o.runs == []  # compact records no run
    if sig == "SIGKILL":  # its half-written base is left as a temporary: a tail, which --repair removes
        assert o.code == -9 and o.verify_code == 1 and o.verify.startswith("store NOT clean")
        assert "temporary file tables/" in o.verify_lines
    else:  # the temporary goes with the interrupted write
        assert o.code == {"SIGINT": 130, "SIGTERM": 143}[sig] and o.verify_code == 0
    assert cli(s, "compact").returncode == 0 and verify(Store.open(s)).clean


@pytest.mark.parametrize("sig", SIGNALS)
def test_evaluate(tmp_path, captured, tiny_llama, sig):
    s = store_copy(captured, tmp_path / "s").root
    out: list[str] = []
    o = signalled("evaluate", s, ["evaluate", "--trait", "kindness", "--steering", "--model", tiny_llama, "--n", "8",
                                  "--reply-tokens", "3"], lambda p: any("held-out" in x for x in out), sig,
                  stdout_lines=out)  # measuring: it has said what it measures on
    assert o.unchanged and o.runs == [] and not o.traceback and o.verify_code == 0
    assert o.code == {"SIGINT": 130, "SIGTERM": 143, "SIGKILL": -9}[sig]


@pytest.mark.parametrize("sig", SIGNALS)
def test_score(tmp_path, captured, sig):
    s = store_copy(captured, tmp_path / "s").root
    o = signalled("score", s, ["score", "--trait", "kindness"], None, sig, patch="score-scoring", tmp=tmp_path)
    assert Store.open(s).table("scores").num_rows == 0 and not o.traceback and o.verify_code == 0
    if sig == "SIGKILL":
        assert o.code == -9 and o.runs == ["killed (not yet recorded)"] and o.runs_next == ["killed"]
    else:
        assert o.code == {"SIGINT": 130, "SIGTERM": 143}[sig] and o.runs == ["interrupted"]
    assert cli(s, "score", "--trait", "kindness").returncode == 0  # the rerun scores every prompt
    assert Store.open(s).table("scores").num_rows == 120


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("sig", SIGNALS)
def test_serve(tmp_path, captured, sig):
    s = store_copy(captured, tmp_path / "s").root
    port = _free_port()

    def answering(p=None):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                return r.status == 200
        except OSError:
            return False

    o = signalled("serve", s, ["serve", "--port", port], answering, sig)
    assert o.unchanged and o.runs == [] and not o.traceback and not answering()
    assert o.code == {"SIGINT": 0, "SIGTERM": 0, "SIGKILL": -9}[sig] and o.last_line == ""
