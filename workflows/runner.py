"""``traitlens run`` / ``refresh``: a spec's whole job — ingest, extract, (evaluate), rank, report.

Every step is incremental: ingest captures only prompts the store lacks, extract recomputes
only layers whose contrastive rows, parameters or code changed, so ``refresh`` is ``run``
that skips the report when nothing changed. The store's writer lock is held for the whole
run (two runs never write one store at once; a dead holder's lock is released by the kernel).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from traitlens.pipeline.capture.corpus import ReadOptions
from traitlens.pipeline.model.layers import format_layers
from traitlens.store import Store
from traitlens.store.store import new_run_id

from .spec import Spec


@dataclass
class RunSummary:
    run_id: str
    captured: int = 0
    already_stored: int = 0
    vectors_new: int = 0
    vectors_unchanged: int = 0
    computed: dict[str, list[int]] = field(default_factory=dict)  # trait -> layers recomputed
    scored: dict[str, int] = field(default_factory=dict)  # trait -> prompts scored ([score] section)
    evaluated: dict[str, int] = field(default_factory=dict)  # trait -> steering settings measured ([evaluate])
    report: Path | None = None
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        return bool(self.captured or self.vectors_new or any(self.scored.values()))

    def lines(self) -> list[str]:
        out = [f"captured {self.captured} new prompts ({self.already_stored} already stored)",
               f"vectors: {self.vectors_new} new, {self.vectors_unchanged} unchanged"]
        out += [f"  {t}: recomputed layers {format_layers(ls)}" for t, ls in self.computed.items() if ls]
        out += [f"  {t}: scored {n} prompts" for t, n in self.scored.items() if n]
        out += [f"  {t}: evaluated {n} steering settings" for t, n in self.evaluated.items() if n]
        out.append(f"report: {self.report}" if self.report else "report: unchanged (nothing new)")
        return out


def _traits(store: Store, wanted) -> list[str]:
    rows = store.table("prompts", columns=["trait", "label"]).to_pylist()
    both = sorted({r["trait"] for r in rows if r["label"] == 1} & {r["trait"] for r in rows if r["label"] == -1})
    if wanted in (None, "all"):
        return both
    wanted = [wanted] if isinstance(wanted, str) else wanted
    missing = [t for t in wanted if t not in both]
    if missing:
        raise ValueError(f"extract.traits {missing} have no positive and negative prompts in the store; "
                         f"traits with both: {both}")
    return wanted


def run(spec: Spec, refresh: bool = False, progress: bool = True, log=print, lm=None, scheduler=None) -> RunSummary:
    """Run (or refresh) a spec; returns what it did."""
    from traitlens.pipeline.capture import receipts

    t0 = time.perf_counter()
    summary = RunSummary(run_id=new_run_id("refresh" if refresh else "run"))
    store = Store.open(spec.store, create=True)
    cfg = spec.ingest_config()
    from traitlens.pipeline.runtime.cluster import dask_client

    stage = "refresh" if refresh else "run"
    # capture shards and extraction tasks both run on a Dask cluster when one is named
    with store.lock(stage), dask_client(scheduler or spec.scheduler) as client, \
            store.run("workflow", {"spec": str(spec.path), "refresh": refresh}, summary.run_id, start=False) as run:
        model_key, digests = (None if lm is None else lm.key), None
        if lm is None:  # every corpus answered by its receipt: nothing to capture, no model to load
            seen = [receipts.check(spec.store, c.paths, ReadOptions.from_options(c.options), cfg) for c in spec.corpora]
            if seen and all(seen) and len({r.model_key for r in seen}) == 1:
                model_key, digests = seen[0].model_key, [r.digest for r in seen]
                summary.already_stored += sum(r.distinct_prompts for r in seen)
                if refresh and receipts.workflow_current(store, receipts.workflow_key(spec.path, model_key, digests)):
                    summary.seconds = time.perf_counter() - t0  # every vector current, as the last one left it
                    return summary
        xcfg = spec.check_values().extract_config()  # every value checked before anything is captured
        if model_key is None or lm is not None:
            from traitlens.pipeline.capture.ingest import ingest

            lm = lm or _load_model(spec, cfg, log)
            model_key = lm.key
            results = []
            for corpus in spec.corpora:
                opts = ReadOptions.from_options(corpus.options)
                res = ingest(spec.store, corpus.paths, opts, cfg, lm=lm, progress=progress, log=log, client=client)
                results.append(res)
                summary.captured += res.n_captured
                summary.already_stored += res.n_skipped
                if res.n_captured or res.n_new_prompts or res.n_relabelled:
                    run.start()  # the workflow changed the store: it is recorded, however it ends
            # a later corpus's parts outdate an earlier one's receipt; re-vouch at the final state
            # unless a later corpus relabelled prompts (then a rerun must relabel them back)
            for i, res in enumerate(results):
                if res.vouch is not None and not any(r.n_relabelled for r in results[i + 1:]):
                    res.vouch.write(store)
            digests = [r.vouch.digest for r in results] if all(r.vouch for r in results) else None
        from traitlens.pipeline.extract.jobs import extract

        from .api import background_prompts

        background = background_prompts(spec.background)  # ingested above when [[corpora]] lists it
        for trait in _traits(store, spec.extract.get("traits", "all")):
            r = extract(spec.store, trait, model=model_key, cfg=xcfg, scheduler=client, progress=progress,
                        background=background)
            summary.vectors_new += r.n_new
            summary.vectors_unchanged += r.n_existing
            summary.computed[trait] = r.computed_layers
        if spec.score:  # score every stored prompt not yet scored on each trait's pick
            from traitlens.pipeline.extract.scoring import score

            for trait in _traits(store, spec.score.get("traits", "all")):
                summary.scored[trait] = score(spec.store, trait, where=spec.score.get("where")).n_scored
        if summary.changed or not refresh:
            run.start()
            if spec.evaluate.get("steering"):
                lm = lm or _load_model(spec, cfg, log)
                _evaluate(spec, store, lm, summary, log)
            from .report import write_report

            summary.report = write_report(spec, store, model_key, summary)
            run.counts = {"captured": summary.captured, "vectors_new": summary.vectors_new,
                          "computed": summary.computed}
        if digests is not None:  # every vector of this spec is current now: a refresh may skip it all
            receipts.vouch_workflow(store, receipts.workflow_key(spec.path, model_key, digests))
    summary.seconds = time.perf_counter() - t0
    return summary


def _load_model(spec: Spec, cfg, log):
    """The spec's model; imported here, so a run that needs none never imports torch."""
    from traitlens.pipeline.model.loading import load_model

    return load_model(spec.model, log=log, **cfg.load_kwargs())


def _evaluate(spec: Spec, store: Store, lm, summary: RunSummary, log=print) -> None:
    """The ``[evaluate]`` section: each trait's steering sweep (``traitlens evaluate --steering``:
    method x layer x alpha, random floor at the front and pick), with the section's
    :class:`~traitlens.pipeline.steer.settings.SweepConfig`. Vectors already evaluated with this
    measure are not measured again, so a refresh evaluates only what changed; methods the trait
    has no vectors of are left out; the report reads every stored row."""
    from dataclasses import replace

    from traitlens.pipeline.steer.search import evaluator_for, stored_methods, sweep
    from traitlens.queries import StoreSQL
    from traitlens.queries.selection import best_vector

    base = spec.sweep_config()
    capability = None
    if base.capability:  # one for every trait: the unsteered scores are measured once
        from traitlens.pipeline.steer.capability import Capability

        capability = Capability(lm, base.capability, base.capability_include, base.capability_limit)
        log(f"capability: {capability.describe()}, unsteered and at every setting")
    for trait in summary.computed:
        with StoreSQL(store) as q:
            pick = best_vector(q, trait, model_key=lm.key)
            stored = stored_methods(q, trait, lm.key)
            done = {r["vector_id"] for r in q.query("SELECT DISTINCT vector_id FROM steering WHERE trait = ? AND kind = ?",
                                                     [trait, base.kind]).to_pylist()}
        if pick is None:
            continue
        methods = stored if base.methods == "all" else [m for m in base.methods if m in stored]
        if not methods:  # (an empty list is not a sweep: SweepConfig refuses it)
            log(f"evaluate {trait}: no stored vectors of the methods asked for ({base.methods}); stored: "
                f"{', '.join(stored) or 'none'}")
            continue
        cfg = replace(base, methods=methods)
        evaluator, what = evaluator_for(store, lm, trait, cfg, capability=capability)
        res = sweep(store, trait, evaluator, cfg, skip=done, log=log)
        if res.rows:
            n_rows = len(res.save(store, summary.run_id, lock=False)[0])  # the run holds the store's lock
            summary.evaluated[trait] = n_rows
            log(f"evaluate {trait}: {what}; {n_rows} settings measured ({res.search})")


def parse_every(text: str) -> float:
    """``30s`` | ``15m`` | ``1h`` | ``1d`` -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip().lower()
    try:
        value = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except (KeyError, ValueError):
        raise ValueError(f"--every {text!r}: use a number with s, m, h or d (30s, 15m, 1h, 1d)") from None
    if value <= 0:
        raise ValueError("--every must be positive")
    return value
