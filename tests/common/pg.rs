//! One PostgreSQL cluster per test binary, and a database of its own for each test on it
//! (the shape of zero2prod's `spawn_app`): a cluster costs a second or more to start, a
//! database from a migrated template a few milliseconds.
//!
//! The cluster is started on first use, from a thread of its own that lives as long as the
//! binary: the server is tied to the thread that started it (`PR_SET_PDEATHSIG`), and each
//! `#[tokio::test]` runs on a thread that ends with the test. It is stopped, and its folder
//! removed, when the binary exits (`atexit`); should the binary be killed, the server dies
//! with it all the same.

use std::sync::{Mutex, OnceLock};

use call_orchestrator::tools::pg::{ClusterOptions, PgCluster};

/// The database every test database is copied from: migrated once per binary.
const TEMPLATE: &str = "migrated_template";

static CLUSTER: Mutex<Option<PgCluster>> = Mutex::new(None);

/// `postgres://…@127.0.0.1:{port}/` of the binary's cluster, without a database.
fn server() -> &'static str {
    static SERVER: OnceLock<String> = OnceLock::new();
    SERVER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("test-postgres".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let started = runtime.block_on(async {
                    let cluster = PgCluster::start(ClusterOptions::default()).await?;
                    migrate_template(&cluster).await?;
                    Ok::<_, anyhow::Error>(cluster)
                });
                match started {
                    Ok(cluster) => {
                        let url = cluster.url("");
                        *CLUSTER.lock().unwrap() = Some(cluster);
                        // SAFETY: registers a plain `extern "C"` function with no arguments.
                        unsafe { nix::libc::atexit(stop_cluster) };
                        tx.send(Ok(url)).unwrap();
                        // The server lives as long as this thread: until the binary exits.
                        loop {
                            std::thread::park();
                        }
                    }
                    Err(err) => tx.send(Err(format!("{err:#}"))).unwrap(),
                }
            })
            .unwrap();
        rx.recv()
            .unwrap()
            .unwrap_or_else(|err| panic!("starting the tests' PostgreSQL: {err}"))
    })
}

extern "C" fn stop_cluster() {
    if let Ok(mut cluster) = CLUSTER.lock() {
        cluster.take();
    }
}

async fn migrate_template(cluster: &PgCluster) -> anyhow::Result<()> {
    let url = cluster.create_database(TEMPLATE).await?;
    let pool = sqlx::PgPool::connect(&url).await?;
    call_orchestrator::db::migrate(&pool).await?;
    // A template must have no one connected while it is copied.
    pool.close().await;
    Ok(())
}

/// A new, empty database on the binary's cluster; its URL.
pub async fn empty_database() -> String {
    create(None).await
}

/// A new database with every migration applied; its URL.
pub async fn migrated_database() -> String {
    create(Some(TEMPLATE)).await
}

async fn create(template: Option<&str>) -> String {
    use sqlx::Connection as _;
    let server = server();
    let name = format!("test_{}", uuid::Uuid::new_v4().simple());
    let statement = match template {
        Some(template) => format!("CREATE DATABASE {name} TEMPLATE {template}"),
        None => format!("CREATE DATABASE {name}"),
    };
    let mut conn = sqlx::PgConnection::connect(&format!("{server}postgres"))
        .await
        .expect("connect to the tests' PostgreSQL");
    sqlx::query(&statement)
        .execute(&mut conn)
        .await
        .unwrap_or_else(|err| panic!("{statement}: {err}"));
    let _ = conn.close().await;
    format!("{server}{name}")
}
