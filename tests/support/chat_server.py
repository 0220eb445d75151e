"""A small OpenAI-compatible chat server for tests: ``GET /v1/models`` and ``POST
/v1/chat/completions``, answered by any ``reply(messages, max_tokens) -> str`` (a script, or a
tiny local model). It runs on a thread of the test's own process (stdlib ``http.server``), on a
free loopback port, and is shut down when the ``with`` block ends, so it dies with the test."""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@contextmanager
def chat_server(reply, model: str = "tiny"):
    """Yields ``(base_url, requests)``: the URL to pass as ``--api-base`` and the list of the
    completion requests received (their JSON bodies), in order."""
    requests: list[dict] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def _send(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path.rstrip("/") == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": model, "object": "model"}]})
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self):
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._send(404, {"error": "not found"})
                return
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            with lock:
                requests.append(body)
            try:
                content = reply(body["messages"], body.get("max_tokens", 16))
            except Exception as e:  # a broken script answers 500, as a real server would
                self._send(500, {"error": {"message": f"{type(e).__name__}: {e}"}})
                return
            self._send(200, {"object": "chat.completion", "model": body.get("model"),
                             "choices": [{"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": content}}]})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="traitlens-test-chat-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
