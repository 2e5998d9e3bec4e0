//! Inserts generated documents straight into Postgres, for tests, the demo and
//! the benchmark (the backfill itself only ever goes through PostgREST).

use crate::corpus::Doc;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum SeedError {
    #[error("table name {0:?} is not a plain or schema-qualified identifier")]
    BadTable(String),
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
}

/// Quotes `schema.table` or `table` after checking it is made of identifier characters.
pub fn quote_table(table: &str) -> Result<String, SeedError> {
    let ok_part = |p: &str| {
        let mut chars = p.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    let parts: Vec<&str> = table.split('.').collect();
    if parts.is_empty() || parts.len() > 2 || !parts.iter().all(|p| ok_part(p)) {
        return Err(SeedError::BadTable(table.to_string()));
    }
    Ok(parts
        .iter()
        .map(|p| format!("\"{p}\""))
        .collect::<Vec<_>>()
        .join("."))
}

/// Inserts `docs` into `archive` and returns their new ids in order.
pub async fn insert(
    client: &tokio_postgres::Client,
    table: &str,
    archive: &str,
    docs: &[Doc],
) -> Result<Vec<i64>, SeedError> {
    let table = quote_table(table)?;
    let stmt = client
        .prepare(&format!(
            "INSERT INTO {table} (title, archive, content) \
             SELECT t, $1, c FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS x(t, c, n) ORDER BY n \
             RETURNING id"
        ))
        .await?;
    let mut ids = Vec::with_capacity(docs.len());
    for chunk in docs.chunks(500) {
        let titles: Vec<&str> = chunk.iter().map(|d| d.title.as_str()).collect();
        let contents: Vec<&str> = chunk.iter().map(|d| d.content.as_str()).collect();
        let rows = client.query(&stmt, &[&archive, &titles, &contents]).await?;
        let mut chunk_ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        chunk_ids.sort_unstable();
        ids.extend(chunk_ids);
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_checked() {
        assert_eq!(
            quote_table("lovdata_documents").unwrap(),
            "\"lovdata_documents\""
        );
        assert_eq!(quote_table("public.docs").unwrap(), "\"public\".\"docs\"");
        assert!(quote_table("docs; drop table x").is_err());
        assert!(quote_table("a.b.c").is_err());
    }
}
