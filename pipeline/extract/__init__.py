"""Extraction: contrastive sets from the store (``contrastive``), the estimators (``methods``),
held-out metrics (``metrics``), the settings (``config``), the per-layer fits (``fitting``),
the Dask job that runs and stores them (``jobs``) and vector export (``export``). Imports
``model``, ``runtime``, ``store``, ``queries``; no other stage.

``from traitlens.pipeline.extract import extract, ExtractConfig`` and the estimator classes
work as before the stage packages; they load on first use, so importing a submodule such as
``traitlens.pipeline.extract.methods`` does not pull in Dask.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "extract": "jobs", "ExtractConfig": "config", "ExtractResult": "jobs",
    "METHODS": "methods", "make_method": "methods", "ExtractionError": "methods",
    "Direction": "methods", "MeanDifference": "methods", "PCADiff": "methods", "ICADirection": "methods",
    "LogisticProbe": "methods", "Gradient": "methods", "RandomDirection": "methods",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
