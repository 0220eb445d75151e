"""``traitlens generate``: a trait's contrastive data from its name and a description (see
:mod:`traitlens.pipeline.generate`)."""

from __future__ import annotations

import click

from .cli_base import FiniteFloat, _exit_now, cli


@cli.command()
@click.argument("trait")
@click.option("--description", required=True, help="One or two sentences saying what the trait is (the author and "
              "the judge read it; written to definition.txt).")
@click.option("-o", "--output", required=True, type=click.Path(), help="The trait folder to write (new, or one "
              "`generate` wrote for this trait: a rerun calls only what is missing).")
@click.option("--pairs", default=5, show_default=True, type=int, help="Pairs of opposite system prompts.")
@click.option("--questions", default=20, show_default=True, type=int,
              help="Questions, split into an extraction half (train) and an evaluation half (test).")
@click.option("--model", default=None, help="The target model that answers: Hugging Face id or local folder "
              "[default: SmolLM2-135M-Instruct].")
@click.option("--author", default=None, help="Local model that writes the prompts, questions and rubric [default: "
              "the --api-model when given, else the default model].")
@click.option("--judge", default=None, help="Local model that rates the answers [default: the --api-model when "
              "given, else the default model]; none: no judge, every non-empty answer is kept, labelled by its "
              "persona (the thresholds are then unused).")
@click.option("--api-base", default=None, help="An OpenAI-compatible server (vLLM, llama-server, ollama), e.g. "
              "http://localhost:8000/v1: author and judge unless --author / --judge name local models.")
@click.option("--api-model", default=None, help="The model name the server serves.")
@click.option("--api-key-env", default="OPENAI_API_KEY", show_default=True,
              help="Environment variable holding the server's key (sent as a bearer token when set).")
@click.option("--max-new-tokens", default=128, show_default=True, type=int, help="Longest answer of the target.")
@click.option("--min-trait-positive", default=50.0, show_default=True, type=FiniteFloat(min=0, max=100),
              help="Keep a positive persona's answer when its trait score is at least this.")
@click.option("--max-trait-negative", default=50.0, show_default=True, type=FiniteFloat(min=0, max=100),
              help="Keep a negative persona's answer when its trait score is at most this.")
@click.option("--min-coherence", default=50.0, show_default=True, type=FiniteFloat(min=0, max=100),
              help="Keep an answer only when its coherence score is at least this.")
@click.option("--retries", default=2, show_default=True, type=int,
              help="Times the author is asked again, with the reason, when its answer cannot be used.")
@click.option("--batch-size", default=8, show_default=True, type=int, help="Conversations per local forward batch.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | mps")
@click.option("--dtype", default="auto", show_default=True, help="auto | float32 | bfloat16 | float16")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def generate(trait, description, output, pairs, questions, model, author, judge, api_base, api_model, api_key_env,
             max_new_tokens, min_trait_positive, max_trait_negative, min_coherence, retries, batch_size, device, dtype,
             quiet):
    """Write a trait folder from TRAIT and its description: an author model writes opposite system
    prompts, questions and a judge rubric; the target model answers every question under both
    personas; a judge scores each answer for the trait and coherence; the answers that pass become
    corpus.jsonl (chat records) for `traitlens ingest DIR --pooling assistant_mean`. Every call is
    cached in the folder: a rerun calls nothing, an interrupted one resumes."""
    import os

    from traitlens.pipeline.generate.run import GenerateConfig, GenerateInterrupted, kept_share
    from traitlens.pipeline.generate.run import generate as run_generate

    from .cli_base import _quiet_libraries

    _quiet_libraries()
    cfg = GenerateConfig(trait=trait, description=description, output=output, pairs=pairs, questions=questions,
                         model=model, author=author, judge=judge, api_base=api_base, api_model=api_model,
                         max_new_tokens=max_new_tokens, min_trait_positive=min_trait_positive,
                         max_trait_negative=max_trait_negative, min_coherence=min_coherence, retries=retries,
                         batch_size=batch_size, device=device, dtype=dtype)
    try:
        res = run_generate(cfg, log=lambda m: click.echo(m, err=True), progress=not quiet,
                           api_key=os.environ.get(api_key_env) if api_key_env else None)
    except GenerateInterrupted as e:
        click.echo(f"\n{e}", err=True)
        _exit_now(e.exit_code)
    tries = ", ".join(f"{k} {v}" for k, v in res.tries.items() if v > 1)
    click.echo(f"author ({res.models['author']}): {res.n_pairs} pair(s) of system prompts"
               + (" (built in)" if res.pairs_source == "builtin" else "") + f", {res.n_extraction} extraction + "
               f"{res.n_evaluation} evaluation questions, rubric " + ("built in" if res.rubric_source == "builtin"
                                                                      else "by the author")
               + (f"; asked again: {tries} tries" if tries else ""))
    for note in res.notes:
        click.echo(f"note: {note}")
    click.echo(f"target ({res.models['target']}): {res.answers} answers, {res.answers_called} generated now; judge "
               f"({res.models['judge']}): {res.ratings} ratings, {res.ratings_called} made now")
    if cfg.judge == "none":
        click.echo("kept (--judge none: every non-empty answer, labelled by its persona):")
    else:
        click.echo(f"kept (trait >= {cfg.min_trait_positive:g} positive, <= {cfg.max_trait_negative:g} negative; "
                   f"coherence >= {cfg.min_coherence:g}):")
    for persona in ("positive", "negative"):
        kept, total = kept_share(res.counts, persona)
        parts = ", ".join(f"{h} {c['kept']}/{c['answers']}" for h, c in res.counts[persona].items())
        lost = {k: sum(c[k] for c in res.counts[persona].values()) for k in ("empty", "refused", "unrated")}
        why = ", ".join(f"{v} {k}" for k, v in lost.items() if v)
        click.echo(f"  {persona}: {kept}/{total} ({parts})" + (f"; not rated: {why}" if why else ""))
    for w in res.warnings:
        click.echo(f"warning: {w}", err=True)
    changed = ", ".join(res.written) if res.written else "nothing (every call was cached, every file as it was)"
    click.echo(f"generate done: {res.n_corpus} records in {res.folder / 'corpus.jsonl'}; wrote {changed}. Next: "
               f"traitlens ingest {res.folder} --pooling assistant_mean")
