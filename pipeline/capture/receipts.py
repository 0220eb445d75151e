"""Ingest receipts: a rerun that would capture nothing is answered without loading the model.

After an ingest that leaves every prompt of its corpus committed (a completed run, or a rerun
that found nothing to do), :func:`write` caches a receipt under ``$TRAITLENS_HOME/receipts/``:
what was asked (a digest of the corpus bytes and read options, the groups, layers and length
policy the settings resolve to, the model's key) and what the store looked like afterwards (the
names of its ``prompts`` and ``rows`` table parts, each group's commit mark). A later run that
asks the same of a store that still looks exactly like that would read the corpus, load the
model and capture nothing; :func:`check` answers it in the time it takes to hash the corpus.
Anything else (a changed byte, other model files, a part added or quarantined by anyone, a
custom module-path site) falls through to a normal ingest. Receipts are a cache outside the
store: deleting them only costs the next rerun its model load.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from traitlens.store import GroupKey, Store
from traitlens.store.arrays import get_group
from traitlens.store.vocabulary import NAMED_SITES

from traitlens.pipeline.capture.corpus import CorpusError, ReadOptions
from traitlens.pipeline.capture.readers.sources import resolve
from traitlens.pipeline.capture.settings import CaptureConfig
from traitlens.pipeline.model.identity import cache_put, known, read_cache, traitlens_home
from traitlens.pipeline.model.layers import parse_layers

MAX_RECEIPTS = 512  # per store; the oldest are dropped


def corpus_digest(paths, opts: ReadOptions | None) -> str:
    """sha256 over the read options and every corpus byte, in the order given (globs expanded;
    folders: their files in sorted order, by relative name). Hashes at disk speed; parses nothing."""
    h = hashlib.sha256(json.dumps(asdict(opts or ReadOptions()), sort_keys=True).encode())
    for p in resolve(paths):
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        for f in files:
            h.update(f"\0{f.relative_to(p) if p.is_dir() else f.name}\0".encode())
            with open(f, "rb") as fh:
                h.update(hashlib.file_digest(fh, "sha256").digest())
    return h.hexdigest()


@dataclass
class Plan:
    """What a capture run resolves its settings to: enough to tell two runs apart."""

    model_key: str
    fmt: str
    groups: list[GroupKey]
    layers_by_site: dict[str, list[int]]
    max_length: int

    def request(self, cfg: CaptureConfig, digest: str) -> str:
        """The receipt's key: the corpus digest and every resolved setting that decides what
        an ingest would write (not how fast: batch sizes, device and dtype are left out)."""
        what = {"digest": digest, "model_key": self.model_key, "fmt": self.fmt,
                "groups": sorted(g.path for g in self.groups), "layers": self.layers_by_site,
                "max_length": self.max_length, "generate": cfg.generate, "on_long": cfg.on_long,
                "padding_side": cfg.padding_side}
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:32]


def plan_from_identity(cfg: CaptureConfig) -> Plan | None:
    """The plan an ingest would make, from the model's cached identity (no load), or None when
    the identity is unknown or the settings need the model itself (a module-path site)."""
    if any(s not in NAMED_SITES for s in cfg.sites):
        return None
    ident = known(cfg.model, cfg.load_in)  # a quantised load is another model (its key says so)
    if ident is None or (cfg.chat and not ident.chat_template):
        return None  # unknown checkpoint, or --chat without a template: the normal path explains
    chat = ident.chat_template if cfg.chat is None else cfg.chat
    try:
        layers = parse_layers(cfg.layers, ident.n_layers)
    except ValueError:
        return None
    max_length = min(cfg.max_length or ident.max_length, ident.max_length) - cfg.generate
    fmt = "chat" if chat else "raw"
    sites = sorted(set(cfg.sites))
    return Plan(ident.key, fmt, [GroupKey(ident.key, fmt, s, p) for s in sites for p in cfg.poolings],
                {s: layers for s in sites}, max_length)


def store_state(store: Store, groups: list[GroupKey], tables=("prompts", "rows")) -> dict:
    """What a rerun's outcome depends on in the store: which parts' rows each table holds (a
    digest that compaction keeps and any append or lost part changes) and the commit marks."""
    state = {t: store.tables[t].snapshot().digest() for t in tables}
    root = store.zarr_root() if store.zarr_path.exists() else None
    marks = {}
    for g in groups:
        grp = get_group(root, g.path) if root is not None else None
        marks[g.path] = dict(grp.attrs).get("committed") if grp is not None else None
    state["marks"] = marks
    return state


def _file(store: Store) -> Path:
    where = hashlib.sha256(str(store.root).encode()).hexdigest()[:20]
    return traitlens_home() / "receipts" / f"{where}.json"


def _read(store: Store) -> dict:
    return read_cache(_file(store))


@dataclass
class Receipt:
    """A rerun answered from its receipt: the counts the run that wrote it saw."""

    model_key: str
    fmt: str
    records: int
    distinct_prompts: int
    duplicates: int
    run_id: str
    digest: str  # of the corpus it vouches for


@dataclass
class Vouch:
    """What an ingest that left its whole corpus committed can vouch for; :meth:`write` records
    it against the store as it is at that moment (call it under the writer lock)."""

    plan: Plan
    cfg: CaptureConfig
    digest: str
    counts: dict  # records, distinct_prompts, duplicates, run_id

    def write(self, store: Store) -> None:
        """Best effort: a receipt that cannot be written costs only speed later."""
        _remember(store, self.plan.request(self.cfg, self.digest),
                  {"state": store_state(store, self.plan.groups), "counts": {**self.counts, "digest": self.digest},
                   "model_key": self.plan.model_key, "fmt": self.plan.fmt})


def _remember(store: Store, key: str, entry: dict) -> None:
    cache_put(_file(store), key, entry, MAX_RECEIPTS)


# -- whole workflows: a refresh whose spec, corpora, model and store are as the last one left them
def workflow_key(spec_path, model_key: str, corpus_digests: list[str]) -> str:
    """The spec file's bytes (every extract and evaluate setting), the model, the corpora and
    the code version: what decides which vectors a refresh computes."""
    from traitlens.store.runs import code_version

    h = hashlib.sha256(Path(spec_path).read_bytes())
    h.update(json.dumps([model_key, corpus_digests, code_version()]).encode())
    return "workflow:" + h.hexdigest()[:32]


def workflow_state(store: Store) -> dict:
    return store_state(store, store.groups(), ("prompts", "rows", "vectors"))


def vouch_workflow(store: Store, key: str) -> None:
    """After a run or refresh that left every vector of its spec current (under its lock)."""
    _remember(store, key, {"state": workflow_state(store)})


def workflow_current(store: Store, key: str) -> bool:
    entry = _read(store).get(key)
    return entry is not None and entry["state"] == workflow_state(store)


def readable_digest(paths, opts: ReadOptions | None) -> str | None:
    """:func:`corpus_digest`, or None for a corpus it cannot hash (a missing or unreadable file,
    a glob matching nothing): the ingest's own reading names the problem."""
    try:
        return corpus_digest(paths, opts)
    except (OSError, CorpusError):
        return None


def check(store_path, paths, opts: ReadOptions | None, cfg: CaptureConfig, digest: str | None = None) -> Receipt | None:
    """A :class:`Receipt` when an ingest of ``paths`` with ``cfg`` would capture and change
    nothing in the store at ``store_path``; None when it has to run (or cannot tell).
    ``digest``: the corpus's :func:`corpus_digest`, when the caller has it already (an ingest
    that falls through hands the same one on, so the corpus is hashed once)."""
    if not Store.exists(store_path):
        return None
    plan = plan_from_identity(cfg.validate())
    if plan is None:
        return None
    store = Store.open(store_path)
    digest = digest or readable_digest(paths, opts)
    if digest is None:
        return None
    entry = _read(store).get(plan.request(cfg, digest))
    if entry is None or entry["state"] != store_state(store, plan.groups):
        return None
    c = entry["counts"]
    return Receipt(entry["model_key"], entry["fmt"], c["records"], c["distinct_prompts"], c["duplicates"],
                   c.get("run_id", ""), digest)
