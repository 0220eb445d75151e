"""DuckDB over a store: every view, the read-only guard, SQL projections against numpy, ranking."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from traitlens.testing import KEY, store_copy, synthetic_store
from traitlens.pipeline.extract.config import ExtractConfig
from traitlens.pipeline.extract.jobs import extract
from traitlens.queries import QueryError, StoreSQL, activations
from traitlens.queries.ranking import rank
from traitlens.workflows.cli import cli


@pytest.fixture(scope="module")
def pristine_with_vectors(tmp_path_factory):
    store, dirs = synthetic_store(tmp_path_factory.mktemp("q") / "s", n=300, d=16, layers=(0, 1, 2), sep=4.0)
    extract(store.root, "planted", cfg=ExtractConfig(n_boot=2))
    return store, dirs


@pytest.fixture
def store_with_vectors(pristine_with_vectors, tmp_path_factory):
    """A private copy per test: a test that extracts more never changes another test's counts."""
    store, dirs = pristine_with_vectors
    return store_copy(store, tmp_path_factory.mktemp("q") / "s"), dirs


def cli_run(store, *args):
    return CliRunner().invoke(cli, ["--store", str(store.root), *map(str, args)])


def test_views_match_the_tables(store_with_vectors):
    store, _ = store_with_vectors
    with StoreSQL(store) as q:
        for name in ("prompts", "rows", "vectors"):
            assert q.query(f"SELECT count(*) AS n FROM {name}").to_pylist()[0]["n"] == store.table(name).num_rows
        assert q.query("SELECT count(*) AS n FROM metrics").to_pylist()[0]["n"] == store.table("vectors").num_rows
        runs = q.query("SELECT run_id, status FROM runs").to_pylist()
        assert len(runs) == len({r["run_id"] for r in store.table("runs").to_pylist()})
        assert q.query("SELECT * FROM groups").to_pylist() == [{"n": 0, **KEY.as_dict()}]
        typ = q.query("SELECT typeof(vector) AS t FROM vectors LIMIT 1").to_pylist()[0]["t"]
        assert typ == "FLOAT[16]"
        # array functions work and agree with numpy
        r = q.query("SELECT a.vector AS a, b.vector AS b, array_cosine_similarity(a.vector, b.vector) AS c "
                    "FROM vectors a, vectors b WHERE a.method = 'probe' AND b.method = 'mean_diff' "
                    "AND a.layer = 1 AND b.layer = 1").to_pylist()[0]
        a, b = np.asarray(r["a"]), np.asarray(r["b"])
        assert np.isclose(r["c"], a @ b / np.linalg.norm(a) / np.linalg.norm(b), atol=1e-6)
        # several statements: each runs, the last one's rows come back
        assert q.query("SELECT 1; SELECT count(*) AS n FROM prompts").to_pylist() == \
            [{"n": store.table("prompts").num_rows}]


def test_read_only_guard(store_with_vectors, tmp_path):
    store, _ = store_with_vectors
    outside = tmp_path / "secret.csv"
    outside.write_text("a,b\n1,2\n")
    with StoreSQL(store) as q:
        with pytest.raises(QueryError, match="DROP statements are refused"):
            q.query("DROP VIEW prompts")
        with pytest.raises(QueryError, match="COPY statements are refused"):
            q.query(f"COPY prompts TO '{tmp_path / 'out.csv'}'")
        with pytest.raises(QueryError, match="(?i)permission.*may read only this store"):
            q.query(f"SELECT * FROM read_csv('{outside}')")
        with pytest.raises(QueryError, match="refused"):
            q.query("SELECT 1; DELETE FROM prompts")
        with pytest.raises(QueryError, match="(?i)lock|refused"):
            q.query("SET enable_external_access = true")
        assert q.query("SELECT count(*) AS n FROM prompts").to_pylist()[0]["n"] == 300  # still intact
    assert not (tmp_path / "out.csv").exists()
    r = cli_run(store, "query", "DROP VIEW prompts")
    assert r.exit_code == 2 and "read-only" in r.output and "Traceback" not in r.output
    r = cli_run(store, "query", "SELECT nope FROM prompts")
    assert r.exit_code == 2 and "Binder Error" in r.output


def test_sql_projection_equals_numpy(store_with_vectors):
    store, _ = store_with_vectors
    labels = {p["prompt_id"]: p["label"] for p in store.prompts().to_pylist()}
    with StoreSQL(store) as q:
        for layer in (0, 2):
            vid, v = [(r["vector_id"], np.asarray(r["vector"])) for r in
                      q.query(f"SELECT vector_id, vector FROM vectors WHERE method = 'probe' AND layer = {layer}").to_pylist()][0]
            got = q.query(f"SELECT p.label, avg(array_inner_product(a.vector, v.vector)) AS proj, count(*) AS n "
                          f"FROM act_L{layer} a JOIN prompts p USING (prompt_id), "
                          f"(SELECT vector FROM vectors WHERE vector_id = '{vid}') v GROUP BY p.label ORDER BY p.label"
                          ).to_pylist()
            X = store.activations(KEY, layer)
            ids = store.group_rows(KEY)["prompt_id"].to_pylist()
            y = np.asarray([labels[i] for i in ids])
            proj = X @ v.astype(np.float32)
            for row in got:
                assert row["n"] == int((y == row["label"]).sum())
                assert np.isclose(row["proj"], proj[y == row["label"]].mean(), rtol=1e-4, atol=1e-4)


def test_activations_where_returns_selected_rows(store_with_vectors):
    store, _ = store_with_vectors
    X, ids = activations(store, 1, "label = 1 AND split = 'train'")
    prompts = {p["prompt_id"]: p for p in store.prompts().to_pylist()}
    assert len(ids) == sum(1 for p in prompts.values() if p["label"] == 1 and p["split"] == "train") == X.shape[0]
    rows = {r["prompt_id"]: r["row"] for r in store.group_rows(KEY).to_pylist()}
    full = store.activations(KEY, 1)
    np.testing.assert_array_equal(X, full[[rows[i] for i in ids]])


def test_extract_where_restricts_and_records_the_selection(store_with_vectors):
    store, _ = store_with_vectors
    everything = extract(store.root, "planted", methods="mean_diff", layers="0", cfg=ExtractConfig(n_boot=0))
    half = extract(store.root, "planted", methods="mean_diff", layers="0", cfg=ExtractConfig(n_boot=0),
                   where="CAST(substr(text, 18) AS INTEGER) < 150")
    a, b = everything.records[0], half.records[0]
    assert b["n_pos"] + b["n_neg"] < 0.6 * (a["n_pos"] + a["n_neg"])
    assert b["fingerprint"] != a["fingerprint"] and b["where_sql"].startswith("CAST")
    with pytest.raises(QueryError, match="refused"):
        extract(store.root, "planted", where="1=1) ; DROP VIEW prompts; SELECT (1", cfg=ExtractConfig(n_boot=0))


def test_rank_and_heatmap(store_with_vectors, tmp_path):
    store, _ = store_with_vectors
    with StoreSQL(store) as q:
        best, floor = rank(q, "planted", "auroc", top=3)
        rows = best.to_pylist()
        assert len(rows) == 3 and all(r["method"] != "random" for r in rows)
        assert rows[0]["auroc"] >= rows[1]["auroc"] >= rows[2]["auroc"]
        allv = [r for r in store.table("vectors").to_pylist() if r["method"] != "random"]
        assert np.isclose(rows[0]["auroc"], max(r["auroc"] for r in allv))
        assert floor.to_pylist()[0]["method"] == "random"
        with pytest.raises(QueryError, match="rank by one of"):
            rank(q, "planted", "auroc; DROP VIEW x")
        with pytest.raises(QueryError, match="no vectors for trait 'nope'"):
            rank(q, "nope")
    png = tmp_path / "h.png"
    r = cli_run(store, "rank", "--trait", "planted", "--top", "4", "--plot", png)
    assert r.exit_code == 0, r.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "floor (random direction" in r.output
    import json
    import os

    here = os.getcwd()
    os.chdir(tmp_path)  # nothing is written unasked
    try:
        js = cli_run(store, "rank", "--trait", "planted", "--top", "3", "--format", "json")
    finally:
        os.chdir(here)
    assert js.exit_code == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["h.png"]
    doc = json.loads(js.output)
    assert [r["auroc"] for r in doc["rows"]] == sorted((r["auroc"] for r in doc["rows"]), reverse=True)
    assert len(doc["rows"]) == 3 and doc["floor"]["method"] == "random" and doc["by"] == "auroc"


def test_nearest_macro_and_output_formats(store_with_vectors, tmp_path):
    store, _ = store_with_vectors
    vecs = {r["vector_id"]: np.asarray(r["vector"]) for r in store.table("vectors").to_pylist()}
    vid = next(iter(vecs))
    with StoreSQL(store) as q:
        near = q.query(f"SELECT * FROM nearest('{vid}', 5)").to_pylist()
    want = sorted(((float(vecs[vid] @ v / np.linalg.norm(v) / np.linalg.norm(vecs[vid])), k)
                   for k, v in vecs.items() if k != vid), reverse=True)[:5]
    assert [r["vector_id"] for r in near] == [k for _, k in want]
    r = cli_run(store, "query", "SELECT layer, method, auroc FROM metrics ORDER BY layer, method LIMIT 4",
                "--format", "json")
    rows = json.loads(r.output)
    assert isinstance(rows, list) and set(rows[0]) == {"layer", "method", "auroc"}
    out = tmp_path / "v.parquet"
    r = cli_run(store, "query", "SELECT vector_id, vector FROM vectors", "--format", "parquet", "-o", out)
    assert r.exit_code == 0 and pq.read_table(out).num_rows == len(vecs)
    r = cli_run(store, "query", "SELECT vector_id, vector FROM vectors LIMIT 2", "--format", "csv")
    assert r.output.splitlines()[0] == '"vector_id","vector"' and len(r.output.splitlines()) == 3


def test_interactive_sql_prompt(store_with_vectors, tmp_path, monkeypatch):
    store, _ = store_with_vectors
    monkeypatch.setenv("TRAITLENS_HOME", str(tmp_path))
    r = CliRunner().invoke(cli, ["--store", str(store.root), "sql"],
                           input="SELECT count(*) AS n\nFROM prompts;\nDROP VIEW prompts;\n.tables\n.quit\n")
    assert r.exit_code == 0, r.output
    assert "300" in r.output and "refused" in r.output and "(1 rows)" in r.output
    assert (tmp_path / "sql_history").exists()


def test_steer_shift_is_the_best_strict_shift(tmp_path):
    from traitlens.store import tables

    store, _ = synthetic_store(tmp_path / "s", n=120, d=8, layers=(0,), sep=4.0)
    extract(store.root, "planted", ["mean_diff"], cfg=ExtractConfig(n_boot=0))
    vid = store.table("vectors")["vector_id"][0].as_py()
    rows = [{"vector_id": vid, "trait": "planted", "method": "mean_diff", "layer": 0, "alpha": a, "kind": k,
             "n": 4, "shift": shift} for a, k, shift in ((0.25, "refusal", 0.01), (0.5, "refusal", 0.03),
                                                          (0.5, "refusal_first_token", 0.15))]
    tables.write_part(store.tables_path / "steering", tables.rows_to_table(rows, tables.STEERING_SCHEMA),
                      tables.STEERING_SCHEMA)
    with StoreSQL(store) as q:
        got = q.query("SELECT steer_shift FROM metrics WHERE vector_id = ?", [vid]).to_pylist()
    assert got == [{"steer_shift": pytest.approx(0.03)}]  # the loose first-token measure does not count


def test_every_picker_picks_the_same_vector_and_ties_are_not_broken_by_layer(tmp_path):
    """AUROC saturates at 1.000 on every layer here: the pick must follow Cohen's d (computed
    independently below from the stored rows), and rank, steer/monitor, the workflow's
    evaluation and the in-memory rule must all agree on it."""
    from traitlens.pipeline.extract.config import ExtractConfig
    from traitlens.pipeline.extract.jobs import extract
    from traitlens.queries.ranking import rank
    from traitlens.queries.selection import best_per_method, best_vector, order_by, sort_key
    from traitlens.workflows.cli_steer import _pick_vector

    store, _ = synthetic_store(tmp_path / "s", n=400, d=16, layers=(0, 1, 2, 3), sep=12.0)
    res = extract(store.root, "planted", methods="mean_diff,probe,random", cfg=ExtractConfig(n_boot=2))
    real = [r for r in res.records if r["method"] != "random"]
    assert all(r["auroc"] == 1.0 for r in real)  # saturated: AUROC alone cannot choose
    want = max(real, key=lambda r: (r["cohens_d"], r["stability"]))
    with StoreSQL(store) as q:
        top = rank(q, "planted")[0].to_pylist()[0]
        picked = best_vector(q, "planted")
        by_method = best_vector(q, "planted", method="probe")
        ordered = [r["vector_id"] for r in q.query(
            f"SELECT * FROM metrics WHERE trait = 'planted' AND method <> 'random' ORDER BY {order_by()}").to_pylist()]
    assert top["vector_id"] == picked["vector_id"] == want["vector_id"]
    assert _pick_vector(store, "planted", KEY.model_key, None, None, None)["vector_id"] == want["vector_id"]
    assert by_method["vector_id"] == best_per_method(res.records)["probe"]["vector_id"]
    assert ordered == [r["vector_id"] for r in sorted(real, key=sort_key)]  # SQL and Python say the same rule
