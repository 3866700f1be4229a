"""A webhook receiver for the alert tests, run as its own process.

    python webhook_receiver.py --port P --log requests.jsonl [--responses 503,503,200]
        [--hang-first N --hang-s S] [--location URL]

Every request is appended to the log (method, path, headers, body) *before* it is answered,
so a test can see a request arrive even when the answer never leaves (hang, killed sender).
`--responses` is the status for the 1st, 2nd, … request; the last one repeats.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--responses", default="200")
    parser.add_argument("--hang-first", type=int, default=0)
    parser.add_argument("--hang-s", type=float, default=0.0)
    parser.add_argument("--location", default="")
    args = parser.parse_args()
    statuses = [int(code) for code in args.responses.split(",")]
    lock = threading.Lock()
    seen = [0]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with lock:
                index = seen[0]
                seen[0] += 1
                with open(args.log, "a") as log:
                    log.write(
                        json.dumps(
                            {
                                "n": index,
                                "path": self.path,
                                "headers": dict(self.headers.items()),
                                "body": body.decode(),
                                "t": time.time(),
                            }
                        )
                        + "\n"
                    )
            if index < args.hang_first:
                time.sleep(args.hang_s)
            status = statuses[min(index, len(statuses) - 1)]
            answer = json.dumps({"received": index, "status": status}).encode()
            self.send_response(status)
            if 300 <= status < 400 and args.location:
                self.send_header("Location", args.location)
            if status in (429, 503):
                self.send_header("Retry-After", "0")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
