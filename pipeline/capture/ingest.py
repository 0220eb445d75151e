"""``traitlens ingest``: corpus -> model -> store, incremental and crash-safe.

Every option, every corpus record and the store's own invariants (a group's fixed layer set,
its width, its capture policy) are checked before the store is touched; with ``--on-long
fail`` every prompt to capture is tokenised first, so a too-long one fails before anything is
written. Prompts already committed for this model/format/site/pooling are skipped, so
rerunning on the same or a grown corpus captures only what is missing. Capture of batch k+1
overlaps the commit of batch k (:mod:`.writer_thread`; each batch's pooled rows leave the device
in one copy, :mod:`.transfer`); memory is bounded by the window and batch size, not by the
corpus (the corpus streams twice: :mod:`.plan`). ``--max-tokens auto`` and the halving of a
batch that runs out of memory: :mod:`.token_budget`.

Nothing here imports torch until a prompt is known to need the model: a rerun whose corpus
holds nothing new (no new record, no relabel, every prompt captured in every group) is settled
from the model's cached identity, after the same refusals and with the same receipt
(:func:`_settle_without_model`). Its cost is reading the corpus and one join against the store.
"""

from __future__ import annotations

import time
from itertools import islice
from typing import TYPE_CHECKING
from dataclasses import asdict, dataclass, replace

from traitlens.store import GroupKey, Store
from traitlens.store.arrays import get_group, require_group
from traitlens.store.errors import InputError
from traitlens.store.layout import StoreError
from traitlens.store.verify import clean_temporaries
from traitlens.store.runs import interrupt_reason

from traitlens.pipeline.capture import receipts
from traitlens.pipeline.capture.batching import length_batches
from traitlens.pipeline.capture.corpus import PromptRecord, ReadOptions
from traitlens.pipeline.capture.plan import CAPTURE, NEW, RELABELLED, scan_corpus
from traitlens.pipeline.capture.readers.sources import resolve
from traitlens.pipeline.model.encode import encode, uses_chat
from traitlens.pipeline.model.identity import known
from traitlens.pipeline.model.layers import parse_layers
from traitlens.pipeline.runtime.interrupts import interrupt_exit_code
from traitlens.pipeline.capture.settings import CaptureConfig, IngestConfig  # noqa: F401  (the old name, re-exported)

if TYPE_CHECKING:
    from traitlens.pipeline.model.loading import LoadedModel


@dataclass
class IngestResult:
    run_id: str
    model_key: str
    fmt: str
    n_records: int
    n_new_prompts: int
    n_relabelled: int
    n_captured: int
    n_skipped: int
    n_truncated: int
    n_duplicates: int
    seconds: float
    tokens: int
    promoted: list[str]
    status: str
    vouch: receipts.Vouch | None = None  # what a later caller may re-vouch for (see receipts)
    model_loaded: bool = True  # False: settled from the model's cached identity, nothing to capture

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


def _capture_policy(g: GroupKey, settings: dict) -> dict:
    keys = ("generate", "max_length", "on_long") if g.pooling == "response_mean" else ("max_length", "on_long")
    return {k: settings[k] for k in keys}


def _check_group_config(store: Store, groups: list[GroupKey], settings: dict) -> None:
    """A group captured with one length or generation policy must not be extended with another:
    its rows would no longer be comparable (a prompt cut at 512 tokens is not the same input as
    one cut at 2048). ``--on-long`` may change: it only decides what happens to a prompt past
    the limit, not the limit. Reads only."""
    if not store.zarr_path.exists():
        return
    root = store.zarr_root()
    for g in groups:
        grp = get_group(root, g.path)
        have = dict(grp.attrs).get("capture") if grp is not None else None
        if have is None:
            continue
        want = _capture_policy(g, settings)
        if have.get("max_length") not in (None, want["max_length"]):
            raise StoreError(f"{g.path} was captured with prompts limited to {have['max_length']} tokens; this run "
                             f"limits them to {want['max_length']}: pass the same --max-length (and --generate), or "
                             "use another --store")
        if g.pooling == "response_mean" and have.get("generate") != want.get("generate"):
            raise StoreError(f"{g.path} was captured with --generate {have.get('generate')}; this run asks for "
                             f"{want.get('generate')}: use the same value, or another --store")


def _record_group_config(store: Store, groups: list[GroupKey], settings: dict) -> None:
    root = store.zarr_root(mode="a")
    for g in groups:
        grp = require_group(root, g.path)
        if "capture" not in grp.attrs:
            grp.attrs["capture"] = _capture_policy(g, settings)


def _check_lengths(records, lm: "LoadedModel", chat: bool, max_length: int, cfg: CaptureConfig) -> None:
    """With ``--on-long fail``: tokenise every prompt to capture now, so a too-long one stops the
    run before the store is touched (not half-way, after other batches were committed)."""
    assistant = "assistant_mean" in cfg.poolings
    for r in records:
        encode(lm.tokenizer, r, chat, max_length, "fail", assistant)


def ingest(store_path, corpus_paths, read_opts: ReadOptions | None = None, cfg: CaptureConfig | None = None,
           lm: "LoadedModel | None" = None, progress: bool = True, log=print, client=None,
           digest: str | None = None) -> IngestResult:
    """Capture every prompt of ``corpus_paths`` that the store lacks; returns what was done.

    ``client``: a ``dask.distributed.Client`` to shard the forward passes across its workers
    (each loads the model once). Where the groups allow, the workers write their own chunk-aligned
    ranges (``cfg.workers_write``; see :mod:`.distributed`); this process commits every range.
    ``digest``: the corpus's :func:`.receipts.corpus_digest` with ``read_opts``, when the caller
    took it already (for its receipt check); else it is taken here."""
    cfg = (cfg or CaptureConfig()).validate()
    read_opts = read_opts or ReadOptions()
    corpus_paths = resolve(corpus_paths)  # globs expanded, hub ids refused: what the digest and the scan read
    # before reading: what the receipt vouches for
    digest = digest or receipts.corpus_digest(corpus_paths, read_opts)
    # pass 1: every record validated, nothing written
    scan = scan_corpus(corpus_paths, read_opts, require_assistant="assistant_mean" in cfg.poolings)
    try:
        if not scan.n_read:
            raise InputError(f"no prompts found in {', '.join(map(str, corpus_paths))}")
        if lm is None:
            settled = _settle_without_model(store_path, scan, digest, cfg)
            if settled is not None:
                return settled
        return _ingest(store_path, corpus_paths, scan, digest, cfg, lm, progress, log, client)
    finally:
        scan.close()


def _settle_without_model(store_path, scan, digest, cfg: CaptureConfig) -> IngestResult | None:
    """The result of an ingest that has nothing to capture or write, from the model's cached
    identity alone (no torch); None when the model is needed: the store or identity is unknown,
    a site needs the module tree, or any record is new, relabelled or still to capture. The
    store's refusals (its groups' layers and width, their capture policy) are checked as the
    full path checks them, under the writer lock, and the receipt is written as it writes it."""
    t0 = time.perf_counter()
    plan = receipts.plan_from_identity(cfg)
    if plan is None or plan.max_length < 1 or not Store.exists(store_path):
        return None
    ident = known(cfg.model)
    store = Store.open(store_path)
    settings = {**asdict(cfg), "max_length": plan.max_length}
    with store.lock("ingest"):
        store.check_extend(plan.groups, plan.layers_by_site, ident.d_model, ids=False)  # (the plan compares ids)
        _check_group_config(store, plan.groups, settings)
        root = store.zarr_root()
        if any("capture" not in dict(get_group(root, g.path).attrs) for g in plan.groups
               if get_group(root, g.path) is not None):
            return None  # a group from before capture policies were recorded: the full path records it
        scan.decide(store, plan.groups)
        if scan.count(NEW) or scan.count(RELABELLED) or scan.count(CAPTURE):
            return None
        counts = {"records": scan.n_records, "distinct_prompts": scan.n_distinct, "duplicates": scan.n_duplicates,
                  "run_id": ""}
        vouch = receipts.Vouch(plan, cfg, digest, counts)
        vouch.write(store)
    return IngestResult(run_id="", model_key=plan.model_key, fmt=plan.fmt, n_records=scan.n_records,
                        n_new_prompts=0, n_relabelled=0, n_captured=0, n_skipped=scan.n_distinct, n_truncated=0,
                        n_duplicates=scan.n_duplicates, seconds=time.perf_counter() - t0, tokens=0, promoted=[],
                        status="done", vouch=vouch, model_loaded=False)


def _ingest(store_path, corpus_paths, scan, digest, cfg, lm, progress, log, client) -> IngestResult:
    from traitlens.pipeline.capture.capturer import Capturer
    from traitlens.pipeline.capture.token_budget import Backoff, auto_max_tokens
    from traitlens.pipeline.capture.writer_thread import WriterThread
    from traitlens.pipeline.model.loading import load_model
    from traitlens.pipeline.model.sites import resolve_sites

    if not scan.n_read:
        raise InputError(f"no prompts found in {', '.join(map(str, corpus_paths))}")
    lm = lm or load_model(cfg.model, log=log, **cfg.load_kwargs())
    layers = parse_layers(cfg.layers, lm.n_layers)
    points = resolve_sites(lm.model, cfg.sites, layers)
    chat = uses_chat(lm.tokenizer, cfg.chat)
    fmt = "chat" if chat else "raw"
    max_length = min(cfg.max_length or lm.max_length, lm.max_length) - cfg.generate
    if max_length < 1:
        raise InputError(f"--generate {cfg.generate} leaves no room for the prompt in the model's "
                         f"{lm.max_length}-token context")
    if cfg.max_tokens == "auto" and client is None:  # (Dask workers size their own, from their own memory)
        tokens, how = auto_max_tokens(lm, len(points), cfg.poolings, cfg.generate, max_length)
        cfg = replace(cfg, max_tokens=tokens)
        log(how)
    sites = sorted({p.site for p in points})
    groups = [GroupKey(lm.key, fmt, s, pool) for s in sites for pool in cfg.poolings]
    layers_by_site = {s: sorted({p.layer for p in points if p.site == s}) for s in sites}
    all_layers = sorted({l for ls in layers_by_site.values() for l in ls})
    settings = {**asdict(cfg), "model": lm.name, "model_path": str(lm.path), "model_key": lm.key, "fmt": fmt,
                "layers": all_layers, "max_length": max_length, "device": str(lm.device),
                "torch_dtype": str(next(lm.model.parameters()).dtype).removeprefix("torch."),  # what dtype=auto chose
                "corpus": [str(p) for p in corpus_paths], "read": asdict(scan.opts)}

    # everything that can refuse this run does so here, before the store is created or written
    existing = Store.open(store_path) if Store.exists(store_path) else None
    if existing is not None:
        existing.check_extend(groups, layers_by_site, lm.d_model)
        _check_group_config(existing, groups, settings)
    if cfg.on_long == "fail":
        scan.decide(existing, groups)
        _check_lengths((r for w in scan.windows(cfg.window, want=CAPTURE) for r, f in w if f & CAPTURE), lm, chat, max_length, cfg)

    store = existing or Store.open(store_path, create=True)
    capturer = Capturer(lm, points, cfg.poolings, cfg.padding_side, cfg.generate)
    with store.lock("ingest"), capturer, store.run("ingest", settings, start=False) as run:
        clean_temporaries(store)  # left by a run that was killed; we hold the lock, so none is live
        # the writer checks the groups again under the lock (another run may have written since),
        # and so does the plan: which records are new, relabelled, or still to capture
        writer = store.writer(groups, layers_by_site, lm.d_model, run.run_id, cfg.chunk_rows)
        scan.decide(store, groups)
        _record_group_config(store, groups, settings)
        n_new_prompts, n_relabelled, n_todo = scan.count(NEW), scan.count(RELABELLED), scan.count(CAPTURE)
        if n_todo or n_new_prompts or n_relabelled:  # a rerun with nothing new writes nothing at all
            run.start()
        n_distinct = scan.n_distinct
        counts = run.counts = {"records": scan.n_records, "distinct_prompts": n_distinct, "relabelled": n_relabelled,
                               "to_capture": n_todo, "already_stored": n_distinct - n_todo, "captured": 0,
                               "truncated": 0, "tokens": 0}
        interrupted_by = None
        bar = _progress(n_todo, progress)
        backoff = Backoff(cfg.max_tokens) if isinstance(cfg.max_tokens, int) else None
        t_cap = time.perf_counter()
        try:
            # the writer thread commits batch k while batch k+1 runs; on Ctrl-C it still commits what was captured
            with WriterThread(writer, cfg.commit_seconds, threaded=cfg.writer_thread) as behind:
                todo = _recorded_windows(store, scan, cfg.window)
                for enc, batch in _captured(todo, lm, capturer, chat, max_length, cfg, all_layers, client, writer,
                                            store, counts, backoff):
                    if not batch.written:  # (a range a worker wrote is committed already)
                        behind.put(batch)
                    counts["captured"] += len(enc)
                    counts["truncated"] += sum(1 for e in enc if e.truncated)
                    counts["tokens"] += int(batch.token_counts.sum())
                    if bar is not None:
                        bar.update(len(enc))
                        el = time.perf_counter() - t_cap
                        bar.set_postfix_str(f"{counts['tokens'] / el:,.0f} tok/s, {writer.n_committed} committed")
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (pipeline.interrupts): what was complete is committed
            interrupted_by = e
            run.status, run.message = "interrupted", f"{interrupt_reason(e)}; rerun the same command to continue"
        finally:
            if bar is not None:
                bar.close()
            if backoff is not None and backoff.summary():
                log(backoff.summary())
                counts["out_of_memory_retries"], counts["settled_max_tokens"] = backoff.n_failed, backoff.max_tokens
            counts["committed"] = writer.n_committed
            counts["promoted_to_float32"] = writer.promoted
        vouch = None
        if interrupted_by is None:  # every prompt of this corpus is committed (still under our lock)
            vouch = receipts.Vouch(receipts.Plan(lm.key, fmt, groups, layers_by_site, max_length), cfg, digest,
                                   {"records": scan.n_records, "distinct_prompts": n_distinct,
                                    "duplicates": scan.n_duplicates, "run_id": run.run_id})
            vouch.write(store)
    seconds = time.perf_counter() - t_cap
    res = IngestResult(run_id=run.run_id, model_key=lm.key, fmt=fmt, n_records=scan.n_records,
                       n_new_prompts=n_new_prompts, n_relabelled=n_relabelled,
                       n_captured=writer.n_committed, n_skipped=n_distinct - n_todo, n_truncated=counts["truncated"],
                       n_duplicates=scan.n_duplicates, seconds=seconds, tokens=counts["tokens"],
                       promoted=writer.promoted, status=run.status, vouch=vouch)
    if interrupted_by is not None:
        raise IngestInterrupted(res, interrupt_exit_code(interrupted_by))
    return res


def _recorded_windows(store: Store, scan, window: int):
    """Pass 2: the records to capture, in corpus order. Each window's new and relabelled prompt
    records are written (one part) before any of its prompts is captured: a prompt is recorded
    before its rows, as the commit protocol requires."""
    for w in scan.windows(window, want=NEW | RELABELLED | CAPTURE):
        store.write_prompts([r.as_row() for r, f in w if f & NEW], [r.as_row() for r, f in w if f & RELABELLED])
        yield from (r for r, f in w if f & CAPTURE)


def _encoded_batches(todo, lm, chat, max_length, cfg):
    """Length-sorted batches of encoded prompts, one encode window at a time (bounded memory);
    ``todo`` is any iterable of records."""
    it = iter(todo)
    assistant = "assistant_mean" in cfg.poolings
    max_tokens = cfg.max_tokens if cfg.max_tokens != "auto" else None  # ("auto" on Dask workers: they cut)
    while window := [encode(lm.tokenizer, r, chat, max_length, cfg.on_long, assistant) for r in islice(it, cfg.window)]:
        for idx in length_batches([len(e.ids) for e in window], cfg.batch_size, max_tokens):
            yield [window[i] for i in idx]


def _captured(todo, lm, capturer, chat, max_length, cfg, layers, client, writer, store, counts, backoff=None):
    """``(encoded batch, PendingBatch | InFlight)`` pairs: captured here (a batch that runs out of
    memory is halved and retried by ``backoff``), or on the client's workers (who write their
    ranges themselves where the groups allow it: the batch comes back ``written``)."""
    batches = _encoded_batches(todo, lm, chat, max_length, cfg)
    if client is None:
        for enc in batches:
            yield from backoff.capture(capturer.capture_async, enc, lm.device)
        return
    from traitlens.pipeline.capture import distributed

    counts["workers_write"] = cfg.workers_write and writer.can_delegate()
    if counts["workers_write"]:
        yield from distributed.iter_written(client, (e for b in batches for e in b), writer, store, lm.path, cfg,
                                            layers, lm.key, counts)
        return
    yield from distributed.iter_captured(client, batches, lm.path, cfg, layers, lm.key, counts)


class IngestInterrupted(KeyboardInterrupt):
    """Ctrl-C during ingest, after the captured batches were committed."""

    def __init__(self, result: IngestResult, exit_code: int = 130):
        what = "terminated (SIGTERM)" if exit_code == 143 else "interrupted"
        super().__init__(f"{what}: {result.n_captured} prompts committed, the run is recorded as interrupted; "
                         "rerun the same command to continue")
        self.result, self.exit_code = result, exit_code


def _progress(total: int, enabled: bool):
    if not enabled or total == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="prompt", desc="ingest", dynamic_ncols=True, smoothing=0.1)
