//! Runnable examples of SOPM as a library; see `examples/`.
