"""Workflow specs (TOML or YAML): what to capture, extract and report, validated up front.

Example (``workflows/examples/demo.toml``)::

    store = "demo.store"                 # relative to the spec file, or a URL: "s3://bucket/demo.store"
    model = "default"                    # or a Hugging Face id / local folder

    [[corpora]]
    paths = ["corpus/*.jsonl"]           # files, folders or globs
    # trait, label, split, dataset, text_column, label_column, messages_column, limit, sample, seed:
    # as `traitlens ingest` options (text_field, label_field: their older names, still read)

    [capture]
    sites = ["resid"]
    layers = "all"
    poolings = ["last", "mean"]
    # on GPUs: max_tokens = "auto", dtype = "bfloat16", device_map = "auto", max_memory = {0 = "20GiB"},
    # load_in = "4bit" (bitsandbytes, the extra [gpu]): as `traitlens ingest` options

    [extract]
    traits = "all"                       # or a list
    methods = "all"
    n_boot = 8
    # background = ["corpus/background.jsonl"]: as `traitlens extract --background` (also listed
    # under [[corpora]], so the run ingests it first)

    [evaluate]
    steering = false                     # true: `traitlens evaluate --steering` per trait; its options:
    # kind, methods, layers, alphas, n, norm, kl_budget, trials, reply_tokens, max_new_tokens,
    # capability (lm-eval tasks), capability_include (task folders, relative to the spec),
    # capability_limit, capability_budget

    [report]
    path = "report.md"
    top = 5

Every error names the key and says what is allowed: unknown keys (with the nearest known
one), wrong types (list items included), globs that match nothing, numbers that are NaN or
infinite (TOML's ``nan`` and ``inf``, YAML's ``.nan`` and ``.inf``: the rule of every float
option, :func:`traitlens.store.finite.check_float`). A spec expands to at most
:data:`MAX_VALUES` values (YAML aliases can make a few lines expand to billions), and values
are printed bounded.
"""

from __future__ import annotations

import difflib
import glob
import re
import reprlib
from dataclasses import dataclass, field
from pathlib import Path

from traitlens.store.errors import InputError
from traitlens.store.location import capabilities, check_outside_store, store_path
from traitlens.store.vocabulary import DEFAULT_POOLINGS, EVALUATION_KINDS, NORMS

_short = reprlib.Repr()
_short.maxstring, _short.maxother, _short.maxlevel = 60, 60, 3
_short.maxdict = _short.maxlist = 4  # a YAML alias bomb is never expanded


def short_repr(value) -> str:
    """A bounded repr for error messages: a value from a spec may be huge or self-similar."""
    return _short.repr(value)

MAX_VALUES = 100_000  # values (scalars, lists, tables) a spec may expand to, aliases counted where they point

SCHEMA: dict[str, dict] = {
    "": {"store": str, "model": str, "corpora": list, "capture": dict, "extract": dict, "evaluate": dict,
         "score": dict, "report": dict, "scheduler": str},
    "corpora": {"paths": (list, str), "trait": str, "label": (str, int), "split": str, "dataset": str,
                "text_column": str, "label_column": str, "messages_column": str, "limit": int, "sample": int,
                "seed": int, "zero_is_negative": bool,
                "text_field": str, "label_field": str},  # (text_field, label_field: the names before 0.3)
    "capture": {"sites": list, "layers": (str, int, list), "poolings": list, "chat": (bool, str), "generate": int,
                "batch_size": int, "max_tokens": (int, str), "max_length": int, "on_long": str, "padding_side": str,
                "device": str, "dtype": str, "device_map": str, "max_memory": (str, dict), "load_in": str},
    "extract": {"traits": (str, list), "methods": (str, list), "layers": (str, int, list), "n_boot": int,
                "seed": int, "memory": (str, int), "site": str, "pooling": str, "params": dict,
                "background": (str, list)},
    # the values of these are SweepConfig's, checked by SweepConfig.validate (Spec.sweep_config)
    "evaluate": {"steering": bool, "kind": str, "alphas": list, "n": int, "norm": str, "methods": (str, list),
                 "layers": (str, int, list), "kl_budget": (int, float), "trials": int, "reply_tokens": int,
                 "max_new_tokens": int, "capability": (str, list), "capability_include": (str, list),
                 "capability_limit": int, "capability_budget": (int, float)},
    "score": {"traits": (str, list), "where": str},
    "report": {"path": str, "top": int, "plots": bool},
}


# what the items of a list-valued key must be (a list of lists or numbers where names belong
# would otherwise fail deep inside a command)
ITEMS: dict[str, type | tuple] = {"corpora.paths": str, "capture.sites": str, "capture.poolings": str,
                                  "capture.layers": int, "extract.layers": int, "extract.traits": str,
                                  "extract.methods": str, "extract.background": str, "evaluate.layers": int,
                                  "evaluate.methods": str, "evaluate.alphas": (int, float), "evaluate.capability": str,
                                  "evaluate.capability_include": str}


class SpecError(InputError):
    """A spec is invalid; the message names the file and key and says what to do."""


@dataclass
class Corpus:
    paths: list[Path]
    options: dict


@dataclass
class Spec:
    path: Path
    store: Path  # or a UPath for a store on object storage
    model: str | None
    corpora: list[Corpus]
    capture: dict = field(default_factory=dict)
    extract: dict = field(default_factory=dict)
    evaluate: dict = field(default_factory=dict)
    score: dict = field(default_factory=dict)  # traits whose pick scores every stored prompt (refresh: the new ones)
    report: dict = field(default_factory=dict)
    scheduler: str | None = None
    background: list[Path] = field(default_factory=list)  # [extract] background, its globs expanded
    values_checked: bool = False

    def check_values(self) -> "Spec":
        """Check every value the way the commands will use it (once)."""
        if not self.values_checked:
            _check_values(self)
            self.values_checked = True
        return self

    def ingest_config(self):
        """The capture settings as an :class:`~traitlens.pipeline.capture.settings.CaptureConfig` (validated)."""
        from traitlens.pipeline.capture.settings import CaptureConfig

        c = dict(self.capture)
        c.setdefault("poolings", list(DEFAULT_POOLINGS))
        if isinstance(c.get("chat"), str):
            if c["chat"].strip().lower() != "auto":
                raise ValueError(f"capture.chat {c['chat']!r}: use true, false or \"auto\"")
            c["chat"] = None
        if isinstance(c.get("layers"), list):
            c["layers"] = ",".join(map(str, c["layers"]))
        return CaptureConfig(model=self.model, **c).validate()

    def extract_config(self):
        """The extraction settings as an :class:`~traitlens.pipeline.extract.config.ExtractConfig` (validated)."""
        from traitlens.pipeline.extract.config import ExtractConfig

        ex = {("memory_budget" if k == "memory" else k): v for k, v in self.extract.items()
              if k not in ("traits", "background")}
        return ExtractConfig(**ex).validate()  # the model: the run passes the key of the one it loaded

    def sweep_config(self):
        """The steering sweep's settings as a :class:`~traitlens.pipeline.steer.settings.SweepConfig` (validated)."""
        from traitlens.pipeline.steer.settings import SweepConfig

        ev = {k: v for k, v in self.evaluate.items() if k != "steering"}
        if "capability_include" in ev:  # task folders, relative to the spec like every path in it
            inc = ev["capability_include"]
            ev["capability_include"] = [str(self.path.parent / p) for p in ([inc] if isinstance(inc, str) else inc)]
        return SweepConfig(**ev).validate()


def _type_name(t) -> str:
    ts = t if isinstance(t, tuple) else (t,)
    if set(ts) == {int, float}:
        return "number"
    return " or ".join({str: "string", int: "integer", float: "number", bool: "true/false", list: "list",
                        dict: "table"}[x] for x in ts)


def _check_table(path: Path, where: str, table: dict, schema: dict) -> None:
    for key, value in table.items():
        if key not in schema:
            near = difflib.get_close_matches(key, list(schema), n=1)
            hint = f"; did you mean {near[0]!r}?" if near else f"; known keys: {', '.join(sorted(schema))}"
            raise SpecError(f"{path}: unknown key {where + key!r}{hint}")
        want = schema[key]
        ok = isinstance(value, want) and not (want in (int, (int,)) and isinstance(value, bool))
        if not ok:
            raise SpecError(f"{path}: {where + key!r} must be a {_type_name(want)}, got {type(value).__name__} "
                            f"{short_repr(value)}")
        item = ITEMS.get(where.split("[")[0].rstrip(".") + "." + key)
        if item is not None and isinstance(value, list):
            for i, x in enumerate(value):
                if not isinstance(x, item) or isinstance(x, bool):
                    name = _type_name(item)
                    raise SpecError(f"{path}: {where + key}[{i}] must be {'an' if name[0] in 'aeiou' else 'a'} {name}, got "
                                    f"{type(x).__name__} {short_repr(x)}")


def _check_size(path: Path, data) -> None:
    """Refuse a spec that expands to more than :data:`MAX_VALUES` values, counting each alias
    where it is used (a YAML alias bomb), after at most that many steps."""
    todo, seen = [data], 0
    while todo:
        x = todo.pop()
        seen += 1
        if seen > MAX_VALUES:
            raise SpecError(f"{path}: the spec expands to more than {MAX_VALUES:,} values (YAML aliases repeat what "
                            "they point to); a spec lists paths, layers and settings, not data")
        if isinstance(x, dict):
            todo += list(x.values())
        elif isinstance(x, list):
            todo += x


def _check_numbers(path: Path, data) -> None:
    """Refuse NaN and infinities anywhere in the spec, naming the key (``evaluate.kl_budget``,
    ``extract.params.probe.C``, ``evaluate.alphas[1]``). Run after :func:`_check_size`."""
    from traitlens.store.finite import check_float

    todo = [(data, "")]
    while todo:
        x, where = todo.pop()
        if isinstance(x, float):
            try:
                check_float(x, where or "value")
            except InputError as e:
                raise SpecError(f"{path}: {e}") from None
        elif isinstance(x, dict):
            todo += [(v, f"{where}.{k}" if where else str(k)) for k, v in x.items()]
        elif isinstance(x, list):
            todo += [(v, f"{where}[{i}]") for i, v in enumerate(x)]


def _read(path: Path) -> dict:
    text = path.read_text()
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)  # safe_load: no arbitrary objects from a spec file
        elif path.suffix.lower() == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
        else:
            raise SpecError(f"{path}: a spec is .toml, .yaml or .yml")
    except SpecError:
        raise
    except Exception as e:  # the parser's message carries the line
        raise SpecError(f"{path}: not valid {path.suffix[1:].upper()}: {e}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: the top level must be a table of keys")
    return data


def load_spec(path: str | Path, check_values: bool = True) -> Spec:
    """Read and validate a spec; corpus globs are expanded against the spec's folder.

    ``check_values=False`` checks the structure only and leaves the values (which import the
    estimators, ~1.5 s of scikit-learn) to :meth:`Spec.check_values`: a refresh answered by its
    receipt never needs them (the receipt was written by a run that checked these very bytes)."""
    path = Path(path)
    if not path.exists():
        raise SpecError(f"{path}: no such spec file")
    data = _read(path)
    _check_table(path, "", data, SCHEMA[""])  # (these read the top level of each value only)
    for section in ("capture", "extract", "evaluate", "score", "report"):
        _check_table(path, f"{section}.", data.get(section, {}), SCHEMA[section])
    _check_size(path, data)
    _check_numbers(path, data)
    if "store" not in data:
        raise SpecError(f"{path}: 'store' is required (the store folder, relative to the spec)")
    corpora_raw = data.get("corpora") or []
    if not corpora_raw:
        raise SpecError(f"{path}: at least one [[corpora]] entry with 'paths' is required")
    base = path.parent
    corpora = []
    for i, c in enumerate(corpora_raw):
        where = f"corpora[{i}]."
        if not isinstance(c, dict):
            raise SpecError(f"{path}: corpora[{i}] must be a table")
        _check_table(path, where, c, SCHEMA["corpora"])
        if "paths" not in c:
            raise SpecError(f"{path}: {where}paths is required")
        corpora.append(Corpus(_expand(path, f"{where}paths", c["paths"]), {k: v for k, v in c.items() if k != "paths"}))
    background = _expand(path, "extract.background", data.get("extract", {}).get("background", []))
    for key, allowed in (("on_long", ("truncate", "fail")), ("padding_side", ("left", "right"))):
        if data.get("capture", {}).get(key) not in (None, *allowed):
            raise SpecError(f"{path}: capture.{key} must be one of {allowed}")
    if data.get("evaluate", {}).get("kind") not in (None, *EVALUATION_KINDS):
        raise SpecError(f"{path}: evaluate.kind must be {', '.join(EVALUATION_KINDS[:-1])} or {EVALUATION_KINDS[-1]}")
    if data.get("evaluate", {}).get("norm") not in (None, *NORMS):
        raise SpecError(f"{path}: evaluate.norm must be {' or '.join(NORMS)} (alpha's unit; see `traitlens steer --help`)")
    store = store_path(data["store"])  # a folder (relative to the spec) or an fsspec URL
    if capabilities(store).local_files and not store.is_absolute():
        store = base / store
    model = data.get("model")
    spec = Spec(path=path, store=store,
                model=None if model in (None, "default") else model, corpora=corpora,
                capture=data.get("capture", {}), extract=data.get("extract", {}), evaluate=data.get("evaluate", {}),
                score=data.get("score", {}), report=data.get("report", {}), scheduler=data.get("scheduler"),
                background=background)
    if check_values:
        spec.check_values()
    return spec


def _expand(path: Path, key: str, patterns) -> list[Path]:
    """The files ``patterns`` (a path or glob, or a list of them, relative to the spec) name, in
    order; each must match something."""
    base, found = path.parent, []
    for pat in [patterns] if isinstance(patterns, str) else patterns:
        full = pat if Path(pat).is_absolute() else str(base / pat)
        hits = sorted(Path(p) for p in glob.glob(full))
        if not hits:
            raise SpecError(f"{path}: {key}: {pat!r} matches no file (looked in {base})")
        found += hits
    return found


def _check_values(spec: Spec) -> None:
    """Every value, nested tables included, checked the way the commands will use it — so a bad
    one fails here, before ingest has written anything."""
    from traitlens.pipeline.capture.corpus import CorpusError, ReadOptions, parse_label, parse_split
    from traitlens.pipeline.model.layers import SiteError, parse_layers
    from traitlens.pipeline.extract.methods import ExtractionError

    path = spec.path
    try:
        spec.ingest_config()
    except (ValueError, SiteError) as e:
        msg = re.sub(r"--([a-z-]+)", lambda m: "capture." + m.group(1).replace("-", "_"), str(e))
        raise SpecError(f"{path}: {msg}") from None
    try:
        spec.extract_config()
    except ExtractionError as e:
        raise SpecError(f"{path}: [extract] {e}") from None
    for section, key in (("capture", "layers"), ("extract", "layers")):
        value = getattr(spec, section).get(key)
        if value is not None:
            try:  # the syntax now; that the model has these layers is checked once it is loaded
                parse_layers(value, 100_000)
            except SiteError as e:
                raise SpecError(f"{path}: {section}.{key}: {e}") from None
    traits = spec.extract.get("traits")
    if isinstance(traits, list) and not all(isinstance(t, str) and t for t in traits):
        raise SpecError(f"{path}: extract.traits must be \"all\" or a list of trait names, got {short_repr(traits)}")
    for i, c in enumerate(spec.corpora):
        o = c.options
        try:
            if "label" in o:
                parse_label(o["label"], path, None, f"corpora[{i}].label", o.get("zero_is_negative", False))
            if "split" in o:
                parse_split(o["split"], path, None)
            ReadOptions.from_options({k: (str(v) if k == "label" else v) for k, v in o.items()})
            for k in ("limit", "sample"):
                if k in o and o[k] < 1:
                    raise SpecError(f"{path}: corpora[{i}].{k} must be at least 1, got {o[k]}")
        except SpecError:
            raise
        except CorpusError as e:
            raise SpecError(f"{path}: corpora[{i}]: {str(e).split(': ', 1)[-1]}") from None
        except InputError as e:  # a key given under its old and new name
            raise SpecError(f"{path}: corpora[{i}]: {e}") from None
    try:
        sweep = spec.sweep_config()
        if sweep.capability and spec.evaluate.get("steering"):  # before a model is loaded or anything captured
            from traitlens.pipeline.steer.capability import require_lm_eval

            require_lm_eval()
    except ValueError as e:
        msg = re.sub(r"--([a-z-]+)", lambda m: "evaluate." + m.group(1).replace("-", "_"), str(e))
        raise SpecError(f"{path}: {msg}") from None
    top = spec.report.get("top")
    if top is not None and top < 1:
        raise SpecError(f"{path}: report.top must be at least 1, got {top}")
    if "path" in spec.report:
        out = Path(spec.report["path"])
        try:
            check_outside_store(out if out.is_absolute() else path.parent / out, spec.store, "report.path")
        except ValueError as e:
            raise SpecError(f"{path}: {e}") from None
