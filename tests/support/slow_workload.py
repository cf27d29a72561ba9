"""A workload that holds requests: `POST /invoke {"ms": N}` answers after N ms, or as soon as
someone calls `POST /release` on it directly (so a test need not wait the whole N ms).

Run as the site runs every workload: `python -m tests.support.slow_workload --host H --port P`
(the site starts workloads with the repository root as their working directory). Stdlib only.
"""

from __future__ import annotations

import argparse
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RELEASE = threading.Event()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _answer(self, status: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._answer(200 if self.path == "/healthz" else 404, {"status": "ok"})

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        if self.path == "/release":
            RELEASE.set()
            self._answer(200, {"released": True})
            return
        try:
            ms = float(json.loads(body or b"{}").get("ms", 0))
        except (ValueError, AttributeError):
            self._answer(422, {"error": {"code": "invalid_payload", "message": "bad ms", "field": "ms"}})
            return
        released = RELEASE.wait(ms / 1000)
        self._answer(200, {"slept_ms": ms, "released": released})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    print(f"slow workload listening on http://{args.host}:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
