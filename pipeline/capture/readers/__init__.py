"""Corpus readers: every format behind one interface, a stream of normalised Arrow batches.

A corpus argument (a file, a folder, a glob) expands to :class:`~.sources.Source` files
(:func:`~.sources.expand`); each source is read by the module for its format, a batch at a time,
never whole:

- ``jsonl``: JSON lines parsed by Arrow a block at a time, with a fallback to the line reader
  of :mod:`..corpus` wherever Arrow's reading could differ from Python's (:mod:`.jsonl`);
- ``parquet`` (by row group), ``arrow`` (IPC files and streams, the shards of a ``datasets``
  ``save_to_disk`` folder) (:mod:`.columnar`);
- ``json``, ``csv``, ``tsv``, ``txt`` and positive/negative trait folders: the line readers of
  :mod:`..corpus`, whose records are gathered into batches.

``.gz`` and ``.zst`` files decompress as they stream (:mod:`.streams`). Every reader yields
batches of the scan's columns (:data:`.normalise.COLUMNS`): ``prompt_id``, ``dataset``,
``trait``, ``label``, ``split``, ``source``, ``text``, ``messages``, ``extra``, built by
:mod:`.normalise` under the rules of :func:`..corpus.record_from_object` (one definition;
the columnar path is tested against it). :func:`~.batches.source_attempts` is what the plan
calls. This package imports nothing at import time: :mod:`..corpus` dispatches to it lazily.
"""
