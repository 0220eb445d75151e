"""CLI verbs for vector bundles: ``bundle`` (write one) and ``reproduce`` (check one by refitting)."""

from __future__ import annotations

import click

from .cli_base import EXIT_FAIL, _output, cli


@cli.command()
@click.option("--trait", required=True, help="The trait whose vectors to bundle.")
@click.option("--vector", "vector_ids", multiple=True, metavar="ID",
              help="A stored vector of --trait to bundle; repeatable [default: the one `rank` lists first].")
@click.option("-o", "--output", type=click.Path(file_okay=False), required=True,
              help="The new bundle folder (never an existing one).")
@click.option("--no-prompts", is_flag=True,
              help="Leave the prompt texts out: evidence/prompts.parquet then holds their ids, content hashes, "
                   "labels and splits only (reproduce needs a store that holds them).")
@click.option("--license", "license_", default="unknown", show_default=True,
              help="The card's license field (the prompts' and the model's terms decide what you may choose).")
@click.pass_context
def bundle(ctx, trait, vector_ids, output, no_prompts, license_):
    """Write a reproducible bundle of a trait's vectors: README.md (YAML front matter and a card with
    intervals and floors), vectors.safetensors, evidence/*.parquet (metrics, steering, capability,
    prompts) and reproduce.json (model and weight hash, corpus hash, prompt ids, every command's
    config, versions, device, dtype, and the SHA-256 of every file)."""
    from traitlens.workflows.bundles import make_bundle

    out = _output(ctx, output, "-o")
    res = make_bundle(ctx.obj["store"], trait, list(vector_ids), out, prompts=not no_prompts, license_=license_)
    rec = res["reproduce"]
    for r in res["records"]:
        pick = res["picks"].get(r["vector_id"])
        click.echo(f"{r['vector_id']}  {r['method']} L{r['layer']}  AUROC {r['auroc']:.3f}"
                   + (f"  steering shift {pick['shift']:+.3f} at alpha {pick['alpha']:g} (KL {pick['kl']:.4f})"
                      if pick else "  (steering not evaluated)"))
    click.echo(f"wrote {out}: {len(res['records'])} vectors of {trait!r} on {rec['model']['key']}, "
               f"{rec['corpus']['n_prompts']} prompts" + (" (ids and hashes only)" if no_prompts else "")
               + f", {len(res['files'])} files hashed in reproduce.json; `traitlens reproduce {out}` refits them")


@cli.command()
@click.argument("bundle_dir", metavar="DIR", type=click.Path())
@click.option("--store", "store_path", default=None, type=click.Path(),
              help="Reproduce in this store (created if absent; what it holds already is not captured again) "
                   "[default: a fresh temporary store, deleted afterwards].")
@click.option("--model", default=None, help="The checkpoint to capture with [default: the recorded one]; it must "
              "load as the bundle's model key.")
@click.option("--device", default=None, help="auto | cpu | cuda | mps [default: the recorded device, where this "
              "machine has it].")
@click.option("--format", "fmt_", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.pass_context
def reproduce(ctx, bundle_dir, store_path, model, device, fmt_):
    """Check a bundle by refitting it: verify every file's SHA-256 (a missing or changed file is exit
    2, named), capture the bundle's prompts the store lacks with the recorded model and settings,
    refit with the recorded config, and compare each vector (cosine, bytes, held-out metrics).
    Verdict: identical, within tolerance, or differs; exit 0 only for the first two."""
    import sys

    from traitlens.workflows.reproduce import TOLERANCE, same_value
    from traitlens.workflows.reproduce import reproduce as run_reproduce

    log = (lambda m: click.echo(m, err=True)) if fmt_ == "table" else (lambda *a: None)
    res = run_reproduce(bundle_dir, store_path, model, device, log=log)
    if fmt_ == "json":
        from traitlens.store import strict_json

        click.echo(strict_json.dumps(res.as_dict(), default=str))  # (agreement of a lone method: NaN)
    else:
        click.echo(f"hashes: every file of {res.bundle} matches reproduce.json")
        click.echo(f"store: {res.store} ({'kept' if res.kept else 'temporary, deleted'}); "
                   f"{res.captured} prompts captured")
        click.echo(f"{'vector_id':<16} {'method':<9} {'layer':>5} {'cosine':>10} {'bytes':>9}  metrics")
        for m in res.vectors:
            moved = [f"{k} {v['bundle']} -> {v['refit']}" for k, v in m.metrics.items()
                     if not same_value(v["bundle"], v["refit"])]
            cos = "-" if m.cosine is None else f"{m.cosine:.8f}"
            click.echo(f"{m.vector_id:<16} {m.method:<9} {m.layer:>5} {cos:>10} "
                       f"{'same' if m.same_bytes else 'differ':>9}  "
                       + ("all equal" if m.metrics and not moved else "; ".join(moved[:4]) or m.why)
                       + f"  -> {m.verdict}" + (f" ({m.why})" if m.why and m.metrics else ""))
            if m.refit_id and m.refit_id != m.vector_id:
                click.echo(f"{'':<16} refit id {m.refit_id} (the id hashes the code version and the inputs)")
        for n in res.notes:
            click.echo(f"note: {n}")
        click.echo(f"verdict: {res.verdict} (tolerance: cosine within {TOLERANCE['cosine']:g} of 1, bounded metrics "
                   f"within {TOLERANCE['bounded']:g}, others within {TOLERANCE['relative']:.0%}; counts and the "
                   "prompts' fingerprint exact)")
    if not res.matches:
        sys.exit(EXIT_FAIL)

