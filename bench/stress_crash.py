"""Crash stress: kill `traitlens ingest` at random points, restart, check, repeat.

    python bench/stress_crash.py [--rounds 20] [--prompts 600] [--seed 0]

Each round starts a real CLI process on a tiny random model and, at a random moment, either
kills it (SIGKILL: no cleanup runs) or terminates it (SIGTERM: it must commit what is complete,
record the run as interrupted and exit 143). One round in four is instead a careless ingest of
another layer set (`--layers 2` into an all-layer store), which must be refused (exit 1) without
changing a byte. After each round the store is checked: `verify` finds no error, every committed
prompt is still there, no prompt is stored twice. After the rounds one clean run finishes the
job, and the final activations must equal an uninterrupted run's. Prints the tally.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from traitlens.testing import make_model, write_corpus

from traitlens.store import Store, verify  # noqa: E402


def committed(store_path: Path) -> dict:
    if not (store_path / "store.json").exists():
        return {}
    s = Store.open(store_path)
    return {g: s.group_rows(g)["prompt_id"].to_pylist() for g in s.groups()}


def running(store: Path) -> set[str]:
    """Runs whose latest record says `running` (a SIGKILL leaves them so; a SIGTERM must not)."""
    if not (store / "store.json").exists():
        return set()
    return {r["run_id"] for r in Store.open(store).runs().to_pylist() if r["status"] == "running"}


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"} if root.exists() else {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--prompts", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="traitlens-stress-"))
    try:
        model = make_model("llama", tmp / "model")
        corpus = write_corpus(tmp / "c.jsonl", args.prompts)
        base = [sys.executable, "-m", "traitlens.workflows.cli"]
        ingest = lambda store: base + ["--store", str(store), "ingest", str(corpus), "--model", str(model),  # noqa: E731
                                       "--batch-size", "8", "--quiet", "--device", "cpu"]
        subprocess.run(ingest(tmp / "ref"), check=True, capture_output=True)
        tally = {"killed": 0, "terminated": 0, "finished before the signal": 0, "mixed-layer refused": 0,
                 "mixed-layer wrote": 0, "bad SIGTERM exits": 0, "verify errors": 0, "lost commits": 0,
                 "duplicates": 0}
        store = tmp / "s"
        for i in range(args.rounds):
            before = committed(store)
            if before and rng.random() < 0.25:  # a careless user: another layer set into this store
                files = snapshot(store)
                r = subprocess.run(ingest(store) + ["--layers", "2"], capture_output=True, text=True)
                ok = r.returncode == 1 and "layers are fixed" in r.stderr and snapshot(store) == files
                tally["mixed-layer refused" if ok else "mixed-layer wrote"] += 1
                print(f"round {i + 1:>2}: mixed-layer ingest {'refused, store unchanged' if ok else 'NOT REFUSED'}")
                continue
            sig = rng.choice([signal.SIGKILL, signal.SIGTERM])
            running_before = running(store)
            p = subprocess.Popen(ingest(store), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            time.sleep(rng.uniform(1.0, 6.0))  # model load takes ~2-4 s: signals land in loading and in writing
            if p.poll() is None:
                p.send_signal(sig)
                tally["killed" if sig == signal.SIGKILL else "terminated"] += 1
            else:
                tally["finished before the signal"] += 1
                sig = None
            err = p.communicate()[1]
            # what SIGTERM must never do: die mid-run, leaving the run recorded as `running`. (It may still
            # end a process with -15 before the handler is installed or after the work is done and recorded,
            # while the interpreter starts up or shuts down: nothing is left half-written then.)
            left_running = bool(running(store) - running_before)
            if sig == signal.SIGTERM and (left_running or p.returncode not in (143, 0, -15)):
                tally["bad SIGTERM exits"] += 1
                print(f"  SIGTERM exit {p.returncode}: {err[-300:]}")
            after = committed(store)
            if after:
                rep = verify(Store.open(store))
                tally["verify errors"] += len(rep.errors)
                for g, ids in before.items():
                    if after.get(g, [])[:len(ids)] != ids:
                        tally["lost commits"] += 1
                tally["duplicates"] += sum(len(ids) - len(set(ids)) for ids in after.values())
            print(f"round {i + 1:>2}: {sum(len(v) for v in after.values()):>5} rows committed", flush=True)
            if sum(len(v) for v in after.values()) >= 2 * args.prompts:  # done: start over to keep killing writes
                shutil.rmtree(store)
        subprocess.run(ingest(store), check=True, capture_output=True)
        final, ref = Store.open(store), Store.open(tmp / "ref")
        equal = True
        for g in ref.groups():
            a = {r["prompt_id"]: r["row"] for r in final.group_rows(g).to_pylist()}
            b = {r["prompt_id"]: r["row"] for r in ref.group_rows(g).to_pylist()}
            xa, xb = final.activations(g, 2), ref.activations(g, 2)
            equal &= a.keys() == b.keys() and all(np.allclose(xa[a[k]], xb[b[k]], rtol=2e-3, atol=2e-3) for k in a)
        print("\n" + ", ".join(f"{k}: {v}" for k, v in tally.items())
              + f"; final verify clean: {verify(final).clean}; equal to an uninterrupted run: {equal}")
        if (tally["verify errors"] or tally["lost commits"] or tally["duplicates"] or tally["mixed-layer wrote"]
                or tally["bad SIGTERM exits"] or not equal):
            raise SystemExit(1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
