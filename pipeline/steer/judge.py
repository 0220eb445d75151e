"""An optional judge: a local chat model rates how much each reply expresses a trait, 0 to 100.

What persona-vector and AxBench pipelines do with a hosted model, done offline with any local
Hugging Face chat model (``traitlens evaluate --judge MODEL``). The rubric is built from the
trait's name and, when given, its description; the judge replies greedily and its first number
is the score. A reply that holds no number from 0 to 100 is rejected (:class:`JudgeFormatError`
says which reply and what the judge wrote), counted, and left out of the means: a weak judge
shows up as a high rejected share, never as made-up scores.
"""

from __future__ import annotations

import math

import numpy as np

from traitlens.pipeline.model.generation import greedy_replies
from traitlens.pipeline.model.loading import LoadedModel
from traitlens.pipeline.model.rating import NUMBER, JudgeFormatError, parse_score  # noqa: F401  (re-exported)

RUBRIC = ("You rate how strongly a reply expresses one trait: {trait}{description}.\n"
          "0 means the reply does not express it at all; 100 means it expresses it as strongly as possible.\n"
          "Question: {prompt}\nReply: {reply}\n"
          "How strongly does the reply express {trait}? Answer with one number from 0 to 100 and nothing else.")


def rubric(trait: str, prompt: str, reply: str, description: str | None = None) -> str:
    """The judge's question about one (prompt, reply)."""
    name = trait.replace("-", " ").replace("_", " ")
    return RUBRIC.format(trait=name, description=f" ({description.strip()})" if description else "",
                         prompt=prompt.strip(), reply=" ".join(reply.split()) or "(empty)")


class Judge:
    """Rates replies for ``trait`` with the chat model ``lm`` (which may be the steered model,
    then call it unsteered)."""

    def __init__(self, lm: LoadedModel, trait: str, description: str | None = None, max_new_tokens: int = 8):
        self.lm, self.trait, self.description, self.max_new_tokens = lm, trait, description, max_new_tokens

    def answers(self, prompts: list[str], replies: list[str]) -> list[str]:
        """The judge's raw answer for each (prompt, reply)."""
        questions = [rubric(self.trait, p, r, self.description) for p, r in zip(prompts, replies)]
        return [self.lm.tokenizer.decode(a, skip_special_tokens=True)
                for a in greedy_replies(self.lm, questions, self.max_new_tokens, chat=True)]

    def rate(self, prompts: list[str], replies: list[str]) -> tuple[np.ndarray, list[str]]:
        """(scores ``[n]``, NaN where the answer was rejected; the rejections' messages)."""
        scores, rejected = np.full(len(replies), math.nan), []
        for i, a in enumerate(self.answers(prompts, replies)):
            try:
                scores[i] = parse_score(a, f"the judge's answer for reply {i} (to {prompts[i][:40]!r})")
            except JudgeFormatError as e:
                rejected.append(str(e))
        return scores, rejected
