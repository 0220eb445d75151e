"""`traitlens serve`: every endpoint against the store's own tables, read-only, the token gate,
and the pages in a real headless Chromium (Debian's chromium + chromium-driver, selenium).

The store is a real one: a tiny model's capture (last and tokens pooling), all six methods,
scores, a monitor run kept in the trajectories table and steering rows."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from traitlens.queries import StoreSQL
from traitlens.store import GroupKey, Store
from traitlens.testing import browser as browser_support
from traitlens.testing import write_corpus
from traitlens.workflows.cli import cli

starlette_testclient = pytest.importorskip("starlette.testclient", reason="pip install httpx (Starlette's test client)")


def run_cli(*args):
    r = CliRunner().invoke(cli, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r


@pytest.fixture(scope="module")
def dash_store(tmp_path_factory, tiny_llama):
    root = tmp_path_factory.mktemp("dash")
    store = root / "s"
    corpus = write_corpus(root / "kind.jsonl", 120)
    run_cli("--store", store, "ingest", corpus, "--model", tiny_llama, "--pooling", "last,tokens", "--quiet")
    run_cli("--store", store, "extract", "--trait", "kindness", "--n-boot", "2")
    run_cli("--store", store, "score", "--trait", "kindness", "--top", "0")
    run_cli("--store", store, "monitor", "I love helping people", "--trait", "kindness", "--model", tiny_llama,
            "--max-new-tokens", "6", "--keep", "--threshold", "-1000", "--velocity-tol", "1e9",
            "--plot", root / "m.png")  # a threshold and tolerance every token clears: it commits early
    s = Store.open(store)
    with StoreSQL(s) as q:
        vecs = q.query("SELECT vector_id, method, layer FROM metrics WHERE method IN ('probe', 'mean_diff') "
                       "AND layer = 1").to_pylist()
    from traitlens.store.runs import now_utc

    with s.lock("test"):  # steering rows as `evaluate --steering` writes them (the dashboard only reads)
        s.append("steering", [{"vector_id": v["vector_id"], "trait": "kindness", "method": v["method"],
                               "layer": v["layer"], "alpha": a, "kind": "persona", "n": 8, "scale": 1.0,
                               "unsteered": 0.1, "plus": 0.1 + a, "minus": 0.1 - a, "shift": 2 * a,
                               "ci_low": 2 * a - 0.1, "ci_high": 2 * a + 0.1, "wrong_way": 0.1, "kl": 0.01 * a * a,
                               "detail": "{}", "run_id": "r", "created_at": now_utc()}
                              for v in vecs for a in (0.5, 1.0, 2.0)])
    return store


@pytest.fixture(scope="module")
def client(dash_store):
    from traitlens.workflows.dashboard.app import create_app

    return starlette_testclient.TestClient(create_app(dash_store))


def test_overview_counts_equal_the_tables(client, dash_store):
    d = client.get("/api/overview").json()
    store = Store.open(dash_store)
    assert {g["path"]: g["prompts"] for g in d["groups"]} == {g.path: n for g, n in store.group_counts().items()}
    prompts = store.table("prompts").to_pylist()
    (t,) = d["traits"]
    assert (t["trait"], t["positive"], t["negative"]) == (
        "kindness", sum(p["label"] == 1 for p in prompts), sum(p["label"] == -1 for p in prompts))
    assert t["vectors"] == store.table("vectors").num_rows
    runs = store.runs().to_pylist()
    assert d["runs"]["total"] == len({r["run_id"] for r in runs}) and len(d["runs"]["items"]) == min(50, d["runs"]["total"])


def test_trait_grid_has_one_cell_per_layer_and_method_with_the_tables_metrics(client, dash_store):
    from traitlens.queries.selection import best_vector

    d = client.get("/api/traits/kindness").json()
    (g,) = d["groups"]
    assert g["pooling"] == "last" and g["layers"] == [0, 1, 2] and len(g["methods"]) == 6
    assert len(g["cells"]) == 18 == len({(c["layer"], c["method"]) for c in g["cells"]})
    vectors = {v["vector_id"]: v for v in Store.open(dash_store).table("vectors").to_pylist()}
    for c in g["cells"]:
        want = vectors[c["vector_id"]]
        assert (c["layer"], c["method"]) == (want["layer"], want["method"])
        assert c["auroc"] == pytest.approx(want["auroc"]) and c["cohens_d"] == pytest.approx(want["cohens_d"])
    with StoreSQL(dash_store) as q:
        assert d["pick"] == best_vector(q, "kindness")["vector_id"]
    # the floors beside the grid: the best random direction's AUROC, and the pick's nuisance floors
    randoms = [v["auroc"] for v in vectors.values() if v["method"] == "random"]
    assert len(randoms) == 3 and d["floors"]["random"] == pytest.approx(max(randoms))
    assert d["floors"]["length"] == pytest.approx(vectors[d["pick"]]["floor_length"])
    assert d["floors"].get("dataset") == vectors[d["pick"]]["floor_dataset"]  # one dataset: no dataset floor
    assert len(d["steering"]) == 6 and {s["shift"] for s in d["steering"]} == {1.0, 2.0, 4.0}
    assert len(d["top_scores"]) == 20 and d["top_scores"][0]["score"] >= d["top_scores"][-1]["score"]
    assert client.get("/api/traits/nope").status_code == 404
    assert "by=" in client.get("/api/traits/kindness?by=wrong").json()["error"]


def test_vector_page_data_and_exports_equal_the_stored_vector(client, dash_store):
    from safetensors.numpy import load

    store = Store.open(dash_store)
    v = next(r for r in store.table("vectors").to_pylist() if r["method"] == "probe" and r["layer"] == 1)
    d = client.get(f"/api/vectors/{v['vector_id']}").json()
    assert d["vector"]["trait"] == "kindness" and d["metrics"]["auroc"] == pytest.approx(v["auroc"])
    assert len(d["steering"]) == 3 and d["scores"]["n"] == 0  # scores are on the pick, which is another vector
    with StoreSQL(store) as q:
        assert [n["vector_id"] for n in d["nearest"]] == \
            [r["vector_id"] for r in q.query("SELECT * FROM nearest(?, 10)", [v["vector_id"]]).to_pylist()]
    r = client.get(f"/api/vectors/{v['vector_id']}/export?format=safetensors")
    assert r.status_code == 200 and "attachment" in r.headers["content-disposition"]
    (arr,) = load(r.content).values()
    np.testing.assert_allclose(arr.reshape(-1), np.asarray(v["vector"], np.float32), rtol=1e-6)
    g = client.get(f"/api/vectors/{v['vector_id']}/export?format=gguf")
    assert g.status_code == 200 and g.content[:4] == b"GGUF"
    assert client.get("/api/vectors/0000/export").status_code == 404


def test_held_out_token_projections_equal_the_stored_token_rows_projected(client, dash_store):
    store = Store.open(dash_store)
    with StoreSQL(store) as q:
        pick = q.query("SELECT vector_id, layer, vector, model_key, fmt, site FROM vectors "
                       "WHERE method = 'probe' AND layer = 2").to_pylist()[0]
    d = client.get(f"/api/vectors/{pick['vector_id']}/tokens").json()
    assert d["available"] and d["items"]
    key = GroupKey(pick["model_key"], pick["fmt"], pick["site"], "tokens")
    rows = {r["prompt_id"]: r for r in store.group_rows(key).to_pylist()}
    X = store.activations(key, 2)
    u = np.asarray(pick["vector"], np.float64)
    for item in d["items"]:
        r = rows[item["prompt_id"]]
        want = X[r["token_start"]:r["token_start"] + r["token_count"]] @ u
        np.testing.assert_allclose([t["projection"] for t in item["tokens"]], want, rtol=1e-6, atol=1e-9)
    held = {p["prompt_id"] for p in store.table("prompts").to_pylist() if p["split"] == d["split"]}
    assert {i["prompt_id"] for i in d["items"]} <= held  # held-out prompts only
    assert any(t["token"] != f"<{t['token_id']}>" for t in d["items"][0]["tokens"])  # decoded by the tokenizer


def test_trajectories_endpoint_returns_the_kept_rows(client, dash_store):
    d = client.get("/api/trajectories").json()
    rows = Store.open(dash_store).table("trajectories").to_pylist()
    assert d["total"] == 1 and len(d["items"][0]["tokens"]) == len(rows)
    assert [t["projection"] for t in d["items"][0]["tokens"]] == \
        pytest.approx([r["projection"] for r in sorted(rows, key=lambda r: r["position"])])
    assert d["items"][0]["commitment"] == rows[0]["commitment"]


def test_nothing_can_write_through_the_dashboard(client, dash_store):
    before = sorted(str(p.relative_to(dash_store)) for p in dash_store.rglob("*"))
    for method in ("post", "put", "delete", "patch"):
        for path in ("/api/sql?q=SELECT%201", "/api/overview", "/api/vectors/x", "/"):
            assert getattr(client, method)(path).status_code == 405
    for bad in ("DROP TABLE prompts", "COPY prompts TO '/tmp/x.csv'", "INSERT INTO runs VALUES (1)"):
        r = client.get("/api/sql", params={"q": bad})
        assert r.status_code == 400 and "refused" in r.json()["error"]
    ok = client.get("/api/sql", params={"q": "SELECT count(*) AS n FROM prompts"}).json()
    assert ok["rows"] == [{"n": 120}]
    csv = client.get("/api/sql.csv", params={"q": "SELECT prompt_id FROM prompts ORDER BY prompt_id"})
    assert csv.text.splitlines()[0] == '"prompt_id"' and len(csv.text.splitlines()) == 121
    assert sorted(str(p.relative_to(dash_store)) for p in dash_store.rglob("*")) == before


def test_a_non_loopback_bind_needs_a_token_and_then_every_request_does(dash_store):
    from traitlens.workflows.dashboard.app import create_app

    r = CliRunner().invoke(cli, ["--store", str(dash_store), "serve", "--host", "0.0.0.0"])
    assert r.exit_code == 2 and "--token" in r.output
    c = starlette_testclient.TestClient(create_app(dash_store, token="s3cret"))
    assert c.get("/api/overview").status_code == 401
    assert c.get("/api/overview", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert c.get("/api/overview", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    first = c.get("/?token=s3cret")
    assert first.status_code == 200 and "traitlens_token" in first.headers.get("set-cookie", "")
    assert c.get("/api/overview").status_code == 200  # the cookie now carries it


# ------------------------------------------------------------------------------ in a browser
@pytest.fixture(scope="module")
def served(dash_store):
    from traitlens.workflows.dashboard.app import create_app

    with browser_support.served(create_app(dash_store)) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    missing = browser_support.browser_missing()
    if missing:
        pytest.skip(missing)
    b = browser_support.headless_chromium()
    yield b
    b.quit()


_wait = browser_support.wait_for


@pytest.mark.slow
def test_the_pages_in_a_browser(browser, served, dash_store, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(served + "/#/")
    _wait(browser, "#traits a")
    browser.save_screenshot(str(tmp_path / "overview.png"))
    assert "kindness" in browser.find_element(By.ID, "traits").text

    browser.get(served + "/#/trait/kindness")
    cells = _wait(browser, "svg.heatmap rect.cell", 18)
    assert len(cells) == 18  # one per (layer, method): 3 layers x 6 methods
    assert len({(c.get_attribute("data-layer"), c.get_attribute("data-method")) for c in cells}) == 18
    plot = browser.find_element(By.CSS_SELECTOR, "svg.steering")  # shift against KL: the Pareto view
    assert plot.get_attribute("data-mode") == "pareto" and len(plot.find_elements(By.CSS_SELECTOR, "circle")) == 6
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(browser).move_to_element(cells[0]).perform()  # hover: every metric of the cell
    tip = browser.find_element(By.ID, "tooltip")
    assert all(m in tip.text for m in ("auroc:", "cohens_d:", "stability:", "floor_length:"))
    assert cells[0].get_attribute("data-vector-id") in tip.text
    browser.save_screenshot(str(tmp_path / "trait.png"))
    target = next(c for c in cells if c.get_attribute("data-method") == "probe" and c.get_attribute("data-layer") == "2")
    vid = target.get_attribute("data-vector-id")
    target.click()
    _wait(browser, "#provenance")
    assert browser.current_url.endswith(f"#/vector/{vid}") and vid in browser.find_element(By.ID, "provenance").text
    browser.save_screenshot(str(tmp_path / "vector.png"))

    kept = Store.open(dash_store).table("trajectories").to_pylist()
    tv = kept[0]["vector_id"]  # the vector the monitor run projected on: its page shows both kinds of rows
    browser.get(served + f"/#/tokens/{tv}")
    spans = _wait(browser, "#held .tok", 3)
    values = [float(s.get_attribute("data-projection")) for s in spans]
    import json
    import urllib.request

    want = json.load(urllib.request.urlopen(f"{served}/api/vectors/{tv}/tokens"))
    assert values == pytest.approx([t["projection"] for i in want["items"] for t in i["tokens"]])
    colours = {s.value_of_css_property("background-color") for s in spans}
    assert len(colours) > 3  # coloured by value, not one colour for all
    reddest = max(spans, key=lambda s: float(s.get_attribute("data-projection")))
    bluest = min(spans, key=lambda s: float(s.get_attribute("data-projection")))
    rgb = [tuple(int(x) for x in s.value_of_css_property("background-color").split("(")[1].split(")")[0].split(",")[:3])
           for s in (reddest, bluest)]
    assert rgb[0][0] > rgb[0][2] and rgb[1][2] > rgb[1][0]  # toward the trait red, away blue
    traj = browser.find_elements(By.CSS_SELECTOR, "#traj .tok")
    assert len(traj) == len(kept)  # the monitor run's tokens, each coloured too
    commit = kept[0]["commitment"]
    assert commit is not None  # (the fixture's monitor run commits)
    marked = browser.find_elements(By.CSS_SELECTOR, "#traj .tok.commit")
    assert len(marked) == 1 and float(marked[0].get_attribute("data-projection")) == pytest.approx(
        next(r["projection"] for r in kept if r["position"] == commit))
    browser.save_screenshot(str(tmp_path / "tokens.png"))

    browser.get(served + "/#/sql")
    box = _wait(browser, "#sql-text")[0]
    box.clear()
    box.send_keys("DROP TABLE prompts")
    browser.find_element(By.ID, "sql-run").click()
    err = _wait(browser, "#sql-error:not([hidden])")[0]
    assert "refused" in err.text and "read-only" in err.text
    box.clear()
    box.send_keys("SELECT trait, count(*) AS n FROM prompts GROUP BY trait")
    browser.find_element(By.ID, "sql-run").click()
    _wait(browser, "#sql-table")
    assert "120" in browser.find_element(By.ID, "sql-table").text
    browser.save_screenshot(str(tmp_path / "sql.png"))
    for name in ("overview", "trait", "vector", "tokens", "sql"):
        assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG"


def test_the_console_sends_a_page_of_rows_never_the_whole_answer(dash_store):
    from traitlens.workflows.dashboard import data

    with StoreSQL(dash_store) as q:
        d = data.sql(q, "SELECT prompt_id FROM prompts ORDER BY prompt_id;", limit=10)
        assert d["truncated"] and d["rows_total"] is None and len(d["rows"]) == 10  # run with a LIMIT
        want = sorted(p["prompt_id"] for p in Store.open(dash_store).table("prompts").to_pylist())[:10]
        assert [r["prompt_id"] for r in d["rows"]] == want
        many = data.sql(q, "SELECT 1; SELECT prompt_id FROM prompts", limit=10)  # not a lone SELECT: counted
        assert many["truncated"] and many["rows_total"] == 120 and len(many["rows"]) == 10


# ------------------------------------------------------------------------------ bad requests
@pytest.fixture(scope="module")
def slash_client(tmp_path_factory):
    """A store whose one trait is named ``a/b/c``, with no steering rows (synthetic, no model)."""
    from traitlens.pipeline.extract.jobs import ExtractConfig, extract
    from traitlens.testing import synthetic_store
    from traitlens.workflows.dashboard.app import create_app

    store, _ = synthetic_store(tmp_path_factory.mktemp("slash") / "s", n=160, d=8, layers=(0, 1), trait="a/b/c")
    extract(store.root, "a/b/c", ["mean_diff", "random"], cfg=ExtractConfig(n_boot=0))
    return starlette_testclient.TestClient(create_app(store.root)), store


def test_a_trait_named_with_slashes_opens(slash_client):
    c, store = slash_client
    r = c.get("/api/traits/a%2Fb%2Fc")
    assert r.status_code == 200, r.text
    assert r.json()["trait"] == "a/b/c" and len(r.json()["groups"][0]["cells"]) == 4


def test_ranking_by_steering_without_steering_rows_is_not_a_server_error(slash_client):
    c, _ = slash_client
    r = c.get("/api/traits/a%2Fb%2Fc?by=steering")
    assert r.status_code == 200, r.text
    assert r.json()["floors"]["random"] is None  # nothing measured: null, not a crash


def test_the_gguf_of_a_layer_0_vector_is_a_400_saying_why_and_easysteer_keeps_it(slash_client):
    c, store = slash_client
    v0 = next(v for v in store.table("vectors").to_pylist() if v["layer"] == 0 and v["method"] == "mean_diff")
    r = c.get(f"/api/vectors/{v0['vector_id']}/export?format=gguf")
    assert r.status_code == 400 and "layer 0" in r.json()["error"] and "easysteer" in r.json()["error"]
    e = c.get(f"/api/vectors/{v0['vector_id']}/export?format=easysteer")
    assert e.status_code == 200 and e.content[:4] == b"GGUF"
    import gguf

    path = store.root.parent / "e.gguf"
    path.write_bytes(e.content)
    (t,) = gguf.GGUFReader(str(path)).tensors
    np.testing.assert_allclose(np.asarray(t.data).reshape(-1), np.asarray(v0["vector"], np.float32))


@pytest.mark.parametrize("page,status,words", [(-5, 400, "from 0"), (10**20, 400, "from 0"), ("x", 400, "whole number"),
                                               (999, 404, "past the last page")])
def test_pages_out_of_range_are_clear_errors(slash_client, page, status, words):
    c, _ = slash_client
    for path in ("/api/runs", "/api/overview", "/api/trajectories"):
        r = c.get(path, params={"page": page})
        assert r.status_code == status, (path, r.text)
        assert words in r.json()["error"] and "Conversion Error" not in r.json()["error"], r.json()
    assert c.get("/api/runs", params={"page": 0}).status_code == 200


def test_the_csv_download_is_capped_like_the_page_and_says_so(slash_client):
    from traitlens.workflows.dashboard.data import SQL_ROWS

    c, _ = slash_client
    r = c.get("/api/sql.csv", params={"q": "SELECT range AS i FROM range(5000)"})
    assert r.status_code == 200
    lines = r.text.splitlines()
    assert len(lines) == SQL_ROWS + 1 and lines[1] == "0"  # the header and the first SQL_ROWS rows, in order
    assert r.headers["x-traitlens-truncated"] == "true" and r.headers["x-traitlens-row-limit"] == str(SQL_ROWS)
    assert f"first-{SQL_ROWS}-rows" in r.headers["content-disposition"]
    small = c.get("/api/sql.csv", params={"q": "SELECT range AS i FROM range(7)"})
    assert len(small.text.splitlines()) == 8 and small.headers["x-traitlens-truncated"] == "false"
