"""Store integrity: what a careless user does to a store, and what must hold after it.

Each test is one case of the store's promise: no ordinary command loses, corrupts or silently
zeros stored data; every kind of damage is seen by ``verify`` and named in one line; bad input
fails before anything is written. Stores are copies of one good store on a tiny model.
"""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from traitlens.testing import write_corpus
from traitlens.store import GroupKey, Store, StoreError, verify
from traitlens.store.store import COMMITTED_ATTR
from traitlens.workflows.cli import cli


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def snapshot(root) -> dict[str, str]:
    """Every file under a store (but the lock) -> its content hash."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


N = 600  # prompts in the good store: three commits (256-row chunks), so one can be lost alone


@pytest.fixture(scope="module")
def good(tmp_path_factory, tiny_llama):
    """A store of N prompts, all 3 layers, last+mean, and the corpus it came from."""
    d = tmp_path_factory.mktemp("good")
    corpus = write_corpus(d / "base.jsonl", N)
    r = run("--store", d / "s", "ingest", corpus, "--model", tiny_llama, "--quiet", "--batch-size", "16")
    assert r.exit_code == 0, r.output
    return d / "s", corpus


@pytest.fixture
def store(good, tmp_path):
    """A fresh copy of the good store for one test to damage."""
    shutil.copytree(good[0], tmp_path / "s")
    return tmp_path / "s"


def only_group(path, pooling="last") -> GroupKey:
    return next(g for g in Store.open(path).groups() if g.pooling == pooling)


def ingest(store, corpus, model, *extra):
    return run("--store", store, "ingest", corpus, "--model", model, "--quiet", "--batch-size", "16", *extra)


def one_line_error(r, code):
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output and "error:" in r.output, r.output
    return r.output


# -- layer sets ---------------------------------------------------------------------------------
def test_ingest_of_fewer_layers_into_a_full_store_is_refused_before_writing(store, tiny_llama, tmp_path):
    more = write_corpus(tmp_path / "more.jsonl", N + 20)
    before = snapshot(store)
    out = one_line_error(ingest(store, more, tiny_llama, "--layers", "2"), 1)
    assert "holds layers 0-2" in out and "--layers 0-2" in out
    assert snapshot(store) == before  # not a byte written: no prompt record, no run, no array row
    assert verify(Store.open(store)).clean
    assert ingest(store, more, tiny_llama).exit_code == 0  # the store's own layer set still works
    s = Store.open(store)
    key = only_group(store)
    assert verify(s).clean and s.activations(key, 0).shape[0] == N + 20


def test_ingest_of_more_layers_into_a_partial_store_never_serves_zeros(tmp_path, tiny_llama):
    base, more = write_corpus(tmp_path / "b.jsonl", 200), write_corpus(tmp_path / "m.jsonl", 220)
    s = tmp_path / "s"
    assert ingest(s, base, tiny_llama, "--layers", "2").exit_code == 0
    before = snapshot(s)
    out = one_line_error(ingest(s, more, tiny_llama), 1)
    assert "holds layer" in out and "--layers 2" in out
    assert snapshot(s) == before
    store = Store.open(s)
    assert store.layers(only_group(s)) == [2]
    assert (np.abs(store.activations(only_group(s), 2)).sum(axis=1) > 0).all()  # no row of zeros anywhere


def test_repeated_pooling_and_site_are_stored_once(tmp_path, tiny_llama):
    c = write_corpus(tmp_path / "c.jsonl", 30)
    s = tmp_path / "s"
    r = ingest(s, c, tiny_llama, "--pooling", "last,last", "--site", "resid", "--site", "resid")
    assert r.exit_code == 0, r.output
    store = Store.open(s)
    assert [g.pooling for g in store.groups()] == ["last"]
    assert store.group_rows(only_group(s)).num_rows == 30 and verify(store).clean


# -- commit marks, lost parts, quarantine -------------------------------------------------------
def newest_rows_part(store):
    return sorted((store / "tables" / "rows").glob("part-*.parquet"))[-1]


def test_repair_after_a_lost_rows_part_quarantines_never_deletes_and_reingest_recovers(store, good, tiny_llama):
    key = only_group(store)
    original = Store.open(store).activations(key, 1)
    newest_rows_part(store).unlink()  # the newest commit's record is gone; its array rows are not
    s = Store.open(store)
    n_left = s.group_rows(key).num_rows
    assert 0 < n_left < N
    rep = verify(s)
    assert any("committed rows have no rows record" in e for e in rep.errors), rep.errors
    assert not any("tail" in t for t in rep.tails)  # never mistaken for a harmless tail
    # a writer refuses to overwrite them
    with pytest.raises(StoreError, match="missing from the rows table"):
        s.check_extend([key], [0, 1, 2], 32)
    rep = verify(s, repair=True)
    assert rep.quarantined and not rep.errors, rep
    saved = sorted((store / "quarantine").glob("*/arrays/*L1.rows*.npy"))
    kept = [np.load(p) for p in saved if "last__L1" in p.name]
    assert len(kept) == 1
    np.testing.assert_array_equal(kept[0].astype(np.float32), original[n_left:])  # the values, moved aside intact
    manifest = json.loads(next((store / "quarantine").glob("*/manifest.json")).read_text())
    assert any("rows part" in m["why"] for m in manifest)
    assert verify(s).clean
    assert ingest(store, good[1], tiny_llama).exit_code == 0  # the lost prompts are captured again
    s = Store.open(store)
    assert verify(s).clean and s.group_rows(key).num_rows == N
    np.testing.assert_allclose(s.activations(key, 1)[n_left:], original[n_left:], rtol=1e-3, atol=1e-3)


def test_tail_past_the_commit_mark_is_dropped_but_without_a_mark_it_is_quarantined(store):
    key = only_group(store)
    s = Store.open(store)
    arr = s.zarr_root(mode="a")[key.path]["L0"]
    arr.resize((N + 10, arr.shape[1]))  # a crash after the arrays, before the rows part
    arr[N:N + 10] = np.full((10, arr.shape[1]), 3.0, np.float32)
    rep = verify(s)
    assert any("uncommitted tail of 10 rows" in t for t in rep.tails)
    rep = verify(s, repair=True)
    assert not rep.quarantined and any("truncated" in r for r in rep.repaired)
    # a store written before commit marks: the same tail cannot be proven uncommitted
    grp = s.zarr_root(mode="a")[key.path]
    del grp.attrs[COMMITTED_ATTR]
    arr = grp["L0"]
    arr.resize((N + 10, arr.shape[1]))
    arr[N:N + 10] = np.full((10, arr.shape[1]), 3.0, np.float32)
    rep = verify(s, repair=True)
    assert rep.quarantined and s.zarr_root()[key.path]["L0"].shape[0] == N
    assert len(list((store / "quarantine").glob(f"*/arrays/*L0.rows{N}-{N + 10}.npy"))) == 1


# -- damage that must be seen --------------------------------------------------------------------
def damage(store, what):
    grp = store / "activations.zarr" / only_group(store).path
    if what == "deleted chunk":
        (grp / "L1" / "c" / "0" / "0").unlink()
    elif what == "deleted layer":
        shutil.rmtree(grp / "L1")
    elif what == "truncated chunk":
        f = grp / "L1" / "c" / "0" / "0"
        f.write_bytes(f.read_bytes()[:20])
    elif what == "flipped byte":
        f = grp / "L1" / "c" / "0" / "0"
        b = bytearray(f.read_bytes())
        b[len(b) // 2] ^= 0x55
        f.write_bytes(bytes(b))
    elif what == "garbage array zarr.json":
        (grp / "L1" / "zarr.json").write_text("garbage{")
    elif what == "garbage group zarr.json":
        (grp / "zarr.json").write_text("garbage{")


@pytest.mark.parametrize("what", ["deleted chunk", "deleted layer", "truncated chunk", "flipped byte",
                                  "garbage array zarr.json", "garbage group zarr.json"])
def test_array_damage_is_named_by_verify_and_never_served(store, what):
    damage(store, what)
    r = run("--store", store, "verify")
    assert r.exit_code == 1 and "ERROR" in r.output and "Traceback" not in r.output, r.output
    assert "resid/last" in r.output  # names the group (or its array)
    if what not in ("deleted layer",):  # the cheap mode sees metadata and missing files too
        cheap = run("--store", store, "verify", "--no-values")
        if what in ("truncated chunk", "flipped byte"):
            assert cheap.exit_code == 0  # decoding is what the full mode is for
        else:
            assert cheap.exit_code == 1, cheap.output
    q = run("--store", store, "query", "SELECT sum(list_sum(vector)) FROM act_0_L1")
    one_line_error(q, q.exit_code if q.exit_code in (1, 2) else -1)
    x = run("--store", store, "extract", "--trait", "kindness", "--layers", "1", "--methods", "mean_diff", "-q")
    one_line_error(x, x.exit_code if x.exit_code in (1, 2) else -1)


def test_deleted_activations_then_ingest_is_refused(store, good, tiny_llama):
    shutil.rmtree(store / "activations.zarr")
    out = one_line_error(ingest(store, good[1], tiny_llama), 1)
    assert "arrays are gone" in out
    assert not (store / "activations.zarr").exists()  # nothing recreated with zeros
    r = run("--store", store, "verify")
    assert r.exit_code == 1 and "activations.zarr is missing" in r.output


@pytest.mark.parametrize("table", ["rows", "prompts", "vectors", "runs"])
def test_truncated_part_is_a_one_line_error_everywhere_and_repair_moves_it(store, good, tiny_llama, table):
    assert run("--store", store, "extract", "--trait", "kindness", "--methods", "mean_diff", "--n-boot", "0",
               "-q").exit_code == 0
    part = sorted((store / "tables" / table).glob("part-*.parquet"))[-1]  # the newest: recoverable in place
    part.write_bytes(part.read_bytes()[:100])
    for args in (["verify"], ["query", f"SELECT count(*) FROM {table}"], ["info"]):
        r = run("--store", store, *args)
        assert "Traceback" not in r.output, r.output
        if args == ["verify"] or table in ("rows", "prompts") or args[0] == "query":
            assert r.exit_code != 0 and part.name in r.output, (args, r.output)
    r = run("--store", store, "verify", "--repair")
    assert r.exit_code == 1 and "MOVED" in r.output and part.name in r.output
    assert not part.exists() and list((store / "quarantine").glob(f"*/tables/{table}/{part.name}"))
    assert ingest(store, good[1], tiny_llama).exit_code == 0  # prompts and rows come back from the corpus
    assert run("--store", store, "verify").exit_code == 0


def by_prompt(store: Store, key: GroupKey, layer: int) -> dict[str, np.ndarray]:
    acts = store.activations(key, layer)
    return {r["prompt_id"]: acts[r["row"]] for r in store.group_rows(key).to_pylist()}


def extract_cmd(store, *extra):
    return run("--store", store, "extract", "--trait", "kindness", "--methods", "mean_diff", "--n-boot", "0", "-q",
               *extra)


@pytest.mark.parametrize("how", ["deleted", "truncated"])
def test_a_lost_part_from_the_middle_is_recovered_by_repair_and_a_reingest(store, good, tiny_llama, how):
    """A rows part from the middle lost (deleted, or truncated and then quarantined): nothing
    numbers rows past the gap, so --repair moves the rows after it (their records and values) to
    quarantine/, and a re-ingest captures those prompts again, back to a clean store."""
    keys = Store.open(store).groups()
    original = {k: by_prompt(Store.open(store), k, 2) for k in keys}
    middle = sorted((store / "tables" / "rows").glob("part-*.parquet"))[1]  # rows 256-511 of every group
    if how == "deleted":
        middle.unlink()
    else:
        middle.write_bytes(middle.read_bytes()[:100])
    # meanwhile extract refuses rather than fit a subset of the prompts in silence
    x = extract_cmd(store)
    out = one_line_error(x, 2 if how == "deleted" else 1)  # (a part that does not read is exit 1 everywhere)
    assert "verify" in out and ("gap" in out or how == "truncated"), out
    r = run("--store", store, "verify")
    assert r.exit_code == 1 and "rows 256-511 have no record" in r.output and "--repair" in r.output, r.output
    r = run("--store", store, "verify", "--repair")
    assert "MOVED" in r.output and "Traceback" not in r.output, r.output
    s = Store.open(store)
    for k in keys:
        assert s.group_rows(k)["row"].to_pylist() == list(range(256))  # rolled back to the gap
        moved = list((store / "quarantine").glob(f"*/arrays/{k.path.replace('/', '__')}__L2.rows256-600.npy"))
        assert len(moved) == 1  # the values after the gap, moved aside intact
        assert np.load(moved[0]).shape[0] == N - 256
    assert list((store / "quarantine").glob("*/tables/rows/*.parquet"))  # and which prompt each row was
    assert run("--store", store, "verify").exit_code == 0
    r = ingest(store, good[1], tiny_llama)
    assert r.exit_code == 0 and "344 prompts captured" in r.output, r.output
    s = Store.open(store)
    assert verify(s).clean
    for k in keys:
        got = by_prompt(s, k, 2)
        assert got.keys() == original[k].keys()
        for pid, v in original[k].items():
            np.testing.assert_allclose(got[pid], v, rtol=1e-3, atol=1e-3)
    assert extract_cmd(store).exit_code == 0


def test_extract_refuses_a_store_that_verify_would_call_damaged(store):
    """Extraction checks, cheaply, what would make it fit the wrong rows: a lost rows part
    (a gap, or rows the commit mark vouches for without a record) and a missing layer array."""
    s = Store.open(store)
    key = only_group(store)
    shutil.rmtree(store / "activations.zarr" / key.path / "L1")
    for layers in ("all", "0"):  # even when the missing layer is not asked for: the store is damaged
        out = one_line_error(extract_cmd(store, "--layers", layers), 2)
        assert "L1" in out and "verify" in out, out
    assert not s.table("vectors").num_rows
    newest_rows_part(store).unlink()  # the last commit's record lost: the mark vouches for more rows
    out = one_line_error(extract_cmd(store, "--pooling", "mean"), 2)
    assert "verify" in out and "rows record" in out, out


# -- bad input writes nothing ----------------------------------------------------------------------
@pytest.mark.parametrize("args", [["--pooling", ""], ["--max-length", "-3"], ["--batch-size", "-1"],
                                  ["--max-tokens", "0"], ["--layers", ""], ["--device", "quantum"],
                                  ["--pooling", "last,nope"], ["--generate", "-1"], ["--pooling", "response_mean"],
                                  ["--dtype", "float8"]])
def test_bad_options_exit_2_and_write_nothing(store, good, tiny_llama, args):
    before = snapshot(store)
    one_line_error(ingest(store, good[1], tiny_llama, *args), 2)
    assert snapshot(store) == before


def test_on_long_fail_writes_nothing(store, tiny_llama, tmp_path):
    c = write_corpus(tmp_path / "c.jsonl", 20, start=500)
    with c.open("a") as f:
        f.write(json.dumps({"text": "word " * 2000, "label": "pos", "trait": "kindness"}) + "\n")
    before = snapshot(store)
    out = one_line_error(ingest(store, c, tiny_llama, "--on-long", "fail"), 2)
    assert "c.jsonl:21" in out and "tokens" in out
    assert snapshot(store) == before
    fresh = tmp_path / "fresh"
    one_line_error(ingest(fresh, c, tiny_llama, "--on-long", "fail"), 2)
    assert not fresh.exists()  # not even an empty store


def test_corrected_labels_win_are_counted_and_make_vectors_stale(store, good, tiny_llama, tmp_path):
    assert run("--store", store, "extract", "--trait", "kindness", "--methods", "mean_diff", "--n-boot", "0",
               "-q").exit_code == 0
    lines = good[1].read_text().splitlines()
    flipped = [json.loads(l) for l in lines]
    for r in flipped[:20]:
        r["label"] = "neg" if r["label"] == "pos" else "pos"
    fixed = tmp_path / "base.jsonl"  # same file name: same dataset
    fixed.write_text("\n".join(json.dumps(r) for r in flipped) + "\n")
    r = ingest(store, fixed, tiny_llama)
    assert r.exit_code == 0 and "20 relabelled" in r.output, r.output
    s = Store.open(store)
    got = {p["prompt_id"]: p["label"] for p in s.prompts().to_pylist()}
    from traitlens.pipeline.capture.plan import read_corpus

    want = {rec.prompt_id: rec.label for rec in read_corpus([fixed])[0]}
    assert got == want  # the newest label, for every prompt, once
    from traitlens.queries import StoreSQL

    with StoreSQL(s) as q:
        sql = {r["prompt_id"]: r["label"] for r in q.query("SELECT prompt_id, label FROM prompts").to_pylist()}
    assert sql == want
    x = run("--store", store, "extract", "--trait", "kindness", "--methods", "mean_diff", "--n-boot", "0", "-q")
    assert "3 new" in x.output, x.output  # the rows changed, so every layer's vector is stale
    assert verify(s).clean
    again = ingest(store, fixed, tiny_llama)
    assert "relabelled" not in again.output  # a rerun with the same labels changes nothing


def test_random_seed_is_part_of_the_vector_identity(store):
    base = ["--store", store, "extract", "--trait", "kindness", "--methods", "random", "--n-boot", "0", "-q"]
    assert "3 new" in run(*base).output
    r = run(*base, "--seed", "7")
    assert "3 new" in r.output, r.output
    s = Store.open(store)
    v = {json.loads(r["params"])["seed"]: np.asarray(r["vector"]) for r in s.table("vectors").to_pylist()
         if r["layer"] == 0}
    assert set(v) == {0, 7} and abs(float(v[0] @ v[7])) < 0.9


def test_bad_extract_values_exit_2(store):
    for args in (["--n-boot", "-4"], ["--seed", "-1"], ["--memory", "0"]):
        one_line_error(run("--store", store, "extract", "--trait", "kindness", *args), 2)


def test_output_files_never_land_in_the_store(store):
    before = snapshot(store)
    r = run("--store", store, "query", "--format", "parquet", "-o", store / "tables" / "rows" / "part-x.parquet",
            "SELECT * FROM rows")
    assert "inside the store" in one_line_error(r, 2)
    assert snapshot(store) == before and verify(Store.open(store)).clean


def test_sql_cannot_read_the_working_folder_temp_dir(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".tmp").mkdir()
    (tmp_path / ".tmp" / "secret.csv").write_text("a,b\n1,2\n")
    for path in (".tmp/secret.csv", str(tmp_path / ".tmp" / "secret.csv")):
        r = run("--store", store, "query", f"SELECT * FROM read_csv('{path}')")
        assert r.exit_code == 2 and "Permission" in r.output, r.output


def test_trait_names_that_are_not_file_names(store, tiny_llama, tmp_path):
    for verb in (["rank", "--trait", ".."], ["export", "--trait", ".."]):
        one_line_error(run("--store", store, *verb), 2)
    c = tmp_path / "dots.jsonl"
    c.write_text("\n".join(json.dumps({"text": f"dots {i} " + "x" * (i % 7), "label": "pos" if i % 2 else "neg",
                                       "trait": "..", "split": "train" if i % 4 < 2 else "val"})
                           for i in range(40)) + "\n")
    assert ingest(store, c, tiny_llama).exit_code == 0
    assert run("--store", store, "extract", "--trait", "..", "--methods", "mean_diff", "--n-boot", "0",
               "-q").exit_code == 0
    r = CliRunner().invoke(cli, ["--store", str(store), "rank", "--trait", "..", "--plot", str(tmp_path / "r.png")],
                           catch_exceptions=False)
    assert r.exit_code == 0 and (tmp_path / "r.png").exists(), r.output
    import os

    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        r = run("--store", store, "export", "--trait", "..")
    finally:
        os.chdir(old)
    assert r.exit_code == 0 and list(tmp_path.glob("trait-*-mean_diff.safetensors")), r.output


@pytest.mark.parametrize("section", ['[extract]\nn_boot = -4', '[extract.params]\nprobe = 5',
                                     '[extract.params.probe]\nCC = 1', '[capture]\nbatch_size = -1',
                                     '[capture]\npoolings = ["last", "nope"]', '[evaluate]\nalphas = ["x"]',
                                     '[report]\npath = "s/tables/rows/part-x.parquet"'])
def test_bad_spec_values_fail_before_anything_is_written(tmp_path, good, section):
    shutil.copy(good[1], tmp_path / "c.jsonl")
    spec = tmp_path / "w.toml"
    spec.write_text(f'store = "s"\n[[corpora]]\npaths = ["c.jsonl"]\n{section}\n')
    out = one_line_error(run("run", spec), 2)
    assert "w.toml" in out
    assert not (tmp_path / "s").exists()


def test_yaml_alias_bomb_under_a_wrong_key_is_a_short_error(tmp_path):
    lines = ["store: s", "corpora:", "  - paths: [c.jsonl]", "model:", '  a: &a ["lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 9):
        lines.append(f"  {chr(97 + i)}: &{chr(97 + i)} [" + ",".join([f"*{chr(96 + i)}"] * 9) + "]")
    spec = tmp_path / "bomb.yaml"
    spec.write_text("\n".join(lines) + "\n")
    (tmp_path / "c.jsonl").write_text('{"text": "x", "label": 1}\n')
    out = one_line_error(run("run", spec), 2)
    assert "'model' must be a string" in out and len(out) < 2000  # 6 * 9**8 strings, never expanded


def test_another_length_policy_is_refused_before_writing(store, good, tiny_llama):
    before = snapshot(store)
    out = one_line_error(ingest(store, good[1], tiny_llama, "--max-length", "16"), 1)
    assert "limited to" in out and "--max-length" in out
    assert snapshot(store) == before
    assert ingest(store, good[1], tiny_llama, "--on-long", "fail").exit_code == 0  # the limit is what counts


def test_tokens_pooling_lost_part_is_quarantined_with_its_token_ids(tmp_path, tiny_llama):
    c = write_corpus(tmp_path / "c.jsonl", 300)
    s = tmp_path / "s"
    assert ingest(s, c, tiny_llama, "--pooling", "tokens", "--layers", "1").exit_code == 0
    store = Store.open(s)
    key = only_group(s, "tokens")
    st = store.committed(key)
    assert st.n_prompts == 300
    newest_rows_part(s).unlink()
    left = Store.open(s).committed(key)
    assert 0 < left.n_prompts < 300
    rep = verify(Store.open(s), repair=True)
    assert rep.quarantined and not rep.errors, rep
    moved = {p.name.split(".rows")[0].rsplit("__", 1)[-1] for p in (s / "quarantine").glob("*/arrays/*.npy")}
    assert moved == {"L1", "token_ids"}
    assert verify(Store.open(s)).clean
    assert ingest(s, c, tiny_llama, "--pooling", "tokens", "--layers", "1").exit_code == 0
    store = Store.open(s)
    assert verify(store).clean and store.committed(key).array_rows == st.array_rows


# -- corpora that are not files ----------------------------------------------------------------------
def test_a_fifo_corpus_is_refused_at_once_never_waited_on(tmp_path, good, tiny_llama):
    """`mkfifo f.jsonl; cat c.jsonl > f.jsonl & traitlens ingest f.jsonl` used to hang forever:
    the corpus is read twice (hashed, then validated), and the second open waits for a writer
    that has gone. Run in a subprocess with a bounded wait, so a hang fails instead of hanging."""
    import os
    import subprocess
    import sys

    fifo = tmp_path / "f.jsonl"
    os.mkfifo(fifo)
    writer = subprocess.Popen(["sh", "-c", f"cat '{good[1]}' > '{fifo}'"])
    try:
        r = subprocess.run([sys.executable, "-m", "traitlens.workflows.cli", "--store", str(tmp_path / "s"), "ingest",
                            str(fifo), "--model", str(tiny_llama), "--quiet"], capture_output=True, text=True,
                           timeout=300)
    finally:
        writer.kill()
        writer.wait()
    assert r.returncode == 2, r.stderr
    assert "f.jsonl" in r.stderr and "FIFO" in r.stderr and "regular file" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "s").exists()  # nothing written


def test_tokens_pooling_middle_part_lost_is_recovered_by_repair_and_a_reingest(tmp_path, tiny_llama):
    c = write_corpus(tmp_path / "c.jsonl", 600)
    s = tmp_path / "s"
    assert ingest(s, c, tiny_llama, "--pooling", "tokens", "--layers", "1").exit_code == 0
    key = only_group(s, "tokens")

    def tokens_by_prompt(store):
        acts = store.activations(key, 1)
        return {r["prompt_id"]: acts[r["token_start"]:r["token_start"] + r["token_count"]]
                for r in store.group_rows(key).to_pylist()}

    original = tokens_by_prompt(Store.open(s))
    parts = sorted((s / "tables" / "rows").glob("part-*.parquet"))
    assert len(parts) >= 3
    parts[1].unlink()
    rep = verify(Store.open(s), repair=True)
    assert rep.quarantined and not rep.errors, rep
    assert verify(Store.open(s)).clean
    assert ingest(s, c, tiny_llama, "--pooling", "tokens", "--layers", "1").exit_code == 0
    store = Store.open(s)
    assert verify(store).clean
    got = tokens_by_prompt(store)
    assert got.keys() == original.keys()
    for pid, v in original.items():
        np.testing.assert_allclose(got[pid], v, rtol=1e-3, atol=1e-3)
