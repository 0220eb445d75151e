"""``traitlens serve``: a local, read-only web dashboard over one store (Starlette on uvicorn).

Starlette because the app is a handful of JSON endpoints and static files: it is small, typed,
well kept, and has a test client, with nothing to generate. Every route is GET (or HEAD); any
other method is answered 405 by the router, and the SQL endpoint runs statements through the same
read-only guard as ``traitlens query``. A store is opened per request, so the pages follow the
store as runs add to it. Bound to anything but loopback, the app refuses to start without a
token, and then every request needs it (``Authorization: Bearer T``, ``?token=T`` once, which
sets a cookie, or the cookie).

The pages are one static HTML file with hand-written SVG plots (``static/``); no file is
fetched from the network. Every JSON answer is strict JSON (:class:`StrictJSONResponse`: never
``NaN`` or ``Infinity``); bad requests are 400 and missing things 404, each with a one-line
``error``, never a 500 for what a request can ask.
"""

from __future__ import annotations

import hmac
import io
import ipaddress
import tempfile
from functools import lru_cache
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from traitlens.queries import StoreSQL
from traitlens.queries.connection import QueryError
from traitlens.store import strict_json
from traitlens.store.errors import InputError, TraitlensError

from . import data

STATIC = Path(__file__).with_name("static")
COOKIE = "traitlens_token"


class StrictJSONResponse(JSONResponse):
    """A JSON answer that never holds NaN or infinities (null, with the reason beside it)."""

    def render(self, content) -> bytes:
        return strict_json.dumps(content, ensure_ascii=False, separators=(",", ":"), default=str).encode("utf-8")


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class TokenGate(BaseHTTPMiddleware):
    """Every request carries the token (header, query or cookie); a query token sets the cookie."""

    def __init__(self, app, token: str):
        super().__init__(app)
        self.token = token

    async def dispatch(self, request: Request, call_next):
        auth = request.headers.get("authorization", "")
        given = [auth[7:] if auth.lower().startswith("bearer ") else "", request.query_params.get("token", ""),
                 request.cookies.get(COOKIE, "")]
        if not any(g and hmac.compare_digest(g, self.token) for g in given):
            return StrictJSONResponse({"error": "this dashboard needs its token: open it with ?token=... "
                                          "(printed by `traitlens serve`)"}, status_code=401)
        response = await call_next(request)
        if request.query_params.get("token"):
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict")
        return response


def create_app(store_path, token: str | None = None, tokenizer_model: str | None = None) -> Starlette:
    """The dashboard app for one store. ``tokenizer_model``: where to find the tokenizer that
    decodes stored token ids (default: the model the tokens group was captured with, when it
    can be found)."""

    def sql_conn() -> StoreSQL:
        return StoreSQL(store_path)

    def endpoint(fn):
        """A JSON endpoint: the store's own errors become 400/404 with their message."""
        def run(request: Request):
            try:
                with sql_conn() as q:
                    return StrictJSONResponse(fn(q, request))
            except data.NotFound as e:
                return StrictJSONResponse({"error": str(e)}, status_code=404)
            except (QueryError, InputError) as e:
                return StrictJSONResponse({"error": str(e)}, status_code=400)
            except TraitlensError as e:
                return StrictJSONResponse({"error": str(e)}, status_code=500)
        return run

    def page(request: Request) -> int:
        return data.check_page(request.query_params.get("page", 0))

    @lru_cache(maxsize=4)
    def tokenizer(model_key: str):
        return _tokenizer(store_path, model_key, tokenizer_model)

    def held_out(q, r):
        return data.held_out_tokens(q, r.path_params["vector_id"], page(r), tokenizer)

    def sql_csv(request: Request):
        """The console's statement as CSV, capped like the page at :data:`data.SQL_ROWS` rows:
        the headers say so (``X-Traitlens-Row-Limit``, ``X-Traitlens-Truncated``) and so does
        the file name; ``traitlens query --format csv -o FILE`` writes every row."""
        import pyarrow.csv as pacsv

        try:
            with sql_conn() as q:
                t, more, _ = data.capped(q, request.query_params.get("q", ""))
        except (QueryError, InputError) as e:
            return StrictJSONResponse({"error": str(e)}, status_code=400)
        buf = io.BytesIO()
        pacsv.write_csv(t, buf)
        name = f"query-first-{data.SQL_ROWS}-rows.csv" if more else "query.csv"
        return Response(buf.getvalue(), media_type="text/csv",
                        headers={"content-disposition": f'attachment; filename="{name}"',
                                 "x-traitlens-row-limit": str(data.SQL_ROWS),
                                 "x-traitlens-truncated": "true" if more else "false"})

    def export(request: Request):
        from traitlens.pipeline.extract.export import to_gguf, to_safetensors

        from traitlens.store import file_stem

        fmt = request.query_params.get("format", "safetensors")
        if fmt not in ("safetensors", "gguf", "easysteer"):
            return StrictJSONResponse({"error": "format: safetensors, gguf (llama.cpp, layers >= 1) or easysteer "
                                                "(every layer)"}, status_code=400)
        try:
            with sql_conn() as q:
                v = data.vector_values(q, request.path_params["vector_id"])
            with tempfile.TemporaryDirectory(prefix="traitlens-export-") as tmp:
                stem = f"{file_stem(v['trait'], 'trait')}-{file_stem(v['method'], 'method')}-L{v['layer']}"
                out = Path(tmp) / f"{stem}.{'safetensors' if fmt == 'safetensors' else 'gguf'}"
                if fmt == "safetensors":
                    to_safetensors([v], out)
                else:
                    to_gguf([v], out, easysteer=fmt == "easysteer")
                body = out.read_bytes()
        except data.NotFound as e:
            return StrictJSONResponse({"error": str(e)}, status_code=404)
        except InputError as e:  # layer 0 as a llama.cpp GGUF, a vector that is not finite
            return StrictJSONResponse({"error": str(e)}, status_code=400)
        return Response(body, media_type="application/octet-stream",
                        headers={"content-disposition": f'attachment; filename="{out.name}"'})

    routes = [
        Route("/", lambda r: FileResponse(STATIC / "index.html"), methods=["GET"]),
        Route("/api/overview", endpoint(lambda q, r: data.overview(q, page(r))), methods=["GET"]),
        Route("/api/runs", endpoint(lambda q, r: data.runs(q, page(r))), methods=["GET"]),
        Route("/api/traits/{trait:path}", endpoint(lambda q, r: data.trait(q, r.path_params["trait"],
                                                                      r.query_params.get("by", "auroc"))),
              methods=["GET"]),
        Route("/api/vectors/{vector_id}", endpoint(lambda q, r: data.vector(q, r.path_params["vector_id"])),
              methods=["GET"]),
        Route("/api/vectors/{vector_id}/export", export, methods=["GET"]),
        Route("/api/vectors/{vector_id}/tokens", endpoint(held_out), methods=["GET"]),
        Route("/api/trajectories", endpoint(lambda q, r: data.trajectories(q, r.query_params.get("vector_id"),
                                                                           page(r))), methods=["GET"]),
        Route("/api/sql", endpoint(lambda q, r: data.sql(q, r.query_params.get("q", ""))), methods=["GET"]),
        Route("/api/sql.csv", sql_csv, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    middleware = [Middleware(TokenGate, token=token)] if token else []
    return Starlette(routes=routes, middleware=middleware)


def _tokenizer(store_path, model_key: str, spec: str | None):
    """The tokenizer of the model a group was captured with, from local files only (never the
    network; no weights), or None."""
    import json

    try:
        from transformers import AutoTokenizer

        from traitlens.pipeline.model.identity import is_default
        from traitlens.pipeline.model.loading import provision_default_model

        if spec is None:
            with StoreSQL(store_path) as q:
                found = q.query("SELECT config FROM runs WHERE stage = 'ingest' AND config LIKE ? "
                                "ORDER BY started_at DESC LIMIT 1", [f'%"{model_key}"%']).to_pylist()
            config = json.loads(found[0]["config"]) if found else {}
            spec = config.get("model_path") or config.get("model")
        if spec is None:
            return None
        path = str(provision_default_model(log=lambda *a: None)) if is_default(spec) else spec
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception:  # a tokenizer is a nicety here: the page shows token ids without one
        return None


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve a store beyond this machine without a token."""
    if not is_loopback(host) and not token:
        raise InputError(f"--host {host} is reachable from other machines: pass --token SECRET (every request "
                         "must then carry it), or bind to 127.0.0.1")
