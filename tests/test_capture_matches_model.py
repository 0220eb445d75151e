"""Stored activations equal the model's own ``output_hidden_states`` for each prompt run alone.

The independent computation: every prompt through the full model, unpadded, batch of one,
with ``output_hidden_states=True``. Ingest runs batched and padded (left and right), with the
early-stopping hooks. Two architectures: Llama (rotary) and GPT-2 (absolute positions, where
left padding without correct position ids would shift every token).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from traitlens.pipeline.corpus import read_corpus
from traitlens.pipeline.encode import render_ids
from traitlens.pipeline.ingest import IngestConfig, ingest
from traitlens.store import GroupKey, Store

F16_TOL = dict(rtol=2e-3, atol=2e-3)  # float16 storage: ~1e-3 relative


def reference(lm, ids: list[int]):
    """hidden_states of one unpadded prompt: tuple of [T, d] float32 (index 0 = embeddings)."""
    with torch.no_grad():
        out = lm.model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    return [h[0].float() for h in out.hidden_states]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_resid_matches_output_hidden_states(tmp_path, corpus, tiny_lms, arch, side):
    lm = tiny_lms[arch]
    cfg = IngestConfig(poolings=["last", "mean", "tokens"], batch_size=7, padding_side=side, chunk_rows=16)
    res = ingest(tmp_path / "store", [corpus], cfg=cfg, lm=lm, progress=False)
    store = Store.open(tmp_path / "store")
    records, _ = read_corpus([corpus])
    chat = res.fmt == "chat"
    L = lm.n_layers
    final_norm = lm.model.model.norm if arch == "llama" else lm.model.transformer.ln_f
    refs = {}
    for r in records:
        ids = render_ids(lm.tokenizer, r.text, None, chat)
        refs[r.prompt_id] = (ids, reference(lm, ids))
    for pooling in ("last", "mean", "tokens"):
        key = GroupKey(lm.key, res.fmt, "resid", pooling)
        rows = store.group_rows(key).to_pylist()
        assert len(rows) == len(records)
        # batches mix long and short prompts: padding really happened
        assert len({r["token_count"] for r in rows}) > 5
        for layer in range(L):
            stored = store.activations(key, layer)
            for r in rows:
                ids, hs = refs[r["prompt_id"]]
                assert r["token_count"] == len(ids)
                block_out = hs[layer + 1]
                if pooling == "tokens":
                    got = stored[r["token_start"]:r["token_start"] + r["token_count"]]
                    want = block_out
                else:
                    got = stored[r["row"]]
                    want = block_out[-1] if pooling == "last" else block_out.mean(0)
                if layer == L - 1:
                    # HF applies the final norm to the last hidden state; resid is the block output
                    with torch.no_grad():
                        got_t = torch.tensor(got)
                        normed = final_norm(got_t).numpy()
                    if pooling == "last":
                        np.testing.assert_allclose(normed, want.numpy(), rtol=1e-2, atol=1e-2)
                    continue
                np.testing.assert_allclose(got, want.numpy(), **F16_TOL)


def test_token_ids_stored_match_tokenizer(tmp_path, corpus, tiny_lms):
    lm = tiny_lms["llama"]
    res = ingest(tmp_path / "s", [corpus], cfg=IngestConfig(poolings=["tokens"], layers="0"), lm=lm, progress=False)
    store = Store.open(tmp_path / "s")
    key = GroupKey(lm.key, res.fmt, "resid", "tokens")
    ids = np.asarray(store.zarr_root()[key.path]["token_ids"][:])
    records = {r.prompt_id: r for r in read_corpus([corpus])[0]}
    for r in store.group_rows(key).to_pylist():
        want = render_ids(lm.tokenizer, records[r["prompt_id"]].text, None, True)
        assert ids[r["token_start"]:r["token_start"] + r["token_count"]].tolist() == want
