"""``traitlens ingest``: corpus -> model -> store, incremental and crash-safe.

The whole corpus is read and validated before the store is touched. Prompts already
committed for this model/format/site/pooling are skipped, so rerunning on the same or a
grown corpus captures only what is missing. Capture of batch k+1 overlaps the commit of
batch k (a one-thread writer); memory is bounded by the encode window and batch size, not
by the corpus.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from traitlens.store import GroupKey, Store
from traitlens.store.arrays import require_group
from traitlens.store.layout import StoreError
from traitlens.store.verify import clean_temporaries
from traitlens.store.store import code_version, new_run_id, now_utc

from .batching import length_batches
from .capture import Capturer
from .corpus import PromptRecord, ReadOptions, read_corpus
from .encode import encode, uses_chat
from .models import LoadedModel, load_model
from .sites import parse_layers, resolve_sites


@dataclass
class IngestConfig:
    """Capture settings; the CLI's options map one to one."""

    model: str | None = None  # None: the default model
    sites: list[str] = field(default_factory=lambda: ["resid"])
    layers: str = "all"
    poolings: list[str] = field(default_factory=lambda: ["last", "mean"])
    chat: bool | None = None  # None: chat when the tokenizer has a template
    generate: int = 0  # tokens to generate per prompt (response_mean)
    batch_size: int = 32
    max_tokens: int = 16384  # padded tokens per batch
    padding_side: str = "right"
    on_long: str = "truncate"  # truncate | fail
    max_length: int | None = None  # None: the model's context
    device: str = "auto"
    dtype: str = "auto"
    chunk_rows: int = 256
    window: int = 4096  # prompts tokenised and length-sorted at a time
    commit_seconds: float = 60.0


@dataclass
class IngestResult:
    run_id: str
    model_key: str
    fmt: str
    n_records: int
    n_new_prompts: int
    n_captured: int
    n_skipped: int
    n_truncated: int
    n_duplicates: int
    seconds: float
    tokens: int
    promoted: list[str]
    status: str

    @property
    def prompts_per_s(self) -> float:
        return self.n_captured / self.seconds if self.seconds else 0.0


def still_to_capture(records: list[PromptRecord], done: set[str]) -> list[int]:
    """Indices of the records to capture: the first record of each prompt not yet stored
    (one capture per distinct prompt, whatever traits share it)."""
    keep, seen = [], set()
    for i, r in enumerate(records):
        if r.prompt_id not in done and r.prompt_id not in seen:
            seen.add(r.prompt_id)
            keep.append(i)
    return keep


def _check_group_config(store: Store, groups: list[GroupKey], settings: dict) -> None:
    """A group captured with one generation/length policy must not be extended with another."""
    root = store.zarr_root(mode="a")
    for g in groups:
        grp = require_group(root, g.path)
        have = dict(grp.attrs).get("capture")
        want = {k: settings[k] for k in ("generate", "max_length", "on_long")} if g.pooling == "response_mean" else \
            {k: settings[k] for k in ("max_length", "on_long")}
        if have is None:
            grp.attrs["capture"] = want
        elif have.get("generate") != want.get("generate") and g.pooling == "response_mean":
            raise StoreError(f"{g.path} was captured with --generate {have.get('generate')}; this run asks for "
                             f"{want.get('generate')}: use the same value, or another --store")


def ingest(store_path, corpus_paths, read_opts: ReadOptions | None = None, cfg: IngestConfig | None = None,
           lm: LoadedModel | None = None, progress: bool = True, log=print, client=None) -> IngestResult:
    """Capture every prompt of ``corpus_paths`` that the store lacks; returns what was done.

    ``client``: a ``dask.distributed.Client`` to shard the forward passes across its workers
    (each loads the model once); this process still commits every result itself."""
    cfg = cfg or IngestConfig()
    records, n_dups = read_corpus(corpus_paths, read_opts)
    if not records:
        raise ValueError(f"no prompts found in {', '.join(map(str, corpus_paths))}")
    lm = lm or load_model(cfg.model, cfg.device, cfg.dtype, log=log)
    layers = parse_layers(cfg.layers, lm.n_layers)
    points = resolve_sites(lm.model, cfg.sites, layers)
    chat = uses_chat(lm.tokenizer, cfg.chat)
    fmt = "chat" if chat else "raw"
    max_length = min(cfg.max_length or lm.max_length, lm.max_length) - cfg.generate
    capturer = Capturer(lm, points, cfg.poolings, cfg.padding_side, cfg.generate)
    sites = sorted({p.site for p in points})
    groups = [GroupKey(lm.key, fmt, s, pool) for s in sites for pool in cfg.poolings]
    layers_by_site = {s: sorted({p.layer for p in points if p.site == s}) for s in sites}
    all_layers = sorted({l for ls in layers_by_site.values() for l in ls})

    store = Store.open(store_path, create=True)
    settings = {**asdict(cfg), "model": lm.name, "model_key": lm.key, "fmt": fmt, "layers": all_layers,
                "max_length": max_length, "device": str(lm.device), "corpus": [str(p) for p in corpus_paths]}
    with store.lock("ingest"), capturer:
        clean_temporaries(store)  # left by a run that was killed; we hold the lock, so none is live
        n_new_prompts = store.add_prompts([r.as_row() for r in records])
        _check_group_config(store, groups, settings)
        writer = store.writer(groups, all_layers, lm.d_model, run_id := new_run_id("ingest"), cfg.chunk_rows)
        todo: list[PromptRecord] = [records[i] for i in still_to_capture(records, writer.done_prompt_ids())]
        n_distinct = len({r.prompt_id for r in records})
        run = {"run_id": run_id, "stage": "ingest", "status": "running", "started_at": now_utc(),
               "code_version": code_version(), "config": json.dumps(settings, default=str)}
        noop = not todo and not n_new_prompts  # a rerun with nothing new writes nothing at all
        if not noop:
            store.record_run(run)
        counts = {"records": len(records), "distinct_prompts": n_distinct, "to_capture": len(todo),
                  "already_stored": n_distinct - len(todo), "captured": 0, "truncated": 0, "tokens": 0}
        status, message = "done", ""
        bar = _progress(len(todo), progress)
        pending: list[Future] = []
        t_cap = time.perf_counter()
        try:
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="traitlens-writer") as pool:
                for enc, batch in _captured(todo, lm, capturer, chat, max_length, cfg, all_layers, client):
                    pending.append(pool.submit(writer.add, batch, cfg.commit_seconds))
                    while len(pending) > 1:  # at most one batch in flight behind the model
                        pending.pop(0).result()
                    counts["captured"] += len(enc)
                    counts["truncated"] += sum(1 for e in enc if e.truncated)
                    counts["tokens"] += int(batch.token_counts.sum())
                    if bar is not None:
                        bar.update(len(enc))
                        el = time.perf_counter() - t_cap
                        bar.set_postfix_str(f"{counts['tokens'] / el:,.0f} tok/s, {writer.n_committed} committed")
                for f in pending:
                    f.result()
                pending = []
                pool.submit(writer.commit).result()
        except KeyboardInterrupt:
            status, message = "interrupted", "interrupted by the user; rerun the same command to continue"
            for f in pending:
                f.result()
            writer.commit()  # complete batches already captured are worth keeping
        except BaseException as e:
            status, message = "failed", f"{type(e).__name__}: {e}"
            raise
        finally:
            if bar is not None:
                bar.close()
            counts["committed"] = writer.n_committed
            counts["promoted_to_float32"] = writer.promoted
            if not noop:
                store.record_run({**run, "status": status, "ended_at": now_utc(), "counts": json.dumps(counts),
                                  "message": message})
    seconds = time.perf_counter() - t_cap
    res = IngestResult(run_id=run_id, model_key=lm.key, fmt=fmt, n_records=len(records), n_new_prompts=n_new_prompts,
                       n_captured=writer.n_committed, n_skipped=n_distinct - len(todo), n_truncated=counts["truncated"],
                       n_duplicates=n_dups, seconds=seconds, tokens=counts["tokens"], promoted=writer.promoted,
                       status=status)
    if status == "interrupted":
        raise IngestInterrupted(res)
    return res


def _encoded_batches(todo, lm, chat, max_length, cfg):
    """Length-sorted batches of encoded prompts, one encode window at a time (bounded memory)."""
    for w0 in range(0, len(todo), cfg.window):
        window = [encode(lm.tokenizer, r, chat, max_length, cfg.on_long) for r in todo[w0:w0 + cfg.window]]
        for idx in length_batches([len(e.ids) for e in window], cfg.batch_size, cfg.max_tokens):
            yield [window[i] for i in idx]


def _captured(todo, lm, capturer, chat, max_length, cfg, layers, client):
    """``(encoded batch, PendingBatch)`` pairs: captured here, or on the client's workers."""
    batches = _encoded_batches(todo, lm, chat, max_length, cfg)
    if client is None:
        for enc in batches:
            yield enc, capturer.capture(enc)
        return
    from .distributed_capture import iter_captured

    yield from iter_captured(client, batches, lm.path, cfg, layers, lm.key)


class IngestInterrupted(KeyboardInterrupt):
    """Ctrl-C during ingest, after the captured batches were committed."""

    def __init__(self, result: IngestResult):
        super().__init__(f"interrupted: {result.n_captured} prompts committed; rerun to continue")
        self.result = result


def _progress(total: int, enabled: bool):
    if not enabled or total == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="prompt", desc="ingest", dynamic_ncols=True, smoothing=0.1)
