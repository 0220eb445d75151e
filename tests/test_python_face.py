"""The Python face, ``import traitlens as tl``: each function writes what its command writes (the
same rows, on copies of one store), configs refuse bad values naming the option before any
model is loaded or anything is written, results read like the CLI and show themselves in a
notebook (every string escaped), and ``import traitlens`` stays cheap."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import traitlens as tl
from traitlens.store import Store, strict_json
from traitlens.testing import store_copy, write_corpus
from traitlens.workflows.cli import cli

TRAIT = "kindness"
N = 132  # kindness prompts: enough for held-out (val) rows of both labels
ODD = "<script>alert('x')</script> & co"  # a trait name a corpus may carry: must stay text in HTML


def run(*args):
    r = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return r


@pytest.fixture(scope="module")
def captured(tmp_path_factory, tiny_llama):
    """A store with N kindness prompts (and 6 of an oddly named trait) captured by the tiny
    Llama at every layer, through the CLI; no vectors yet."""
    folder = tmp_path_factory.mktemp("face")
    corpus = write_corpus(folder / "kind.jsonl", N)
    odd = write_corpus(folder / "odd.jsonl", 6, start=500, trait=ODD)
    r = run("--store", folder / "store", "ingest", corpus, odd, "--model", tiny_llama, "--quiet")
    assert r.exit_code == 0, r.output
    return Store.open(folder / "store")


@pytest.fixture(scope="module")
def extracted(captured, tmp_path_factory):
    """``captured`` with kindness vectors (mean_diff, probe, random at every layer), through the CLI."""
    s = store_copy(captured, tmp_path_factory.mktemp("extracted") / "store")
    r = run("--store", s.root, "extract", "--trait", TRAIT, "--methods", "mean_diff,probe,random", "--n-boot", "0",
            "--quiet")
    assert r.exit_code == 0, r.output
    return s


def rows_of(store, table, columns, key):
    return sorted(store.table(table, columns=columns).to_pylist(), key=key)


def without_runs(text: str) -> str:
    """CLI or repr text with what differs between two runs (run ids, timings) blanked."""
    text = re.sub(r"\b(run|ingest|extract|evaluate|score)-[0-9A-Za-z_-]+", "RUN", text)
    return re.sub(r"\d+\.\d+ (s|prompts/s)\b", "T", text)


# -- one implementation: the function writes what the command writes ------------------------------
def test_ingest_from_python_writes_the_rows_the_cli_writes(tmp_path, tiny_llama, captured):
    corpus = write_corpus(tmp_path / "kind.jsonl", N)
    odd = write_corpus(tmp_path / "odd.jsonl", 6, start=500, trait=ODD)
    res = tl.ingest(tmp_path / "py", [corpus, odd], model=str(tiny_llama), progress=False)
    mine = Store.open(tmp_path / "py")
    assert res.counts()["n_captured"] == N + 6 and res.to_arrow().num_rows == 1
    pkey = lambda r: (r["prompt_id"], r["trait"])  # noqa: E731
    cols = ["prompt_id", "trait", "label", "split", "text"]
    assert rows_of(mine, "prompts", cols, pkey) == rows_of(captured, "prompts", cols, pkey)
    rcols = ["model_key", "fmt", "site", "pooling", "row", "prompt_id", "token_count"]
    rkey = lambda r: (r["pooling"], r["row"])  # noqa: E731
    assert rows_of(mine, "rows", rcols, rkey) == rows_of(captured, "rows", rcols, rkey)
    for g in captured.groups():
        for layer in captured.layers(g):
            assert np.array_equal(mine.activations(g, layer), captured.activations(g, layer))
    again = tl.ingest(mine, [corpus, odd], model=str(tiny_llama), progress=False)  # answered by the receipt
    assert again.counts()["status"] == "current" and "the model was not loaded" in repr(again)
    r = run("--store", tmp_path / "py", "ingest", corpus, odd, "--model", tiny_llama, "--quiet")
    assert r.stdout.splitlines() == repr(again).splitlines()  # the command prints the function's lines


def test_extract_rank_score_and_query_from_python_equal_the_cli(tmp_path, captured):
    a = store_copy(captured, tmp_path / "a")  # the command line's
    b = tl.Store.open(store_copy(captured, tmp_path / "b").root)  # the function's
    r = run("--store", a.root, "extract", "--trait", TRAIT, "--methods", "mean_diff,probe,random", "--n-boot", "0",
            "--seed", "3")
    assert r.exit_code == 0, r.output
    ex = tl.extract(b, TRAIT, methods="mean_diff,probe,random", n_boot=0, seed=3)
    vkey = lambda r: r["vector_id"]  # noqa: E731
    vcols = ["vector_id", "layer", "method", "auroc", "cohens_d", "vector"]
    assert rows_of(b, "vectors", vcols, vkey) == rows_of(a, "vectors", vcols, vkey)  # same ids, values, metrics
    assert sorted(ex.to_arrow()["vector_id"].to_pylist()) == [r["vector_id"] for r in rows_of(a, "vectors", vcols, vkey)]
    assert without_runs(r.stdout).splitlines() == without_runs(repr(ex)).splitlines()

    r = run("--store", a.root, "rank", "--trait", TRAIT, "--top", "4")
    ranking = tl.rank(b, TRAIT, top=4)
    assert r.stdout.splitlines() == repr(ranking).splitlines()
    r = run("--store", a.root, "rank", "--trait", TRAIT, "--format", "json")
    assert json.loads(r.output) == json.loads(strict_json.dumps(tl.rank(b, TRAIT).as_json(), default=str))
    assert ranking.to_pandas().equals(ranking.to_arrow().to_pandas())
    assert ranking.to_arrow()["vector_id"].to_pylist() == [row["vector_id"] for row in json.loads(r.output)["rows"][:4]]

    r = run("--store", a.root, "score", "--trait", TRAIT, "--top", "3")
    scored = tl.score(b, TRAIT, top=3)
    skey = lambda r: (r["prompt_id"], r["vector_id"])  # noqa: E731
    scols = ["prompt_id", "vector_id", "score", "calibrated"]
    group = b.group_counts()[tl.Store.open(b.root).groups()[0]]  # every prompt of the pick's group (one group)
    assert rows_of(b, "scores", scols, skey) == rows_of(a, "scores", scols, skey) and scored.result.n_scored == group
    assert without_runs(r.stdout).splitlines() == without_runs(repr(scored)).splitlines()
    assert scored.to_arrow()["score"].to_pylist() == sorted((s["score"] for s in b.table("scores").to_pylist()),
                                                            reverse=True)[:3]

    sql = "SELECT trait, label, count(*) AS n FROM prompts GROUP BY ALL ORDER BY ALL"
    r = run("--store", a.root, "query", sql, "--format", "json")
    assert json.loads(r.output) == tl.query(b, sql).to_arrow().to_pylist()


def test_steer_and_evaluate_from_python_equal_the_cli(tmp_path, tiny_llama, extracted):
    a, b = store_copy(extracted, tmp_path / "a"), store_copy(extracted, tmp_path / "b")
    prompt = "I love helping people"
    r = run("--store", a.root, "steer", prompt, "--trait", TRAIT, "--model", tiny_llama, "--alpha", "2",
            "--max-new-tokens", "6")
    steered = tl.steer(b, prompt, trait=TRAIT, model=str(tiny_llama), alpha=2, max_new_tokens=6)
    assert r.exit_code == 0 and r.stdout.splitlines() == repr(steered).splitlines()
    assert steered.to_arrow().to_pylist()[0]["prompt"] == prompt

    opts = ["--methods", "mean_diff", "--layers", "1", "--alphas", "0.5,2", "--n", "4", "--reply-tokens", "0"]
    r = run("--store", a.root, "evaluate", "--trait", TRAIT, "--steering", *opts, "--model", tiny_llama,
            "--plot", tmp_path / "a.png")
    assert r.exit_code == 0, r.output
    ev = tl.evaluate(b, TRAIT, methods="mean_diff", layers="1", alphas=[0.5, 2], n=4, reply_tokens=0,
                     model=str(tiny_llama), progress=False)
    key = lambda r: (r["method"], r["layer"], r["alpha"])  # noqa: E731
    cols = ["method", "layer", "alpha", "kind", "shift", "ci_low", "ci_high", "kl", "vector_id"]
    assert rows_of(b, "steering", cols, key) == rows_of(a, "steering", cols, key)
    assert sorted(ev.to_arrow().to_pylist(), key=key) == sorted(b.table("steering").to_pylist(), key=key)
    printed = [line for line in r.stdout.splitlines() if line != f"plot: {tmp_path / 'a.png'}"]
    assert without_runs("\n".join(printed)).splitlines() == without_runs(repr(ev)).splitlines()

    page = ev._repr_html_()  # the steering figure inline, the pick marked
    png = base64.b64decode(re.search(r'src="data:image/png;base64,([^"]+)"', page).group(1))
    assert png[:4] == b"\x89PNG" and len(png) > 20_000
    if ev.pick is not None:
        assert "★ pick" in page


# -- configs: bad values name the option, before a model loads or a byte is written -------------
def test_bad_options_name_the_option_and_write_nothing(tmp_path, captured):
    corpus = write_corpus(tmp_path / "c.jsonl", 4)
    with pytest.raises(tl.InputError, match="batch_sise.*did you mean 'batch_size'"):
        tl.ingest(tmp_path / "new", corpus, batch_sise=8)
    with pytest.raises(tl.InputError, match="--pooling median: unknown"):
        tl.ingest(tmp_path / "new", corpus, pooling="last,median")
    assert not (tmp_path / "new").exists()
    s = store_copy(captured, tmp_path / "s")
    before = sorted(p.name for p in (s.root / "tables").rglob("*"))
    with pytest.raises(ValueError, match="--n-boot -1"):
        tl.extract(s, TRAIT, n_boot=-1)
    with pytest.raises(ValueError, match="memory 'lots'"):
        tl.extract(s, TRAIT, memory="lots")
    # no model is loaded for a bad sweep setting: the model named does not exist
    for bad, match in [({"alphas": "0.1,x"}, "--alphas '0.1,x'"), ({"alphas": []}, "--alphas: give at least one"),
                       ({"alphas": [0.1, float("nan")]}, r"--alphas\[1\] nan: must be a finite"), ({"kind": "vibes"}, "--kind 'vibes'"),
                       ({"kl_budget": -1}, "--kl-budget must be 0 or more"), ({"n": 0}, "--n 0"),
                       ({"norm": "l2"}, "--norm 'l2'"), ({"layers": "3-x"}, "--layers"), ({"alpha": 1}, "alpha=1")]:
        with pytest.raises(tl.InputError, match=match):
            tl.evaluate(s, TRAIT, model="/no/such/model", **bad)
    with pytest.raises(ValueError, match="--top -1"):
        tl.score(s, TRAIT, top=-1)
    with pytest.raises(tl.InputError, match="--generate needs CORPUS"):
        tl.score(s, TRAIT, generate=4)
    with pytest.raises(tl.InputError, match="--top 0"):
        tl.rank(s, TRAIT, top=0)
    assert sorted(p.name for p in (s.root / "tables").rglob("*")) == before
    # the spec's [evaluate] table is checked by the same config, its keys named
    assert tl.SweepConfig(alphas="0.1, 0.2", methods="all").validate().alphas == [0.1, 0.2]
    # one task folder given as a string is one folder, not a list of its characters
    one = tl.SweepConfig(capability="arc_easy", capability_include="my_tasks").validate()
    assert one.capability_include == ["my_tasks"]
    with pytest.raises(tl.InputError, match="--capability-include"):
        tl.SweepConfig(capability="arc_easy", capability_include=[3]).validate()
    assert tl.SweepConfig().alphas == [0.05, 0.1, 0.25, 0.5] and tl.CaptureConfig is tl.IngestConfig


def test_a_config_object_and_keywords_build_the_same_run(tmp_path, extracted):
    cfg = tl.ExtractConfig(methods=["mean_diff"], n_boot=0, layers="1")
    a = tl.extract(store_copy(extracted, tmp_path / "a"), TRAIT, cfg)
    b = tl.extract(store_copy(extracted, tmp_path / "b"), TRAIT, methods="mean_diff", n_boot=0, layers="1")
    c = tl.extract(store_copy(extracted, tmp_path / "c"), TRAIT, cfg, layers="0")  # a keyword replaces the field
    assert a.vector_ids == b.vector_ids and len(a.vector_ids) == 1
    assert [r["layer"] for r in c.result.records] == [0] and cfg.layers == "1"  # the caller's config unchanged


# -- what a notebook shows -------------------------------------------------------------------------
def test_the_store_shows_its_groups_traits_runs_and_sizes_escaped(tmp_path, extracted):
    s = tl.Store.open(extracted.root)
    page, text = s._repr_html_(), repr(s)
    facts = s.facts()
    counts = {g.path: n for g, n in s.group_counts().items()}
    for g in facts["groups"]:
        assert g["prompts"] == counts[g["group"]] and g["group"] in page
    kind = next(t for t in facts["traits"] if t["trait"] == TRAIT)
    labels = s.table("prompts", columns=["trait", "label"]).to_pylist()
    assert kind["positive"] == sum(1 for r in labels if r["trait"] == TRAIT and r["label"] == 1)
    assert kind["vectors"] == s.table("vectors").num_rows  # every vector is kindness's
    assert all(r["run_id"] in page for r in facts["runs"]) and len(facts["runs"]) == min(10, s.runs().num_rows)
    from traitlens.store.layout import ZARR_DIR

    disk = sum(f.stat().st_size for f in (s.root / ZARR_DIR).rglob("*") if f.is_file())
    assert next(x["bytes"] for x in facts["sizes"] if x["part"] == ZARR_DIR) == disk > 0
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; co" in page and "<script>alert" not in page
    assert f"trait {TRAIT}: {N // 2} positive, {N // 2} negative" in text and f"{N + 6} prompts" in text
    with pytest.raises(tl.InputError, match="already there"):
        tl.Store.create(s.root)
    fresh = tl.Store.create(tmp_path / "fresh")
    assert isinstance(fresh, tl.Store) and "0 prompts" in repr(fresh) and fresh._repr_html_()


def test_a_vector_shows_its_card_metrics_and_lens_tokens_escaped(tmp_path, tiny_lms, extracted):
    from traitlens.pipeline.steer.lens import lens_records

    s = tl.Store.open(store_copy(extracted, tmp_path / "s").root)
    v = s.vector(TRAIT)
    assert v.vector_id == tl.rank(s, TRAIT).pick["vector_id"]  # the pick, as rank lists it first
    recs = lens_records(tiny_lms["llama"], v.row, 4, "lens-run")
    recs[0]["token"] = "<i>&amp;</i>"
    s.append("lens", recs)
    v = s.vector(TRAIT)
    first = next(r for r in recs if r["direction"] == "promotes" and r["rank"] == 0)
    assert v.tokens("promotes")[0] == first["token"] and len(v.tokens("suppresses")) == 4
    page = v._repr_html_()
    assert "&lt;i&gt;&amp;amp;&lt;/i&gt;" in page and "<i>&amp;</i>" not in page
    assert v.vector_id in page and f"{v['auroc']:.3f}" in page and "traitlens vector card 1" in page
    assert v.to_arrow().num_rows == 1 and v.values.shape == (len(v.row["vector"]),)
    assert f"held-out AUROC {v['auroc']:.3f}" in repr(v)


def test_a_ranking_shows_the_pick_marked_the_floors_and_the_heatmap(extracted):
    ranking = tl.rank(extracted, TRAIT)
    page = ranking._repr_html_()
    pick_row = re.search(r"<tr class=pick>(.*?)</tr>", page).group(1)
    assert "★ pick" in pick_row and ranking.pick["vector_id"] in pick_row
    assert page.count("<tr class=pick>") == 1
    assert f"floor (random direction, best layer {ranking.floor['layer']}): auroc {ranking.floor['auroc']:.3f}" in page
    assert "token count" in page  # the nuisance floor beside it
    png = base64.b64decode(re.search(r'src="data:image/png;base64,([^"]+)"', page).group(1))
    assert png[:4] == b"\x89PNG"


# -- the package ----------------------------------------------------------------------------------
def test_import_traitlens_is_cheap_and_versioned():
    """``import traitlens`` imports no stage; ``tl.Store`` no model library; the version is the
    installed distribution's."""
    code = ("import sys, traitlens as tl; heavy = ('torch', 'transformers', 'sklearn', 'zarr');"
            "print([m for m in heavy if m in sys.modules]); tl.Store; tl.SweepConfig; tl.CaptureConfig;"
            "print([m for m in heavy[:3] if m in sys.modules]); print(tl.__version__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    from importlib.metadata import version

    assert out[:3] == ["[]", "[]", version("traitlens")]
    from traitlens.workflows import api

    assert tl.ingest is api.ingest and tl.evaluate is api.evaluate and tl.Store is api.Store
    with pytest.raises(AttributeError):
        tl.no_such_name  # noqa: B018


@pytest.mark.slow
def test_the_wheel_holds_the_package_and_every_floor(tmp_path):
    """A regular (non-editable) install: ``traitlens/__init__.py`` from workflows/toplevel, every
    subpackage beside it, the version from its metadata."""
    import zipfile
    from pathlib import Path

    import shutil

    root, src = Path(__file__).resolve().parents[1], tmp_path / "src"  # built from a copy: no build/ left behind
    src.mkdir()
    for part in ("pyproject.toml", "README.md", "store", "queries", "pipeline", "workflows", "tests/support"):
        if (root / part).is_dir():
            shutil.copytree(root / part, src / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(root / part, src / part)
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "wheel")], check=True, capture_output=True)
    wheel = next((tmp_path / "wheel").glob("traitlens-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "traitlens/__init__.py" in names and not any("toplevel" in n for n in names)
    for pkg in ("store", "queries", "pipeline/capture", "pipeline/extract", "pipeline/steer", "workflows", "testing"):
        assert f"traitlens/{pkg}/__init__.py" in names, pkg
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(tmp_path / "site"),
                    str(wheel)], check=True, capture_output=True)
    code = ("import traitlens as tl, traitlens.store, traitlens.queries, traitlens.pipeline.capture.ingest, "
            "traitlens.pipeline.steer.search, traitlens.workflows.cli, traitlens.testing; "
            "print(tl.__file__, traitlens.pipeline.__file__, tl.__version__, tl.rank.__module__)")
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path / "site")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    init, pipeline, version, module = out.split()
    assert init == str(tmp_path / "site" / "traitlens" / "__init__.py")
    assert pipeline == str(tmp_path / "site" / "traitlens" / "pipeline" / "__init__.py")
    assert version == tl.__version__ and module == "traitlens.workflows.api"
