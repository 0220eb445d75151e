"""Numbers that are not numbers: NaN, infinities and float32 overflow never become an option
value, a stored vector, the pick, or a steering row.

Every float option of every verb is found by walking the click command tree, so a new float
option without the check fails here. Vectors an older traitlens stored with NaN values are
planted directly in the vectors table (the store API, bypassing the check that now refuses
them) to show that no picker takes them and ``verify`` names them.
"""

from __future__ import annotations

import math

import click
import numpy as np
import pytest
from click.testing import CliRunner

from traitlens.pipeline.extract.jobs import ExtractConfig, extract
from traitlens.queries import StoreSQL
from traitlens.store import Store, verify
from traitlens.testing import KEY, cli_error, store_copy, synthetic_store
from traitlens.workflows.cli import cli
from traitlens.workflows.cli_base import FiniteFloat


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def refused(r, *words):
    """Exit 2, one line naming ``words``, no traceback."""
    return cli_error(r, 2, *words)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    store, _ = synthetic_store(tmp_path_factory.mktemp("fin") / "s", n=240, d=12, layers=(0, 1, 2), sep=4.0)
    extract(store.root, "planted", methods="mean_diff,probe,random", cfg=ExtractConfig(n_boot=2))
    return store


@pytest.fixture
def store(pristine, tmp_path):
    return store_copy(pristine, tmp_path / "s")


# -- every float option ------------------------------------------------------------------------
def float_options():
    """``(command path, option name, its type)`` for every option of every verb that takes floats."""
    found = []

    def walk(cmd, path):
        for p in cmd.params:
            t = p.type
            if isinstance(p, click.Option) and (isinstance(t, (click.types.FloatParamType, FiniteFloat))):
                found.append((tuple(path), p.opts[0], t))
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, path + [name])

    walk(cli, [])
    return found


FLOAT_OPTIONS = float_options()


def test_the_walk_finds_the_float_options_the_findings_named():
    names = {(" ".join(path), opt) for path, opt, _ in FLOAT_OPTIONS}
    for want in (("export", "--scale"), ("evaluate", "--alphas"), ("evaluate", "--kl-budget"), ("steer", "--alpha"),
                 ("extract", "--C"), ("query", "--timeout"), ("compact", "--grace"), ("monitor", "--threshold")):
        assert want in names, (want, sorted(names))


@pytest.mark.parametrize("path,opt,ptype", FLOAT_OPTIONS, ids=[f"{' '.join(p)} {o}" for p, o, _ in FLOAT_OPTIONS])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN", "1e400"])
def test_every_float_option_refuses_non_finite_values(tmp_path, path, opt, ptype, value):
    assert isinstance(ptype, FiniteFloat), f"{' '.join(path)} {opt}: use cli_base.FiniteFloat (it refuses NaN)"
    # the option first: click converts options in the order given, before it misses a required one
    r = run("--store", tmp_path / "s", *path, opt, value)
    refused(r, opt, "finite")
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("args,words", [
    (("export", "--trait", "planted", "--scale", "0"), ("--scale", "zero")),
    (("export", "--trait", "planted", "--scale", "1e308"), ("--scale", "float32")),
    (("evaluate", "--trait", "planted", "--steering", "--alphas", "0.1,1e308"), ("--alphas", "float32")),
    (("evaluate", "--trait", "planted", "--steering", "--alphas", "0.1,nan"), ("--alphas", "finite")),
    (("steer", "hello", "--trait", "planted", "--alpha", "nan"), ("--alpha", "finite")),
])
def test_the_reported_float_values_exit_2_naming_the_option(store, args, words, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # (export's default output goes to the working folder)
    before = sorted(p.name for p in (store.root / "tables" / "vectors").iterdir())
    refused(run("--store", store.root, *args), *words)
    assert sorted(p.name for p in (store.root / "tables" / "vectors").iterdir()) == before


def test_steer_add_alpha_takes_the_same_rule(store, tiny_llama):
    r = run("--store", store.root, "steer", "hi", "--add", "planted:1:nan", "--model", tiny_llama)
    refused(r, "--add", "finite")


def test_a_push_float32_cannot_hold_is_refused():
    from traitlens.pipeline.steer.steering import Push
    from traitlens.store import InputError

    with pytest.raises(InputError, match="finite float32"):
        Push(np.ones(4), 0, 1e38, scale=100.0)
    Push(np.ones(4), 0, 1e30, scale=100.0)  # large but representable: allowed (the measure decides)


def test_evaluate_never_stores_nan_rows_when_a_push_overflows_the_model(tiny_llama):
    """float16 holds at most 65,504: a strong push turns the activations into inf and the
    measures into NaN, which used to be appended to the steering table."""
    from traitlens.pipeline.model.loading import load_model
    from traitlens.pipeline.steer.evaluate import Evaluator
    from traitlens.store import InputError

    lm = load_model(str(tiny_llama), device="cpu", dtype="float16", log=lambda *a: None)
    ev = Evaluator(lm, "persona", ["I love people", "I hate people", "kind words", "rude words"], reply_tokens=0)
    v = np.random.default_rng(0).standard_normal(lm.d_model)
    (row,) = ev.at(v, 1, [0.5])  # an ordinary strength measures as before
    assert math.isfinite(row["shift"]) and math.isfinite(row["kl"])
    with pytest.raises(InputError, match="alpha 1e\\+09 at layer 1: .*NaN or infinite"):
        ev.at(v, 1, [1e9])


@pytest.mark.parametrize("section,key", [("[evaluate]\nkl_budget = nan", "evaluate.kl_budget"),
                                         ("[evaluate]\nalphas = [0.1, inf]", "evaluate.alphas[1]"),
                                         ("[evaluate]\nalphas = [1e300]", "evaluate.alphas[0]"),
                                         ("[extract.params.probe]\nC = nan", "extract.params.probe.C"),
                                         ("[extract.params.probe]\nC = -inf", "extract.params.probe.C")])
def test_spec_floats_take_the_same_rule(tmp_path, section, key):
    (tmp_path / "c.jsonl").write_text('{"text": "x", "label": 1}\n')
    spec = tmp_path / "w.toml"
    spec.write_text(f'store = "s"\n[[corpora]]\npaths = ["c.jsonl"]\n{section}\n')
    refused(run("run", spec), "w.toml", key)
    assert not (tmp_path / "s").exists()


def test_extract_memory_that_overflows_is_an_input_error(store):
    refused(run("--store", store.root, "extract", "--trait", "planted", "--memory", "1e400GB"), "memory", "1e400GB")


# -- vectors that are not finite -----------------------------------------------------------------
def test_combine_with_an_overflowing_coefficient_is_refused_and_stores_nothing(store):
    before = store.table("vectors").num_rows
    r = run("--store", store.root, "vectors", "combine", "1e400*planted", "--layer", "1", "--name", "bigv")
    refused(r, "1e400", "finite")
    r = run("--store", store.root, "vectors", "combine", "1e38*planted - 1e38*planted", "--layer", "1", "--name", "z")
    refused(r, "zero vector")
    assert Store.open(store.root).table("vectors").num_rows == before
    assert verify(Store.open(store.root)).clean


def test_a_fit_that_yields_a_non_finite_or_zero_vector_is_never_stored(store):
    from traitlens.pipeline.extract.jobs import save_vectors
    from traitlens.pipeline.extract.methods import ExtractionError

    good = store.table("vectors").to_pylist()[0]
    before = store.table("vectors").num_rows
    for bad in ([math.nan] * good["d"], [0.0] * good["d"], [math.inf] + [0.1] * (good["d"] - 1)):
        rec = {**good, "params": good["params"] + " ", "vector": bad}
        with pytest.raises(ExtractionError, match="cannot be stored"):
            with store.lock("test"):
                save_vectors(store, [rec], "run-x")
    assert Store.open(store.root).table("vectors").num_rows == before


def plant(store, method: str, values, **metrics) -> str:
    """A vectors row as an older traitlens could store it (bypassing the check); returns its id."""
    from traitlens.store.runs import now_utc

    base = next(r for r in store.table("vectors").to_pylist() if r["layer"] == 1 and r["method"] == "mean_diff")
    vid = f"planted{method}"[:16]
    row = {**base, "vector_id": vid, "method": method, "vector": list(values), "created_at": now_utc(), **metrics}
    with store.lock("test"):
        store.append("vectors", [row])
    return vid


@pytest.fixture
def poisoned(store):
    """The store with four vectors no picker may take, as an older traitlens (or a hand) stored
    them: ``legacy``, what `vectors combine "1e400*planted"` stored (NaN values, AUROC NaN,
    Cohen's d and norm infinite); ``nanmetric`` (finite values, NaN metrics); ``zeros`` (a
    cancelled combination: zero values and norm under perfect metrics); ``nanvec`` (NaN values
    under perfect metrics and a finite norm: only a hand-edited store holds one). And one usable
    vector whose stability is NaN (``--n-boot 0``)."""
    d = store.table("vectors").to_pylist()[0]["d"]
    ids = {"legacy": plant(store, "legacy", [math.nan] * d, auroc=math.nan, cohens_d=math.inf, raw_norm=math.inf),
           "nanmetric": plant(store, "nanmetric", np.ones(d) / np.sqrt(d), auroc=math.nan, cohens_d=math.nan),
           "zeros": plant(store, "zeros", [0.0] * d, auroc=1.0, cohens_d=98.0, raw_norm=0.0),
           "nanvec": plant(store, "nanvec", [math.nan] * d, auroc=1.0, balanced_accuracy=1.0, cohens_d=99.0)}
    top = max((r for r in store.table("vectors").to_pylist() if r["method"] in ("mean_diff", "probe")),
              key=lambda r: (r["auroc"], r["cohens_d"]))
    ids["nanstab"] = plant(store, "nanstab", top["vector"], auroc=top["auroc"], cohens_d=top["cohens_d"],
                           stability=math.nan)
    return store, ids


def test_no_picker_takes_a_vector_with_nan_values_or_metrics(poisoned):
    from traitlens.queries.ranking import rank
    from traitlens.queries.selection import best_per_method, best_vector, order_by, sort_key, usable, usable_sql
    from traitlens.workflows.cli_steer import _pick_vector

    store, ids = poisoned
    bad = {ids[k] for k in ("legacy", "nanmetric", "zeros", "nanvec")}
    records = store.table("vectors").to_pylist()
    want = sorted((r for r in records if r["method"] != "random" and r["vector_id"] not in bad), key=sort_key)
    with StoreSQL(store) as q:
        listed = rank(q, "planted", top=50)[0]["vector_id"].to_pylist()
        picked = best_vector(q, "planted")
        ordered = [r["vector_id"] for r in q.query(
            f"SELECT * FROM metrics WHERE trait = 'planted' AND method <> 'random' AND {usable_sql()} "
            f"ORDER BY {order_by()}").to_pylist()]
    # rank reads metrics and norms only: garbage there is never listed (the forged nanvec is,
    # first, but the pick reads the values and skips it)
    assert not {ids["legacy"], ids["nanmetric"], ids["zeros"]} & set(listed) and listed[0] == ids["nanvec"]
    assert picked["vector_id"] == listed[1] == want[0]["vector_id"]
    scalars = [r for r in records if r["method"] != "random" and usable({**r, "vector": None})]
    assert ordered == [r["vector_id"] for r in sorted(scalars, key=sort_key)]  # SQL and Python: one rule, NaN keys too
    # the NaN stability sorts as not measured: after the vector it ties with on AUROC and d, never before
    assert ordered.index(ids["nanstab"]) > ordered.index(next(r["vector_id"] for r in want if r["method"] != "nanstab"
                                                               and r["auroc"] == want[0]["auroc"]))
    assert not any(usable(r) for r in records if r["vector_id"] in bad)
    assert {m for m in best_per_method(records)} == {"mean_diff", "probe", "random", "nanstab"}
    assert _pick_vector(store, "planted", KEY.model_key, None, None, None)["vector_id"] == picked["vector_id"]
    with StoreSQL(store) as q:  # asked for the forged method alone: nothing, not the NaN vector
        assert best_vector(q, "planted", method="nanvec") is None


def test_rank_lists_no_nan_vector_and_verify_names_them(poisoned):
    store, ids = poisoned
    r = run("--store", store.root, "rank", "--trait", "planted", "--top", "50")
    assert r.exit_code == 0, r.output
    assert not any(ids[k] in r.output for k in ("legacy", "nanmetric", "zeros"))
    rep = verify(Store.open(store.root))
    assert not rep.clean
    (err,) = [e for e in rep.errors if "tables/vectors" in e]
    assert all(ids[k] in err for k in ("legacy", "nanvec", "zeros")) and ids["nanmetric"] not in err  # values
    v = run("--store", store.root, "verify")
    assert v.exit_code == 1 and ids["legacy"] in v.output and "NaN" in v.output


@pytest.mark.parametrize("verb", [("score", "--trait", "planted"), ("audit", "--trait", "planted")])
def test_naming_a_nan_vector_by_id_is_refused(poisoned, verb):
    store, ids = poisoned
    refused(run("--store", store.root, *verb, "--vector-id", ids["nanvec"]), ids["nanvec"], "NaN")


def test_export_refuses_a_nan_vector(poisoned, tmp_path):
    store, _ = poisoned
    refused(run("--store", store.root, "export", "--trait", "planted", "--method", "nanvec", "-o",
                tmp_path / "x.safetensors"), "cannot be exported", "NaN")
    assert not (tmp_path / "x.safetensors").exists()
