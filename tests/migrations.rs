//! The migrations against a table the application is using: they give up
//! with a clear message instead of queueing the table's traffic behind a long
//! read, build their indexes without blocking writes, and can run again.

mod common;

use common::{repo_root, unique, Stack};
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
        let admin = stack.pg().await;
        let name = unique("live").replace('-', "_");
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let base = stack.var("DATABASE_URL");
        let (server, _) = base.rsplit_once('/').expect("a database URL");
        let url = format!("{server}/{name}");
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
