"""traitlens: prompt corpora -> activations in a columnar store -> trait vectors -> steering.

``import traitlens as tl``::

    store = tl.Store.create("my.store")             # or tl.Store.open(path); shows itself in a notebook
    tl.ingest(store, "corpus.parquet", layers="all")
    tl.extract(store, "refusal")
    ranking = tl.rank(store, "refusal")              # .to_pandas(), .to_arrow(), repr, HTML
    tl.evaluate(store, "refusal", kind="refusal", alphas=[0.05, 0.1])
    tl.export(store, "refusal", format="gguf")

Each function takes the options of the command of the same name and is what the command runs
(``traitlens.workflows.api``). This package is this one file (``workflows/toplevel/`` in the
source tree); every name is imported on first use, so ``import traitlens`` imports no stage,
no torch. The floors are subpackages: ``traitlens.store``, ``traitlens.queries``,
``traitlens.pipeline``, ``traitlens.workflows`` (and ``traitlens.testing``).
"""

from __future__ import annotations

__all__ = ["__version__", "Store", "ingest", "extract", "rank", "steer", "evaluate", "score", "query", "export",
           "CaptureConfig", "IngestConfig", "ExtractConfig", "SweepConfig", "ScoreConfig", "ReadOptions", "Vector",
           "InputError"]


def __getattr__(name: str):
    if name == "__version__":  # the installed distribution's, so it never disagrees with pip
        from importlib.metadata import version

        return version("traitlens")
    if name in __all__:
        from traitlens.workflows import api

        return getattr(api, name)
    raise AttributeError(f"module 'traitlens' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
