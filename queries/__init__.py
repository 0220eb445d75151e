"""traitlens.queries: read-only DuckDB SQL over a store (prompts, rows, runs, vectors, activations)."""

from .connection import QueryError, StoreSQL, activations, select_prompt_ids

__all__ = ["QueryError", "StoreSQL", "activations", "select_prompt_ids"]
