#!/usr/bin/env python3
"""The batch-mode section of `make bench` (OpenAI's Batch API, `--mode batch`).

1. Throughput: the bench corpus embedded by `backfill run --mode batch
   --poll-secs 1` against a private stand-in that completes a batch as soon as
   it is looked at, beside the direct `backfill run` over the same documents
   on the same stand-in (vectors reset between), in the same run: docs/s of
   each, and the tokens and cost each run recorded.
2. Memory: 50,000 documents of 2-4 KB of Norwegian legal text dispatched as
   one job (`backfill dispatch --mode batch`), then `backfill poll --run` once
   to submit it (write the input file and stream it to `/v1/files`) and again
   to collect it (stream the output file, write 50,000 vectors), each under
   /usr/bin/time for its peak RSS, against the 128 MiB target.

Run alone with `BENCH_ONLY=batch make bench`, or `.tools/venv/bin/python
bench/batch.py` once the release binaries are built; either prints the section
and replaces it in bench/results.md. The 50,000-document archive is kept and
reused by the next run (its vectors are reset); BENCH_BATCH_RESEED=1 builds it
again."""

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path

HEADING = "## Batch mode (OpenAI's Batch API)"
# The 50,000-document job: one job holds at most 50,000 documents (the
# default --job-size), so the archive is exactly one.
JOB_ARCHIVE = "bench-batch-job"
JOB_DOCS = 50_000
# Each document: a slice of 2,000-4,000 characters of a seed-docs text.
SLICE_MIN, SLICE_SPREAD = 2000, 2001
TARGET_MIB = 128
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def free_port():
    """A port nothing listens on: the fixed ones of the other sections'
    stand-ins can be taken, for a moment, by any outgoing connection's
    ephemeral port on a busy machine."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log(msg):
    print(f"batch: {msg}", file=sys.stderr, flush=True)


def run_status(out):
    """The final status `backfill run --json` printed."""
    s = json.loads(out)
    return {"embedded": s["documents_embedded"], "skipped": s["documents_skipped"],
            "failed": s["documents_failed"], "copied": s["documents_copied"], "tokens": s["tokens_used"],
            "billed": s["tokens_billed"], "cost": s["actual_cost_usd"], "state": s["state"]}


# ---------------------------------------------------------------- throughput

def throughput(b):
    """Direct, then batch mode, over the bench corpus on one stand-in: the
    direct requests answered at the other sections' latency, the Batch API's
    batches completed when first looked at."""
    standin = b.Standin(free_port(), b.LATENCY + ["--batch-complete-ms", "0"])
    env = dict(b.ENV, OPENAI_BASE_URL=standin.url + "/v1", OPENAI_API_KEY=standin.key, RUST_LOG="error")
    base = [str(b.REL / "backfill"), "run", "--archive", b.ARCHIVE, "--json", "--force"]
    modes = [("direct", "`backfill run --concurrency 16`", base + ["--concurrency", "16"]),
             ("batch", "`backfill run --mode batch --poll-secs 1`", base + ["--mode", "batch", "--poll-secs", "1"])]
    rows = []
    try:
        b.seed_corpus()
        for mode, label, cmd in modes:
            log(f"throughput: {mode} mode over {b.N:,} documents")
            b.reset_vectors()
            standin.reset()
            wall, cpu, rss, outs = b.timed([cmd], env)
            status = run_status(outs[0])
            stats = standin.stats()
            vectors = int(b.sql(f"SELECT count(*) FROM lovdata_documents WHERE archive = '{b.ARCHIVE}' "
                                "AND embedding IS NOT NULL"))
            if status["state"] != "completed" or vectors != status["embedded"]:
                sys.exit(f"batch: the {mode} run ended {status['state']} with {vectors:,} vectors written and "
                         f"{status['embedded']:,} counted: {status}")
            rows.append(dict(status, mode=mode, label=label, wall=wall, cpu=cpu, rss_mib=rss / 1024,
                             docs_per_sec=status["embedded"] / wall, standin_tokens=stats["tokens"],
                             requests=stats["requests"], batches=stats["batches"], lines=stats["batch_lines"]))
    finally:
        standin.stop()
    return rows


def throughput_table(b, rows):
    direct = rows[0]
    out = ["| mode | docs embedded | wall s | docs/s | x direct | tokens recorded | tokens the stand-in embedded | "
           "cost recorded (USD) | cost per 1M tokens | cost x direct | embeddings requests / Batch API batches "
           "(lines) | CPU s / 1k docs | peak RSS MiB |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        calls = (f"{r['requests']:,} requests" if r["mode"] == "direct"
                 else f"{r['batches']:,} batch ({r['lines']:,} lines)")
        out.append(f"| {r['label']} | {r['embedded']:,} | {r['wall']:.1f} | {r['docs_per_sec']:.1f} | "
                   f"{r['docs_per_sec'] / direct['docs_per_sec']:.2f} | {r['tokens']:,} | {r['standin_tokens']:,} | "
                   f"{r['cost']:.4f} | {r['cost'] / max(r['tokens'], 1) * 1e6:.3f} | "
                   f"{r['cost'] / direct['cost']:.3f} | {calls} | {r['cpu'] / max(r['embedded'], 1) * 1000:.2f} | "
                   f"{r['rss_mib']:.0f} |")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- the 50,000-document job

def seed_job_archive(b):
    """50,000 documents of 2-4 KB each: slices of seed-docs texts (realistic
    words), each starting at its own place and numbered, so no two are the
    same text (identical texts would be embedded once)."""
    start = time.monotonic()
    log(f"seeding {JOB_ARCHIVE}: {JOB_DOCS:,} documents of 2-4 KB")
    b.sql(f"DELETE FROM backfill_provenance p USING lovdata_documents d "
          f"WHERE p.doc_id = d.id AND d.archive = '{JOB_ARCHIVE}'")
    b.sql(f"DELETE FROM lovdata_documents WHERE archive = '{JOB_ARCHIVE}'")
    b.sql("DROP TABLE IF EXISTS public.bench_batch_texts")
    b.sql("CREATE TABLE public.bench_batch_texts (id bigint GENERATED ALWAYS AS IDENTITY, title text, "
          "archive text, content text)")
    try:
        subprocess.run([str(b.REL / "seed-docs"), "--table", "bench_batch_texts", "--archive", "bench-batch-texts",
                        "--count", "3000", "--seed", "50"], env=b.ENV, check=True, capture_output=True)
        # Texts long enough for any slice, short enough that substr's walk to
        # a character offset stays cheap; the slice's first, cut word dropped.
        b.sql(f"""
WITH src AS (
    SELECT row_number() OVER (ORDER BY id) - 1 AS n, title, content, char_length(content) AS len
    FROM public.bench_batch_texts
    WHERE char_length(content) BETWEEN {SLICE_MIN + SLICE_SPREAD + 500} AND 60000),
k AS (SELECT count(*) AS k FROM src)
INSERT INTO lovdata_documents (title, archive, content)
SELECT s.title || ' (del ' || (i + 1) || ')', '{JOB_ARCHIVE}',
       '§ ' || (i + 1) || '. ' || regexp_replace(
           substr(s.content, 1 + (i * 7919) % (s.len - {SLICE_MIN + SLICE_SPREAD}),
                  {SLICE_MIN} + (i * 37) % {SLICE_SPREAD}), '^\\S*\\s+', '')
FROM generate_series(0, {JOB_DOCS - 1}) i CROSS JOIN k JOIN src s ON s.n = i % k.k
ORDER BY i""")
    finally:
        b.sql("DROP TABLE IF EXISTS public.bench_batch_texts")
    log(f"seeded in {time.monotonic() - start:.0f} s")


def prepare_job_archive(b):
    """The archive with no vector: reused when it holds its 50,000 documents."""
    have = int(b.sql(f"SELECT count(*) FROM lovdata_documents WHERE archive = '{JOB_ARCHIVE}' "
                     "AND btrim(content) <> ''"))
    if os.environ.get("BENCH_BATCH_RESEED") == "1" or have != JOB_DOCS:
        seed_job_archive(b)
    else:
        b.sql(f"UPDATE lovdata_documents SET embedding = NULL WHERE archive = '{JOB_ARCHIVE}' "
              "AND embedding IS NOT NULL")
        b.sql(f"DELETE FROM backfill_provenance p USING lovdata_documents d "
              f"WHERE p.doc_id = d.id AND d.archive = '{JOB_ARCHIVE}'")
        log(f"reusing {JOB_ARCHIVE} ({JOB_DOCS:,} documents), vectors reset")
    size = b.sql(f"SELECT round(avg(octet_length(content))), min(octet_length(content)), "
                 f"max(octet_length(content)), sum(octet_length(content)) "
                 f"FROM lovdata_documents WHERE archive = '{JOB_ARCHIVE}'").split("|")
    return {"avg": int(float(size[0])), "min": int(size[1]), "max": int(size[2]), "total": int(size[3])}


def children(pid):
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def rss_kib(pid):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def measured(cmd, env):
    """Runs one command under /usr/bin/time, sampling its RSS every 50 ms (to
    tell when the peak came); its stdout, stderr (the log), wall and CPU
    seconds, peak RSS (KiB, /usr/bin/time's, which sees every page), the
    samples (seconds from the start, KiB) and the start's wall clock."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started_at = time.time()
        start = time.monotonic()
        p = subprocess.Popen(["/usr/bin/time", "-f", "TIME %e %U %S %M"] + cmd, env=env, stdout=out, stderr=err,
                             text=True)
        samples, child = [], None
        while p.poll() is None:
            child = child or next(iter(children(p.pid)), None)
            if child:
                kib = rss_kib(child)
                if kib:
                    samples.append((time.monotonic() - start, kib))
            time.sleep(0.05)
        wall = time.monotonic() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), ANSI.sub("", err.read())
    if p.returncode != 0:
        sys.exit(f"batch: {' '.join(cmd)} failed:\n{stderr[-3000:]}")
    m = re.search(r"TIME ([\d.]+) ([\d.]+) ([\d.]+) (\d+)", stderr)
    return {"out": stdout, "log": stderr, "wall": wall, "cpu": float(m.group(2)) + float(m.group(3)),
            "rss_kib": int(m.group(4)), "samples": samples, "started_at": started_at}


def log_event(run, message):
    """The first log line with this message: its fields, and seconds from the start."""
    for line in run["log"].splitlines():
        if f" {message} " in line + " ":
            fields = dict(re.findall(r"(\w+)=(\S+)", line))
            stamp = line.split()[0]
            try:
                at = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() - run["started_at"]
            except ValueError:
                at = None
            return fields, at
    return None, None


def rss_course(run):
    """From the samples: seconds from the start until the RSS first came
    within 5% of its sampled peak, and the RSS (MiB) at a quarter, half and
    three quarters of the wall time: a flat course is memory that does not
    grow with the file."""
    samples = run["samples"]
    if not samples:
        return "-", "-"
    top = max(kib for _, kib in samples)
    reached = next(t for t, kib in samples if kib >= 0.95 * top)
    at = lambda q: min(samples, key=lambda s: abs(s[0] - q * run["wall"]))[1] / 1024
    return f"{reached:.1f}", " / ".join(f"{at(q):.0f}" for q in (0.25, 0.5, 0.75))


def files(standin):
    req = urllib.request.Request(standin.url + "/v1/files", headers={"Authorization": f"Bearer {standin.key}"})
    return json.load(urllib.request.urlopen(req, timeout=30))["data"]


def standin_rss_mib(standin):
    for line in Path(f"/proc/{standin.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


def big_job(b):
    sizes = prepare_job_archive(b)
    standin = b.Standin(free_port(), ["--batch-complete-ms", "0"])
    env = dict(b.ENV, OPENAI_BASE_URL=standin.url + "/v1", OPENAI_API_KEY=standin.key, RUST_LOG="info",
               NO_COLOR="1")
    backfill = str(b.REL / "backfill")
    try:
        log(f"dispatching {JOB_DOCS:,} documents as one job")
        dispatch = measured([backfill, "dispatch", "--mode", "batch", "--archive", JOB_ARCHIVE, "--json", "--force"],
                            env)
        summary = json.loads(dispatch["out"])
        run_id = summary["run_id"]
        jobs = b.sql(f"SELECT count(*) FROM backfill_jobs WHERE run_id = '{run_id}'")
        polls = []
        for i in range(6):
            log(f"poll {i + 1} of run {run_id}")
            p = measured([backfill, "poll", "--run", run_id, "--json"], env)
            p["report"] = json.loads(p["out"])
            if p["report"].get("errors"):
                sys.exit(f"batch: the poll reported errors: {p['report']['errors']}\n{p['log'][-3000:]}")
            if i == 0:
                p["files"] = files(standin)
            polls.append(p)
            state = b.sql(f"SELECT state FROM backfill_runs WHERE id = '{run_id}'")
            if state in ("completed", "completed_with_errors"):
                break
        else:
            sys.exit(f"batch: run {run_id} was still {state} after {len(polls)} polls")
        output_files = [f for f in files(standin) if f["purpose"] == "batch_output"]
        standin_mib = standin_rss_mib(standin)
    finally:
        standin.stop()
    vectors = int(b.sql(f"SELECT count(*) FROM lovdata_documents WHERE archive = '{JOB_ARCHIVE}' "
                        "AND embedding IS NOT NULL"))
    status = json.loads(b.sql(f"SELECT to_jsonb(r) FROM backfill_runs r WHERE id = '{run_id}'"))
    return {"sizes": sizes, "dispatch": dispatch, "summary": summary, "jobs": int(jobs), "polls": polls,
            "output_files": output_files, "standin_mib": standin_mib, "vectors": vectors, "status": status,
            "state": state}


def job_table(r):
    submit = r["polls"][0]
    uploaded, uploaded_at = log_event(submit, "input file uploaded")
    if not uploaded:
        sys.exit(f"batch: the first poll logged no 'input file uploaded':\n{submit['log'][-3000:]}")
    listed = [f for f in submit["files"] if f["purpose"] == "batch"]
    in_bytes = int(uploaded["bytes"])
    out_bytes = sum(f["bytes"] for f in r["output_files"])
    batches = r["summary"].get("batches")
    rows = [(f"`backfill dispatch --mode batch`: pages the ids into {batches:,} batches in {r['jobs']} job",
             r["dispatch"])]
    for i, p in enumerate(r["polls"]):
        rep = p["report"]
        if rep.get("submitted"):
            did = (f"submitting: wrote the input file ({in_bytes / 1e6:.1f} MB, {int(uploaded['lines']):,} lines, "
                   f"{int(uploaded['inputs']):,} inputs) while streaming it to `/v1/files`, then created the batch")
        elif rep.get("collected"):
            did = (f"collecting: streamed the output file ({out_bytes / 1e6:.1f} MB) a line at a time and wrote "
                   f"the vectors of {rep['batches_ended']:,} batches")
        else:
            did = f"nothing to do: {json.dumps(rep)}"
        rows.append((f"`backfill poll --run RUN_ID` #{i + 1}, {did}", p))
    out = ["| process | wall s | CPU s | peak RSS MiB | within 128 MiB | RSS within 5% of its peak from, s | "
           "RSS at 1/4, 1/2, 3/4 of the wall, MiB |",
           "|---|---:|---:|---:|---|---:|---:|"]
    for label, p in rows:
        reached, course = rss_course(p)
        mib = p["rss_kib"] / 1024
        out.append(f"| {label} | {p['wall']:.1f} | {p['cpu']:.1f} | {mib:.1f} | "
                   f"{'yes' if mib <= TARGET_MIB else '**no**'} | {reached} | {course} |")
    facts = {"in_bytes": in_bytes, "listed_bytes": [f["bytes"] for f in listed], "lines": int(uploaded["lines"]),
             "inputs": int(uploaded["inputs"]), "split": uploaded.get("split_at"), "uploaded_at": uploaded_at,
             "out_bytes": out_bytes, "submitted_at": log_event(submit, "job submitted")[1]}
    return "\n".join(out) + "\n", facts


def flat(run):
    """Whether the RSS was already within 10% of its peak halfway through."""
    samples = run["samples"]
    if not samples:
        return False
    top = max(kib for _, kib in samples)
    half = [kib for t, kib in samples if t >= run["wall"] / 2]
    return bool(half) and min(half) >= 0.9 * top


def growth(submit, collect):
    if flat(submit) and flat(collect):
        return ("Each came near its peak early and stayed there while the rest of its file went by (the last two "
                "columns): the memory does not grow with the file.")
    grew = [name for name, run in (("submitting", submit), ("collecting", collect)) if not flat(run)]
    return (f"The {' and '.join(grew)} poll's RSS was still more than 10% under its peak halfway through (the "
            f"last two columns): its memory may grow with the file.")


# ---------------------------------------------------------------- the section

def section(b):
    """b: bench/bench.py's module, whose helpers seed the corpus, reset its
    vectors, run and reset the stand-in and time commands."""
    for name in ["backfill", "openai-standin", "seed-docs"]:
        if not (b.REL / name).exists():
            sys.exit(f"batch: build first: cargo build --release --workspace --bins ({name} missing)")
    start = time.monotonic()
    load = os.getloadavg()[0]
    rows = throughput(b)
    job = big_job(b)
    total = time.monotonic() - start
    direct, batch = rows
    table, facts = job_table(job)
    submit, collect = job["polls"][0], job["polls"][-1]
    submit_mib, collect_mib = submit["rss_kib"] / 1024, collect["rss_kib"] / 1024
    sz = job["sizes"]
    listed = ", ".join(f"{n:,}" for n in facts["listed_bytes"]) or "none listed"
    agree = "the same as" if facts["listed_bytes"] == [facts["in_bytes"]] else "**not** the same as"
    st = job["status"]
    lines = [HEADING, "",
             f"Reproduce with `BENCH_ONLY=batch make bench` (or `.tools/venv/bin/python bench/batch.py` after a "
             f"release build); {os.cpu_count()} cores, load average {load:.1f} at the start, "
             f"{time.strftime('%Y-%m-%d')}, the section took {total:.0f} s. Both parts run against a private "
             f"stand-in whose Batch API completes a batch as soon as it is next looked at "
             f"(`--batch-complete-ms 0`): OpenAI's takes up to 24 hours, so batch mode's docs/s here is what the "
             f"tool itself sustains (writing the input file, uploading it, collecting the output, writing the "
             f"vectors), not what a real backfill sees end to end.", "",
             "### Throughput and cost, beside direct mode", "",
             f"{b.N:,} documents of `{b.ARCHIVE}` (the corpus of the sections above), vectors reset before each "
             f"run; one stand-in, answering direct requests at the latency above (200 ms + 6 ms per 1,000 tokens) "
             f"and Batch API lines at once. Tokens and cost are what each run recorded (`tokens_used`, "
             f"`actual_cost_usd` of its final status); the stand-in's count is what it embedded.", "",
             throughput_table(b, rows),
             f"Batch mode recorded {batch['cost'] / direct['cost']:.3f} of direct mode's cost for "
             f"{batch['tokens'] / max(direct['tokens'], 1):.3f} of its tokens "
             f"(${direct['cost'] / max(direct['tokens'], 1) * 1e6:.3f} against "
             f"${batch['cost'] / max(batch['tokens'], 1) * 1e6:.3f} per million tokens), and ran at "
             f"{batch['docs_per_sec'] / direct['docs_per_sec']:.2f}x direct mode's docs/s.", "",
             f"### Memory of one 50,000-document job", "",
             f"`{JOB_ARCHIVE}`: {JOB_DOCS:,} documents of Norwegian legal text (slices of `seed-docs` texts, "
             f"{sz['min']:,} to {sz['max']:,} bytes, {sz['avg']:,} on average, {sz['total'] / 1e6:.1f} MB in all), "
             f"dispatched as {job['jobs']} job (the default `--job-size` of 50,000), then polled with "
             f"`backfill poll --run RUN_ID --json` until the run ended, each process under `/usr/bin/time` (peak "
             f"RSS) and its RSS sampled every 50 ms from `/proc` (the last two columns: how its memory went). "
             f"The input "
             f"file: {facts['in_bytes']:,} bytes ({facts['in_bytes'] / 2**20:.1f} MiB) by the poller's log "
             f"(\"input file uploaded\"), {listed} by the stand-in's `/v1/files`, {agree} the log; "
             f"{facts['lines']:,} lines of up to 100 inputs, {facts['inputs']:,} inputs"
             f"{'' if facts['split'] in (None, 'None') else ', split at batch ' + str(facts['split'])}; the upload "
             f"ended {facts['uploaded_at']:.1f} s into the submitting poll, and the batch was created at "
             f"{facts['submitted_at']:.1f} s (the stand-in reads the whole file before it answers). The output file: "
             f"{facts['out_bytes']:,} bytes (vectors in base64). Afterwards the run was `{job['state']}` with "
             f"{job['vectors']:,} vectors in the table, {st['tokens_used']:,} tokens and "
             f"${st['actual_cost_usd']:.4f} recorded. The stand-in keeps every file in memory "
             f"(its own peak: {job['standin_mib']:.0f} MiB); that is not the measured process's.", "",
             table,
             f"Target: at most {TARGET_MIB} MiB. The submitting poll peaked at {submit_mib:.1f} MiB with a "
             f"{facts['in_bytes'] / 2**20:.0f} MiB input file, the collecting poll at {collect_mib:.1f} MiB with a "
             f"{facts['out_bytes'] / 2**20:.0f} MiB output file: "
             f"{'both within' if max(submit_mib, collect_mib) <= TARGET_MIB else '**over**'} the target (direct "
             f"`backfill run` above peaked at {direct['rss_mib']:.0f} MiB). "
             f"{growth(submit, collect)} The collecting poll's first seconds at its starting RSS are the stand-in "
             f"running the batch's {facts['lines']:,} lines when the poll first looks at it, before it answers "
             f"that retrieve. From dispatch to the last vector: "
             f"{sum(p['wall'] for p in [job['dispatch']] + job['polls']):.0f} s for {job['vectors']:,} documents."]
    return "\n".join(lines) + "\n"


def main():
    sys.dont_write_bytecode = True
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench
    text = section(bench)
    bench.write_section(HEADING, text)
    print(text)


if __name__ == "__main__":
    main()
