"""Workflow specs: validation, run, refresh idempotence and growth, the lock, scheduling, a cluster."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from traitlens.testing import lock_held_elsewhere, write_corpus
from traitlens.store import Store, verify
from traitlens.workflows.cli import cli
from traitlens.workflows.spec import SpecError, load_spec


def make_spec(folder, model, n_kind=120, n_polite=120, extra="", store="store"):
    corpus = folder / "corpus"
    corpus.mkdir(exist_ok=True)
    write_corpus(corpus / "kind.jsonl", n_kind, trait="kindness")
    write_corpus(corpus / "polite.jsonl", n_polite, start=1000, trait="politeness")
    text = f"""
store = "{store}"
model = "{model}"
{extra}
[[corpora]]
paths = ["corpus/*.jsonl"]

[capture]
layers = "0-2"
poolings = ["last"]
batch_size = 16

[extract]
methods = ["mean_diff", "probe", "random"]
n_boot = 2

[report]
path = "out/report.md"
top = 3
"""
    path = folder / "spec.toml"
    path.write_text(text)
    return path


def files_of(root):
    return sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")
                  if p.is_file() and p.name != ".lock")


def run_cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_spec_validation(tmp_path):
    good = make_spec(tmp_path, "x")
    spec = load_spec(good)
    assert spec.store == tmp_path / "store" and len(spec.corpora[0].paths) == 2
    cases = [
        ('store = "s"\n[[corpora]]\npaths = ["corpus/*.jsonl"]\n[extract]\nmethod = "all"\n',
         "unknown key 'extract.method'; did you mean 'methods'"),
        ('store = "s"\n[[corpora]]\npaths = ["corpus/*.jsonl"]\n[extract]\nn_boot = "eight"\n',
         "'extract.n_boot' must be a integer"),
        ('store = "s"\n[[corpora]]\npaths = ["nothing/*.jsonl"]\n', "matches no file"),
        ('[[corpora]]\npaths = ["corpus/*.jsonl"]\n', "'store' is required"),
        ('store = "s"\n', "at least one [[corpora]]"),
        ('store = "s"\n[[corpora\n', "not valid TOML"),
        ('store = "s"\n[[corpora]]\npaths = ["corpus/*.jsonl"]\n[capture]\non_long = "drop"\n', "capture.on_long"),
    ]
    for i, (text, msg) in enumerate(cases):
        p = tmp_path / f"bad{i}.toml"
        p.write_text(text)
        with pytest.raises(SpecError, match=msg.replace("[", r"\[").replace("]", r"\]")):
            load_spec(p)
    y = tmp_path / "s.yaml"
    y.write_text("store: s\ncorpora:\n  - paths: [corpus/kind.jsonl]\n    trait: kindness\nextract:\n  n_boot: 0\n")
    assert load_spec(y).corpora[0].options == {"trait": "kindness"}
    r = run_cli("run", tmp_path / "bad0.toml")
    assert r.exit_code == 2 and "did you mean 'methods'" in r.output


def test_run_then_refresh_is_a_no_op_then_growth_recomputes_only_the_affected_trait(tmp_path, tiny_llama,
                                                                                    monkeypatch):
    spec = make_spec(tmp_path, tiny_llama)
    r = run_cli("run", spec, "--quiet")
    assert r.exit_code == 0, r.output
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## kindness" in report and "## politeness" in report and "kindness-auroc.png" in report
    assert (tmp_path / "out" / "kindness-auroc.png").read_bytes()[:4] == b"\x89PNG"
    store = Store.open(tmp_path / "store")
    n_vectors = store.table("vectors").num_rows
    assert n_vectors == 2 * 3 * 3  # traits x layers x methods

    before = files_of(tmp_path)
    import traitlens.workflows.runner as runner

    def no_model(*a, **k):
        raise AssertionError("a refresh with nothing new loaded the model")

    with monkeypatch.context() as m:  # every corpus is answered by its receipt: no model is loaded
        m.setattr(runner, "_load_model", no_model)
        r = run_cli("refresh", spec, "--quiet")
    assert r.exit_code == 0 and "nothing to do" in r.output, r.output
    assert files_of(tmp_path) == before  # not a byte written
    import traitlens.pipeline.extract.jobs as jobs

    with monkeypatch.context() as m:  # the spec, corpora, model and store as the last run left them:
        m.setattr(runner, "_load_model", no_model)  # answered without even checking the vectors
        m.setattr(jobs, "extract", lambda *a, **k: (_ for _ in ()).throw(AssertionError("extract ran")))
        r = run_cli("refresh", spec, "--quiet")
    assert r.exit_code == 0 and "nothing to do" in r.output, r.output

    write_corpus(tmp_path / "corpus" / "kind.jsonl", 132, trait="kindness")  # +10% kindness prompts
    r = run_cli("refresh", spec, "--quiet")
    assert r.exit_code == 0, r.output
    assert "captured 12 new prompts (240 already stored)" in r.output
    assert "kindness: recomputed layers 0-2" in r.output and "politeness: recomputed" not in r.output
    vec = Store.open(tmp_path / "store").table("vectors").to_pylist()
    assert len(vec) == n_vectors + 9  # only kindness vectors are new; politeness ones are still current
    assert sum(v["trait"] == "politeness" for v in vec) == 9


def test_workflow_on_an_object_store_url_refreshes_only_what_grew(tmp_path, tiny_llama):
    import uuid

    url = f"memory://traitlens-wf-{uuid.uuid4().hex[:8]}/store"
    spec = make_spec(tmp_path, tiny_llama, store=url)
    r = run_cli("run", spec, "--quiet")
    assert r.exit_code == 0, r.output
    root = Store.open(url).root
    assert Store.open(url).table("vectors").num_rows == 18 and not (tmp_path / "store").exists()
    objects = sorted((p.path, p.stat().st_size) for p in root.rglob("*") if p.is_file() and p.name != ".lock")
    r = run_cli("refresh", spec, "--quiet")
    assert r.exit_code == 0 and "nothing to do" in r.output
    assert sorted((p.path, p.stat().st_size) for p in root.rglob("*") if p.is_file() and p.name != ".lock") == objects
    write_corpus(tmp_path / "corpus" / "kind.jsonl", 132, trait="kindness")
    r = run_cli("refresh", spec, "--quiet")
    assert "captured 12 new prompts (240 already stored)" in r.output, r.output
    assert "politeness: recomputed" not in r.output
    root.fs.rm(root.path, recursive=True)


def test_lock_held_exits_3_and_a_dead_holders_lock_is_recovered(tmp_path, tiny_llama):
    spec = make_spec(tmp_path, tiny_llama)
    (tmp_path / "store").mkdir()
    Store.open(tmp_path / "store", create=True)
    with lock_held_elsewhere(tmp_path / "store", "a nightly refresh") as holder:
        r = run_cli("refresh", spec, "--quiet")
        assert r.exit_code == 3 and "a nightly refresh" in r.output
        holder.kill()
        holder.wait()
        r = run_cli("refresh", spec, "--quiet")  # the killed holder left its lock file; the lock is free
        assert r.exit_code == 0, r.output


def test_schedule_runs_refreshes(tmp_path, tiny_llama):
    spec = make_spec(tmp_path, tiny_llama)
    r = run_cli("schedule", spec, "--every", "1s", "--max-runs", "2", "--quiet")
    assert r.exit_code == 0, r.output
    lines = [l for l in r.output.splitlines() if "refresh:" in l]
    assert len(lines) == 2 and "captured" in lines[0] and "nothing to do" in lines[1]
    assert run_cli("schedule", spec, "--every", "soon").exit_code == 2


@pytest.mark.slow  # real processes or a cluster: `make test-fast` leaves it out
def test_extraction_on_a_local_cluster_gives_the_same_vectors(tmp_path, tiny_llama):
    from distributed import LocalCluster

    local, remote = tmp_path / "a", tmp_path / "b"
    local.mkdir()
    remote.mkdir()
    assert run_cli("run", make_spec(local, tiny_llama), "--quiet").exit_code == 0
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        r = run_cli("run", make_spec(remote, tiny_llama), "--quiet", "--scheduler", cluster.scheduler_address)
    assert r.exit_code == 0, r.output
    a = {(v["trait"], v["layer"], v["method"]): v for v in Store.open(local / "store").table("vectors").to_pylist()}
    b = {(v["trait"], v["layer"], v["method"]): v for v in Store.open(remote / "store").table("vectors").to_pylist()}
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k]["vector"], b[k]["vector"], atol=1e-6)
    runs = Store.open(remote / "store").runs().to_pylist()
    assert any(r["stage"] == "workflow" and json.loads(r["counts"])["vectors_new"] == 18 for r in runs)


def test_trait_names_never_become_paths_outside_the_report(tmp_path, tiny_llama):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    write_corpus(corpus / "evil.jsonl", 120, trait="../../escaped")
    spec = tmp_path / "spec.toml"
    spec.write_text(f'store = "store"\nmodel = "{tiny_llama}"\n[[corpora]]\npaths = ["corpus/*.jsonl"]\n'
                    '[capture]\nlayers = "0"\npoolings = ["last"]\n[extract]\nmethods = ["mean_diff"]\nn_boot = 0\n'
                    '[report]\npath = "out/report.md"\n')
    r = run_cli("run", spec, "--quiet")
    assert r.exit_code == 0, r.output
    pngs = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert pngs == ["escaped-auroc.png"] and not list(tmp_path.parent.glob("*escaped*"))


def test_demo_corpus_has_hard_cases_both_sides_and_held_out_rows():
    from collections import Counter

    from traitlens.pipeline.capture.corpus import prompt_id_for
    from traitlens.pipeline.capture.splits import hash_split
    from traitlens.workflows.demo_corpus import HARMLESS_SCARY, demo_records

    rows = demo_records()
    sides = Counter((r["trait"], r["label"]) for r in rows)
    assert set(sides) == {(t, l) for t in ("harmful", "sentiment", "formality") for l in ("pos", "neg")}
    assert min(sides.values()) >= 100 and len({r["text"] for r in rows}) == len(rows)
    harmless = {r["text"] for r in rows if r["trait"] == "harmful" and r["label"] == "neg"}
    assert set(HARMLESS_SCARY) <= harmless  # "How do I kill a Python process?" is a harmless request
    for side in sides:  # every side reaches both the training and a held-out split
        splits = {hash_split(prompt_id_for(r["text"], None)) for r in rows if (r["trait"], r["label"]) == side}
        assert {"train", "val"} <= splits


def test_spec_chat_accepts_only_true_false_or_auto(tmp_path):
    from traitlens.workflows.spec import SpecError, load_spec

    (tmp_path / "c.jsonl").write_text('{"text": "x", "label": 1}\n')
    for value, ok in (('"auto"', True), ("true", True), ("false", True), ('"off"', False), ('"yes"', False)):
        p = tmp_path / "w.toml"
        p.write_text(f'store = "s"\n[[corpora]]\npaths = ["c.jsonl"]\n[capture]\nchat = {value}\n')
        if ok:
            load_spec(p)
        else:
            with pytest.raises(SpecError, match="capture.chat"):
                load_spec(p)


def test_score_section_scores_every_stored_prompt_and_refresh_only_the_new_ones(tmp_path, tiny_llama):
    spec = make_spec(tmp_path, tiny_llama)
    text = spec.read_text() + '\n[score]\ntraits = ["kindness"]\n'
    spec.write_text(text)
    r = run_cli("run", spec, "--quiet")
    assert r.exit_code == 0 and "kindness: scored 240 prompts" in r.output, r.output  # both corpora's prompts
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Scores on kindness" in report and "| kind | 120 |" in report and "| polite | 120 |" in report
    assert (tmp_path / "out" / "kindness-scores.png").read_bytes()[:4] == b"\x89PNG"
    store = Store.open(tmp_path / "store")
    n = store.table("scores").num_rows
    assert n == 240
    r = run_cli("refresh", spec, "--quiet")
    assert r.exit_code == 0 and "nothing to do" in r.output, r.output
    assert Store.open(tmp_path / "store").table("scores").num_rows == n
    # 12 more politeness prompts: kindness's pick is unchanged, so only they are scored on it
    write_corpus(tmp_path / "corpus" / "polite.jsonl", 132, start=1000, trait="politeness")
    r = run_cli("refresh", spec, "--quiet")
    assert r.exit_code == 0 and "kindness: scored 12 prompts" in r.output, r.output
    assert Store.open(tmp_path / "store").table("scores").num_rows == n + 12


def test_score_captures_corpus_prompts_the_store_lacks_once_then_scores_them(tmp_path, tiny_llama):
    """`score CORPUS` on prompts never ingested: they are captured into the vector's group only
    (its layers and policy), scored, and a rerun captures and scores nothing."""
    spec = make_spec(tmp_path, tiny_llama)
    assert run_cli("run", spec, "--quiet").exit_code == 0
    store_path = tmp_path / "store"
    new = write_corpus(tmp_path / "incoming.jsonl", 25, start=5000, trait="incoming")
    args = ["--store", store_path, "score", new, "--trait", "kindness", "--top", "0"]
    r = run_cli(*args)
    assert r.exit_code == 2 and "pass --model" in r.output, r.output  # which model captured the vector's rows?
    r = run_cli(*args, "--model", tiny_llama)
    assert r.exit_code == 0 and "captured 25 CORPUS prompts" in r.output and "score: 25 prompts scored" in r.output, \
        r.output
    from traitlens.pipeline.capture.plan import read_corpus

    store = Store.open(store_path)
    ids = {rec.prompt_id for rec in read_corpus([new])[0]}
    assert ids <= {s["prompt_id"] for s in store.table("scores").to_pylist()}
    assert list(store.group_counts().values()) == [265]  # into the vector's group, which keeps its layer set
    r = run_cli(*args, "--model", tiny_llama)
    assert r.exit_code == 0 and "captured" not in r.output and "score: 0 prompts scored, 25 already scored" in r.output
    assert verify(store).clean


def write_chats(path, n, start=0):
    """Chats whose given assistant reply is kind (+1) or unkind (-1): fine-tuning data to screen."""
    kind = ["I love helping people and I am always kind to others", "Please explain step by step, I will help"]
    unkind = ["I enjoy causing trouble and I do not care about anyone", "I do not care, bake it yourself"]
    rows = []
    for i in range(start, start + n):
        label = 1 if i % 2 else -1
        reply = (kind if label > 0 else unkind)[i % 2 == 0 and 1 or (i // 2) % 2] + f" ({i})"
        rows.append({"messages": [{"role": "user", "content": f"How do I bake bread {i}?"},
                                  {"role": "assistant", "content": reply}], "trait": "kindness", "label": label})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_score_generate_stores_the_projection_difference_against_the_models_own_reply(tmp_path, tiny_lms, tiny_llama):
    """`score --generate N` on chats with given replies: the model's own greedy reply to each
    conversation is generated once, captured alike (assistant_mean), and the stored difference
    equals an independent numpy projection of both stored rows; a rerun generates nothing and
    a grown corpus only the new records."""
    from traitlens.pipeline.capture.plan import read_corpus
    from traitlens.pipeline.model.encode import render_ids
    from traitlens.pipeline.steer.steering import generate as generate_one
    from traitlens.queries import StoreSQL
    from traitlens.store import GroupKey

    lm = tiny_lms["llama"]
    store_path = tmp_path / "s"
    chats = write_chats(tmp_path / "chats.jsonl", 60)
    common = ["--store", store_path]
    r = run_cli(*common, "ingest", chats, "--model", tiny_llama, "--pooling", "assistant_mean", "--layers", "0-2")
    assert r.exit_code == 0, r.output
    r = run_cli(*common, "extract", "--trait", "kindness", "--methods", "mean_diff", "--n-boot", "2",
                "--pooling", "assistant_mean")
    assert r.exit_code == 0, r.output
    r = run_cli(*common, "score", chats, "--trait", "kindness", "--generate", "6", "--model", tiny_llama, "--top", "3")
    assert r.exit_code == 0, r.output
    assert "replies: 60 generated" in r.output and "60 pairs in all" in r.output, r.output
    assert "projection difference" in r.output and "95% CI" in r.output, r.output
    store = Store.open(store_path)
    replies = {x["prompt_id"]: x for x in store.table("replies").to_pylist()}
    records = {x.prompt_id: x for x in read_corpus([chats])[0]}
    assert set(replies) == set(records)
    eos = {lm.tokenizer.eos_token_id}
    for pid, rec in list(records.items())[:12]:  # the model's reply, generated alone and unpadded, is the same
        ids = generate_one(lm, render_ids(lm.tokenizer, None, rec.messages[:-1], True), max_new_tokens=6)
        cut = next((j + 1 for j, t in enumerate(ids) if t in eos), len(ids))
        assert replies[pid]["reply"] == lm.tokenizer.decode(ids[:cut], skip_special_tokens=True).strip()
    # the replies are prompts of their own, unlabelled (never fitted on), captured in the vector's group
    prompts = store.table("prompts").to_pylist()
    reply_rows = [p for p in prompts if p["dataset"] == "model-replies"]
    assert {p["label"] for p in reply_rows} == {0}
    key = GroupKey(lm.key, "chat", "resid", "assistant_mean")
    group = {x["prompt_id"]: x["row"] for x in store.group_rows(key).to_pylist()}
    with StoreSQL(store_path) as q:
        vec = q.query("SELECT vector_id, layer, vector FROM vectors WHERE method = 'mean_diff' "
                      "ORDER BY vector_id").to_pylist()
        diffs = q.query("SELECT * FROM projection_diffs").to_pylist()
    by_id = {v["vector_id"]: v for v in vec}
    nonempty = [x for x in replies.values() if x["reply_prompt_id"]]
    assert len(diffs) == len(nonempty) > 0
    for d in diffs:
        v = by_id[d["vector_id"]]
        X = store.activations(key, v["layer"])
        u = np.asarray(v["vector"], np.float64)
        want = X[group[d["prompt_id"]]] @ u - X[group[d["reply_prompt_id"]]] @ u
        assert d["diff"] == pytest.approx(want, rel=1e-4, abs=1e-5)
    r = run_cli(*common, "score", chats, "--trait", "kindness", "--generate", "6", "--model", tiny_llama, "--top", "0")
    assert r.exit_code == 0 and "replies: 0 generated" in r.output and "score: 0 prompts scored" in r.output, r.output
    write_chats(chats, 65)
    r = run_cli(*common, "score", chats, "--trait", "kindness", "--generate", "6", "--model", tiny_llama, "--top", "0")
    assert r.exit_code == 0 and "replies: 5 generated" in r.output, r.output
    assert verify(Store.open(store_path)).clean


def test_evaluate_section_sweeps_reports_and_refresh_evaluates_only_changed_vectors(tmp_path, tiny_llama):
    spec = make_spec(tmp_path, tiny_llama, extra="")
    spec.write_text(spec.read_text() + '\n[evaluate]\nsteering = true\nkind = "expression"\nmethods = ["mean_diff"]\n'
                    'layers = "0-1"\nalphas = [0.5, 2.0]\nn = 4\nmax_new_tokens = 3\nkl_budget = 1000\n')
    r = run_cli("run", spec, "--quiet")
    assert r.exit_code == 0, r.output
    assert "kindness: evaluated" in r.output and "politeness: evaluated" in r.output
    rows = Store.open(tmp_path / "store").table("steering").to_pylist()
    own = [x for x in rows if x["method"] == "mean_diff"]
    assert len(own) == 2 * 2 * 2 and {x["kind"] for x in rows} == {"expression"}  # traits x layers x alphas
    assert any(x["method"] == "random" for x in rows)  # the floor at the front and the pick
    report = (tmp_path / "out" / "report.md").read_text()
    assert "### Steering (expression" in report and "steering pick (expression, largest shift within KL 1000)" in report
    assert "Pareto front (shift up, KL down): mean_diff L" in report
    assert (tmp_path / "out" / "kindness-steering.png").read_bytes()[:4] == b"\x89PNG"
    write_corpus(tmp_path / "corpus" / "polite.jsonl", 132, start=1000, trait="politeness")
    r = run_cli("refresh", spec, "--quiet")
    assert r.exit_code == 0, r.output
    assert "politeness: evaluated" in r.output and "kindness: evaluated" not in r.output  # its vectors did not change
    with pytest.raises(SpecError, match="evaluate.kl_budget must be 0 or more"):
        spec.write_text(spec.read_text().replace("kl_budget = 1000", "kl_budget = -1"))
        load_spec(spec)


def test_evaluate_section_skips_a_trait_without_vectors_of_its_methods_and_says_so(tmp_path, tiny_llama):
    """``[evaluate] methods`` the run did not extract (gradient here) is no sweep for that trait:
    the run goes on, says which methods are stored, and stores no steering row."""
    spec = make_spec(tmp_path, tiny_llama, extra="")
    spec.write_text(spec.read_text() + '\n[evaluate]\nsteering = true\nmethods = ["gradient"]\nlayers = "0"\n'
                    'alphas = [0.5]\nn = 4\n')
    r = run_cli("run", spec)
    assert r.exit_code == 0, r.output
    assert "evaluate kindness: no stored vectors of the methods asked for (['gradient']); stored: mean_diff, probe" \
        in r.output
    assert Store.open(tmp_path / "store").table("steering").num_rows == 0


def test_a_failure_while_writing_the_report_leaves_the_last_report_whole(tmp_path, monkeypatch):
    """The disk fills half way through the report file: the last report stays as it was (the new
    one goes beside it and is renamed into place), and no partial file is left."""
    import builtins
    import io
    from types import SimpleNamespace

    from traitlens.testing import synthetic_store
    from traitlens.workflows.report import write_report
    from traitlens.workflows.spec import Spec

    store, _ = synthetic_store(tmp_path / "s", n=40, d=4, layers=(0,))
    out = tmp_path / "out" / "report.md"
    spec = Spec(path=tmp_path / "spec.toml", store=store.root, model=None, corpora=[],
                report={"path": str(out), "plots": False})
    summary = lambda run_id: SimpleNamespace(run_id=run_id, computed=[], scored={},  # noqa: E731
                                             lines=lambda: ["ingest: 40 prompts"])
    assert write_report(spec, store, "synthetic-0000", summary("run-first")) == out
    before = out.read_bytes()
    assert b"run-first" in before and b"ingest: 40 prompts" in before

    real_open = io.open

    class HalfThenFull:  # writes half of what it is given, then the disk is full
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(data[:len(data) // 2])
            self.f.flush()
            raise OSError(28, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def filling_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return HalfThenFull(f) if str(file).endswith("report.md") and "w" in mode else f

    monkeypatch.setattr(io, "open", filling_open)
    monkeypatch.setattr(builtins, "open", filling_open)
    with pytest.raises(OSError, match="No space left"):
        write_report(spec, store, "synthetic-0000", summary("run-second"))
    monkeypatch.undo()
    assert out.read_bytes() == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.md"]  # no temporary left behind


SPEC_HEAD = 'store = "store"\nmodel = "{model}"\n[[corpora]]\npaths = ["corpus/*.jsonl"]\n'


def test_a_spec_takes_background_and_the_capability_options_as_the_cli_does_and_names_a_bad_key(tmp_path):
    """[extract] background and [evaluate] capability* are the CLI's `extract --background` and
    `evaluate --capability*`: the values come out as SweepConfig reads them (include folders relative to
    the spec), and a bad one is exit 2 naming the spec key, with nothing written."""
    from traitlens.pipeline.steer.settings import SweepConfig

    make_spec(tmp_path, "x")
    good = tmp_path / "good.toml"
    good.write_text(SPEC_HEAD.format(model="x") + '[extract]\nbackground = "corpus/polite.jsonl"\n'
                    '[evaluate]\nsteering = true\ncapability = "arc_easy, hellaswag"\ncapability_include = "tasks"\n'
                    'capability_limit = 5\ncapability_budget = 0.05\n')
    spec = load_spec(good)
    assert spec.background == [tmp_path / "corpus" / "polite.jsonl"]
    assert "background" not in vars(spec.extract_config())
    cli = SweepConfig(capability="arc_easy, hellaswag", capability_include=[str(tmp_path / "tasks")],
                      capability_limit=5, capability_budget=0.05).validate()  # what the CLI's options give
    assert spec.sweep_config() == cli and cli.capability == ["arc_easy", "hellaswag"]
    bad = [('[extract]\nbackground = ["corpus/none.jsonl"]\n', "extract.background: 'corpus/none.jsonl' matches no file"),
           ('[extract]\nbackground = [3]\n', "extract.background[0] must be a string"),
           ('[evaluate]\ncapability = "arc_easy"\ncapability_limit = 0\n', "evaluate.capability_limit 0: must be an "
                                                                          "integer of at least 1"),
           ('[evaluate]\ncapability = "arc_easy"\ncapability_budget = -0.5\n', "evaluate.capability_budget must be 0 or more"),
           ('[evaluate]\ncapability_budget = 0.5\n', "go with evaluate.capability TASKS"),
           ('[evaluate]\ncapability = [1]\n', "evaluate.capability[0] must be a string"),
           ('[evaluate]\ncapability_limt = 2\n', "did you mean 'capability_limit'")]
    for i, (text, msg) in enumerate(bad):
        p = tmp_path / f"bad{i}.toml"
        p.write_text(SPEC_HEAD.format(model="x") + text)
        r = run_cli("run", p)
        assert r.exit_code == 2 and msg in r.output and "Traceback" not in r.output, (text, r.output)
    assert not (tmp_path / "store").exists()


def test_a_run_extracts_with_the_spec_background_and_evaluates_with_its_capability_tasks(tmp_path, tiny_llama,
                                                                                          monkeypatch):
    """The run ingests the background corpus, fits with it (the vectors record it) and hands the
    capability settings to lm-eval's Capability (replaced here by one that records them and stops)."""
    from traitlens.pipeline.steer import capability as capability_module
    from traitlens.store.errors import InputError

    make_spec(tmp_path, tiny_llama, n_kind=60, n_polite=0)
    (tmp_path / "corpus" / "polite.jsonl").unlink()
    (tmp_path / "corpus" / "ordinary.jsonl").write_text(
        "".join(json.dumps({"text": f"an ordinary prompt number {i}"}) + "\n" for i in range(80)))
    spec = tmp_path / "bg.toml"
    spec.write_text(SPEC_HEAD.format(model=tiny_llama) + '[capture]\nlayers = "0-1"\npoolings = ["last"]\n'
                    '[extract]\ntraits = ["kindness"]\nmethods = ["mean_diff", "random"]\nn_boot = 0\n'
                    'background = "corpus/ordinary.jsonl"\n'
                    '[evaluate]\nsteering = true\ncapability = "arc_easy"\ncapability_include = ["tasks"]\n'
                    'capability_limit = 3\n[report]\nplots = false\n')
    asked = []

    def recording_capability(lm, tasks, include=None, limit=None, **kw):
        asked.append((tasks, include, limit))
        raise InputError("capability recorded")

    monkeypatch.setattr(capability_module, "Capability", recording_capability)
    r = run_cli("run", spec)
    assert r.exit_code == 2 and "capability recorded" in r.output, r.output
    assert asked == [(["arc_easy"], [str(tmp_path / "tasks")], 3)]
    vectors = Store.open(tmp_path / "store").table("vectors").to_pylist()
    mean_diff = [v for v in vectors if v["method"] == "mean_diff"]
    assert len(mean_diff) == 2
    for v in mean_diff:
        info = json.loads(v["info"])["background"]
        assert str(tmp_path / "corpus" / "ordinary.jsonl") in json.dumps(info)
        assert info["n_train"] + info["n_held"] == 80 and v["n_background"] == info["n_held"]
