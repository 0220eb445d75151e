"""Capture: read a corpus (``corpus``), batch by length (``batching``), run the model with hooks
and pool (``capturer``, ``pooling``), and commit to the store (``ingest``; ``distributed`` for
Dask workers). Imports ``model``, ``runtime``, ``store``, ``queries``; no other stage."""
