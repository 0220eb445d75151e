"""Shared fixtures: tiny random-weight models (session-wide) and small corpora.

The helpers behind them are a package, :mod:`traitlens.testing` (``tests/support/``): tests and
benches import them like any other module."""

from __future__ import annotations

from pathlib import Path

import pytest

from traitlens.testing import make_model, write_corpus


@pytest.fixture(scope="session", autouse=True)
def private_traitlens_home(tmp_path_factory):
    """Receipts and model identities go to a private TRAITLENS_HOME; the converted default model
    is shared with the real one (a link), so integration tests do not convert it again."""
    import os

    from traitlens.pipeline.model.identity import traitlens_home

    real = traitlens_home()
    home = tmp_path_factory.mktemp("traitlens-home")
    (real / "models").mkdir(parents=True, exist_ok=True)
    (home / "models").symlink_to(real / "models", target_is_directory=True)
    saved = os.environ.get("TRAITLENS_HOME")
    os.environ["TRAITLENS_HOME"] = str(home)
    yield home
    if saved is None:
        os.environ.pop("TRAITLENS_HOME", None)
    else:
        os.environ["TRAITLENS_HOME"] = saved


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


@pytest.fixture(autouse=True)
def no_process_left_behind():
    """Every process a test started ends with the test, even when an assertion stopped it halfway
    (kill tests start `traitlens` processes; a failed one used to leave them running for hours).
    Processes that existed before the test (a module's Dask cluster) are left alone."""
    import psutil

    me = psutil.Process()
    before = {c.pid for c in me.children()}
    yield
    left = [c for c in me.children() if c.pid not in before]
    for child in left:
        try:
            tree = [*child.children(recursive=True), child]
        except psutil.NoSuchProcess:
            continue
        for p in tree:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
    psutil.wait_procs(left, timeout=30)  # reaps them (their own children were re-parented and die alone)
