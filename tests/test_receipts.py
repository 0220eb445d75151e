"""A rerun that finds nothing new is answered from its receipt, without torch or the model;
anything that could change the outcome falls through to a normal ingest."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from click.testing import CliRunner

from traitlens.pipeline.capture import receipts
from traitlens.pipeline.capture.corpus import ReadOptions
from traitlens.pipeline.capture.settings import IngestConfig
from traitlens.testing import write_corpus
from traitlens.workflows.cli import cli

# libraries a run that captures nothing never needs (the model's, the cluster's, the fits')
HEAVY = ("torch", "transformers", "dask", "distributed", "sklearn", "scipy")
# the CLI in a fresh interpreter, reporting which of HEAVY it imported, then whether torch was one
PROBE = ("import sys\nfrom traitlens.workflows.cli import cli\n"
         "try:\n    cli.main(sys.argv[1:], prog_name='traitlens')\nexcept SystemExit as e:\n    code = e.code\n"
         f"print('heavy:', *[m for m in {HEAVY!r} if m in sys.modules])\n"
         "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')")


def ingest_cli(store, corpus, model, *extra):
    r = CliRunner().invoke(cli, ["--store", str(store), "ingest", str(corpus), "--model", str(model), "-q", *extra],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r.output


def fresh_cli(store, corpus, model):
    out = subprocess.run([sys.executable, "-c", PROBE, "--store", str(store), "ingest", str(corpus), "--model",
                          str(model), "-q"], capture_output=True, text=True, env=dict(os.environ), timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_an_unchanged_rerun_is_answered_without_torch_and_reports_what_a_full_rerun_does(tmp_path, tiny_llama):
    corpus = write_corpus(tmp_path / "c.jsonl", 30)
    store = tmp_path / "s"
    ingest_cli(store, corpus, tiny_llama)
    out = fresh_cli(store, corpus, tiny_llama)
    assert "model was not loaded" in out and out.strip().endswith("NO-TORCH"), out
    assert "0 prompts captured, 30 already stored" in out
    before = sorted(p.name for p in (store / "tables" / "runs").iterdir())
    fresh_cli(store, corpus, tiny_llama)
    assert sorted(p.name for p in (store / "tables" / "runs").iterdir()) == before  # a no-op writes nothing


def test_a_changed_byte_another_corpus_or_touched_model_files_fall_through(tmp_path, tiny_llama):
    corpus = write_corpus(tmp_path / "c.jsonl", 20)
    store = tmp_path / "s"
    ingest_cli(store, corpus, tiny_llama)
    cfg, opts = IngestConfig(model=str(tiny_llama)), ReadOptions()
    assert receipts.check(store, [corpus], opts, cfg) is not None
    # one more prompt: the digest changes, so the normal path runs and captures it
    write_corpus(corpus, 21)
    assert receipts.check(store, [corpus], opts, cfg) is None
    assert ": 1 prompts captured" in ingest_cli(store, corpus, tiny_llama)
    assert receipts.check(store, [corpus], opts, cfg) is not None
    # someone else's ingest adds parts to the store (it could relabel these prompts): no shortcut
    other = write_corpus(tmp_path / "other.jsonl", 5, start=100, trait="other")
    ingest_cli(store, other, tiny_llama)
    assert receipts.check(store, [corpus], opts, cfg) is None
    assert ": 0 prompts captured" in ingest_cli(store, corpus, tiny_llama)  # the normal path, which renews the receipt
    assert receipts.check(store, [corpus], opts, cfg) is not None
    # different settings (another layer set) are another request
    assert receipts.check(store, [corpus], opts, IngestConfig(model=str(tiny_llama), layers="0")) is None
    # a model file rewritten: the cached identity no longer applies
    cfg_file = tiny_llama / "config.json"
    st = cfg_file.stat()
    os.utime(cfg_file, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    try:
        assert receipts.check(store, [corpus], opts, cfg) is None
    finally:
        os.utime(cfg_file, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert receipts.check(store, [corpus], opts, cfg) is not None


def test_a_receipt_never_hides_a_repair(tmp_path, tiny_llama):
    """Rows moved to quarantine change the rows table: the rerun must capture them again."""
    corpus = write_corpus(tmp_path / "c.jsonl", 20)
    store = tmp_path / "s"
    ingest_cli(store, corpus, tiny_llama)
    parts = sorted((store / "tables" / "rows").glob("part-*.parquet"))
    parts[-1].write_bytes(b"not parquet")  # damaged: verify --repair quarantines it
    r = CliRunner().invoke(cli, ["--store", str(store), "verify", "--repair", "-q"], catch_exceptions=False)
    assert "quarantine" in r.output.lower(), r.output
    assert receipts.check(store, [corpus], ReadOptions(), IngestConfig(model=str(tiny_llama))) is None
    assert ": 20 prompts captured" in ingest_cli(store, corpus, tiny_llama)  # captured again


def test_receipts_are_a_cache_outside_the_store(tmp_path, tiny_llama):
    corpus = write_corpus(tmp_path / "c.jsonl", 10)
    store = tmp_path / "s"
    ingest_cli(store, corpus, tiny_llama)
    files = list((receipts.traitlens_home() / "receipts").glob("*.json"))
    assert files and all(json.loads(f.read_text()) for f in files)
    assert not any("receipt" in p.name for p in store.rglob("*"))
    for f in files:  # deleting them costs only speed
        f.unlink()
    assert receipts.check(store, [corpus], ReadOptions(), IngestConfig(model=str(tiny_llama))) is None
    assert "0 prompts captured, 10 already stored" in ingest_cli(store, corpus, tiny_llama)


def test_compaction_keeps_a_receipt_and_a_lost_compacted_part_breaks_it(tmp_path, tiny_llama):
    """A receipt vouches for which rows the tables hold, not for their file names: merging the
    parts changes nothing it vouches for; losing a compacted part does."""
    corpus = write_corpus(tmp_path / "c.jsonl", 40)
    store = tmp_path / "s"
    from traitlens.pipeline.capture.ingest import ingest

    cfg, opts = IngestConfig(model=str(tiny_llama)), ReadOptions()
    ingest(store, [corpus], opts, IngestConfig(model=str(tiny_llama), chunk_rows=8, batch_size=8), progress=False,
           log=lambda *a: None)  # a commit per 8 prompts: five rows parts
    assert receipts.check(store, [corpus], opts, cfg) is not None
    r = CliRunner().invoke(cli, ["--store", str(store), "compact", "--grace", "0"], catch_exceptions=False)
    assert r.exit_code == 0 and "tables/rows: 5 -> 1 files" in r.output, r.output
    assert receipts.check(store, [corpus], opts, cfg) is not None
    base = next((store / "tables" / "rows").glob("base-*.parquet"))
    base.unlink()
    assert receipts.check(store, [corpus], opts, cfg) is None


def test_a_rerun_without_its_receipt_loads_no_model_until_a_prompt_needs_it(tmp_path, tiny_llama):
    """Receipts are a cache (another machine, a cleared home, a corpus rewritten byte for byte
    differently): without one, a rerun whose records are all stored as the corpus has them is
    settled from the model's cached identity after reading the corpus, without torch, and writes
    nothing but a new receipt. A relabelled or a new prompt loads the model."""
    corpus = write_corpus(tmp_path / "c.jsonl", 30)
    store = tmp_path / "s"
    ingest_cli(store, corpus, tiny_llama)
    runs = sorted(p.name for p in (store / "tables" / "runs").iterdir())

    def without_receipts():
        for f in (receipts.traitlens_home() / "receipts").glob("*.json"):
            f.unlink()
        assert receipts.check(store, [corpus], ReadOptions(), IngestConfig(model=str(tiny_llama))) is None
        return fresh_cli(store, corpus, tiny_llama)

    out = without_receipts()
    assert "every record is stored as the corpus has it" in out and out.strip().endswith("NO-TORCH"), out
    assert "0 prompts captured, 30 already stored" in out
    assert sorted(p.name for p in (store / "tables" / "runs").iterdir()) == runs
    assert receipts.check(store, [corpus], ReadOptions(), IngestConfig(model=str(tiny_llama))) is not None
    lines = corpus.read_text().splitlines()
    assert '"label": "neg"' in lines[0]
    corpus.write_text("\n".join([lines[0].replace('"neg"', '"pos"'), *lines[1:]]) + "\n")
    out = without_receipts()
    assert "1 relabelled" in out and out.strip().endswith("TORCH") and "NO-TORCH" not in out, out
    write_corpus(corpus, 31)
    corpus.write_text("\n".join([lines[0].replace('"neg"', '"pos"'), *corpus.read_text().splitlines()[1:]]) + "\n")
    out = without_receipts()
    assert ": 1 prompts captured, 30 already stored" in out and "NO-TORCH" not in out, out


def test_a_rerun_without_its_receipt_imports_no_model_cluster_or_fitting_library(tmp_path, tiny_llama):
    """The no-op's start-up is its floor: neither torch nor transformers, dask, sklearn or scipy
    is imported by a rerun whose records are all stored (only reading the corpus, one join)."""
    corpus = write_corpus(tmp_path / "c.jsonl", 30)
    store = tmp_path / "s"
    ingest_cli(store, corpus, tiny_llama)
    for f in (receipts.traitlens_home() / "receipts").glob("*.json"):
        f.unlink()
    out = fresh_cli(store, corpus, tiny_llama)
    assert "0 prompts captured, 30 already stored" in out and "the model was not loaded" in out, out
    heavy = next(line for line in out.splitlines() if line.startswith("heavy:"))
    assert heavy == "heavy:", out


def test_a_rerun_that_falls_through_its_receipt_hashes_the_corpus_once(tmp_path, tiny_llama, monkeypatch):
    """The receipt's check and the receipt the run then writes share one digest of the corpus
    bytes (hashing a 1M-prompt corpus costs a few tenths of a second), and it is this corpus's."""
    corpus = write_corpus(tmp_path / "c.jsonl", 20)
    store = tmp_path / "s"
    ingest_cli(store, corpus, tiny_llama)
    write_corpus(corpus, 21)  # one more prompt: the receipt no longer answers
    hashed = []
    real = receipts.corpus_digest
    monkeypatch.setattr(receipts, "corpus_digest", lambda *a: hashed.append(a) or real(*a))
    assert ": 1 prompts captured, 20 already stored" in ingest_cli(store, corpus, tiny_llama)
    assert len(hashed) == 1, hashed
    for f in (receipts.traitlens_home() / "receipts").glob("*.json"):
        f.unlink()
    assert "0 prompts captured, 21 already stored" in ingest_cli(store, corpus, tiny_llama)  # settled, no model
    assert len(hashed) == 2, hashed
    monkeypatch.setattr(receipts, "corpus_digest", real)
    assert receipts.check(store, [corpus], ReadOptions(), IngestConfig(model=str(tiny_llama))) is not None
