"""The demo's webhook receiver: what a user's alert endpoint does, running beside `make demo`.

    python -m dashboard.demo.receiver --port 8001 --secret whsec_... [--log FILE]

Checks each delivery's Standard Webhooks signature with the endpoint's secret (a bad one is
answered 401, which the endpoint page then shows as a failed attempt) and logs one line per
delivery, so a new user sees a signed alert arrive end to end without configuring anything.
Standard library and `standardwebhooks` only: no Django in this process.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TextIO

from standardwebhooks import Webhook, WebhookVerificationError

MAX_BODY = 1024 * 1024


def serve(port: int, secret: str, out: TextIO) -> None:
    verifier = Webhook(secret)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            length = min(int(self.headers.get("Content-Length") or 0), MAX_BODY)
            body = self.rfile.read(length)
            try:
                verifier.verify(body, dict(self.headers.items()))
            except WebhookVerificationError as exc:
                self._answer(401, f"bad signature: {exc}")
                return
            try:
                event = json.loads(body)
            except ValueError:
                event = {}
            alerts = event.get("alerts") or [{}]
            name = alerts[0].get("labels", {}).get("alertname", "?")
            self._answer(200, f"signature ok: {event.get('status', '?')} alert '{name}'")

        def _answer(self, status: int, line: str) -> None:
            stamp = datetime.now(UTC).strftime("%H:%M:%S")
            out.write(f"{stamp} {self.headers.get('webhook-id', '-')} {status} {line}\n")
            out.flush()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(line.encode())

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            return  # one line per delivery, written above

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--secret", required=True, help="the endpoint's signing secret")
    args = parser.parse_args()
    serve(args.port, args.secret, sys.stdout)


if __name__ == "__main__":
    main()
