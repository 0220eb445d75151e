"""Readers that hold traitlens's outputs to their formats, stricter than the usual ones."""

from __future__ import annotations

import json


def strict_json(text: str):
    """``json.loads`` that refuses NaN, Infinity and -Infinity: what a strict parser (JavaScript's,
    Go's, jq's) reads, so a card or an answer that passes here passes everywhere."""
    def no_constants(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=no_constants)
