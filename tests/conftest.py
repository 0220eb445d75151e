"""Shared fixtures: tiny random-weight models (session-wide) and small corpora."""

from __future__ import annotations

import json
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from tiny_models import make_model  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return make_model("llama", tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    return make_model("gpt2", tmp_path_factory.mktemp("gpt2"))


@pytest.fixture(scope="session")
def tiny_lms(tiny_llama, tiny_gpt2):
    """Both tiny models loaded once: {arch: LoadedModel}."""
    from traitlens.pipeline.models import load_model

    return {"llama": load_model(str(tiny_llama), device="cpu", dtype="float32", log=lambda *a: None),
            "gpt2": load_model(str(tiny_gpt2), device="cpu", dtype="float32", log=lambda *a: None)}


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


@pytest.fixture
def corpus(tmp_path) -> Path:
    return write_corpus(tmp_path / "corpus.jsonl", 40)


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
