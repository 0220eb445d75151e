"""Small corpora and store fixtures for tests and benches: JSONL writers, a held writer lock,
per-test copies of a shared store, and where the real data lives when it is present."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

from traitlens.store import Store

# ../shared/data beside the checkout (absent in a user's fresh clone: tests that need it skip)
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


WORDS = "the quick brown fox jumps over lazy dog kind helpful rude bread sea sky stars poem".split()


def write_corpus(path: Path, n: int, start: int = 0, trait: str = "kindness") -> Path:
    """``n`` JSONL prompts of varied length (2..20 words), alternating labels."""
    lines = []
    for i in range(start, start + n):
        words = [WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(2 + (i * 5) % 19)]
        lines.append(json.dumps({"text": f"#{i} " + " ".join(words), "label": "pos" if i % 2 else "neg",
                                 "trait": trait}))
    path.write_text("\n".join(lines) + "\n")
    return path


def store_copy(store: Store | Path, dest: Path) -> Store:
    """A private copy of a store for one test to write into, so no test sees another's rows."""
    src = store.root if isinstance(store, Store) else Path(store)
    shutil.copytree(src, dest)
    return Store.open(dest)


def chunk_files(store_path: Path) -> int:
    """How many chunk files the store's arrays hold: a commit writes its arrays' chunks before
    its rows part, so a count that grows shows a commit half way (kill tests wait for it)."""
    z = Path(store_path) / "activations.zarr"
    return sum(1 for f in z.rglob("c/*/*") if f.is_file()) if z.exists() else 0


@contextmanager
def lock_held_elsewhere(store_path: Path, what: str = "someone else"):
    """Another process holds the store's writer lock for the duration of the block."""
    code = ("import sys, time; from pathlib import Path; from traitlens.store.lock import write_lock\n"
            "with write_lock(Path(sys.argv[1]), sys.argv[2]):\n    print('locked', flush=True); time.sleep(600)")
    p = subprocess.Popen([sys.executable, "-c", code, str(store_path), what], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "locked"
        yield p
    finally:
        p.kill()
        p.wait()


def store_contents(store: Store | Path) -> dict:
    """Everything a store holds per group, for comparing two stores: ``{group path: (rows, layers)}``
    with ``rows`` the ``(row, prompt_id, token_count, truncated, token_start, response)`` of every
    committed row in row order and ``layers`` ``{layer: float32 [array_rows, d]}``."""
    store = store if isinstance(store, Store) else Store.open(store)
    out = {}
    for key in store.groups():
        rows = sorted((r["row"], r["prompt_id"], r["token_count"], r["truncated"], r["token_start"], r["response"])
                      for r in store.group_rows(key).to_pylist())
        out[key.path] = (rows, {layer: store.activations(key, layer) for layer in store.layers(key)})
    return out
