//! The SQLite backend's own errors, mapped into [`sopm_core::Error`].

use std::path::PathBuf;

use sopm_core::Error;

/// What can go wrong inside the SQLite backend.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SqliteError {
    /// SQLite refused or failed an operation.
    #[error("sqlite: {context}: {source}")]
    Sqlite {
        context: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    /// A JSON column could not be written or read.
    #[error("sqlite: {context}: {source}")]
    Json {
        context: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// The file or its directory could not be created.
    #[error("sqlite: {context} {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file was written by a newer SOPM.
    #[error(
        "sqlite: the database {path} has schema version {found}, newer than the {known} this \
         build of SOPM knows; run a newer SOPM or point it at another file"
    )]
    SchemaTooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    /// The file is not in WAL mode and cannot be put in it.
    #[error("sqlite: could not put {path} in WAL mode (journal_mode is '{mode}')")]
    NotWal { path: PathBuf, mode: String },
    /// A stored value does not parse back.
    #[error("sqlite: corrupt {what}: {detail}")]
    Corrupt { what: &'static str, detail: String },
    /// The writer thread has stopped (the store was closed, or it died).
    #[error("the SQLite store is closed")]
    Closed,
}

impl From<SqliteError> for Error {
    fn from(e: SqliteError) -> Self {
        match e {
            SqliteError::Closed => Error::Unavailable(e.to_string()),
            other => Error::Storage(other.to_string()),
        }
    }
}

/// Adds what was being done to a lower-level error.
pub(crate) trait Context<T> {
    /// Maps the error into [`sopm_core::Error::Storage`], naming the operation.
    fn context(self, context: &'static str) -> sopm_core::Result<T>;
}

impl<T> Context<T> for rusqlite::Result<T> {
    fn context(self, context: &'static str) -> sopm_core::Result<T> {
        self.map_err(|source| SqliteError::Sqlite { context, source }.into())
    }
}

impl<T> Context<T> for serde_json::Result<T> {
    fn context(self, context: &'static str) -> sopm_core::Result<T> {
        self.map_err(|source| SqliteError::Json { context, source }.into())
    }
}

/// Maps an I/O error on `path` into [`SqliteError::Io`], naming what was being done.
pub(crate) fn io_error(
    context: &'static str,
    path: &std::path::Path,
) -> impl FnOnce(std::io::Error) -> SqliteError {
    let path = path.to_path_buf();
    move |source| SqliteError::Io {
        context,
        path,
        source,
    }
}

/// The error for a stored value that does not parse back.
pub(crate) fn corrupt(what: &'static str, detail: impl Into<String>) -> Error {
    SqliteError::Corrupt {
        what,
        detail: detail.into(),
    }
    .into()
}

/// The error for a store whose writer has stopped.
pub(crate) fn closed() -> Error {
    SqliteError::Closed.into()
}
