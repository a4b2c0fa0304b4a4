//! The SQLite store's payload segments: large finished records keep their input and
//! output in files beside the database, read back whole, checked, rotated, dropped with
//! their expired jobs, and never lost when the files cannot be written.
//! Run with: cargo test -p sopm-backends --test sqlite_payloads
#![cfg(feature = "sqlite")]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use sopm_backends::{SqliteConfig, SqliteStore};
use sopm_core::types::now_ms;
use sopm_core::{Durability, ErrorInfo, FunctionRef, Job, JobStatus, JobStore, TenantId};

fn open(path: &Path) -> SqliteStore {
    SqliteConfig::new(path)
        .with_job_retention(Duration::MAX)
        .open()
        .expect("open the store")
}

fn segment_dir(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-payloads");
    PathBuf::from(name)
}

/// The segment files, sorted by name (and so by number).
fn segments(db: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(segment_dir(db))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

/// `(input, payload)` columns of a job's row, read through a connection of its own.
fn row(db: &Path, job: &Job) -> (String, Option<i64>) {
    rusqlite::Connection::open(db)
        .unwrap()
        .query_row(
            "SELECT input, payload FROM jobs WHERE id = ?1",
            [job.id.as_str()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
}

/// A finished job with `n` characters of input and of output.
fn finished(n: usize, output: bool) -> Job {
    let mut j = Job::new(
        TenantId::new("payloads").unwrap(),
        FunctionRef::builtin("text.uppercase"),
        Arc::new(json!({"text": "héllo wörld ".repeat(n / 12 + 1)})),
        5_000,
    );
    j.status = if output {
        JobStatus::Succeeded
    } else {
        JobStatus::Failed
    };
    if output {
        j.output = Some(json!("HÉLLO WÖRLD ".repeat(n / 12 + 1)));
    } else {
        j.error = Some(ErrorInfo {
            code: "function_error".into(),
            message: "no".into(),
            traceback: None,
        });
    }
    j.started_ms = Some(j.created_ms);
    j.finished_ms = Some(j.created_ms + 1);
    j.attempts = 1;
    j
}

async fn get(store: &SqliteStore, job: &Job) -> sopm_core::Result<Option<Job>> {
    JobStore::get(store, &job.id).await
}

/// Puts each job durably.
async fn put_all(store: &SqliteStore, jobs: &[&Job]) {
    for j in jobs {
        store.put(j, Durability::Durable).await.unwrap();
    }
}

/// Checks that each job reads back as it was put.
async fn all_read_back(store: &SqliteStore, jobs: &[&Job]) {
    for &j in jobs {
        assert_eq!(get(store, j).await.unwrap().as_ref(), Some(j));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_finished_jobs_keep_input_and_output_in_a_private_segment() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("p.db");
    let store = open(&db);
    let big = finished(2_000, true);
    let big_failed = finished(2_000, false);
    let small = finished(100, true);
    let mut big_queued = finished(2_000, true);
    big_queued.status = JobStatus::Queued;
    big_queued.output = None;
    big_queued.finished_ms = None;
    let all = [&big, &big_failed, &small, &big_queued];
    put_all(&store, &all).await;
    all_read_back(&store, &all).await;

    let (input, payload) = row(&db, &big);
    assert_eq!(
        (input.as_str(), payload.is_some()),
        ("", true),
        "out of the row"
    );
    assert!(
        row(&db, &big_failed).1.is_some(),
        "a failed job's input too"
    );
    assert_eq!(row(&db, &small).1, None, "small records stay in the row");
    assert_eq!(
        row(&db, &big_queued).1,
        None,
        "unfinished jobs keep their input in the row"
    );

    let files = segments(&db);
    assert_eq!(files.len(), 1, "{files:?}");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&segment_dir(&db)), 0o700);
    assert_eq!(mode(&files[0]), 0o600);

    // Read back by another opening of the file.
    store.close().await.unwrap();
    let store = open(&db);
    all_read_back(&store, &all).await;
    // The queued job is recovered with its input, and finishes out of the row.
    assert_eq!(store.unfinished().await.unwrap(), vec![big_queued.clone()]);
    let mut done = big_queued.clone();
    done.status = JobStatus::Succeeded;
    done.output = Some(json!("done"));
    done.finished_ms = Some(now_ms());
    store.put(&done, Durability::Durable).await.unwrap();
    assert_eq!(get(&store, &done).await.unwrap(), Some(done.clone()));
    assert!(row(&db, &done).1.is_some());
    assert_eq!(
        segments(&db).len(),
        2,
        "each opening writes a segment of its own"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_or_missing_segments_are_clear_errors_for_their_jobs_only() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("d.db");
    let store = open(&db);
    let first = finished(3_000, true);
    let second = finished(3_000, true);
    let small = finished(10, true);
    put_all(&store, &[&first, &second, &small]).await;
    store.close().await.unwrap();
    let segment = segments(&db).remove(0);

    // One byte of the first job's payload changed.
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[10] ^= 0x20;
    std::fs::write(&segment, &bytes).unwrap();
    let store = open(&db);
    let err = get(&store, &first).await.unwrap_err().to_string();
    assert!(
        err.contains("checksum") && err.contains(&segment.display().to_string()),
        "{err}"
    );
    assert!(err.contains(first.id.as_str()), "{err}");
    assert_eq!(get(&store, &second).await.unwrap(), Some(second.clone()));
    assert_eq!(get(&store, &small).await.unwrap(), Some(small.clone()));

    // The file cut short: the second job's bytes are gone.
    std::fs::write(&segment, &bytes[..bytes.len() - 100]).unwrap();
    let err = get(&store, &second).await.unwrap_err().to_string();
    assert!(err.contains("could not be read"), "{err}");

    // The file removed.
    std::fs::remove_file(&segment).unwrap();
    let err = get(&store, &second).await.unwrap_err().to_string();
    assert!(err.contains("opening the job payload segment"), "{err}");

    // The store goes on: new large records are written and read.
    let third = finished(3_000, true);
    store.put(&third, Durability::Durable).await.unwrap();
    assert_eq!(get(&store, &third).await.unwrap(), Some(third));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_no_segment_can_be_written_records_stay_in_the_row() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("f.db");
    let store = open(&db);
    // The directory replaced by a plain file: no segment can be created in it.
    let seg_dir = segment_dir(&db);
    std::fs::remove_dir_all(&seg_dir).unwrap();
    std::fs::write(&seg_dir, b"not a directory").unwrap();
    let big = finished(4_000, true);
    store.put(&big, Durability::Durable).await.unwrap();
    let mut buffered = Vec::new();
    for _ in 0..20 {
        let j = finished(2_000, true);
        store.put(&j, Durability::Buffered).await.unwrap();
        buffered.push(j);
    }
    store.flush().await.unwrap();
    assert_eq!(get(&store, &big).await.unwrap(), Some(big.clone()));
    assert_eq!(row(&db, &big).1, None, "kept in the row");
    for j in &buffered {
        assert_eq!(get(&store, j).await.unwrap().as_ref(), Some(j));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_segment_is_closed_and_the_next_one_started() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    let store = open(&db);
    // 70 records of about 1 MiB each, one batch each: past the 64 MiB of a segment.
    let mut jobs = Vec::new();
    for _ in 0..70 {
        let j = finished(500_000, true);
        store.put(&j, Durability::Durable).await.unwrap();
        jobs.push(j);
    }
    let files = segments(&db);
    assert_eq!(files.len(), 2, "{files:?}");
    let first = std::fs::metadata(&files[0]).unwrap().len();
    assert!(
        (64 << 20..(64 << 20) + (2 << 20)).contains(&first),
        "the first segment closed just past 64 MiB: {first} bytes"
    );
    all_read_back(&store, &[&jobs[0], &jobs[63], &jobs[64], &jobs[69]]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_go_once_every_job_in_them_has_expired() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("e.db");
    let config = SqliteConfig::new(&db)
        .with_job_retention(Duration::from_secs(3600))
        .with_retention_sweep_interval(Duration::from_millis(20));
    // First opening: a job finished two hours ago, in segment 1.
    let store = config.clone().open().unwrap();
    let mut old = finished(2_000, true);
    old.created_ms = now_ms() - 2 * 3600 * 1000;
    old.finished_ms = Some(old.created_ms + 1);
    store.put(&old, Durability::Durable).await.unwrap();
    store.close().await.unwrap();
    let old_segment = segments(&db).remove(0);

    // Second opening: a fresh job, in segment 2.
    let store = config.open().unwrap();
    let fresh = finished(2_000, true);
    store.put(&fresh, Durability::Durable).await.unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    while old_segment.exists() || get(&store, &old).await.unwrap().is_some() {
        assert!(
            Instant::now() < until,
            "after 20 s the expired job or its segment is still there: {:?}",
            segments(&db)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(segments(&db).len(), 1, "the fresh job's segment stays");
    assert_eq!(get(&store, &fresh).await.unwrap(), Some(fresh));
    let known: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("SELECT count(*) FROM payload_segments", [], |r| r.get(0))
        .unwrap();
    assert_eq!(known, 1, "the expired segment's row went with it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_file_the_database_does_not_list_is_listed_again() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("u.db");
    let store = open(&db);
    let big = finished(2_000, true);
    store.put(&big, Durability::Durable).await.unwrap();
    store.close().await.unwrap();
    // Its row lost, as after a crash between a segment's first write and the commit
    // that lists it: the next opening lists it again, kept a whole retention period
    // from then (instead of never going).
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute("DELETE FROM payload_segments", []).unwrap();
    let before = now_ms() as i64;
    let store = open(&db);
    let (id, newest): (i64, i64) = conn
        .query_row("SELECT id, newest_ms FROM payload_segments", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(id, 1);
    assert!(newest >= before, "listed as new: {newest} < {before}");
    assert_eq!(get(&store, &big).await.unwrap(), Some(big));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_name_already_taken_is_passed_over() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let store = open(&db);
    // Taken after the store counted the files there (as by another process).
    let taken = segment_dir(&db).join("0000000001.seg");
    std::fs::write(&taken, b"someone else's").unwrap();
    let first = finished(2_000, true);
    store.put(&first, Durability::Durable).await.unwrap();
    assert_eq!(row(&db, &first).1, None, "kept in its row");
    let second = finished(2_000, true);
    store.put(&second, Durability::Durable).await.unwrap();
    assert_eq!(row(&db, &second).1, Some(2), "the next number");
    assert_eq!(std::fs::read(&taken).unwrap(), b"someone else's");
    all_read_back(&store, &[&first, &second]).await;
}
