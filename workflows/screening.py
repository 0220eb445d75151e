"""Screening corpora: capture what a vector's group lacks, and the model's own replies to a
corpus's conversations, for the projection difference (the orchestration behind ``score``; it
sees the capture and extraction stages both, so it lives here, above them).

Persona-vector data screening asks not only how far a fine-tuning sample's reply sits along a
trait vector, but how much farther than what the model would have said itself: a sample that
pushes the model toward the trait is one whose reply projects above the model's own. For each
chat record whose last turn is a given assistant reply, :func:`own_replies` greedily generates
the model's reply to the conversation before that turn (at most ``generate`` tokens), stores the
same conversation with the model's reply in its place as a prompt of its own (dataset
``model-replies``, unlabelled, so no vector is ever fitted on it), captures it into the vector's
group (``assistant_mean``: both replies are pooled alike, over the assistant's tokens), and links
the two in the ``replies`` table. The SQL view ``projection_diffs`` then gives, per vector, the
dataset reply's score minus the model's.

Incremental like everything else: a record already answered for (model, ``generate``) is never
generated for again; conversations that share everything before the reply are generated once.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from traitlens.store import GroupKey, Store
from traitlens.store.arrays import get_group
from traitlens.store.errors import InputError
from traitlens.store.layout import format_layer_list
from traitlens.pipeline.extract.audit import vector_group


def capture_policy(store: Store, key: GroupKey) -> dict:
    """The length (and generation) policy a group was captured with (empty before its first rows)."""
    grp = get_group(store.zarr_root(), key.path) if store.zarr_path.exists() else None
    return dict(grp.attrs).get("capture", {}) if grp is not None else {}


def check_model_for(vec: dict, model: str | None) -> None:
    """Refuse (before loading anything) a ``--model`` that is not the vector's, and a missing one
    when the vector's model is not the default."""
    from traitlens.pipeline.model.identity import known

    ident = known(model)
    if model is None and not (ident is not None and ident.key == vec["model_key"]):
        raise InputError(f"the vector was fitted on {vec['model_key']}, not the default model: pass --model with "
                         "that model so its prompts can be captured (or `traitlens ingest` them first)")
    if ident is not None and ident.key != vec["model_key"]:
        raise InputError(f"--model {model or 'default'} is {ident.key}, but the vector was fitted on {vec['model_key']}")


def capture_missing(store_path, vec: dict, corpus: list, ids: set[str], model: str | None = None, lm=None):
    """Capture the ``corpus`` prompts (``ids``) that the vector's group lacks, into that group only
    (its layers and capture policy), so they can be scored; prompts already captured are never
    captured again. Returns the ingest's result, or None when nothing was missing."""
    from traitlens.pipeline.capture.ingest import ingest
    from traitlens.pipeline.capture.settings import IngestConfig
    from traitlens.pipeline.model.identity import is_default

    store = Store.open(store_path)
    key = vector_group(vec)
    have = store.group_rows(key, ["row", "prompt_id"])["prompt_id"].combine_chunks()
    if not len(ids) or pc.all(pc.is_in(pa.array(sorted(ids), pa.string()), value_set=have)).as_py():
        return None
    if lm is None:
        check_model_for(vec, model)
    policy = capture_policy(store, key)
    # a group the store lacks yet (a vector from a bundle) is made with the vector's layer alone
    cfg = IngestConfig(model=None if is_default(model) else model, sites=[key.site], poolings=[key.pooling],
                       layers=format_layer_list(store.layers(key) or [vec["layer"]]), chat=key.fmt == "chat",
                       max_length=policy.get("max_length"))
    res = ingest(store_path, corpus, cfg=cfg, lm=lm, progress=False, log=lambda *a: None)
    if res.model_key != vec["model_key"]:
        raise InputError(f"--model captured as {res.model_key}, not the vector's {vec['model_key']}: its rows went "
                         "to another group; pass the vector's model")
    return res


REPLY_DATASET = "model-replies"


@dataclass
class Replies:
    pairs: dict[str, str]  # dataset record's prompt_id -> its model-reply prompt_id (every answered record)
    n_generated: int  # conversations generated for in this call
    n_empty: int  # of those, replies with no text (nothing to pool; no pair)
    n_without_reply: int  # records asked for whose last turn is not an assistant reply


def answerable(record) -> bool:
    """A chat whose last message is a non-empty assistant turn (the dataset's reply)."""
    m = record.messages
    return bool(m) and len(m) > 1 and m[-1]["role"] == "assistant" and bool(m[-1]["content"].strip())


def own_replies(store_path, vec: dict, records: list, generate: int, model: str | None = None, lm=None,
                batch_size: int = 16, max_tokens: int = 16384, progress: bool = True) -> Replies:
    """Make sure every answerable record of ``records`` has the model's own reply, captured in
    the vector's group; returns the pairs for all of them."""
    from traitlens.pipeline.capture.corpus import prompt_id_for

    if generate < 1:
        raise InputError("--generate N: N must be at least 1 (the most tokens of the model's own reply)")
    key = vector_group(vec)
    if key.pooling != "assistant_mean":
        raise InputError(f"--generate compares a dataset's assistant reply with the model's own: it needs a vector "
                         f"fitted on assistant_mean rows, and {vec['vector_id']} is {key.pooling}; capture the "
                         "corpus with --pooling assistant_mean and extract on that group")
    store = Store.open(store_path)
    wanted = {r.prompt_id: r for r in records if answerable(r)}
    n_without = len({r.prompt_id for r in records}) - len(wanted)
    pairs = stored_pairs(store, vec["model_key"], generate)
    todo = [r for pid, r in wanted.items() if pid not in pairs]
    texts = []
    if todo:
        if lm is None:
            check_model_for(vec, model)
            from traitlens.pipeline.model.identity import is_default
            from traitlens.pipeline.model.loading import load_model

            lm = load_model(None if is_default(model) else model, log=lambda *a: None)
        if lm.key != vec["model_key"]:
            raise InputError(f"the model is {lm.key}, but the vector was fitted on {vec['model_key']}")
        texts = _generate_for(lm, todo, generate, key.fmt == "chat", _prompt_budget(store, key, lm, generate),
                              batch_size, max_tokens, progress)
        made = {}  # dataset prompt_id -> the record with the model's reply in its place
        for r, t in zip(todo, texts):
            if t.strip():
                msgs = r.messages[:-1] + [{"role": "assistant", "content": t}]
                made[r.prompt_id] = {"messages": msgs, "dataset": REPLY_DATASET, "trait": r.trait, "label": 0,
                                     "split": r.split, "reply_to": r.prompt_id, "generate": generate,
                                     "id": prompt_id_for(None, msgs)}
        if made:
            with tempfile.TemporaryDirectory(prefix="traitlens-replies-") as tmp:
                path = Path(tmp) / f"{REPLY_DATASET}.jsonl"
                path.write_text("".join(json.dumps({k: v for k, v in x.items() if k != "id"}, ensure_ascii=False)
                                        + "\n" for x in made.values()))
                capture_missing(store_path, vec, [path], {x["id"] for x in made.values()}, lm=lm)
        from traitlens.store.runs import now_utc

        with store.lock("replies"), store.run("replies", {"vector_id": vec["vector_id"], "generate": generate,
                                                          "records": len(todo)}) as run:
            stamp = now_utc()
            linked = stored_pairs(store, lm.key, generate)  # under the lock: a concurrent run may have linked some
            store.append("replies", [{"prompt_id": r.prompt_id, "reply_prompt_id": made.get(r.prompt_id, {}).get("id"),
                                      "model_key": lm.key, "generate": generate, "reply": t, "run_id": run.run_id,
                                      "created_at": stamp} for r, t in zip(todo, texts) if r.prompt_id not in linked])
            run.counts = {"generated": len(todo), "empty": len(todo) - len(made)}
        pairs.update({pid: made.get(pid, {}).get("id") for pid in (r.prompt_id for r in todo)})
    n_empty = sum(1 for t in texts if not t.strip())
    return Replies({p: pairs[p] for p in wanted if pairs.get(p)}, len(todo), n_empty, n_without)


def stored_pairs(store: Store, model_key: str, generate: int) -> dict[str, str | None]:
    """Dataset prompt_id -> its model-reply prompt_id (None: the reply was empty), for one model
    and ``generate``."""
    t = store.table("replies", columns=["prompt_id", "reply_prompt_id", "model_key", "generate"])
    t = t.filter(pc.and_(pc.equal(t["model_key"], model_key), pc.equal(t["generate"], generate)))
    return dict(zip(t["prompt_id"].to_pylist(), t["reply_prompt_id"].to_pylist()))


def _prompt_budget(store: Store, key, lm, generate: int) -> int:
    """Tokens a conversation may keep before its reply: the group's length limit less the reply."""
    limit = capture_policy(store, key).get("max_length") or lm.max_length
    budget = min(limit, lm.max_length) - generate
    if budget < 1:
        raise InputError(f"--generate {generate} leaves no room for the conversation in {limit} tokens")
    return budget


def _generate_for(lm, records: list, generate: int, chat: bool, budget: int, batch_size: int, max_tokens: int,
                  progress: bool) -> list[str]:
    """The model's greedy reply (text) to each record's conversation without its last turn;
    conversations longer than ``budget`` tokens keep their last ones."""
    from traitlens.pipeline.capture.batching import length_batches
    from traitlens.pipeline.model.encode import render_ids
    from traitlens.pipeline.model.generation import eos_token_ids, greedy_batch

    heads = {}  # conversations that share everything before the reply are generated for once
    for r in records:
        heads.setdefault(json.dumps(r.messages[:-1], sort_keys=True), r.messages[:-1])
    keys = list(heads)
    seqs = [render_ids(lm.tokenizer, None, heads[k], chat)[-budget:] for k in keys]
    eos, out = eos_token_ids(lm), {}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(keys), unit="reply", desc="generate", dynamic_ncols=True)
    for idx in length_batches([len(s) + generate for s in seqs], batch_size, max_tokens):
        for i, ids in zip(idx, greedy_batch(lm, [seqs[i] for i in idx], generate, eos)):
            out[keys[i]] = lm.tokenizer.decode(ids, skip_special_tokens=True).strip()
        if bar is not None:
            bar.update(len(idx))
    if bar is not None:
        bar.close()
    return [out[json.dumps(r.messages[:-1], sort_keys=True)] for r in records]
