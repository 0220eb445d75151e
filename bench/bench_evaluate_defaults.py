"""`traitlens evaluate --trait sentiment --steering` at its defaults, timed as a user runs it.

    python bench/bench_evaluate_defaults.py [--profile FILE | --spy FILE] [--rebuild]

Builds once (cached under bench/out/evaluate-defaults/) a store on the default model with the
project's own demo corpus, the sentiment trait only (400 reviews a side, so its held-out split
holds the default 40 statements), captured at all 30 layers, and mean_diff, probe and random
vectors extracted at every layer: two methods x all layers, and the random direction the floor
reads. Then runs ``traitlens evaluate --trait sentiment --steering`` with no other option in a
subprocess (a fresh interpreter, the model loaded as a user's run loads it) and prints its wall
time, the load average before and after (the machine may be shared: read the time beside it)
and the tail of its output. ``--profile FILE`` runs it under cProfile instead (slower; for where
the time goes, not for the figure). It also prints the run's CPU time (user + system), which a
shared machine's load does not inflate: on an idle machine of ``n`` cores the run takes at least
CPU time / ``n``. ``--spy FILE`` under py-spy (sampling, ``pip install
py-spy``), writing collapsed stacks (``-f raw``) for :func:`where_the_time_goes`. To time another
checkout of traitlens (the code before a change), put its parent folder first on PYTHONPATH
(a folder holding ``traitlens/``): the subprocess imports it instead of this worktree. Each run
appends its own rows to the store's steering table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "out" / "evaluate-defaults"
TRAIT = "sentiment"
PER_SIDE = 400


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "traitlens.workflows.cli", *args]


def build(store: Path) -> None:
    """The store: the trait's demo prompts captured at every layer; mean_diff, probe, random."""
    from traitlens.workflows.demo_corpus import demo_records

    OUT.mkdir(parents=True, exist_ok=True)
    corpus = OUT / f"{TRAIT}.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in demo_records(PER_SIDE) if r["trait"] == TRAIT))
    t = time.perf_counter()
    subprocess.run(cli("--store", str(store), "ingest", str(corpus)), check=True)
    subprocess.run(cli("--store", str(store), "extract", "--trait", TRAIT, "--methods", "mean_diff,probe,random",
                       "--n-boot", "0"), check=True)
    print(f"store built in {time.perf_counter() - t:.0f} s: {store}", flush=True)


STAGES = (  # (name, a function on the stack), the first one found counts: reply generation first
    ("model load", "load_model"), ("replies (generate)", "greedy_batch"),
    ("reply perplexity", "reply_perplexity"), ("KL forwards", "next_token_kl_under"),
    ("measure (persona log-odds)", "yes_no_logodds"), ("alpha's unit (norm)", "mean_token_norm"),
    ("bootstrap intervals", "bootstrap_ci"), ("store writes", "save"), ("figure", "steering_figure"),
    ("imports", "_find_and_load"))


def where_the_time_goes(path: str) -> None:
    """Share of py-spy's samples under each stage of :data:`STAGES` (collapsed stacks)."""
    counts, total = dict.fromkeys([s for s, _ in STAGES] + ["other"], 0), 0
    for line in Path(path).read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        total += int(n)
        frames = [f.split(" (")[0] for f in stack.split(";")]
        stage = next((s for s, f in STAGES if f in frames), "other")
        counts[stage] += int(n)
    print(f"\nwhere the time goes ({total} samples):")
    for s, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        if n:
            print(f"  {s:<28} {100 * n / total:5.1f}%")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default=None, help="run evaluate under cProfile, writing its stats here")
    ap.add_argument("--spy", default=None, help="run evaluate under py-spy, writing collapsed stacks here")
    ap.add_argument("--rebuild", action="store_true", help="build the store again")
    args = ap.parse_args()
    store = OUT / "store"
    if args.rebuild and store.exists():
        shutil.rmtree(store)
    if not (store / ".built").exists():
        if store.exists():
            shutil.rmtree(store)
        build(store)
        (store / ".built").write_text("ok\n")
    cmd = cli("--store", str(store), "evaluate", "--trait", TRAIT, "--steering")
    if args.profile:
        cmd = [sys.executable, "-m", "cProfile", "-o", str(Path(args.profile).resolve()), *cmd[1:]]
    elif args.spy:
        cmd = [str(Path(sys.executable).with_name("py-spy")), "record", "-r", "20", "-f", "raw", "-o",
               str(Path(args.spy).resolve()),
               "--", *cmd]
    before, cpu0 = os.getloadavg(), resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    run = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"},
                         cwd=OUT)  # (its default plot, evaluate-<trait>.png, lands there)
    wall = time.perf_counter() - t
    after, cpu1 = os.getloadavg(), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    print("\n".join((run.stdout + run.stderr).rstrip().splitlines()[-40:]))
    print(f"\n{' '.join(cmd[cmd.index('evaluate'):])}: exit {run.returncode}, wall {wall:.0f} s "
          f"({wall / 60:.1f} min){' under cProfile' if args.profile else ''}")
    if args.spy:
        where_the_time_goes(args.spy)
    print(f"CPU time of the run: {cpu:.0f} s ({cpu / 60:.1f} min; on an idle machine at most {os.cpu_count()} cores "
          f"share it: {cpu / os.cpu_count() / 60:.1f} min of wall at best)")
    print(f"load average (1, 5, 15 min) before {before[0]:.2f} {before[1]:.2f} {before[2]:.2f}, "
          f"after {after[0]:.2f} {after[1]:.2f} {after[2]:.2f}; cores {os.cpu_count()}")


if __name__ == "__main__":
    main()
