"""Vector bundles (`traitlens bundle`, `reproduce`, `--vector DIR`, `vectors --library`) on a tiny
model: a bundle holds the card with YAML front matter, the vectors, the Parquet evidence and a
reproduce file whose hashes match every file (computed here with hashlib); `reproduce` into a fresh
store says identical; one flipped byte makes every verb that takes the bundle exit 2 naming the
file; the bundle's vector steers, scores and exports like the stored one; a library lists bundles."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner

from traitlens.store import Store
from traitlens.testing import make_model, strict_json, write_corpus
from traitlens.workflows.cli import cli

TRAIT = "kindness"


class Built:
    """A tiny model's store: a corpus ingested, every method extracted, mean_diff L1 evaluated for
    steering; a bundle of mean_diff L1 and probe L2."""

    def __init__(self, root: Path):
        self.root = root
        self.model = make_model("llama", root / "model")
        self.store = root / "store"
        self.corpus = write_corpus(root / "c.jsonl", 120)
        assert self.go("ingest", self.corpus, "--model", self.model, "--quiet").exit_code == 0
        assert self.go("extract", "--trait", TRAIT, "--quiet").exit_code == 0
        r = self.go("evaluate", "--trait", TRAIT, "--steering", "--methods", "mean_diff", "--layers", "1",
                    "--alphas", "0.25,0.5", "--n", "4", "--reply-tokens", "0", "--plot", root / "e.png",
                    "--model", self.model)
        assert r.exit_code == 0, r.output
        self.ids = [self.vector_id("mean_diff", 1), self.vector_id("probe", 2)]
        (root / "lib").mkdir()
        self.bundle = root / "lib" / "kind"
        r = self.go("bundle", "--trait", TRAIT, "--vector", self.ids[0], "--vector", self.ids[1], "-o", self.bundle)
        assert r.exit_code == 0, r.output

    def go(self, *args, store=None):
        return CliRunner().invoke(cli, ["--store", str(store or self.store), *map(str, args)])

    def rows(self) -> list[dict]:
        return Store.open(self.store).table("vectors").to_pylist()

    def vector_id(self, method: str, layer: int) -> str:
        return next(r["vector_id"] for r in self.rows() if r["method"] == method and r["layer"] == layer)

    def copy(self, name: str) -> Path:
        dest = self.root / name
        shutil.copytree(self.bundle, dest)
        return dest


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return Built(tmp_path_factory.mktemp("bundles"))


def test_a_bundle_holds_every_part_and_its_hashes_are_the_files(built):
    b = built.bundle
    files = sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    assert files == ["README.md", "evidence/metrics.parquet", "evidence/prompts.parquet", "evidence/steering.parquet",
                     "reproduce.json", "vectors.safetensors"]  # no capability rows for these vectors: no capability part
    rec = strict_json((b / "reproduce.json").read_text())
    assert rec["files"] == {f: hashlib.sha256((b / f).read_bytes()).hexdigest() for f in files if f != "reproduce.json"}
    assert rec["model"]["key"] == built.rows()[0]["model_key"]
    weights = hashlib.sha256((built.model / "model.safetensors").read_bytes()).hexdigest()
    assert rec["model"]["weights"]["files"]["model.safetensors"] == weights
    assert rec["libraries"]["numpy"] == np.__version__
    assert {r["stage"] for r in rec["capture"]["runs"]} == {"ingest"}
    (ext,) = rec["extract"]["runs"]
    assert ext["config"]["seed"] == 0 and ext["config"]["n_boot"] == 8 and ext["command"].startswith("traitlens extract")
    assert rec["device"] == "cpu" and rec["dtype"] == "float32"
    assert rec["capture"]["other_prompts_in_its_runs"] == 0  # its runs captured nothing but the bundle's prompts


def test_the_vectors_and_evidence_are_the_stores_own(built):
    from safetensors import safe_open

    stored = {r["vector_id"]: r for r in built.rows()}
    with safe_open(str(built.bundle / "vectors.safetensors"), "numpy") as f:
        assert sorted(f.keys()) == sorted(built.ids)
        for vid in built.ids:
            assert f.get_tensor(vid).tobytes() == np.asarray(stored[vid]["vector"], np.float32).tobytes()
        meta = strict_json(f.metadata()["traitlens.bundle"])
    exports = {v["vector_id"]: v["exports"] for v in meta["vectors"]}
    assert "--format gguf" in exports[built.ids[0]]["gguf"] and "--format merged" in exports[built.ids[0]]["merged"]
    metrics = pq.read_table(built.bundle / "evidence/metrics.parquet").to_pylist()
    assert [m["vector_id"] for m in metrics] == built.ids and "vector" not in metrics[0]
    assert all(m["auroc"] == stored[m["vector_id"]]["auroc"] for m in metrics)
    # the prompts are exactly the trait's labelled prompts of the group, with their labels and splits
    prompts = pq.read_table(built.bundle / "evidence/prompts.parquet").to_pylist()
    store_prompts = {p["prompt_id"]: p for p in Store.open(built.store).prompts().to_pylist()}
    assert len(prompts) == 120 and {p["prompt_id"] for p in prompts} == set(store_prompts)
    for p in prompts:
        assert (p["text"], p["label"], p["split"]) == tuple(store_prompts[p["prompt_id"]][k] for k in ("text", "label",
                                                                                                       "split"))
        assert hashlib.sha256(("t:" + p["text"]).encode()).hexdigest() == p["content_sha256"]
    steering = pq.read_table(built.bundle / "evidence/steering.parquet").to_pylist()
    assert {s["vector_id"] for s in steering if s["method"] != "random"} == {built.ids[0]}
    assert any(s["method"] == "random" for s in steering)  # the floor comes with the rows


def test_the_card_is_yaml_front_matter_with_intervals_floors_and_the_steering_pick(built):
    from traitlens.queries.budget import KL_BUDGET

    text = (built.bundle / "README.md").read_text()
    assert text.startswith("---\n")
    front = yaml.safe_load(text.split("\n---\n")[0][4:])
    assert front["library_name"] == "traitlens" and TRAIT in front["tags"] and front["license"] == "unknown"
    t = front["traitlens"]
    stored = {r["vector_id"]: r for r in built.rows()}
    by_id = {v["vector_id"]: v for v in t["vectors"]}
    for vid in built.ids:
        h = by_id[vid]["held_out"]
        assert h["auroc"] == stored[vid]["auroc"] and h["auroc_ci95"][0] <= h["auroc"] <= h["auroc_ci95"][1]
        assert h["cohens_d_ci95"][0] < h["cohens_d"] < h["cohens_d_ci95"][1]
        assert by_id[vid]["floors"]["token_count"] == stored[vid]["floor_length"]
    # the steering pick, computed here from the store's steering table: the largest shift within the KL budget
    rows = [r for r in Store.open(built.store).table("steering").to_pylist() if r["vector_id"] == built.ids[0]]
    best = max((r for r in rows if r["kl"] <= KL_BUDGET), key=lambda r: r["shift"])
    s = by_id[built.ids[0]]["steering"]
    assert (s["shift"], s["alpha"], s["kl"]) == (best["shift"], best["alpha"], best["kl"])
    assert by_id[built.ids[1]]["steering"] is None and "not evaluated" in t["nulls"]["vectors.1.steering"]
    body = text.split("\n---\n", 1)[1]
    for words in ("What it detects", "How well", "Known limits", "How to load it", "traitlens reproduce kind"):
        assert words in body


def test_reproduce_into_a_fresh_store_is_identical(built):
    r = CliRunner().invoke(cli, ["reproduce", str(built.bundle), "--format", "json"])
    assert r.exit_code == 0, r.output
    res = strict_json(r.output)
    assert res["verdict"] == "identical" and res["captured"] == 120 and not res["store_kept"]
    assert not Path(res["store"]).exists()  # the temporary store is gone
    for v in res["vectors"]:
        assert v["same_bytes"] and v["cosine"] == pytest.approx(1.0, abs=1e-6) and v["refit_id"] == v["vector_id"]
        assert all(m["ok"] and m["refit"] == m["bundle"] for m in v["metrics"].values())
    table = CliRunner().invoke(cli, ["reproduce", str(built.bundle)])
    assert table.exit_code == 0 and "verdict: identical" in table.output


def test_reproduce_in_a_given_store_captures_only_what_it_lacks(built, tmp_path):
    r = CliRunner().invoke(cli, ["reproduce", str(built.bundle), "--store", str(built.store), "--format", "json"])
    res = strict_json(r.output)
    assert r.exit_code == 0 and res["captured"] == 0 and res["verdict"] == "identical" and res["store_kept"]


def flip_a_vector_byte(folder: Path) -> None:
    path = folder / "vectors.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # inside the last tensor's float32 data: the file still parses
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("verb", [
    ["steer", "--vector", "{b}", "hello"],
    ["reproduce", "{b}"],
    ["score", "--vector", "{b}"],
    ["evaluate", "--steering", "--vector", "{b}"],
    ["export", "--vector", "{b}", "-o", "{out}"],
])
def test_one_flipped_byte_in_the_vectors_is_exit_2_naming_the_file(built, tmp_path, verb):
    b = built.copy(f"flipped-{verb[0]}")
    flip_a_vector_byte(b)
    store = tmp_path / "untouched"
    args = [a.format(b=b, out=tmp_path / "x.safetensors") for a in verb]
    r = CliRunner().invoke(cli, ["--store", str(store), *args])
    assert r.exit_code == 2, r.output
    assert f"{b / 'vectors.safetensors'}" in r.output and "SHA-256" in r.output
    assert not store.exists() and not (tmp_path / "x.safetensors").exists()  # nothing written for a bad bundle


def test_a_missing_or_unlisted_file_is_exit_2_naming_it(built, tmp_path):
    b = built.copy("missing")
    (b / "evidence" / "steering.parquet").unlink()
    r = CliRunner().invoke(cli, ["reproduce", str(b)])
    assert r.exit_code == 2 and "evidence/steering.parquet: missing" in r.output
    b = built.copy("extra")
    (b / "evidence" / "notes.parquet").write_bytes(b"x")
    r = CliRunner().invoke(cli, ["steer", "--vector", str(b), "hi"])
    assert r.exit_code == 2 and "notes.parquet: not part of the bundle" in r.output
    b = built.copy("no-reproduce")
    (b / "reproduce.json").write_text("{not json")
    r = CliRunner().invoke(cli, ["reproduce", str(b)])
    assert r.exit_code == 2 and "reproduce.json: damaged" in r.output


def test_a_refit_that_moves_is_within_tolerance_or_differs_and_differs_exits_1(built, monkeypatch):
    from traitlens.workflows import reproduce as rp

    rows = {r["vector_id"]: r for r in built.rows()}
    v = {**rows[built.ids[1]], "vector": np.asarray(rows[built.ids[1]]["vector"], np.float32)}
    assert rp.compare(v, dict(v)).verdict == "identical"
    nudged = {**v, "vector": v["vector"] + np.float32(1e-6), "auroc": v["auroc"] + 0.004}
    assert rp.compare(v, nudged).verdict == "within tolerance"
    assert rp.compare(v, {**v, "auroc": v["auroc"] + 0.05}).verdict == "differs"
    assert rp.compare(v, {**v, "n_held_pos": v["n_held_pos"] + 1}).verdict == "differs"  # counts are exact
    other = np.roll(v["vector"], 1)
    assert rp.compare(v, {**v, "vector": other}).verdict == "differs"
    # the CLI: differs is exit 1 and says why
    real = rp.refit
    monkeypatch.setattr(rp, "refit", lambda b, s, log: {k: {**r, "vector": np.roll(r["vector"], 1)}
                                                          for k, r in real(b, s).items()})
    r = CliRunner().invoke(cli, ["reproduce", str(built.bundle), "--store", str(built.store)])
    assert r.exit_code == 1 and "verdict: differs" in r.output and "cosine" in r.output


def test_steer_with_a_bundle_is_steer_with_the_stored_vector(built):
    args = ["hello there", "--max-new-tokens", "6", "--alpha", "2"]
    from_bundle = built.go("steer", "--vector", built.bundle, "--vector-id", built.ids[0], *args, store=built.root / "none")
    from_store = built.go("steer", "--vector-id", built.ids[0], "--model", built.model, *args)
    assert from_bundle.exit_code == 0 and from_store.exit_code == 0, from_bundle.output + from_store.output
    assert from_bundle.output == from_store.output and "--- steered ---" in from_bundle.output
    assert not (built.root / "none").exists()  # steer with a bundle needs no store
    other = make_model("gpt2", built.root / "other-model")
    r = built.go("steer", "--vector", built.bundle, "--model", other, *args, store=built.root / "none")
    assert r.exit_code == 2 and "another config or other weights" in r.output


def test_score_with_a_bundle_in_a_fresh_store_gives_the_stored_scores(built, tmp_path):
    fresh = tmp_path / "fresh"
    r = built.go("score", "--vector", built.bundle, "--vector-id", built.ids[0], built.corpus, "--top", "0", store=fresh)
    assert r.exit_code == 0, r.output
    r = built.go("score", "--trait", TRAIT, "--vector-id", built.ids[0], "--top", "0")
    assert r.exit_code == 0, r.output
    got = {s["prompt_id"]: s["score"] for s in Store.open(fresh).table("scores").to_pylist()}
    want = {s["prompt_id"]: s["score"] for s in Store.open(built.store).table("scores").to_pylist()
            if s["vector_id"] == built.ids[0]}
    assert len(got) == 120 and got.keys() == want.keys()
    assert max(abs(got[k] - want[k]) for k in got) < 1e-6


def test_export_from_a_bundle_writes_the_stored_vector(built, tmp_path):
    from safetensors.numpy import load_file

    from traitlens.pipeline.extract.export import read_card

    r = built.go("export", "--vector", built.bundle, "--method", "probe", "-o", tmp_path / "p.safetensors",
                 store=tmp_path / "none")
    assert r.exit_code == 0, r.output
    got = load_file(str(tmp_path / "p.safetensors"))
    want = np.asarray(next(x for x in built.rows() if x["vector_id"] == built.ids[1])["vector"], np.float32)
    assert list(got) == ["direction.2"] and got["direction.2"].tobytes() == want.tobytes()
    assert read_card(tmp_path / "p.safetensors")["layers"]["2"]["vector_id"] == built.ids[1]


def test_evaluate_with_a_bundle_measures_its_vectors_in_a_fresh_store(built, tmp_path):
    fresh = tmp_path / "fresh"
    r = built.go("evaluate", "--steering", "--vector", built.bundle, "--alphas", "0.25", "--n", "4", "--reply-tokens",
                 "0", "--plot", tmp_path / "e.png", store=fresh)
    assert r.exit_code == 0, r.output
    rows = Store.open(fresh).table("steering").to_pylist()
    assert {(s["vector_id"], s["layer"]) for s in rows} == {(built.ids[0], 1), (built.ids[1], 2)}


def test_no_prompts_keeps_ids_and_hashes_and_reproduce_then_needs_a_store(built, tmp_path):
    out = tmp_path / "hashes-only"
    assert built.go("bundle", "--trait", TRAIT, "--vector", built.ids[0], "--no-prompts", "-o", out).exit_code == 0
    prompts = pq.read_table(out / "evidence/prompts.parquet")
    assert "text" not in prompts.column_names and "messages" not in prompts.column_names
    assert all(h[:24] == p for p, h in zip(prompts["prompt_id"].to_pylist(), prompts["content_sha256"].to_pylist()))
    full = pq.read_table(built.bundle / "evidence/prompts.parquet")
    from traitlens.workflows.bundles import corpus_sha256

    assert corpus_sha256(prompts) == corpus_sha256(full)  # the corpus hash is the same with or without texts
    r = CliRunner().invoke(cli, ["reproduce", str(out)])
    assert r.exit_code == 2 and "--no-prompts" in r.output
    r = CliRunner().invoke(cli, ["reproduce", str(out), "--store", str(built.store)])
    assert r.exit_code == 0 and "verdict: identical" in r.output


def test_the_library_lists_every_bundle_as_a_table_and_as_json(built, tmp_path):
    lib = tmp_path / "lib"
    shutil.copytree(built.bundle, lib / "a")
    shutil.copytree(built.bundle, lib / "nested" / "b")
    flip_a_vector_byte(lib / "nested" / "b")
    r = built.go("vectors", "--library", lib, "--format", "json", store=tmp_path / "none")
    assert r.exit_code == 0, r.output
    rows = strict_json(r.output)
    assert len(rows) == 4 and {(x["method"], x["layer"]) for x in rows} == {("mean_diff", 1), ("probe", 2)}
    status = {x["bundle"]: x["status"] for x in rows}
    assert status == {str(lib / "a"): "ok", str(lib / "nested" / "b"): "changed: vectors.safetensors"}
    auroc = {r["vector_id"]: r["auroc"] for r in built.rows()}
    assert all(x["auroc"] == auroc[x["vector_id"]] and x["trait"] == TRAIT for x in rows)
    table = built.go("vectors", "--library", lib, store=tmp_path / "none")
    assert table.exit_code == 0 and table.output.count("mean_diff") == 2 and "changed: vectors.safetensors" in table.output


def test_what_cannot_be_bundled_is_exit_2_and_writes_nothing(built, tmp_path):
    assert built.go("bundle", "--trait", TRAIT, "-o", built.bundle).exit_code == 2  # never over an existing folder
    r = built.go("bundle", "--trait", "nope", "--vector", built.ids[0], "-o", tmp_path / "x")
    assert r.exit_code == 2 and "not of --trait" in r.output
    r = built.go("vectors", "combine", f"{built.ids[0]} - 0.5*{built.vector_id('probe', 1)}", "--layer", "1",
                 "--name", "mix")
    assert r.exit_code == 0, r.output
    combined = next(x["vector_id"] for x in built.rows() if x["method"] == "mix")
    r = built.go("bundle", "--trait", TRAIT, "--vector", combined, "-o", tmp_path / "y")
    assert r.exit_code == 2 and "combined or imported" in r.output
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no half-written bundle left behind


def test_the_intervals_match_a_bootstrap():
    """Hanley-McNeil's AUROC interval and the large-sample Cohen's d interval, against the spread
    of 4,000 bootstrap resamples of one simulated held-out split."""
    from traitlens.pipeline.extract.metrics import auroc, auroc_interval, cohens_d, cohens_d_interval

    rng = np.random.default_rng(0)
    p = np.concatenate([rng.normal(1.0, 1, 60), rng.normal(0, 1, 50)])
    pos = np.arange(110) < 60
    boots = []
    for _ in range(4000):
        i = np.concatenate([rng.choice(60, 60), 60 + rng.choice(50, 50)])
        boots.append((auroc(p[i], pos[i]), cohens_d(p[i], pos[i])))
    boots = np.asarray(boots)
    for k, (value, (lo, hi)) in enumerate([(auroc(p, pos), auroc_interval(auroc(p, pos), 60, 50)),
                                           (cohens_d(p, pos), cohens_d_interval(cohens_d(p, pos), 60, 50))]):
        assert lo < value < hi
        assert (hi - lo) / 2 / 1.96 == pytest.approx(boots[:, k].std(), rel=0.15)
    assert auroc_interval(1.0, 5, 5)[1] == 1.0 and all(np.isnan(auroc_interval(float("nan"), 5, 5)))


def test_a_merged_export_from_a_bundle_writes_its_vector_into_the_weights(built, tmp_path):
    out = tmp_path / "merged"
    r = built.go("export", "--vector", built.bundle, "--format", "merged", "--operation", "add", "--vector-id",
                 built.ids[0], "--alpha", "0.5", "--check-n", "4", "-o", out, store=tmp_path / "fresh")
    assert r.exit_code == 0, r.output
    card = strict_json((out / "traitlens-export.json").read_text())
    assert [v["vector_id"] for v in card["vectors"]] == [built.ids[0]] and card["vectors"][0]["layer"] == 1
    # the bundle's vector joined the store that the self-check read, under its own id
    assert built.ids[0] in {x["vector_id"] for x in Store.open(tmp_path / "fresh").table("vectors").to_pylist()}


def test_a_recorded_model_folder_this_machine_lacks_asks_for_model(built, tmp_path):
    steer = ["steer", "--vector", built.bundle, "hello", "--max-new-tokens", "2"]
    renamed, elsewhere = built.root / "renamed", built.root / "elsewhere" / built.model.name
    elsewhere.parent.mkdir()
    built.model.rename(renamed)
    try:
        r = built.go(*steer, store=tmp_path / "none")
        assert r.exit_code == 2 and "which this machine lacks: pass --model" in r.output
        r = built.go(*steer, "--model", renamed, store=tmp_path / "none")  # a model's key carries its folder's name
        assert r.exit_code == 2 and "same config and weights" in r.output and "in a folder named 'model'" in r.output
        renamed.rename(elsewhere)
        assert built.go(*steer, "--model", elsewhere, store=tmp_path / "none").exit_code == 0
    finally:
        (elsewhere if elsewhere.exists() else renamed).rename(built.model)


def test_capability_rows_join_the_evidence_where_the_store_has_that_table(built, tmp_path, monkeypatch):
    """Where the store holds capability rows for the vectors, they go to evidence/capability.parquet
    and the card counts them (here a stand-in table)."""
    import pyarrow as pa

    cap = pa.table({"vector_id": [built.ids[0], "someone-else"], "benchmark": ["mmlu", "mmlu"], "drop": [0.01, 0.3]})
    real_open = Store.open.__func__

    def with_capability(cls, root, create=False):
        s = real_open(cls, root, create)
        plain = s.table
        s.table = lambda name, *a, **k: cap if name == "capability" else plain(name, *a, **k)
        return s

    monkeypatch.setattr(Store, "open", classmethod(with_capability))
    out = tmp_path / "with-capability"
    r = built.go("bundle", "--trait", TRAIT, "--vector", built.ids[0], "-o", out)
    assert r.exit_code == 0, r.output
    assert pq.read_table(out / "evidence/capability.parquet").to_pylist() == [
        {"vector_id": built.ids[0], "benchmark": "mmlu", "drop": 0.01}]
    assert "1 row in `evidence/capability.parquet`" in (out / "README.md").read_text()
    monkeypatch.undo()
    assert CliRunner().invoke(cli, ["steer", "--vector", str(out), "hi", "--max-new-tokens", "2"]).exit_code == 0


def test_prompts_captured_beside_others_are_noted_when_reproduced(built, tmp_path):
    """A bundle whose prompts shared their ingest run (so their batches) with other prompts: a
    fresh capture batches them otherwise, and reproduce says so beside its verdict."""
    corpus = tmp_path / "two.jsonl"
    corpus.write_text(write_corpus(tmp_path / "a.jsonl", 120).read_text()
                      + write_corpus(tmp_path / "b.jsonl", 60, start=500, trait="rudeness").read_text())
    store = tmp_path / "store"
    assert built.go("ingest", corpus, "--model", built.model, "--quiet", store=store).exit_code == 0
    assert built.go("extract", "--trait", TRAIT, "--methods", "mean_diff", "--quiet", store=store).exit_code == 0
    assert built.go("bundle", "--trait", TRAIT, "-o", tmp_path / "b", store=store).exit_code == 0
    rec = strict_json((tmp_path / "b" / "reproduce.json").read_text())
    assert rec["capture"]["other_prompts_in_its_runs"] == 60 and rec["corpus"]["n_prompts"] == 120
    res = strict_json(CliRunner().invoke(cli, ["reproduce", str(tmp_path / "b"), "--format", "json"]).output)
    assert res["captured"] == 120 and any("captured beside 60 others" in n for n in res["notes"])


@pytest.mark.parametrize("verb", [
    ["evaluate", "--steering", "--vector", "{b}", "--layers", "1"],
    ["evaluate", "--steering", "--vector", "{b}", "--plot", "{store}/inside.png"],
    ["score", "--vector", "{b}", "-o", "{store}/inside.jsonl"],
    ["export", "--vector", "{b}", "--format", "merged", "-o", "{tmp}/m"],  # no --operation
    ["export", "--vector", "{b}", "--format", "merged", "--operation", "add", "-o", "{tmp}/m"],  # no --alpha
])
def test_a_bad_option_with_a_bundle_is_exit_2_before_it_joins_the_store(built, tmp_path, verb):
    store = tmp_path / "store"
    args = [a.format(b=built.bundle, store=store, tmp=tmp_path) for a in verb]
    r = built.go(*args, store=store)
    assert r.exit_code == 2, r.output
    assert not store.exists()  # the bundle's vectors and prompts were not added
