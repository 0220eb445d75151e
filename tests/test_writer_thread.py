"""The writer thread: rows identical with and without it; its errors and Ctrl-C reach the model
thread; it never outlives the ingest; one copy per batch leaves the device."""

from __future__ import annotations

import errno
import threading

import numpy as np
import pytest

from traitlens.pipeline.capture import capturer as capturer_mod
from traitlens.pipeline.capture.capturer import Capturer
from traitlens.pipeline.capture.ingest import IngestConfig, IngestInterrupted, ingest
from traitlens.pipeline.capture.transfer import HostBuffers, to_host
from traitlens.store import Store, verify
from traitlens.store.store import CommitWriter
from traitlens.testing import store_contents, write_corpus


def writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "traitlens-writer"]


def assert_same_store(a, b):
    ca, cb = store_contents(a), store_contents(b)
    assert ca.keys() == cb.keys() and ca
    for path in ca:
        assert ca[path][0] == cb[path][0], path  # row numbers, prompts, counts, token offsets, in order
        assert ca[path][1].keys() == cb[path][1].keys()
        for layer in ca[path][1]:
            np.testing.assert_array_equal(ca[path][1][layer], cb[path][1][layer])


# small batches and chunks: many commits, some while the next batch runs
CFG = dict(poolings=["last", "mean", "tokens"], batch_size=5, chunk_rows=8)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_rows_identical_with_and_without_the_writer_thread(tmp_path, tiny_lms, arch, monkeypatch):
    lm = tiny_lms[arch]
    corpus = write_corpus(tmp_path / "c.jsonl", 47)
    real, where = CommitWriter.add, []
    monkeypatch.setattr(CommitWriter, "add", lambda self, *a: where.append(threading.current_thread().name)
                        or real(self, *a))
    ingest(tmp_path / "thread", [corpus], cfg=IngestConfig(**CFG), lm=lm, progress=False)
    assert set(where) == {"traitlens-writer"} and len(where) == 10  # 47 prompts, batches of 5
    where.clear()
    ingest(tmp_path / "inline", [corpus], cfg=IngestConfig(**CFG, writer_thread=False), lm=lm, progress=False)
    assert set(where) == {threading.main_thread().name}
    assert_same_store(tmp_path / "thread", tmp_path / "inline")
    assert verify(Store.open(tmp_path / "thread")).clean
    assert not writer_threads()


def test_a_writer_error_surfaces_in_the_model_thread_and_a_rerun_completes(tmp_path, tiny_lms, monkeypatch):
    lm = tiny_lms["llama"]
    corpus = write_corpus(tmp_path / "c.jsonl", 60)
    real, calls = CommitWriter.add, []

    def full_disk(self, batch, *a):
        calls.append(threading.current_thread().name)
        if len(calls) == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, batch, *a)

    monkeypatch.setattr(CommitWriter, "add", full_disk)
    with pytest.raises(OSError, match="No space left"):
        ingest(tmp_path / "s", [corpus], cfg=IngestConfig(**CFG), lm=lm, progress=False)
    assert set(calls) == {"traitlens-writer"}  # the store was written on the writer thread
    assert not writer_threads()  # and that thread is gone
    store = Store.open(tmp_path / "s")
    assert not verify(store).errors  # what was committed is intact
    committed = {p for g in store.groups() for p in store.group_rows(g)["prompt_id"].to_pylist()}
    assert 0 < len(committed) < 60
    monkeypatch.setattr(CommitWriter, "add", real)
    res = ingest(tmp_path / "s", [corpus], cfg=IngestConfig(**CFG), lm=lm, progress=False)
    assert res.n_captured == 60 - len(committed)  # only what was missing, nothing twice
    for rows, _ in store_contents(tmp_path / "s").values():
        ids = [r[1] for r in rows]
        assert len(ids) == len(set(ids)) == 60


def test_ctrl_c_commits_the_batches_already_captured_and_stops_the_thread(tmp_path, tiny_lms, monkeypatch):
    lm = tiny_lms["gpt2"]
    corpus = write_corpus(tmp_path / "c.jsonl", 60)
    real, seen = Capturer.capture_async, []

    def interrupted(self, batch):
        if len(seen) == 3:
            raise KeyboardInterrupt()
        seen.append(len(batch))
        return real(self, batch)

    monkeypatch.setattr(Capturer, "capture_async", interrupted)
    with pytest.raises(IngestInterrupted) as info:
        ingest(tmp_path / "s", [corpus], cfg=IngestConfig(**CFG), lm=lm, progress=False)
    assert info.value.result.n_captured == sum(seen) == 15  # every batch captured before Ctrl-C is committed
    assert not writer_threads()
    store = Store.open(tmp_path / "s")
    assert verify(store).clean and store.runs().to_pylist()[-1]["status"] == "interrupted"
    monkeypatch.setattr(Capturer, "capture_async", real)
    ingest(tmp_path / "s", [corpus], cfg=IngestConfig(**CFG), lm=lm, progress=False)
    ingest(tmp_path / "ref", [corpus], cfg=IngestConfig(**CFG), lm=lm, progress=False)
    ref, got = store_contents(tmp_path / "ref"), store_contents(tmp_path / "s")
    for path in ref:  # the same prompts and values, whatever order the rerun added them in
        by_id = {r[1]: r for r in got[path][0]}
        assert sorted(by_id) == sorted(r[1] for r in ref[path][0])
        if path.endswith("/last"):
            for layer, values in ref[path][1].items():
                mine = got[path][1][layer][[by_id[r[1]][0] for r in ref[path][0]]]
                np.testing.assert_allclose(mine, values, rtol=2e-3, atol=2e-3)


def test_one_device_to_host_copy_per_batch(tmp_path, tiny_lms, monkeypatch):
    """Every layer and pooling of a batch leaves the device in one copy (the per-layer ``.cpu()``
    of before would be 3 layers x 3 poolings copies a batch)."""
    lm = tiny_lms["llama"]
    calls = []
    real = capturer_mod.to_host

    def counted(parts, buffers):
        calls.append(len(parts))
        return real(parts, buffers)

    monkeypatch.setattr(capturer_mod, "to_host", counted)
    corpus = write_corpus(tmp_path / "c.jsonl", 23)
    ingest(tmp_path / "s", [corpus], cfg=IngestConfig(**CFG), lm=lm, progress=False)
    assert len(calls) == 5 and set(calls) == {lm.n_layers * 3}  # 23 prompts in batches of 5: 5 copies


def test_host_buffers_are_reused_and_the_rows_come_back_whole():
    import torch

    buffers = HostBuffers(pinned=False)
    parts = [torch.arange(6, dtype=torch.float32).reshape(2, 3), torch.ones(4, 3)]
    buf, event = to_host(parts, buffers)
    assert event is None and torch.equal(buf[:18], torch.cat([p.reshape(-1) for p in parts]))
    buffers.give(buf)
    again, _ = to_host(parts[:1], buffers)
    assert again is buf  # the same memory, not a new allocation


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU: pinned buffers and the "
                    "non-blocking copy exist only there")
def test_cuda_copy_is_pinned_non_blocking_and_waited_for():
    import torch

    buffers = HostBuffers(pinned=True)
    parts = [torch.randn(64, 256, device="cuda") for _ in range(8)]
    buf, event = to_host(parts, buffers)
    assert buf.is_pinned() and event is not None
    event.synchronize()
    assert torch.equal(buf[: 8 * 64 * 256], torch.cat([p.reshape(-1) for p in parts]).cpu())
