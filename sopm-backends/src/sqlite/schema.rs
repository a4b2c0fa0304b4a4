//! The database schema, as a list of migrations tracked in `PRAGMA user_version`.

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior};

use super::error::{Context, SqliteError};

/// Every migration, in order; migration `i` (from 0) takes the schema from version `i`
/// to `i + 1`. Append only: a released migration never changes.
const MIGRATIONS: &[&str] = &[
    // 1: functions and their versions, jobs.
    r#"
    CREATE TABLE functions (
        id          TEXT PRIMARY KEY NOT NULL,
        tenant      TEXT NOT NULL,
        name        TEXT NOT NULL,
        created_ms  INTEGER NOT NULL,
        UNIQUE (tenant, name)
    );

    CREATE TABLE versions (
        function_id TEXT NOT NULL REFERENCES functions (id) ON DELETE CASCADE,
        version     INTEGER NOT NULL,
        runtime     TEXT NOT NULL,
        handler     TEXT NOT NULL,
        limits      TEXT NOT NULL,   -- Limits as JSON
        env         TEXT NOT NULL,   -- {name: value} as JSON
        digest      TEXT NOT NULL,
        status      TEXT NOT NULL CHECK (status IN ('building', 'ready', 'failed')),
        build_log   TEXT NOT NULL DEFAULT '',
        artifact    TEXT,            -- Artifact as JSON
        created_ms  INTEGER NOT NULL,
        PRIMARY KEY (function_id, version)
    );

    CREATE TABLE jobs (
        id          TEXT PRIMARY KEY NOT NULL,
        tenant      TEXT NOT NULL,
        function    TEXT NOT NULL,   -- FunctionRef as JSON
        status      TEXT NOT NULL CHECK (status IN
                        ('queued', 'running', 'succeeded', 'failed', 'timed_out', 'cancelled', 'interrupted')),
        input       TEXT NOT NULL,   -- JSON
        output      TEXT,            -- JSON
        error       TEXT,            -- ErrorInfo as JSON
        logs        TEXT,
        timeout_ms  INTEGER NOT NULL,
        created_ms  INTEGER NOT NULL,
        started_ms  INTEGER,
        finished_ms INTEGER,
        duration_us INTEGER,
        attempts    INTEGER NOT NULL
    );

    -- Start-up recovery reads the unfinished jobs, a small set: index only those.
    CREATE INDEX jobs_unfinished ON jobs (status, created_ms)
        WHERE status IN ('queued', 'running');

    -- Retention deletes finished jobs by age.
    CREATE INDEX jobs_finished_age ON jobs (COALESCE(finished_ms, created_ms))
        WHERE status NOT IN ('queued', 'running');
    "#,
    // 2: the user function of each job (for a function's recent jobs), API keys.
    r#"
    ALTER TABLE jobs ADD COLUMN function_id TEXT;   -- user functions only; NULL for built-ins

    UPDATE jobs SET function_id = json_extract(function, '$.id')
        WHERE json_extract(function, '$.kind') = 'user';

    -- Only user-function jobs are indexed, so built-in calls pay nothing for it.
    CREATE INDEX jobs_by_function ON jobs (function_id, created_ms)
        WHERE function_id IS NOT NULL;

    CREATE TABLE api_keys (
        id          TEXT PRIMARY KEY NOT NULL,
        tenant      TEXT NOT NULL,
        label       TEXT NOT NULL,
        digest      TEXT NOT NULL UNIQUE,   -- hex SHA-256 of the secret; never the secret
        prefix      TEXT NOT NULL,
        created_ms  INTEGER NOT NULL,
        revoked_ms  INTEGER
    );

    CREATE INDEX api_keys_by_tenant ON api_keys (tenant, created_ms);
    "#,
    // 3: the named executor backend each version was built for and runs in.
    r#"
    ALTER TABLE versions ADD COLUMN executor TEXT;   -- NULL: the runtime's default
    "#,
    // 4: the size of each version's artifact, for the per-tenant artifact-bytes quota.
    r#"
    ALTER TABLE versions ADD COLUMN artifact_bytes INTEGER NOT NULL DEFAULT 0;
    "#,
    // 5: the jobs table again, its status check written as comparisons: SQLite builds a
    // temporary table for a check of `status IN (seven values)` on every insert, a
    // fifth of a waiting call's work. Same columns, rows and row ids; same indexes.
    r#"
    CREATE TABLE jobs_v5 (
        id          TEXT PRIMARY KEY NOT NULL,
        tenant      TEXT NOT NULL,
        function    TEXT NOT NULL,   -- FunctionRef as JSON
        status      TEXT NOT NULL CHECK (status = 'queued' OR status = 'running'
                        OR status = 'succeeded' OR status = 'failed' OR status = 'timed_out'
                        OR status = 'cancelled' OR status = 'interrupted'),
        input       TEXT NOT NULL,   -- JSON
        output      TEXT,            -- JSON
        error       TEXT,            -- ErrorInfo as JSON
        logs        TEXT,
        timeout_ms  INTEGER NOT NULL,
        created_ms  INTEGER NOT NULL,
        started_ms  INTEGER,
        finished_ms INTEGER,
        duration_us INTEGER,
        attempts    INTEGER NOT NULL,
        function_id TEXT             -- user functions only; NULL for built-ins
    );

    INSERT INTO jobs_v5 (rowid, id, tenant, function, status, input, output, error, logs,
                         timeout_ms, created_ms, started_ms, finished_ms, duration_us,
                         attempts, function_id)
        SELECT rowid, id, tenant, function, status, input, output, error, logs,
               timeout_ms, created_ms, started_ms, finished_ms, duration_us,
               attempts, function_id
        FROM jobs;

    DROP TABLE jobs;
    ALTER TABLE jobs_v5 RENAME TO jobs;

    CREATE INDEX jobs_unfinished ON jobs (status, created_ms)
        WHERE status IN ('queued', 'running');
    CREATE INDEX jobs_finished_age ON jobs (COALESCE(finished_ms, created_ms))
        WHERE status NOT IN ('queued', 'running');
    CREATE INDEX jobs_by_function ON jobs (function_id, created_ms)
        WHERE function_id IS NOT NULL;
    "#,
    // 6: large inputs and outputs of finished jobs in segment files beside the
    // database (sqlite/payloads.rs). A row with `payload` set keeps '' as its input and
    // no output; they are `input_len` and `output_len` (-1: none) bytes at `payload_at`
    // of segment `payload`, with `payload_crc` over both.
    r#"
    ALTER TABLE jobs ADD COLUMN payload INTEGER;
    ALTER TABLE jobs ADD COLUMN payload_at INTEGER;
    ALTER TABLE jobs ADD COLUMN input_len INTEGER;
    ALTER TABLE jobs ADD COLUMN output_len INTEGER;
    ALTER TABLE jobs ADD COLUMN payload_crc INTEGER;

    -- Per segment, the newest retention time (finished, else created) of its jobs.
    CREATE TABLE payload_segments (
        id          INTEGER PRIMARY KEY,
        newest_ms   INTEGER NOT NULL
    );
    "#,
    // 7: retention finds expired jobs by id: an id is a UUIDv7 whose time part is
    // when the job was made, so ids below the floor of the cutoff time hold every job
    // that may have expired, and the primary key's index finds them. That saves an
    // index entry per job. A row whose id does not sort by its retention time (ids
    // from before ids were time-ordered, or a job recorded with an earlier time than
    // its id's) is marked `id_unordered` and found through a small index of its own.
    r#"
    ALTER TABLE jobs ADD COLUMN id_unordered INTEGER;   -- 1, or NULL: in order

    UPDATE jobs SET id_unordered = 1
        WHERE NOT (substr(id, 15, 1) = '7'
                   AND COALESCE(finished_ms, created_ms) >= 0
                   AND substr(id, 1, 8) || substr(id, 10, 4)
                       <= printf('%012x', COALESCE(finished_ms, created_ms)));

    CREATE INDEX jobs_unordered_age ON jobs (COALESCE(finished_ms, created_ms))
        WHERE id_unordered IS NOT NULL;

    DROP INDEX jobs_finished_age;
    "#,
    // 8: finished jobs kept many to a row: the sole records of waiting calls
    // (sqlite/batches.rs). `first_ms` and `last_ms` bound the id times of the row's jobs,
    // `newest_ms` is the newest retention time among them, `records` holds the entries.
    r#"
    CREATE TABLE job_batches (
        id          INTEGER PRIMARY KEY,
        first_ms    INTEGER NOT NULL,
        last_ms     INTEGER NOT NULL,
        newest_ms   INTEGER NOT NULL,
        jobs        INTEGER NOT NULL,
        records     BLOB NOT NULL
    );
    CREATE INDEX job_batches_by_time ON job_batches (first_ms, last_ms);
    CREATE INDEX job_batches_by_age ON job_batches (newest_ms);
    "#,
];

/// The schema version this build writes.
pub(crate) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the database up to [`SCHEMA_VERSION`] in one transaction, or fails clearly if
/// it is newer than this build.
pub(crate) fn migrate(conn: &mut Connection, path: &Path) -> sopm_core::Result<()> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .context("starting the migration")?;
    let found: i64 = tx
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .context("reading user_version")?;
    if found > SCHEMA_VERSION {
        return Err(SqliteError::SchemaTooNew {
            path: path.to_path_buf(),
            found,
            known: SCHEMA_VERSION,
        }
        .into());
    }
    if found == SCHEMA_VERSION {
        return Ok(());
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
        tx.execute_batch(sql).context("running a migration")?;
        tracing::info!(path = %path.display(), version = i + 1, "migrated the SQLite schema");
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .context("writing user_version")?;
    tx.commit().context("committing the migration")
}
