//! Criterion benchmarks of SOPM; see `benches/`.
