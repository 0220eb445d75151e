"""What a rerun that finds nothing new costs, as a user runs it (whole processes).

    python bench/bench_noop.py [--spec demo-out/demo.toml] [--prompts 1000000]

- interpreter start-up (``python -c pass``) and ``import traitlens.workflows.cli``: the floor;
- ``traitlens refresh SPEC`` on an up-to-date store (the demo's, from ``make demo``), twice;
- ``traitlens ingest`` of an unchanged ``--prompts``-prompt corpus into a store that holds it,
  captured once first with a tiny random-weight model (``traitlens.testing.make_model``), twice.

Each no-op is answered from its receipt (``pipeline/capture/receipts.py``) without torch or
the model; the first line of each pair may fall through once to renew a receipt.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLI = [sys.executable, "-m", "traitlens.workflows.cli"]


def timed(cmd: list[str]) -> tuple[float, str]:
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed: {p.stderr[-2000:]}")
    return time.perf_counter() - t, (p.stdout + p.stderr).strip().splitlines()[-1] if (p.stdout + p.stderr).strip() else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default="demo-out/demo.toml", help="an up-to-date workflow spec (make demo writes one)")
    ap.add_argument("--prompts", type=int, default=1_000_000)
    ap.add_argument("--keep", default=None, help="build (or reuse) the large store and corpus here")
    args = ap.parse_args()
    rows = []
    rows.append(("python -c pass", *timed([sys.executable, "-c", "pass"])))
    rows.append(("import traitlens.workflows.cli", *timed([sys.executable, "-c", "import traitlens.workflows.cli"])))
    if Path(args.spec).exists():
        for i in (1, 2):
            rows.append((f"traitlens refresh {args.spec} (nothing new), #{i}",
                         *timed(CLI + ["refresh", args.spec, "--quiet"])))
    else:
        print(f"(no {args.spec}: run `make demo` for the demo refresh rows)")
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="traitlens-bench-noop-"))
    try:
        root.mkdir(parents=True, exist_ok=True)
        corpus, store, model = root / "big.jsonl", root / "big.store", root / "tiny-llama"
        if not (model / "config.json").exists():
            from traitlens.testing import make_model

            make_model("llama", model)
        if not corpus.exists():
            with corpus.open("w") as f:
                for i in range(args.prompts):
                    f.write(json.dumps({"text": f"prompt {i}: a short statement", "label": 1 if i % 2 else -1,
                                        "trait": "bulk"}) + "\n")
        if not (store / "store.json").exists():
            t = time.perf_counter()
            subprocess.run(CLI + ["--store", str(store), "ingest", str(corpus), "--model", str(model), "--quiet",
                                  "--pooling", "last", "--batch-size", "512", "--max-tokens", "1000000"], check=True)
            print(f"captured {args.prompts:,} prompts with the tiny model in {time.perf_counter() - t:.0f} s", flush=True)
        ingest = CLI + ["--store", str(store), "ingest", str(corpus), "--model", str(model), "--quiet",
                        "--pooling", "last", "--batch-size", "512", "--max-tokens", "1000000"]
        for i in (1, 2):
            rows.append((f"traitlens ingest, {args.prompts:,}-prompt corpus (nothing new), #{i}", *timed(ingest)))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\n| {'command':<62} | seconds |")
    print(f"|{'-' * 64}|---------|")
    for name, secs, _ in rows:
        print(f"| {name:<62} | {secs:7.2f} |")
    for name, _, last in rows[2:]:
        print(f"{name}: {last[:200]}")


if __name__ == "__main__":
    main()
