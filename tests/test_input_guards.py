"""Bad input a new user types, each from the third adversarial pass: one test per reproducer.

Each must end in one line naming the option, field, file or id and what to do (exit 2 for bad
input), never a traceback, never a wait on a network this machine does not have, and nothing
written: no store created by a malformed name, no half-written output file.
"""

from __future__ import annotations

import errno
import subprocess
import sys

import pytest
from click.testing import CliRunner

from traitlens.pipeline.extract.jobs import ExtractConfig, extract
from traitlens.store import Store
from traitlens.testing import cli_error, store_copy, synthetic_store, write_corpus
from traitlens.workflows.cli import cli


def run(*args, **kw):
    return CliRunner().invoke(cli, [str(a) for a in args], **kw)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    store, _ = synthetic_store(tmp_path_factory.mktemp("guards") / "s", n=200, d=8, layers=(0, 1, 2), sep=3.0)
    extract(store.root, "planted", ["mean_diff"], cfg=ExtractConfig(n_boot=0))
    return store


@pytest.fixture
def planted(synthetic, tmp_path):
    return store_copy(synthetic, tmp_path / "s")


@pytest.fixture(scope="module")
def model_store(tmp_path_factory, tiny_llama):
    """A tiny model's store with kindness vectors (for the verbs that load a model)."""
    d = tmp_path_factory.mktemp("guards-model")
    c = write_corpus(d / "kind.jsonl", 120)
    assert run("--store", d / "s", "ingest", c, "--model", tiny_llama, "--pooling", "last", "--quiet").exit_code == 0
    assert run("--store", d / "s", "extract", "--trait", "kindness", "--methods", "mean_diff", "--n-boot", "0",
               "--quiet").exit_code == 0
    return d / "s"


# -- tracebacks ----------------------------------------------------------------------------------
def test_extract_c_nan_is_an_input_error(planted):
    cli_error(run("--store", planted.root, "extract", "--trait", "planted", "--C", "nan"), 2, "--C", "finite")


def test_extract_n_boot_is_bounded_before_anything_is_allocated(planted):
    from traitlens.pipeline.extract.resample import N_BOOT_MAX

    before = planted.table("vectors").num_rows
    out = cli_error(run("--store", planted.root, "extract", "--trait", "planted", "--n-boot", "99999999999"), 2,
                   "--n-boot", f"at most {N_BOOT_MAX}")
    assert "99999999999" in out and Store.open(planted.root).table("vectors").num_rows == before
    # the largest allowed count runs the usual way (one resample at a time, never all drawn at once)
    from traitlens.pipeline.extract.resample import bootstrap_counts, bootstrap_draws

    import numpy as np

    pos = np.arange(10) % 2 == 0
    a = bootstrap_counts(pos, 3, np.random.default_rng(0))
    b = np.stack(list(bootstrap_draws(pos, 3, np.random.default_rng(0))))
    np.testing.assert_array_equal(a, b)
    assert (a[:, pos].sum(axis=1) == 5).all() and (a[:, ~pos].sum(axis=1) == 5).all()  # classes keep their sizes


def test_gguf_export_of_layer_0_says_llama_cpp_has_none(planted, tmp_path):
    out = tmp_path / "v.gguf"
    cli_error(run("--store", planted.root, "export", "--trait", "planted", "--layers", "0", "--format", "gguf",
                 "-o", out), 2, "no layer 0", "easysteer")
    assert not out.exists()
    r = run("--store", planted.root, "export", "--trait", "planted", "--format", "gguf", "-o", out)
    assert r.exit_code == 0 and "layer 0 is left out" in r.output and "(2 layers" in r.output, r.output
    assert run("--store", planted.root, "export", "--trait", "planted", "--layers", "0", "--format", "easysteer",
               "-o", tmp_path / "e.gguf").exit_code == 0


@pytest.mark.parametrize("verb", [("export", "--trait", "planted", "-o"),
                                  ("query", "SELECT 1 AS x", "--format", "json", "-o"),
                                  ("rank", "--trait", "planted", "--plot")])
def test_an_output_in_a_missing_folder_is_refused_naming_the_option(planted, verb):
    cli_error(run("--store", planted.root, *verb, "/nonexistent_dir/x.out"), 2, verb[-1], "no such folder /nonexistent_dir")


def write_spec(tmp_path, text: str, name="w.toml"):
    (tmp_path / "c.jsonl").write_text('{"text": "x", "label": 1}\n')
    spec = tmp_path / name
    spec.write_text(text)
    return spec


@pytest.mark.parametrize("capture,field", [('poolings = [["last"]]', "capture.poolings[0]"),
                                           ("sites = [1]", "capture.sites[0]"),
                                           ('layers = [1, "x"]', "capture.layers[1]")])
def test_spec_list_items_of_the_wrong_type_name_the_field(tmp_path, capture, field):
    spec = write_spec(tmp_path, f'store = "s"\n[[corpora]]\npaths = ["c.jsonl"]\n[capture]\n{capture}\n')
    cli_error(run("run", spec), 2, "w.toml", field)
    assert not (tmp_path / "s").exists()


def yaml_bomb(levels: int = 9) -> list[str]:
    """Lines of nested aliases: the last list expands to 10**levels items."""
    lines = ["    - &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for i in range(1, levels + 1):
        lines.append(f"    - &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    return lines


def test_a_yaml_bomb_behind_capture_layers_is_a_short_error(tmp_path):
    spec = write_spec(tmp_path, "\n".join(["store: s", "corpora:", "  - paths: [c.jsonl]", "capture:", "  layers:"]
                                          + yaml_bomb()) + "\n", "bomb.yaml")
    out = cli_error(run("run", spec), 2, "capture.layers[0]")
    assert len(out) < 500  # the value is shown bounded, never expanded


def test_a_spec_is_bounded_in_what_it_may_expand_to(tmp_path):
    from traitlens.workflows.spec import MAX_VALUES

    spec = write_spec(tmp_path, "\n".join(["store: s", "corpora:", "  - paths: [c.jsonl]", "extract:", "  params:",
                                           "    probe:", "      junk:"] + ["  " + l for l in yaml_bomb()]) + "\n",
                      "bomb.yaml")
    out = cli_error(run("run", spec), 2, f"more than {MAX_VALUES:,} values")
    assert len(out) < 500


# -- store and model names ---------------------------------------------------------------------------
def test_a_memory_store_is_refused_by_the_command(tmp_path, tiny_llama):
    c = write_corpus(tmp_path / "c.jsonl", 4)
    r = subprocess.run([sys.executable, "-m", "traitlens.workflows.cli", "--store", "memory://m/s", "ingest", str(c),
                        "--model", str(tiny_llama), "--quiet"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "memory://" in r.stderr and "--store" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("name,words", [("s3:/", ("malformed URL", "s3://")), ("s3:bucket/x", ("malformed URL",)),
                                        ("file://relative/path", ("absolute path", "file:///"))])
def test_malformed_store_urls_are_refused_and_create_nothing(tmp_path, monkeypatch, tiny_llama, name, words):
    monkeypatch.chdir(tmp_path)
    c = write_corpus(tmp_path / "c.jsonl", 4)
    cli_error(run("--store", name, "ingest", c, "--model", tiny_llama, "--quiet"), 2, "--store", *words)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl"]


def test_file_urls_with_an_absolute_path_still_work(tmp_path, tiny_llama):
    c = write_corpus(tmp_path / "c.jsonl", 4)
    r = run("--store", f"file://{tmp_path / 's'}", "ingest", c, "--model", tiny_llama, "--quiet")
    assert r.exit_code == 0, r.output
    assert Store.open(tmp_path / "s").prompts().num_rows == 4


def test_an_empty_model_name_is_refused_not_read_as_the_default(tmp_path):
    c = write_corpus(tmp_path / "c.jsonl", 4)
    cli_error(run("--store", tmp_path / "s", "ingest", c, "--model", "", "--quiet"), 2, "--model ''")
    assert not (tmp_path / "s").exists()


def test_an_empty_model_name_is_refused_by_every_verb_that_loads_one(model_store):
    cli_error(run("--store", model_store, "steer", "hi", "--trait", "kindness", "--model", ""), 2, "--model ''")


# -- misleading words and leftovers ------------------------------------------------------------------
def test_a_missing_corpus_file_is_bad_input_not_an_io_failure(model_store, tiny_llama, tmp_path):
    for store in (model_store, tmp_path / "new"):
        out = cli_error(run("--store", store, "ingest", tmp_path / "nope.jsonl", "--model", tiny_llama), 2,
                       "nope.jsonl", "no such file or folder")
        assert "verify --repair" not in out and "I/O error" not in out
    assert not (tmp_path / "new").exists()


def test_steer_with_an_unknown_vector_id_says_so(model_store, tiny_llama):
    out = cli_error(run("--store", model_store, "steer", "hi", "--vector-id", "deadbeef", "--model", tiny_llama), 2,
                   "deadbeef", "traitlens vectors")
    assert "None" not in out


def test_evaluate_names_judge_for_a_missing_judge_folder(model_store, tiny_llama, tmp_path):
    out = cli_error(run("--store", model_store, "evaluate", "--trait", "kindness", "--steering", "--model", tiny_llama,
                       "--judge", tmp_path / "no-judge", "--plot", tmp_path / "e.png"), 2, "--judge", "no-judge")
    assert "--model" not in out


def test_a_failed_query_output_leaves_no_file(planted, tmp_path, monkeypatch):
    """The disk fills while the file is written: before, the output was left empty."""
    import pyarrow.parquet as pq

    def disk_full(table, where, **kw):
        f = open(where, "wb") if isinstance(where, str) else where
        f.write(b"PAR1")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq, "write_table", disk_full)
    out = tmp_path / "q.parquet"
    cli_error(run("--store", planted.root, "query", "SELECT * FROM prompts", "--format", "parquet", "-o", out), 1,
             "disk is full")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # no file, no temporary


def test_a_query_parquet_cannot_hold_is_an_input_error_and_leaves_no_file(planted, tmp_path):
    out = tmp_path / "q.parquet"
    cli_error(run("--store", planted.root, "query", "SELECT INTERVAL 1 DAY AS i", "--format", "parquet", "-o", out), 2,
             "--format parquet", "csv or json")
    assert not out.exists()


def test_an_unknown_hub_id_fails_at_once_without_asking_the_network(tmp_path, monkeypatch):
    """No HF_HUB_OFFLINE here: the hub's host (a closed local port) does not answer, so nothing
    tries to download (before, the hub client retried for ~50 s on a machine with no network)."""
    import transformers

    asked = []
    for cls in (transformers.AutoTokenizer, transformers.AutoModelForCausalLM):
        real = cls.from_pretrained.__func__

        def spy(klass, *a, _real=real, **kw):
            if not kw.get("local_files_only"):
                asked.append(a[0])
            return _real(klass, *a, **{**kw, "local_files_only": True})

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: refused at once
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    c = write_corpus(tmp_path / "c.jsonl", 3)
    out = cli_error(run("--store", tmp_path / "s", "ingest", c, "--model", "no-such-org/no-such-model-xyz"), 1,
                   "no-such-org/no-such-model-xyz", "cannot be reached", str(tmp_path / "hf"), "huggingface-cli download")
    assert asked == [], asked
    assert "no folder" in out

