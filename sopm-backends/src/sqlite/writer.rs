//! The writer thread: the only owner of the write connection. It drains a channel of
//! write requests, runs as many as are waiting (up to the batch size) in one
//! transaction, commits once, and only then answers the requests that wait for
//! durability. So a burst of jobs costs one sync, not one per job.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rusqlite::Connection;
use sopm_core::types::now_ms;
use sopm_core::{Error, Job, JobId, Result};
use tokio::sync::oneshot;

use super::error::Context;
use super::rows::{self, JobRow};

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

/// The newest state of a job whose puts are not committed yet, so reads see the
/// store's own writes at once. `last_seq` is the sequence number of the last put of
/// this job; the writer drops the entry once that put is processed.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) job: Arc<Job>,
    pub(crate) last_seq: u64,
}

/// Jobs with puts in flight.
pub(crate) type Overlay = Arc<Mutex<HashMap<JobId, Pending>>>;

/// Finished jobs deleted per retention transaction, so a sweep never holds up the
/// writes queued behind it for long.
const SWEEP_CHUNK: usize = 1000;

/// What to do with a request once its transaction ends.
enum Completion {
    Put {
        id: JobId,
        seq: u64,
        done: Option<oneshot::Sender<Result<()>>>,
    },
    Op(Deliver),
    Barrier(oneshot::Sender<Result<()>>),
}

pub(crate) struct Writer {
    conn: Connection,
    rx: Receiver<Request>,
    overlay: Overlay,
    in_flight: Arc<AtomicUsize>,
    batch_size: usize,
    retention: Duration,
    sweep_interval: Duration,
    next_sweep: Instant,
}

impl Writer {
    pub(crate) fn new(
        conn: Connection,
        rx: Receiver<Request>,
        overlay: Overlay,
        in_flight: Arc<AtomicUsize>,
        batch_size: usize,
        retention: Duration,
        sweep_interval: Duration,
    ) -> Self {
        Writer {
            conn,
            rx,
            overlay,
            in_flight,
            batch_size,
            retention,
            sweep_interval,
            // The first sweep runs soon after start-up, once the writer is idle.
            next_sweep: Instant::now() + Duration::from_secs(1).min(sweep_interval),
        }
    }

    /// Serves requests until every sender is gone, then returns (closing the
    /// connection). Every request received is answered.
    pub(crate) fn run(mut self) {
        let mut batch = Vec::with_capacity(self.batch_size.min(8192));
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
            while batch.len() < self.batch_size {
                match self.rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            let n = batch.len();
            self.run_batch(&mut batch);
            self.in_flight.fetch_sub(n, Ordering::AcqRel);
            if Instant::now() >= self.next_sweep {
                self.sweep();
            }
        }
        tracing::debug!("SQLite writer stopped");
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
        let mut open: Vec<Completion> = Vec::with_capacity(batch.len());
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
                Request::Put { seq, row, done } => match rows::put_job(&self.conn, &row) {
                    Ok(()) => open.push(Completion::Put {
                        id: row.id().clone(),
                        seq,
                        done,
                    }),
                    Err(e) => {
                        let err: Error = Err::<(), _>(e).context("writing a job").unwrap_err();
                        let failed = Completion::Put {
                            id: row.id().clone(),
                            seq,
                            done,
                        };
                        if self.conn.is_autocommit() {
                            // SQLite rolled the whole transaction back: everything
                            // before this put in the batch is lost with it.
                            in_txn = false;
                            open.push(failed);
                            self.settle(std::mem::take(&mut open), Err(err));
                        } else {
                            self.settle(vec![failed], Err(err));
                        }
                    }
                },
                Request::Op(op) => {
                    let saved = self.conn.execute_batch("SAVEPOINT op").context("opening a savepoint");
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
        let outcome = if in_txn { self.commit() } else { Ok(()) };
        if let Err(e) = &outcome {
            tracing::error!(error = %e, writes = open.len(), "a SQLite commit failed");
        }
        self.settle(open, outcome);
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
        {
            let mut overlay = self.overlay.lock();
            for c in &done {
                if let Completion::Put { id, seq, .. } = c {
                    if let Entry::Occupied(e) = overlay.entry(id.clone()) {
                        if e.get().last_seq == *seq {
                            e.remove();
                        }
                    }
                }
            }
        }
        for c in done {
            match c {
                Completion::Put { id, done, .. } => match done {
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
        let cutoff = now_ms().saturating_sub(u64::try_from(self.retention.as_millis()).unwrap_or(u64::MAX));
        if cutoff == 0 {
            self.next_sweep = now + self.sweep_interval;
            return;
        }
        let deleted = self
            .begin()
            .and_then(|()| rows::delete_expired_jobs(&self.conn, cutoff, SWEEP_CHUNK))
            .and_then(|n| self.commit().map(|()| n));
        match deleted {
            Ok(n) => {
                if n > 0 {
                    tracing::debug!(deleted = n, "deleted finished jobs past their retention");
                }
                // A full chunk means more are due: carry on between batches.
                self.next_sweep = if n as usize >= SWEEP_CHUNK {
                    now
                } else {
                    now + self.sweep_interval
                };
            }
            Err(e) => {
                if !self.conn.is_autocommit() {
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                tracing::warn!(error = %e, "the job retention sweep failed");
                self.next_sweep = now + self.sweep_interval;
            }
        }
    }
}
