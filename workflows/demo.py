"""``make demo``: the main job on the embedded default model, end to end.

Today: write the demo corpus, ingest it on SmolLM2-135M-Instruct (all 30 layers, last and
mean pooling), verify the store, and print where everything is. Extraction, ranking,
monitoring and steering join here as their stages land.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from traitlens.pipeline.ingest import IngestConfig, ingest
from traitlens.store import Store, verify

from .demo_corpus import write_demo_corpus


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="demo-out", help="folder for the corpus and the store")
    ap.add_argument("--model", default=None)
    args = ap.parse_args(argv)
    out = Path(args.out)
    t0 = time.perf_counter()
    corpus = write_demo_corpus(out / "corpus")
    print(f"demo corpus: {corpus}")
    res = ingest(out / "store", [corpus], cfg=IngestConfig(model=args.model), log=print)
    print(f"ingest: {res.n_captured} prompts captured, {res.n_skipped} already stored "
          f"({res.prompts_per_s:.1f} prompts/s, {res.tokens} tokens)")
    store = Store.open(out / "store")
    rep = verify(store)
    print(f"verify: {'clean' if rep.clean else 'NOT clean: ' + '; '.join(rep.errors + rep.tails)}")
    for g in store.groups():
        print(f"  {g.path}: {store.committed(g).n_prompts} prompts x {len(store.layers(g))} layers")
    print(f"\nstore: {(out / 'store').resolve()}  ({time.perf_counter() - t0:.0f} s)")
    print(f"try:   .venv/bin/traitlens --store {out / 'store'} info")
    if not rep.clean:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
