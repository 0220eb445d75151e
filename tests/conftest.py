"""Shared fixtures: tiny random-weight models (session-wide) and small corpora.

The helpers behind them are a package, :mod:`traitlens.testing` (``tests/support/``): tests and
benches import them like any other module."""

from __future__ import annotations

from pathlib import Path

import pytest

from traitlens.testing import make_model, write_corpus


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return make_model("llama", tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    return make_model("gpt2", tmp_path_factory.mktemp("gpt2"))


@pytest.fixture(scope="session")
def tiny_lms(tiny_llama, tiny_gpt2):
    """Both tiny models loaded once: {arch: LoadedModel}."""
    from traitlens.pipeline.model.loading import load_model

    return {"llama": load_model(str(tiny_llama), device="cpu", dtype="float32", log=lambda *a: None),
            "gpt2": load_model(str(tiny_gpt2), device="cpu", dtype="float32", log=lambda *a: None)}


@pytest.fixture
def corpus(tmp_path) -> Path:
    return write_corpus(tmp_path / "corpus.jsonl", 40)
