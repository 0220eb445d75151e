"""Helpers for tests of the command line."""

from __future__ import annotations


def cli_error(result, code: int = 2, *words: str) -> str:
    """Assert a click ``result`` is a clean error: exit ``code``, an ``error`` line, no traceback,
    and every one of ``words`` (the option, file, id or fix it must name) in its output.
    Returns the output."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and "error" in result.output.lower(), result.output
    for w in words:
        assert w in result.output, (w, result.output)
    return result.output
