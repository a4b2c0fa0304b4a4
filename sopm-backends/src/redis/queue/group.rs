//! The consumer group `workers` on a stream, as the job and the build queues read it:
//! creating it, a blocking read of new entries, taking over entries idle longer than a
//! lease, and their replies decoded into entries with their fields.

use std::time::Duration;

use redis::Value;
use sopm_core::Result;

use crate::redis::RedisConnection;

/// The consumer group every worker reads in.
pub const GROUP: &str = "workers";

/// Creates the group on `stream` (and the stream), reading from its first entry; a
/// group that exists already is left as it is.
pub(crate) async fn create(conn: &RedisConnection, stream: &str) -> Result<()> {
    let r: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut conn.manager())
        .await;
    match r {
        Ok(()) => Ok(()),
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        Err(e) => Err(conn.error(e)),
    }
}

/// `XREADGROUP`: up to `count` new entries per stream of `streams` for the consumer
/// `node`, waiting up to `block` for the first (its reply goes to [`stream_entries`]).
pub(crate) fn read_new(
    node: &str,
    count: usize,
    block: Duration,
    streams: &[String],
) -> redis::Cmd {
    let mut cmd = redis::cmd("XREADGROUP");
    cmd.arg("GROUP")
        .arg(GROUP)
        .arg(node)
        .arg("COUNT")
        .arg(count)
        .arg("BLOCK")
        .arg(block.as_millis() as u64)
        .arg("STREAMS");
    for s in streams {
        cmd.arg(s);
    }
    for _ in streams {
        cmd.arg(">");
    }
    cmd
}

/// `XAUTOCLAIM`: up to `count` entries of `stream` idle for longer than `lease`, given
/// to the consumer `node` (its reply goes to [`taken_over`]).
pub(crate) fn take_idle(node: &str, stream: &str, lease: Duration, count: usize) -> redis::Cmd {
    let mut cmd = redis::cmd("XAUTOCLAIM");
    cmd.arg(stream)
        .arg(GROUP)
        .arg(node)
        .arg(lease.as_millis() as u64)
        .arg("0-0")
        .arg("COUNT")
        .arg(count);
    cmd
}

/// A bulk or simple string reply as text (numbers too).
pub(crate) fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

/// One stream entry: its id and its fields.
#[derive(Debug)]
pub(crate) struct Entry {
    /// The entry id.
    pub(crate) id: String,
    fields: Vec<(String, String)>,
}

impl Entry {
    /// The value of the field `name`, if the entry has it.
    pub(crate) fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The entries of an `XREADGROUP` reply, per stream: `(stream, entries)`.
pub(crate) fn stream_entries(reply: Value) -> Vec<(String, Vec<Entry>)> {
    let pairs: Vec<(Value, Value)> = match reply {
        Value::Array(streams) => streams
            .into_iter()
            .filter_map(|s| match s {
                Value::Array(mut kv) if kv.len() == 2 => {
                    let entries = kv.pop()?;
                    let name = kv.pop()?;
                    Some((name, entries))
                }
                _ => None,
            })
            .collect(),
        Value::Map(m) => m,
        _ => Vec::new(),
    };
    pairs
        .into_iter()
        .filter_map(|(name, entries)| Some((text(&name)?, entry_list(entries))))
        .collect()
}

/// The entries an `XAUTOCLAIM` reply took over.
pub(crate) fn taken_over(reply: Value) -> Vec<Entry> {
    let Value::Array(parts) = reply else {
        return Vec::new();
    };
    parts.into_iter().nth(1).map(entry_list).unwrap_or_default()
}

/// `[[id, [field, value, ...]], ...]` as entries.
fn entry_list(entries: Value) -> Vec<Entry> {
    let Value::Array(entries) = entries else {
        return Vec::new();
    };
    entries
        .into_iter()
        .filter_map(|e| {
            let Value::Array(mut parts) = e else {
                return None;
            };
            let fields = if parts.len() > 1 { parts.pop() } else { None };
            let id = text(parts.first()?)?;
            let fields = match fields {
                Some(Value::Array(kv)) => kv
                    .chunks(2)
                    .filter_map(|p| Some((text(p.first()?)?, text(p.get(1)?)?)))
                    .collect(),
                Some(Value::Map(kv)) => kv
                    .iter()
                    .filter_map(|(k, v)| Some((text(k)?, text(v)?)))
                    .collect(),
                _ => Vec::new(),
            };
            Some(Entry { id, fields })
        })
        .collect()
}
