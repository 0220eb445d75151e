"""``traitlens generate``: a trait folder from a trait's name and description.

1. the author writes N pairs of opposite system prompts, M questions (halves for extraction and
   evaluation) and a judge rubric (:mod:`.authoring`);
2. the target model answers every question under each system prompt of every pair, greedily and
   in batches (N x M x 2 answers);
3. the judge rates each answer for the trait (the rubric) and for coherence (a fixed rubric);
4. an answer is kept when its persona's test passes: positive, trait >= ``min_trait_positive``;
   negative, trait <= ``max_trait_negative``; both, coherence >= ``min_coherence`` (a refusal, an
   empty answer or a rating the judge did not give is never kept);
5. the folder is written (:mod:`.folder`): extraction answers are the corpus's train split,
   evaluation answers its test split, so held-out metrics are on questions no vector saw.

Every call goes through the folder's cache (:mod:`.cache`). Settings are checked before anything
is loaded or written (:meth:`GenerateConfig.validate`, exit 2), and so is the server (exit 2 when
it cannot be reached).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from traitlens.store.errors import InputError
from traitlens.store.layout import safe_name

from traitlens.pipeline.generate import folder as F
from traitlens.pipeline.generate import prompts as P
from traitlens.pipeline.generate.authoring import author_trait
from traitlens.pipeline.generate.cache import CallCache, cached_complete, call_key
from traitlens.pipeline.generate.chat import ApiChat, LocalChat, Models
from traitlens.pipeline.model.options import DTYPES, check_device

JUDGE_TOKENS = 16  # a rating is a number (or REFUSAL); a judge that talks first is read up to here
MIN_TO_EXTRACT = 2  # answers of each persona in each half that extract needs (its MIN_PER_CLASS)
PERSONAS = ("positive", "negative")
HALVES = {"extraction": "train", "evaluation": "test"}  # question half -> the corpus split


class Unjudged:
    """``--judge none``: no judge; every non-empty answer is kept, labelled by its persona alone."""

    identity = label = "none"


class GenerateInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during generation; every call answered before it is cached.
    ``exit_code``: 130, or 143 for SIGTERM."""

    exit_code = 130


@dataclass
class GenerateConfig:
    """What ``traitlens generate`` is asked; the CLI's options map one to one."""

    trait: str
    description: str
    output: str
    pairs: int = 5
    questions: int = 20
    model: str | None = None  # the target: None is the default model
    author: str | None = None  # None: the API when given, else the default model
    judge: str | None = None  # None: the API when given, else the default model; "none": keep every answer
    api_base: str | None = None
    api_model: str | None = None
    max_new_tokens: int = 128
    min_trait_positive: float = 50.0
    max_trait_negative: float = 50.0
    min_coherence: float = 50.0
    retries: int = 2
    batch_size: int = 8
    device: str = "auto"
    dtype: str = "auto"

    def validate(self) -> "GenerateConfig":
        """Refuse what cannot run, naming the option (:class:`InputError`, exit 2)."""
        if not isinstance(self.trait, str) or not self.trait.strip():
            raise InputError("TRAIT is empty: name the trait, e.g. sycophancy")
        try:
            safe_name(self.trait, "TRAIT")
        except ValueError as e:
            raise InputError(str(e)) from None
        if not isinstance(self.description, str) or not self.description.strip():
            raise InputError("--description is empty: say in a sentence what the trait is (the author, the judge and "
                             "definition.txt read it)")
        self.trait, self.description = self.trait.strip(), " ".join(self.description.split())
        for name, lo in (("pairs", 1), ("questions", 2), ("max_new_tokens", 1), ("retries", 0), ("batch_size", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                why = " (one for each half: extraction and evaluation)" if name == "questions" else ""
                raise InputError(f"--{name.replace('_', '-')} {v!r}: must be an integer of at least {lo}{why}")
        for name in ("min_trait_positive", "max_trait_negative", "min_coherence"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 100:
                raise InputError(f"--{name.replace('_', '-')} {v!r}: a judge score from 0 to 100")
        if bool(self.api_base) != bool(self.api_model):
            raise InputError("--api-base and --api-model go together: the server's URL and the model it serves")
        check_device(self.device)
        if self.dtype not in DTYPES:
            raise InputError(f"--dtype {self.dtype!r}: use {', '.join(DTYPES)}")
        return self


@dataclass
class GenerateResult:
    folder: Path
    n_pairs: int
    n_extraction: int
    n_evaluation: int
    rubric_source: str
    pairs_source: str
    tries: dict
    notes: list[str]
    answers: int  # target answers in this run's plan
    answers_called: int  # of them, generated now (the rest came from the cache)
    ratings: int
    ratings_called: int
    counts: dict  # persona -> half -> {answers, empty, refused, unrated, kept}
    n_corpus: int
    n_new_generations: int
    written: list[str]  # folder files this run changed
    warnings: list[str] = field(default_factory=list)
    models: dict = field(default_factory=dict)  # role -> identity

    @property
    def calls_made(self) -> int:
        return self.answers_called + self.ratings_called


def _id(*parts) -> str:
    return hashlib.sha256("\0".join(map(str, parts)).encode("utf-8")).hexdigest()[:16]


def _system_turns(target, cache: CallCache) -> bool:
    """Whether the target's chat template takes a system turn, cached like a call (a rerun need
    not load the model to build its records)."""
    if not isinstance(target, LocalChat):
        return True
    key = call_key(target.identity, [{"role": "traitlens", "content": "takes a system turn"}], 0)
    if cache.get(key) is None:
        cache.put_many([{"key": key, "kind": "template", "backend": target.identity,
                         "answer": "yes" if target.takes_system() else "no"}])
    target._takes_system = cache.get(key) == "yes"
    return target._takes_system


def _bar(total: int, desc: str, enabled: bool):
    if not enabled or total == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="call", desc=desc, dynamic_ncols=True)


def _called(backend, cache, kind, convs, max_tokens, progress, desc, chunk):
    missing = sum(1 for k in {call_key(backend.identity, c, max_tokens) for c in convs} if cache.get(k) is None)
    bar = _bar(missing, desc, progress)
    try:
        return cached_complete(backend, cache, kind, convs, max_tokens, chunk, progress=bar.update if bar else None)
    finally:
        if bar is not None:
            bar.close()


def generate(cfg: GenerateConfig, log=print, progress: bool = True, api_key: str | None = None) -> GenerateResult:
    """Run the whole pipeline for ``cfg`` into ``cfg.output``; see the module docstring.
    ``api_key``: the server's key, sent as a bearer token (never written to the folder)."""
    cfg.validate()
    folder = F.TraitFolder(cfg.output, cfg.trait)
    folder.check()
    api = ApiChat(cfg.api_base, cfg.api_model, api_key) if cfg.api_base else None
    if api is not None:
        api.check()
    models = Models(cfg.device, cfg.dtype, log)
    author = LocalChat(cfg.author, models, cfg.batch_size) if cfg.author or api is None else api
    if cfg.judge == "none":
        judge = Unjudged()
    else:
        judge = LocalChat(cfg.judge, models, cfg.batch_size) if cfg.judge or api is None else api
    target = LocalChat(cfg.model, models, cfg.batch_size)
    folder.claim()
    cache = CallCache(folder.cache_path)
    try:
        return _generate(cfg, folder, cache, author, judge, target, progress)
    except KeyboardInterrupt as e:
        code = getattr(e, "exit_code", 130)  # 143: SIGTERM (pipeline/runtime/interrupts.py)
        stop = GenerateInterrupted(f"{'terminated' if code == 143 else 'interrupted'}: {cache.n_written} calls "
                                   f"answered in this run are cached in {folder.cache_path}; rerun the same command "
                                   "to continue")
        stop.exit_code = code
        raise stop from e


def _generate(cfg, folder, cache, author, judge, target, progress) -> GenerateResult:
    authored = author_trait(author, cache, cfg.trait, cfg.description, cfg.pairs, cfg.questions, cfg.retries)
    takes_system = _system_turns(target, cache)
    questions = [(q, half) for half, qs in (("extraction", authored.extraction), ("evaluation", authored.evaluation))
                 for q in qs]
    plan = [(i, persona, system, q, half) for i, pair in enumerate(authored.pairs)
            for persona, system in zip(PERSONAS, pair) for q, half in questions]
    convs = [[{"role": "system", "content": system}, {"role": "user", "content": q}] for _, _, system, q, _ in plan]
    chunk = 2 * cfg.batch_size  # calls cached at a time: what an interrupted run can lose
    answers, answers_called = _called(target, cache, "target", convs, cfg.max_new_tokens, progress, "answers", chunk)

    judging = not isinstance(judge, Unjudged)
    rated = [k for k, a in enumerate(answers) if a.strip() and judging]
    judge_convs = []
    for k in rated:
        q, a = plan[k][3], answers[k]
        judge_convs += [[{"role": "user", "content": P.trait_question(authored.rubric, q, a)}],
                        [{"role": "user", "content": P.coherence_question(q, a)}]]
    verdicts, ratings_called = _called(judge, cache, "judge", judge_convs, JUDGE_TOKENS, progress, "ratings", chunk)
    verdict = {k: (verdicts[2 * j], verdicts[2 * j + 1]) for j, k in enumerate(rated)}

    rubric_id = _id(authored.rubric, P.COHERENCE)
    counts = {p: {h: dict.fromkeys(("answers", "empty", "refused", "unrated", "kept"), 0) for h in HALVES}
              for p in PERSONAS}
    generations, corpus = [], []
    for k, (i, persona, system, q, half) in enumerate(plan):
        c = counts[persona][half]
        c["answers"] += 1
        gen_id = call_key(target.identity, convs[k], cfg.max_new_tokens)[:16]
        rec = {"record_id": _id(gen_id, judge.identity, rubric_id), "generation_id": gen_id, "trait": cfg.trait,
               "persona": persona, "pair": i, "pair_id": _id(*authored.pairs[i]), "question_id": _id(q), "half": half,
               "system": system, "question": q, "answer": answers[k], "target": target.identity,
               "max_new_tokens": cfg.max_new_tokens, "judge": judge.identity, "rubric_id": rubric_id,
               "trait_score": None, "refused": False, "coherence": None, "judge_answers": None}
        generations.append(rec)
        if not answers[k].strip():
            c["empty"] += 1
            continue
        keep = not judging
        if judging:
            t_ans, c_ans = verdict[k]
            score, refused, _ = P.read_rating(t_ans, "the judge's trait rating")
            coherence, _, _ = P.read_rating(c_ans, "the judge's coherence rating")
            rec.update(trait_score=score, refused=refused, coherence=coherence, judge_answers=[t_ans, c_ans])
            if refused:
                c["refused"] += 1
                continue
            if score is None or coherence is None:
                c["unrated"] += 1
                continue
            on_side = score >= cfg.min_trait_positive if persona == "positive" else score <= cfg.max_trait_negative
            keep = on_side and coherence >= cfg.min_coherence
        if keep:
            c["kept"] += 1
            messages = target.prepare(convs[k]) + [{"role": "assistant", "content": answers[k]}]
            corpus.append({"messages": messages, "trait": cfg.trait, "label": "+1" if persona == "positive" else "-1",
                           "split": HALVES[half], "dataset": folder.path.resolve().name, "persona": persona,
                           "generation_id": gen_id, "pair_id": rec["pair_id"], "question_id": rec["question_id"],
                           "trait_score": rec["trait_score"], "coherence": rec["coherence"]})

    models = {"author": author.identity, "target": target.identity, "judge": judge.identity}
    written = []
    n_new = folder.append_generations(generations)
    if n_new:
        written.append(F.GENERATIONS)
    prompts = {"trait": cfg.trait, "description": cfg.description, "author": author.identity,
               "pairs": [{"pair_id": _id(p, n), "positive": p, "negative": n} for p, n in authored.pairs],
               "pairs_source": authored.pairs_source,
               "questions": {h: [{"question_id": _id(q), "text": q} for q, hh in questions if hh == h] for h in HALVES},
               "rubric": {"text": authored.rubric, "source": authored.rubric_source, "answer_format": P.ANSWER_FORMAT},
               "coherence_rubric": P.COHERENCE, "system_turns": takes_system, "tries": authored.tries,
               "notes": authored.notes}
    settings = {"trait": cfg.trait, "settings": {**{k: v for k, v in asdict(cfg).items() if k != "output"},  # (where it lies)
                                                "judge_max_tokens": JUDGE_TOKENS},
                "models": models, "counts": counts, "corpus_records": len(corpus),
                "thresholds": {"min_trait_positive": cfg.min_trait_positive,
                               "max_trait_negative": cfg.max_trait_negative, "min_coherence": cfg.min_coherence}}
    for name, wrote in ((F.DEFINITION, folder.write_if_changed(F.DEFINITION, cfg.description + "\n")),
                        (F.PROMPTS, folder.write_json(F.PROMPTS, prompts)),
                        (F.CORPUS, folder.write_jsonl(F.CORPUS, corpus)),
                        (F.SETTINGS, folder.write_json(F.SETTINGS, settings))):
        if wrote:
            written.append(name)
    if cache.n_written:
        written.append(str(F.CACHE))
    short = [f"{p} {h} {counts[p][h]['kept']}" for h in HALVES for p in PERSONAS
             if counts[p][h]["kept"] < MIN_TO_EXTRACT]
    warnings = [f"too few answers kept to extract ({', '.join(short)}; extract needs at least {MIN_TO_EXTRACT} of "
                "each persona in each half): raise --pairs or --questions, use a stronger --judge or --model, or "
                "loosen the thresholds"] if short else []
    return GenerateResult(folder.path, len(authored.pairs), len(authored.extraction), len(authored.evaluation),
                          authored.rubric_source, authored.pairs_source, authored.tries, authored.notes, len(plan),
                          answers_called, len(judge_convs), ratings_called, counts, len(corpus), n_new, written,
                          warnings, models)


def kept_share(counts: dict, persona: str) -> tuple[int, int]:
    """(kept, answers) of one persona over both halves."""
    return (sum(counts[persona][h]["kept"] for h in HALVES), sum(counts[persona][h]["answers"] for h in HALVES))

