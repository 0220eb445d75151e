"""traitlens.testing: helpers for tests and benches (installed from ``tests/support/``).

- :func:`make_model`: tiny random-weight Llama / GPT-2 folders built from configs (no download).
- :func:`synthetic_store`, :func:`planted`: stores and arrays with planted trait directions.
- :func:`write_corpus`, :func:`store_copy`, :func:`store_contents`, :func:`lock_held_elsewhere`, :func:`chunk_files`,
  ``SHARED_DATA``.
- :func:`cli_error`: a command's result is a clean error (exit code, no traceback, the words).
- :func:`strict_json`: JSON that refuses NaN and Infinity.
- :func:`write_gguf`: a tiny Llama folder as a GGUF file, the way llama.cpp writes one.
- :func:`wait_until`, :func:`descendants`, :func:`alive`, :func:`end_all`,
  :func:`sigkill_if_running`: real processes in tests.
"""

from .cli import cli_error
from .corpora import SHARED_DATA, chunk_files, lock_held_elsewhere, store_contents, store_copy, write_corpus
from .formats import strict_json
from .gguf_models import write_gguf
from .processes import alive, descendants, end_all, sigkill_if_running, wait_until
from .synthetic import KEY, planted, synthetic_store
from .tiny_models import make_model, make_tokenizer

__all__ = ["KEY", "SHARED_DATA", "alive", "chunk_files", "cli_error", "descendants", "end_all", "lock_held_elsewhere",
           "make_model", "make_tokenizer", "planted", "sigkill_if_running", "store_contents", "store_copy", "strict_json",
           "synthetic_store", "wait_until", "write_corpus", "write_gguf"]
