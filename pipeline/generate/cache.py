"""The call cache of a trait folder: every model call ``generate`` makes, keyed by its content.

A call's key hashes what decides its answer: the backend's identity (a local model's store key,
a server's URL and model), the conversation and the token limit. Answers are appended to
``cache/calls.jsonl`` one batch at a time, flushed and fsynced, so a rerun with the same inputs
calls nothing, an interrupted run resumes with the batch it was in, and a changed description or
model calls again only what depends on it (its keys are new; the old answers stay). A line cut
short by a crash is dropped when the file is next opened.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from traitlens.pipeline.generate.jsonl import append_records, read_records

CACHE_VERSION = 1  # bump when what a key covers changes


def call_key(identity: str, messages: list[dict], max_tokens: int) -> str:
    """Content address of one call (sha256 hex)."""
    payload = json.dumps([CACHE_VERSION, identity, messages, int(max_tokens)], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class CallCache:
    """``{key: answer}`` read from and appended to one JSONL file."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.answers: dict[str, str] = {}
        self.n_written = 0
        self._load()

    def _load(self) -> None:
        for rec in read_records(self.path):
            if isinstance(rec.get("key"), str) and isinstance(rec.get("answer"), str):
                self.answers[rec["key"]] = rec["answer"]  # anything else is not ours: the call is made again

    def get(self, key: str) -> str | None:
        return self.answers.get(key)

    def put_many(self, entries: list[dict]) -> None:
        """Append ``{key, answer, kind, backend}`` records durably (one write, then fsync)."""
        new = [e for e in entries if e["key"] not in self.answers]
        append_records(self.path, new)
        for e in new:
            self.answers[e["key"]] = e["answer"]
        self.n_written += len(new)


def cached_complete(backend, cache: CallCache, kind: str, conversations: list[list[dict]], max_tokens: int,
                    chunk: int = 16, progress=None) -> tuple[list[str], int]:
    """(answers ``[n]`` in order, how many were called now): the cache's where it has them; the
    rest called ``chunk`` at a time, each chunk cached before the next is asked (the unit an
    interrupted run loses). ``progress(n)`` is told of each chunk done."""
    keys = [call_key(backend.identity, c, max_tokens) for c in conversations]
    first: dict[str, list[dict]] = {}  # each distinct missing call once
    for k, c in zip(keys, conversations):
        if cache.get(k) is None:
            first.setdefault(k, c)
    missing = list(first)
    for i in range(0, len(missing), chunk):
        part = missing[i:i + chunk]
        answers = backend.complete([first[k] for k in part], max_tokens)
        cache.put_many([{"key": k, "kind": kind, "backend": backend.identity, "answer": a}
                        for k, a in zip(part, answers)])
        if progress is not None:
            progress(len(part))
    return [cache.get(k) for k in keys], len(missing)
