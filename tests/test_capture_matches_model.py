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

from traitlens.pipeline.capture.plan import read_corpus
from traitlens.pipeline.model.encode import render_ids
from traitlens.pipeline.capture.ingest import IngestConfig, ingest
from traitlens.store import GroupKey, Store

F16_TOL = dict(rtol=2e-3, atol=2e-3)  # float16 storage: ~1e-3 relative


def reference(lm, ids: list[int]):
    """Block outputs of one unpadded prompt through the full model: [T, d] float32 per block.

    ``output_hidden_states[i + 1]`` for every block but the last, whose hidden state HF returns
    after the final norm: that one is read, unnormed, from the block's own output by a hook."""
    from traitlens.pipeline.model.sites import find_blocks

    _, blocks = find_blocks(lm.model)
    last = []
    h = blocks[-1].register_forward_hook(lambda m, i, o: last.append(o[0] if isinstance(o, tuple) else o))
    try:
        with torch.no_grad():
            out = lm.model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    finally:
        h.remove()
    blocks_out = [x[0].float() for x in out.hidden_states[1:]]
    blocks_out[-1] = last[0][0].float()
    return blocks_out, out.hidden_states[-1][0].float()


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
    refs, normed_last = {}, {}
    for r in records:
        ids = render_ids(lm.tokenizer, r.text, None, chat)
        block_outs, normed_last[r.prompt_id] = reference(lm, ids)
        refs[r.prompt_id] = (ids, block_outs)
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
                block_out = hs[layer]
                if pooling == "tokens":
                    got = stored[r["token_start"]:r["token_start"] + r["token_count"]]
                    want = block_out
                else:
                    got = stored[r["row"]]
                    want = block_out[-1] if pooling == "last" else block_out.mean(0)
                np.testing.assert_allclose(got, want.numpy(), **F16_TOL)  # every layer, the last one too
                if layer == L - 1 and pooling == "tokens":  # and HF's last hidden state is its final norm
                    with torch.no_grad():
                        normed = final_norm(torch.tensor(got)).numpy()
                    np.testing.assert_allclose(normed, normed_last[r["prompt_id"]].numpy(), rtol=1e-2, atol=1e-2)


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
