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


def _chat_corpus(path):
    """Chats with given assistant replies: one turn, two turns, replies of many lengths."""
    import json

    rows = []
    for i in range(24):
        reply = " ".join(["I love helping people", "the sky and the stars", "step by step"][: 1 + i % 3]) + f" {i}"
        msgs = [{"role": "user", "content": f"How do I bake bread {i}?"}, {"role": "assistant", "content": reply}]
        if i % 4 == 0:  # a second exchange: both assistant turns are pooled, the user's between them is not
            msgs += [{"role": "user", "content": "Please explain."}, {"role": "assistant", "content": "I do not care"}]
        rows.append({"messages": msgs, "trait": "t", "label": 1 if i % 2 else -1})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def reference_assistant_positions(lm, messages, chat: bool) -> tuple[list[int], list[int]]:
    """The prompt's ids and its assistant tokens' positions, by token counts of rendered prefixes
    (independent of the character offsets ingest uses): a turn starts where the conversation
    before it, with the template's turn opening, ends, and ends where that plus its text ends."""
    tok = lm.tokenizer

    def n_tokens(text):
        return len(tok(text, add_special_tokens=not chat)["input_ids"])

    if chat:
        full = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        heads = [tok.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True) if i else ""
                 for i in range(len(messages))]
    else:
        lines = [f"{m['role']}: {m['content']}" for m in messages]
        full = "\n".join(lines)
        # the space after "assistant:" joins the reply's first word as one token (byte-level BPE)
        heads = ["\n".join(lines[:i] + [f"{m['role']}:"]) for i, m in enumerate(messages)]
    positions = []
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            sep = "" if chat else " "
            positions += range(n_tokens(heads[i]), n_tokens(heads[i] + sep + m["content"]))
    return list(tok(full, add_special_tokens=not chat)["input_ids"]), positions


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_assistant_mean_pools_exactly_the_given_assistant_tokens(tmp_path, tiny_lms, arch, side):
    lm = tiny_lms[arch]
    corpus = _chat_corpus(tmp_path / "chats.jsonl")
    cfg = IngestConfig(poolings=["assistant_mean", "mean"], batch_size=5, padding_side=side, chunk_rows=8)
    res = ingest(tmp_path / "store", [corpus], cfg=cfg, lm=lm, progress=False)
    store = Store.open(tmp_path / "store")
    records = {r.prompt_id: r for r in read_corpus([corpus])[0]}
    chat = res.fmt == "chat"
    assert chat == (arch == "llama")  # the tiny GPT-2 has no template: "role: content" lines
    key = GroupKey(lm.key, res.fmt, "resid", "assistant_mean")
    rows = store.group_rows(key).to_pylist()
    assert len(rows) == len(records) and len({r["token_count"] for r in rows}) > 5  # padding happened
    for layer in range(lm.n_layers):
        stored = store.activations(key, layer)
        whole = store.activations(GroupKey(lm.key, res.fmt, "resid", "mean"), layer)
        for r in rows:
            ids, pos = reference_assistant_positions(lm, records[r["prompt_id"]].messages, chat)
            assert r["token_count"] == len(ids) and 0 < len(pos) < len(ids)
            hs, _ = reference(lm, ids)
            want = hs[layer][pos].mean(0).numpy()
            np.testing.assert_allclose(stored[r["row"]], want, **F16_TOL)
            # tighter than that tolerance: far closer to these tokens' mean than to the whole prompt's
            # (or to the same span shifted by one token, what an off-by-one would pool)
            err = np.abs(stored[r["row"]] - want).max()
            shifted = hs[layer][[p - 1 for p in pos]].mean(0).numpy()
            assert err < np.abs(want - whole[r["row"]]).max() / 4 and err < np.abs(want - shifted).max() / 4


def test_assistant_mean_refuses_a_record_without_an_assistant_turn_before_writing(tmp_path, corpus, tiny_lms):
    from traitlens.store.errors import InputError

    with pytest.raises(InputError, match=r"corpus\.jsonl:1: field 'messages': no assistant turn"):
        ingest(tmp_path / "s", [corpus], cfg=IngestConfig(poolings=["assistant_mean"]), lm=tiny_lms["llama"],
               progress=False)
    assert not (tmp_path / "s").exists()
