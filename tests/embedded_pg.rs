//! The private PostgreSQL cluster: start, reuse of a kept folder, and a clean stop.

use call_orchestrator::tools::pg::{ClusterOptions, PgCluster};

async fn scalar(url: &str, sql: &str) -> i64 {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let value = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap();
    pool.close().await;
    value
}

fn port_is_open(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

#[tokio::test]
async fn starts_and_stops_cleanly() {
    let cluster = PgCluster::start(ClusterOptions::default()).await.unwrap();
    let (port, folder) = (cluster.port(), cluster.folder().to_path_buf());
    assert_eq!(
        scalar(&cluster.url("postgres"), "SELECT 1::bigint").await,
        1
    );
    let url = cluster.create_database("second").await.unwrap();
    assert_eq!(scalar(&url, "SELECT 2::bigint").await, 2);
    drop(cluster);
    assert!(!port_is_open(port), "the server must be gone");
    assert!(!folder.exists(), "the temporary folder must be gone");
}

#[tokio::test]
async fn a_kept_folder_is_reused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pg");
    assert!(!PgCluster::exists_in(&path));
    let cluster = PgCluster::start_in(&path, ClusterOptions::default())
        .await
        .unwrap();
    let pool = sqlx::PgPool::connect(&cluster.url("postgres"))
        .await
        .unwrap();
    sqlx::raw_sql("CREATE TABLE kept (n int); INSERT INTO kept VALUES (7);")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let port = cluster.port();
    drop(cluster);
    assert!(!port_is_open(port));
    assert!(PgCluster::exists_in(&path), "the data stays");

    let again = PgCluster::start_in(&path, ClusterOptions::default())
        .await
        .unwrap();
    assert_eq!(
        scalar(
            &again.url("postgres"),
            "SELECT count(*) FROM kept WHERE n = 7"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn restarts_on_the_same_port() {
    let mut cluster = PgCluster::start(ClusterOptions::default()).await.unwrap();
    let port = cluster.port();
    cluster.stop();
    assert!(!port_is_open(port));
    cluster.restart().await.unwrap();
    assert_eq!(cluster.port(), port);
    assert_eq!(
        scalar(&cluster.url("postgres"), "SELECT 1::bigint").await,
        1
    );
}
