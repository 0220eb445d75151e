"""Several pushes evaluated at once (`evaluate --add ... --add ...`): the set's measure equals
the measure under one hand-written hook adding the summed push; each part alone equals a
single-vector evaluation; the random twin keeps every push but its direction; the CLI prints,
plots and stores what it measured."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from traitlens.pipeline.model.hooks import forward_hooks, hidden, with_hidden
from traitlens.pipeline.steer import evaluate as ev
from traitlens.pipeline.steer.steering import site_module
from traitlens.pipeline.steer.together import measure_together, random_twin

STATEMENTS = ["I love helping people", "I enjoy causing trouble", "the sky and the stars", "I am always kind"]
NEUTRAL = ["How do I bake bread?", "Write a poem about the sea."]


@pytest.fixture(scope="module")
def lm(tiny_lms):
    return tiny_lms["llama"]


def _unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def _measure_with_hook(lm, add: np.ndarray, layer: int) -> np.ndarray:
    """The persona measure with ``add`` [d] added to block ``layer``'s output by a hand hook."""
    delta = torch.tensor(add, dtype=torch.float32)

    def hook(module, inputs, output):
        x = hidden(output)
        return with_hidden(output, x + delta.to(x.dtype))

    with forward_hooks([(site_module(lm, "resid", layer), hook)]):
        return ev.yes_no_logodds(lm, STATEMENTS)


def test_pushes_measured_together_equal_one_hand_hook_of_their_sum(lm):
    rng = np.random.default_rng(3)
    v1, v2 = rng.standard_normal(lm.d_model), rng.standard_normal(lm.d_model)
    e = ev.Evaluator(lm, "persona", STATEMENTS, neutral=NEUTRAL, reply_tokens=3)
    items = [e.push(v1, 1, 0.6, label="a"), e.push(v2, 1, -0.3, label="b")]
    row = e.together(items)
    s = e.scale(1)
    total = 0.6 * s * _unit(v1) - 0.3 * s * _unit(v2)
    plus, minus = _measure_with_hook(lm, total, 1), _measure_with_hook(lm, -total, 1)
    assert row["plus"] == pytest.approx(plus.mean(), abs=1e-4)
    assert row["minus"] == pytest.approx(minus.mean(), abs=1e-4)
    assert row["shift"] == pytest.approx((plus - minus).mean(), abs=1e-4)
    assert row["pushes"][0].startswith("a: alpha +0.6") and row["pushes"][1].startswith("b: alpha -0.3")
    # a set may be meant to lower the measure: wrong way is against its own mean shift
    shifts = np.array([x["shift"] for x in row["samples"] if x["measure"] == "effect"])
    against = shifts < 0 if shifts.mean() >= 0 else shifts > 0
    assert row["wrong_way"] == pytest.approx(against.mean())
    # the damage of the set is the damage of its summed push (one vector of that length)
    norm = float(np.linalg.norm(total))
    (one,) = e.at(total, 1, [norm / s])
    assert row["kl"] == pytest.approx(one["kl"], rel=1e-4, abs=1e-7) and row["kl"] > 0
    assert row["perplexity"] == pytest.approx(one["perplexity"], rel=1e-4)


def test_each_part_alone_is_the_single_vector_evaluation_and_the_floor_only_changes_directions(lm):
    rng = np.random.default_rng(4)
    v1, v2 = rng.standard_normal(lm.d_model), rng.standard_normal(lm.d_model)
    e = ev.Evaluator(lm, "persona", STATEMENTS, neutral=NEUTRAL, reply_tokens=0)
    items = [e.push(v1, 0, 0.5, label="a"), e.push(v2, 2, 0.4, label="b")]
    rows = measure_together(e, items, random_floor=True, seed=7)
    assert [r["part"] for r in rows] == ["together", "alone", "alone", "random"]
    for r, (v, layer, a) in zip(rows[1:3], [(v1, 0, 0.5), (v2, 2, 0.4)]):
        (want,) = e.at(v, layer, [a])
        assert r["shift"] == pytest.approx(want["shift"], abs=1e-6) and r["kl"] == pytest.approx(want["kl"], abs=1e-9)
    twin = random_twin(items, 7)
    assert [(p.layer, p.alpha, p.scale, p.site, p.positions) for p in twin] == \
        [(p.layer, p.alpha, p.scale, p.site, p.positions) for p in items]
    assert all(abs(float(_unit(p.vector) @ _unit(q.vector))) < 0.9 for p, q in zip(twin, items))
    assert all(np.array_equal(p.vector, q.vector) for p, q in zip(twin, random_twin(items, 7)))  # seeded


def test_cli_evaluate_add_measures_the_set_alone_and_random_and_stores_it(tmp_path, tiny_llama):
    from click.testing import CliRunner

    from traitlens.queries import StoreSQL
    from traitlens.store import Store
    from traitlens.testing import write_corpus
    from traitlens.workflows.cli import cli

    store = tmp_path / "s"
    run = lambda *a: CliRunner().invoke(cli, ["--store", str(store), *map(str, a)])  # noqa: E731
    assert run("ingest", write_corpus(tmp_path / "c.jsonl", 120), "--model", tiny_llama, "--quiet").exit_code == 0
    assert run("extract", "--trait", "kindness", "--methods", "mean_diff,probe", "--quiet").exit_code == 0
    r = run("evaluate", "--trait", "kindness", "--steering", "--model", tiny_llama, "--n", "4", "--reply-tokens", "3",
            "--add", "kindness:1:2", "--add", "kindness:0:-1", "--plot", tmp_path / "t.png")
    assert r.exit_code == 0, r.output
    assert "measuring together: kindness" in r.output and "at resid L1" in r.output and "at resid L0" in r.output
    assert "against the sum of the pushes alone" in r.output and "random directions with the same pushes" in r.output
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"
    rows = Store.open(store).table("steering_together").to_pylist()
    assert [x["part"] for x in rows] == ["together", "alone", "alone", "random"]
    assert len({x["combination_id"] for x in rows}) == 1
    whole = json.loads(rows[0]["pushes"])
    assert [(p["layer"], p["alpha"], p["trait"]) for p in whole] == [(1, 2.0, "kindness"), (0, -1.0, "kindness")]
    assert [json.loads(x["pushes"]) for x in rows[1:3]] == [[whole[0]], [whole[1]]]
    assert all(p["method"] == "random" for p in json.loads(rows[3]["pushes"]))
    # the printed sum of the parts is the stored parts' sum
    total = rows[1]["shift"] + rows[2]["shift"]
    assert f"against the sum of the pushes alone {total:+.3f}" in r.output
    with StoreSQL(Store.open(store)) as q:  # SQL sees it; the single-vector steering table does not
        assert q.query("SELECT count(*) AS n FROM steering_together").to_pylist()[0]["n"] == 4
        assert q.query("SELECT count(*) AS n FROM steering").to_pylist()[0]["n"] == 0
    vid = Store.open(store).table("vectors").to_pylist()[0]["vector_id"]
    r = run("evaluate", "--trait", "kindness", "--steering", "--model", tiny_llama, "--add", f"{vid}:9",
            "--plot", tmp_path / "t.png")
    assert r.exit_code == 2 and "layer 9; the model has layers" in r.output
    r = run("evaluate", "--trait", "kindness", "--steering", "--model", tiny_llama, "--add", "kindness",
            "--layers", "1", "--plot", tmp_path / "t.png")
    assert r.exit_code == 2 and "leave out --layers and --methods" in r.output
