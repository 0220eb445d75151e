"""The Markdown report of a workflow run: per trait, the ranking table and a layers x methods heatmap."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from traitlens.queries import StoreSQL
from traitlens.queries.ranking import heatmap, rank
from traitlens.store import Store, file_stem
from traitlens.store.location import capabilities, write_atomically


def utc_stamp() -> str:
    """Now, for reports and schedule lines: ``2026-12-01 10:40:00 UTC``."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def write_report(spec, store: Store, model_key: str, summary) -> Path:
    """Write ``report.path`` (default ``<store>/report/report.md``, or ``report/report.md`` beside the
    spec when the store is on object storage) and its PNGs; return its path."""
    rep = spec.report
    home = spec.store if capabilities(spec.store).local_files else spec.path.parent
    path = Path(rep["path"]) if "path" in rep else home / "report" / "report.md"
    if not path.is_absolute() and "path" in rep:
        path = spec.path.parent / path
    path.parent.mkdir(parents=True, exist_ok=True)
    top = rep.get("top", 5)
    lines = [f"# traitlens report — {spec.path.name}", "",
             f"{utc_stamp()} · run `{summary.run_id}` · store `{spec.store}` · model `{model_key}`", "",
             "## This run", ""] + [f"- {line}" for line in summary.lines() if not line.startswith("report:")] + [""]
    from traitlens.pipeline.extract.audit import wrong_side
    from traitlens.pipeline.extract.floors import floor_flag

    from traitlens.queries.ranking import lens_summary

    with StoreSQL(store) as q:
        for trait in summary.computed:
            best, floor = rank(q, trait, "auroc", top)
            rows = best.to_pylist()
            lines += [f"## {trait}", "", "| layer | method | site | pooling | AUROC | bal. acc | Cohen's d | stability "
                      "| agreement |", "|---|---|---|---|---|---|---|---|---|"]
            fmt = lambda x: "" if x is None else f"{x:.3f}"  # noqa: E731
            lines += [f"| {r['layer']} | {r['method']} | {r['site']} | {r['pooling']} | {fmt(r['auroc'])} | "
                      f"{fmt(r['balanced_accuracy'])} | {fmt(r['cohens_d'])} | {fmt(r['stability'])} | "
                      f"{fmt(r['agreement'])} |" for r in rows]
            random_auroc = None
            if floor.num_rows:
                f = floor.to_pylist()[0]
                random_auroc = f["auroc"]
                lines += ["", f"Floor: a random direction reaches AUROC {f['auroc']:.3f} (layer {f['layer']})."]
            if rows and rows[0]["floor_length"] is not None:
                ds = rows[0]["floor_dataset"]
                lines += [f"Floors of what is not the trait (fitted on train, held-out AUROC): token count "
                          f"{rows[0]['floor_length']:.3f}" + (f", source dataset {ds:.3f}" if ds is not None else "")
                          + "."]
            flagged = [(r, why) for r in rows if (why := floor_flag(r, random_auroc))]
            lines += [f"**Flag**: {r['method']} at layer {r['layer']}: {why}." for r, why in flagged]
            said = lens_summary(store).get(rows[0]["vector_id"]) if rows else None
            if said:  # `traitlens vectors lens` has read the pick through the unembedding
                lines += ["", f"Logit lens of the pick (promotes | suppresses): {said}"]
            if rows:  # the label audit against the pick (`traitlens audit` lists more)
                _, wrong = wrong_side(store, trait, rows[0]["vector_id"], top=1000)
                lines += ["", f"Label audit: {len(wrong)} train prompts sit on the wrong side of the pick's threshold"
                          + (":" if wrong else ".")]
                lines += [f"- depth {w['depth']:.2f}, label {w['label']:+d}: " + " ".join(str(w["text"]).split())[:120]
                          for w in wrong[:3]]
            if rep.get("plots", True) and rows:
                png = path.parent / f"{file_stem(trait, 'trait')}-auroc.png"  # trait names come from corpora
                heatmap(q, trait, "auroc", rows[0], png)
                lines += ["", f"![{trait}: held-out AUROC by layer and method]({png.name})"]
            lines += _steering_section(q, trait, path.parent, rep.get("plots", True),
                                       spec.evaluate.get("kind"), spec.evaluate.get("kl_budget"))
            lines.append("")
        for trait in (summary.scored if spec.score else {}):
            lines += _scores_section(q, trait, path.parent, rep.get("plots", True))
    data = "\n".join(lines).encode("utf-8")
    write_atomically(path, lambda f: f.write(data))  # a crash mid-write keeps the last report whole
    return path


def _steering_section(q: StoreSQL, trait: str, folder: Path, plots: bool, kind: str | None,
                      kl_budget: float | None) -> list[str]:
    """The steering evaluation of one trait (``[evaluate]``, or `traitlens evaluate --steering`):
    the detection and steering picks, the Pareto front, the pick's side effects on lm-eval tasks
    (where `--capability` ran), refusals per 100 (``refusal_rate``), and the three-panel figure."""
    from traitlens.pipeline.steer.plots import steering_figure
    from traitlens.pipeline.steer.records import front_line, refusal_lines, stored_rows, summary_lines
    from traitlens.queries.budget import KL_BUDGET

    budget = KL_BUDGET if kl_budget is None else kl_budget
    kind, rows, samples = stored_rows(q, trait, kind, samples=plots)
    if not rows:
        return []
    lines = ["", f"### Steering ({kind}, {len(rows)} settings measured)", ""]
    summary = summary_lines(q, trait, kind, rows, budget)
    table = next((i for i, line in enumerate(summary) if line.startswith("side effects of the pick")), len(summary))
    lines += [f"- {line}" for line in summary[:table]]
    lines.append(f"- {front_line(rows)}")
    if summary[table:]:  # the pick's side effects: a line, then a Markdown table
        lines += ["", *summary[table:]]
    refusals = refusal_lines(rows)
    if refusals:
        lines += ["", "```", *refusals, "```"]
    if plots:
        png = steering_figure(rows, samples, trait, folder / f"{file_stem(trait, 'trait')}-steering.png", budget, kind)
        lines += ["", f"![{trait}: steering effect against damage, against alpha, and per-sample steerability]"
                      f"({png.name})"]
    return lines


def _scores_section(q: StoreSQL, trait: str, folder: Path, plots: bool) -> list[str]:
    """The ``[score]`` section's results for one trait: how many prompts each dataset has scored
    on the trait's pick, their calibrated scores (0 = held-out negatives' mean, 1 = positives'),
    and a histogram per dataset."""
    t = q.query("SELECT calibrated, dataset FROM scored WHERE vector_id = "
                "(SELECT vector_id FROM scores WHERE trait = ? ORDER BY created_at DESC LIMIT 1)", [trait]).to_pylist()
    if not t:
        return []
    by_ds: dict[str, list[float]] = {}
    for r in t:
        by_ds.setdefault(str(r["dataset"]), []).append(r["calibrated"])
    lines = [f"## Scores on {trait}", "", "| dataset | prompts scored | median calibrated score | share above 0.5 |",
             "|---|---|---|---|"]
    for ds, vals in sorted(by_ds.items()):
        v = sorted(vals)
        lines.append(f"| {ds} | {len(v)} | {v[len(v) // 2]:.2f} | {sum(x > 0.5 for x in v) / len(v):.2f} |")
    if plots:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        png = folder / f"{file_stem(trait, 'trait')}-scores.png"
        fig, ax = plt.subplots(figsize=(6, 3.2))
        for ds, vals in sorted(by_ds.items()):
            ax.hist(vals, bins=40, alpha=0.5, density=True, label=f"{ds} ({len(vals)})")
        for x in (0, 1):
            ax.axvline(x, color="grey", lw=0.8, ls="--")
        ax.set_xlabel(f"calibrated {trait} score (0: held-out negatives' mean, 1: positives')")
        ax.set_ylabel("density")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(png, dpi=110)
        plt.close(fig)
        lines += ["", f"![{trait} scores by dataset]({png.name})"]
    return lines + [""]
