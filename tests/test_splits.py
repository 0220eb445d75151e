"""Splits stratified by label (pipeline/capture/splits.py): every split of a small corpus holds
both labels, a growing corpus never moves a stored prompt, and the plan's SQL gives what the
rule's Python reference gives."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
from click.testing import CliRunner

from traitlens.pipeline.capture.corpus import PromptRecord, ReadOptions, prompt_id_for, read_lines
from traitlens.pipeline.capture.plan import read_corpus
from traitlens.pipeline.capture.splits import assign_splits, cuts, hash_split
from traitlens.store import Store
from traitlens.store.vocabulary import MIN_PER_SPLIT, SPLIT_NAMES
from traitlens.workflows.cli import cli


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def corpus(path, n_per_class: int, start: int = 0, trait: str = "t", dataset: str | None = None, shuffle=None):
    """``n_per_class`` statements a label (alternating), optionally in a shuffled line order."""
    rows = [{"text": f"statement number {i} about things", "label": "pos" if i % 2 else "neg", "trait": trait}
            | ({"dataset": dataset} if dataset else {}) for i in range(2 * start, 2 * (start + n_per_class))]
    if shuffle is not None:
        random.Random(shuffle).shuffle(rows)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def per_split(records) -> Counter:
    return Counter((r["split"] if isinstance(r, dict) else r.split, r["label"] if isinstance(r, dict) else r.label)
                   for r in records)


def test_a_12_a_class_corpus_puts_both_labels_in_every_split_and_extracts(tmp_path, tiny_gpt2):
    c = corpus(tmp_path / "c.jsonl", 12)
    plain = Counter((hash_split(prompt_id_for(json.loads(x)["text"], None)), json.loads(x)["label"])
                    for x in c.read_text().splitlines())
    assert min(plain[(s, lab)] for s in SPLIT_NAMES for lab in ("pos", "neg")) < MIN_PER_SPLIT  # the hash alone fails it
    s = tmp_path / "s"
    r = run("--store", s, "ingest", c, "--model", tiny_gpt2, "--quiet", "--layers", "0,1", "--pooling", "last")
    assert r.exit_code == 0, r.output
    got = per_split(Store.open(s).prompts().to_pylist())
    for split in SPLIT_NAMES:
        for label in (1, -1):
            assert got[(split, label)] >= MIN_PER_SPLIT, got
    assert sum(got.values()) == 24
    r = run("--store", s, "extract", "--trait", "t", "--methods", "mean_diff")
    assert r.exit_code == 0, r.output
    vec = Store.open(s).table("vectors").to_pylist()
    assert {v["held_split"] for v in vec} == {"val"} and len(vec) == 2


def test_every_stratum_of_six_or_more_gets_two_of_its_label_in_each_split_and_large_ones_the_plain_hash(tmp_path):
    """Several traits, datasets and sizes at once, each (trait, dataset, label) on its own."""
    rows, sizes = [], {("a", "x"): 6, ("a", "y"): 7, ("b", "x"): 13, ("b", "y"): 400}
    for (trait, ds), n in sizes.items():
        rows += [{"text": f"{trait}{ds} {i}", "label": lab, "trait": trait, "dataset": ds}
                 for i in range(n) for lab in ("pos", "neg")]
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({**r, "text": r["text"] + r["label"]}) + "\n" for r in rows))
    recs, _ = read_corpus([path])
    by = Counter((r.trait, r.dataset, r.label, r.split) for r in recs)
    for (trait, ds), n in sizes.items():
        for lab in (1, -1):
            assert all(by[(trait, ds, lab, s)] >= MIN_PER_SPLIT for s in SPLIT_NAMES), (trait, ds, lab, by)
    big = [r for r in recs if r.dataset == "y" and r.trait == "b"]
    assert [r.split for r in big] == [hash_split(r.prompt_id) for r in big]  # as every release before cut it


def test_small_strata_fill_train_then_val_then_test():
    for n in range(0, 9):
        i, j = cuts(n, n, n)  # every hash point below the plain train cut: all would go to train
        counts = (i, j - i, n - j)
        want = [min(MIN_PER_SPLIT, max(0, n - MIN_PER_SPLIT * k)) for k in range(3)]
        want[0] = n - want[1] - want[2]
        assert counts == tuple(want), (n, counts)
    assert cuts(100, 80, 90) == (80, 90)  # nothing owed: the plain cuts
    assert cuts(3, 3, 3, held=(5, 1, 0)) == (0, 1)  # what the stratum holds counts: val owes 1, test 2


def test_adding_prompts_never_moves_a_stored_one(tmp_path, tiny_lms):
    from traitlens.pipeline.capture.ingest import IngestConfig, ingest

    lm, cfg = tiny_lms["gpt2"], IngestConfig(layers="0", poolings=["last"])
    s = tmp_path / "s"
    ingest(s, [corpus(tmp_path / "a.jsonl", 12, dataset="d")], cfg=cfg, lm=lm, progress=False)
    before = {r["prompt_id"]: r["split"] for r in Store.open(s).prompts().to_pylist()}
    grown = corpus(tmp_path / "b.jsonl", 40, dataset="d", shuffle=3)  # the 24 statements and 56 more, in another order
    res = ingest(s, [grown], cfg=cfg, lm=lm, progress=False)
    assert (res.n_new_prompts, res.n_relabelled) == (56, 0)
    after = Store.open(s).prompts().to_pylist()
    assert {r["prompt_id"]: r["split"] for r in after if r["prompt_id"] in before} == before
    got = per_split(after)
    assert all(got[(split, lab)] >= MIN_PER_SPLIT for split in SPLIT_NAMES for lab in (1, -1)), got


def test_the_line_order_of_a_corpus_does_not_change_its_splits(tmp_path):
    a = read_corpus([corpus(tmp_path / "a.jsonl", 9)])[0]
    b = read_corpus([corpus(tmp_path / "b.jsonl", 9, shuffle=1)])[0]
    assert {r.prompt_id: r.split for r in a} == {r.prompt_id: r.split for r in b}


def test_an_ingest_resumed_after_some_prompts_were_stored_splits_as_one_never_interrupted():
    """The stored part of a stratum counts toward its minimum: the rest is cut where the whole
    would have been cut (any subset written first, as a killed ingest leaves)."""
    for trial in range(400):
        rng = random.Random(trial)
        recs = [PromptRecord(prompt_id_for(f"p{trial}-{i}", None), "x", None, rng.choice("ab"), "t",
                             rng.choice([1, -1, 0]), None, "s") for i in range(rng.randint(1, 60))]
        whole = assign_splits(recs)
        first = set(rng.sample(range(len(recs)), rng.randint(0, len(recs))))
        stored = {(recs[i].prompt_id, recs[i].dataset, recs[i].trait): (recs[i].label, whole[i]) for i in first}
        rest = [i for i in range(len(recs)) if i not in first]
        assert assign_splits([recs[i] for i in rest], stored) == [whole[i] for i in rest], trial


@pytest.mark.parametrize("seed", range(6))
def test_the_plans_sql_splits_as_the_python_rule(tmp_path, seed):
    """One rule, two implementations: the ingest's plan (DuckDB, against a store) and
    :func:`assign_splits` (records in memory) give every record the same split. Corpora mix
    traits, datasets, labels 0/+1/-1, given splits and prompts the store holds (some relabelled)."""
    rng = random.Random(seed)
    pool = [f"text {seed}-{i}" for i in range(rng.randint(5, 160))]
    stored_rows = []
    for text in rng.sample(pool, len(pool) // 3):
        stored_rows.append({"prompt_id": prompt_id_for(text, None), "text": text, "dataset": rng.choice("dx"),
                            "trait": rng.choice("tu"), "label": rng.choice([1, -1, 0]),
                            "split": rng.choice(SPLIT_NAMES), "source": "old"})
    store = Store.open(tmp_path / "s", create=True)
    store.add_prompts(stored_rows)
    again = {r["text"]: r for r in rng.sample(stored_rows, len(stored_rows) // 2)}  # a stored key, maybe relabelled
    lines = []
    for text in pool:
        key = ({"dataset": again[text]["dataset"], "trait": again[text]["trait"]} if text in again
               else {"dataset": rng.choice("dx"), "trait": rng.choice("tu")})
        row = {"text": text, **key, "label": rng.choice(["pos", "neg", "pos", "neg", "0"])}
        if rng.random() < 0.1:
            row["split"] = rng.choice(SPLIT_NAMES)
        lines.append(row)
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    sql = read_corpus([path], store=store)[0]
    raw = list(read_lines(path, "jsonl", "c", ReadOptions()))
    assert any(r.split is None for r in raw) and any(r.split for r in raw)
    have = {(p["prompt_id"], p["dataset"], p["trait"]): (p["label"], p["split"]) for p in store.prompts().to_pylist()}
    first = {}
    for r in raw:
        first.setdefault((r.prompt_id, r.dataset, r.trait), r)
    py = dict(zip(first, assign_splits(list(first.values()), have)))
    assert {(r.prompt_id, r.dataset, r.trait): r.split for r in sql} == py


def test_too_few_a_class_is_refused_before_any_fit_naming_how_many_and_why(tmp_path, tiny_gpt2):
    s = tmp_path / "s"
    r = run("--store", s, "ingest", corpus(tmp_path / "c.jsonl", 3), "--model", tiny_gpt2, "--quiet", "--layers", "0",
            "--pooling", "last")
    assert r.exit_code == 0, r.output
    runs_before = Store.open(s).runs().num_rows
    r = run("--store", s, "extract", "--trait", "t")
    assert r.exit_code == 2, r.output
    assert "3 positive and 3 negative labelled rows" in r.output and "at least 4 of each" in r.output
    assert "Ingest 1 more positive and 1 more negative" in r.output
    assert Store.open(s).runs().num_rows == runs_before and Store.open(s).table("vectors").num_rows == 0


def test_splits_a_corpus_gave_that_strand_a_label_are_named_as_the_cause(tmp_path, tiny_gpt2):
    """Enough prompts, but the corpus put every negative in train: the message says re-split."""
    c = tmp_path / "c.jsonl"
    rows = [json.loads(x) for x in corpus(tmp_path / "x.jsonl", 12).read_text().splitlines()]
    c.write_text("".join(json.dumps({**x, "split": "train" if x["label"] == "neg" else ["train", "val"][(i // 2) % 2]})
                         + "\n" for i, x in enumerate(rows)))  # negatives all in train; positives half in val
    s = tmp_path / "s"
    assert run("--store", s, "ingest", c, "--model", tiny_gpt2, "--quiet", "--layers", "0").exit_code == 0
    r = run("--store", s, "extract", "--trait", "t")
    assert r.exit_code == 2, r.output
    assert "split 'val' holds 6 positive and 0 negative rows" in r.output
    assert "12 positive and 12 negative" in r.output and "Re-ingest into a new --store" in r.output


def test_the_plans_hash_points_are_the_rules_own():
    """POINT_SQL (DuckDB, a column at a time) gives hash_point's value, bit for bit."""
    import duckdb
    import pyarrow as pa

    from traitlens.pipeline.capture.splits import POINT_SQL, hash_point

    ids = [prompt_id_for(f"prompt {i} \u00e9\u6f22", None) for i in range(3000)]
    con = duckdb.connect()
    con.register("t", pa.table({"prompt_id": ids}))
    got = [u for (u,) in con.execute(f"SELECT {POINT_SQL} FROM t").fetchall()]
    assert got == [hash_point(i) for i in ids]
