//! [`RedisKeyStore`]: API keys in Redis, kept by the SHA-256 digest of their secret (the
//! secret itself is never stored), so every node resolves the same keys.

use std::sync::LazyLock;

use async_trait::async_trait;
use redis::Script;
use sopm_core::keys::{looks_like_secret, new_key, no_key, secret_digest};
use sopm_core::types::now_ms;
use sopm_core::{ApiKeyInfo, ApiKeySecret, Error, KeyStore, Result, TenantId};

use super::{decode_json, encode_json, RedisConnection};

/// How often a revoke retries when another node changed the key in between.
const REVOKE_ATTEMPTS: usize = 8;

/// API keys in Redis (see [`keys`](super::keys) for the layout): `resolve` is one `GET`.
#[derive(Debug, Clone)]
pub struct RedisKeyStore {
    conn: RedisConnection,
}

impl RedisKeyStore {
    /// A key store over `conn` (under its prefix).
    pub fn new(conn: RedisConnection) -> Self {
        RedisKeyStore { conn }
    }

    /// The tenant's keys as (digest, stored text, record), oldest first.
    async fn tenant_keys(&self, tenant: &TenantId) -> Result<Vec<(String, String, ApiKeyInfo)>> {
        let keys = self.conn.keys();
        let pairs: Vec<String> = self
            .conn
            .invoke(
                LIST.key(keys.api_keys(tenant.as_str()))
                    .arg(keys.api_key("")),
            )
            .await?;
        let mut out = Vec::with_capacity(pairs.len() / 2);
        let mut it = pairs.into_iter();
        while let (Some(digest), Some(json)) = (it.next(), it.next()) {
            let info: ApiKeyInfo = decode_json("API key", &json)?;
            if &info.tenant == tenant {
                out.push((digest, json, info));
            }
        }
        Ok(out)
    }
}

/// KEYS[1] the tenant's list of digests; ARGV[1] the prefix of key records. Returns
/// digest/record pairs, oldest first.
static LIST: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local out = {}
for _, digest in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  local record = redis.call('GET', ARGV[1] .. digest)
  if record then
    out[#out + 1] = digest
    out[#out + 1] = record
  end
end
return out
"#,
    )
});

/// KEYS[1] a key record; ARGV[1] the record as read, ARGV[2] the new one. Replaces it
/// only if it is unchanged; returns 1 if it did.
static REPLACE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"#,
    )
});

#[async_trait]
impl KeyStore for RedisKeyStore {
    async fn create(&self, tenant: &TenantId, label: &str) -> Result<(ApiKeyInfo, ApiKeySecret)> {
        let (info, secret) = new_key(tenant, label)?;
        let digest = secret.digest();
        let keys = self.conn.keys();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .set(keys.api_key(&digest), encode_json("API key", &info)?)
            .ignore()
            .rpush(keys.api_keys(tenant.as_str()), &digest)
            .ignore();
        self.conn.query_pipeline::<()>(&pipe).await?;
        Ok((info, secret))
    }

    async fn resolve(&self, secret: &str) -> Result<Option<TenantId>> {
        if !looks_like_secret(secret) {
            return Ok(None);
        }
        let record: Option<String> = self
            .conn
            .query(redis::cmd("GET").arg(self.conn.keys().api_key(&secret_digest(secret))))
            .await?;
        let Some(record) = record else {
            return Ok(None);
        };
        let info: ApiKeyInfo = decode_json("API key", &record)?;
        Ok(info.revoked_ms.is_none().then_some(info.tenant))
    }

    async fn list(&self, tenant: &TenantId) -> Result<Vec<ApiKeyInfo>> {
        Ok(self
            .tenant_keys(tenant)
            .await?
            .into_iter()
            .map(|(_, _, info)| info)
            .collect())
    }

    async fn revoke(&self, tenant: &TenantId, key_id: &str) -> Result<ApiKeyInfo> {
        for _ in 0..REVOKE_ATTEMPTS {
            let Some((digest, old, info)) = self
                .tenant_keys(tenant)
                .await?
                .into_iter()
                .find(|(_, _, k)| k.id == key_id)
            else {
                return Err(no_key(key_id));
            };
            if info.revoked_ms.is_some() {
                return Ok(info);
            }
            let mut revoked = info;
            revoked.revoked_ms = Some(now_ms());
            let replaced: i64 = self
                .conn
                .invoke(
                    REPLACE
                        .key(self.conn.keys().api_key(&digest))
                        .arg(old)
                        .arg(encode_json("API key", &revoked)?),
                )
                .await?;
            if replaced == 1 {
                return Ok(revoked);
            }
        }
        Err(Error::Conflict(format!(
            "key '{key_id}' kept changing while it was being revoked; try again"
        )))
    }
}
