//! Catalog-wide checks: the exact 100 names, which are not deterministic, every
//! example answers as listed and validates against its own schema, and hostile input
//! never panics or hangs.

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use serde_json::{json, Value};
use sopm_functions::{catalog, BuiltinExecutor};

/// The names of FUNCTIONS.md, in order.
const NAMES: [&str; 100] = [
    "math.add",
    "math.subtract",
    "math.multiply",
    "math.divide",
    "math.modulo",
    "math.power",
    "math.sqrt",
    "math.abs",
    "math.factorial",
    "math.fibonacci",
    "math.gcd",
    "math.lcm",
    "math.is_prime",
    "math.prime_factors",
    "math.primes_up_to",
    "math.nth_prime",
    "math.sum",
    "math.mean",
    "math.median",
    "math.mode",
    "math.variance",
    "math.stddev",
    "math.min",
    "math.max",
    "math.round",
    "math.clamp",
    "math.log",
    "math.binomial",
    "math.matrix_multiply",
    "math.solve_linear",
    "text.uppercase",
    "text.lowercase",
    "text.reverse",
    "text.length",
    "text.word_count",
    "text.char_frequency",
    "text.is_palindrome",
    "text.capitalize",
    "text.snake_case",
    "text.camel_case",
    "text.kebab_case",
    "text.slugify",
    "text.trim",
    "text.replace",
    "text.split",
    "text.join",
    "text.regex_match",
    "text.regex_replace",
    "text.levenshtein",
    "text.similarity",
    "text.caesar",
    "text.rot13",
    "text.count_substring",
    "text.truncate",
    "text.wrap",
    "data.sort",
    "data.unique",
    "data.reverse",
    "data.flatten",
    "data.chunk",
    "data.zip",
    "data.group_by",
    "data.filter",
    "data.pluck",
    "data.count_by",
    "data.merge",
    "data.json_pointer",
    "data.csv_to_json",
    "data.json_to_csv",
    "data.base64_encode",
    "data.base64_decode",
    "data.hex_encode",
    "data.hex_decode",
    "data.url_encode",
    "data.url_decode",
    "data.json_schema_validate",
    "data.set_operations",
    "data.histogram",
    "data.transpose",
    "data.paginate",
    "util.uuid",
    "util.timestamp",
    "util.format_date",
    "util.parse_date",
    "util.date_diff",
    "util.hash",
    "util.hmac",
    "util.random_int",
    "util.random_string",
    "util.password_strength",
    "util.validate_email",
    "util.validate_url",
    "util.parse_url",
    "util.ip_info",
    "util.cidr_contains",
    "util.echo",
    "util.sleep",
    "util.cron_next",
    "util.convert_units",
    "util.color_convert",
];

#[test]
fn catalog_has_exactly_the_documented_names_in_order() {
    let names: Vec<&str> = catalog().iter().map(|b| b.name).collect();
    assert_eq!(names, NAMES.to_vec());
}

#[test]
fn only_the_random_and_clock_functions_are_nondeterministic() {
    let nondeterministic: Vec<&str> = catalog()
        .iter()
        .filter(|b| !b.deterministic)
        .map(|b| b.name)
        .collect();
    assert_eq!(
        nondeterministic,
        [
            "util.uuid",
            "util.timestamp",
            "util.random_int",
            "util.random_string",
            "util.sleep"
        ]
    );
}

#[test]
fn descriptions_are_one_line() {
    for b in catalog() {
        assert!(
            !b.description.is_empty() && !b.description.contains('\n'),
            "{}",
            b.name
        );
    }
}

#[tokio::test]
async fn every_example_validates_and_answers_as_listed() {
    let exec = BuiltinExecutor::new();
    for b in catalog() {
        let schema = b.params.schema();
        let validator = jsonschema::draft202012::new(&schema)
            .unwrap_or_else(|e| panic!("{}: schema does not compile: {e}", b.name));
        assert!(
            validator.is_valid(&b.example_input),
            "{}: example input does not match its schema",
            b.name
        );
        let out = exec
            .call(b.name, &b.example_input)
            .await
            .unwrap_or_else(|e| panic!("{}: example failed: {e}", b.name));
        if b.deterministic {
            assert_eq!(out, b.example_output, "{}: example output differs", b.name);
        } else {
            assert_eq!(
                std::mem::discriminant(&out),
                std::mem::discriminant(&b.example_output),
                "{}: sample output has another JSON type",
                b.name
            );
        }
    }
}

#[tokio::test]
async fn unknown_fields_and_non_objects_are_invalid_input() {
    let exec = BuiltinExecutor::new();
    for b in catalog() {
        let mut input = b.example_input.clone();
        input["surely_not_a_field"] = json!(1);
        let err = exec.call(b.name, &input).await.unwrap_err();
        assert_eq!(err.code(), "invalid_input", "{}", b.name);
        assert!(
            err.to_string().contains("surely_not_a_field"),
            "{}: {err}",
            b.name
        );
        for bad in [json!(null), json!([]), json!("x"), json!(3)] {
            let err = exec.call(b.name, &bad).await.unwrap_err();
            assert_eq!(err.code(), "invalid_input", "{} with {bad}", b.name);
        }
    }
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        prop_oneof![
            Just(0i64),
            Just(1),
            Just(-1),
            Just(2),
            Just(5000),
            Just(20001),
            Just(i64::MAX),
            Just(i64::MIN)
        ]
        .prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,24}".prop_map(Value::String),
        prop_oneof![
            Just(""),
            Just("#ff0000"),
            Just("2024-01-01T00:00:00Z"),
            Just("* * * * *"),
            Just("10.0.0.0/8"),
            Just("a,b\n1,2"),
            Just("(a+)+$"),
            Just("/a/0"),
            Just("%zz"),
            Just("sha256")
        ]
        .prop_map(|s| Value::String(s.to_string())),
    ];
    leaf.prop_recursive(3, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{1,8}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Builds an input that uses a function's own field names, so the fuzzing reaches
/// past the unknown-field check into the bodies.
fn arb_input_for(fields: Vec<&'static str>) -> impl Strategy<Value = Value> {
    prop::collection::vec(prop::option::of(arb_json()), fields.len()).prop_map(move |vals| {
        let mut m = serde_json::Map::new();
        for (f, v) in fields.iter().zip(vals) {
            if let Some(v) = v {
                m.insert(f.to_string(), v);
            }
        }
        Value::Object(m)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn hostile_json_gives_ok_or_a_clean_error(seed in any::<u64>()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let exec = BuiltinExecutor::new();
        let mut runner = proptest::test_runner::TestRunner::new_with_rng(
            ProptestConfig::default(),
            proptest::test_runner::TestRng::from_seed(
                proptest::test_runner::RngAlgorithm::ChaCha,
                &{ let mut s = [0u8; 32]; s[..8].copy_from_slice(&seed.to_le_bytes()); s },
            ),
        );
        // util.sleep waits for real (up to 10 s by contract); its own tests cover it.
        for b in catalog().into_iter().filter(|b| b.name != "util.sleep") {
            let fields: Vec<&'static str> = b.params.0.iter().map(|p| p.name).collect();
            for input in [
                arb_input_for(fields).new_tree(&mut runner).unwrap().current(),
                arb_json().new_tree(&mut runner).unwrap().current(),
            ] {
                let r = rt.block_on(async {
                    tokio::time::timeout(std::time::Duration::from_secs(20), exec.call(b.name, &input)).await
                });
                let r = r.unwrap_or_else(|_| panic!("{} hung on {input}", b.name));
                if let Err(e) = r {
                    prop_assert!(
                        matches!(e.code(), "invalid_input" | "domain_error" | "not_found"),
                        "{} gave {} ({}) for {}", b.name, e.code(), e, input
                    );
                }
            }
        }
    }
}
