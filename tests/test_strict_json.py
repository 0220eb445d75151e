"""Every JSON traitlens prints, writes or serves is strict: no ``NaN`` or ``Infinity`` literal
(JavaScript, jq, Go and serde reject them): a missing value is ``null``, and the reason is said.

The store holds what makes NaN in practice: ``--n-boot 0`` (stability NaN), one method per
layer (agreement NaN), a steering row whose intervals are NaN (one sample), and a vector an
older traitlens stored with NaN values. Each output is parsed by the tests' strict reader
(``traitlens.testing.strict_json``), which refuses the three non-standard constants. Records
say why beside the null (``null_reasons``); cards gather the reasons under ``nulls``.
"""

from __future__ import annotations

import math

import pytest
from click.testing import CliRunner

from traitlens.pipeline.extract.jobs import ExtractConfig, extract
from traitlens.store import Store
from traitlens.store.runs import now_utc
from traitlens.testing import strict_json, synthetic_store
from traitlens.workflows.cli import cli


def run(store, *args):
    r = CliRunner().invoke(cli, ["--store", str(store), *map(str, args)])
    assert "Traceback" not in r.output, r.output
    return r


@pytest.fixture(scope="module")
def nan_store(tmp_path_factory):
    store, _ = synthetic_store(tmp_path_factory.mktemp("sj") / "s", n=200, d=8, layers=(0, 1, 2), sep=3.0)
    extract(store.root, "planted", ["mean_diff"], cfg=ExtractConfig(n_boot=0))
    vecs = store.table("vectors").to_pylist()
    assert all(math.isnan(v["stability"]) and math.isnan(v["agreement"]) for v in vecs)  # what the test is about
    v = next(v for v in vecs if v["layer"] == 1)
    with store.lock("test"):
        store.append("steering", [{"vector_id": v["vector_id"], "trait": "planted", "method": "mean_diff", "layer": 1,
                                   "alpha": 0.5, "kind": "persona", "n": 1, "scale": 1.0, "unsteered": 0.1, "plus": 0.3,
                                   "minus": -0.1, "shift": 0.4, "ci_low": math.nan, "ci_high": math.nan,
                                   "wrong_way": 0.0, "kl": 0.01, "kl_low": math.nan, "kl_high": math.nan,
                                   "detail": "{}", "run_id": "r", "created_at": now_utc()}])
        store.append("vectors", [{**v, "vector_id": "legacynanvector", "method": "legacy",
                                  "vector": [math.nan] * v["d"], "created_at": now_utc()}])
    r = run(store.root, "score", "--trait", "planted", "--top", "0")
    assert r.exit_code == 0, r.output
    return store.root


@pytest.mark.parametrize("args", [
    ("vectors", "--format", "json"),
    ("rank", "--trait", "planted", "--format", "json"),
    ("rank", "--trait", "planted", "--format", "json", "--by", "stability"),
    ("audit", "--trait", "planted", "--format", "json"),
    ("query", "SELECT * FROM metrics", "--format", "json"),
    ("query", "SELECT * FROM steering", "--format", "json"),
    ("query", "SELECT vector_id, vector FROM vectors", "--format", "json"),
])
def test_printed_json_is_strict(nan_store, args):
    r = run(nan_store, *args)
    assert r.exit_code == 0, r.output
    strict_json(r.output)


def test_verify_json_is_strict(nan_store):
    r = run(nan_store, "verify", "--json")
    assert r.exit_code == 1  # the legacy NaN vector is reported
    assert any("legacynanvector" in e for e in strict_json(r.output)["errors"])


def test_a_missing_value_is_null_with_its_reason(nan_store):
    rows = strict_json(run(nan_store, "query", "SELECT vector_id, stability, ci_low FROM metrics JOIN steering "
                      "USING (vector_id)", "--format", "json").output)
    (row,) = rows
    assert row["stability"] is None and row["ci_low"] is None
    assert row["null_reasons"] == {"stability": "NaN", "ci_low": "NaN"}


def test_written_json_files_are_strict(nan_store, tmp_path):
    out = tmp_path / "q.json"
    assert run(nan_store, "query", "SELECT * FROM metrics", "--format", "json", "-o", out).exit_code == 0
    assert len(strict_json(out.read_text())) == Store.open(nan_store).table("vectors").num_rows
    top = tmp_path / "top.jsonl"
    assert run(nan_store, "score", "--trait", "planted", "--top", "5", "-o", top).exit_code == 0
    lines = top.read_text().splitlines()
    assert len(lines) == 5 and all(strict_json(line)["score"] is not None for line in lines)


def test_csv_list_cells_are_strict_json(nan_store):
    import csv
    import io

    r = run(nan_store, "query", "SELECT vector_id, vector FROM vectors", "--format", "csv")
    assert r.exit_code == 0, r.output
    cells = {row["vector_id"]: strict_json(row["vector"]) for row in csv.DictReader(io.StringIO(r.output))}
    assert cells["legacynanvector"] == [None] * len(cells["legacynanvector"])


@pytest.mark.parametrize("fmt,suffix", [("safetensors", "safetensors"), ("gguf", "gguf"), ("easysteer", "gguf")])
def test_export_cards_are_strict(nan_store, tmp_path, fmt, suffix):
    out = tmp_path / f"v.{suffix}"
    r = run(nan_store, "export", "--trait", "planted", "--format", fmt, "-o", out)
    assert r.exit_code == 0, r.output
    if suffix == "gguf":
        import gguf

        raw = bytes(gguf.GGUFReader(str(out)).get_field("traitlens.card").parts[-1]).decode()
    else:
        from safetensors import safe_open

        with safe_open(str(out), "numpy") as f:
            raw = f.metadata()["traitlens.card"]
    card = strict_json(raw)
    entry = card["layers"]["1"]
    assert entry["stability"] is None and card["nulls"]["layers.1.stability"].startswith("not a finite number (nan)")
    assert entry["steering"]["shift"] == 0.4 and entry["steering"]["ci_low"] is None


def test_every_dashboard_answer_is_strict(nan_store):
    from starlette.testclient import TestClient

    from traitlens.workflows.dashboard.app import create_app

    c = TestClient(create_app(nan_store))
    ids = [v["vector_id"] for v in Store.open(nan_store).table("vectors").to_pylist()]
    paths = ["/api/overview", "/api/runs", "/api/traits/planted", "/api/traits/planted?by=stability",
             "/api/traits/planted?by=steering", "/api/trajectories", "/api/sql?q=SELECT%20*%20FROM%20metrics",
             "/api/sql?q=SELECT%20*%20FROM%20steering"] + [f"/api/vectors/{i}" for i in ids]
    for p in paths:
        r = c.get(p)
        assert r.status_code == 200, (p, r.text)
        strict_json(r.text)
    v1 = next(v for v in Store.open(nan_store).table("vectors").to_pylist() if v["method"] == "mean_diff"
              and v["layer"] == 1)
    metrics = strict_json(c.get(f"/api/vectors/{v1['vector_id']}").text)["metrics"]  # null, with what it was beside it
    assert metrics["stability"] is None and metrics["null_reasons"] == {"stability": "NaN", "agreement": "NaN"}
    assert metrics["auroc"] == pytest.approx(v1["auroc"])


def test_the_two_forms_of_a_reason():
    """Records say why beside the null; documents gather every reason under ``nulls``, keeping
    the ones their writer gave for its own nulls."""
    import numpy as np

    from traitlens.store.strict_json import clean, document, dumps

    rows = [{"a": math.nan, "b": [1.0, math.inf], "c": np.float32(2.5), "d": None}, {"a": 0.5}]
    assert clean(rows) == [{"a": None, "b": [1.0, None], "c": 2.5, "d": None,
                            "null_reasons": {"a": "NaN", "b": "Infinity"}}, {"a": 0.5}]
    assert strict_json(dumps(rows))[0]["b"] == [1.0, None]
    doc = document({"layers": {"1": {"stability": math.nan, "auroc": np.float64(0.9)}}, "steering": None,
                    "nulls": {"steering": "not evaluated"}}, " here")
    assert doc == {"layers": {"1": {"stability": None, "auroc": 0.9}}, "steering": None,
                   "nulls": {"steering": "not evaluated", "layers.1.stability": "not a finite number (nan) here"}}
