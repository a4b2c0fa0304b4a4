//! The SQLite store against the conformance checks, plus what only a file can show:
//! reopening, migrations, retention, closing, and a real crash of a writing process.
//! Run with: cargo test -p sopm-backends --test sqlite
#![cfg(feature = "sqlite")]

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use sopm_backends::sqlite::Synchronous;
use sopm_backends::{SqliteConfig, SqliteStore};
use sopm_core::conformance::{
    self, conformance_dispatcher, ConformanceExecutor, ConformanceRouter, SchedulerHarness,
};
use sopm_core::types::now_ms;
use sopm_core::{
    Durability, FunctionRef, Job, JobId, JobStatus, JobStore, LocalScheduler, LocalSchedulerConfig,
    NewVersion, Registry, Runtime, Scheduler, TenantId,
};

/// A store for the conformance checks: its own retention sweep is off, because the
/// checks' jobs are dated 1970 and a sweep between a check's writes and its reads would
/// take them (the sweep has tests of its own below).
fn open(dir: &Path, name: &str) -> SqliteStore {
    SqliteConfig::new(dir.join(name))
        .with_job_retention(Duration::MAX)
        .open()
        .expect("open the store")
}

/// The first column of the first row of `sql`, read through a connection of its own.
fn scalar<T: rusqlite::types::FromSql>(path: &Path, sql: &str) -> T {
    rusqlite::Connection::open(path)
        .unwrap()
        .query_row(sql, [], |r| r.get(0))
        .unwrap()
}

/// Takes a database from the current schema back to schema 6 (retention by an index
/// of every finished job).
const BACK_TO_6: &str = "DROP TABLE job_batches; DROP INDEX jobs_unordered_age; ALTER TABLE jobs DROP COLUMN id_unordered;
    CREATE INDEX jobs_finished_age ON jobs (COALESCE(finished_ms, created_ms))
        WHERE status NOT IN ('queued', 'running');
    PRAGMA user_version = 6;";

/// Takes a database from schema 6 back to schema 5 (before job payload segments), as a
/// step of taking it further back: run after [`BACK_TO_6`] (see [`back_to_5`]).
const BACK_TO_5: &str = "DROP TABLE payload_segments;
    ALTER TABLE jobs DROP COLUMN payload; ALTER TABLE jobs DROP COLUMN payload_at;
    ALTER TABLE jobs DROP COLUMN input_len; ALTER TABLE jobs DROP COLUMN output_len;
    ALTER TABLE jobs DROP COLUMN payload_crc; PRAGMA user_version = 5;";

/// Takes a database from the current schema back to schema 5.
fn back_to_5(conn: &rusqlite::Connection) {
    conn.execute_batch(BACK_TO_6).unwrap();
    conn.execute_batch(BACK_TO_5).unwrap();
}

/// A version to create: default limits, no environment.
fn new_version(
    tenant: &TenantId,
    name: &str,
    runtime: Runtime,
    handler: &str,
    executor: Option<&str>,
) -> NewVersion {
    NewVersion {
        tenant: tenant.clone(),
        name: name.into(),
        runtime,
        handler: handler.into(),
        limits: Default::default(),
        env: Default::default(),
        source_digest: "d".into(),
        executor: executor.map(str::to_string),
    }
}

fn job(tenant: &str, status: JobStatus, input: serde_json::Value) -> Job {
    let mut j = Job::new(
        TenantId::new(tenant).unwrap(),
        FunctionRef::builtin("echo"),
        Arc::new(input),
        5_000,
    );
    j.status = status;
    j
}

// --- conformance ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_versions_and_tenants() {
    let dir = tempfile::tempdir().unwrap();
    conformance::registry_versions_and_tenants(&open(dir.path(), "r.db")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_builds() {
    let dir = tempfile::tempdir().unwrap();
    conformance::registry_builds(&open(dir.path(), "r.db")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_delete() {
    let dir = tempfile::tempdir().unwrap();
    conformance::registry_delete(&open(dir.path(), "r.db")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_usage_and_version_delete() {
    let dir = tempfile::tempdir().unwrap();
    conformance::registry_usage_and_version_delete(&open(dir.path(), "r.db")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_store_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    conformance::job_store_round_trip(&open(dir.path(), "j.db")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_store_never_moves_back() {
    let dir = tempfile::tempdir().unwrap();
    conformance::job_store_never_moves_back(&open(dir.path(), "j.db")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_store_unfinished() {
    let dir = tempfile::tempdir().unwrap();
    conformance::job_store_unfinished(&open(dir.path(), "j.db")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_store_buffered_then_flush() {
    let dir = tempfile::tempdir().unwrap();
    conformance::job_store_buffered_then_flush(&open(dir.path(), "j.db")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_store_reads_own_buffered_puts() {
    let dir = tempfile::tempdir().unwrap();
    conformance::job_store_reads_own_buffered_puts(&open(dir.path(), "j.db")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_check_on_one_shared_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), "shared.db");
    conformance::registry_versions_and_tenants(&store).await;
    conformance::registry_builds(&store).await;
    conformance::registry_delete(&store).await;
    conformance::registry_usage_and_version_delete(&store).await;
    conformance::job_store_round_trip(&store).await;
    conformance::job_store_never_moves_back(&store).await;
    conformance::job_store_unfinished(&store).await;
    conformance::job_store_buffered_then_flush(&store).await;
    conformance::job_store_reads_own_buffered_puts(&store).await;
    conformance::job_store_recent_logs(&store).await;
    conformance::job_store_expire_finished(&store).await;
    conformance::registry_resolve_version(&store).await;
    conformance::registry_unfinished_builds(&store).await;
    conformance::key_store_suite(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_store_recent_logs() {
    let dir = tempfile::tempdir().unwrap();
    conformance::job_store_recent_logs(&open(dir.path(), "j.db")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_store_expire_finished() {
    let dir = tempfile::tempdir().unwrap();
    conformance::job_store_expire_finished(&open(dir.path(), "j.db")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_resolve_version() {
    let dir = tempfile::tempdir().unwrap();
    conformance::registry_resolve_version(&open(dir.path(), "r.db")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_unfinished_builds() {
    let dir = tempfile::tempdir().unwrap();
    conformance::registry_unfinished_builds(&open(dir.path(), "r.db")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_store() {
    let dir = tempfile::tempdir().unwrap();
    conformance::key_store_suite(&open(dir.path(), "k.db")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_scheduler_over_sqlite() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let n = AtomicUsize::new(0);
    let harness = SchedulerHarness::local(move || {
        let name = format!("sched-{}.db", n.fetch_add(1, Ordering::Relaxed));
        Arc::new(open(dir.path(), &name)) as Arc<dyn JobStore>
    });
    conformance::scheduler_suite(&harness).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_store_checks_with_synchronous_normal_and_tiny_batches() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteConfig::new(dir.path().join("normal.db"))
        .with_synchronous(Synchronous::Normal)
        .with_batch_size(3)
        .with_read_connections(1)
        .open()
        .unwrap();
    conformance::job_store_never_moves_back(&store).await;
    conformance::job_store_buffered_then_flush(&store).await;
    conformance::registry_builds(&store).await;
}

// --- the file ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_creates_directories_and_a_wal_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/c/sopm.db");
    let store = SqliteConfig::new(&path).open().unwrap();
    assert_eq!(store.path(), path);
    assert!(path.exists(), "the file is created");
    store.close().await.unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 8, "the schema version is recorded in user_version");
    let plan: String = conn
        .query_row(
            "EXPLAIN QUERY PLAN SELECT id FROM jobs WHERE status IN ('queued', 'running') ORDER BY created_ms, rowid",
            [],
            |r| r.get(3),
        )
        .unwrap();
    assert!(
        plan.contains("jobs_unfinished"),
        "unfinished() reads through its index: {plan}"
    );
    let plan: String = conn
        .query_row(
            "EXPLAIN QUERY PLAN SELECT id FROM jobs WHERE function_id = 'fn_x' AND tenant = 't' ORDER BY created_ms DESC LIMIT 5",
            [],
            |r| r.get(3),
        )
        .unwrap();
    assert!(
        plan.contains("jobs_by_function"),
        "recent() reads through its index: {plan}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_database_is_migrated_and_its_jobs_found_by_function() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.db");
    open(dir.path(), "v1.db").close().await.unwrap();
    // Take the file back to schema 1, with one user-function job written by it.
    let conn = rusqlite::Connection::open(&path).unwrap();
    back_to_5(&conn);
    conn.execute_batch(
        "ALTER TABLE versions DROP COLUMN artifact_bytes; ALTER TABLE versions DROP COLUMN executor;
         DROP INDEX jobs_by_function; ALTER TABLE jobs DROP COLUMN function_id;
         DROP TABLE api_keys; PRAGMA user_version = 1;",
    )
    .unwrap();
    let tenant = TenantId::new("old").unwrap();
    let old = Job::new(
        tenant.clone(),
        FunctionRef::User {
            id: Arc::from("fn_old"),
            version: Some(3),
        },
        Arc::new(json!({"x": 1})),
        1_000,
    );
    conn.execute(
        "INSERT INTO jobs (id, tenant, function, status, input, timeout_ms, created_ms, attempts)
         VALUES (?1, 'old', ?2, 'queued', '{\"x\":1}', 1000, ?3, 0)",
        rusqlite::params![
            old.id.as_str(),
            serde_json::to_string(&old.function).unwrap(),
            old.created_ms as i64
        ],
    )
    .unwrap();
    drop(conn);

    let store = open(dir.path(), "v1.db");
    let found = store.recent_logs(&tenant, "fn_old", 10).await.unwrap();
    assert_eq!(found.len(), 1, "the old job is found by its function");
    assert_eq!(found[0].id, old.id);
    let (_, secret) = sopm_core::KeyStore::create(&store, &tenant, "after migration")
        .await
        .unwrap();
    assert_eq!(
        sopm_core::KeyStore::resolve(&store, secret.expose())
            .await
            .unwrap(),
        Some(tenant)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_2_database_is_migrated_and_its_versions_load_without_an_executor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v2.db");
    open(dir.path(), "v2.db").close().await.unwrap();
    // Take the file back to schema 2, with one version written by it.
    let conn = rusqlite::Connection::open(&path).unwrap();
    back_to_5(&conn);
    conn.execute_batch(
        "ALTER TABLE versions DROP COLUMN artifact_bytes;
         ALTER TABLE versions DROP COLUMN executor; PRAGMA user_version = 2;
         INSERT INTO functions (id, tenant, name, created_ms) VALUES ('fn_old', 'old', 'older', 1);
         INSERT INTO versions (function_id, version, runtime, handler, limits, env, digest,
                               status, build_log, artifact, created_ms)
         VALUES ('fn_old', 1, 'python', 'main.handle', '{}', '{}', 'd', 'ready', 'built\n',
                 '{\"kind\":\"directory\",\"path\":\"/a/fn_old/v1\"}', 1);",
    )
    .unwrap();
    drop(conn);

    let tenant = TenantId::new("old").unwrap();
    let store = open(dir.path(), "v2.db");
    let rec = Registry::get(&store, &tenant, "fn_old").await.unwrap();
    assert_eq!(rec.versions.len(), 1);
    assert_eq!(
        rec.versions[0].executor, None,
        "recorded before executors had names"
    );
    assert_eq!(rec.versions[0].build_log, "built\n");
    assert_eq!(
        rec.versions[0].artifact,
        Some(sopm_core::Artifact::Directory {
            path: "/a/fn_old/v1".into(),
            digest: None,
        })
    );
    // The migrated table takes versions with an executor.
    let v = store
        .create_version(new_version(
            &tenant,
            "older",
            Runtime::Python,
            "main.handle",
            Some("gvisor"),
        ))
        .await
        .unwrap();
    assert_eq!((v.function_id.as_str(), v.version), ("fn_old", 2));
    store.close().await.unwrap();
    assert_eq!(scalar::<i64>(&path, "PRAGMA user_version"), 8);
    let store = open(dir.path(), "v2.db");
    let rec = Registry::get(&store, &tenant, "fn_old").await.unwrap();
    let executors: Vec<Option<&str>> = rec.versions.iter().map(|v| v.executor.as_deref()).collect();
    assert_eq!(executors, [None, Some("gvisor")]);
    // Versions recorded before artifact sizes count 0 until measured again.
    let usage = store.tenant_usage(&tenant).await.unwrap();
    assert_eq!((usage.functions, usage.artifact_bytes), (1, 0));
}

/// Whether writing a job builds a temporary table (SQLite does for `IN (list)` checks).
fn insert_builds_a_temporary_table(path: &Path) -> bool {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut stmt = conn
        .prepare(
            "EXPLAIN INSERT INTO jobs (id, tenant, function, status, input, timeout_ms,
                                       created_ms, attempts)
             VALUES ('j', 't', 'f', 'queued', '1', 1, 1, 0)",
        )
        .unwrap();
    let ops: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(1))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    ops.iter().any(|op| op == "OpenEphemeral")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_4_database_is_migrated_and_writing_a_job_builds_no_temporary_table() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v4.db");
    let store = open(dir.path(), "v4.db");
    let done = job("old", JobStatus::Succeeded, json!({"n": 1}));
    let queued = job("old", JobStatus::Queued, json!({"n": 2}));
    for j in [&done, &queued] {
        store.put(j, Durability::Durable).await.unwrap();
    }
    store.close().await.unwrap();
    assert!(
        !insert_builds_a_temporary_table(&path),
        "the current schema checks a job's status without a temporary table"
    );
    // Take the jobs table back to schema 4's (its status check an IN list), rows kept.
    let conn = rusqlite::Connection::open(&path).unwrap();
    back_to_5(&conn);
    conn.execute_batch(
        "CREATE TABLE jobs_v4 (id TEXT PRIMARY KEY NOT NULL, tenant TEXT NOT NULL,
             function TEXT NOT NULL,
             status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded',
                 'failed', 'timed_out', 'cancelled', 'interrupted')),
             input TEXT NOT NULL, output TEXT, error TEXT, logs TEXT,
             timeout_ms INTEGER NOT NULL, created_ms INTEGER NOT NULL, started_ms INTEGER,
             finished_ms INTEGER, duration_us INTEGER, attempts INTEGER NOT NULL,
             function_id TEXT);
         INSERT INTO jobs_v4 SELECT * FROM jobs; DROP TABLE jobs;
         ALTER TABLE jobs_v4 RENAME TO jobs; PRAGMA user_version = 4;",
    )
    .unwrap();
    drop(conn);
    assert!(
        insert_builds_a_temporary_table(&path),
        "schema 4's check builds one (what migration 5 removes)"
    );

    let store = open(dir.path(), "v4.db");
    assert_eq!(
        JobStore::get(&store, &done.id).await.unwrap().as_ref(),
        Some(&done)
    );
    let unfinished = store.unfinished().await.unwrap();
    assert_eq!(
        unfinished.iter().map(|j| &j.id).collect::<Vec<_>>(),
        [&queued.id],
        "the migrated table keeps its rows and its unfinished index"
    );
    store.close().await.unwrap();
    assert_eq!(scalar::<i64>(&path, "PRAGMA user_version"), 8);
    assert!(!insert_builds_a_temporary_table(&path));
    let conn = rusqlite::Connection::open(&path).unwrap();
    let err = conn
        .execute(
            "INSERT INTO jobs (id, tenant, function, status, input, timeout_ms, created_ms,
                               attempts)
             VALUES ('x', 't', 'f', 'bogus', '1', 1, 1, 0)",
            [],
        )
        .expect_err("an unknown status is refused");
    assert!(err.to_string().contains("CHECK"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_5_database_keeps_its_large_records_in_their_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v5.db");
    open(dir.path(), "v5.db").close().await.unwrap();
    // Take the file back to schema 5, with a large finished job written by it.
    let mut old = job(
        "old",
        JobStatus::Succeeded,
        json!({"text": "é".repeat(2_000)}),
    );
    old.output = Some(json!("É".repeat(2_000)));
    old.finished_ms = Some(old.created_ms + 1);
    let conn = rusqlite::Connection::open(&path).unwrap();
    back_to_5(&conn);
    conn.execute(
        "INSERT INTO jobs (id, tenant, function, status, input, output, timeout_ms,
                           created_ms, finished_ms, attempts)
         VALUES (?1, 'old', ?2, 'succeeded', ?3, ?4, 5000, ?5, ?6, 0)",
        rusqlite::params![
            old.id.as_str(),
            serde_json::to_string(&old.function).unwrap(),
            serde_json::to_string(&*old.input).unwrap(),
            serde_json::to_string(old.output.as_ref().unwrap()).unwrap(),
            old.created_ms as i64,
            old.finished_ms.unwrap() as i64,
        ],
    )
    .unwrap();
    drop(conn);

    let store = open(dir.path(), "v5.db");
    let payload_of = |j: &Job| -> Option<i64> {
        scalar(
            &path,
            &format!("SELECT payload FROM jobs WHERE id = '{}'", j.id),
        )
    };
    assert_eq!(
        JobStore::get(&store, &old.id).await.unwrap(),
        Some(old.clone())
    );
    assert_eq!(payload_of(&old), None, "an old record stays where it is");
    let mut new = old.clone();
    new.id = JobId::random();
    store.put(&new, Durability::Durable).await.unwrap();
    assert!(payload_of(&new).is_some(), "a new one goes to a segment");
    assert_eq!(JobStore::get(&store, &new.id).await.unwrap(), Some(new));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_made_by_one_opening_resolve_in_another_and_only_digests_are_stored() {
    let dir = tempfile::tempdir().unwrap();
    let tenant = TenantId::new("keys").unwrap();
    let a = open(dir.path(), "keys.db");
    let (info, secret) = sopm_core::KeyStore::create(&a, &tenant, "cli")
        .await
        .unwrap();
    // A second opening of the same file, as the CLI and a running server are.
    let b = open(dir.path(), "keys.db");
    assert_eq!(
        sopm_core::KeyStore::resolve(&b, secret.expose())
            .await
            .unwrap(),
        Some(tenant.clone())
    );
    sopm_core::KeyStore::revoke(&a, &tenant, &info.id)
        .await
        .unwrap();
    assert_eq!(
        sopm_core::KeyStore::resolve(&b, secret.expose())
            .await
            .unwrap(),
        None
    );
    a.close().await.unwrap();
    b.close().await.unwrap();
    let bytes = std::fs::read(dir.path().join("keys.db")).unwrap();
    let wal = std::fs::read(dir.path().join("keys.db-wal")).unwrap_or_default();
    let needle = &secret.expose().as_bytes()[5..];
    for file in [&bytes, &wal] {
        assert!(
            !file.windows(needle.len()).any(|w| w == needle),
            "the secret itself is never written"
        );
    }
}

#[test]
fn open_refuses_what_it_cannot_use() {
    assert_eq!(
        SqliteConfig::new(":memory:").open().unwrap_err().code(),
        "invalid_input"
    );
    let dir = tempfile::tempdir().unwrap();
    let e = SqliteConfig::new(dir.path().join("x.db"))
        .with_batch_size(0)
        .open()
        .unwrap_err();
    assert_eq!(e.code(), "invalid_input");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_from_a_newer_sopm_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("future.db");
    open(dir.path(), "future.db").close().await.unwrap();
    rusqlite::Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let err = SqliteConfig::new(&path).open().unwrap_err();
    assert_eq!(err.code(), "storage_error");
    let message = err.to_string();
    assert!(
        message.contains("99") && message.contains("newer"),
        "a clear message: {message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let tenant = TenantId::new("reopen").unwrap();
    let store = open(dir.path(), "reopen.db");
    let v = store
        .create_version(new_version(
            &tenant,
            "kept",
            Runtime::Shell,
            "run.sh",
            Some("docker-runsc"),
        ))
        .await
        .unwrap();
    store
        .append_build_log(&v.function_id, 1, "ok\n")
        .await
        .unwrap();
    let mut done = job("reopen", JobStatus::Succeeded, json!({"x": 1}));
    done.output = Some(json!(2));
    done.finished_ms = Some(now_ms());
    let queued = job("reopen", JobStatus::Queued, json!({"y": 1}));
    store.put(&queued, Durability::Durable).await.unwrap();
    store.put(&done, Durability::Buffered).await.unwrap();
    store.close().await.unwrap();

    let store = open(dir.path(), "reopen.db");
    let rec = Registry::get(&store, &tenant, &v.function_id)
        .await
        .unwrap();
    assert_eq!(rec.versions[0].build_log, "ok\n");
    assert_eq!(rec.versions[0].executor.as_deref(), Some("docker-runsc"));
    assert_eq!(rec.versions[0], {
        let mut expected = v.clone();
        expected.build_log = "ok\n".into();
        expected
    });
    assert_eq!(
        JobStore::get(&store, &done.id).await.unwrap(),
        Some(done),
        "close commits buffered puts"
    );
    assert_eq!(store.unfinished().await.unwrap(), vec![queued]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_store_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), "closed.db");
    let j = job("closed", JobStatus::Queued, json!(null));
    store.put(&j, Durability::Durable).await.unwrap();
    store.close().await.unwrap();
    for (what, code) in [
        (
            "put",
            store
                .put(&j, Durability::Buffered)
                .await
                .err()
                .map(|e| e.code()),
        ),
        (
            "get",
            JobStore::get(&store, &j.id).await.err().map(|e| e.code()),
        ),
        ("flush", store.flush().await.err().map(|e| e.code())),
        (
            "unfinished",
            store.unfinished().await.err().map(|e| e.code()),
        ),
        (
            "list",
            store
                .list(&TenantId::default())
                .await
                .err()
                .map(|e| e.code()),
        ),
    ] {
        assert_eq!(code, Some("unavailable"), "{what} on a closed store");
    }
    assert!(store.close().await.is_ok(), "closing twice is harmless");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_jobs_past_retention_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteConfig::new(dir.path().join("retention.db"))
        .with_job_retention(Duration::from_secs(3600))
        .open()
        .unwrap();
    let two_hours_ago = now_ms() - 2 * 3600 * 1000;
    let mut old_done = job("ret", JobStatus::Succeeded, json!(1));
    old_done.created_ms = two_hours_ago;
    old_done.finished_ms = Some(two_hours_ago + 10);
    let mut old_failed_without_finish_time = job("ret", JobStatus::Failed, json!(2));
    old_failed_without_finish_time.created_ms = two_hours_ago;
    let mut recent_done = job("ret", JobStatus::Succeeded, json!(3));
    recent_done.created_ms = two_hours_ago;
    recent_done.finished_ms = Some(now_ms());
    let mut old_queued = job("ret", JobStatus::Queued, json!(4));
    old_queued.created_ms = two_hours_ago;
    for j in [
        &old_done,
        &old_failed_without_finish_time,
        &recent_done,
        &old_queued,
    ] {
        store.put(j, Durability::Durable).await.unwrap();
    }
    assert_eq!(store.purge_expired_jobs().await.unwrap(), 2);
    assert_eq!(JobStore::get(&store, &old_done.id).await.unwrap(), None);
    assert_eq!(
        JobStore::get(&store, &old_failed_without_finish_time.id)
            .await
            .unwrap(),
        None
    );
    assert!(
        JobStore::get(&store, &recent_done.id)
            .await
            .unwrap()
            .is_some(),
        "recent jobs stay"
    );
    assert!(
        JobStore::get(&store, &old_queued.id)
            .await
            .unwrap()
            .is_some(),
        "unfinished jobs always stay"
    );
    assert_eq!(store.purge_expired_jobs().await.unwrap(), 0);
}

/// The `id_unordered` mark of each job, by id.
fn unordered_marks(path: &Path, ids: &[&JobId]) -> Vec<Option<i64>> {
    let conn = rusqlite::Connection::open(path).unwrap();
    ids.iter()
        .map(|id| {
            conn.query_row(
                "SELECT id_unordered FROM jobs WHERE id = ?1",
                [id.as_str()],
                |r| r.get(0),
            )
            .unwrap()
        })
        .collect()
}

/// The query plan's detail lines of `sql`.
fn plan(path: &Path, sql: &str) -> String {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
    let lines: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(3))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    lines.join("; ")
}

/// Jobs of every kind retention meets, all two hours old unless said: in order (an id
/// of their time) or not (an id made later, or one from before ids had a time).
struct RetentionCase {
    expired_in_order: Job,
    ran_across_the_cutoff: Job,
    queued_in_order: Job,
    expired_with_a_later_id: Job,
    expired_with_an_untimed_id: Job,
    recent_with_an_untimed_id: Job,
}

impl RetentionCase {
    fn new() -> Self {
        let two_hours_ago = now_ms() - 2 * 3_600_000;
        let dated = |status, n: u32, id: Option<JobId>, finished: Option<u64>| {
            let mut j = job("ret", status, json!(n));
            if let Some(id) = id {
                j.id = id;
            }
            j.created_ms = two_hours_ago;
            j.finished_ms = finished;
            j
        };
        let of_then = || Some(JobId::random_at(two_hours_ago));
        let untimed = |s: &str| Some(JobId::parse(s).unwrap());
        RetentionCase {
            expired_in_order: dated(JobStatus::Succeeded, 1, of_then(), Some(two_hours_ago + 5)),
            ran_across_the_cutoff: dated(JobStatus::Succeeded, 2, of_then(), Some(now_ms())),
            queued_in_order: dated(JobStatus::Queued, 3, of_then(), None),
            expired_with_a_later_id: dated(JobStatus::Failed, 4, None, None),
            expired_with_an_untimed_id: dated(
                JobStatus::Succeeded,
                5,
                untimed("0f2b8c1e-9d4a-4b6e-8f1a-2c3d4e5f6a7b"),
                Some(two_hours_ago),
            ),
            recent_with_an_untimed_id: dated(
                JobStatus::Succeeded,
                6,
                untimed("00000000-9d4a-4b6e-8f1a-2c3d4e5f6a7c"),
                Some(now_ms()),
            ),
        }
    }

    fn all(&self) -> [&Job; 6] {
        [
            &self.expired_in_order,
            &self.ran_across_the_cutoff,
            &self.queued_in_order,
            &self.expired_with_a_later_id,
            &self.expired_with_an_untimed_id,
            &self.recent_with_an_untimed_id,
        ]
    }

    /// Which of [`all`](Self::all) retention deletes.
    const EXPIRED: [bool; 6] = [true, false, false, true, true, false];
    /// Which of them are marked out of order.
    const UNORDERED: [Option<i64>; 6] = [None, None, None, Some(1), Some(1), Some(1)];

    /// A store at `path` that keeps finished jobs an hour.
    fn open(path: &Path) -> SqliteStore {
        SqliteConfig::new(path)
            .with_job_retention(Duration::from_secs(3600))
            .open()
            .unwrap()
    }

    /// A new case, put durably in a store at `path`.
    async fn stored_at(path: &Path) -> (SqliteStore, Self) {
        let store = Self::open(path);
        let case = Self::new();
        for j in case.all() {
            store.put(j, Durability::Durable).await.unwrap();
        }
        (store, case)
    }

    /// Purges, then checks that exactly the expired jobs went.
    async fn purge_and_check(&self, store: &SqliteStore) {
        assert_eq!(store.purge_expired_jobs().await.unwrap(), 3);
        for (j, expired) in self.all().into_iter().zip(Self::EXPIRED) {
            let found = JobStore::get(store, &j.id).await.unwrap();
            assert_eq!(found.is_none(), expired, "job {:?}", j.input);
        }
        assert_eq!(store.purge_expired_jobs().await.unwrap(), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_finds_jobs_by_id_and_the_few_out_of_order_by_their_own_index() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("by_id.db");
    let (store, case) = RetentionCase::stored_at(&path).await;
    let ids: Vec<&JobId> = case.all().iter().map(|j| &j.id).collect();
    assert_eq!(unordered_marks(&path, &ids), RetentionCase::UNORDERED);
    // A job in order has no entry in any retention index: only the primary key's.
    let indexes: Vec<String> = {
        let conn = rusqlite::Connection::open(&path).unwrap();
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'jobs' ORDER BY name")
            .unwrap();
        let names = stmt.query_map([], |r| r.get(0)).unwrap();
        names.map(Result::unwrap).collect()
    };
    assert_eq!(
        indexes,
        [
            "jobs_by_function",
            "jobs_unfinished",
            "jobs_unordered_age",
            "sqlite_autoindex_jobs_1"
        ]
    );
    let by_id = plan(
        &path,
        "SELECT rowid FROM jobs WHERE id < '0190' AND status NOT IN ('queued', 'running')
             AND COALESCE(finished_ms, created_ms) < 5 LIMIT 10",
    );
    assert!(by_id.contains("sqlite_autoindex_jobs_1 (id<?)"), "{by_id}");
    let unordered = plan(
        &path,
        "SELECT rowid FROM jobs WHERE id_unordered IS NOT NULL
             AND COALESCE(finished_ms, created_ms) < 5 AND status NOT IN ('queued', 'running')
             LIMIT 10",
    );
    assert!(unordered.contains("jobs_unordered_age"), "{unordered}");
    // The mark follows the job: queued with an id made after it, it is out of order;
    // finished after that, in order.
    let mut later = job("ret", JobStatus::Queued, json!(7));
    later.created_ms = now_ms() - 2 * 3_600_000;
    store.put(&later, Durability::Durable).await.unwrap();
    assert_eq!(unordered_marks(&path, &[&later.id]), [Some(1)]);
    later.status = JobStatus::Succeeded;
    later.finished_ms = Some(now_ms() + 1_000);
    store.put(&later, Durability::Durable).await.unwrap();
    assert_eq!(unordered_marks(&path, &[&later.id]), [None]);
    case.purge_and_check(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_6_database_marks_its_jobs_out_of_order_and_expires_them_all() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v6.db");
    let (store, case) = RetentionCase::stored_at(&path).await;
    store.close().await.unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(BACK_TO_6).unwrap();
    drop(conn);
    let store = RetentionCase::open(&path);
    assert_eq!(scalar::<i64>(&path, "PRAGMA user_version"), 8);
    let ids: Vec<&JobId> = case.all().iter().map(|j| &j.id).collect();
    assert_eq!(
        unordered_marks(&path, &ids),
        RetentionCase::UNORDERED,
        "the migration marks rows as the writer does"
    );
    case.purge_and_check(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_sweeps_expired_jobs_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteConfig::new(dir.path().join("sweep.db"))
        .with_job_retention(Duration::from_secs(60))
        .with_retention_sweep_interval(Duration::from_millis(20))
        .open()
        .unwrap();
    let long_ago = now_ms() - 3_600_000;
    let mut ids = Vec::new();
    // More than one sweep chunk, so the sweep has to come back for the rest; half of
    // them with ids of their time (found by id), half with later ids (found through the
    // index of rows out of order), so a chunk is shared between the two.
    for i in 0..2_500 {
        let mut j = job("sweep", JobStatus::Succeeded, json!(i));
        if i % 2 == 0 {
            j.id = JobId::random_at(long_ago);
        }
        j.created_ms = long_ago;
        j.finished_ms = Some(long_ago);
        store.put(&j, Durability::Buffered).await.unwrap();
        ids.push(j.id);
    }
    let fresh = job("sweep", JobStatus::Cancelled, json!("fresh"));
    let mut fresh = fresh;
    fresh.finished_ms = Some(now_ms());
    store.put(&fresh, Durability::Durable).await.unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let mut left = 0;
        for id in [&ids[0], &ids[1], &ids[1_234], &ids[2_499]] {
            left += JobStore::get(&store, id).await.unwrap().is_some() as usize;
        }
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < until,
            "expired jobs are still there after 20 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        JobStore::get(&store, &fresh.id).await.unwrap().is_some(),
        "fresh jobs stay"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_durable_puts_are_all_there() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path(), "many.db"));
    let mut tasks = Vec::new();
    for t in 0..32 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..50 {
                let j = job("many", JobStatus::Queued, json!({"t": t, "i": i}));
                store.put(&j, Durability::Durable).await.unwrap();
                ids.push(j.id);
            }
            ids
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    assert_eq!(
        scalar::<i64>(store.path(), "SELECT COUNT(*) FROM jobs"),
        1_600,
        "every durable put is committed when it returns"
    );
    assert_eq!(all.iter().collect::<HashSet<_>>().len(), 1_600);
}

// --- a real crash --------------------------------------------------------------------

const CRASH_CHILD_DB: &str = "SOPM_SQLITE_CRASH_CHILD_DB";
const CRASH_QUEUED_TASKS: usize = 16;
const CRASH_QUEUED_PER_TASK: usize = 25;
const CRASH_RUNNING: usize = 20;
/// Large finished jobs put durably (their input and output in a payload segment).
const CRASH_LARGE: usize = 20;

fn crash_large_input(i: usize) -> serde_json::Value {
    json!({"large": i, "text": "ünïcode ".repeat(200 + i)})
}

/// The child half of `crash_recovery`: writes jobs, says "ready" and aborts as soon as
/// the last durable put has returned.
#[test]
#[ignore = "the child process of crash_recovery; it aborts on purpose"]
fn crash_child() {
    let Ok(path) = std::env::var(CRASH_CHILD_DB) else {
        eprintln!("crash_child runs only as the child of crash_recovery");
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let store = Arc::new(SqliteConfig::new(&path).open().unwrap());
        // The hot path writes buffered completions all along, so the writer is busy
        // and has uncommitted work when the process dies.
        let writer = store.clone();
        tokio::spawn(async move {
            loop {
                let mut j = job("crash", JobStatus::Succeeded, json!("noise"));
                // Large: the writer is also writing payload segments.
                j.output = Some(json!("noise ".repeat(300)));
                j.finished_ms = Some(now_ms());
                if writer.put(&j, Durability::Buffered).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_micros(100)).await;
            }
        });
        let mut tasks = Vec::new();
        for t in 0..CRASH_QUEUED_TASKS {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in 0..CRASH_QUEUED_PER_TASK {
                    let j = job("crash", JobStatus::Queued, json!({"t": t, "i": i}));
                    store.put(&j, Durability::Durable).await.unwrap();
                    ids.push(j.id);
                }
                ids
            }));
        }
        // The harness has printed "test crash_child ... " without a newline.
        let mut out = String::from("\n");
        for t in tasks {
            for id in t.await.unwrap() {
                out.push_str(&format!("crash-queued {id}\n"));
            }
        }
        for i in 0..CRASH_RUNNING {
            let mut j = job("crash", JobStatus::Queued, json!({"running": i}));
            store.put(&j, Durability::Buffered).await.unwrap();
            j.status = JobStatus::Running;
            j.started_ms = Some(now_ms());
            j.attempts = 1;
            store.put(&j, Durability::Durable).await.unwrap();
            out.push_str(&format!("crash-running {}\n", j.id));
        }
        for i in 0..CRASH_LARGE {
            let mut j = job("crash", JobStatus::Succeeded, crash_large_input(i));
            j.output = Some(json!(i));
            j.finished_ms = Some(now_ms());
            store.put(&j, Durability::Durable).await.unwrap();
            out.push_str(&format!("crash-large {}\n", j.id));
        }
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(out.as_bytes()).unwrap();
        stdout.write_all(b"ready\n").unwrap();
        stdout.flush().unwrap();
        std::process::abort();
    });
}

fn run_crash_child(path: &Path) -> (Vec<JobId>, Vec<JobId>, Vec<JobId>) {
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "crash_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_CHILD_DB, path)
        .output()
        .expect("start the child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.lines().any(|l| l == "ready"),
        "the child did not get ready; stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!output.status.success(), "the child must die, not exit");
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(output.status.signal(), Some(6), "the child dies of SIGABRT");
    }
    let ids = |prefix: &str| -> Vec<JobId> {
        stdout
            .lines()
            .filter_map(|l| l.strip_prefix(prefix))
            .map(|id| JobId::parse(id).unwrap())
            .collect()
    };
    (
        ids("crash-queued "),
        ids("crash-running "),
        ids("crash-large "),
    )
}

#[test]
fn crash_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("crash.db");
    let (queued, running, large) = run_crash_child(&path);
    assert_eq!(queued.len(), CRASH_QUEUED_TASKS * CRASH_QUEUED_PER_TASK);
    assert_eq!(running.len(), CRASH_RUNNING);
    assert_eq!(large.len(), CRASH_LARGE);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let store = Arc::new(
            SqliteConfig::new(&path)
                .open()
                .expect("reopen after the crash"),
        );
        assert_eq!(
            scalar::<String>(&path, "PRAGMA integrity_check"),
            "ok",
            "the database is intact after the crash"
        );

        for id in &queued {
            let j = JobStore::get(&*store, id)
                .await
                .unwrap()
                .expect("every durable queued job survives");
            assert_eq!(j.status, JobStatus::Queued);
        }
        for id in &running {
            let j = JobStore::get(&*store, id)
                .await
                .unwrap()
                .expect("every durable running job survives");
            assert_eq!(j.status, JobStatus::Running);
        }
        for (i, id) in large.iter().enumerate() {
            let j = JobStore::get(&*store, id)
                .await
                .unwrap()
                .expect("every durable large job survives");
            assert_eq!(
                (&*j.input, j.output),
                (&crash_large_input(i), Some(json!(i))),
                "a durable large job's input and output survive"
            );
        }
        let unfinished = store.unfinished().await.unwrap();
        let got: HashSet<&JobId> = unfinished.iter().map(|j| &j.id).collect();
        let want: HashSet<&JobId> = queued.iter().chain(&running).collect();
        assert_eq!(
            got, want,
            "unfinished() returns exactly the durable unfinished jobs"
        );
        assert!(
            unfinished
                .windows(2)
                .all(|w| w[0].created_ms <= w[1].created_ms),
            "unfinished() is oldest first"
        );

        let executor = Arc::new(ConformanceExecutor::new());
        let scheduler = LocalScheduler::new(
            LocalSchedulerConfig::default(),
            Arc::new(ConformanceRouter::new()),
            conformance_dispatcher(executor.clone()),
            store.clone(),
        );
        let report = scheduler.recover().await.unwrap();
        assert_eq!(
            (report.requeued, report.interrupted, report.failed),
            (queued.len() as u64, running.len() as u64, 0)
        );
        let tenant = TenantId::new("crash").unwrap();
        let until = Instant::now() + Duration::from_secs(30);
        for id in &queued {
            loop {
                let j = scheduler.status(&tenant, id).await.unwrap();
                if j.status.is_terminal() {
                    assert_eq!(
                        j.status,
                        JobStatus::Succeeded,
                        "a recovered queued job runs to success"
                    );
                    assert_eq!(
                        j.output.as_ref(),
                        Some(&*j.input),
                        "it ran the echo with its input"
                    );
                    break;
                }
                assert!(
                    Instant::now() < until,
                    "recovered job {id} still {:?}",
                    j.status
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        for id in &running {
            let j = scheduler.status(&tenant, id).await.unwrap();
            assert_eq!(
                j.status,
                JobStatus::Interrupted,
                "a job running at the crash is interrupted"
            );
            assert_eq!(
                j.error.as_ref().map(|e| e.code.as_str()),
                Some("interrupted")
            );
            assert_eq!(executor.invocations(id), 0, "and is not run again");
        }
        scheduler.shutdown(Duration::from_secs(5)).await.unwrap();
        assert!(
            store.unfinished().await.unwrap().is_empty(),
            "nothing is left unfinished"
        );
        store.close().await.unwrap();
    });
}

// --- a measurement -------------------------------------------------------------------

/// Prints put throughput. Not a check (machines are noisy); run with
/// `cargo test --release -p sopm-backends --test sqlite -- --ignored throughput --nocapture`.
#[test]
#[ignore = "a measurement; run by hand"]
fn throughput() {
    const TASKS: usize = 64;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        for (label, durability, per_task) in [
            ("durable", Durability::Durable, 1_000),
            ("buffered", Durability::Buffered, 5_000),
        ] {
            let store = Arc::new(open(dir.path(), &format!("{label}.db")));
            let start = Instant::now();
            let mut tasks = Vec::new();
            for t in 0..TASKS {
                let store = store.clone();
                tasks.push(tokio::spawn(async move {
                    for i in 0..per_task {
                        let j = job("bench", JobStatus::Queued, json!({"t": t, "i": i, "text": "hello"}));
                        store.put(&j, durability).await.unwrap();
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            store.flush().await.unwrap();
            let secs = start.elapsed().as_secs_f64();
            let n = TASKS * per_task;
            println!("{label:>9} puts from {TASKS} tasks: {n} in {secs:.2} s = {:.0} jobs/s", n as f64 / secs);
            let wal = std::fs::metadata(dir.path().join(format!("{label}.db-wal"))).map(|m| m.len()).unwrap_or(0);
            let db = std::fs::metadata(dir.path().join(format!("{label}.db"))).map(|m| m.len()).unwrap_or(0);
            println!("          file {} MiB, WAL {} MiB", db >> 20, wal >> 20);
        }

        // A job's whole life as the scheduler records it for a detached job: a durable
        // queued put, then buffered running and succeeded puts.
        let store = Arc::new(open(dir.path(), "lifecycle.db"));
        let per_task = 500;
        let start = Instant::now();
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..per_task {
                    let mut j = job("bench", JobStatus::Queued, json!({"t": t, "i": i}));
                    store.put(&j, Durability::Durable).await.unwrap();
                    j.status = JobStatus::Running;
                    j.attempts = 1;
                    store.put(&j, Durability::Buffered).await.unwrap();
                    j.status = JobStatus::Succeeded;
                    j.output = Some(json!({"ok": i}));
                    store.put(&j, Durability::Buffered).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        store.flush().await.unwrap();
        let secs = start.elapsed().as_secs_f64();
        let n = TASKS * per_task;
        println!("lifecycle (durable queued + buffered running + succeeded) from {TASKS} tasks: {n} jobs in {secs:.2} s = {:.0} jobs/s", n as f64 / secs);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_registry_write_does_not_undo_the_writes_batched_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path(), "batch.db"));
    let tenant = TenantId::new("batch").unwrap();
    let v = store
        .create_version(new_version(
            &tenant,
            "f",
            Runtime::Python,
            "main.handle",
            None,
        ))
        .await
        .unwrap();
    store
        .finish_build(&v.function_id, 1, sopm_core::BuildStatus::Failed, None)
        .await
        .unwrap();
    // Buffered puts queue at once, so they share the writer's batches with the
    // failing writes between them.
    let mut jobs = Vec::new();
    let mut failures = Vec::new();
    for i in 0..200 {
        let j = job("batch", JobStatus::Queued, json!(i));
        store.put(&j, Durability::Buffered).await.unwrap();
        jobs.push(j);
        if i % 50 == 0 {
            let s = store.clone();
            let id = v.function_id.clone();
            failures.push(tokio::spawn(async move {
                let conflict = s
                    .finish_build(&id, 1, sopm_core::BuildStatus::Failed, None)
                    .await;
                let missing = s.append_build_log("fn_missing", 1, "x").await;
                (
                    conflict.map_err(|e| e.code()),
                    missing.map_err(|e| e.code()),
                )
            }));
        }
    }
    for f in failures {
        assert_eq!(f.await.unwrap(), (Err("conflict"), Err("not_found")));
    }
    store.flush().await.unwrap();
    assert_eq!(
        scalar::<i64>(store.path(), "SELECT COUNT(*) FROM jobs"),
        200,
        "every put batched with a failed write is committed"
    );
    let rec = Registry::get(&*store, &tenant, &v.function_id)
        .await
        .unwrap();
    assert_eq!(rec.versions[0].status, sopm_core::BuildStatus::Failed);
}

#[tokio::test(flavor = "current_thread")]
async fn local_scheduler_over_sqlite_on_one_thread() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let n = AtomicUsize::new(0);
    let harness = SchedulerHarness::local(move || {
        let name = format!("one-{}.db", n.fetch_add(1, Ordering::Relaxed));
        Arc::new(open(dir.path(), &name)) as Arc<dyn JobStore>
    });
    conformance::scheduler_suite(&harness).await;
}
