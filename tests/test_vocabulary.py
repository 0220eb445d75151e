"""The names traitlens is made of are defined once (``store/vocabulary.py``) and everything that
lists them reads them there: the estimators, the measures, the Parquet schemas, the SQL views,
the CLI's choices and help, the spec checks, the validators. Each test compares a list the code
acts on (found independently: the registered estimator classes, the click parameters, DuckDB's
catalogue, the package's own source) against the vocabulary."""

from __future__ import annotations

import ast
from pathlib import Path

import click
import pytest

from traitlens.store import vocabulary as vocab

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ["store", "queries", "pipeline", "workflows", "tests/support"]


def _choices(command: str, option: str) -> tuple[str, ...]:
    from traitlens.workflows.cli import cli

    (param,) = [p for p in cli.commands[command].params if f"--{option}" in p.opts]
    assert isinstance(param.type, click.Choice), f"{command} --{option} is not a choice"
    return tuple(param.type.choices)


def _help(command: str, option: str) -> str:
    from traitlens.workflows.cli import cli

    (param,) = [p for p in cli.commands[command].params if f"--{option}" in p.opts]
    return param.help


def test_the_registered_estimators_are_the_vocabulary_s_methods_in_its_order():
    from traitlens.pipeline.extract.methods import METHODS

    assert tuple(METHODS) == vocab.METHOD_NAMES
    assert [cls.name for cls in METHODS.values()] == list(vocab.METHOD_NAMES)


def test_extract_all_fits_every_method_and_refuses_an_unknown_one_naming_them():
    from traitlens.pipeline.extract.config import parse_methods
    from traitlens.pipeline.extract.methods import ExtractionError

    assert parse_methods("all") == list(vocab.METHOD_NAMES)
    with pytest.raises(ExtractionError, match=", ".join(vocab.METHOD_NAMES)):
        parse_methods("mean_diff,bogus")


def test_every_evaluation_kind_has_a_measure_and_an_unknown_kind_is_refused():
    from traitlens.pipeline.steer.evaluate import MEASURES, Evaluator

    assert set(MEASURES) | {"expression"} == set(vocab.EVALUATION_KINDS)
    assert vocab.LOOSE_KIND in vocab.EVALUATION_KINDS
    with pytest.raises(ValueError, match="kind must be one of " + ", ".join(vocab.EVALUATION_KINDS)):
        Evaluator(None, "bogus", [])


def test_every_table_has_a_schema_and_a_sql_view(tmp_path):
    from traitlens.queries import StoreSQL
    from traitlens.store import Store
    from traitlens.store.tables import SCHEMAS

    assert set(SCHEMAS) == set(vocab.TABLE_NAMES)
    store = Store.open(tmp_path / "s", create=True)
    with StoreSQL(store) as q:
        views = {r["table_name"] for r in q.query("SELECT table_name FROM information_schema.tables").to_pylist()}
    assert set(vocab.TABLE_NAMES) <= views


def test_the_cli_choices_are_the_vocabulary():
    assert _choices("compact", "table") == vocab.TABLE_NAMES
    assert _choices("evaluate", "kind") == vocab.EVALUATION_KINDS
    assert _choices("evaluate", "site") == _choices("steer", "site") == vocab.NAMED_SITES
    assert _choices("evaluate", "norm") == _choices("steer", "norm") == vocab.NORMS
    assert _choices("export", "format") == vocab.EXPORT_FORMATS
    assert _choices("extract", "fmt") == vocab.FORMATS


def test_the_cli_help_names_every_pooling_site_method_and_position():
    pooling = _help("ingest", "pooling")
    assert all(p in pooling for p in vocab.POOLINGS)
    assert all(s in _help("ingest", "site") for s in vocab.NAMED_SITES)
    assert all(m in _help("extract", "methods") for m in vocab.METHOD_NAMES)
    assert all(p in _help("steer", "positions") for p in vocab.POSITIONS)


def test_the_validators_accept_each_name_and_refuse_others():
    from traitlens.pipeline.capture.settings import IngestConfig
    from traitlens.pipeline.steer.steering import check_positions
    from traitlens.store import GroupKey
    from traitlens.store.errors import InputError

    for p in vocab.POOLINGS:
        assert GroupKey("m", vocab.FORMATS[0], "resid", p).pooling == p
        assert IngestConfig(poolings=[p], generate=4).validate().poolings == [p]
    for f in vocab.FORMATS:
        assert GroupKey("m", f, "resid", "last").fmt == f
    with pytest.raises(ValueError):
        GroupKey("m", "chat", "resid", "median")
    with pytest.raises(InputError, match=", ".join(vocab.POOLINGS)):
        IngestConfig(poolings=["median"]).validate()
    assert IngestConfig().poolings == list(vocab.DEFAULT_POOLINGS)
    assert [check_positions(p) for p in vocab.POSITIONS] == list(vocab.POSITIONS)
    with pytest.raises(ValueError, match=", ".join(vocab.POSITIONS)):
        check_positions("middle")


def test_a_spec_checks_evaluate_kind_and_norm_against_the_vocabulary(tmp_path):
    from traitlens.workflows.spec import SpecError, load_spec

    (tmp_path / "c.jsonl").write_text('{"text": "hi", "label": 1}\n')

    def spec(extra: str):
        path = tmp_path / "s.toml"
        path.write_text(f'store = "s.store"\n[[corpora]]\npaths = ["c.jsonl"]\n[evaluate]\n{extra}\n')
        return load_spec(path, check_values=False)

    for kind in vocab.EVALUATION_KINDS:
        assert spec(f'kind = "{kind}"').evaluate["kind"] == kind
    for norm in vocab.NORMS:
        assert spec(f'norm = "{norm}"').evaluate["norm"] == norm
    with pytest.raises(SpecError, match=vocab.EVALUATION_KINDS[-1]):
        spec('kind = "vibes"')
    with pytest.raises(SpecError, match="evaluate.norm"):
        spec('norm = "median"')


def test_the_cache_adapter_knows_every_named_site():
    from traitlens.pipeline.interop import CACHE_HOOKS

    assert tuple(CACHE_HOOKS) == vocab.NAMED_SITES


def _vocabulary_lists() -> dict[str, frozenset]:
    return {name: frozenset(v) for name, v in vars(vocab).items()
            if name.isupper() and isinstance(v, tuple) and len(v) > 1}


def spelled_out(source: str, lists: dict[str, frozenset]) -> list[tuple[int, str]]:
    """``(line, vocabulary name)`` for every tuple, list or set literal of strings (None among
    them allowed: ``(None, "persona", ...)``) in ``source`` that holds the same names as one of
    ``lists`` (a second definition of it)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and all(
                isinstance(e, ast.Constant) and (e.value is None or isinstance(e.value, str)) for e in node.elts):
            names = frozenset(e.value for e in node.elts if e.value is not None)
            found += [(node.lineno, name) for name, v in lists.items() if names == v]
    return found


def test_no_module_spells_out_a_vocabulary_list_again():
    lists = _vocabulary_lists()
    assert {"TABLE_NAMES", "POOLINGS", "NAMED_SITES", "METHOD_NAMES", "EVALUATION_KINDS", "NORMS"} <= set(lists)
    bad = [f"{f.relative_to(ROOT)}:{line}: the names of {name}; import it from traitlens.store.vocabulary"
           for folder in PACKAGE for f in sorted((ROOT / folder).rglob("*.py")) if f.name != "vocabulary.py"
           for line, name in spelled_out(f.read_text(), lists)]
    assert not bad, "\n".join(bad)


def test_the_spelled_out_check_finds_a_second_definition():
    lists = _vocabulary_lists()
    src = ('KINDS = ("expression", "persona", "refusal", "refusal_first_token", "refusal_rate")\nOK = ("persona", "refusal")\n'
           'if kind not in (None, "typical", "all"):\n    pass\n')
    assert spelled_out(src, lists) == [(1, "EVALUATION_KINDS"), (3, "NORMS")]
