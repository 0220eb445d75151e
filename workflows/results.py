"""What the functions of the Python face return (``tl.ingest`` ... ``tl.query``), and the store's
and a vector's own views.

Every result is one object with the table of what it did or found (:meth:`Result.to_arrow`,
:meth:`Result.to_pandas`), its summary in words (:meth:`Result.lines`: the lines the command
line prints, so ``repr`` reads like the CLI's output) and HTML for notebooks
(``_repr_html_``, built from :mod:`.display`, every string escaped). Tables read back from the
store are the rows the function appended (by run or vector id), not a copy kept aside.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from . import display as html


class Result:
    """The base of every result: ``to_arrow`` (a ``pyarrow.Table``), ``to_pandas``, ``lines``,
    a ``repr`` of those lines, and ``_repr_html_`` (by default the lines and the table)."""

    def to_arrow(self) -> pa.Table:
        raise NotImplementedError

    def to_pandas(self):
        """:meth:`to_arrow` as a ``pandas.DataFrame`` (needs pandas: ``pip install 'traitlens[notebook]'``)."""
        try:
            import pandas  # noqa: F401
        except ImportError:
            raise ImportError("to_pandas() needs pandas: pip install 'traitlens[notebook]' (or pandas); "
                              "to_arrow() needs nothing more") from None
        return self.to_arrow().to_pandas()

    def lines(self) -> list[str]:
        return []

    def __repr__(self) -> str:
        return "\n".join(self.lines())

    def _repr_html_(self) -> str:
        t = self.to_arrow()
        return html.box(html.paragraphs(self.lines()), html.table(t.to_pylist(), t.column_names))


def text_table(t: pa.Table, max_rows: int = 200) -> list[str]:
    """A pyarrow Table as aligned text columns (floats to 4 significant digits, vectors shortened)."""
    cols = t.column_names
    rows = t.slice(0, max_rows).to_pylist()

    def cell(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        if isinstance(v, list):
            return f"[{len(v)} values]"
        return "NULL" if v is None else str(v)

    cells = [[cell(r[c]) for c in cols] for r in rows]
    widths = [min(60, max([len(c)] + [len(x[i]) for x in cells])) for i, c in enumerate(cols)]
    out = ["  ".join(c.ljust(w)[:w] for c, w in zip(cols, widths)), "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.ljust(w)[:w] for v, w in zip(x, widths)) for x in cells]
    more = f", first {max_rows} shown" if t.num_rows > max_rows else ""
    return out + [f"({t.num_rows} rows{more})"]


def _rows_of(store, table: str, column: str, values) -> pa.Table:
    """The rows of ``table`` whose ``column`` is one of ``values`` (what a run appended)."""
    import pyarrow.compute as pc

    t = store.table(table)
    return t.filter(pc.is_in(t[column], value_set=pa.array(sorted(set(values)), pa.string())))


# -- ingest --------------------------------------------------------------------------------------
@dataclass(repr=False)
class Ingested(Result):
    """What ``tl.ingest`` did: the capture's counts, or the receipt that answered it (nothing new)."""

    result: object = None  # traitlens.pipeline.capture.ingest.IngestResult
    receipt: object = None  # traitlens.pipeline.capture.receipts.Receipt, when the corpus was already stored

    @property
    def notes(self) -> list[str]:
        """Lines for stderr: float16 layers stored as float32."""
        r = self.result
        return [f"note: float16 overflowed, stored as float32: {', '.join(r.promoted)}"] if r and r.promoted else []

    def counts(self) -> dict:
        if self.receipt is not None:
            s = self.receipt
            return {"status": "current", "run_id": s.run_id or None, "model_key": s.model_key, "fmt": s.fmt,
                    "n_records": s.records, "n_new_prompts": 0, "n_relabelled": 0, "n_captured": 0,
                    "n_skipped": s.distinct_prompts, "n_truncated": 0, "n_duplicates": s.duplicates, "seconds": 0.0,
                    "prompts_per_s": 0.0}
        r = self.result
        return {"status": r.status, "run_id": r.run_id, "model_key": r.model_key, "fmt": r.fmt,
                "n_records": r.n_records, "n_new_prompts": r.n_new_prompts, "n_relabelled": r.n_relabelled,
                "n_captured": r.n_captured, "n_skipped": r.n_skipped, "n_truncated": r.n_truncated,
                "n_duplicates": r.n_duplicates, "seconds": r.seconds, "prompts_per_s": r.prompts_per_s}

    def to_arrow(self) -> pa.Table:
        """One row: the run's counts (status ``current`` when the receipt answered)."""
        return pa.Table.from_pylist([self.counts()])

    def lines(self) -> list[str]:
        if self.receipt is not None:
            s = self.receipt
            return [f"ingest done: 0 prompts captured, {s.distinct_prompts} already stored, 0 new prompt records, "
                    f"{s.duplicates} duplicates skipped; model {s.model_key} ({s.fmt}); nothing new since run "
                    f"{s.run_id or '(unrecorded)'}: the corpus and the store are as it left them, so the model was "
                    "not loaded"]
        r = self.result
        if not r.model_loaded:  # every record was found stored before the model was needed
            return [f"ingest done: 0 prompts captured, {r.n_skipped} already stored, 0 new prompt records, "
                    f"{r.n_duplicates} duplicates skipped; model {r.model_key} ({r.fmt}); every record is stored "
                    "as the corpus has it, so the model was not loaded"]
        relabelled = f", {r.n_relabelled} relabelled (newest label wins)" if r.n_relabelled else ""
        return [f"ingest {r.status}: {r.n_captured} prompts captured, {r.n_skipped} already stored, "
                f"{r.n_new_prompts} new prompt records{relabelled}, {r.n_truncated} truncated, {r.n_duplicates} "
                f"duplicates skipped; model {r.model_key} ({r.fmt}); {r.prompts_per_s:.1f} prompts/s; run {r.run_id}"]


# -- extract -------------------------------------------------------------------------------------
@dataclass(repr=False)
class Extracted(Result):
    """What ``tl.extract`` did: the vectors of every (layer, method), new and already stored."""

    store: object
    result: object  # traitlens.pipeline.extract.jobs.ExtractResult
    background: bool = False  # extracted with a background corpus: specificity figures

    @property
    def vector_ids(self) -> list[str]:
        return [r["vector_id"] for r in self.result.records]

    def to_arrow(self) -> pa.Table:
        """The ``vectors`` rows of this extraction (the store's own), in layer then method order."""
        t = _rows_of(self.store, "vectors", "vector_id", self.vector_ids)
        order = {v: i for i, v in enumerate(self.vector_ids)}
        return t.take(sorted(range(t.num_rows), key=lambda i: order[t["vector_id"][i].as_py()]))

    def best_lines(self) -> list[str]:
        """Per method, its best layer by the rule ``rank`` uses, with the held-out metrics."""
        from traitlens.queries.selection import best_per_method

        res = self.result
        best = best_per_method(res.records)  # the rule `rank` uses: AUROC, then Cohen's d, then stability
        spec = self.background
        out = [f"{'method':<10} {'best layer':>10} {'AUROC':>7} {'bal.acc':>7} {'d':>6} {'stability':>9}"
               + (f" {'spec.P10':>8} {'spec.AUROC':>10}" if spec else "") + f"  (held-out: {res.records[0]['held_split']})"]
        for m in (m for m in res.methods if m in best):  # (a method with no usable vector has no line)
            r = best[m]
            out.append(f"{m:<10} {r['layer']:>10} {r['auroc']:>7.3f} {r['balanced_accuracy']:>7.3f} "
                       f"{r['cohens_d']:>6.2f} {r['stability']:>9.3f}"
                       + (f" {r['spec_precision']:>8.3f} {r['spec_auroc']:>10.3f}" if spec else ""))
        if spec:
            r0 = res.records[0]
            out.append(f"spec.P10: share of held-out positives in the top decile of them, the held-out negatives and "
                       f"{r0['n_background']} held-out background prompts (base rate {r0['spec_base']:.3f}); "
                       f"spec.AUROC: positives against the background; token count alone: "
                       f"{r0['spec_floor_length']:.3f}")
        return out

    def done_line(self) -> str:
        res = self.result
        return (f"extract done: {len(res.records)} vectors ({res.n_new} new, {res.n_existing} already stored) for "
                f"{res.trait!r} on {res.key.path}, {len(res.layers)} layers x {len(res.methods)} methods in "
                f"{res.seconds:.1f} s; run {res.run_id}")

    def lines(self) -> list[str]:
        return self.best_lines() + [self.done_line()]

    def _repr_html_(self) -> str:
        cols = ["layer", "method", "auroc", "balanced_accuracy", "cohens_d", "stability", "floor_length",
                "floor_dataset", "vector_id"]
        return html.box(html.paragraphs([self.done_line()]), html.table(self.to_arrow().to_pylist(), cols))


# -- rank ----------------------------------------------------------------------------------------
HIDDEN_IN_TEXT = ["model_key", "fmt", "n_held_pos", "n_held_neg", "floor_length", "floor_dataset", "spec_base",
                  "spec_floor_length", "n_background"]


@dataclass(repr=False)
class Ranking(Result):
    """``tl.rank``: a trait's best (group, layer, method) cells by a held-out metric, the random
    direction's best (the floor), the floors of what is not the trait (token count, source
    dataset), a flag for each row that does not clear them, and the detection and steering picks
    side by side once ``evaluate`` has run. The first row is the pick (``steer`` uses it)."""

    store: object
    trait: str
    by: str
    best: pa.Table
    floor: dict | None
    flags: dict = field(default_factory=dict)  # vector_id -> why it does not clear its floors (or None)
    steering: list[str] = field(default_factory=list)
    lens: str | None = None
    heatmap_path: Path | None = None

    @property
    def rows(self) -> list[dict]:
        return self.best.to_pylist()

    @property
    def pick(self) -> dict:
        """The first row: the vector ``steer``, ``monitor`` and ``export`` use for this trait."""
        return self.rows[0]

    def to_arrow(self) -> pa.Table:
        """The ranked rows, with ``below_floor`` (why a row does not clear its floors, or null)."""
        return self.best.append_column("below_floor", pa.array([self.flags.get(v) for v in
                                                                self.best["vector_id"].to_pylist()], pa.string()))

    def as_json(self) -> dict:
        """What ``rank --format json`` prints."""
        from traitlens.queries.selection import RULE

        return {"trait": self.trait, "by": self.by, "order": RULE.format(by=self.by), "rows": self.to_arrow().to_pylist(),
                "floor": self.floor}

    def floor_lines(self) -> list[str]:
        """The random direction's best, and the floors of what is not the trait."""
        from traitlens.queries.selection import metric_column

        out = []
        f = self.floor
        if f is not None:
            value = f[metric_column(self.by)]
            out.append(f"floor (random direction, best layer {f['layer']}): {self.by} "
                       + ("not measured" if value is None else f"{value:.3f}"))
        first = self.rows[0]
        nuisance = [(name, first[col]) for name, col in (("token count", "floor_length"), ("dataset", "floor_dataset"))
                    if first[col] is not None]
        if nuisance:
            out.append("floors (not the trait, fitted on train, held-out AUROC): "
                       + ", ".join(f"{name} {v:.3f}" for name, v in nuisance))
        spec = specificity_line(first, f)
        if spec:
            out.append(spec)
        return out

    def lines(self) -> list[str]:
        from traitlens.queries.selection import RULE, metric_column, tie_note

        from traitlens.queries.ranking import SPECIFICITY

        rows = self.rows
        hidden = HIDDEN_IN_TEXT + (list(SPECIFICITY) if all(r["spec_auroc"] is None for r in rows) else [])
        out = text_table(self.best.drop_columns(hidden)) + [f"order: {RULE.format(by=self.by)}"]
        out += self.floor_lines()
        out += [f"flag: {r['method']} L{r['layer']}: {self.flags[r['vector_id']]}" for r in rows
                if self.flags.get(r["vector_id"])]
        note = tie_note(rows, metric_column(self.by), (rows[0]["n_held_pos"] or 0) + (rows[0]["n_held_neg"] or 0))
        if note:
            out.append(f"note: {note}")
        out += self.steering
        if self.lens:
            out.append(f"logit lens of the first row (promotes | suppresses): {self.lens}")
        if self.heatmap_path is not None:
            out.append(f"heatmap: {self.heatmap_path}")
        return out

    def heatmap(self, path) -> Path:
        """Write the layers x methods heatmap of the pick's group (its cell boxed) to ``path``: the
        figure ``rank --plot`` and the report draw."""
        from traitlens.queries import StoreSQL
        from traitlens.queries.ranking import heatmap

        with StoreSQL(self.store) as q:
            return heatmap(q, self.trait, self.by, self.pick, Path(path))

    def _repr_html_(self) -> str:
        from traitlens.queries.selection import RULE

        cols = [c for c in self.best.column_names if c not in ("model_key", "fmt", "n_held_pos", "n_held_neg")]
        rows = self.to_arrow().to_pylist()
        png = html.drawn(self.heatmap)
        return html.box(html.heading(f"rank {self.trait} by {self.by}"),
                        html.table(rows, cols + ["below_floor"], mark=0, mark_label="★ pick"),
                        html.paragraphs([f"order: {RULE.format(by=self.by)}"] + self.floor_lines() + self.steering
                                        + ([f"logit lens of the pick (promotes | suppresses): {self.lens}"]
                                           if self.lens else [])),
                        html.image(png, f"{self.trait}: held-out {self.by} by layer and method, the pick boxed"))


def specificity_line(r: dict, floor: dict | None) -> str | None:
    """The first row's out-of-corpus specificity beside its floors (base rate, token count,
    random direction), with a warning when length alone does as well; None when its vector was
    extracted without a background."""
    if r.get("spec_auroc") is None:
        return None
    from traitlens.pipeline.extract.floors import FLOOR_MARGIN

    rnd = ""
    if floor is not None and floor.get("spec_auroc") is not None:
        rnd = f"; random direction: precision {floor['spec_precision']:.3f}, AUROC {floor['spec_auroc']:.3f}"
    line = (f"beyond the corpus ({r['n_background']} held-out background prompts): top-decile precision "
            f"{r['spec_precision']:.3f} (base rate {r['spec_base']:.3f}), AUROC against the background "
            f"{r['spec_auroc']:.3f}; floors: token count AUROC {r['spec_floor_length']:.3f}{rnd}")
    if r["spec_auroc"] - r["spec_floor_length"] < FLOOR_MARGIN:
        line += ("\nflag: against the background the token count alone does as well as this vector: it may read "
                 "length, not the trait")
    return line


# -- steer ---------------------------------------------------------------------------------------
@dataclass(repr=False)
class Steered(Result):
    """``tl.steer``: each prompt's reply without and with the push(es) (or the ablation)."""

    applied: str  # the pushes (or the ablation) in words
    rows: list[dict] = field(default_factory=list)  # prompt, unsteered, steered, pushed (False: condition not met)
    condition: list[str] = field(default_factory=list)  # the condition's lines, when one was given

    def to_arrow(self) -> pa.Table:
        return pa.Table.from_pylist(self.rows, schema=pa.schema([("prompt", pa.string()), ("unsteered", pa.string()),
                                                                 ("steered", pa.string()), ("pushed", pa.bool_())]))

    @property
    def head(self) -> list[str]:
        """The lines known before any reply is generated: the pushes, the condition."""
        return [self.applied] + self.condition

    def lines(self) -> list[str]:
        out = list(self.head)
        for r in self.rows:
            head = f"\n=== {r['prompt']!r} ===" if len(self.rows) > 1 else ""
            out.append(f"{head}\n--- unsteered ---\n{r['unsteered']}\n\n--- steered"
                       + ("" if r["pushed"] else " (condition not met: unsteered)") + f" ---\n{r['steered']}")
        return out

    def _repr_html_(self) -> str:
        return html.box(html.paragraphs([self.applied] + self.condition),
                        html.table(self.rows, ["prompt", "unsteered", "steered", "pushed"]))


# -- evaluate ------------------------------------------------------------------------------------
def sweep_table(rows: list[dict], kind: str, n: int, judged: bool, kl_measure: str) -> list[str]:
    """One line per measured setting, the trait's rows then the floor's (ablations last); the
    worst capability fall where lm-eval tasks were run."""
    capable = any(r.get("capability_fall") is not None for r in rows)
    out = [f"{'method':<10} {'layer':>5} {'alpha':>6} {'unsteered':>10} {'+v':>8} {'-v':>8} {'shift':>7} "
           f"{'95% CI':>17} {'wrong way':>9} {'KL nats':>8} {'ppl':>7} {'dist-2':>6}"
           + (f" {'judge':>6}" if judged else "") + (f" {'cap.fall':>8}" if capable else "")
           + f"   ({kind}, n={n}; KL: {kl_measure})"]
    num = lambda x, w, f: f"{'-':>{w}}" if x is None else f"{x:>{w}{f}}"  # noqa: E731
    for r in sorted(rows, key=lambda r: (r.get("operation") == "ablate", r["method"] == "random", r["method"],
                                         r["layer"], r["alpha"] if r["alpha"] is not None else 0.0)):
        ci = f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]"
        alpha = f"{'ablate':>6}" if r.get("operation") == "ablate" else f"{r['alpha']:>6.2f}"
        out.append(f"{r['method']:<10} {r['layer']:>5} {alpha} {r['unsteered']:>10.3f} {r['plus']:>8.3f} "
                   f"{num(r['minus'], 8, '.3f')} {r['shift']:>7.3f} {ci:>17} {r['wrong_way']:>9.0%} {r['kl']:>8.4f} "
                   f"{num(r.get('perplexity'), 7, '.1f')} {num(r.get('distinct2'), 6, '.2f')}"
                   + (f" {num(r.get('judge'), 6, '.1f')}" if judged else "")
                   + (f" {num(r.get('capability_fall'), 8, '.3f')}" if capable else ""))
    if rows and rows[0].get("perplexity_unsteered") is not None:
        u = rows[0]
        out.append(f"unsteered replies: perplexity {u['perplexity_unsteered']:.1f}, distinct-2 "
                   f"{u['distinct2_unsteered']:.2f}" + (f", judge {u['judge_unsteered']:.1f}"
                                                        if judged and u.get("judge_unsteered") is not None else ""))
    return out


@dataclass(repr=False)
class Evaluation(Result):
    """``tl.evaluate``: a steering sweep's every measured setting (the random floor's too), the
    Pareto front of (shift, KL), the pick within the KL budget beside the random direction at the
    same setting, the detection and steering picks side by side, and the steering figure."""

    store: object
    sweep: object  # traitlens.pipeline.steer.search.SweepResult
    what: str  # what the measure is taken on
    run_id: str
    samples: list[dict] = field(default_factory=list)  # steering_samples rows
    n_texts: int = 0
    judged: bool = False
    summary: list[str] = field(default_factory=list)  # detection and steering picks, the correlation
    plot: Path | None = None
    n_stored: int = 0
    notes: list[str] = field(default_factory=list)  # lines for stderr (the judge's rejected answers)
    refusal: list[str] = field(default_factory=list)  # refusal_rate: refusals per 100, heretic's form
    capability: str | None = None  # the lm-eval tasks measured, in words
    stored_capability: str = ""  # how many capability rows were stored
    n_neutral: int | None = None  # the neutral prompts the damage was measured on

    @property
    def rows(self) -> list[dict]:
        return self.sweep.rows

    @property
    def pick(self) -> dict | None:
        """The largest shift within the KL budget (None when every setting costs more)."""
        return self.sweep.pick

    @property
    def front(self) -> list[dict]:
        return self.sweep.front

    @property
    def kind(self) -> str:
        return self.sweep.config.kind

    def to_arrow(self) -> pa.Table:
        """The ``steering`` rows this sweep appended (run ``run_id``)."""
        return _rows_of(self.store, "steering", "run_id", [self.run_id])

    def figure(self, path) -> Path:
        """Write the three-panel steering figure (the report's and ``evaluate --plot``'s) to ``path``."""
        from traitlens.pipeline.steer.plots import steering_figure

        return steering_figure(self.rows, self.samples, self.sweep.trait, Path(path), self.sweep.kl_budget, self.kind)

    @property
    def head(self) -> list[str]:
        """The lines known before anything is measured: the lm-eval tasks, what the measure is on."""
        return ([self.capability] if self.capability else []) + [self.what]

    def lines(self) -> list[str]:
        from traitlens.pipeline.steer.records import front_line

        out = list(self.head)
        out += sweep_table(self.rows, self.kind, self.n_texts, self.judged, self.sweep.config.kl) + self.refusal
        out += ["\n" + front_line(self.rows)] + self.summary + [f"search: {self.sweep.search}"]
        out += self.sweep.plan_lines(self.n_texts, self.n_neutral)
        if self.plot is not None:
            out.append(f"plot: {self.plot}")
        trait = self.sweep.trait
        return out + [f"stored {self.n_stored} rows in the steering table and {len(self.samples)} in steering_samples"
                      f"{self.stored_capability} (run {self.run_id}); `traitlens rank --trait {trait} --by steering`"]

    def _repr_html_(self) -> str:
        from traitlens.pipeline.steer.records import front_line

        rows = sorted(self.rows, key=lambda r: (r.get("operation") == "ablate", r["method"] == "random", r["method"],
                                                r["layer"], r["alpha"] if r["alpha"] is not None else 0.0))
        p = self.pick
        mark = next((i for i, r in enumerate(rows) if p is not None and r is p), None)
        cols = ["method", "layer", "alpha", "unsteered", "shift", "ci_low", "ci_high", "wrong_way", "kl", "perplexity",
                "distinct2"]
        png = html.drawn(self.figure)
        return html.box(html.heading(f"steering {self.sweep.trait} ({self.kind})"),
                        html.paragraphs([self.what] + self.summary + [front_line(self.rows),
                                                                       f"search: {self.sweep.search}"]),
                        html.image(png, f"{self.sweep.trait}: steering effect against damage, against alpha, and "
                                        "per-sample steerability"),
                        html.table(rows, cols, mark=mark, mark_label="★ pick"))


@dataclass(repr=False)
class Together(Result):
    """``tl.evaluate(..., add=[...])``: pushes measured together, each alone and as random
    directions (stored in ``steering_together``)."""

    store: object
    trait: str
    kind: str
    n_texts: int
    kl: str  # the KL measure (evaluate --kl)
    what: str  # what the measure is taken on
    measuring: str  # the pushes in words
    rows: list[dict]
    names: list[str]  # the pushes of each row, in words
    records: list[dict]
    run_id: str
    plot: Path | None = None

    @property
    def head(self) -> list[str]:
        """The lines known before anything is measured: what the measure is taken on, the pushes."""
        return [self.what, f"measuring together: {self.measuring}"]

    def to_arrow(self) -> pa.Table:
        """The ``steering_together`` rows this measurement appended."""
        return _rows_of(self.store, "steering_together", "run_id", [self.run_id])

    def figure(self, path) -> Path:
        from traitlens.pipeline.steer.plots import together_figure

        return together_figure(self.rows, self.trait, Path(path), self.kind,
                               [f"{r['part']}: {n}" for r, n in zip(self.rows, self.names)])

    def lines(self) -> list[str]:
        from traitlens.pipeline.steer.together import additivity_line, floor_line

        width = max(len(n) for n in self.names)
        out = self.head + [f"{'part':<9} {'pushes':<{width}} {'shift':>7} {'95% CI':>17} {'wrong way':>9} "
                           f"{'KL nats':>8} {'ppl':>6} {'dist-2':>6}   ({self.kind}, n={self.n_texts}; KL: {self.kl})"]
        num = lambda x, f: "-" if x is None else format(x, f)  # noqa: E731
        for r, what in zip(self.rows, self.names):
            out.append(f"{r['part']:<9} {what:<{width}} {r['shift']:>+7.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}] "
                       f"{r['wrong_way']:>9.0%} {r['kl']:>8.4f} {num(r.get('perplexity'), '.1f'):>6} "
                       f"{num(r.get('distinct2'), '.2f'):>6}")
        if self.rows[0].get("perplexity_unsteered") is not None:
            out.append(f"unsteered replies: perplexity {self.rows[0]['perplexity_unsteered']:.1f}, distinct-2 "
                       f"{self.rows[0]['distinct2_unsteered']:.2f}")
        out += [line for line in (additivity_line(self.rows), floor_line(self.rows)) if line]
        if self.plot is not None:
            out.append(f"plot: {self.plot}")
        return out + [f"stored {len(self.records)} rows in steering_together (combination "
                      f"{self.records[0]['combination_id']}, run {self.run_id})"]

    def _repr_html_(self) -> str:
        rows = [{**r, "pushes": n} for r, n in zip(self.rows, self.names)]
        png = html.drawn(self.figure)
        return html.box(html.paragraphs([f"measuring together: {self.measuring}"]),
                        html.table(rows, ["part", "pushes", "shift", "ci_low", "ci_high", "wrong_way", "kl"]),
                        html.image(png, f"{self.trait}: pushes together, alone and random"))


# -- score ---------------------------------------------------------------------------------------
@dataclass(repr=False)
class Scored(Result):
    """``tl.score``: how many prompts were scored on which vector, and the highest scores (or,
    with ``generate``, the projection differences of given replies against the model's own)."""

    result: object  # traitlens.pipeline.extract.scoring.ScoreResult
    before: list[str] = field(default_factory=list)  # what was captured or generated first
    top: list[dict] = field(default_factory=list)  # the highest scores, or the largest differences
    diff_lines: list[str] | None = None  # with generate: the mean difference and its rows
    output: Path | None = None
    background: bool = False  # the top rows carry their percentile among background prompts

    @property
    def vector(self) -> dict:
        return self.result.vector

    @property
    def notes(self) -> list[str]:
        r = self.result
        return ([f"note: {r.n_missing} prompts asked for are not captured for {r.vector['model_key']}; run "
                 "`traitlens ingest` on them with that model first"] if r.n_missing else [])

    def to_arrow(self) -> pa.Table:
        """The rows listed: the highest scores (prompt_id, score, calibrated, percentile, text, trait,
        label), or with ``generate`` the differences (prompt_id, diff, calibrated_diff, ...)."""
        return pa.Table.from_pylist(self.top)

    def lines(self) -> list[str]:
        r, v = self.result, self.result.vector
        out = self.before + [f"score: {r.n_scored} prompts scored, {r.n_already} already scored, on {v['method']} "
                             f"L{v['layer']} ({v['vector_id']}) of {v['trait']!r}"
                             + (f"; run {r.run_id}" if r.run_id else "")]
        if self.diff_lines is not None:
            out += self.diff_lines
        else:
            bg = self.background
            if self.top:
                out.append(f"{'calib.':>7} {'pctile':>6}" + (f" {'bg.pct':>6}" if bg else "") + "  text (highest "
                           "scores; calibrated: 0 = held-out negatives' mean, 1 = positives'"
                           + ("; bg.pct: percentile among the background" if bg else "") + ")")
            out += [f"{t['calibrated']:>7.2f} {t['percentile']:>6.3f}"
                    + (f" {t['background_percentile']:>6.3f}" if bg else "")
                    + f"  {' '.join(str(t['text'] or '').split())[:90]}" for t in self.top]
        if self.output is not None:
            out.append(f"wrote {self.output} ({len(self.top)} {'records' if self.diff_lines is not None else 'prompts'})")
        return out


# -- query ---------------------------------------------------------------------------------------
@dataclass(repr=False)
class QueryResult(Result):
    """``tl.query``: the rows a read-only SQL statement returned."""

    table: pa.Table
    sql: str = ""

    def to_arrow(self) -> pa.Table:
        return self.table

    def lines(self) -> list[str]:
        return text_table(self.table)

    def _repr_html_(self) -> str:
        return html.box(html.table(self.table.to_pylist(), self.table.column_names),
                        html.paragraphs([f"({self.table.num_rows} rows)"]))


# -- export --------------------------------------------------------------------------------------
@dataclass(repr=False)
class Exported(Result):
    """``tl.export``: the file written and its vector card."""

    path: Path
    card: dict
    said: list[str] = field(default_factory=list)

    def to_arrow(self) -> pa.Table:
        """One row per exported layer: its vector id, held-out metrics, norm and steering pick (the card's)."""
        return pa.Table.from_pylist([{"layer": int(k), **{c: v for c, v in e.items() if c != "steering"},
                                      "steering": json.dumps(e["steering"]) if "steering" in e else None}
                                     for k, e in self.card["layers"].items()])

    def lines(self) -> list[str]:
        return self.said


# -- the store and its vectors -------------------------------------------------------------------
@dataclass(repr=False)
class Vector(Result):
    """One stored vector: its identity (trait, model, group, layer, method, provenance), its
    held-out metrics with the floors beside them, its steering pick where ``evaluate`` measured
    it, and the tokens the logit lens reads off it (``traitlens vectors lens``)."""

    row: dict  # the vectors row
    lens: list[dict] = field(default_factory=list)  # the newest lens reading: token, direction, rank, logit
    steering: dict | None = None  # its steering pick (largest shift within the KL budget), if evaluated

    def __getitem__(self, key):
        return self.row[key]

    @property
    def vector_id(self) -> str:
        return self.row["vector_id"]

    @property
    def values(self):
        """The unit vector, ``float32 [d]``."""
        import numpy as np

        return np.asarray(self.row["vector"], dtype=np.float32)

    def card(self) -> dict:
        """The vector card an export writes beside it (``pipeline/extract/export.py``)."""
        from traitlens.pipeline.extract.export import vector_card

        return vector_card([self.row], steering={self.vector_id: self.steering} if self.steering else None)

    def tokens(self, direction: str) -> list[str]:
        return [r["token"] for r in sorted(self.lens, key=lambda r: r["rank"]) if r["direction"] == direction]

    def to_arrow(self) -> pa.Table:
        """The vectors row (one)."""
        from traitlens.store.tables import SCHEMAS

        return pa.Table.from_pylist([self.row], schema=SCHEMAS["vectors"])

    METRICS = ("auroc", "balanced_accuracy", "cohens_d", "separation", "stability", "agreement", "train_auroc",
               "p_value", "floor_length", "floor_dataset")

    def lines(self) -> list[str]:
        r = self.row
        num = lambda x, f=".3f": "-" if x is None else format(x, f)  # noqa: E731
        out = [f"vector {r['vector_id']}: {r['trait']} {r['method']} L{r['layer']} on {r['model_key']}/{r['fmt']}/"
               f"{r['site']}/{r['pooling']} (d={r['d']}, {r['n_pos']}+{r['n_neg']} train rows, held out on "
               f"{r['held_split']}: {r['n_held_pos']}+{r['n_held_neg']})",
               f"held-out AUROC {num(r['auroc'])}, balanced accuracy {num(r['balanced_accuracy'])}, Cohen's d "
               f"{num(r['cohens_d'], '.2f')}, stability {num(r['stability'], '.2f')}; floors: token count "
               f"{num(r['floor_length'])}, dataset {num(r['floor_dataset'])}"]
        if self.steering:
            s = self.steering
            out.append(f"steering pick ({s['kind']}): alpha {s['alpha']:g}, shift {s['shift']:+.3f} "
                       f"[{s['ci_low']:+.3f}, {s['ci_high']:+.3f}], KL {s['kl']:.4f}")
        if self.lens:
            out.append(f"logit lens: promotes {' '.join(map(repr, self.tokens('promotes')))}; suppresses "
                       f"{' '.join(map(repr, self.tokens('suppresses')))}")
        return out

    def _repr_html_(self) -> str:
        r = self.row
        ident = ["vector_id", "trait", "method", "layer", "model_key", "fmt", "site", "pooling", "d", "held_split",
                 "n_pos", "n_neg", "n_held_pos", "n_held_neg", "where_sql", "params", "fingerprint", "code_version",
                 "run_id", "created_at"]
        parts = [html.heading(f"{r['trait']} · {r['method']} · layer {r['layer']}"),
                 html.table([{"field": k, "value": r.get(k)} for k in ident if r.get(k) is not None], ["field", "value"]),
                 html.heading("held-out metrics (floors: what is not the trait)"),
                 html.table([{k: r.get(k) for k in self.METRICS}], list(self.METRICS))]
        if self.steering:
            s = self.steering
            parts += [html.heading("steering pick (largest shift within the KL budget)"),
                      html.table([s], [k for k in ("kind", "alpha", "shift", "ci_low", "ci_high", "kl", "wrong_way")
                                       if k in s])]
        if self.lens:
            parts += [html.heading("logit lens"),
                      html.table([{"promotes": p, "suppresses": q} for p, q in
                                  zip(self.tokens("promotes"), self.tokens("suppresses"))], ["promotes", "suppresses"])]
        parts += [html.heading("vector card"), f"<pre>{html.esc(json.dumps(self.card(), indent=1, default=str))}</pre>"]
        return html.box(*parts)


def store_facts(store) -> dict:
    """What a store holds, for its repr: groups (prompts, layers), traits (prompts per label),
    vectors per trait, the newest runs, and bytes on disk per table and for the arrays."""
    import pyarrow.compute as pc

    groups = [{"group": g.path, "prompts": n, "layers": _span(store.layers(g))} for g, n in store.group_counts().items()]
    p = store.table("prompts", columns=["trait", "label"])
    traits: dict[str, dict] = {}
    for r in p.group_by(["trait", "label"]).aggregate([([], "count_all")]).to_pylist():
        t = traits.setdefault(str(r["trait"]), {"trait": r["trait"], "positive": 0, "negative": 0, "unlabelled": 0,
                                                "vectors": 0})
        t[{1: "positive", -1: "negative"}.get(r["label"], "unlabelled")] += r["count_all"]
    v = store.table("vectors", columns=["trait"])
    for r in v.group_by(["trait"]).aggregate([([], "count_all")]).to_pylist():
        traits.setdefault(str(r["trait"]), {"trait": r["trait"], "positive": 0, "negative": 0, "unlabelled": 0,
                                            "vectors": 0})["vectors"] = r["count_all"]
    runs = store.runs()
    if runs.num_rows:
        runs = runs.take(pc.sort_indices(runs, [("started_at", "descending")]))
    recent = [{k: r[k] for k in ("run_id", "stage", "status", "started_at", "ended_at")}
              for r in runs.slice(0, 10).to_pylist()]
    return {"root": str(store.root), "prompts": store.table("prompts", columns=["prompt_id"]).num_rows,
            "groups": groups, "traits": sorted(traits.values(), key=lambda t: str(t["trait"])), "runs": recent,
            "n_runs": runs.num_rows, "sizes": _sizes(store)}


def _span(layers: list[int]) -> str:
    from traitlens.store.layout import format_layer_list

    return format_layer_list(layers) if layers else "-"


def _sizes(store) -> list[dict]:
    """Bytes on disk under each table's folder and under the arrays (``zarr``)."""
    from traitlens.store.layout import TABLES_DIR, ZARR_DIR

    def total(folder) -> int:
        try:
            return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        except (OSError, NotImplementedError):  # a listing the location cannot give
            return 0

    out = [{"part": f"tables/{t}", "bytes": total(store.root / TABLES_DIR / t)} for t in sorted(store.tables)]
    return [s for s in out if s["bytes"]] + [{"part": ZARR_DIR, "bytes": total(store.root / ZARR_DIR)}]


def size_text(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def store_lines(facts: dict) -> list[str]:
    size = sum(s["bytes"] for s in facts["sizes"])
    out = [f"traitlens store at {facts['root']}: {facts['prompts']} prompts, {len(facts['groups'])} groups, "
           f"{sum(t['vectors'] for t in facts['traits'])} vectors, {facts['n_runs']} runs, {size_text(size)}"]
    out += [f"  {g['group']}: {g['prompts']} prompts, layers {g['layers']}" for g in facts["groups"]]
    out += [f"  trait {t['trait']}: {t['positive']} positive, {t['negative']} negative, {t['unlabelled']} unlabelled; "
            f"{t['vectors']} vectors" for t in facts["traits"]]
    return out


def store_html(facts: dict) -> str:
    size = sum(s["bytes"] for s in facts["sizes"])
    sizes = [{**s, "size": size_text(s["bytes"])} for s in facts["sizes"]]
    return html.box(html.heading(f"traitlens store · {facts['root']}"),
                    html.paragraphs([f"{facts['prompts']} prompts, {len(facts['groups'])} groups, "
                                     f"{facts['n_runs']} runs, {size_text(size)} on disk"]),
                    html.heading("groups"), html.table(facts["groups"], ["group", "prompts", "layers"]),
                    html.heading("traits"),
                    html.table(facts["traits"], ["trait", "positive", "negative", "unlabelled", "vectors"]),
                    html.heading(f"runs (newest {len(facts['runs'])} of {facts['n_runs']})"),
                    html.table(facts["runs"], ["run_id", "stage", "status", "started_at", "ended_at"]),
                    html.heading("sizes"), html.table(sizes, ["part", "size", "bytes"]))

