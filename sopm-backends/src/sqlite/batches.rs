//! Finished jobs kept many to a row (`job_batches`): the sole records of waiting calls.
//!
//! A job recorded once, finished, and never again ([`JobStore::put_sole`]) needs no row
//! of its own: nothing updates it, recovery never reads it, and only its id finds it.
//! The writer packs a batch's such records into one row, so SQLite inserts one row per
//! batch instead of one per job (21 columns and four indexes): the writer's work per
//! waiting math.add call, with the longer linger of `writer.rs`, fell from 3.3 to 3.6 µs
//! to 1.4 to 1.5 µs (docs/performance.md).
//!
//! - Only built-in jobs whose id is a UUIDv7 made at most [`MAX_LAG_MS`] before they
//!   finished; any other job keeps a row of its own (user functions' jobs are listed by
//!   function, and a lookup finds an entry by its id's time). A large input and output
//!   go to a payload segment as for a row, and the entry keeps where they are.
//! - A row's `first_ms` and `last_ms` bound the id times of its jobs and are at most
//!   [`SPAN_MS`] apart, so a lookup reads only the rows whose bounds hold the id's
//!   time (the `job_batches_by_time` index finds them) and scans their entries.
//! - Retention deletes a row once its newest job (`newest_ms`) has expired. A delete
//!   limited to fewer jobs than the row holds rewrites it without that many entries.
//! - `records` is a format byte ([`FORMAT`]) and then the entries, each its length
//!   (u32, little-endian) and its fields: the id (u8 length), tenant, function (JSON)
//!   and status (u32 length); then either [`INLINE`] and the input (JSON) and output,
//!   or [`IN_SEGMENT`] and where they are in a segment; then the error (JSON) and logs
//!   (u32 length, `u32::MAX` for none), and six integers (i64; an optional one after a
//!   0 or 1 byte). A damaged row reads as a storage error for the jobs it holds.
//!
//! [`JobStore::put_sole`]: sopm_core::JobStore::put_sole

use std::path::Path;

use rusqlite::{params, Connection};
use sopm_core::{Job, JobId, Result};

use super::error::{corrupt, Context};
use super::payloads::PayloadRef;
use super::record::{decode_payload, read_payload, JobRow, StoredJob};

/// The format byte `records` starts with.
const FORMAT: u8 = 1;

/// An entry's input and output follow, as JSON text.
const INLINE: u8 = 0;

/// An entry's input and output are in a payload segment, at the five integers that
/// follow (segment, offset, input length, output length or -1, CRC-32).
const IN_SEGMENT: u8 = 1;

/// The longest a batched job may have finished after its id was made.
pub(crate) const MAX_LAG_MS: i64 = 1_000;

/// The most a row's `first_ms` and `last_ms` are apart.
pub(crate) const SPAN_MS: i64 = 2_000;

/// The most entries one row holds.
const MAX_JOBS: usize = 512;

/// A row is closed once its records are this long.
const MAX_BYTES: usize = 1 << 20;

/// The id time of `row` if it may be kept in a batch row, else `None`.
pub(crate) fn batchable(row: &JobRow) -> Option<i64> {
    if !row.sole
        || matches!(row.status, "queued" | "running")
        || row.function_id.is_some()
        || row.id_unordered.is_some()
        || row.id.as_str().len() > usize::from(u8::MAX)
    {
        return None;
    }
    let made = i64::try_from(row.made_ms?).ok()?;
    let finished = row.finished_ms?;
    (finished >= made && finished - made <= MAX_LAG_MS).then_some(made)
}

/// One row being filled.
struct Batch {
    first_ms: i64,
    last_ms: i64,
    newest_ms: i64,
    jobs: usize,
    records: Vec<u8>,
}

impl Batch {
    fn new() -> Self {
        Batch {
            first_ms: i64::MAX,
            last_ms: i64::MIN,
            newest_ms: i64::MIN,
            jobs: 0,
            records: vec![FORMAT],
        }
    }

    /// Whether a job made at `made` may join without breaking the row's bounds.
    fn takes(&self, made: i64) -> bool {
        self.jobs == 0 || made.max(self.last_ms) - made.min(self.first_ms) <= SPAN_MS
    }

    fn is_full(&self) -> bool {
        self.jobs >= MAX_JOBS || self.records.len() >= MAX_BYTES
    }

    fn push(&mut self, row: &JobRow, made: i64) {
        self.first_ms = self.first_ms.min(made);
        self.last_ms = self.last_ms.max(made);
        self.newest_ms = self.newest_ms.max(row.retention_ms());
        self.jobs += 1;
        write_entry(&mut self.records, row);
    }

    fn insert(&self, conn: &Connection) -> rusqlite::Result<()> {
        conn.prepare_cached(
            "INSERT INTO job_batches (first_ms, last_ms, newest_ms, jobs, records)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![
            self.first_ms,
            self.last_ms,
            self.newest_ms,
            self.jobs as i64,
            self.records
        ])?;
        Ok(())
    }
}

/// Inserts `rows` (each with its id time from [`batchable`]) as batch rows, in as
/// few rows as the bounds allow.
pub(crate) fn insert(conn: &Connection, rows: &[(&JobRow, i64)]) -> rusqlite::Result<()> {
    let mut open: Vec<Batch> = Vec::new();
    for &(row, made) in rows {
        let i = match open.iter().position(|b| b.takes(made)) {
            Some(i) => i,
            None => {
                open.push(Batch::new());
                open.len() - 1
            }
        };
        open[i].push(row, made);
        if open[i].is_full() {
            open.swap_remove(i).insert(conn)?;
        }
    }
    for batch in &open {
        batch.insert(conn)?;
    }
    Ok(())
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => put_str(out, s),
        None => out.extend_from_slice(&u32::MAX.to_le_bytes()),
    }
}

fn put_opt_int(out: &mut Vec<u8>, v: Option<i64>) {
    out.push(u8::from(v.is_some()));
    out.extend_from_slice(&v.unwrap_or(0).to_le_bytes());
}

/// Appends `row`'s entry to `out`.
fn write_entry(out: &mut Vec<u8>, row: &JobRow) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    let id = row.id.as_str();
    out.push(id.len() as u8);
    out.extend_from_slice(id.as_bytes());
    put_str(out, row.tenant.as_str());
    put_str(out, &row.function);
    put_str(out, row.status);
    match &row.payload {
        None => {
            out.push(INLINE);
            put_str(out, &row.input);
            put_opt_str(out, row.output.as_deref());
        }
        Some(at) => {
            out.push(IN_SEGMENT);
            for v in [at.segment, at.offset, at.input_len, at.output_len, at.crc] {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
    }
    put_opt_str(out, row.error.as_deref());
    put_opt_str(out, row.logs.as_deref());
    out.extend_from_slice(&row.timeout_ms.to_le_bytes());
    out.extend_from_slice(&row.created_ms.to_le_bytes());
    put_opt_int(out, row.started_ms);
    put_opt_int(out, row.finished_ms);
    put_opt_int(out, row.duration_us);
    out.extend_from_slice(&row.attempts.to_le_bytes());
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

/// Reads an entry's fields in order; any read past its end is a damaged row.
struct Reader<'a> {
    bytes: &'a [u8],
}

fn damaged() -> sopm_core::Error {
    corrupt(
        "job batch",
        "an entry is cut short or malformed".to_string(),
    )
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.bytes.len() {
            return Err(damaged());
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn i64(&mut self) -> Result<i64> {
        let mut b = [0; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(i64::from_le_bytes(b))
    }

    fn text(&mut self, n: usize) -> Result<&'a str> {
        std::str::from_utf8(self.take(n)?).map_err(|_| damaged())
    }

    fn str(&mut self) -> Result<&'a str> {
        let n = self.u32()? as usize;
        self.text(n)
    }

    fn opt_str(&mut self) -> Result<Option<&'a str>> {
        match self.u32()? {
            u32::MAX => Ok(None),
            n => self.text(n as usize).map(Some),
        }
    }

    fn opt_int(&mut self) -> Result<Option<i64>> {
        let some = self.take(1)?[0];
        let v = self.i64()?;
        match some {
            0 => Ok(None),
            1 => Ok(Some(v)),
            _ => Err(damaged()),
        }
    }
}

/// The entries of `records`, after its format byte is checked.
fn body(records: &[u8]) -> Result<Reader<'_>> {
    let mut reader = Reader { bytes: records };
    match reader.take(1)?[0] {
        FORMAT => Ok(reader),
        other => Err(corrupt("job batch format", other.to_string())),
    }
}

impl<'a> Reader<'a> {
    /// The next entry's bytes, or `None` after the last.
    fn entry(&mut self) -> Result<Option<&'a [u8]>> {
        if self.bytes.is_empty() {
            return Ok(None);
        }
        let len = self.u32()? as usize;
        self.take(len).map(Some)
    }
}

/// The entries of `records`: each entry's id and its bytes (after the id).
fn entries(records: &[u8]) -> impl Iterator<Item = Result<(&str, &[u8])>> {
    let mut reader = body(records);
    std::iter::from_fn(move || {
        let entry = reader.as_mut().map_err(|e| e.clone()).and_then(|r| {
            let Some(bytes) = r.entry()? else {
                return Ok(None);
            };
            let mut entry = Reader { bytes };
            let id_len = usize::from(entry.take(1)?[0]);
            Ok(Some((entry.text(id_len)?, entry.bytes)))
        });
        if entry.is_err() {
            // A damaged row ends here.
            reader = Ok(Reader { bytes: &[] });
        }
        entry.transpose()
    })
}

/// Decodes an entry's bytes after its id; `payload_dir` holds the segments its input
/// and output may be in.
fn decode(payload_dir: &Path, id: &str, bytes: &[u8]) -> Result<Job> {
    let mut r = Reader { bytes };
    let tenant = r.str()?;
    let function = r.str()?;
    let status = r.str()?;
    let payload = match r.take(1)?[0] {
        INLINE => Payload::Inline(r.str()?, r.opt_str()?),
        IN_SEGMENT => Payload::InSegment(PayloadRef {
            segment: r.i64()?,
            offset: r.i64()?,
            input_len: r.i64()?,
            output_len: r.i64()?,
            crc: r.i64()?,
        }),
        _ => return Err(damaged()),
    };
    let error = r.opt_str()?;
    let logs = r.opt_str()?.map(str::to_string);
    let stored = StoredJob {
        id,
        tenant,
        function,
        status,
        error,
        logs,
        timeout_ms: r.i64()?,
        created_ms: r.i64()?,
        started_ms: r.opt_int()?,
        finished_ms: r.opt_int()?,
        duration_us: r.opt_int()?,
        attempts: r.i64()?,
    };
    let (input, output) = match payload {
        Payload::Inline(input, output) => {
            decode_payload(input.as_bytes(), output.map(str::as_bytes))?
        }
        Payload::InSegment(at) => read_payload(payload_dir, id, &at)?,
    };
    stored.into_job(input, output)
}

/// Where an entry's input and output are.
enum Payload<'a> {
    /// In the entry: the input's JSON and the output's.
    Inline(&'a str, Option<&'a str>),
    /// In a payload segment.
    InSegment(PayloadRef),
}

/// The job `id` if a batch row holds it; `payload_dir` holds the payload segments.
pub(crate) fn find(conn: &Connection, payload_dir: &Path, id: &JobId) -> Result<Option<Job>> {
    let Some(made) = id.unix_ms().and_then(|t| i64::try_from(t).ok()) else {
        return Ok(None);
    };
    let mut stmt = conn
        .prepare_cached(
            "SELECT records FROM job_batches
             WHERE first_ms BETWEEN ?1 - ?2 AND ?1 AND last_ms >= ?1",
        )
        .context("reading a job")?;
    let mut rows = stmt
        .query(params![made, SPAN_MS])
        .context("reading a job")?;
    while let Some(row) = rows.next().context("reading a job")? {
        let records = row
            .get_ref(0)
            .and_then(|v| v.as_blob().map_err(Into::into))
            .context("reading a job")?;
        for entry in entries(records) {
            let (entry_id, bytes) = entry?;
            if entry_id == id.as_str() {
                return decode(payload_dir, entry_id, bytes).map(Some);
            }
        }
    }
    Ok(None)
}

/// Deletes up to `limit` jobs of batch rows whose newest job finished before
/// `cutoff_ms`, oldest rows first; returns how many went.
pub(crate) fn delete_expired(conn: &Connection, cutoff_ms: i64, limit: usize) -> Result<usize> {
    let mut deleted = 0;
    let mut stmt = conn
        .prepare_cached(
            "SELECT id, jobs FROM job_batches WHERE newest_ms < ?1 ORDER BY newest_ms LIMIT ?2",
        )
        .context("deleting expired jobs")?;
    let found: Vec<(i64, i64)> = stmt
        .query_map(params![cutoff_ms, limit as i64], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .and_then(|rows| rows.collect())
        .context("deleting expired jobs")?;
    for (row, jobs) in found {
        let room = limit - deleted;
        if room == 0 {
            break;
        }
        let jobs = usize::try_from(jobs).unwrap_or(0);
        if jobs <= room {
            conn.prepare_cached("DELETE FROM job_batches WHERE id = ?1")
                .and_then(|mut s| s.execute([row]))
                .context("deleting expired jobs")?;
            deleted += jobs;
        } else {
            drop_first_entries(conn, row, room)?;
            deleted += room;
        }
    }
    Ok(deleted)
}

/// Rewrites batch row `row` without its first `n` entries (fewer than it holds).
fn drop_first_entries(conn: &Connection, row: i64, n: usize) -> Result<()> {
    let records: Vec<u8> = conn
        .prepare_cached("SELECT records FROM job_batches WHERE id = ?1")
        .and_then(|mut s| s.query_row([row], |r| r.get(0)))
        .context("deleting expired jobs")?;
    let mut reader = body(&records)?;
    for _ in 0..n {
        reader.entry()?.ok_or_else(damaged)?;
    }
    let rest = reader.bytes;
    let mut kept = Vec::with_capacity(1 + rest.len());
    kept.push(FORMAT);
    kept.extend_from_slice(rest);
    conn.prepare_cached("UPDATE job_batches SET records = ?2, jobs = jobs - ?3 WHERE id = ?1")
        .and_then(|mut s| s.execute(params![row, kept, n as i64]))
        .context("deleting expired jobs")?;
    Ok(())
}
