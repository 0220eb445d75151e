"""``traitlens serve``: the read-only dashboard over a store (see :mod:`.dashboard.app`)."""

from __future__ import annotations

import click

from .cli_base import cli


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; anything but loopback needs --token.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535))
@click.option("--token", default=None, envvar="TRAITLENS_SERVE_TOKEN",
              help="Secret every request must carry (header, ?token= or its cookie) [env: TRAITLENS_SERVE_TOKEN].")
@click.option("--tokenizer", "tokenizer_model", default=None,
              help="Model whose tokenizer decodes stored token ids [default: the one that captured them].")
@click.pass_context
def serve(ctx, host, port, token, tokenizer_model):
    """A local, read-only web dashboard: groups, traits (layers x methods heatmaps, floors,
    steering), vectors (provenance, nearest, exports), token projections, and a SQL console."""
    import uvicorn

    from traitlens.store import Store

    from .dashboard.app import check_bind, create_app

    check_bind(host, token)
    Store.open(ctx.obj["store"])  # a missing or unreadable store fails here, in one line, not per request
    app = create_app(ctx.obj["store"], token=token, tokenizer_model=tokenizer_model)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    click.echo(f"traitlens dashboard for {ctx.obj['store']}: http://{shown}:{port}/"
               + (f"?token={token}" if token else "") + "  (Ctrl-C stops it)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
