//! [`PoolSettings`]: the warm-pool knobs of every sandbox backend (stem cells, instance
//! caps, idle TTL, stem limits, inline code size, boot timeout), with their environment
//! overrides and checks.

use std::collections::BTreeMap;
use std::time::Duration;

use sopm_core::{Limits, Result};

use super::vars::parse_var;
use crate::sandbox::artifact::DEFAULT_MAX_INLINE_BYTES;
use crate::sandbox::pool::PoolConfig;
use crate::sandbox::RunnerKind;

/// Warm-pool settings of a sandbox executor. `new()` gives working defaults: 2 stem cells
/// per runner, 8 instances per function, 32 per tenant, 64 in all, 5 minutes idle TTL, default limits
/// for stem cells, 8 MiB of code inline, 15 s per boot.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolSettings {
    /// Stem cells kept ready per runner; 0 turns them off.
    pub stem_cells: usize,
    /// Which runners get stem cells.
    pub stem_runners: Vec<RunnerKind>,
    /// Most instances of one function version.
    pub max_per_function: usize,
    /// Most function instances in all (stem cells not counted).
    pub max_instances: usize,
    /// Most function instances of one tenant, all its functions together.
    pub max_per_tenant: usize,
    /// How long an instance may stay idle before it is stopped.
    pub idle_ttl: Duration,
    /// The limits stem cells boot with.
    pub stem_limits: Limits,
    /// Largest artifact sent in an init frame; bigger ones get a dedicated instance.
    pub max_inline_bytes: u64,
    /// How long one boot may take.
    pub boot_timeout: Duration,
}

impl PoolSettings {
    /// Defaults with stem cells for `runners`.
    pub fn new(runners: impl IntoIterator<Item = RunnerKind>) -> Self {
        PoolSettings {
            stem_cells: 2,
            stem_runners: runners.into_iter().collect(),
            max_per_function: 8,
            max_instances: 64,
            max_per_tenant: 32,
            idle_ttl: Duration::from_secs(300),
            stem_limits: Limits::default(),
            max_inline_bytes: DEFAULT_MAX_INLINE_BYTES,
            boot_timeout: Duration::from_secs(15),
        }
    }

    /// Applies `SOPM_STEM_CELLS`, `SOPM_MAX_INSTANCES`, `SOPM_MAX_INSTANCES_PER_FUNCTION`,
    /// `SOPM_MAX_INSTANCES_PER_TENANT` and `SOPM_IDLE_TTL_SECS` from `var`; an unparsable
    /// value is `invalid_input`.
    pub fn with_vars(mut self, var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        if let Some(n) = parse_var(&var, "SOPM_STEM_CELLS")? {
            self.stem_cells = n;
        }
        if let Some(n) = parse_var(&var, "SOPM_MAX_INSTANCES")? {
            self.max_instances = n;
        }
        if let Some(n) = parse_var(&var, "SOPM_MAX_INSTANCES_PER_FUNCTION")? {
            self.max_per_function = n;
        }
        if let Some(n) = parse_var(&var, "SOPM_MAX_INSTANCES_PER_TENANT")? {
            self.max_per_tenant = n;
        }
        if let Some(secs) = parse_var(&var, "SOPM_IDLE_TTL_SECS")? {
            self.idle_ttl = Duration::from_secs(secs);
        }
        Ok(self)
    }

    /// Stem cells kept ready per runner; 0 turns them off.
    pub fn with_stem_cells(mut self, per_runner: usize) -> Self {
        self.stem_cells = per_runner;
        self
    }

    /// Which runners get stem cells.
    pub fn with_stem_runners(mut self, runners: impl IntoIterator<Item = RunnerKind>) -> Self {
        self.stem_runners = runners.into_iter().collect();
        self
    }

    /// Most instances of one function version.
    pub fn with_max_instances_per_function(mut self, n: usize) -> Self {
        self.max_per_function = n;
        self
    }

    /// Most function instances in all (stem cells not counted).
    pub fn with_max_instances(mut self, n: usize) -> Self {
        self.max_instances = n;
        self
    }

    /// Most function instances of one tenant, all its functions together.
    pub fn with_max_instances_per_tenant(mut self, n: usize) -> Self {
        self.max_per_tenant = n;
        self
    }

    /// How long an instance may stay idle before it is stopped.
    pub fn with_idle_ttl(mut self, ttl: Duration) -> Self {
        self.idle_ttl = ttl;
        self
    }

    /// The limits stem cells boot with.
    pub fn with_stem_limits(mut self, limits: Limits) -> Self {
        self.stem_limits = limits;
        self
    }

    /// Largest artifact sent in an init frame.
    pub fn with_max_inline_bytes(mut self, bytes: u64) -> Self {
        self.max_inline_bytes = bytes;
        self
    }

    /// How long one boot may take.
    pub fn with_boot_timeout(mut self, timeout: Duration) -> Self {
        self.boot_timeout = timeout;
        self
    }

    /// The size of the tmpfs at `/fn` that receives code sent in an init frame: twice the
    /// inline limit (room for the files and their unpacking), at least 16 MiB.
    pub fn code_tmpfs_bytes(&self) -> u64 {
        self.max_inline_bytes.saturating_mul(2).max(16 << 20)
    }

    /// Why the settings cannot work, if they cannot.
    pub fn problem(&self) -> Option<&'static str> {
        if self.max_per_function == 0 || self.max_instances == 0 || self.max_per_tenant == 0 {
            return Some("instance caps must be at least 1");
        }
        if self.max_per_function > self.max_instances {
            return Some("max_instances_per_function cannot exceed max_instances");
        }
        if self.idle_ttl.is_zero() || self.boot_timeout.is_zero() {
            return Some("idle_ttl and boot_timeout must be positive");
        }
        if self.stem_limits.memory_mb < 16 || self.stem_limits.tmpfs_mb == 0 {
            return Some("stem limits need at least 16 MiB of memory and 1 MiB of tmpfs");
        }
        None
    }

    /// The pool configuration these settings give an executor named `name`.
    pub fn pool_config(&self, name: &str, allow_network: bool) -> PoolConfig {
        PoolConfig {
            name: name.to_string(),
            stem_cells: self
                .stem_runners
                .iter()
                .map(|k| (*k, self.stem_cells))
                .collect::<BTreeMap<_, _>>(),
            max_per_function: self.max_per_function,
            max_instances: self.max_instances,
            max_per_tenant: self.max_per_tenant,
            idle_ttl: self.idle_ttl,
            max_inline_bytes: self.max_inline_bytes,
            stem_limits: self.stem_limits.clone(),
            allow_network,
            boot_timeout: self.boot_timeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_are_found() {
        let ok = PoolSettings::new(RunnerKind::SCRIPTS);
        assert_eq!(ok.problem(), None);
        assert!(ok.clone().with_max_instances(0).problem().is_some());
        assert!(ok
            .clone()
            .with_max_instances(2)
            .with_max_instances_per_function(3)
            .problem()
            .is_some());
        assert!(ok.clone().with_idle_ttl(Duration::ZERO).problem().is_some());
        let tiny = Limits {
            memory_mb: 8,
            ..Limits::default()
        };
        assert!(ok.with_stem_limits(tiny).problem().is_some());
    }

    #[test]
    fn vars_override_and_bad_values_are_refused() {
        let s = PoolSettings::new(RunnerKind::SCRIPTS)
            .with_vars(|k| (k == "SOPM_STEM_CELLS").then(|| "5".to_string()))
            .unwrap();
        assert_eq!(s.stem_cells, 5);
        let e = PoolSettings::new(RunnerKind::SCRIPTS)
            .with_vars(|k| (k == "SOPM_IDLE_TTL_SECS").then(|| "soon".to_string()))
            .unwrap_err();
        assert_eq!(e.code(), "invalid_input");
        let c = s.pool_config("x", false);
        assert_eq!(c.stem_cells.get(&RunnerKind::Node), Some(&5));
        assert_eq!(c.name, "x");
    }

    #[test]
    fn the_code_tmpfs_holds_twice_the_inline_limit_and_at_least_16_mib() {
        let s = PoolSettings::new([]);
        assert_eq!(s.code_tmpfs_bytes(), 2 * DEFAULT_MAX_INLINE_BYTES);
        assert_eq!(
            s.clone().with_max_inline_bytes(4096).code_tmpfs_bytes(),
            16 << 20
        );
        assert_eq!(
            s.with_max_inline_bytes(u64::MAX).code_tmpfs_bytes(),
            u64::MAX
        );
    }
}
