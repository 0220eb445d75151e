"""Stores on object storage through fsspec URLs, exercised on fsspec's in-memory filesystem.

``memory://`` runs the same code path as ``s3://`` or ``gs://`` (UPath, whole-object part
uploads, zarr's FsspecStore, the lease lock, pyarrow datasets under DuckDB), minus the network.
"""

from __future__ import annotations

import json
import time
import uuid

import numpy as np
import pytest
from click.testing import CliRunner

from traitlens.testing import write_corpus
from traitlens.pipeline.extract.config import ExtractConfig
from traitlens.pipeline.extract.jobs import extract
from traitlens.pipeline.capture.ingest import IngestConfig, ingest
from traitlens.queries import StoreSQL
from traitlens.store import GroupKey, PendingBatch, Store, StoreLocked, verify
from traitlens.store.location import capabilities, store_path
from traitlens.workflows.cli import cli


@pytest.fixture
def url():
    """A fresh bucket per test (the memory filesystem is process-wide)."""
    u = f"memory://traitlens-test-{uuid.uuid4().hex[:8]}/store"
    yield u
    p = store_path(u)
    if p.exists():
        p.fs.rm(p.path, recursive=True)


def test_url_store_holds_what_a_local_store_holds(tmp_path, tiny_lms, url):
    lm = tiny_lms["llama"]
    c = write_corpus(tmp_path / "c.jsonl", 120)
    cfg = IngestConfig(chunk_rows=8, poolings=["last", "mean"])
    local = ingest(tmp_path / "s", [c], cfg=cfg, lm=lm, progress=False)
    remote = ingest(url, [c], cfg=cfg, lm=lm, progress=False)
    assert local.n_captured == remote.n_captured == 120
    a, b = Store.open(tmp_path / "s"), Store.open(url)
    assert not capabilities(b.root).local_files and not list(tmp_path.glob("memory*"))  # nothing leaked onto the local disk
    assert a.groups() == b.groups()
    for g in a.groups():
        assert a.group_rows(g)["prompt_id"].to_pylist() == b.group_rows(g)["prompt_id"].to_pylist()
        for layer in a.layers(g):
            np.testing.assert_array_equal(a.activations(g, layer), b.activations(g, layer))
    # parts are whole objects under their final names: no temporaries to clean up
    assert not [p for p in (b.root / "tables").rglob("*") if p.name.startswith(".tmp-")]
    assert verify(b).clean
    # a rerun captures nothing and writes nothing
    again = ingest(url, [c], cfg=cfg, lm=lm, progress=False)
    assert again.n_captured == 0
    # extraction and SQL read the URL store and agree with the local one
    va = {(r["layer"], r["method"]): r for r in extract(a.root, "kindness", ["mean_diff", "probe"],
                                                         cfg=ExtractConfig(n_boot=0)).records}
    vb = {(r["layer"], r["method"]): r for r in extract(url, "kindness", ["mean_diff", "probe"],
                                                         cfg=ExtractConfig(n_boot=0)).records}
    assert va.keys() == vb.keys()
    for k in va:
        np.testing.assert_allclose(va[k]["vector"], vb[k]["vector"], atol=1e-5)
    with StoreSQL(url) as q:
        n = q.query("SELECT count(*) AS n FROM vectors WHERE trait = 'kindness'")["n"][0].as_py()
        joined = q.query("SELECT count(*) AS n FROM act_0_L1 JOIN prompts USING (prompt_id)")["n"][0].as_py()
    assert n == len(vb) and joined == 120


def test_float32_promotion_on_object_storage(url):
    key = GroupKey("m-abc", "raw", "resid", "last")
    s = Store.open(url, create=True)
    ids = [f"p{i}" for i in range(4)]
    s.add_prompts([{"prompt_id": p, "text": p, "dataset": "d", "trait": "t", "label": 1, "split": "train"} for p in ids])
    big = np.full((2, 8), 1e6, np.float32)
    small = np.ones((2, 8), np.float32)

    def batch(part, values):
        return PendingBatch(prompt_ids=part, token_counts=np.full(2, 3, np.int32), truncated=np.zeros(2, np.int32),
                            responses=[None, None], pooled={("resid", "last"): {0: values}})

    w = s.writer([key], [0], 8, "r", chunk_rows=2)
    w.add(batch(ids[:2], small))
    w.add(batch(ids[2:], big))
    w.commit()
    assert w.promoted == [f"{key.path}/L0"]
    np.testing.assert_array_equal(Store.open(url).activations(key, 0), np.concatenate([small, big]))
    names = [p.name for p in (s.root / "activations.zarr").rglob("*")]
    assert not [n for n in names if n.endswith((".old", ".f32tmp"))]
    assert verify(s).clean


def test_lease_lock_blocks_expires_renews_and_releases(url, monkeypatch):
    s = Store.open(url, create=True)
    lease = s.root / ".lock"
    # a live lease held by another host blocks, and the message says who and until when
    lease.write_text(json.dumps({"token": "other", "pid": 4242, "host": "node-7", "what": "ingest",
                                 "since": "2026-01-01T00:00:00", "expires": time.time() + 60}))
    with pytest.raises(StoreLocked, match=r"pid 4242 on node-7, ingest .*lease runs to"):
        with s.lock("test"):
            pass
    # an expired lease (its writer died and stopped renewing) is taken over
    lease.write_text(json.dumps({"token": "dead", "pid": 1, "host": "gone", "expires": time.time() - 1}))
    monkeypatch.setenv("TRAITLENS_LEASE_SECONDS", "0.6")
    with s.lock("test"):
        first = json.loads(lease.read_text())
        assert first["pid"] != 1 and first["what"] == "test"
        time.sleep(0.8)  # longer than the lease: the heartbeat must have renewed it
        renewed = json.loads(lease.read_text())
        assert renewed["token"] == first["token"] and renewed["expires"] > first["expires"]
        assert renewed["expires"] > time.time()
        with s.lock("nested"):  # re-entrant within the process
            pass
    assert not lease.exists()  # released
    # a run whose renewals stalled past expiry finds another run's lease: it neither overwrites
    # nor deletes it
    with pytest.warns(RuntimeWarning, match="taken over by pid 7"):
        with s.lock("test"):
            lease.write_text(json.dumps({"token": "next", "pid": 7, "host": "h", "expires": time.time() + 60}))
            time.sleep(0.5)
            assert json.loads(lease.read_text())["token"] == "next"
    assert json.loads(lease.read_text())["token"] == "next"


def test_cli_reads_and_writes_url_stores(tmp_path, tiny_gpt2, url):
    c = write_corpus(tmp_path / "c.jsonl", 10)
    run = CliRunner().invoke
    r = run(cli, ["--store", url, "ingest", str(c), "--model", str(tiny_gpt2), "--layers", "0,1", "--quiet"])
    assert r.exit_code == 0, r.output
    info = run(cli, ["--store", url, "info"]).output
    assert f"store: {url}" in info and "resid/last: 10 prompts, 2 layers" in info
    q = run(cli, ["--store", url, "query", "SELECT count(*) AS n FROM prompts", "--format", "csv"])
    assert q.exit_code == 0 and q.output.split() == ['"n"', "10"], q.output
    assert run(cli, ["--store", url, "verify"]).exit_code == 0


def test_unknown_protocol_is_a_clear_error():
    r = CliRunner().invoke(cli, ["--store", "nosuchfs://bucket/store", "info"])
    assert r.exit_code == 2 and "cannot open store URL nosuchfs://bucket/store" in r.output


@pytest.fixture(scope="module")
def s3_bucket():
    """A real S3 protocol endpoint (moto's server on localhost) for s3fs; env vars reach Dask workers."""
    pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")
    import logging
    import os

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    s3fs.S3FileSystem().mkdir("traitlens-ci")
    try:
        yield "s3://traitlens-ci"
    finally:
        server.stop()
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        s3fs.S3FileSystem.clear_instance_cache()


@pytest.mark.slow  # real processes or a cluster: `make test-fast` leaves it out
def test_s3_store_on_a_local_cluster_gives_the_local_vectors(tmp_path, tiny_llama, s3_bucket):
    """The whole workflow against S3 (moto): capture sharded over worker processes, extraction tasks
    reading Zarr from the bucket themselves; vectors equal a local run's."""
    from distributed import LocalCluster

    from test_workflows import make_spec, run_cli

    local, remote = tmp_path / "a", tmp_path / "b"
    local.mkdir()
    remote.mkdir()
    url = f"{s3_bucket}/wf-{uuid.uuid4().hex[:6]}"
    assert run_cli("run", make_spec(local, tiny_llama), "--quiet").exit_code == 0
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        r = run_cli("run", make_spec(remote, tiny_llama, store=url), "--quiet", "--scheduler", cluster.scheduler_address)
    assert r.exit_code == 0, r.output
    a = {(v["trait"], v["layer"], v["method"]): v for v in Store.open(local / "store").table("vectors").to_pylist()}
    b = {(v["trait"], v["layer"], v["method"]): v for v in Store.open(url).table("vectors").to_pylist()}
    assert a.keys() == b.keys() and len(a) == 18
    for k in a:
        np.testing.assert_allclose(a[k]["vector"], b[k]["vector"], atol=1e-6)
    s = Store.open(url)
    assert verify(s).clean and not (s.root / ".lock").exists()
    ingest_run = next(r for r in s.runs().to_pylist() if r["stage"] == "ingest")
    assert json.loads(ingest_run["counts"])["workers_write"] is True  # the workers wrote their chunks to S3
    r = run_cli("refresh", make_spec(remote, tiny_llama, store=url), "--quiet")
    assert r.exit_code == 0 and "nothing to do" in r.output


def test_lost_rows_part_and_damaged_part_on_object_storage(tmp_path, tiny_lms, url):
    """verify and --repair keep their promise on object storage: a lost rows part is never a
    tail, repair moves its rows and a damaged part to quarantine/, a re-ingest recovers."""
    lm = tiny_lms["llama"]
    c = write_corpus(tmp_path / "c.jsonl", 40)
    cfg = IngestConfig(chunk_rows=8, poolings=["last"])
    ingest(url, [c], cfg=cfg, lm=lm, progress=False)
    s = Store.open(url)
    key = s.groups()[0]
    original = s.activations(key, 1)
    parts = sorted((s.tables_path / "rows").glob("part-*.parquet"))
    parts[-1].unlink()  # the newest commit's record
    runs = sorted((s.tables_path / "runs").glob("part-*.parquet"))
    runs[0].write_bytes(runs[0].read_bytes()[:40])  # a truncated object
    rep = verify(s)
    assert any("no rows record" in e for e in rep.errors) and any(runs[0].name in e for e in rep.errors)
    rep = verify(s, repair=True)
    assert len(rep.quarantined) == 2 and not rep.errors, rep
    n = s.committed(key).n_prompts
    saved = [p for p in (s.root / "quarantine").rglob("*.npy") if "L1" in p.name]
    assert len(saved) == 1
    import io

    np.testing.assert_array_equal(np.load(io.BytesIO(saved[0].read_bytes())).astype(np.float32), original[n:])
    assert verify(s).clean
    assert ingest(url, [c], cfg=cfg, lm=lm, progress=False).n_captured == 40 - n
    assert verify(s).clean
    np.testing.assert_allclose(s.activations(key, 1), original, rtol=1e-3, atol=1e-3)


def test_compaction_on_object_storage(url):
    """The same atomic switch without renames: the base is one whole PUT, then the manifest."""
    s = Store.open(url, create=True)
    for i in range(70):
        s.append("runs", [{"run_id": f"r{i:02d}", "stage": "x", "status": "done"}])  # no lock held: not merged yet
    table_dir = s.root / "tables" / "runs"
    assert len(list(table_dir.glob("part-*"))) == 70
    want = s.table("runs")
    with s.lock("test"):
        s.append("runs", [{"run_id": "r70", "stage": "x", "status": "done"}])  # the 71st append merges all of them
    names = sorted(p.name for p in table_dir.iterdir())
    assert any(n.startswith("base-") for n in names) and "_manifest.json" in names
    got = s.table("runs")
    assert got.slice(0, 70).equals(want) and got.num_rows == 71
    s.compact(grace=0)
    assert len([p for p in table_dir.iterdir() if p.name.startswith("base-")]) == 1
    assert not list(table_dir.glob("part-*"))
    with StoreSQL(url) as q:
        assert q.query("SELECT count(DISTINCT run_id) AS n FROM runs")["n"][0].as_py() == 71
    assert verify(s).clean
