"""A stand-in OTLP/HTTP trace collector for measuring what tracing costs Clarion.

It accepts ``POST /v1/traces`` (protobuf or JSON), counts the requests and bytes, and
answers 200 with an empty body, as a collector does. Used with ``benchmarks/e2e.py``::

    uv run python benchmarks/otlp_sink.py --port 4318 &
    OTEL_TRACES_EXPORTER=otlp OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 \\
        uv run python benchmarks/e2e.py --config postgres-redis --notifications 30000

It prints one JSON line with its totals when stopped (SIGTERM or Ctrl-C).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType

_totals = {"requests": 0, "bytes": 0}
_lock = threading.Lock()


class Collector(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length)
        with _lock:
            _totals["requests"] += 1
            _totals["bytes"] += len(body)
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=4318)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Collector)

    def stop(_signum: int, _frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    print(json.dumps(_totals), file=sys.stdout, flush=True)


if __name__ == "__main__":
    main()
