//! The memory request bodies may hold at once: every POST reserves, before its body is
//! read, the most its body can cost once read and parsed, and gives it back when its
//! answer is made. Requests past the budget wait their turn (their bytes stay in the
//! kernel's socket buffers), so the server's peak memory is bounded by the budget
//! whatever the number of connections.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::CONTENT_LENGTH;
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use tokio::sync::Semaphore;

use crate::body::{is_media_type, MULTIPART_ROUTE};
use crate::upload::UploadLimits;

/// How much a JSON body can grow when parsed: serde_json's `Value` is 32 bytes, so
/// `[0,0,…]` takes 16 bytes of `Value` per byte of text, and a growing `Vec` briefly
/// holds twice that.
pub const JSON_EXPANSION: usize = 32;

/// The budget counts in KiB, so a `u32` of permits covers 4 TiB.
const UNIT: usize = 1024;

/// Bytes of memory request bodies may hold at once, and the body limits that say what
/// one request can cost.
#[derive(Debug, Clone)]
pub struct BodyBudget {
    permits: Arc<Semaphore>,
    total_units: usize,
    max_body_bytes: usize,
    uploads: UploadLimits,
}

impl BodyBudget {
    /// A budget of `bytes` (at least one KiB) for requests under `max_body_bytes` (the
    /// body limit of every POST but uploads) and the upload limits `uploads`.
    pub fn new(bytes: usize, max_body_bytes: usize, uploads: UploadLimits) -> Self {
        let total_units = (bytes / UNIT).clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        BodyBudget {
            permits: Arc::new(Semaphore::new(total_units)),
            total_units,
            max_body_bytes,
            uploads,
        }
    }
}

/// The most a POST's body can cost: its length (declared, or the route's limit when
/// it is sent chunked) times what parsing makes of it. A multipart upload is held as
/// bytes (archive) plus the files it unpacks to.
pub(crate) fn reservation(budget: &BodyBudget, req: &Request) -> usize {
    let upload = req.uri().path() == MULTIPART_ROUTE;
    let multipart = upload && is_media_type(req.headers(), "multipart/form-data");
    let limit = match (upload, multipart) {
        (true, true) => budget.uploads.max_multipart_body,
        (true, false) => budget.uploads.max_json_body,
        (false, _) => budget.max_body_bytes,
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    // Past the limit the body is refused (413) before it is all read.
    let len = declared.unwrap_or(limit).min(limit);
    if multipart {
        let unpacked = usize::try_from(budget.uploads.max_total_bytes).unwrap_or(usize::MAX);
        len.saturating_mul(2).saturating_add(unpacked)
    } else {
        len.saturating_mul(JSON_EXPANSION)
    }
}

/// Holds a POST until its reservation fits in the budget, and for as long as its
/// handler runs.
pub(crate) async fn admit(State(budget): State<BodyBudget>, req: Request, next: Next) -> Response {
    if req.method() != Method::POST {
        return next.run(req).await;
    }
    let units = reservation(&budget, &req)
        .div_ceil(UNIT)
        .clamp(1, budget.total_units);
    // The semaphore is never closed, so acquiring only waits.
    let _held = budget
        .permits
        .clone()
        .acquire_many_owned(units as u32)
        .await
        .ok();
    next.run(req).await
}
