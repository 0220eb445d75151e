"""The command line: verbs, exit codes, and errors that say what to do without losing data."""

from __future__ import annotations

from click.testing import CliRunner

from traitlens.testing import write_corpus
from traitlens.store import Store
from traitlens.workflows.cli import cli


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_help_lists_verbs():
    """Every registered verb has its own line, with its summary, in the Commands section."""
    out = run("--help").output
    listed = {line.split()[0] for line in out.split("Commands:", 1)[1].splitlines() if line.strip()}
    assert listed == set(cli.commands) and {"info", "ingest", "verify", "evaluate", "steer"} <= listed


def test_ingest_info_verify_roundtrip(tmp_path, tiny_gpt2):
    c = write_corpus(tmp_path / "c.jsonl", 10)
    s = tmp_path / "store"
    r = run("--store", s, "ingest", c, "--model", tiny_gpt2, "--layers", "0,2", "--quiet")
    assert r.exit_code == 0, r.output
    assert "10 prompts captured" in r.output
    info = run("--store", s, "info").output
    assert "resid/last: 10 prompts, 2 layers (L0-L2)" in info and "default model" in info
    v = run("--store", s, "verify")
    assert v.exit_code == 0 and "store clean" in v.output


def test_bad_corpus_exits_2_names_line_and_keeps_the_store(tmp_path, tiny_gpt2):
    s = tmp_path / "store"
    good = write_corpus(tmp_path / "good.jsonl", 6)
    assert run("--store", s, "ingest", good, "--model", tiny_gpt2, "--quiet").exit_code == 0
    before = sorted(p.name for p in (s / "tables" / "rows").iterdir())
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": "oops",}\n')
    r = run("--store", s, "ingest", good, bad, "--model", tiny_gpt2, "--quiet")
    assert r.exit_code == 2
    assert "bad.jsonl:2:" in r.output and "malformed JSON" in r.output
    assert sorted(p.name for p in (s / "tables" / "rows").iterdir()) == before
    assert Store.open(s).prompts().num_rows == 6


def test_unknown_site_and_layer_exit_2(tmp_path, tiny_llama):
    c = write_corpus(tmp_path / "c.jsonl", 3)
    r = run("--store", tmp_path / "s", "ingest", c, "--model", tiny_llama, "--site", "model.layers.0.mlpx")
    assert r.exit_code == 2 and "nearest" in r.output and "model.layers.0.mlp" in r.output
    r = run("--store", tmp_path / "s", "ingest", c, "--model", tiny_llama, "--layers", "12")
    assert r.exit_code == 2 and "layers 0-2" in r.output
    assert not (tmp_path / "s").exists()  # validated before the store was created


def test_verify_tail_exit_1_then_repair(tmp_path, tiny_gpt2):
    c = write_corpus(tmp_path / "c.jsonl", 5)
    s = tmp_path / "store"
    run("--store", s, "ingest", c, "--model", tiny_gpt2, "--quiet", "--layers", "0")
    store = Store.open(s)
    key = store.groups()[0]
    arr = store.zarr_root(mode="a")[key.path]["L0"]
    arr.resize((arr.shape[0] + 3, arr.shape[1]))
    r = run("--store", s, "verify")
    assert r.exit_code == 1 and "uncommitted tail of 3 rows" in r.output and "--repair" in r.output
    assert run("--store", s, "verify", "--repair").exit_code == 0
    assert run("--store", s, "verify").exit_code == 0


def test_locked_store_exit_3(tmp_path, tiny_gpt2):
    c = write_corpus(tmp_path / "c.jsonl", 3)
    s = tmp_path / "store"
    run("--store", s, "ingest", c, "--model", tiny_gpt2, "--quiet")
    from traitlens.testing import lock_held_elsewhere

    grown = write_corpus(tmp_path / "c2.jsonl", 5)
    with lock_held_elsewhere(s, "someone else"):
        r = run("--store", s, "ingest", grown, "--model", tiny_gpt2, "--quiet")  # has prompts to write
        same = run("--store", s, "ingest", c, "--model", tiny_gpt2, "--quiet")  # nothing to write
    assert r.exit_code == 3 and "someone else" in r.output
    # a rerun with nothing new is read-only: its receipt answers it, the writer's lock does not matter
    assert same.exit_code == 0 and "model was not loaded" in same.output, same.output


def test_missing_store_and_uncached_model_errors(tmp_path, monkeypatch):
    r = run("--store", tmp_path / "nope", "verify")
    assert r.exit_code == 1 and "no traitlens store" in r.output
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    c = write_corpus(tmp_path / "c.jsonl", 3)
    r = run("--store", tmp_path / "s", "ingest", c, "--model", "no-such-org/no-such-model-xyz")
    assert r.exit_code == 1 and "no-such-org/no-such-model-xyz" in r.output
    assert "huggingface-cli download" in r.output or "local model folder" in r.output


def test_the_cli_imports_no_stage_until_a_verb_needs_it():
    """Every verb used to import torch (through the error classes) before doing anything: a
    query or a verify paid ~1.5 s for a model it never loads."""
    import subprocess
    import sys

    code = ("import sys; import traitlens.workflows.cli; "
            "print(sorted(m for m in ('torch', 'transformers', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_project_error_carries_its_exit_code():
    from traitlens.pipeline.capture.corpus import CorpusError
    from traitlens.pipeline.model.encode import PromptTooLong
    from traitlens.pipeline.model.layers import SiteError
    from traitlens.pipeline.extract.methods import ExtractionError
    from traitlens.pipeline.model.loading import ModelError
    from traitlens.queries import QueryError
    from traitlens.store import StoreError, StoreLocked, TraitlensError
    from traitlens.workflows.spec import SpecError

    codes = {CorpusError: 2, PromptTooLong: 2, SiteError: 2, ExtractionError: 2, QueryError: 2, SpecError: 2,
             ModelError: 1, StoreError: 1, StoreLocked: 3}
    for cls, code in codes.items():
        assert issubclass(cls, TraitlensError) and cls.exit_code == code, cls
    for cls in (CorpusError, PromptTooLong, SiteError, ExtractionError, QueryError, SpecError):
        assert issubclass(cls, ValueError)  # callers' `except ValueError` still catch bad input


def test_steer_and_evaluate_option_defaults_are_the_python_apis():
    """One definition (pipeline/steer/settings.py): the SweepConfig that `evaluate --steering`'s
    default options build is SweepConfig() (what tl.evaluate and a spec's [evaluate] start from),
    and `steer`'s defaults are tl.steer's."""
    import inspect

    from traitlens.pipeline.steer.settings import SweepConfig
    from traitlens.workflows import api

    def parsed(verb: str, *args: str) -> dict:  # the command's parameters as parsed, only ``args`` given
        with cli.make_context("traitlens", [verb]) as parent:
            return cli.commands[verb].make_context(verb, ["--trait", "t", *args], parent=parent).params

    e = parsed("evaluate", "--steering")
    from_cli = SweepConfig(kind=e["kind"], methods=e["methods"], layers=e["layers"], alphas=e["alphas"], n=e["n_texts"],
                           norm=e["norm"], max_new_tokens=e["max_new_tokens"], reply_tokens=e["reply_tokens"],
                           kl_budget=e["kl_budget"], trials=e["trials"], random_floor=not e["no_random"],
                           kl=e["kl_measure"], ablate=e["ablate"], capability=e["capability_tasks"] or [],
                           capability_limit=e["capability_limit"], capability_budget=e["capability_budget"])
    assert from_cli.validate() == SweepConfig().validate()
    s, signature = parsed("steer"), inspect.signature(api.steer).parameters
    for name in ("alpha", "batch_size", "max_new_tokens"):
        assert s[name] == signature[name].default, name
    m = parsed("monitor")
    assert (m["alpha"], m["batch_size"], m["max_new_tokens"]) == (s["alpha"], s["batch_size"], s["max_new_tokens"])
