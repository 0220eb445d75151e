"""traitlens.pipeline: the stages that touch a model or compute vectors.

- ``model/``: loading, sites and layers, token encoding, the one hook layer, batch padding.
- ``runtime/``: process plumbing every stage shares (SIGTERM as Ctrl-C, the Dask cluster rule).
- ``capture/``: corpus -> token ids -> pooled activations -> the store (``ingest``).
- ``extract/``: contrastive sets, the estimators, metrics, the Dask jobs, vector export.
- ``steer/``: steering and ablation, monitoring, per-token dynamics, causal evaluation.
- ``interop``: the one adapter that sees every stage (TransformerLens/nnsight caches, repeng,
  steering-vectors).

Stages import ``model``, ``runtime``, ``store`` and ``queries``, never each other; a test
(``tests/test_layering.py``) reads every import and fails on an edge that breaks this.
"""
