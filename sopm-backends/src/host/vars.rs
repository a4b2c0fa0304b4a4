//! Reading settings from environment variables: one parse with a message naming the
//! variable, shared by every settings type of the host layer and the builders.

use std::path::PathBuf;
use std::str::FromStr;

use sopm_core::{Error, Result};

/// The value of the variable `key` of `var`, parsed, if it is set; a value that does not
/// parse is `invalid_input` naming the variable.
pub(crate) fn parse_var<T: FromStr>(
    var: impl Fn(&str) -> Option<String>,
    key: &str,
) -> Result<Option<T>> {
    var(key)
        .map(|v| {
            v.trim()
                .parse()
                .map_err(|_| Error::invalid(format!("{key}: cannot parse '{v}'")))
        })
        .transpose()
}

/// The path in the variable `key` of `var`, if it is set and not empty.
pub(crate) fn path_var(var: impl Fn(&str) -> Option<String>, key: &str) -> Option<PathBuf> {
    var(key).filter(|v| !v.is_empty()).map(PathBuf::from)
}
