"""A chat model's 0-100 rating read from its answer: the first number, which must lie in [0, 100].

Shared by the steering judge (:mod:`traitlens.pipeline.steer.judge`) and ``generate``'s judge
(:mod:`traitlens.pipeline.generate.judging`): a weak judge shows up as rejected answers
(:class:`JudgeFormatError` says which and quotes them), never as made-up scores.
"""

from __future__ import annotations

import re

NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


class JudgeFormatError(ValueError):
    """The judge's answer holds no score from 0 to 100."""


def parse_score(answer: str, where: str = "the judge's answer") -> float:
    """The first number in ``answer``, which must lie in [0, 100]; else :class:`JudgeFormatError`
    naming ``where`` and quoting the answer."""
    m = NUMBER.search(answer)
    if m is None:
        raise JudgeFormatError(f"{where} holds no number: {answer[:80]!r}; the rubric asks for one number from 0 to "
                               "100 (a judge that cannot follow it is too weak: pass a larger --judge model)")
    value = float(m.group())
    if not 0 <= value <= 100:
        raise JudgeFormatError(f"{where} gives {m.group()}, outside 0-100: {answer[:80]!r}")
    return value
