//! SQLite storage: [`SqliteStore`] keeps the function registry, the job records and
//! the API keys in one database file, and implements [`Registry`], [`JobStore`] and
//! [`KeyStore`].
//!
//! - The file is in WAL mode with `synchronous=FULL` by default, so an acknowledged
//!   job survives a crash of the process or of the machine
//!   ([`Synchronous::Normal`] trades the latter for speed).
//! - Group commit: one writer thread owns the write connection. Writes queue on a
//!   channel; the writer runs every write waiting (up to the batch size) in one
//!   transaction, commits once, and then answers the durable ones. A durable put
//!   costs a share of one sync instead of a sync of its own, and a buffered put does
//!   not wait at all. Writes are applied in the order they were made.
//! - Reads run on a small pool of read connections (WAL lets them run beside the
//!   writer) on tokio's blocking threads. Reads see the store's own job puts,
//!   committed or not: an uncommitted put from the overlay, an uncommitted sole record
//!   (in no overlay) by waiting for its commit.
//! - The rank rule of [`JobStore::put`] is enforced by the `UPSERT` itself.
//! - The schema is migrated on open, tracked in `PRAGMA user_version`; a file from a
//!   newer SOPM is refused.
//! - Finished jobs older than the retention period (7 days by default) are deleted by
//!   the writer in small chunks between batches.
//! - A finished job's large input and output are kept out of the database, in append-only
//!   segment files beside it (`payloads`): written once, instead of to the WAL and
//!   again to the database at the checkpoint.
//! - A waiting call's record, the job's only one ([`JobStore::put_sole`]), is kept with
//!   the others of its batch, many to a row (`batches`): one insert per batch instead of
//!   one per job.

mod batches;
mod config;
mod error;
mod payloads;
mod record;
mod rows;
mod schema;
mod writer;

use std::collections::hash_map::Entry;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags};
use rustc_hash::FxHashMap;
use sopm_core::jobstore::status_replaces;
use sopm_core::jobstore::{is_job_of, newest_entries_first, JobLogEntry};
use sopm_core::keys::{looks_like_secret, new_key, secret_digest};
use sopm_core::registry::{check_finish, validate_function_name};
use sopm_core::types::now_ms;
use sopm_core::{
    ApiKeyInfo, ApiKeySecret, Artifact, BuildStatus, Durability, Error, FunctionRecord,
    FunctionVersion, Job, JobId, JobStore, KeyStore, NewVersion, Registry, Result, TenantId,
    TenantUsage,
};
use tokio::sync::{oneshot, Semaphore};

pub use config::{SqliteConfig, Synchronous};
use error::{closed, io_error, Context, SqliteError};
use record::JobRow;
use writer::{Overlay, Pending, Request, SoleMarks, Writer, WriterSettings};

/// Writes allowed in flight, in batches, before a buffered put waits for its commit
/// like a durable one. The hot path never waits unless the disk falls this far
/// behind; and a durable put, queued behind the buffered ones, never waits for more
/// than this many batches.
const IN_FLIGHT_BATCHES: usize = 4;

/// WAL size, in pages, past which the writer checkpoints by itself.
const WRITER_CHECKPOINT_PAGES: i64 = 10_000;

/// How often the checkpointer thread copies the WAL into the database file.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(50);

/// The writer's page cache, in KiB (negative `cache_size` counts KiB).
const WRITER_CACHE_KIB: i64 = -64 * 1024;

/// The function registry and the job store in one SQLite file. Open it with
/// [`SqliteConfig::open`]; share it as `Arc<SqliteStore>` (it coerces to both
/// `Arc<dyn Registry>` and `Arc<dyn JobStore>`).
///
/// Dropping the last handle lets the writer finish what was queued and stop;
/// [`close`](Self::close) does the same and waits for it.
pub struct SqliteStore {
    config: SqliteConfig,
    /// Where large finished records keep their input and output.
    payload_dir: Arc<Path>,
    front: Mutex<Front>,
    overlay: Overlay,
    sole: Arc<SoleMarks>,
    in_flight: Arc<AtomicUsize>,
    in_flight_limit: usize,
    closed: AtomicBool,
    readers: Arc<ReadPool>,
    writer: Mutex<Option<JoinHandle<()>>>,
    checkpointer: Mutex<Option<(Sender<()>, JoinHandle<()>)>>,
}

/// The sending side of the writer's channel. Sequence numbers are taken and requests
/// sent under one lock, so the channel's order is the order of the numbers.
struct Front {
    sender: Option<Sender<Request>>,
    next_seq: u64,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.config.path)
            .field("synchronous", &self.config.synchronous)
            .field("batch_size", &self.config.batch_size)
            .field("in_flight", &self.in_flight.load(Ordering::Relaxed))
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish()
    }
}

fn open_connection(path: &Path, flags: OpenFlags, busy_timeout: Duration) -> Result<Connection> {
    let conn = Connection::open_with_flags(path, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .context("opening the database")?;
    conn.busy_timeout(busy_timeout)
        .context("setting the busy timeout")?;
    Ok(conn)
}

impl SqliteStore {
    fn open(config: SqliteConfig) -> Result<Self> {
        config.validate()?;
        let path = config.path.clone();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io_error("creating the directory", dir))?;
        }
        let mut conn = open_connection(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
            config.busy_timeout,
        )?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .context("switching to WAL")?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(SqliteError::NotWal { path, mode }.into());
        }
        conn.pragma_update(None, "synchronous", config.synchronous.pragma_value())
            .context("setting synchronous")?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .context("enabling foreign keys")?;
        conn.set_prepared_statement_cache_capacity(64);
        // A batch touches pages of the table and of each index: a cache that holds a
        // whole batch's pages keeps them from spilling mid-batch.
        conn.pragma_update(None, "cache_size", WRITER_CACHE_KIB)
            .context("sizing the page cache")?;
        // Checkpoints run on their own thread; the writer checkpoints only if that
        // thread falls far behind.
        conn.pragma_update(None, "wal_autocheckpoint", WRITER_CHECKPOINT_PAGES)
            .context("setting wal_autocheckpoint")?;
        // The WAL is reused from its start after each full checkpoint; only a WAL that
        // grew far past its usual size is cut back.
        conn.pragma_update(None, "journal_size_limit", 128 * 1024 * 1024)
            .context("setting journal_size_limit")?;
        schema::migrate(&mut conn, &path)?;
        let segments =
            payloads::Segments::open(&path, &conn, config.synchronous == Synchronous::Full)?;

        let readers = Arc::new(ReadPool {
            path: path.clone(),
            busy_timeout: config.busy_timeout,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(config.read_connections),
        });
        // Fail now, not on the first read, if read connections cannot open.
        let first_reader = readers.connect()?;
        readers.idle.lock().push(first_reader);

        let (sender, receiver) = mpsc::channel();
        let overlay: Overlay = Arc::new(Mutex::new(FxHashMap::default()));
        let sole = Arc::new(SoleMarks::default());
        let in_flight = Arc::new(AtomicUsize::new(0));
        let writer = Writer::new(
            conn,
            segments,
            receiver,
            overlay.clone(),
            sole.clone(),
            in_flight.clone(),
            WriterSettings {
                batch_size: config.batch_size,
                retention: config.job_retention,
                sweep_interval: config.retention_sweep_interval,
            },
        );
        let checkpoint_conn = open_connection(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE,
            config.busy_timeout,
        )?;
        checkpoint_conn
            .pragma_update(None, "synchronous", config.synchronous.pragma_value())
            .context("setting synchronous")?;
        let (stop_checkpoints, checkpoint_stop) = mpsc::channel();
        let spawn = |name: &str, run: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(run)
                .map_err(|source| SqliteError::Io {
                    context: "starting a thread for",
                    path: path.clone(),
                    source,
                })
        };
        let checkpointer = spawn(
            "sopm-sqlite-checkpoint",
            Box::new(move || {
                writer::run_checkpointer(checkpoint_conn, checkpoint_stop, CHECKPOINT_INTERVAL)
            }),
        )?;
        let handle = spawn("sopm-sqlite-writer", Box::new(move || writer.run()))?;
        let in_flight_limit = config
            .batch_size
            .saturating_mul(IN_FLIGHT_BATCHES)
            .max(1024);
        tracing::debug!(path = %path.display(), "opened the SQLite store");
        Ok(SqliteStore {
            payload_dir: payloads::dir_of(&config.path).into(),
            config,
            front: Mutex::new(Front {
                sender: Some(sender),
                next_seq: 0,
            }),
            overlay,
            sole,
            in_flight,
            in_flight_limit,
            closed: AtomicBool::new(false),
            readers,
            writer: Mutex::new(Some(handle)),
            checkpointer: Mutex::new(Some((stop_checkpoints, checkpointer))),
        })
    }

    /// Queues `row`, the encoding of `job`, and waits for its commit if `durability`
    /// asks for it (or the writer is too far behind). Until its commit, `job` is read
    /// from the overlay; a sole record (`job` is `None`) is not: a read that misses it
    /// waits for the writer instead ([`Self::settle_sole_records`]).
    async fn put_row(&self, job: Option<&Job>, row: JobRow, durability: Durability) -> Result<()> {
        let wait = durability == Durability::Durable
            || self.in_flight.load(Ordering::Acquire) >= self.in_flight_limit;
        let (done, answer) = if wait {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        {
            let mut front = self.front.lock();
            if front.sender.is_none() {
                return Err(closed());
            }
            let seq = front.next_seq;
            front.next_seq += 1;
            match job {
                Some(job) => {
                    let newest = Arc::new(job.clone());
                    match self.overlay.lock().entry(job.id.clone()) {
                        Entry::Occupied(mut e) => {
                            let pending = e.get_mut();
                            if status_replaces(pending.job.status, newest.status) {
                                pending.job = newest;
                            }
                            pending.last_seq = seq;
                        }
                        Entry::Vacant(e) => {
                            e.insert(Pending {
                                job: newest,
                                last_seq: seq,
                            });
                        }
                    }
                }
                None => self.sole.sent.store(seq + 1, Ordering::Release),
            }
            if let Err(e) = self.send_locked(&front, Request::Put { seq, row, done }) {
                if let Some(job) = job {
                    self.overlay.lock().remove(&job.id);
                }
                return Err(e);
            }
        }
        match answer {
            Some(answer) => answer.await.map_err(|_| closed())?,
            None => Ok(()),
        }
    }

    /// A job's stored record (not the overlay's).
    async fn read_job(&self, id: &JobId) -> Result<Option<Job>> {
        let key = id.clone();
        let dir = self.payload_dir.clone();
        self.read(move |conn| rows::get_job(conn, &dir, &key)).await
    }

    /// If a sole record was sent after the writer's settled mark read `settled` (the
    /// caller reads the mark before it looks in the database), waits for the writer to
    /// commit everything it was sent. Says whether it waited: then a look in the
    /// database sees every sole record sent before this call.
    async fn settle_sole_records(&self, settled: u64) -> Result<bool> {
        if self.sole.sent.load(Ordering::Acquire) <= settled {
            return Ok(false);
        }
        self.flush().await?;
        Ok(true)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.config.path
    }

    /// Queues a request for the writer.
    fn send(&self, request: Request) -> Result<()> {
        self.send_locked(&self.front.lock(), request)
    }

    /// Queues a request for the writer, under the lock of the channel's sending side.
    fn send_locked(&self, front: &Front, request: Request) -> Result<()> {
        let sender = front.sender.as_ref().ok_or_else(closed)?;
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        sender.send(request).map_err(|_| {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            closed()
        })
    }

    /// Runs `write` on the writer's connection, in the next batch, and returns its
    /// result once committed.
    async fn write<T, F>(&self, write: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let (request, answer) = writer::op(write);
        self.send(request)?;
        answer.await.map_err(|_| closed())?
    }

    async fn read<T, F>(&self, read: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        if self.closed.load(Ordering::Acquire) {
            return Err(closed());
        }
        self.readers.read(read).await
    }

    /// Deletes every finished job past the retention period now (the writer also does
    /// this by itself, a chunk at a time); returns how many were deleted. Their payload
    /// segments go at the writer's next sweep.
    pub async fn purge_expired_jobs(&self) -> Result<u64> {
        let retention_ms = u64::try_from(self.config.job_retention.as_millis()).unwrap_or(u64::MAX);
        let cutoff = now_ms().saturating_sub(retention_ms);
        self.write(move |conn| {
            let mut total = 0;
            loop {
                let n = rows::delete_expired_jobs(conn, cutoff, 10_000)?;
                total += n;
                if n < 10_000 {
                    return Ok(total);
                }
            }
        })
        .await
    }

    /// Commits what is queued, stops the writer and waits for it. Afterwards every
    /// call is `unavailable`.
    pub async fn close(&self) -> Result<()> {
        let flushed = self.flush().await;
        self.closed.store(true, Ordering::Release);
        drop(self.front.lock().sender.take());
        let writer = self.writer.lock().take();
        let checkpointer = self.checkpointer.lock().take();
        let joined = tokio::task::spawn_blocking(move || {
            let mut ok = writer.is_none_or(|w| w.join().is_ok());
            if let Some((stop, thread)) = checkpointer {
                drop(stop);
                ok &= thread.join().is_ok();
            }
            ok
        })
        .await;
        if !matches!(joined, Ok(true)) {
            return Err(Error::Internal("a SQLite store thread panicked".into()));
        }
        match flushed {
            Err(e) if e.code() == "unavailable" => Ok(()),
            other => other,
        }
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // The writer drains what is queued, commits, and stops by itself; so does the
        // checkpointer.
        self.front.get_mut().sender.take();
        self.checkpointer.get_mut().take();
    }
}

/// Read connections, opened on demand up to the configured number.
struct ReadPool {
    path: PathBuf,
    busy_timeout: Duration,
    idle: Mutex<Vec<Connection>>,
    permits: Semaphore,
}

impl ReadPool {
    fn connect(&self) -> Result<Connection> {
        let conn = open_connection(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY,
            self.busy_timeout,
        )?;
        conn.set_prepared_statement_cache_capacity(32);
        Ok(conn)
    }

    async fn read<T, F>(self: &Arc<Self>, read: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let _permit = self.permits.acquire().await.map_err(|_| closed())?;
        let pool = self.clone();
        tokio::task::spawn_blocking(move || {
            let idle = pool.idle.lock().pop();
            let conn = match idle {
                Some(conn) => conn,
                None => pool.connect()?,
            };
            let result = read(&conn);
            pool.idle.lock().push(conn);
            result
        })
        .await
        .map_err(|e| Error::Internal(format!("a SQLite read task failed: {e}")))?
    }
}

#[async_trait]
impl JobStore for SqliteStore {
    async fn put(&self, job: &Job, durability: Durability) -> Result<()> {
        self.put_row(Some(job), JobRow::encode(job)?, durability)
            .await
    }

    /// No overlay entry (no copy of the job, no lock, no hash): nobody but the caller,
    /// who already has the answer, knows this job's id, so the rare read of it pays
    /// instead, by waiting for the commit if it comes before.
    async fn put_sole(&self, job: &Job) -> Result<()> {
        let mut row = JobRow::encode(job)?;
        row.sole = true;
        self.put_row(None, row, Durability::Buffered).await
    }

    async fn get(&self, id: &JobId) -> Result<Option<Job>> {
        // Before anything is read: a sole record settled after this may have been
        // missed by the read below.
        let settled = self.sole.settled.load(Ordering::Acquire);
        // The overlay first: a put leaves it only after its commit, so a record
        // missing here is in the database by the time it is read.
        let pending = self.overlay.lock().get(id).map(|p| p.job.clone());
        let mut stored = self.read_job(id).await?;
        if stored.is_none() && pending.is_none() && self.settle_sole_records(settled).await? {
            stored = self.read_job(id).await?;
        }
        Ok(match (stored, pending) {
            (stored, None) => stored,
            (None, Some(pending)) => Some((*pending).clone()),
            (Some(stored), Some(pending)) => {
                Some(if status_replaces(stored.status, pending.status) {
                    (*pending).clone()
                } else {
                    stored
                })
            }
        })
    }

    async fn unfinished(&self) -> Result<Vec<Job>> {
        self.flush().await?;
        let dir = self.payload_dir.clone();
        self.read(move |conn| rows::unfinished_jobs(conn, &dir))
            .await
    }

    async fn recent_logs(
        &self,
        tenant: &TenantId,
        function_id: &str,
        limit: usize,
    ) -> Result<Vec<JobLogEntry>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // Sole records are not in the overlay: any on their way are committed first.
        let settled = self.sole.settled.load(Ordering::Acquire);
        self.settle_sole_records(settled).await?;
        // Puts not yet committed first (as in `get`): they replace their stored
        // records, or join them.
        let pending: Vec<Arc<Job>> = self
            .overlay
            .lock()
            .values()
            .filter(|p| &p.job.tenant == tenant && is_job_of(&p.job, function_id))
            .map(|p| p.job.clone())
            .collect();
        let (t, f) = (tenant.clone(), function_id.to_string());
        let mut entries = self
            .read(move |conn| rows::recent_job_logs(conn, &t, &f, limit))
            .await?;
        for p in pending {
            let entry = JobLogEntry::of(&p);
            match entries.iter_mut().find(|e| e.id == p.id) {
                Some(stored) => {
                    if status_replaces(stored.status, entry.status) {
                        *stored = entry;
                    }
                }
                None => entries.push(entry),
            }
        }
        newest_entries_first(&mut entries);
        entries.truncate(limit);
        Ok(entries)
    }

    async fn expire_finished(&self, cutoff_ms: u64, max: usize) -> Result<u64> {
        self.write(move |conn| rows::delete_expired_jobs(conn, cutoff_ms, max))
            .await
    }

    async fn flush(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.send(Request::Barrier(tx))?;
        rx.await.map_err(|_| closed())?
    }
}

#[async_trait]
impl Registry for SqliteStore {
    async fn create_version(&self, new: NewVersion) -> Result<FunctionVersion> {
        validate_function_name(&new.name)?;
        self.write(move |conn| rows::create_version(conn, new, now_ms()))
            .await
    }

    async fn get(&self, tenant: &TenantId, id: &str) -> Result<FunctionRecord> {
        let (tenant, id) = (tenant.clone(), id.to_string());
        self.read(move |conn| rows::get_function(conn, &tenant, &id))
            .await
    }

    async fn get_by_name(&self, tenant: &TenantId, name: &str) -> Result<FunctionRecord> {
        let (tenant, name) = (tenant.clone(), name.to_string());
        self.read(move |conn| rows::get_function_by_name(conn, &tenant, &name))
            .await
    }

    async fn resolve_version(
        &self,
        tenant: &TenantId,
        id_or_name: &str,
        version: Option<u32>,
    ) -> Result<FunctionVersion> {
        let (tenant, id_or_name) = (tenant.clone(), id_or_name.to_string());
        self.read(move |conn| rows::resolve_version(conn, &tenant, &id_or_name, version))
            .await
    }

    async fn list(&self, tenant: &TenantId) -> Result<Vec<FunctionRecord>> {
        let tenant = tenant.clone();
        self.read(move |conn| rows::list_functions(conn, &tenant))
            .await
    }

    async fn append_build_log(&self, id: &str, version: u32, chunk: &str) -> Result<()> {
        let (id, chunk) = (id.to_string(), chunk.to_string());
        self.write(move |conn| rows::append_build_log(conn, &id, version, &chunk))
            .await
    }

    async fn finish_build(
        &self,
        id: &str,
        version: u32,
        status: BuildStatus,
        artifact: Option<Artifact>,
    ) -> Result<()> {
        check_finish(status, &artifact)?;
        let id = id.to_string();
        self.write(move |conn| rows::finish_build(conn, &id, version, status, artifact.as_ref()))
            .await
    }

    async fn delete(&self, tenant: &TenantId, id: &str) -> Result<FunctionRecord> {
        let (tenant, id) = (tenant.clone(), id.to_string());
        self.write(move |conn| rows::delete_function(conn, &tenant, &id))
            .await
    }

    async fn unfinished_builds(&self) -> Result<Vec<FunctionVersion>> {
        // Through the writer, so every earlier registry write is seen.
        self.write(rows::unfinished_builds).await
    }

    async fn tenant_usage(&self, tenant: &TenantId) -> Result<TenantUsage> {
        let tenant = tenant.clone();
        self.read(move |conn| rows::tenant_usage(conn, &tenant))
            .await
    }

    async fn record_artifact_bytes(&self, id: &str, version: u32, bytes: u64) -> Result<()> {
        let id = id.to_string();
        self.write(move |conn| rows::record_artifact_bytes(conn, &id, version, bytes))
            .await
    }

    async fn delete_version(
        &self,
        tenant: &TenantId,
        id: &str,
        version: u32,
    ) -> Result<FunctionVersion> {
        let (tenant, id) = (tenant.clone(), id.to_string());
        self.write(move |conn| rows::delete_version(conn, &tenant, &id, version))
            .await
    }
}

#[async_trait]
impl KeyStore for SqliteStore {
    async fn create(&self, tenant: &TenantId, label: &str) -> Result<(ApiKeyInfo, ApiKeySecret)> {
        let (info, secret) = new_key(tenant, label)?;
        let (record, digest) = (info.clone(), secret.digest());
        self.write(move |conn| rows::insert_key(conn, &record, &digest))
            .await?;
        Ok((info, secret))
    }

    async fn resolve(&self, secret: &str) -> Result<Option<TenantId>> {
        if !looks_like_secret(secret) {
            return Ok(None);
        }
        let digest = secret_digest(secret);
        self.read(move |conn| rows::resolve_key(conn, &digest))
            .await
    }

    async fn list(&self, tenant: &TenantId) -> Result<Vec<ApiKeyInfo>> {
        let tenant = tenant.clone();
        self.read(move |conn| rows::list_keys(conn, &tenant)).await
    }

    async fn revoke(&self, tenant: &TenantId, key_id: &str) -> Result<ApiKeyInfo> {
        let (tenant, key_id) = (tenant.clone(), key_id.to_string());
        self.write(move |conn| rows::revoke_key(conn, &tenant, &key_id, now_ms()))
            .await
    }
}
