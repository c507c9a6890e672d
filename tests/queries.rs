//! Every named statement in `sql/queries/` is prepared against the migrated schema, so a
//! query that no longer fits the tables (a renamed column, a wrong type) fails here by
//! name, before any behaviour test trips over it. (The behaviour of each is covered by the
//! tests of the path that runs it.)

mod common;

use sqlx::{Connection as _, Executor as _};

#[tokio::test]
async fn every_named_query_prepares_against_the_schema() {
    let url = common::pg::migrated_database().await;
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sql/queries");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "sql"))
        .collect();
    files.sort();
    assert!(files.len() >= 20, "{files:?}");
    let mut failures = Vec::new();
    for file in &files {
        let sql = std::fs::read_to_string(file).unwrap();
        assert!(
            sql.starts_with("--"),
            "{} has no header comment saying what it does",
            file.display()
        );
        if let Err(err) = conn.prepare(sql.as_str()).await {
            failures.push(format!("{}: {err}", file.display()));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
