//! The writer thread, the only owner of the write connection, and the checkpointer
//! thread beside it.
//!
//! The writer drains a channel of write requests, runs every request waiting (up to
//! the batch size) in one transaction, commits once, and only then answers the
//! requests that wait for durability: a burst of jobs costs one sync, not one per
//! job. When the last batch had more durable writers than have arrived yet, it
//! lingers a moment (never longer than the last commit took) so they share the next
//! sync instead of each half of them paying for one. A batch nobody waits for lingers
//! longer (up to 10 ms), until a write someone waits for arrives: each commit costs a
//! sync and a rewrite of the pages it ends on, however few records it holds.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rusqlite::{CachedStatement, Connection};
use rustc_hash::FxHashMap;
use sopm_core::types::now_ms;
use sopm_core::{Error, Job, JobId, Result};
use tokio::sync::oneshot;

use super::batches;
use super::error::Context;
use super::payloads::{self, Segments};
use super::record::JobRow;
use super::rows;

/// Delivers the outcome of a [`WriteOp`] once its transaction has committed (or failed).
pub(crate) type Deliver = Box<dyn FnOnce(Result<()>) + Send>;

/// A write other than a job put (registry changes, purges). It runs inside a
/// savepoint of the batch's transaction and is answered after the commit.
pub(crate) trait WriteOp: Send {
    /// Runs the write; says whether it succeeded (else its changes are rolled back)
    /// and how to deliver its answer once the transaction ends.
    fn run(self: Box<Self>, conn: &Connection) -> (bool, Deliver);

    /// Answers with `error` without running.
    fn fail(self: Box<Self>, error: Error);
}

struct TypedOp<T, F> {
    write: F,
    answer: oneshot::Sender<Result<T>>,
}

impl<T, F> WriteOp for TypedOp<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> Result<T> + Send,
{
    fn run(self: Box<Self>, conn: &Connection) -> (bool, Deliver) {
        let TypedOp { write, answer } = *self;
        let result = write(conn);
        let ok = result.is_ok();
        let deliver: Deliver = Box::new(move |commit: Result<()>| {
            let _ = answer.send(commit.and(result));
        });
        (ok, deliver)
    }

    fn fail(self: Box<Self>, error: Error) {
        let _ = self.answer.send(Err(error));
    }
}

/// Wraps `write` as a request for the writer, with the receiver of its answer.
pub(crate) fn op<T, F>(write: F) -> (Request, oneshot::Receiver<Result<T>>)
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> Result<T> + Send + 'static,
{
    let (answer, rx) = oneshot::channel();
    (Request::Op(Box::new(TypedOp { write, answer })), rx)
}

/// One request to the writer.
// Job puts are nearly all the traffic; boxing them would add an allocation per put
// to shrink the rare other requests.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Request {
    /// Records a job. `done` is set for a put that waits for its commit.
    Put {
        seq: u64,
        row: JobRow,
        done: Option<oneshot::Sender<Result<()>>>,
    },
    /// Any other write.
    Op(Box<dyn WriteOp>),
    /// Answered once everything sent before it is committed.
    Barrier(oneshot::Sender<Result<()>>),
}

impl Request {
    /// The bytes of input and output a put holds.
    fn payload_bytes(&self) -> usize {
        match self {
            Request::Put { row, .. } => {
                let (input, output) = row.input_output();
                input.len() + output.map_or(0, str::len)
            }
            Request::Op(_) | Request::Barrier(_) => 0,
        }
    }

    /// Whether someone waits for this request's commit.
    fn waits(&self) -> bool {
        match self {
            Request::Put { done, .. } => done.is_some(),
            Request::Op(_) | Request::Barrier(_) => true,
        }
    }
}

/// The newest state of a job whose puts are not committed yet, so reads see the
/// store's own writes at once. `last_seq` is the sequence number of the last put of
/// this job; the writer drops the entry once that put is processed.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) job: Arc<Job>,
    pub(crate) last_seq: u64,
}

/// Jobs with puts in flight. Keyed by ids this server made (random, so a fast hash
/// is safe): every put inserts and every commit removes, on the hot path.
pub(crate) type Overlay = Arc<Mutex<FxHashMap<JobId, Pending>>>;

/// How far the sole records ([`JobStore::put_sole`](sopm_core::JobStore::put_sole)),
/// which skip the overlay, have got: one past the sequence number of the last one
/// sent, and one past the last put the writer has settled (committed, or answered
/// with its error). A read that misses while `sent` is past what `settled` was before
/// it looked may have missed a sole record on its way, and waits for the writer.
#[derive(Debug, Default)]
pub(crate) struct SoleMarks {
    pub(crate) sent: AtomicU64,
    pub(crate) settled: AtomicU64,
}

/// Finished jobs deleted per retention transaction, so a sweep never holds up the
/// writes queued behind it for long.
const SWEEP_CHUNK: usize = 1000;

/// How long a batch of buffered writes waits for company before committing, at most:
/// each commit costs a sync and rewrites the pages it ends on, whatever it holds.
const BUFFERED_LINGER: Duration = Duration::from_millis(10);

/// How often a lingering batch looks at what has arrived: a write that someone waits
/// for ends the linger at the next look.
const LINGER_STEP: Duration = Duration::from_millis(1);

/// A batch of buffered writes this large commits without lingering.
const BUFFERED_BATCH: usize = 2048;

/// A batch of buffered writes whose records hold this many bytes of input and output
/// commits without lingering: records written long ago are no longer in the caches.
const BUFFERED_BYTES: usize = 1024 * 1024;

/// The longest the writer lingers for durable writers it expects.
const MAX_LINGER: Duration = Duration::from_millis(1);

/// A job's sole record, for a batch row.
struct SolePut {
    row: JobRow,
    /// The id's time.
    made: i64,
    done: Option<oneshot::Sender<Result<()>>>,
}

/// What to do with a request once its transaction ends.
enum Completion {
    Put {
        id: JobId,
        seq: u64,
        done: Option<oneshot::Sender<Result<()>>>,
    },
    /// A put of a sole record, which has no overlay entry.
    Sole {
        id: JobId,
        done: Option<oneshot::Sender<Result<()>>>,
    },
    Op(Deliver),
    Barrier(oneshot::Sender<Result<()>>),
}

/// Settings of the writer thread.
pub(crate) struct WriterSettings {
    pub(crate) batch_size: usize,
    pub(crate) retention: Duration,
    pub(crate) sweep_interval: Duration,
}

pub(crate) struct Writer {
    conn: Connection,
    segments: Segments,
    rx: Receiver<Request>,
    overlay: Overlay,
    sole: Arc<SoleMarks>,
    in_flight: Arc<AtomicUsize>,
    settings: WriterSettings,
    next_sweep: Instant,
    /// Requests with a waiter in the last batch: how many durable writers are about.
    expected_waiters: usize,
    /// How long the last commit took: the most worth lingering for.
    last_commit: Duration,
}

impl Writer {
    pub(crate) fn new(
        conn: Connection,
        segments: Segments,
        rx: Receiver<Request>,
        overlay: Overlay,
        sole: Arc<SoleMarks>,
        in_flight: Arc<AtomicUsize>,
        settings: WriterSettings,
    ) -> Self {
        Writer {
            conn,
            segments,
            rx,
            overlay,
            sole,
            in_flight,
            // The first sweep runs soon after start-up, once the writer is idle.
            next_sweep: Instant::now() + Duration::from_secs(1).min(settings.sweep_interval),
            settings,
            expected_waiters: 0,
            last_commit: Duration::ZERO,
        }
    }

    /// Serves requests until every sender is gone, then returns (closing the
    /// connection). Every request received is answered.
    pub(crate) fn run(mut self) {
        let mut batch = Vec::with_capacity(self.settings.batch_size.min(8192));
        loop {
            let idle_for = self.next_sweep.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(idle_for) {
                Ok(first) => batch.push(first),
                Err(RecvTimeoutError::Timeout) => {
                    self.sweep();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.gather(&mut batch);
            self.linger(&mut batch);
            let n = batch.len();
            // Sequence numbers are sent in order, so once this batch is settled every
            // put up to its last is.
            let last_seq = batch.iter().rev().find_map(|r| match r {
                Request::Put { seq, .. } => Some(*seq),
                Request::Op(_) | Request::Barrier(_) => None,
            });
            self.run_batch(&mut batch);
            if let Some(seq) = last_seq {
                self.sole.settled.store(seq + 1, Ordering::Release);
            }
            self.in_flight.fetch_sub(n, Ordering::AcqRel);
            if Instant::now() >= self.next_sweep {
                self.sweep();
            }
        }
        tracing::debug!("SQLite writer stopped");
    }

    /// While nobody waits for the batch, lets more writes join it, so one commit (and
    /// one sync) covers many: up to [`BUFFERED_LINGER`], in steps of sleep (senders do
    /// not wake this thread per put), until a write someone waits for arrives or the
    /// batch is large in records or in bytes.
    fn linger(&mut self, batch: &mut Vec<Request>) {
        let until = Instant::now() + BUFFERED_LINGER;
        let most = BUFFERED_BATCH.min(self.settings.batch_size);
        let full = |batch: &[Request]| {
            batch.len() >= most
                || batch.iter().any(Request::waits)
                || batch.iter().map(Request::payload_bytes).sum::<usize>() >= BUFFERED_BYTES
        };
        while !full(batch) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(LINGER_STEP));
            self.gather(batch);
        }
    }

    /// Adds what is waiting to the batch, lingering briefly for expected durable
    /// writers.
    fn gather(&mut self, batch: &mut Vec<Request>) {
        let cap = self.settings.batch_size;
        while batch.len() < cap {
            match self.rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let mut waiters = batch.iter().filter(|r| r.waits()).count();
        if waiters > 0 && waiters < self.expected_waiters {
            let until = Instant::now() + self.last_commit.min(MAX_LINGER);
            while batch.len() < cap && waiters < self.expected_waiters {
                match self
                    .rx
                    .recv_timeout(until.saturating_duration_since(Instant::now()))
                {
                    Ok(r) => {
                        waiters += usize::from(r.waits());
                        batch.push(r);
                    }
                    Err(_) => break,
                }
            }
        }
        self.expected_waiters = waiters;
    }

    fn begin(&self) -> Result<()> {
        self.conn
            .prepare_cached("BEGIN IMMEDIATE")
            .and_then(|mut s| s.execute([]))
            .map(drop)
            .context("starting a transaction")
    }

    fn commit(&self) -> Result<()> {
        let r = self
            .conn
            .prepare_cached("COMMIT")
            .and_then(|mut s| s.execute([]))
            .map(drop)
            .context("committing");
        if r.is_err() && !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        r
    }

    /// Runs one batch in one transaction and answers it.
    fn run_batch(&mut self, batch: &mut Vec<Request>) {
        let segment = self.store_payloads(batch);
        let mut upsert: Option<CachedStatement<'_>> = None;
        let mut open: Vec<Completion> = Vec::with_capacity(batch.len());
        let mut sole: Vec<SolePut> = Vec::new();
        let mut in_txn = false;
        for request in batch.drain(..) {
            if !in_txn && !matches!(request, Request::Barrier(_)) {
                match self.begin() {
                    Ok(()) => in_txn = true,
                    Err(e) => {
                        self.refuse(request, e);
                        continue;
                    }
                }
            }
            match request {
                Request::Barrier(done) => open.push(Completion::Barrier(done)),
                Request::Put { seq, row, done } => {
                    if let Some(made) = batches::batchable(&row) {
                        sole.push(SolePut { row, made, done });
                        continue;
                    }
                    let written = match &mut upsert {
                        Some(stmt) => rows::put_job(stmt, &row),
                        None => rows::prepare_put_job(&self.conn).and_then(|mut stmt| {
                            let r = rows::put_job(&mut stmt, &row);
                            upsert = Some(stmt);
                            r
                        }),
                    };
                    let completion = Completion::Put {
                        id: row.id().clone(),
                        seq,
                        done,
                    };
                    match written {
                        Ok(()) => open.push(completion),
                        Err(e) => {
                            let err = Err::<(), _>(e).context("writing a job").unwrap_err();
                            if self.conn.is_autocommit() {
                                // SQLite rolled the whole transaction back: everything
                                // before this put in the batch is lost with it.
                                in_txn = false;
                                open.push(completion);
                                self.settle(std::mem::take(&mut open), Err(err));
                            } else {
                                self.settle(vec![completion], Err(err));
                            }
                        }
                    }
                }
                Request::Op(op) => {
                    let saved = self
                        .conn
                        .execute_batch("SAVEPOINT op")
                        .context("opening a savepoint");
                    if let Err(e) = saved {
                        op.fail(e);
                        continue;
                    }
                    let (ok, deliver) = op.run(&self.conn);
                    let end = if ok {
                        "RELEASE op"
                    } else {
                        "ROLLBACK TO op; RELEASE op"
                    };
                    let ended = self.conn.execute_batch(end).context("closing a savepoint");
                    open.push(Completion::Op(deliver));
                    if let Err(e) = ended {
                        // The transaction is in an unknown state: give it up, and fail
                        // everything that was in it.
                        if !self.conn.is_autocommit() {
                            let _ = self.conn.execute_batch("ROLLBACK");
                        }
                        in_txn = false;
                        self.settle(std::mem::take(&mut open), Err(e));
                    }
                }
            }
        }
        drop(upsert);
        // A batch row keeps all its entries until its newest has expired, so the segment
        // its entries may point into is kept as long.
        let sole_newest = sole.iter().map(|p| p.row.retention_ms()).max();
        if !sole.is_empty() {
            self.write_sole(sole, &mut open, &mut in_txn);
        }
        if let (true, Some((id, newest))) = (in_txn, segment) {
            let newest = newest.max(sole_newest.unwrap_or(i64::MIN));
            // Without this row the segment would outlive its jobs until a restart
            // registers it again; the jobs themselves are unaffected.
            if let Err(e) = payloads::record(&self.conn, id, newest) {
                tracing::warn!(error = %e, segment = id, "could not record a job payload segment");
            }
        }
        let started = Instant::now();
        let outcome = if in_txn { self.commit() } else { Ok(()) };
        if in_txn {
            self.last_commit = started.elapsed();
        }
        if let Err(e) = &outcome {
            tracing::error!(error = %e, writes = open.len(), "a SQLite commit failed");
        }
        self.settle(open, outcome);
    }

    /// Writes the batch's sole records as batch rows, in a savepoint of the batch's
    /// transaction (opened here if nothing else in the batch opened it), and adds them
    /// to `open`; or answers them with the error.
    fn write_sole(&self, sole: Vec<SolePut>, open: &mut Vec<Completion>, in_txn: &mut bool) {
        let completions = |sole: Vec<SolePut>| -> Vec<Completion> {
            sole.into_iter()
                .map(|p| Completion::Sole {
                    id: p.row.id().clone(),
                    done: p.done,
                })
                .collect()
        };
        if !*in_txn {
            if let Err(e) = self.begin() {
                self.settle(completions(sole), Err(e));
                return;
            }
            *in_txn = true;
        }
        if let Err(e) = self
            .conn
            .execute_batch("SAVEPOINT batches")
            .context("opening a savepoint")
        {
            self.settle(completions(sole), Err(e));
            return;
        }
        let rows: Vec<(&JobRow, i64)> = sole.iter().map(|p| (&p.row, p.made)).collect();
        let inserted = batches::insert(&self.conn, &rows).context("writing a job batch");
        drop(rows);
        let end = if inserted.is_ok() {
            "RELEASE batches"
        } else {
            "ROLLBACK TO batches; RELEASE batches"
        };
        let ended = self.conn.execute_batch(end).context("closing a savepoint");
        match (inserted, ended) {
            (Ok(()), Ok(())) => open.extend(completions(sole)),
            (Err(e), Ok(())) => self.settle(completions(sole), Err(e)),
            (inserted, Err(e)) => {
                // The transaction is gone or in an unknown state: give it up, and fail
                // everything that was in it.
                if !self.conn.is_autocommit() {
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                *in_txn = false;
                let mut all = std::mem::take(open);
                all.extend(completions(sole));
                self.settle(all, Err(inserted.err().unwrap_or(e)));
            }
        }
    }

    /// Moves the input and output of the batch's large finished records to a payload
    /// segment, in one write, and points their rows there. Returns the segment and the
    /// newest retention time written, for the batch's transaction to record. If the
    /// segment cannot be written, the records keep them in their rows: nothing is lost.
    fn store_payloads(&mut self, batch: &mut [Request]) -> Option<(i64, i64)> {
        let mut rows: Vec<&mut JobRow> = batch
            .iter_mut()
            .filter_map(|r| match r {
                Request::Put { row, .. } if row.payload_belongs_outside() => Some(row),
                _ => None,
            })
            .collect();
        if rows.is_empty() {
            return None;
        }
        let parts: Vec<(&str, Option<&str>)> = rows.iter().map(|r| r.input_output()).collect();
        let appended = self.segments.append(&parts);
        drop(parts);
        match appended {
            Ok(refs) => {
                let segment = refs[0].segment;
                let mut newest = i64::MIN;
                for (row, at) in rows.iter_mut().zip(refs) {
                    newest = newest.max(row.retention_ms());
                    row.payload_moved(at);
                }
                Some((segment, newest))
            }
            Err(e) => {
                tracing::error!(error = %e, jobs = rows.len(), "could not write job payloads to a segment; they stay in the database");
                None
            }
        }
    }

    /// Answers a request that could not run.
    fn refuse(&self, request: Request, error: Error) {
        match request {
            Request::Put { seq, row, done } => {
                let id = row.id().clone();
                self.settle(vec![Completion::Put { id, seq, done }], Err(error));
            }
            Request::Op(op) => op.fail(error),
            Request::Barrier(tx) => {
                let _ = tx.send(Err(error));
            }
        }
    }

    /// Answers finished requests and forgets the overlay entries of their puts.
    fn settle(&self, done: Vec<Completion>, outcome: Result<()>) {
        // The records leave the overlay under its lock, and are dropped after it, so
        // puts on the runtime's threads do not wait for the frees.
        let mut settled = Vec::with_capacity(done.len());
        {
            let mut overlay = self.overlay.lock();
            for c in &done {
                if let Completion::Put { id, seq, .. } = c {
                    if overlay.get(id).is_some_and(|p| p.last_seq == *seq) {
                        settled.extend(overlay.remove(id));
                    }
                }
            }
        }
        drop(settled);
        for c in done {
            match c {
                Completion::Put { id, done, .. } | Completion::Sole { id, done } => match done {
                    Some(tx) => {
                        let _ = tx.send(outcome.clone());
                    }
                    None => {
                        if let Err(e) = &outcome {
                            tracing::error!(job = %id, error = %e, "a buffered job record was not written");
                        }
                    }
                },
                Completion::Op(deliver) => deliver(outcome.clone()),
                Completion::Barrier(tx) => {
                    let _ = tx.send(outcome.clone());
                }
            }
        }
    }

    /// Deletes one chunk of finished jobs past the retention period.
    fn sweep(&mut self) {
        let now = Instant::now();
        let retention_ms = u64::try_from(self.settings.retention.as_millis()).unwrap_or(u64::MAX);
        let cutoff = now_ms().saturating_sub(retention_ms);
        if cutoff == 0 {
            self.next_sweep = now + self.settings.sweep_interval;
            return;
        }
        // Once no expired job is left, no segment older than the cutoff is referenced.
        let mut expired_segments = Vec::new();
        let deleted = self
            .begin()
            .and_then(|()| rows::delete_expired_jobs(&self.conn, cutoff, SWEEP_CHUNK))
            .and_then(|n| {
                if (n as usize) < SWEEP_CHUNK {
                    expired_segments = self.segments.expire(&self.conn, cutoff)?;
                }
                self.commit().map(|()| n)
            });
        match deleted {
            Ok(n) => {
                self.segments.remove(&expired_segments);
                if n > 0 {
                    tracing::debug!(deleted = n, "deleted finished jobs past their retention");
                }
                // A full chunk means more are due: carry on between batches.
                self.next_sweep = if n as usize >= SWEEP_CHUNK {
                    now
                } else {
                    now + self.settings.sweep_interval
                };
            }
            Err(e) => {
                if !self.conn.is_autocommit() {
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                tracing::warn!(error = %e, "the job retention sweep failed");
                self.next_sweep = now + self.settings.sweep_interval;
            }
        }
    }
}

/// Copies committed pages from the WAL into the database file on its own connection
/// and thread, every `interval`, so the writer does not pay for it between commits.
/// Stops when `stop`'s sender is dropped.
pub(crate) fn run_checkpointer(conn: Connection, stop: Receiver<()>, interval: Duration) {
    while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(interval) {
        let done = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(0));
        if let Err(e) = done {
            tracing::warn!(error = %e, "a WAL checkpoint failed");
        }
    }
}
