"""traitlens.testing: helpers for tests and benches (installed from ``tests/support/``).

- :func:`make_model`: tiny random-weight Llama / GPT-2 folders built from configs (no download).
- :func:`synthetic_store`, :func:`planted`: stores and arrays with planted trait directions.
- :func:`write_corpus`, :func:`store_copy`, :func:`lock_held_elsewhere`, :func:`chunk_files`, ``SHARED_DATA``.
- :func:`wait_until`, :func:`descendants`, :func:`alive`, :func:`end_all`: real processes in tests.
"""

from .corpora import SHARED_DATA, chunk_files, lock_held_elsewhere, store_copy, write_corpus
from .processes import alive, descendants, end_all, wait_until
from .synthetic import KEY, planted, synthetic_store
from .tiny_models import make_model, make_tokenizer

__all__ = ["KEY", "SHARED_DATA", "alive", "chunk_files", "descendants", "end_all", "lock_held_elsewhere", "make_model",
           "make_tokenizer", "planted", "store_copy", "synthetic_store", "wait_until", "write_corpus"]
