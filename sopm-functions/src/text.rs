//! The `text.*` built-ins.

use crate::Builtin;

pub(crate) fn register(_out: &mut Vec<Builtin>) {}
