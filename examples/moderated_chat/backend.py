"""A moderated chat's webhook backend: Python's standard library only.

drifttrio calls it (``DRIFTTRIO_WEBHOOK_URL``) before it admits a connection and
before each push reaches a room:

- ``POST /authorize``: admits anyone who says who they are (``?name=alice`` in the
  room URL), with that name as their identity, allowed to write the ``chat`` key
  only; refuses the others with 401;
- ``POST /push``: refuses a message with a banned word, and stamps the sender's
  identity into the others: ``{"text": ...}`` becomes ``{"text": ..., "from": "alice"}``.

Every request is checked against its ``Drifttrio-Signature`` first: a request
not signed with the shared secret gets 401, which drifttrio counts as a failed
call (and refuses the connection or push).

Run it: ``python backend.py PORT`` with ``WEBHOOK_SECRET`` set (see README.md).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

BANNED = frozenset({"spam", "scam"})


def verify(secret: bytes, header: str, body: bytes, tolerance: float = 300) -> bool:
    """Whether ``header`` (``t=UNIX,v1=HEX``) signs ``body`` with ``secret``, recently."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - timestamp) > tolerance:
        return False
    expected = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields.get("v1", ""))


def authorize(call: dict[str, Any]) -> dict[str, Any]:
    name = call["query"].get("name", "").strip()
    if not name:
        return {"allow": False, "status": 401, "reason": "say who you are: ?name=..."}
    return {"allow": True, "identity": name, "keys": ["chat"]}


def push(call: dict[str, Any]) -> dict[str, Any]:
    value = call["value"]
    if not isinstance(value, dict) or not isinstance(value.get("text"), str):
        return {"accept": False, "reason": 'a message is {"text": "..."}'}
    words = set(value["text"].lower().split())
    if words & BANNED:
        return {"accept": False, "reason": "message refused: mind your language"}
    return {"accept": True, "value": {"text": value["text"], "from": call["identity"]}}


ROUTES = {"/authorize": authorize, "/push": push}


def make_server(port: int, secret: bytes, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """The backend, bound (``port`` 0: any free port), not yet serving."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: drifttrio reuses its connections
        # Head and body in one write, sent at once: otherwise Nagle's algorithm and
        # the client's delayed ACK add 40 ms to every answer.
        wbufsize = 64 * 1024
        disable_nagle_algorithm = True

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            route = ROUTES.get(self.path)
            if route is None:
                return self.answer(404, {"error": "no such hook"})
            if not verify(secret, self.headers.get("drifttrio-signature", ""), body):
                return self.answer(401, {"error": "bad signature"})
            return self.answer(200, route(json.loads(body)))

        def answer(self, status: int, data: dict[str, Any]) -> None:
            payload = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: drifttrio logs the failures that matter

    class Server(ThreadingHTTPServer):
        request_queue_size = 128  # drifttrio opens up to webhook_max_in_flight at once
        daemon_threads = True

    return Server((host, port), Handler)


def main(port: int = 8081) -> None:
    server = make_server(port, os.environ["WEBHOOK_SECRET"].encode())
    print(f"moderated chat backend on http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 8081)
