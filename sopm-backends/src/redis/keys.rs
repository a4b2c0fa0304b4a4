//! The key layout of SOPM in Redis: every key name is made here and nowhere else.
//!
//! All keys start with the configured prefix `P` (default `sopm:`), so several SOPM
//! installations can share one Redis and an operator can find SOPM's keys with
//! `SCAN MATCH sopm:*`.
//!
//! | key | type | what |
//! | --- | --- | --- |
//! | `P fn:{id}` | hash | a function: `tenant`, `name`, `created_ms`, `last` (the highest version number given out), and per version `n`: `v:n` (its fixed fields as JSON), `s:n` (build status), `a:n` (artifact as JSON, once built), `b:n` (artifact bytes, once recorded) |
//! | `P fn-name:{tenant}:{name}` | string | the id of the tenant's function with that name |
//! | `P fns:{tenant}` | set | the ids of a tenant's functions |
//! | `P building` | set | `{id}/{n}` of every version still building |
//! | `P log:{id}:{n}` | string | the build log of version `n` (absent while empty) |
//! | `P key:{digest}` | string | JSON [`ApiKeyInfo`](sopm_core::ApiKeyInfo) of the key whose secret has this SHA-256 digest |
//! | `P keys:{tenant}` | list | the digests of a tenant's keys, oldest first |
//!
//! Tenant ids and function names cannot contain `:` (both are checked where they are
//! made), so these names cannot collide. A caller's function id goes into `P fn:{id}`
//! as given, so no other key may start with `P fn:`.

/// Makes the names of SOPM's keys under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Key names under `prefix` (`sopm:` by default).
    pub fn new(prefix: impl Into<String>) -> Self {
        Keys {
            prefix: prefix.into(),
        }
    }

    /// The prefix every key starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn join(&self, parts: &[&str]) -> String {
        let mut s =
            String::with_capacity(self.prefix.len() + parts.iter().map(|p| p.len()).sum::<usize>());
        s.push_str(&self.prefix);
        for p in parts {
            s.push_str(p);
        }
        s
    }

    // --- registry -------------------------------------------------------------------

    /// `P fn:{id}`: the hash of one function and its versions.
    pub fn function(&self, id: &str) -> String {
        self.join(&[FUNCTION, id])
    }

    /// `P fn-name:{tenant}:{name}`: the id of a tenant's function by name.
    pub fn function_name(&self, tenant: &str, name: &str) -> String {
        self.join(&[FUNCTION_NAME, tenant, ":", name])
    }

    /// `P fns:{tenant}`: the set of a tenant's function ids.
    pub fn functions(&self, tenant: &str) -> String {
        self.join(&[FUNCTIONS, tenant])
    }

    /// `P building`: the set of `{id}/{version}` still building.
    pub fn building(&self) -> String {
        self.join(&[BUILDING])
    }

    /// `P log:{id}:{version}`: one version's build log.
    pub fn build_log(&self, id: &str, version: u32) -> String {
        self.join(&[BUILD_LOG, id, ":", &version.to_string()])
    }

    /// What the registry's Lua scripts get as `ARGV[1..=5]` to make the same names:
    /// the prefixes of `fn:`, `log:`, `fn-name:` and `fns:` keys, then the `building`
    /// key. A script appends `{id}`, `{id}:{n}`, `{tenant}:{name}` and `{tenant}`.
    pub(crate) fn registry_script_layout(&self) -> [String; 5] {
        [
            self.join(&[FUNCTION]),
            self.join(&[BUILD_LOG]),
            self.join(&[FUNCTION_NAME]),
            self.join(&[FUNCTIONS]),
            self.building(),
        ]
    }

    // --- API keys -------------------------------------------------------------------

    /// `P key:{digest}`: one API key's record, by the digest of its secret.
    pub fn api_key(&self, digest: &str) -> String {
        self.join(&[API_KEY, digest])
    }

    /// `P keys:{tenant}`: the digests of a tenant's keys, oldest first.
    pub fn api_keys(&self, tenant: &str) -> String {
        self.join(&[API_KEYS, tenant])
    }
}

const FUNCTION: &str = "fn:";
const FUNCTION_NAME: &str = "fn-name:";
const FUNCTIONS: &str = "fns:";
const BUILDING: &str = "building";
const BUILD_LOG: &str = "log:";
const API_KEY: &str = "key:";
const API_KEYS: &str = "keys:";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_documented_layout() {
        let k = Keys::new("sopm:");
        assert_eq!(k.function("fn_1"), "sopm:fn:fn_1");
        assert_eq!(
            k.function_name("alice", "resize"),
            "sopm:fn-name:alice:resize"
        );
        assert_eq!(k.functions("alice"), "sopm:fns:alice");
        assert_eq!(k.building(), "sopm:building");
        assert_eq!(k.build_log("fn_1", 3), "sopm:log:fn_1:3");
        assert_eq!(k.api_key("ab"), "sopm:key:ab");
        assert_eq!(k.api_keys("alice"), "sopm:keys:alice");
        let [f, log, name, fns, building] = k.registry_script_layout();
        assert_eq!(format!("{f}fn_1"), k.function("fn_1"));
        assert_eq!(format!("{log}fn_1:3"), k.build_log("fn_1", 3));
        assert_eq!(
            format!("{name}alice:resize"),
            k.function_name("alice", "resize")
        );
        assert_eq!(format!("{fns}alice"), k.functions("alice"));
        assert_eq!(building, k.building());
    }
}
