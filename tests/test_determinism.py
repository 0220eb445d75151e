"""The same store and config give byte-identical vectors: two extractions of one store agree to
the bit in every vector and every metric, whatever the scheduler and however many cores the
machine has (a bundle's `reproduce` says "identical" only because of this)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from traitlens.pipeline.extract.config import ExtractConfig
from traitlens.pipeline.extract.jobs import extract
from traitlens.testing import store_copy, synthetic_store

# every field a fit computes (the ids, run and time stamps aside)
FITTED = ("vector_id", "fingerprint", "n_pos", "n_neg", "n_held_pos", "n_held_neg", "out_of_core", "d", "raw_norm",
          "auroc", "balanced_accuracy", "threshold", "cohens_d", "separation", "polarity", "p_value", "train_auroc",
          "stability", "agreement", "floor_length", "floor_dataset", "cosines", "info", "params")


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A store whose layers are wide enough for BLAS to split its products over threads."""
    store, _ = synthetic_store(tmp_path_factory.mktemp("wide") / "s", n=1200, d=256, layers=(0, 1), chunk_rows=256)
    return store


def fitted(store, tmp, cores: int, scheduler: str, monkeypatch, **cfg) -> dict:
    """Extract every method of a private copy of ``store`` as a machine with ``cores`` cores would."""
    copy = store_copy(store, tmp)
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    res = extract(copy.root, "planted", "all", cfg=ExtractConfig(n_boot=2, **cfg), scheduler=scheduler,
                  skip_unchanged=False)
    monkeypatch.undo()
    return {(r["layer"], r["method"]): r for r in res.records}


def assert_byte_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for cell in a:
        va, vb = (np.asarray(x[cell]["vector"], np.float32) for x in (a, b))
        assert va.tobytes() == vb.tobytes(), f"{cell}: the vectors differ by up to {np.abs(va - vb).max():.3g}"
        for f in FITTED:
            x, y = a[cell][f], b[cell][f]
            assert x == y or (x != x and y != y), f"{cell} {f}: {x!r} against {y!r}"


def test_two_extractions_of_one_store_are_byte_identical(wide, tmp_path, monkeypatch):
    one = fitted(wide, tmp_path / "a", 2, "processes", monkeypatch)
    assert_byte_identical(one, fitted(wide, tmp_path / "b", 2, "processes", monkeypatch))


@pytest.mark.parametrize("scheduler", ["threads", "processes"])
def test_the_core_count_and_scheduler_do_not_change_a_bit(wide, tmp_path, monkeypatch, scheduler):
    """Before the fix a fit took as many BLAS threads as the cores allowed: OpenBLAS sums a
    product's terms in another order on two threads than on one, and FastICA carried the 1e-14
    into its vector (up to 0.017 apart, cosine 0.9989, on this store's layer)."""
    one_core = fitted(wide, tmp_path / "one", 1, "threads", monkeypatch)
    assert_byte_identical(one_core, fitted(wide, tmp_path / "many", 8, scheduler, monkeypatch))


def test_a_streamed_extraction_is_byte_identical_too(wide, tmp_path, monkeypatch):
    """Out of core (a budget the layer does not fit): the subsample, the cache and the probe's
    passes are seeded and ordered, so two runs agree to the bit as well."""
    small = {"memory_budget": 1 << 20}
    one = fitted(wide, tmp_path / "a", 2, "threads", monkeypatch, **small)
    assert all(r["out_of_core"] for r in one.values())
    assert_byte_identical(one, fitted(wide, tmp_path / "b", 4, "processes", monkeypatch, **small))
