"""Extraction settings (:class:`ExtractConfig`) and the parsing of what the CLI and the specs give
for them: ``--methods``, ``--memory`` and each method's constructor params, refused with an
:class:`~.methods.ExtractionError` naming the option before anything runs or is written."""

from __future__ import annotations

from dataclasses import dataclass, field

from traitlens.store.vocabulary import METHOD_NAMES

from traitlens.pipeline.extract.methods import METHODS, ExtractionError, make_method
from traitlens.pipeline.extract.resample import N_BOOT_MAX


@dataclass
class ExtractConfig:
    methods: list[str] = field(default_factory=lambda: list(METHOD_NAMES))
    params: dict[str, dict] = field(default_factory=dict)  # method -> constructor params
    n_boot: int = 8
    seed: int = 0
    memory_budget: int = 1 << 30  # bytes, whole run
    chunk_rows: int | None = None  # streaming read size; default: 16 zarr chunks

    def validate(self) -> "ExtractConfig":
        """Refuse settings that cannot run (raises ExtractionError naming the option)."""
        for name, lo in (("n_boot", 0), ("seed", 0), ("memory_budget", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                opt = {"memory_budget": "--memory", "n_boot": "--n-boot", "seed": "--seed"}[name]
                raise ExtractionError(f"{opt} {v!r}: must be an integer of at least {lo}")
        if self.n_boot > N_BOOT_MAX:
            raise ExtractionError(f"--n-boot {self.n_boot}: at most {N_BOOT_MAX} bootstrap resamples (each refits "
                                  "every method; 8 to 100 are typical)")
        if self.chunk_rows is not None and (not isinstance(self.chunk_rows, int) or self.chunk_rows < 1):
            raise ExtractionError(f"chunk_rows {self.chunk_rows!r}: must be a positive integer")
        self.methods = parse_methods(self.methods)
        check_params(self.params)
        return self


def method_params(cfg: ExtractConfig, name: str) -> dict:
    """Constructor params of one method: the configured ones, with ``seed`` defaulting to the
    run's ``--seed`` for methods that take one (random, gradient, ICA), so that the seed asked
    for is the seed used — and hashed into the vector's identity."""
    params = dict(cfg.params.get(name, {}))
    if "seed" not in params and "seed" in param_names(name):
        params["seed"] = cfg.seed
    return params


def param_names(name: str) -> list[str]:
    """The constructor parameters of a method (scikit-learn's ``get_params`` of a default one)."""
    return sorted(make_method(name).get_params())


def check_params(params: dict) -> None:
    """Refuse method params the estimators do not take (before anything runs or is written)."""
    if not isinstance(params, dict):
        raise ExtractionError(f"extract params must be a table of method -> {{param = value}}, got {params!r:.80}")
    for name, p in params.items():
        if name not in METHODS:
            raise ExtractionError(f"extract params: unknown method {name!r}; methods: {', '.join(METHODS)}")
        if not isinstance(p, dict):
            raise ExtractionError(f"extract params.{name} must be a table of parameter = value, got "
                                  f"{type(p).__name__} {p!r:.80}")
        accepted = param_names(name)
        bad = [k for k in p if k not in accepted]
        if bad:
            raise ExtractionError(f"extract params.{name}: unknown parameter(s) {bad}; {name} takes "
                                  f"{', '.join(accepted) or 'none'}")
        try:
            make_method(name, **p)
        except (TypeError, ValueError) as e:
            raise ExtractionError(f"extract params.{name}: {e}") from None


def parse_size(text: str | int) -> int:
    """``1GB`` | ``512MB`` | ``64k`` | bytes -> bytes."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = str(text).strip().lower().rstrip("b")
    try:
        return int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(t)
    except (ValueError, OverflowError):  # OverflowError: 1e400GB (inf) has no integer
        raise ExtractionError(f"memory {text!r}: use bytes or a size like 512MB, 2GB") from None


def parse_methods(spec: str | list[str]) -> list[str]:
    items = spec if isinstance(spec, list) else [s.strip() for s in str(spec).split(",") if s.strip()]
    if items == ["all"] or not items:
        return list(METHOD_NAMES)
    bad = [m for m in items if m not in METHODS]
    if bad:
        raise ExtractionError(f"unknown method(s) {bad}; use {', '.join(METHODS)} or all")
    return items
