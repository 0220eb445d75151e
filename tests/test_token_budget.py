"""``--max-tokens auto`` and out-of-memory backoff: an injected out-of-memory error changes no row."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from traitlens.pipeline.capture import token_budget
from traitlens.pipeline.capture.capturer import Capturer
from traitlens.pipeline.capture.ingest import IngestConfig, ingest
from traitlens.pipeline.capture.token_budget import DoesNotFit, auto_max_tokens, bytes_per_token
from traitlens.store import Store, verify
from traitlens.testing import store_contents, write_corpus

CFG = dict(poolings=["last", "mean", "tokens"], batch_size=8, chunk_rows=8)


def out_of_memory_past(monkeypatch, limit: int, after: int = 0):
    """From the ``after``-th forward on, a batch over ``limit`` padded tokens raises torch's
    out-of-memory error, as a device that full would. Returns the padded sizes of the forwards tried."""
    real, tried = Capturer.forward_pooled, []

    def forward(self, ids, mask, masks):
        tried.append(ids.numel())
        if len(tried) > after and ids.numel() > limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {ids.numel()} tokens (injected)")
        return real(self, ids, mask, masks)

    monkeypatch.setattr(Capturer, "forward_pooled", forward)
    return tried


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_an_out_of_memory_error_changes_no_row(tmp_path, tiny_lms, arch, monkeypatch):
    lm = tiny_lms[arch]
    corpus = write_corpus(tmp_path / "c.jsonl", 45)
    ingest(tmp_path / "ref", [corpus], cfg=IngestConfig(**CFG), lm=lm, progress=False)
    ref = store_contents(tmp_path / "ref")
    limit = 3 * max(r[2] for rows, _ in ref.values() for r in rows)  # three of the longest prompts fit
    tried = out_of_memory_past(monkeypatch, limit=limit, after=2)  # the third batch is the first that fails
    lines = []
    res = ingest(tmp_path / "s", [corpus], cfg=IngestConfig(**CFG), lm=lm, progress=False, log=lines.append)
    assert max(tried[2:]) > limit and res.n_captured == 45  # it did fail, and every prompt got through
    got = store_contents(tmp_path / "s")
    assert ref.keys() == got.keys()
    for path in ref:
        assert got[path][0] == ref[path][0], path  # the same rows, in the same order, each once
        for layer in ref[path][1]:  # batches of another shape: a float32 sum may round to the next float16
            np.testing.assert_allclose(got[path][1][layer], ref[path][1][layer], rtol=1e-3, atol=1e-5)
    said = [m for m in lines if "out of memory" in m]
    assert len(said) == 1, lines  # said once, with the budget it settled on
    settled = int(said[0].split("settled on --max-tokens ")[1].split()[0])
    assert settled <= limit and "no prompt lost or written twice" in said[0]
    assert verify(Store.open(tmp_path / "s")).clean


def test_the_settled_budget_applies_to_later_batches(tmp_path, tiny_lms, monkeypatch):
    lm = tiny_lms["llama"]
    corpus = write_corpus(tmp_path / "c.jsonl", 40)
    tried = out_of_memory_past(monkeypatch, limit=200)
    ingest(tmp_path / "s", [corpus], cfg=IngestConfig(**CFG), lm=lm, progress=False, log=lambda *a: None)
    fails = [i for i, n in enumerate(tried) if n > 200]
    # the longest prompts come first: after the first halvings, no batch is tried above the budget again
    assert fails and fails == list(range(len(fails)))


def test_a_prompt_that_does_not_fit_alone_is_a_clear_error_keeping_what_was_committed(tmp_path, tiny_lms,
                                                                                       monkeypatch):
    lm = tiny_lms["llama"]
    corpus = write_corpus(tmp_path / "c.jsonl", 30)
    out_of_memory_past(monkeypatch, limit=0, after=2)  # from the third batch on, nothing fits
    with pytest.raises(DoesNotFit, match=r"does not fit in memory even alone .*--max-length") as info:
        ingest(tmp_path / "s", [corpus], cfg=IngestConfig(**CFG), lm=lm, progress=False, log=lambda *a: None)
    assert info.value.exit_code == 1
    store = Store.open(tmp_path / "s")
    assert verify(store).clean
    assert {len(rows) for rows, _ in store_contents(store).values()} == {16}  # the two batches before it


def test_auto_budget_follows_free_memory(tiny_lms, monkeypatch):
    lm = tiny_lms["llama"]
    free = {"bytes": 2**30}
    monkeypatch.setattr(token_budget, "free_memory", lambda model: (free["bytes"], "test"))
    per = bytes_per_token(lm, 3, ["last", "mean"], 0, 128)
    one, line = auto_max_tokens(lm, 3, ["last", "mean"], 0, 128)
    assert one * per <= token_budget.SHARE["cpu"] * 2**30 < (one + 64) * per  # the share of free memory, in 64s
    assert "--max-tokens auto:" in line and f"{one:,}" in line
    free["bytes"] = 2**31
    two, _ = auto_max_tokens(lm, 3, ["last", "mean"], 0, 128)
    assert abs(two - 2 * one) <= 64
    free["bytes"] = 1  # never below a workable batch
    assert auto_max_tokens(lm, 3, ["last", "mean"], 0, 128)[0] == token_budget.MIN_TOKENS
    # token rows kept until the copy, and a KV cache with --generate, cost more per token
    assert bytes_per_token(lm, 3, ["tokens"], 0, 128) > per and bytes_per_token(lm, 3, ["last"], 8, 128) > \
        bytes_per_token(lm, 3, ["last"], 0, 128)


def test_max_tokens_auto_ingests_the_same_rows(tmp_path, tiny_lms):
    lm = tiny_lms["gpt2"]
    corpus = write_corpus(tmp_path / "c.jsonl", 20)
    lines = []
    ingest(tmp_path / "auto", [corpus], cfg=IngestConfig(**{**CFG, "max_tokens": "auto"}), lm=lm, progress=False,
           log=lines.append)
    ingest(tmp_path / "fixed", [corpus], cfg=IngestConfig(**CFG), lm=lm, progress=False)
    assert any(m.startswith("--max-tokens auto: ") and "available RAM" in m for m in lines), lines
    assert store_contents(tmp_path / "auto").keys() == store_contents(tmp_path / "fixed").keys()
    for (ra, va), (rf, vf) in zip(store_contents(tmp_path / "auto").values(), store_contents(tmp_path / "fixed").values()):
        assert ra == rf
        for layer in va:
            np.testing.assert_array_equal(va[layer], vf[layer])


def test_max_tokens_option_checks():
    from traitlens.store.errors import InputError

    assert IngestConfig(max_tokens="auto").validate().max_tokens == "auto"
    assert IngestConfig(max_tokens="4096").validate().max_tokens == 4096
    for bad in ("lots", 0, -5):
        with pytest.raises(InputError, match="--max-tokens"):
            IngestConfig(max_tokens=bad).validate()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: torch.cuda.mem_get_info")
def test_auto_budget_reads_free_gpu_memory(tiny_llama):
    from traitlens.pipeline.model.loading import load_model

    lm = load_model(str(tiny_llama), device="cuda", log=lambda *a: None)
    free, where = token_budget.free_memory(lm.model)
    assert 0 < free <= torch.cuda.mem_get_info(lm.device)[1] and "GiB free on cuda" in where
