"""The models ``generate`` talks to: a local Hugging Face chat model, or an OpenAI-compatible
server (vLLM, llama.cpp's ``llama-server``, ollama, ...), behind one call:
``complete(conversations, max_tokens) -> replies`` (greedy / temperature 0).

Each backend has an ``identity``: what the call cache keys on (a local model's store key, which
changes with its weights; a server's URL and model name). A local model is loaded only on the
first call that the cache cannot answer, and loaded once whatever roles it plays
(:class:`Models`): a rerun whose every call is cached loads nothing.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from traitlens.store.errors import InputError, TraitlensError


class ApiError(InputError):
    """The server cannot be reached or does not serve the model asked for (exit 2)."""


class ApiCallError(TraitlensError):
    """A call to a reachable server failed (exit 1: what was answered before is cached)."""


class Models:
    """Local models by ``--model`` spec, each loaded once, on first use."""

    def __init__(self, device: str = "auto", dtype: str = "auto", log=print):
        self.device, self.dtype, self.log, self._loaded = device, dtype, log, {}

    def get(self, spec: str | None):
        from traitlens.pipeline.model.identity import is_default
        from traitlens.pipeline.model.loading import load_model

        name = None if is_default(spec) else spec
        if name not in self._loaded:
            self._loaded[name] = load_model(name, self.device, self.dtype, log=self.log)
        return self._loaded[name]

    def loaded(self) -> list[str]:
        return [lm.key for lm in self._loaded.values()]


class LocalChat:
    """A local chat model (``spec``: None for the default model, a folder or a Hugging Face id),
    replying greedily in batches of ``batch_size``, shortest conversations together."""

    def __init__(self, spec: str | None, models: Models, batch_size: int = 8):
        self.spec, self.models, self.batch_size = spec, models, batch_size
        self._identity = None

    @property
    def identity(self) -> str:
        """The model's store key (name + weight fingerprint), known without loading it when a
        run loaded it before."""
        if self._identity is None:
            from traitlens.pipeline.model.identity import known

            ident = known(self.spec)
            self._identity = ident.key if ident is not None else self.models.get(self.spec).key
        return self._identity

    @property
    def label(self) -> str:
        return self.identity

    def prepare(self, messages: list[dict]) -> list[dict]:
        """The conversation as this model is given it: a system turn its chat template drops or
        refuses is folded into the first user turn."""
        if messages and messages[0]["role"] == "system" and not self.takes_system():
            head, rest = messages[0]["content"], messages[1:]
            if rest and rest[0]["role"] == "user":
                return [{"role": "user", "content": f"{head}\n\n{rest[0]['content']}"}, *rest[1:]]
            return [{"role": "user", "content": head}, *rest]
        return messages

    def takes_system(self) -> bool:
        if not hasattr(self, "_takes_system"):
            self._takes_system = template_takes_system(self.chat_model().tokenizer)
        return self._takes_system

    def chat_model(self):
        """The loaded model, refused (exit 2) when its tokenizer has no chat template."""
        lm = self.models.get(self.spec)
        if not getattr(lm.tokenizer, "chat_template", None):
            raise InputError(f"{lm.name} has no chat template: generate talks to chat (instruction) models; pass "
                             "one with --model / --author / --judge")
        return lm

    def complete(self, conversations: list[list[dict]], max_tokens: int) -> list[str]:
        """Greedy replies ``[n]`` (decoded, stripped), in the conversations' order."""
        from traitlens.pipeline.model.generation import greedy_replies

        lm = self.chat_model()
        order = sorted(range(len(conversations)), key=lambda i: sum(len(m["content"]) for m in conversations[i]))
        ids = greedy_replies(lm, [self.prepare(conversations[i]) for i in order], max_tokens, chat=True,
                             batch_size=self.batch_size)
        out = [""] * len(conversations)
        for i, r in zip(order, ids):
            out[i] = lm.tokenizer.decode(r, skip_special_tokens=True).strip()
        return out


def template_takes_system(tokenizer) -> bool:
    """Whether the chat template renders a system turn (some refuse one, some drop it)."""
    marker = "traitlens-system-check"
    try:
        text = tokenizer.apply_chat_template([{"role": "system", "content": marker}, {"role": "user", "content": "hi"}],
                                             tokenize=False, add_generation_prompt=True)
    except Exception:  # jinja's TemplateError ("System role not supported") and the like
        return False
    return marker in text


def normalise_base(url: str) -> str:
    """``--api-base`` with its trailing slash removed and ``/v1`` added to a bare host
    (``http://localhost:8000`` -> ``http://localhost:8000/v1``), as OpenAI clients expect."""
    url = url.strip().rstrip("/")
    parts = urllib.parse.urlparse(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ApiError(f"--api-base {url!r}: give the server's URL, e.g. http://localhost:8000/v1")
    return url + "/v1" if parts.path in ("", "/") else url


class ApiChat:
    """An OpenAI-compatible chat server (``POST {base}/chat/completions``), temperature 0, up to
    ``workers`` requests in flight. ``api_key`` is sent as a bearer token when given."""

    def __init__(self, base: str, model: str, api_key: str | None = None, timeout: float = 300.0, workers: int = 8):
        self.base, self.model, self.api_key = normalise_base(base), model, api_key
        self.timeout, self.workers = timeout, workers

    @property
    def identity(self) -> str:
        return f"api:{self.model}@{self.base}"

    @property
    def label(self) -> str:
        return f"{self.model} at {self.base}"

    def prepare(self, messages: list[dict]) -> list[dict]:
        return messages

    def _request(self, path: str, body: dict | None = None, timeout: float | None = None) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, headers=headers, method="POST" if data else "GET")
        with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
            return json.loads(resp.read().decode("utf-8"))

    def check(self) -> None:
        """Refuse (exit 2) a server that does not answer, or that lists models without this one."""
        try:
            listing = self._request("/models", timeout=10)
        except urllib.error.HTTPError as e:
            if e.code == 404:  # a server without the listing: the first call will tell
                return
            raise ApiError(f"--api-base {self.base}: GET /models answered HTTP {e.code}; check the URL (it usually "
                           "ends in /v1) and the server's log") from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            why = getattr(e, "reason", e)
            raise ApiError(f"--api-base {self.base}: cannot reach the server ({why}); start it (vllm serve, "
                           "llama-server, ollama serve) or fix the URL") from None
        data = listing.get("data", []) if isinstance(listing, dict) else []
        names = [m.get("id") for m in data if isinstance(m, dict)]
        if names and self.model not in names:
            raise ApiError(f"--api-model {self.model!r}: the server at {self.base} serves {', '.join(map(str, names))}")

    def _one(self, messages: list[dict], max_tokens: int) -> str:
        body = {"model": self.model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "seed": 0}
        try:
            out = self._request("/chat/completions", body)
        except urllib.error.HTTPError as e:
            detail = e.read().decode("utf-8", "replace")[:200]
            raise ApiCallError(f"{self.label}: HTTP {e.code} for a chat completion: {detail}; what was answered "
                               "before is cached: rerun to continue") from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise ApiCallError(f"{self.label}: a chat completion failed ({getattr(e, 'reason', e)}); what was "
                               "answered before is cached: rerun to continue") from None
        try:
            content = out["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise ApiCallError(f"{self.label}: the reply is not an OpenAI chat completion: "
                               f"{json.dumps(out)[:200]}") from None
        return (content or "").strip()

    def complete(self, conversations: list[list[dict]], max_tokens: int) -> list[str]:
        if len(conversations) <= 1 or self.workers <= 1:
            return [self._one(c, max_tokens) for c in conversations]
        with ThreadPoolExecutor(min(self.workers, len(conversations)), thread_name_prefix="traitlens-api") as pool:
            return list(pool.map(lambda c: self._one(c, max_tokens), conversations))
