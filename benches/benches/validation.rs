//! Input validation: the declarative checks every built-in runs before its body,
//! next to a general JSON Schema validator checking the same published schema.
//!
//! Run with: cargo bench -p benches --bench validation

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::{json, Value};
use sopm_functions::BuiltinExecutor;

fn validation(c: &mut Criterion) {
    let exec = BuiltinExecutor::new();
    let cases: Vec<(&str, Value, u64)> = vec![
        ("math.add", json!({"a": 2, "b": 3}), 1),
        (
            "data.sort",
            json!({"values": (0..100_000).rev().collect::<Vec<i64>>()}),
            100_000,
        ),
        (
            "math.matrix_multiply",
            json!({"a": vec![vec![1.5; 200]; 200], "b": vec![vec![2.0; 200]; 200]}),
            80_000,
        ),
        ("text.uppercase", json!({"text": "x".repeat(1 << 20)}), 1),
    ];
    let mut g = c.benchmark_group("validation");
    for (name, input, elements) in &cases {
        let b = exec.get(name).expect("known function");
        g.throughput(Throughput::Elements(*elements));
        g.bench_function(format!("{name}/declarative"), |bench| {
            bench.iter(|| black_box(b.params.validate(black_box(input)).is_ok()))
        });
        let schema = b.params.schema();
        let validator = jsonschema::draft202012::new(&schema).expect("schema compiles");
        g.bench_function(format!("{name}/jsonschema"), |bench| {
            bench.iter(|| black_box(validator.is_valid(black_box(input))))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    targets = validation
}
criterion_main!(benches);
