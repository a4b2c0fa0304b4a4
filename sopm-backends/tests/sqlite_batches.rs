//! The SQLite store's batch rows: the sole records of finished jobs, many to a row,
//! read back like rows (large inputs and outputs through payload segments), kept apart
//! from every job that needs a row of its own, expired a part at a time, and read as a
//! clear error when damaged.
//! Run with: cargo test -p sopm-backends --test sqlite_batches
#![cfg(feature = "sqlite")]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sopm_backends::{SqliteConfig, SqliteStore};
use sopm_core::conformance::{conformance_dispatcher, ConformanceExecutor, ConformanceRouter};
use sopm_core::types::now_ms;
use sopm_core::{
    Error, FunctionRef, Job, JobId, JobRequest, JobStore, LocalScheduler, LocalSchedulerConfig,
    Output, Scheduler, SubmitMode, Submitted, TenantId,
};

fn open(path: &Path) -> SqliteStore {
    SqliteConfig::new(path)
        .with_job_retention(Duration::MAX)
        .open()
        .expect("open the store")
}

/// `(jobs with rows of their own, batch rows, jobs in batch rows)`, read through a
/// connection of its own.
fn counts(db: &Path) -> (i64, i64, i64) {
    let conn = rusqlite::Connection::open(db).unwrap();
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM jobs", [], |r| r.get(0))
        .unwrap();
    let (batches, batched) = conn
        .query_row(
            "SELECT count(*), COALESCE(sum(jobs), 0) FROM job_batches",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    (rows, batches, batched)
}

/// A built-in job of `tenant` that finished just now: succeeded with `output`, or
/// failed with an error and logs.
fn finished(tenant: &str, input: serde_json::Value, ok: bool) -> Job {
    let mut job = Job::new(
        TenantId::new(tenant).unwrap(),
        FunctionRef::builtin("math.add"),
        Arc::new(input),
        5_000,
    );
    job.started_ms = Some(job.created_ms);
    job.attempts = 1;
    let outcome = if ok {
        Ok(Output::from(json!({"sum": 5, "text": "héllo \"wörld\"\n"})))
    } else {
        Err(Error::Function {
            message: "no".into(),
            traceback: Some("line 1".into()),
            logs: Some("printed\n".into()),
        })
    };
    job.finish(outcome, job.created_ms, Some(12));
    job
}

/// Records each of `jobs` as its sole record and waits for the commit.
async fn record_sole<'a>(store: &SqliteStore, jobs: impl IntoIterator<Item = &'a Job>) {
    for job in jobs {
        store.put_sole(job).await.unwrap();
    }
    store.flush().await.unwrap();
}

async fn expect_same(store: &SqliteStore, job: &Job, what: &str) {
    let got = store.get(&job.id).await.unwrap();
    assert_eq!(got.as_ref(), Some(job), "{what}: {}", job.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sole_records_share_rows_and_read_back_like_rows() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("b.db");
    let store = open(&db);
    let jobs: Vec<Job> = (0..1_200)
        .map(|i| finished(&format!("t{}", i % 3), json!({"a": i, "b": 3}), i % 7 != 0))
        .collect();
    for job in &jobs {
        store.put_sole(job).await.unwrap();
    }
    // Before the commit: the read waits for it.
    expect_same(&store, &jobs[0], "read before the commit").await;
    store.flush().await.unwrap();
    let (rows, batches, batched) = counts(&db);
    assert_eq!(
        (rows, batched),
        (0, 1_200),
        "every sole record is in a batch row"
    );
    assert!(
        (3..1_200).contains(&batches),
        "1,200 records share rows of at most 512: {batches} rows"
    );
    for job in &jobs {
        expect_same(&store, job, "read from a batch row").await;
    }
    let stranger = finished("t0", json!({}), true);
    assert_eq!(store.get(&stranger.id).await.unwrap(), None, "never stored");
    store.close().await.unwrap();

    let store = open(&db);
    for job in jobs.iter().step_by(97) {
        expect_same(&store, job, "read after a reopen").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sole_record_that_cannot_share_a_row_gets_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("own.db");
    let store = open(&db);
    let mut user = finished("t", json!({"x": 1}), true);
    user.function = FunctionRef::User {
        id: "fn_1".into(),
        version: Some(1),
    };
    // Finished long after its id was made: its id's time does not find it.
    let mut late = finished("t", json!({}), true);
    late.finished_ms = Some(late.created_ms + 60_000);
    // An id without a time.
    let mut untimed = finished("t", json!({}), true);
    untimed.id = JobId::parse("9b2d6f0e-3c1a-4f5e-8a7b-1c2d3e4f5a6b").unwrap();
    let own = [user, late, untimed];
    let shared = finished("t", json!({}), true);
    record_sole(&store, own.iter().chain([&shared])).await;
    assert_eq!(counts(&db), (3, 1, 1));
    for job in own.iter().chain([&shared]) {
        expect_same(&store, job, "read back").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_sole_record_keeps_its_input_and_output_in_a_segment() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("large.db");
    let store = open(&db);
    let large = finished("t", json!({"text": "x".repeat(4096)}), true);
    let small = finished("t", json!({"a": 1}), true);
    record_sole(&store, [&large, &small]).await;
    assert_eq!(counts(&db), (0, 1, 2), "both in one batch row");
    let stored: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("SELECT length(records) FROM job_batches", [], |r| r.get(0))
        .unwrap();
    assert!(
        stored < 1024,
        "the 4 KiB input is not in the row: {stored} bytes"
    );
    expect_same(&store, &large, "read back through the segment").await;
    store.close().await.unwrap();

    let store = open(&db);
    expect_same(&store, &large, "read back after a reopen").await;
    let mut segments = db.clone().into_os_string();
    segments.push("-payloads");
    for file in std::fs::read_dir(&segments).unwrap() {
        std::fs::remove_file(file.unwrap().path()).unwrap();
    }
    match store.get(&large.id).await {
        Err(Error::Storage(m)) => assert!(m.contains(large.id.as_str()), "{m}"),
        other => panic!("expected a storage error, got {other:?}"),
    }
    expect_same(&store, &small, "the row's other job").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_is_kept_as_long_as_the_batch_rows_pointing_into_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("kept.db");
    let store = open(&db);
    // A large job that finished early, and a small one of the same batch row that
    // finished 600 ms after its id was made: the row stays until the small one expires,
    // and with it the large one's entry, which points into the segment.
    let mut large = finished("t", json!({"text": "x".repeat(4096)}), true);
    large.finished_ms = Some(large.id.unix_ms().unwrap() + 1);
    let mut small = finished("t", json!({"a": 1}), true);
    small.finished_ms = Some(small.id.unix_ms().unwrap() + 600);
    record_sole(&store, [&large, &small]).await;
    assert_eq!(counts(&db), (0, 1, 2));
    let conn = rusqlite::Connection::open(&db).unwrap();
    let row_newest: i64 = conn
        .query_row("SELECT newest_ms FROM job_batches", [], |r| r.get(0))
        .unwrap();
    let segment_newest: i64 = conn
        .query_row("SELECT max(newest_ms) FROM payload_segments", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(row_newest, small.finished_ms.unwrap() as i64);
    assert!(
        segment_newest >= row_newest,
        "the segment ({segment_newest}) would go before the row ({row_newest})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_batch_rows_go_a_part_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("expire.db");
    let store = open(&db);
    let jobs: Vec<Job> = (0..10)
        .map(|i| finished("t", json!({ "i": i }), true))
        .collect();
    record_sole(&store, &jobs).await;
    assert_eq!(counts(&db), (0, 1, 10));

    let newest = jobs.iter().filter_map(|j| j.finished_ms).max().unwrap();
    assert_eq!(
        store.expire_finished(newest, 100).await.unwrap(),
        0,
        "the row's newest job has not expired at its own finish time"
    );
    let cutoff = now_ms() + 1_000;
    assert_eq!(
        store.expire_finished(cutoff, 4).await.unwrap(),
        4,
        "at most 4"
    );
    assert_eq!(counts(&db), (0, 1, 6), "the row keeps the other 6");
    let kept: Vec<&Job> = {
        let mut kept = Vec::new();
        for job in &jobs {
            if let Some(got) = store.get(&job.id).await.unwrap() {
                assert_eq!(&got, job);
                kept.push(job);
            }
        }
        kept
    };
    assert_eq!(kept.len(), 6, "6 of the 10 are still found");
    assert_eq!(store.expire_finished(cutoff, 100).await.unwrap(), 6);
    assert_eq!(counts(&db), (0, 0, 0));
    assert_eq!(store.expire_finished(cutoff, 100).await.unwrap(), 0);
    for job in &jobs {
        assert_eq!(store.get(&job.id).await.unwrap(), None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_batch_row_reads_as_a_storage_error_for_its_jobs_only() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("damaged.db");
    let store = open(&db);
    let job = finished("t", json!({"a": 1}), true);
    record_sole(&store, [&job]).await;
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute(
            "UPDATE job_batches SET records = substr(records, 1, 30)",
            [],
        )
        .unwrap();
    match store.get(&job.id).await {
        Err(Error::Storage(m)) => assert!(m.contains("job batch"), "{m}"),
        other => panic!("expected a storage error, got {other:?}"),
    }
    // Writing and reading other jobs goes on.
    let next = finished("t", json!({"a": 2}), true);
    record_sole(&store, [&next]).await;
    expect_same(&store, &next, "a job written after the damage").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_call_is_recorded_in_a_batch_row_and_a_detached_one_in_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("scheduler.db");
    let store: Arc<dyn JobStore> = Arc::new(open(&db));
    let scheduler = LocalScheduler::new(
        LocalSchedulerConfig::default(),
        Arc::new(ConformanceRouter::new()),
        conformance_dispatcher(Arc::new(ConformanceExecutor::new())),
        store.clone(),
    );
    let tenant = TenantId::new("t").unwrap();
    let request = || JobRequest::new(tenant.clone(), FunctionRef::builtin("echo"), json!({}));
    let waited = match scheduler
        .submit(request(), SubmitMode::Wait(None))
        .await
        .unwrap()
    {
        Submitted::Finished(job) => job,
        other => panic!("expected a finished job, got {other:?}"),
    };
    let detached = match scheduler
        .submit(request(), SubmitMode::Detach)
        .await
        .unwrap()
    {
        Submitted::Pending { id, .. } => id,
        other => panic!("expected a pending job, got {other:?}"),
    };
    let status = loop {
        let job = scheduler.status(&tenant, &detached).await.unwrap();
        if job.status.is_terminal() {
            break job;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    store.flush().await.unwrap();
    assert_eq!(counts(&db), (1, 1, 1));
    assert_eq!(store.get(&waited.id).await.unwrap(), Some(waited));
    assert_eq!(store.get(&detached).await.unwrap(), Some(status));
}

/// Holds the database's write lock from a connection of its own until `released` says
/// so: the store's writer cannot commit meanwhile.
fn hold_write_lock(db: &Path) -> (std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let _ = released.recv();
        conn.execute_batch("COMMIT").unwrap();
    });
    (release, holder)
}

/// A sole record is in no overlay: a read that comes before its commit (here held up
/// by another connection's write lock) waits for the commit instead of missing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_before_a_sole_record_commits_waits_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("b.db");
    let store = Arc::new(open(&db));
    let builtin = finished("t", json!({"a": 1}), true);
    let mut user = finished("t", json!({"a": 2}), true);
    user.function = FunctionRef::User {
        id: "fn_1".into(),
        version: Some(1),
    };

    for (round, job) in [&builtin, &user].into_iter().enumerate() {
        let (release, holder) = hold_write_lock(&db);
        let before = counts(&db);
        store.put_sole(job).await.unwrap();
        let reader = {
            let (store, job) = (store.clone(), job.clone());
            tokio::spawn(async move {
                if round == 0 {
                    let got = store.get(&job.id).await.unwrap();
                    vec![got.map(|j| j.id)]
                } else {
                    let tenant = TenantId::new("t").unwrap();
                    let logs = store.recent_logs(&tenant, "fn_1", 10).await.unwrap();
                    logs.into_iter().map(|e| Some(e.id)).collect()
                }
            })
        };
        // The read cannot finish while the lock is held; the record is not committed.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(counts(&db), before, "round {round}: nothing committed yet");
        release.send(()).unwrap();
        let seen = reader.await.unwrap();
        assert_eq!(
            seen,
            vec![Some(job.id.clone())],
            "round {round}: the read found the record"
        );
        holder.join().unwrap();
    }
    assert_eq!(
        counts(&db),
        (1, 1, 1),
        "the user function's job has a row of its own"
    );
}
