"""What a refresh costs after the corpus grows by 10%, beside the full run's capture.

    python bench/bench_refresh.py [--model PATH]

Same process, same loaded model: ingest 90% of the demo corpus (the full run's capture), then
add the other 10% and refresh; prints both times and their ratio, plus a no-op refresh.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from traitlens.pipeline.capture.ingest import IngestConfig, ingest
from traitlens.pipeline.model.loading import load_model
from traitlens.workflows.demo_corpus import demo_records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    args = ap.parse_args()
    lm = load_model(args.model, device="cpu", dtype="float32")
    rows = demo_records()
    cut = int(len(rows) * 0.9)
    tmp = Path(tempfile.mkdtemp(prefix="traitlens-bench-refresh-"))
    try:
        corpus = tmp / "c.jsonl"
        cfg = IngestConfig(poolings=["last"])

        def capture():
            t = time.perf_counter()
            r = ingest(tmp / "s", [corpus], cfg=cfg, lm=lm, progress=False, log=lambda *a: None)
            return time.perf_counter() - t, r.n_captured

        corpus.write_text("".join(json.dumps(r) + "\n" for r in rows[:cut]))
        full, n_full = capture()
        corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
        grown, n_new = capture()
        noop, n_none = capture()
        print("\n| step | prompts captured | seconds | x full run |")
        print("|---|---|---|---|")
        for name, n, t in (("full run (90% of the corpus)", n_full, full), ("refresh after +10%", n_new, grown),
                           ("refresh again (nothing new)", n_none, noop)):
            print(f"| {name} | {n} | {t:.1f} | {t / full:.2f} |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
