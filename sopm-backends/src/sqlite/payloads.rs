//! Large inputs and outputs of finished jobs, kept beside the database in append-only
//! segment files (`<database>-payloads/<n>.seg`): written once, found by reference.
//!
//! A finished job's record is written once and never changed, so what SQLite does
//! with a large one (a page of its own, written to the WAL, read back and written
//! again by the checkpoint) buys nothing. The writer appends the input and output of
//! such jobs to the current segment, one write per batch, syncs it (with
//! `synchronous=FULL`) before the batch commits, and the row keeps where they are and
//! a CRC-32 of them.
//!
//! - Unfinished jobs keep their input in the row: it may be rewritten, and start-up
//!   recovery reads it.
//! - A segment grows to about [`SEGMENT_BYTES`]; every opening of the store starts a
//!   new one, so a tail torn by a crash is never written after.
//! - `payload_segments` keeps, per segment, the newest retention time (finished, else
//!   created) of the jobs in it. Once the retention sweep has deleted every job older
//!   than its cutoff, a segment whose newest job is older than that is no longer
//!   referenced: its row and its file go.
//! - Bytes that are missing or do not match their checksum (a file removed by hand, a
//!   power loss under `synchronous=NORMAL`) read as a storage error naming the file,
//!   for that job only.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection};
use sopm_core::types::now_ms;
use sopm_core::Result;

use super::error::{corrupt, io_error as io, Context};

/// A finished job whose input and output (as JSON text, together) are at least this
/// long keeps them in a segment; smaller ones share pages in the row.
pub(crate) const MIN_BYTES: usize = 1024;

/// A segment this long is closed; the next batch starts a new one.
pub(crate) const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// The most one job's payload may claim when read back (a guard against a damaged row
/// asking for an absurd allocation).
const MAX_READ_BYTES: i64 = 1 << 32;

/// Where a job's input and output are: `input_len` bytes of input JSON at `offset` of
/// segment `segment`, then `output_len` bytes of output JSON (`-1`: no output).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PayloadRef {
    pub(crate) segment: i64,
    pub(crate) offset: i64,
    pub(crate) input_len: i64,
    pub(crate) output_len: i64,
    /// CRC-32 of the input bytes followed by the output bytes.
    pub(crate) crc: i64,
}

/// The segment directory of the database file `db`.
pub(crate) fn dir_of(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-payloads");
    PathBuf::from(name)
}

fn segment_path(dir: &Path, id: i64) -> PathBuf {
    dir.join(format!("{id:010}.seg"))
}

fn segment_id(name: &str) -> Option<i64> {
    name.strip_suffix(".seg")?.parse().ok()
}

/// Reads a job's input and output back: the bytes of both, input first
/// (`at.input_len` of them), checked against their CRC.
pub(crate) fn read(dir: &Path, at: &PayloadRef) -> Result<Vec<u8>> {
    let path = segment_path(dir, at.segment);
    let total = at.input_len.saturating_add(at.output_len.max(0));
    if at.offset < 0 || at.input_len < 0 || at.output_len < -1 || total > MAX_READ_BYTES {
        return Err(corrupt(
            "job payload reference",
            format!("{at:?} in {}", path.display()),
        ));
    }
    let file = File::open(&path).map_err(io("opening the job payload segment", &path))?;
    let mut bytes = vec![0u8; total as usize];
    file.read_exact_at(&mut bytes, at.offset as u64)
        .map_err(|e| {
            corrupt(
                "job payload",
                format!(
                    "{}: {total} bytes at offset {} could not be read ({e})",
                    path.display(),
                    at.offset
                ),
            )
        })?;
    if i64::from(crc32fast::hash(&bytes)) != at.crc {
        return Err(corrupt(
            "job payload",
            format!(
                "{}: the {total} bytes at offset {} do not match their checksum",
                path.display(),
                at.offset
            ),
        ));
    }
    Ok(bytes)
}

/// The segment being appended to.
struct Current {
    id: i64,
    path: PathBuf,
    file: File,
    len: u64,
}

/// The writer's side: appends, and forgets expired segments. Owned by the writer
/// thread.
pub(crate) struct Segments {
    dir: PathBuf,
    sync: bool,
    next_id: i64,
    current: Option<Current>,
    /// Appended bytes of the batch being stored (kept for its allocation).
    buffer: Vec<u8>,
}

impl Segments {
    /// Opens the segment directory of the database file `db`, creating it private
    /// (`0700`, or narrowing it to that), and registers any segment file that
    /// `payload_segments` does not know, to be kept a whole retention period. `sync`:
    /// each batch's appends are synced before the batch commits.
    pub(crate) fn open(db: &Path, conn: &Connection, sync: bool) -> Result<Self> {
        let dir = dir_of(db);
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .map_err(io("creating the job payload directory", &dir))?;
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io("making the job payload directory private", &dir))?;
        let known: BTreeSet<i64> = conn
            .prepare("SELECT id FROM payload_segments")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .context("reading the job payload segments")?;
        let mut newest = known.last().copied().unwrap_or(0);
        let entries =
            std::fs::read_dir(&dir).map_err(io("listing the job payload directory", &dir))?;
        for entry in entries {
            let entry = entry.map_err(io("listing the job payload directory", &dir))?;
            let Some(id) = entry.file_name().to_str().and_then(segment_id) else {
                continue;
            };
            newest = newest.max(id);
            if !known.contains(&id) {
                conn.execute(
                    "INSERT INTO payload_segments (id, newest_ms) VALUES (?1, ?2)",
                    params![id, now_ms() as i64],
                )
                .context("registering a job payload segment")?;
                tracing::warn!(segment = %entry.path().display(), "registered a job payload segment the database did not list");
            }
        }
        Ok(Segments {
            dir,
            sync,
            next_id: newest + 1,
            current: None,
            buffer: Vec::new(),
        })
    }

    /// The segment to append to: the current one, or a new one once it is full.
    fn current(&mut self) -> Result<&mut Current> {
        if self
            .current
            .as_ref()
            .is_some_and(|c| c.len >= SEGMENT_BYTES)
        {
            self.current = None;
        }
        if self.current.is_none() {
            // A number is never tried twice: after a failure (a file of that name
            // already there, say) the next batch tries the next one.
            let id = self.next_id;
            self.next_id += 1;
            let path = segment_path(&self.dir, id);
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(io("creating a job payload segment", &path))?;
            self.current = Some(Current {
                id,
                path,
                file,
                len: 0,
            });
        }
        Ok(self.current.as_mut().expect("set above"))
    }

    /// Appends each `(input, output)` of `payloads` to the current segment with one
    /// write (and, with `sync`, one sync), and answers where each went. On an error
    /// nothing refers to what was written, and the next call starts a new segment.
    pub(crate) fn append(&mut self, payloads: &[(&str, Option<&str>)]) -> Result<Vec<PayloadRef>> {
        let sync = self.sync;
        let mut buffer = std::mem::take(&mut self.buffer);
        buffer.clear();
        let appended = self.current().and_then(|current| {
            let base = current.len;
            let mut refs = Vec::with_capacity(payloads.len());
            for &(input, output) in payloads {
                let offset = base + buffer.len() as u64;
                buffer.extend_from_slice(input.as_bytes());
                let mut crc = crc32fast::Hasher::new();
                crc.update(input.as_bytes());
                if let Some(output) = output {
                    buffer.extend_from_slice(output.as_bytes());
                    crc.update(output.as_bytes());
                }
                refs.push(PayloadRef {
                    segment: current.id,
                    offset: offset as i64,
                    input_len: input.len() as i64,
                    output_len: output.map_or(-1, |o| o.len() as i64),
                    crc: i64::from(crc.finalize()),
                });
            }
            current
                .file
                .write_all_at(&buffer, base)
                .map_err(io("appending to a job payload segment", &current.path))?;
            if sync {
                current
                    .file
                    .sync_data()
                    .map_err(io("syncing a job payload segment", &current.path))?;
            }
            current.len += buffer.len() as u64;
            Ok(refs)
        });
        self.buffer = buffer;
        if appended.is_err() {
            self.current = None;
        }
        appended
    }

    /// Forgets, in the caller's transaction, every segment but the current one whose
    /// newest job is older than `cutoff_ms`; call it only once every finished job
    /// older than that is deleted. Returns the segments to remove after the commit.
    pub(crate) fn expire(&self, conn: &Connection, cutoff_ms: u64) -> Result<Vec<i64>> {
        let current = self.current.as_ref().map_or(-1, |c| c.id);
        let cutoff = i64::try_from(cutoff_ms).unwrap_or(i64::MAX);
        let ids: Vec<i64> = conn
            .prepare_cached(
                "DELETE FROM payload_segments WHERE newest_ms < ?1 AND id != ?2 RETURNING id",
            )
            .and_then(|mut s| {
                s.query_map(params![cutoff, current], |r| r.get(0))?
                    .collect()
            })
            .context("forgetting expired job payload segments")?;
        Ok(ids)
    }

    /// Removes the files of segments [`expire`](Self::expire) forgot.
    pub(crate) fn remove(&self, ids: &[i64]) {
        for &id in ids {
            let path = segment_path(&self.dir, id);
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    tracing::debug!(segment = %path.display(), "removed an expired job payload segment")
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(segment = %path.display(), error = %e, "could not remove an expired job payload segment")
                }
            }
        }
    }
}

/// Records, in the batch's transaction, that segment `id` holds jobs up to retention
/// time `newest_ms`.
pub(crate) fn record(conn: &Connection, id: i64, newest_ms: i64) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO payload_segments (id, newest_ms) VALUES (?1, ?2)
         ON CONFLICT (id) DO UPDATE SET newest_ms = max(newest_ms, excluded.newest_ms)",
    )
    .and_then(|mut s| s.execute(params![id, newest_ms]))
    .map(drop)
    .context("recording a job payload segment")
}
