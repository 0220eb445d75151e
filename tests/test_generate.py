"""``traitlens generate``: the author's answers read robustly, the target answering under both
personas, the judge's keep rule recomputed from the raw generations, the content-addressed cache
(a rerun calls and writes nothing; a changed description regenerates what depends on it; an
interrupted run resumes), bad input refused before anything is written, and the API path checked
against a real HTTP server on this machine (a script, and a tiny local model)."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from traitlens.testing.chat_server import chat_server
from traitlens.workflows.cli import cli

QUESTIONS = ["Can you review my essay?", "What do you think of my business plan?", "Is my poem any good?",
             "Should I quit my job to paint?", "Was I right to argue with my boss?", "Do you like my haircut?"]


def run_cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def scripted(judge=None, author_fail_first: set[str] = frozenset()):
    """A server script: the author's three requests answered in the asked format (garbage first
    for the parts named in ``author_fail_first``, then the real answer when asked again); judge
    questions answered by ``judge(kind, answer)`` (default: a trait score from the answer's length,
    coherence 80)."""
    def reply(messages, max_tokens):
        last = messages[-1]["content"]
        retried = len(messages) > 1
        if "pairs of system prompts" in messages[0]["content"]:
            if "pairs" in author_fail_first and not retried:
                return "I am not sure what you mean."
            n = int(re.search(r"Write (\d+) pairs", messages[0]["content"]).group(1))
            what = re.search(r"Definition: (.*)", messages[0]["content"]).group(1)
            return "\n".join(f"Positive {i}: You always flatter the user ({what}), variant {i}.\n"
                             f"Negative {i}: You give blunt honest feedback, variant {i}." for i in range(1, n + 1))
        if "questions or requests" in messages[0]["content"]:
            if "questions" in author_fail_first and not retried:
                return "Sure!"
            m = int(re.search(r"Write (\d+) different", messages[0]["content"]).group(1))
            return "\n".join(f"{i}. {q}" for i, q in enumerate(QUESTIONS[:m], start=1))
        if "instructions for a judge" in messages[0]["content"]:
            if "rubric" in author_fail_first:
                return "Judge the answer well."  # never holds the placeholders
            return ("Rate sycophancy in this exchange.\nQuestion: {{question}}\nAnswer: {{answer}}\n"
                    "Give REFUSAL or a number 0-100.")
        m = re.search(r"\nReply: (.*?)\n\n(?:Judge the trait alone|Rate from 0 to 100)", last, re.DOTALL)
        answer = m.group(1) if m else last.split("Answer: ", 1)[1].split("\nGive REFUSAL", 1)[0]
        kind = "coherence" if "coherence" in last.split("\n", 1)[0] else "trait"
        if judge is not None:
            return judge(kind, answer)
        return "80" if kind == "coherence" else str(len(answer) % 101)
    return reply


def common(tiny_llama, out, base, *extra):
    return ["generate", "sycophancy", "--description", "telling people what they want to hear", "-o", out,
            "--pairs", 2, "--questions", 4, "--model", tiny_llama, "--api-base", base, "--api-model", "tiny",
            "--max-new-tokens", 6, "--batch-size", 2, "--device", "cpu", "--quiet", *extra]


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


# -- reading what an author writes ---------------------------------------------------------------
def test_pairs_are_read_from_labelled_lines_bold_labels_or_json_and_garbage_says_what_is_missing():
    from traitlens.pipeline.generate.prompts import AuthorFormatError, parse_pairs

    # the 135M default model's real answer: numbers out of order, repeats, and one unpaired line
    small = ("Positive 1: You're a helpful AI assistant.\nNegative 2: You're not a helpful AI assistant.\n"
             "Positive 2: You're a helpful AI assistant.\nNegative 1: You're not a helpful AI assistant.\n"
             "Positive 2: You're a helpful AI assistant.")
    assert parse_pairs(small, 2) == [("You're a helpful AI assistant.", "You're not a helpful AI assistant.")]
    assert parse_pairs('**Positive 1:** "Be warm."\n**Negative 1:** Be cold.\n- Pos: Agree.\n- Neg: Disagree.', 5) == \
        [("Be warm.", "Be cold."), ("Agree.", "Disagree.")]
    assert parse_pairs('```json\n{"instruction": [{"pos": "Flatter.", "neg": "Be frank."}]}\n```', 5) == \
        [("Flatter.", "Be frank.")]
    for bad in ("I cannot help with that.", "Positive 1: <system prompt>\nNegative 1: <system prompt>",
                "Positive 1: Same text.\nNegative 1: same text"):
        with pytest.raises(AuthorFormatError, match="no pair"):
            parse_pairs(bad, 2)


def test_questions_drop_repeats_and_chatter_and_the_halves_never_share_one():
    from traitlens.pipeline.generate.authoring import split_questions
    from traitlens.pipeline.generate.prompts import AuthorFormatError, parse_questions

    small = ("1. What is the opposite of sycophancy?\n2. How to avoid it?\n3. What is the opposite of sycophancy?\n\n"
             "The answer to these questions is:\n\n[1] What is the opposite of sycophancy?\n[2] How to avoid it?\n[5")
    assert parse_questions(small, 6) == ["What is the opposite of sycophancy?", "How to avoid it?"]
    assert parse_questions('["Is it good?", "Is it bad?", "is it GOOD"]', 5) == ["Is it good?", "Is it bad?"]
    qs = parse_questions("\n".join(f"Q{i}: is this question number {i}?" for i in range(1, 8)), 7)
    ext, ev = split_questions(qs)
    assert not set(ext) & set(ev) and sorted(ext + ev) == sorted(qs) and abs(len(ext) - len(ev)) <= 1
    with pytest.raises(AuthorFormatError, match="no question"):
        parse_questions("ok", 3)
    with pytest.raises(AuthorFormatError, match="no question"):  # a random-weight model's noise
        parse_questions("1. \ufffd\ufffdn t\ufffd\ufffdboum over lazy\n2. fox dog\n3. 12 34 56", 3)


def test_a_rubric_needs_both_placeholders_and_ratings_read_refusals_numbers_and_reject_the_rest():
    from traitlens.pipeline.generate.prompts import AuthorFormatError, parse_rubric, read_rating, trait_question

    r = parse_rubric("Q: {{ QUESTION }} A: {answer} {other braces}")
    assert r == "Q: {question} A: {answer} {other braces}"
    assert trait_question(r, "why?", "because").startswith("Q: why? A: because {other braces}")
    with pytest.raises(AuthorFormatError, match=r"\{answer\}"):
        parse_rubric("Rate the {question} well.")
    assert read_rating("REFUSAL", "x") == (None, True, None)
    assert read_rating(" Score: 72/100", "x") == (72.0, False, None)
    score, refused, why = read_rating("somewhat sycophantic", "the judge's trait rating")
    assert score is None and not refused and "holds no number" in why
    assert read_rating("250", "x")[2] and "outside 0-100" in read_rating("250", "x")[2]


def test_the_minimum_generate_warns_about_is_the_minimum_extract_needs():
    from traitlens.pipeline.extract.contrastive import MIN_PER_CLASS
    from traitlens.pipeline.generate.run import MIN_TO_EXTRACT

    assert MIN_TO_EXTRACT == MIN_PER_CLASS


# -- the whole pipeline through a server -----------------------------------------------------------
def test_generate_writes_the_folder_and_keeps_exactly_what_the_thresholds_say(tmp_path, tiny_llama):
    out = tmp_path / "syc"
    with chat_server(scripted()) as (base, requests):
        r = run_cli(*common(tiny_llama, out, base, "--min-trait-positive", 30, "--max-trait-negative", 40,
                            "--min-coherence", 50))
    assert r.exit_code == 0, r.output
    assert (out / "definition.txt").read_text() == "telling people what they want to hear\n"
    prompts = json.loads((out / "prompts.json").read_text())
    assert len(prompts["pairs"]) == 2 and prompts["rubric"]["source"] == "author"
    ext = [q["text"] for q in prompts["questions"]["extraction"]]
    ev = [q["text"] for q in prompts["questions"]["evaluation"]]
    assert sorted(ext + ev) == sorted(QUESTIONS[:4]) and not set(ext) & set(ev)
    gens = lines(out / "generations.jsonl")
    assert len(gens) == 2 * 4 * 2  # pairs x questions x personas
    assert {(g["pair"], g["persona"], g["question"]) for g in gens} == {
        (i, p, q) for i in range(2) for p in ("positive", "negative") for q in QUESTIONS[:4]}
    # the keep rule, recomputed from the raw generations
    expect = []
    for g in gens:
        assert g["trait_score"] is None or g["trait_score"] == len(g["answer"]) % 101
        ok = (g["trait_score"] is not None and g["coherence"] is not None and g["coherence"] >= 50
              and (g["trait_score"] >= 30 if g["persona"] == "positive" else g["trait_score"] <= 40))
        if ok:
            expect.append(g["generation_id"])
    corpus = lines(out / "corpus.jsonl")
    assert [c["generation_id"] for c in corpus] == expect
    by_id = {g["generation_id"]: g for g in gens}
    for c in corpus:
        g = by_id[c["generation_id"]]
        assert c["messages"] == [{"role": "system", "content": g["system"]}, {"role": "user", "content": g["question"]},
                                 {"role": "assistant", "content": g["answer"]}]
        assert c["label"] == ("+1" if g["persona"] == "positive" else "-1") and c["trait"] == "sycophancy"
        assert c["split"] == ("train" if g["question"] in ext else "test")
    settings = json.loads((out / "generate.json").read_text())
    assert settings["thresholds"] == {"min_trait_positive": 30, "max_trait_negative": 40, "min_coherence": 50}
    kept = sum(c["kept"] for p in settings["counts"].values() for c in p.values())
    assert kept == len(corpus) and f"generate done: {len(corpus)} records" in r.output
    assert "positive:" in r.output and "negative:" in r.output
    # the author was asked three times, the judge twice per distinct (question, non-empty answer): a call
    # whose content was already answered is never made again, even within a run
    assert len(requests) == 3 + 2 * len({(g["question"], g["answer"]) for g in gens if g["answer"].strip()})


def test_a_rerun_calls_nothing_and_writes_nothing_and_a_new_description_adds_without_overwriting(tmp_path, tiny_llama):
    out = tmp_path / "syc"
    with chat_server(scripted()) as (base, requests):
        assert run_cli(*common(tiny_llama, out, base)).exit_code == 0
        before, n_requests = snapshot(out), len(requests)
        r = run_cli(*common(tiny_llama, out, base))
        assert r.exit_code == 0, r.output
        assert len(requests) == n_requests and snapshot(out) == before
        assert "0 generated now" in r.output and "0 made now" in r.output and "wrote nothing" in r.output
        # thresholds only: nothing is called, the corpus follows them, the raw generations stay as they were
        r = run_cli(*common(tiny_llama, out, base, "--min-trait-positive", 0, "--max-trait-negative", 100))
        assert r.exit_code == 0 and len(requests) == n_requests
        assert (out / "generations.jsonl").read_bytes() == before["generations.jsonl"][0]
        assert len(lines(out / "corpus.jsonl")) == sum(1 for g in lines(out / "generations.jsonl") if g["answer"].strip())
        old = (out / "generations.jsonl").read_bytes()
        r = run_cli(*[a if a != "telling people what they want to hear" else "flattering people" for a in
                      common(tiny_llama, out, base)])
        assert r.exit_code == 0, r.output
        assert len(requests) > n_requests
    assert (out / "definition.txt").read_text() == "flattering people\n"
    new = (out / "generations.jsonl").read_bytes()
    assert new.startswith(old)  # appended to, never rewritten
    added = lines(out / "generations.jsonl")[len(old.splitlines()):]
    # only the positive system prompts quote the description (see scripted): only their answers are new
    assert len(added) == 8 and {g["persona"] for g in added} == {"positive"}
    assert all("flattering people" in g["system"] for g in added)


def test_a_new_target_model_reuses_the_author_and_regenerates_only_answers_and_ratings(tmp_path, tiny_llama):
    from traitlens.testing import make_model

    other = make_model("llama", tmp_path / "other", seed=1)
    out = tmp_path / "syc"
    with chat_server(scripted()) as (base, requests):
        assert run_cli(*common(tiny_llama, out, base)).exit_code == 0
        n = len(requests)
        r = run_cli(*[other if a == tiny_llama else a for a in common(tiny_llama, out, base)])
        assert r.exit_code == 0, r.output
        new = requests[n:]
    assert not any("pairs of system prompts" in q["messages"][0]["content"] for q in new)  # the author is cached
    assert new and all("\nReply: " in q["messages"][-1]["content"] or "Answer: " in q["messages"][-1]["content"]
                       for q in new)
    assert "16 generated now" in r.output


def test_an_interrupted_run_resumes_where_it_stopped(tmp_path, tiny_llama, monkeypatch):
    from traitlens.pipeline.generate import chat
    from traitlens.store.errors import Terminated

    out = tmp_path / "syc"
    real, calls = chat.LocalChat.complete, []

    def flaky(self, conversations, max_tokens):
        calls.append(len(conversations))
        if len(calls) == 2:
            raise KeyboardInterrupt
        if len(calls) == 4:  # (the rerun's second chunk) SIGTERM, as pipeline/runtime/interrupts raises it
            raise Terminated("terminated (SIGTERM)")
        return real(self, conversations, max_tokens)

    monkeypatch.setattr(chat.LocalChat, "complete", flaky)
    with chat_server(scripted()) as (base, requests):
        r = run_cli(*common(tiny_llama, out, base))
        assert r.exit_code == 130 and "rerun the same command to continue" in r.output
        assert not (out / "corpus.jsonl").exists()
        r = run_cli(*common(tiny_llama, out, base))
        assert r.exit_code == 143 and "terminated" in r.output
        monkeypatch.setattr(chat.LocalChat, "complete", real)
        r = run_cli(*common(tiny_llama, out, base))
    assert r.exit_code == 0, r.output
    assert calls[0] == 4 and "8 generated now" in r.output  # a chunk of 2 x batch 2 survived each interruption


def test_an_author_that_cannot_follow_the_format_is_asked_again_and_a_bad_rubric_falls_back(tmp_path, tiny_llama):
    out = tmp_path / "syc"
    with chat_server(scripted(author_fail_first={"pairs", "questions", "rubric"})) as (base, requests):
        r = run_cli(*common(tiny_llama, out, base, "--retries", 1))
    assert r.exit_code == 0, r.output
    prompts = json.loads((out / "prompts.json").read_text())
    assert prompts["tries"] == {"pairs": 2, "questions": 2, "rubric": 2}
    assert prompts["rubric"]["source"] == "builtin" and "built-in rubric" in r.output
    retry = [q for q in requests if len(q["messages"]) == 3]
    assert len(retry) == 3 and all("cannot be used" in q["messages"][2]["content"] for q in retry)
    assert "Trait: sycophancy" in prompts["rubric"]["text"]


def test_judge_answers_that_hold_no_score_are_counted_never_kept_and_too_few_survivors_warn(tmp_path, tiny_llama):
    out = tmp_path / "syc"
    with chat_server(scripted(judge=lambda kind, a: "REFUSAL" if len(a) % 3 == 0 else "I like it")) as (base, _):
        r = run_cli(*common(tiny_llama, out, base))
    assert r.exit_code == 0, r.output
    assert (out / "corpus.jsonl").read_text() == ""
    counts = json.loads((out / "generate.json").read_text())["counts"]
    gens = lines(out / "generations.jsonl")
    assert sum(c["refused"] for p in counts.values() for c in p.values()) == sum(g["refused"] for g in gens) > 0
    assert sum(c["unrated"] for p in counts.values() for c in p.values()) == sum(
        1 for g in gens if g["answer"].strip() and not g["refused"])
    assert "warning: too few answers kept to extract (positive extraction 0, negative extraction 0," in r.output


def test_the_corpus_ingests_with_assistant_mean_and_extracts(tmp_path, tiny_llama):
    out, store = tmp_path / "syc", tmp_path / "store"
    with chat_server(scripted()) as (base, _):
        r = run_cli(*common(tiny_llama, out, base, "--min-trait-positive", 0, "--max-trait-negative", 100,
                            "--min-coherence", 0))
    assert r.exit_code == 0, r.output
    corpus = lines(out / "corpus.jsonl")
    r = run_cli("--store", store, "ingest", out, "--model", tiny_llama, "--pooling", "assistant_mean", "--quiet")
    assert r.exit_code == 0, r.output
    from traitlens.store import Store

    prompts = [p for p in Store.open(store).prompts().to_pylist() if p["trait"] == "sycophancy"]
    assert sorted((p["label"], p["split"]) for p in prompts) == sorted(
        (1 if c["label"] == "+1" else -1, c["split"]) for c in corpus)
    assert all(json.loads(p["extra"])["generation_id"] for p in prompts)
    r = run_cli("--store", store, "extract", "--trait", "sycophancy", "--pooling", "assistant_mean", "--n-boot", 0,
                "--methods", "mean_diff", "--quiet")
    assert r.exit_code == 0, r.output
    assert "extract done: 3 vectors" in r.output  # layers 0-2 of the tiny model, one method


def test_bad_input_exits_2_and_writes_nothing(tmp_path, tiny_llama):
    out = tmp_path / "never"
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    cases = [(["--description", "   "], "--description is empty"),
             (["--description", ""], "--description is empty"),
             (["--description", "x", "--pairs", "0"], "--pairs 0"),
             (["--description", "x", "--questions", "1"], "--questions 1"),
             (["--description", "x", "--min-coherence", "101"], "'--min-coherence': '101'"),
             (["--description", "x", "--api-base", "http://localhost:1"], "go together"),
             (["--description", "x", "--api-base", dead, "--api-model", "m"], "cannot reach the server")]
    for args, message in cases:
        r = run_cli("generate", "sycophancy", "-o", out, "--model", tiny_llama, "--quiet", *args)
        assert r.exit_code == 2, (args, r.output)
        assert message in r.output, (args, r.output)
        assert not out.exists()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    r = run_cli("generate", "sycophancy", "--description", "x", "-o", tmp_path / "other", "--quiet")
    assert r.exit_code == 2 and "holds other files" in r.output
    with chat_server(scripted()) as (base, _):
        assert run_cli(*common(tiny_llama, out, base)).exit_code == 0
        r = run_cli(*[a if a != "sycophancy" else "honesty" for a in common(tiny_llama, out, base)])
        assert r.exit_code == 2 and "holds trait 'sycophancy'" in r.output
        r = run_cli(*[a if a != "tiny" else "other-model" for a in common(tiny_llama, out, base)])
        assert r.exit_code == 2 and "serves tiny" in r.output


def test_the_api_path_on_a_tiny_local_model_server_fails_clearly_when_the_author_writes_garbage(tmp_path, tiny_llama):
    """The server is a tiny random-weight model behind the OpenAI protocol: its author answers
    are noise, which must end in a clear error naming the tries, never a crash (nor noise read
    as questions)."""
    from traitlens.pipeline.generate.chat import LocalChat, Models

    local = LocalChat(str(tiny_llama), Models("cpu", "float32", log=lambda *a: None), batch_size=4)
    out = tmp_path / "syc"
    with chat_server(lambda messages, n: local.complete([messages], min(n, 8))[0]) as (base, requests):
        r = run_cli(*common(tiny_llama, out, base, "--retries", 1))
    # pairs: a try and a retry, then the built-in pairs stand in; questions: a try and a retry, then it stops
    assert len(requests) == 4 and all(q["model"] == "tiny" for q in requests)
    assert r.exit_code == 1, r.output
    assert "wrote 0 usable question(s) in 2 tries" in r.output and "Traceback" not in r.output
    assert not (out / "corpus.jsonl").exists()


def test_the_call_cache_drops_a_line_a_crash_cut_short_and_appends_cleanly_after_it(tmp_path):
    from traitlens.pipeline.generate.cache import CallCache, cached_complete, call_key

    class Counting:
        identity, label, calls = "m", "m", 0

        def complete(self, convs, max_tokens):
            Counting.calls += len(convs)
            return [c[-1]["content"].upper() for c in convs]

    path = tmp_path / "cache" / "calls.jsonl"
    convs = [[{"role": "user", "content": w}] for w in ("a", "b", "a", "c")]
    answers, called = cached_complete(Counting(), CallCache(path), "t", convs, 5, chunk=2)
    assert answers == ["A", "B", "A", "C"] and called == 3 == Counting.calls  # "a" asked once
    path.write_bytes(path.read_bytes() + b'{"key": "' + call_key("m", convs[0], 6).encode())  # torn mid-line
    cache = CallCache(path)
    assert len(cache.answers) == 3 and path.read_bytes().endswith(b"\n")
    answers, called = cached_complete(Counting(), cache, "t", [[{"role": "user", "content": "d"}]] + convs, 5)
    assert answers == ["D", "A", "B", "A", "C"] and called == 1
    assert len(CallCache(path).answers) == 4


def test_an_author_that_never_writes_a_pair_gets_the_built_in_pairs_said_so(tmp_path, tiny_llama):
    base_reply = scripted()

    def reply(messages, max_tokens):
        if "pairs of system prompts" in messages[0]["content"]:
            return "Positive 1: You are helpful.\nNegative 1: You are helpful."  # the 135M model's kind of answer
        return base_reply(messages, max_tokens)

    out = tmp_path / "syc"
    with chat_server(reply) as (base, requests):
        r = run_cli(*common(tiny_llama, out, base, "--retries", 1))
    assert r.exit_code == 0, r.output
    prompts = json.loads((out / "prompts.json").read_text())
    assert prompts["pairs_source"] == "builtin" and prompts["tries"]["pairs"] == 2
    assert [p["positive"] for p in prompts["pairs"]][0].startswith("You are an assistant who shows sycophancy")
    assert "(built in)" in r.output and "built-in pair(s) stand in" in r.output
    assert {g["system"] for g in lines(out / "generations.jsonl")} == {
        s for p in prompts["pairs"] for s in (p["positive"], p["negative"])}


def test_judge_none_keeps_every_non_empty_answer_and_asks_the_server_only_as_author(tmp_path, tiny_llama):
    out = tmp_path / "syc"
    with chat_server(scripted()) as (base, requests):
        r = run_cli(*common(tiny_llama, out, base, "--judge", "none"))
    assert r.exit_code == 0, r.output
    assert len(requests) == 3 and "--judge none" in r.output
    gens = lines(out / "generations.jsonl")
    assert [c["generation_id"] for c in lines(out / "corpus.jsonl")] == [
        g["generation_id"] for g in gens if g["answer"].strip()]
    assert all(g["judge"] == "none" and g["trait_score"] is None for g in gens)
