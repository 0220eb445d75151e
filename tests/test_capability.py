"""The traitlens model for lm-evaluation-harness and ``evaluate --capability``, on the tiny GPT-2
with local tasks this file writes (json datasets: nothing is downloaded; Hugging Face is offline).

Independent computations: lm-eval's own ``hf`` model (alpha 0 must equal it exactly), a
continuation's log-likelihood computed by hand under a hand-written hook, lm-eval's own output
for the capability rows, numpy for the paired differences and scipy-free formulas for intervals.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")

QUESTIONS = ["the quick brown fox jumps over the lazy", "Write a poem about the",
             "I love helping people and I am always kind to", "How do I bake"]
CHOICES = ["dog", "sea", "stars", "bread"]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No test here may reach a hub: a task that needs a download must fail, not fetch."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def write_tasks(folder):
    """A folder of three local lm-eval tasks over one json dataset of 16 documents: multiple
    choice (tl_mc, answers spread over the four choices), free generation (tl_gen, a newline
    stops it) and rolling log-likelihood (tl_roll)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "docs.jsonl"
    data.write_text("".join(json.dumps({"question": QUESTIONS[i % 4], "choices": CHOICES, "answer": i % 4}) + "\n"
                            for i in range(16)))
    head = (f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
            'doc_to_text: "{{question}}"\n')
    (folder / "tl_mc.yaml").write_text(
        "task: tl_mc\n" + head + 'output_type: multiple_choice\ndoc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{answer}}"\nmetric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n')
    (folder / "tl_gen.yaml").write_text(
        "task: tl_gen\n" + head + 'output_type: generate_until\ndoc_to_target: "{{choices[answer]}}"\n'
        'generation_kwargs:\n  until: ["\\n"]\n  max_gen_toks: 6\n  do_sample: false\n'
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n")
    (folder / "tl_roll.yaml").write_text(
        "task: tl_roll\n" + head.replace('doc_to_text: "{{question}}"\n', "") + "output_type: loglikelihood_rolling\n"
        'doc_to_text: ""\ndoc_to_target: "{{question}}"\n'
        "metric_list:\n  - metric: word_perplexity\n    aggregation: weighted_perplexity\n    higher_is_better: false\n")
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_gpt2):
    """(the tiny GPT-2's folder, a store with its kindness vectors, the task folder, a task manager)."""
    from click.testing import CliRunner

    from traitlens.pipeline.steer.capability import task_manager
    from traitlens.testing import write_corpus
    from traitlens.workflows.cli import cli

    tmp = tmp_path_factory.mktemp("capability")
    store = tmp / "s"
    corpus = write_corpus(tmp / "c.jsonl", 120)
    for args in (["ingest", corpus, "--model", tiny_gpt2, "--quiet"],
                 ["extract", "--trait", "kindness", "--methods", "mean_diff,random", "--quiet"]):
        r = CliRunner().invoke(cli, ["--store", str(store), *map(str, args)])
        assert r.exit_code == 0, r.output
    tasks = write_tasks(tmp / "tasks")
    return tiny_gpt2, store, tasks, task_manager(["tl_mc", "tl_gen", "tl_roll"], [str(tasks)])


def run(model, tasks, tm, model_args=None, **kw):
    return lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=tasks, task_manager=tm, log_samples=True,
                                   **kw)


def resps(out, task):
    return [s["resps"] for s in sorted(out["samples"][task], key=lambda s: s["doc_id"])]


def hand_loglikelihood(model, tok, context: str, continuation: str, hook=None) -> float:
    """log P(continuation | context), tokenised as lm-eval's HFLM does (the whole string, then the
    context's tokens cut off its front), the model run unpadded with ``hook`` on if given."""
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    cont = whole[len(ctx):]
    ids = torch.tensor([(ctx + cont)[:-1]])
    handle = hook() if hook else None
    try:
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    finally:
        if handle:
            handle.remove()
    return float(sum(logp[len(ctx) - 1 + k, t] for k, t in enumerate(cont)))


def test_alpha_zero_equals_plain_hf_and_a_large_alpha_moves_each_loglikelihood_as_a_hand_hook_does(world):
    from traitlens.pipeline.steer import harness  # noqa: F401  (registers --model traitlens)
    from traitlens.queries import StoreSQL
    from traitlens.queries.selection import best_vector
    from traitlens.store import Store

    path, store, _, tm = world
    names = ["tl_mc", "tl_gen", "tl_roll"]
    plain = run("hf", names, tm, {"pretrained": str(path)}, device="cpu")
    off = run("traitlens", names, tm, {"pretrained": str(path), "store": str(store), "vector": "kindness", "alpha": 0},
              device="cpu")
    for t in names:  # every request type: loglikelihood, generation, rolling
        assert resps(off, t) == resps(plain, t)
        assert off["results"][t] == plain["results"][t]
    with StoreSQL(Store.open(store)) as q:
        vec = best_vector(q, "kindness")
    args = {"pretrained": str(path), "store": str(store), "vector": "kindness", "alpha": 30.0, "scale": 1.0}
    on = run("traitlens", ["tl_mc", "tl_roll"], tm, args, device="cpu")
    steered, base = resps(on, "tl_mc"), resps(plain, "tl_mc")
    assert all(s[0][0] != b[0][0] for doc_s, doc_b in zip(steered, base) for s, b in zip(doc_s, doc_b))
    assert on["results"]["tl_roll"]["word_perplexity,none"] != plain["results"]["tl_roll"]["word_perplexity,none"]
    # independently: the same continuations scored by hand, with a hand-written hook adding 30 x unit(v)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path)
    u = torch.tensor(np.asarray(vec["vector"], np.float32))
    u = u / u.norm()
    block = model.transformer.h[vec["layer"]]

    def hook():
        return block.register_forward_hook(lambda m, i, o: (o[0] + 30.0 * u,) + tuple(o[1:]) if isinstance(o, tuple)
                                           else o + 30.0 * u)

    sample = sorted(on["samples"]["tl_mc"], key=lambda s: s["doc_id"])[0]
    base_sample = sorted(plain["samples"]["tl_mc"], key=lambda s: s["doc_id"])[0]
    for k, (context, continuation) in enumerate(sample["arguments"]):
        assert hand_loglikelihood(model, tok, context, continuation) == pytest.approx(base_sample["resps"][k][0][0],
                                                                                      rel=1e-4)
        assert hand_loglikelihood(model, tok, context, continuation, hook) == pytest.approx(sample["resps"][k][0][0],
                                                                                            rel=1e-4)


def test_a_generation_task_steers_its_replies_as_traitlens_generation_does(world):
    """positions=generated: the prompt's pass is left alone; the replies equal traitlens's own
    batched greedy generation under the same push (one prompt per batch)."""
    from traitlens.pipeline.model.loading import load_model
    from traitlens.pipeline.steer.harness import TraitlensLM
    from traitlens.pipeline.steer.steering import Push, generate_batch

    path, _, _, tm = world
    lm = load_model(str(path), device="cpu", dtype="float32", log=lambda *a: None)
    v = np.random.default_rng(3).standard_normal(lm.d_model)
    push = Push(v, 1, 40.0, 1.0, positions="generated")
    model = TraitlensLM(pretrained=lm, batch_size=1)
    model.steer([push])
    out = run(model, ["tl_gen"], tm, limit=4)
    for s in sorted(out["samples"]["tl_gen"], key=lambda s: s["doc_id"]):
        ids = lm.tokenizer(s["arguments"][0][0], add_special_tokens=False)["input_ids"]
        (mine,) = generate_batch(lm, [ids], [push], 6)
        assert s["resps"][0][0] == lm.tokenizer.decode(mine, skip_special_tokens=True).split("\n")[0]
    model.steer([Push(v, 1, 40.0, 1.0, positions="generated")])
    with pytest.raises(Exception, match="positions=generated: a loglikelihood request"):
        run(model, ["tl_mc"], tm, limit=2)


def test_capability_rows_hold_what_lm_eval_returned_with_the_change_and_its_paired_interval(world):
    from traitlens.pipeline.model.loading import load_model
    from traitlens.pipeline.steer.capability import Capability
    from traitlens.pipeline.steer.harness import TraitlensLM
    from traitlens.pipeline.steer.stats import bootstrap_ci
    from traitlens.pipeline.steer.steering import Push, pushes

    path, _, tasks, tm = world
    lm = load_model(str(path), device="cpu", dtype="float32", log=lambda *a: None)
    dog = lm.tokenizer(" dog", add_special_tokens=False)["input_ids"][0]
    v = lm.model.get_output_embeddings().weight[dog].detach().numpy()  # a push toward the choice "dog"
    push = Push(v, lm.n_layers - 1, 10.0, 1.0)
    cap = Capability(lm, ["tl_mc", "tl_roll"], [str(tasks)])
    rows = {(r["task"], r["metric"]): r for r in cap.measure(lambda pad=None: pushes(lm, [push], pad))}
    # lm-eval's own figures, each run separately: unsteered and under the same push
    model = TraitlensLM(pretrained=lm)
    base = run(model, ["tl_mc", "tl_roll"], tm, bootstrap_iters=1000)
    model.steer([push])
    steered = run(model, ["tl_mc", "tl_roll"], tm, bootstrap_iters=1000)
    acc = rows[("tl_mc", "acc,none")]
    assert acc["value"] == steered["results"]["tl_mc"]["acc,none"]
    assert acc["stderr"] == steered["results"]["tl_mc"]["acc_stderr,none"]
    assert acc["unsteered"] == base["results"]["tl_mc"]["acc,none"] and acc["n"] == 16
    assert acc["value"] == 0.25 and acc["unsteered"] != acc["value"]  # the push makes "dog" win every question
    per = lambda out: np.array([s["acc"] for s in sorted(out["samples"]["tl_mc"], key=lambda s: s["doc_id"])])  # noqa: E731
    diff = per(steered) - per(base)
    assert acc["change"] == pytest.approx(diff.mean()) and acc["interval"] == "paired bootstrap"
    assert (acc["change_low"], acc["change_high"]) == bootstrap_ci(diff, seed=0)
    ppl = rows[("tl_roll", "word_perplexity,none")]  # a corpus-level metric: no per-document mean
    assert ppl["value"] == pytest.approx(steered["results"]["tl_roll"]["word_perplexity,none"])
    assert ppl["unsteered"] == pytest.approx(base["results"]["tl_roll"]["word_perplexity,none"])
    assert ppl["interval"] in ("normal from both stderrs", "none") and ppl["higher_is_better"] is False
    assert cap.runs == 2  # the unsteered run is made once
    assert cap.measure(None, unsteered=True)[0]["change"] == 0.0 and cap.runs == 2


def test_the_change_interval_is_paired_where_documents_average_to_the_figure_else_from_the_stderrs():
    from traitlens.pipeline.steer.capability import change_interval
    from traitlens.pipeline.steer.stats import bootstrap_ci

    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 2, 50).astype(float), rng.integers(0, 2, 50).astype(float)
    a = {"value": x.mean(), "stderr": 0.07, "docs": dict(enumerate(x))}
    b = {"value": y.mean(), "stderr": 0.06, "docs": dict(enumerate(y))}
    assert change_interval(a, b) == (y.mean() - x.mean(), *bootstrap_ci(y - x), "paired bootstrap")
    corpus_a, corpus_b = {**a, "value": 12.0, "docs": None}, {**b, "value": 15.0, "docs": None}
    change, lo, hi, how = change_interval(corpus_a, corpus_b)
    half = 1.959964 * math.sqrt(0.07 ** 2 + 0.06 ** 2)
    assert (change, how) == (3.0, "normal from both stderrs") and (lo, hi) == pytest.approx((3 - half, 3 + half))
    assert change_interval({**corpus_a, "stderr": None}, corpus_b)[3] == "none"


def test_an_unknown_task_and_one_that_needs_a_download_offline_are_errors_naming_the_task(world, tmp_path):
    from traitlens.pipeline.model.loading import load_model
    from traitlens.pipeline.steer.capability import Capability
    from traitlens.store.errors import InputError

    path, _, tasks, _ = world
    lm = load_model(str(path), device="cpu", dtype="float32", log=lambda *a: None)
    (tmp_path / "hub.yaml").write_text("task: tl_hub\ndataset_path: traitlens-tests/no-such-dataset\ntest_split: test\n"
                                       'output_type: multiple_choice\ndoc_to_text: "{{q}}"\ndoc_to_choice: ["a", "b"]\n'
                                       "doc_to_target: 0\n")
    with pytest.raises(InputError, match=r"--capability tl_hub: lm-eval could not load the task's data .*downloads "
                                         r"are off .*--capability-include"):
        Capability(lm, ["tl_hub"], [str(tmp_path)])
    with pytest.raises(InputError, match="--capability tl_nothing: lm-eval knows no such task"):
        Capability(lm, ["tl_nothing"], [str(tasks)])
    with pytest.raises(InputError, match="--capability-include .*no such folder"):
        Capability(lm, ["tl_mc"], [str(tmp_path / "absent")])


def test_evaluate_capability_stores_rows_prints_the_side_effects_beside_random_and_rank_shows_the_fall(world,
                                                                                                      tmp_path,
                                                                                                      tiny_llama):
    from click.testing import CliRunner

    from traitlens.pipeline.steer.records import worst_fall
    from traitlens.store import Store
    from traitlens.testing import write_corpus
    from traitlens.workflows.cli import cli

    _, _, tasks, _ = world
    store = tmp_path / "s"  # the persona measure asks in a chat template: the tiny Llama has one
    runner = lambda *a: CliRunner().invoke(cli, ["--store", str(store), *map(str, a)])  # noqa: E731
    assert runner("ingest", write_corpus(tmp_path / "c.jsonl", 120), "--model", tiny_llama, "--quiet").exit_code == 0
    assert runner("extract", "--trait", "kindness", "--methods", "mean_diff,random", "--quiet").exit_code == 0
    r = runner("evaluate", "--trait", "kindness", "--steering", "--model", tiny_llama, "--layers", "1,2", "--alphas",
               "2,40",
               "--n", "4", "--reply-tokens", "0", "--kl-budget", "1000", "--capability", "tl_mc",
               "--capability-include", tasks, "--capability-limit", "8", "--plot", tmp_path / "e.png")
    assert r.exit_code == 0, r.output
    steering = Store.open(store).table("steering").to_pylist()
    caps = Store.open(store).table("capability").to_pylist()
    unsteered = [c for c in caps if c["vector_id"] is None]
    assert [(c["task"], c["metric"], c["alpha"], c["change"]) for c in unsteered] == [("tl_mc", "acc,none", 0.0, 0.0)]
    for s in steering:  # every measured setting, the random floor's too, has its row, paired with its run
        (c,) = [c for c in caps if (c["vector_id"], c["layer"], c["alpha"]) == (s["vector_id"], s["layer"], s["alpha"])]
        assert c["n"] == 8 and c["run_id"] == s["run_id"] and c["operation"] == "add"
        assert c["unsteered"] == unsteered[0]["value"] and c["change"] == pytest.approx(c["value"] - c["unsteered"])
        assert c["change_low"] <= c["change"] <= c["change_high"] and c["interval"] == "paired bootstrap"
    assert "side effects of the pick (mean_diff L" in r.output and "| tl_mc | acc,none | 8 |" in r.output
    assert "random at the same setting: effect" in r.output
    assert "Pareto front (shift up, KL down, capability fall down)" in r.output
    r = runner("rank", "--trait", "kindness", "--format", "json")
    ranked = json.loads(r.output)["rows"]
    from traitlens.pipeline.steer.rule import pick

    best = {}
    for s in steering:  # the metrics view's setting: each vector's best shift within the default budget
        if s["method"] != "random" and s["kl"] <= 0.1 and (s["vector_id"] not in best
                                                           or s["shift"] > best[s["vector_id"]]["shift"]):
            best[s["vector_id"]] = s
    for row in ranked:
        if row["vector_id"] in best:
            b = best[row["vector_id"]]
            mine = [c for c in caps if (c["vector_id"], c["layer"], c["alpha"]) == (b["vector_id"], b["layer"], b["alpha"])]
            assert row["steer_capability"] == pytest.approx(worst_fall(mine))
    assert pick(steering, 1000) is not None
    from traitlens.queries import StoreSQL
    from traitlens.workflows.report import _steering_section

    with StoreSQL(Store.open(store)) as q:  # the report reads the same rows back: the table beside the effect
        section = "\n".join(_steering_section(q, "kindness", tmp_path, False, None, 1000))
    assert "side effects of the pick (mean_diff L" in section and "| tl_mc | acc,none | 8 |" in section


def test_a_capability_budget_keeps_the_pick_within_the_fall():
    from traitlens.pipeline.steer.rule import front, pick
    from traitlens.pipeline.steer.stats import pareto_front_nd

    rows = [{"method": "m", "layer": 1, "alpha": a, "shift": s, "kl": k, "capability_fall": f}
            for a, s, k, f in [(0.1, 1.0, 0.05, 0.20), (0.2, 0.8, 0.05, 0.01), (0.3, 0.5, 0.02, 0.0),
                               (0.4, 0.4, 0.03, 0.05)]]
    assert pick(rows, 0.1)["alpha"] == 0.1
    assert pick(rows, 0.1, capability_budget=0.05)["alpha"] == 0.2
    assert pick(rows, 0.1, capability_budget=-1) is None
    # three objectives: (0.4) is beaten by (0.3) on all; the others each win somewhere
    assert {r["alpha"] for r in front(rows)} == {0.1, 0.2, 0.3}
    rng = np.random.default_rng(1)
    e, d1, d2 = rng.standard_normal(30), rng.random(30), rng.random(30)
    brute = {i for i in range(30) if not any(e[j] >= e[i] and d1[j] <= d1[i] and d2[j] <= d2[i]
                                             and (e[j] > e[i] or d1[j] < d1[i] or d2[j] < d2[i]) for j in range(30))}
    assert set(pareto_front_nd(e, d1, d2)) == brute


@pytest.mark.slow
def test_traitlens_lm_eval_hands_its_arguments_to_lm_eval_s_own_cli(world, tmp_path):
    """``traitlens lm-eval`` runs a local task through --model traitlens: alpha 0 gives the plain
    ``hf`` scores, and the vector on changes the loglikelihoods."""
    from click.testing import CliRunner

    from traitlens.workflows.cli import cli

    path, store, tasks, tm = world
    plain = run("hf", ["tl_mc"], tm, {"pretrained": str(path)}, device="cpu")

    def cli_run(alpha, out):
        r = CliRunner().invoke(cli, ["lm-eval", "--model", "traitlens", "--model_args",
                                     f"pretrained={path},store={store},vector=kindness,alpha={alpha},scale=1",
                                     "--device", "cpu", "--tasks", "tl_mc", "--include_path", str(tasks),
                                     "--output_path", str(out), "--log_samples"])
        assert r.exit_code == 0, r.output
        (samples,) = list(out.rglob("samples_tl_mc_*.jsonl"))
        return [json.loads(l)["resps"] for l in samples.read_text().splitlines()], \
            json.loads(next(out.rglob("results_*.json")).read_text())["results"]["tl_mc"]

    off, results = cli_run(0, tmp_path / "off")
    assert results["acc,none"] == plain["results"]["tl_mc"]["acc,none"]
    numbers = lambda docs: [[float(r[0][0]) for r in doc] for doc in docs]  # noqa: E731  (lm-eval writes repr strings)
    assert numbers(off) == numbers(resps(plain, "tl_mc"))  # exactly: the same forward passes
    on, _ = cli_run(30, tmp_path / "on")
    assert all(a != b for doc_on, doc_off in zip(numbers(on), numbers(off)) for a, b in zip(doc_on, doc_off))
