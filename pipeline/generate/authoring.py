"""The author's part: opposite system prompts, questions (split into an extraction and an
evaluation half that never share one) and the judge's rubric, each asked for once and, while its
answer falls short, asked again with the reason (``retries`` times). What every try yields is
pooled, so a retry adds to what the first answer had. Pairs or a rubric that never come right
are replaced by the built-in ones (said in the result and in ``prompts.json``: a weak author
still gives a working folder); questions, which no template can stand in for, that never do are
an :class:`AuthoringError` quoting the author's last answer."""

from __future__ import annotations

from dataclasses import dataclass, field

from traitlens.store.errors import TraitlensError

from traitlens.pipeline.generate import prompts as P
from traitlens.pipeline.generate.cache import CallCache, cached_complete

MIN_QUESTIONS = 2  # one for each half


class AuthoringError(TraitlensError):
    """The author wrote nothing usable after every retry (exit 1: a larger author is the fix)."""


@dataclass
class Authored:
    """What the author wrote, as it will be used."""

    pairs: list[tuple[str, str]]  # (positive, negative) system prompts
    extraction: list[str]  # questions whose answers make the vectors
    evaluation: list[str]  # held-out questions: their answers are the corpus's test split
    rubric: str  # with {question} and {answer}
    rubric_source: str  # author | builtin
    pairs_source: str = "author"  # author | builtin
    tries: dict[str, int] = field(default_factory=dict)  # calls per part (1 = no retry)
    notes: list[str] = field(default_factory=list)  # what fell short, in words


def split_questions(questions: list[str]) -> tuple[list[str], list[str]]:
    """(extraction, evaluation): alternate questions, the first to extraction. The questions are
    distinct (the parser dropped repeats), so no question is in both halves."""
    return questions[0::2], questions[1::2]


def _ask(author, cache: CallCache, request: str, parse, enough, max_tokens: int, retries: int, merge):
    """(pooled result or None, tries, last answer, last reason) of one part."""
    conv = [{"role": "user", "content": request}]
    result, why, answer = None, None, ""
    for attempt in range(retries + 1):
        (answer,), _ = cached_complete(author, cache, "author", [conv], max_tokens)
        try:
            got = parse(answer)
            result = got if result is None else merge(result, got)
            why = None if enough(result) else f"it holds {len(result)} distinct items where more were asked for"
        except P.AuthorFormatError as e:
            why = str(e)
        if why is None:
            return result, attempt + 1, answer, None
        conv = conv + [{"role": "assistant", "content": answer}, {"role": "user", "content": P.RETRY.format(why=why)}]
    return result, retries + 1, answer, why


def _merge(a: list, b: list) -> list:
    keys = {P.normalised(x if isinstance(x, str) else " | ".join(x)) for x in a}
    return a + [x for x in b if P.normalised(x if isinstance(x, str) else " | ".join(x)) not in keys]


def author_trait(author, cache: CallCache, trait: str, description: str, n_pairs: int, n_questions: int,
                 retries: int) -> Authored:
    """Ask ``author`` (a chat backend) for the three parts; see the module docstring."""
    name = trait.replace("-", " ").replace("_", " ")
    tries, notes = {}, []
    pairs, tries["pairs"], last, why = _ask(
        author, cache, P.pairs_request(name, description, n_pairs), lambda a: P.parse_pairs(a, n_pairs),
        lambda r: len(r) >= n_pairs, 80 * 2 * n_pairs + 40, retries, _merge)
    pairs_source = "author"
    if not pairs:
        pairs, pairs_source = P.builtin_pairs(name, description, n_pairs), "builtin"
        notes.append(f"the author wrote no usable pair of system prompts in {tries['pairs']} tries ({why}); "
                     f"{len(pairs)} built-in pair(s) stand in (a larger --author writes better ones)")
    pairs = pairs[:n_pairs]
    if len(pairs) < n_pairs:
        notes.append(f"the author wrote {len(pairs)} distinct pair(s) of system prompts of the {n_pairs} asked for")
    questions, tries["questions"], last, why = _ask(
        author, cache, P.questions_request(name, description, n_questions), lambda a: P.parse_questions(a, n_questions),
        lambda r: len(r) >= n_questions, 36 * n_questions + 40, retries, _merge)
    if not questions or len(questions) < MIN_QUESTIONS:
        raise AuthoringError(f"the author ({author.label}) wrote {len(questions or [])} usable question(s) in "
                             f"{tries['questions']} tries (at least {MIN_QUESTIONS} are needed, one for each half"
                             + (f"; {why}" if why else "") + f"); its last answer began {last[:160]!r}. Pass a larger "
                             "--author, or --api-base/--api-model for a server's model")
    questions = questions[:n_questions]
    if len(questions) < n_questions:
        notes.append(f"the author wrote {len(questions)} distinct question(s) of the {n_questions} asked for")
    rubric, tries["rubric"], last, why = _ask(author, cache, P.rubric_request(name, description), P.parse_rubric,
                                              lambda r: True, 500, retries, lambda a, b: b)
    source = "author"
    if rubric is None:
        rubric, source = P.builtin_rubric(name, description), "builtin"
        notes.append(f"the author's rubric was unusable after {tries['rubric']} tries ({why}); the built-in rubric "
                     "judges instead")
    extraction, evaluation = split_questions(questions)
    return Authored(pairs, extraction, evaluation, rubric, source, pairs_source, tries, notes)
