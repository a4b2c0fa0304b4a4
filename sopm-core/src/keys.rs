//! API keys: the [`KeyStore`] trait that maps a bearer secret to its tenant, an
//! in-memory store, and [`CachedKeyStore`], which keeps recent answers so a lookup
//! per request stays cheap.
//!
//! A secret is `sopm_` followed by 64 hex digits (32 random bytes). Stores keep only
//! its SHA-256 digest, so a stolen database does not give working keys, and looking a
//! secret up by its digest needs no constant-time comparison. Secrets never appear in
//! `Debug` output or logs: [`ApiKeySecret`] hides its text unless asked with
//! [`expose`](ApiKeySecret::expose).

use std::collections::HashMap;
use std::fmt::{self, Debug};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::types::{now_ms, truncate_for_message, TenantId};

/// The prefix every secret starts with (so secret scanners can spot leaked keys).
pub const SECRET_PREFIX: &str = "sopm_";

/// What is known about a key, without its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyInfo {
    /// The key's id (`key_…`), used to list and revoke it.
    pub id: String,
    /// The tenant the key acts for.
    pub tenant: TenantId,
    /// A label for people (`laptop`, `ci`).
    pub label: String,
    /// The first characters of the secret (`sopm_1a2b…`), to tell keys apart.
    pub prefix: String,
    /// When it was made (ms since the epoch).
    pub created_ms: u64,
    /// When it was revoked; a revoked key resolves to nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_ms: Option<u64>,
}

/// A key's secret, shown once at creation. Its `Debug` form is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKeySecret(String);

impl ApiKeySecret {
    /// A fresh random secret: `sopm_` and 32 random bytes in hex.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut bytes);
        let mut s = String::with_capacity(SECRET_PREFIX.len() + 64);
        s.push_str(SECRET_PREFIX);
        for b in bytes {
            s.push_str(&format!("{b:02x}"));
        }
        ApiKeySecret(s)
    }

    /// The secret's text, to hand to its owner once.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The digest stores keep.
    pub fn digest(&self) -> String {
        secret_digest(&self.0)
    }

    /// The first characters, for [`ApiKeyInfo::prefix`].
    pub fn display_prefix(&self) -> String {
        format!("{}…", &self.0[..SECRET_PREFIX.len() + 8])
    }
}

impl Debug for ApiKeySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKeySecret(<redacted>)")
    }
}

/// The hex SHA-256 digest of a presented secret, as stores index it.
pub fn secret_digest(secret: &str) -> String {
    let d = Sha256::digest(secret.as_bytes());
    let mut s = String::with_capacity(64);
    for b in d {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// A fresh key id.
pub fn new_key_id() -> String {
    let mut bytes = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut bytes);
    let mut s = String::from("key_");
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Checks a key label: at most 128 characters, no control characters.
pub fn validate_label(label: &str) -> Result<()> {
    if label.chars().count() > 128 || label.chars().any(char::is_control) {
        return Err(Error::invalid(
            "label: expected at most 128 characters and no control characters",
        ));
    }
    Ok(())
}

/// Makes a new key for `tenant`: its record and its secret. Stores call this in
/// [`KeyStore::create`] and keep the record with [`ApiKeySecret::digest`].
pub fn new_key(tenant: &TenantId, label: &str) -> Result<(ApiKeyInfo, ApiKeySecret)> {
    validate_label(label)?;
    let secret = ApiKeySecret::generate();
    let info = ApiKeyInfo {
        id: new_key_id(),
        tenant: tenant.clone(),
        label: label.to_string(),
        prefix: secret.display_prefix(),
        created_ms: now_ms(),
        revoked_ms: None,
    };
    Ok((info, secret))
}

/// Whether `secret` has the shape of a SOPM secret (cheap check before a lookup).
pub fn looks_like_secret(secret: &str) -> bool {
    secret.len() == SECRET_PREFIX.len() + 64
        && secret.starts_with(SECRET_PREFIX)
        && secret[SECRET_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit())
}

/// Stores API keys. Implementations: memory (here), SQLite (`sopm-backends`).
///
/// Contract:
/// - Only the SHA-256 digest of a secret is stored; `create` returns the secret once.
/// - `resolve` answers the tenant of an active key, and `None` for an unknown,
///   malformed or revoked secret (never an error for those).
/// - `list` and `revoke` see only the tenant's own keys: another tenant's key id is
///   `not_found`, as for an id that does not exist. Revoking a revoked key returns it
///   unchanged.
#[async_trait]
pub trait KeyStore: Debug + Send + Sync + 'static {
    /// Makes a key for `tenant`, returning its record and its secret.
    async fn create(&self, tenant: &TenantId, label: &str) -> Result<(ApiKeyInfo, ApiKeySecret)>;

    /// The tenant of an active key.
    async fn resolve(&self, secret: &str) -> Result<Option<TenantId>>;

    /// The tenant's keys, revoked ones included, oldest first.
    async fn list(&self, tenant: &TenantId) -> Result<Vec<ApiKeyInfo>>;

    /// Revokes one of the tenant's keys and returns its record.
    async fn revoke(&self, tenant: &TenantId, key_id: &str) -> Result<ApiKeyInfo>;
}

/// The error for an unknown key id.
pub fn no_key(key_id: &str) -> Error {
    Error::not_found(format!("no key with id '{}'", truncate_for_message(key_id)))
}

/// Keys in memory, for tests and for embedding.
#[derive(Debug, Default)]
pub struct MemoryKeyStore {
    // (digest, record), oldest first
    keys: RwLock<Vec<(String, ApiKeyInfo)>>,
}

impl MemoryKeyStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl KeyStore for MemoryKeyStore {
    async fn create(&self, tenant: &TenantId, label: &str) -> Result<(ApiKeyInfo, ApiKeySecret)> {
        let (info, secret) = new_key(tenant, label)?;
        self.keys.write().push((secret.digest(), info.clone()));
        Ok((info, secret))
    }

    async fn resolve(&self, secret: &str) -> Result<Option<TenantId>> {
        if !looks_like_secret(secret) {
            return Ok(None);
        }
        let digest = secret_digest(secret);
        Ok(self
            .keys
            .read()
            .iter()
            .find(|(d, k)| *d == digest && k.revoked_ms.is_none())
            .map(|(_, k)| k.tenant.clone()))
    }

    async fn list(&self, tenant: &TenantId) -> Result<Vec<ApiKeyInfo>> {
        Ok(self
            .keys
            .read()
            .iter()
            .filter(|(_, k)| &k.tenant == tenant)
            .map(|(_, k)| k.clone())
            .collect())
    }

    async fn revoke(&self, tenant: &TenantId, key_id: &str) -> Result<ApiKeyInfo> {
        let mut keys = self.keys.write();
        let (_, key) = keys
            .iter_mut()
            .find(|(_, k)| k.id == key_id && &k.tenant == tenant)
            .ok_or_else(|| no_key(key_id))?;
        if key.revoked_ms.is_none() {
            key.revoked_ms = Some(now_ms());
        }
        Ok(key.clone())
    }
}

/// Most answers a [`CachedKeyStore`] keeps; past it, the cache starts over.
const CACHE_ENTRIES: usize = 10_000;

/// Wraps a [`KeyStore`] and remembers the tenants of recently resolved secrets (by
/// digest) for a short time, so a lookup per request does not reach storage.
/// Unknown secrets are not remembered, so a key made by another process works at
/// once. A revoke through this wrapper takes effect at once; a revoke made elsewhere
/// (`sopm keys revoke` on the database of a running server) within `ttl`.
#[derive(Debug)]
pub struct CachedKeyStore {
    inner: Arc<dyn KeyStore>,
    ttl: Duration,
    cache: Mutex<HashMap<String, (TenantId, Instant)>>,
}

impl CachedKeyStore {
    /// Caches the answers of `inner` for `ttl`.
    pub fn new(inner: Arc<dyn KeyStore>, ttl: Duration) -> Self {
        CachedKeyStore {
            inner,
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }
}

#[async_trait]
impl KeyStore for CachedKeyStore {
    async fn create(&self, tenant: &TenantId, label: &str) -> Result<(ApiKeyInfo, ApiKeySecret)> {
        self.inner.create(tenant, label).await
    }

    async fn resolve(&self, secret: &str) -> Result<Option<TenantId>> {
        if !looks_like_secret(secret) {
            return Ok(None);
        }
        let digest = secret_digest(secret);
        if let Some((tenant, at)) = self.cache.lock().get(&digest) {
            if at.elapsed() < self.ttl {
                return Ok(Some(tenant.clone()));
            }
        }
        let found = self.inner.resolve(secret).await?;
        let mut cache = self.cache.lock();
        match &found {
            Some(tenant) => {
                if cache.len() >= CACHE_ENTRIES {
                    cache.clear();
                }
                cache.insert(digest, (tenant.clone(), Instant::now()));
            }
            None => {
                cache.remove(&digest);
            }
        }
        Ok(found)
    }

    async fn list(&self, tenant: &TenantId) -> Result<Vec<ApiKeyInfo>> {
        self.inner.list(tenant).await
    }

    async fn revoke(&self, tenant: &TenantId, key_id: &str) -> Result<ApiKeyInfo> {
        let info = self.inner.revoke(tenant, key_id).await?;
        // The cache is keyed by digest, which the record does not carry: drop the
        // tenant's entries (they are looked up again on their next use).
        self.cache.lock().retain(|_, (t, _)| t != tenant);
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_have_the_documented_shape_and_stay_out_of_debug() {
        let s = ApiKeySecret::generate();
        assert!(looks_like_secret(s.expose()), "{}", s.expose());
        assert_ne!(s, ApiKeySecret::generate());
        let shown = format!("{s:?}");
        assert!(!shown.contains(&s.expose()[5..]), "{shown}");
        assert_eq!(s.digest().len(), 64);
        assert!(s.display_prefix().starts_with("sopm_"));
        assert!(!looks_like_secret("sopm_xyz"));
        assert!(!looks_like_secret(&format!("sopm_{}", "g".repeat(64))));
    }

    #[tokio::test]
    async fn the_cache_forgets_revoked_keys_at_once() {
        let store = CachedKeyStore::new(Arc::new(MemoryKeyStore::new()), Duration::from_secs(60));
        let t = TenantId::new("alice").unwrap();
        let (info, secret) = store.create(&t, "laptop").await.unwrap();
        assert_eq!(
            store.resolve(secret.expose()).await.unwrap(),
            Some(t.clone())
        );
        assert_eq!(
            store.resolve(secret.expose()).await.unwrap(),
            Some(t.clone())
        );
        store.revoke(&t, &info.id).await.unwrap();
        assert_eq!(store.resolve(secret.expose()).await.unwrap(), None);
    }
}
