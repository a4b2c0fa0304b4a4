//! Statistics over an array of numbers: sum … max.

use std::cmp::Ordering;

use serde_json::Value;
use sopm_core::{Error, Result};

use super::arith::{cmp_num, int_result};
use crate::schema::{float, num_value, Args, Num};

fn values(args: &Args<'_>) -> Result<Vec<Num>> {
    args.num_array("values")
}

fn empty() -> Error {
    Error::invalid("field 'values': must not be empty")
}

/// The sum of the values: exact in `i128` when all are integers (100,000 `i64`s
/// cannot overflow it, so only the final total is range-checked), else a float.
enum Total {
    Int(i128),
    Float(f64),
}

fn total(values: &[Num]) -> Total {
    let ints: Option<i128> = values.iter().try_fold(0i128, |acc, v| match v {
        Num::Int(i) => Some(acc + i128::from(*i)),
        Num::Float(_) => None,
    });
    match ints {
        Some(t) => Total::Int(t),
        None => Total::Float(compensated_sum(values.iter().map(|v| v.as_f64()))),
    }
}

/// Neumaier's compensated sum: it carries the rounding error of every addition, so
/// [1e16, 1, -1e16] sums to 1 rather than 0, and long sums do not drift.
fn compensated_sum(xs: impl Iterator<Item = f64>) -> f64 {
    let (mut sum, mut carry) = (0.0f64, 0.0f64);
    for x in xs {
        let t = sum + x;
        carry += if sum.abs() >= x.abs() {
            (sum - t) + x
        } else {
            (x - t) + sum
        };
        sum = t;
    }
    sum + carry
}

fn mean_of(values: &[Num]) -> f64 {
    let n = values.len() as f64;
    match total(values) {
        Total::Int(t) => t as f64 / n,
        Total::Float(s) if s.is_finite() => s / n,
        // The sum overflowed, but the mean may not: add the values already divided.
        Total::Float(_) => compensated_sum(values.iter().map(|v| v.as_f64() / n)),
    }
}

pub(super) fn sum(args: &Args<'_>) -> Result<Value> {
    match total(&values(args)?) {
        Total::Int(t) => int_result(t),
        Total::Float(s) => float(s),
    }
}

pub(super) fn mean(args: &Args<'_>) -> Result<Value> {
    let values = values(args)?;
    if values.is_empty() {
        return Err(empty());
    }
    float(mean_of(&values))
}

/// Finds the middle in linear time (`select_nth_unstable_by`) rather than sorting.
pub(super) fn median(args: &Args<'_>) -> Result<Value> {
    let mut values = values(args)?;
    let len = values.len();
    if len == 0 {
        return Err(empty());
    }
    let (below, &mut upper, _) = values.select_nth_unstable_by(len / 2, |a, b| cmp_num(*a, *b));
    if len % 2 == 1 {
        return num_value(upper);
    }
    let lower = below
        .iter()
        .copied()
        .max_by(|a, b| cmp_num(*a, *b))
        .ok_or_else(empty)?;
    float(lower.as_f64().midpoint(upper.as_f64()))
}

/// Sorts, then counts runs of equal values (2 and 2.0 are one value; the first one
/// given is the one returned).
pub(super) fn mode(args: &Args<'_>) -> Result<Value> {
    let mut values = values(args)?;
    values.sort_by(|a, b| cmp_num(*a, *b));
    let mut runs: Vec<(Num, usize)> = Vec::new();
    for v in values {
        match runs.last_mut() {
            Some((first, count)) if cmp_num(*first, v) == Ordering::Equal => *count += 1,
            _ => runs.push((v, 1)),
        }
    }
    let most = runs
        .iter()
        .map(|&(_, count)| count)
        .max()
        .ok_or_else(empty)?;
    runs.into_iter()
        .filter(|&(_, count)| count == most)
        .map(|(v, _)| num_value(v))
        .collect::<Result<Vec<_>>>()
        .map(Value::Array)
}

/// Two passes (the mean, then the squared deviations from it), which unlike the
/// one-pass sum-of-squares formula does not cancel catastrophically when the values
/// are large and close together.
fn variance_of(args: &Args<'_>) -> Result<f64> {
    let values = values(args)?;
    let sample = args.opt_bool("sample")?.unwrap_or(false);
    let n = values.len();
    let divisor = if sample { n.saturating_sub(1) } else { n };
    if divisor == 0 {
        return Err(if n == 0 {
            empty()
        } else {
            Error::domain("field 'values': the sample variance needs at least two values")
        });
    }
    let mean = mean_of(&values);
    let squares = compensated_sum(values.iter().map(|v| (v.as_f64() - mean).powi(2)));
    Ok(squares / divisor as f64)
}

pub(super) fn variance(args: &Args<'_>) -> Result<Value> {
    float(variance_of(args)?)
}

pub(super) fn stddev(args: &Args<'_>) -> Result<Value> {
    float(variance_of(args)?.sqrt())
}

/// The value that compares as `wanted` against all others (the first of equals).
fn extreme(args: &Args<'_>, wanted: Ordering) -> Result<Value> {
    values(args)?
        .into_iter()
        .reduce(|best, v| if cmp_num(v, best) == wanted { v } else { best })
        .ok_or_else(empty)
        .and_then(num_value)
}

pub(super) fn min(args: &Args<'_>) -> Result<Value> {
    extreme(args, Ordering::Less)
}

pub(super) fn max(args: &Args<'_>) -> Result<Value> {
    extreme(args, Ordering::Greater)
}

#[cfg(test)]
mod tests {
    use crate::testing::{code, ok};
    use serde_json::{json, Value};

    async fn with_values(name: &str, values: Value) -> Value {
        ok(name, json!({ "values": values })).await
    }

    /// 100,000 values: 0, 1, …, 99,999.
    fn ramp() -> Value {
        json!((0..100_000).collect::<Vec<i64>>())
    }

    #[tokio::test]
    async fn sum_keeps_integers_exact() {
        assert_eq!(
            with_values("math.sum", json!([1, 2, 3.5])).await,
            json!(6.5)
        );
        assert_eq!(with_values("math.sum", json!([1, 2, 3])).await, json!(6));
        assert_eq!(with_values("math.sum", json!([])).await, json!(0));
        assert_eq!(with_values("math.sum", json!([-4])).await, json!(-4));
        // The running total passes i64::MAX, the final one does not.
        assert_eq!(
            with_values("math.sum", json!([i64::MAX, 1, -2])).await,
            json!(i64::MAX - 1)
        );
        assert_eq!(
            code("math.sum", json!({"values": [i64::MAX, 1]})).await,
            "domain_error"
        );
        assert_eq!(
            code("math.sum", json!({"values": [1.7e308, 1.7e308]})).await,
            "domain_error"
        );
        // Compensated: the 1 is not lost between the large values.
        assert_eq!(
            with_values("math.sum", json!([1e16, 1.0, -1e16])).await,
            json!(1.0)
        );
        assert_eq!(
            with_values("math.sum", json!(vec![0.1; 10])).await,
            json!(1.0)
        );
        assert_eq!(
            code("math.sum", json!({"values": [1, "2"]})).await,
            "invalid_input"
        );
        assert_eq!(
            code("math.sum", json!({"values": 3})).await,
            "invalid_input"
        );
        assert_eq!(
            code("math.sum", json!({"values": vec![1; 100_001]})).await,
            "invalid_input"
        );
    }

    #[tokio::test]
    async fn sum_and_mean_at_the_bound() {
        assert_eq!(
            with_values("math.sum", ramp()).await,
            json!(4_999_950_000i64)
        );
        assert_eq!(with_values("math.mean", ramp()).await, json!(49_999.5));
        assert_eq!(
            with_values("math.sum", json!(vec![0.1; 100_000])).await,
            json!(10_000.0)
        );
    }

    #[tokio::test]
    async fn mean_values() {
        assert_eq!(
            with_values("math.mean", json!([1, 2, 3, 4])).await,
            json!(2.5)
        );
        assert_eq!(with_values("math.mean", json!([7])).await, json!(7.0));
        assert_eq!(
            with_values("math.mean", json!([-1.5, 1.5])).await,
            json!(0.0)
        );
        assert_eq!(
            with_values("math.mean", json!([i64::MAX, i64::MAX])).await,
            json!(i64::MAX as f64)
        );
        // The sum overflows a float; the mean does not.
        assert_eq!(
            with_values("math.mean", json!([1e308, 1e308, 1e308])).await,
            json!(1e308)
        );
        assert_eq!(
            code("math.mean", json!({"values": []})).await,
            "invalid_input"
        );
    }

    #[tokio::test]
    async fn median_values() {
        assert_eq!(
            with_values("math.median", json!([3, 1, 4, 1, 5])).await,
            json!(3)
        );
        assert_eq!(
            with_values("math.median", json!([3, 1, 4, 2])).await,
            json!(2.5)
        );
        assert_eq!(with_values("math.median", json!([1, 3])).await, json!(2.0));
        assert_eq!(with_values("math.median", json!([2.5])).await, json!(2.5));
        assert_eq!(
            with_values("math.median", json!([-5, -1, -3])).await,
            json!(-3)
        );
        assert_eq!(
            with_values("math.median", json!([1e308, 1.5e308])).await,
            json!(1.25e308)
        );
        assert_eq!(with_values("math.median", ramp()).await, json!(49_999.5));
        assert_eq!(
            code("math.median", json!({"values": []})).await,
            "invalid_input"
        );
    }

    #[tokio::test]
    async fn mode_values() {
        assert_eq!(
            with_values("math.mode", json!([1, 2, 2, 3, 3])).await,
            json!([2, 3])
        );
        assert_eq!(
            with_values("math.mode", json!([3, 3, 1, 2, 2, 3])).await,
            json!([3])
        );
        assert_eq!(
            with_values("math.mode", json!([5, -1, 0])).await,
            json!([-1, 0, 5])
        );
        assert_eq!(
            with_values("math.mode", json!([2.0, 2, 1.5])).await,
            json!([2.0])
        );
        assert_eq!(with_values("math.mode", json!([4])).await, json!([4]));
        let all = with_values("math.mode", ramp()).await;
        assert_eq!(all.as_array().map(Vec::len), Some(100_000));
        assert_eq!(
            code("math.mode", json!({"values": []})).await,
            "invalid_input"
        );
    }

    #[tokio::test]
    async fn variance_and_stddev() {
        let data = json!([2, 4, 4, 4, 5, 5, 7, 9]);
        assert_eq!(with_values("math.variance", data.clone()).await, json!(4.0));
        assert_eq!(with_values("math.stddev", data.clone()).await, json!(2.0));
        let sample = ok("math.variance", json!({"values": data, "sample": true})).await;
        assert_eq!(sample, json!(32.0 / 7.0));
        assert_eq!(
            ok("math.stddev", json!({"values": [1, 3], "sample": true})).await,
            json!(2f64.sqrt())
        );
        assert_eq!(
            ok("math.variance", json!({"values": [1, 3], "sample": null})).await,
            json!(1.0)
        );
        assert_eq!(with_values("math.variance", json!([42])).await, json!(0.0));
        // Large, close values: the naive sum-of-squares formula gives garbage here.
        assert_eq!(
            with_values("math.variance", json!([1e9 + 1.0, 1e9 + 3.0])).await,
            json!(1.0)
        );
        // 0..n-1 has population variance (n² − 1) / 12.
        assert_eq!(
            with_values("math.variance", ramp()).await,
            json!((1e10 - 1.0) / 12.0)
        );
        assert_eq!(
            code("math.variance", json!({"values": [1], "sample": true})).await,
            "domain_error"
        );
        assert_eq!(
            code("math.stddev", json!({"values": [1], "sample": true})).await,
            "domain_error"
        );
        assert_eq!(
            code("math.variance", json!({"values": [1e200, -1e200]})).await,
            "domain_error"
        );
        assert_eq!(
            code("math.variance", json!({"values": [1], "sample": "yes"})).await,
            "invalid_input"
        );
        assert_eq!(
            code("math.stddev", json!({"values": []})).await,
            "invalid_input"
        );
    }

    #[tokio::test]
    async fn min_and_max_keep_the_given_number() {
        assert_eq!(with_values("math.min", json!([3, -1, 2])).await, json!(-1));
        assert_eq!(with_values("math.max", json!([3, -1, 2])).await, json!(3));
        assert_eq!(with_values("math.min", json!([0.5, 1])).await, json!(0.5));
        assert_eq!(with_values("math.max", json!([0.5, 1])).await, json!(1));
        assert_eq!(with_values("math.max", json!([2, 2.0])).await, json!(2));
        assert_eq!(
            with_values("math.min", json!([i64::MIN, -9.3e18])).await,
            json!(-9.3e18)
        );
        // Exact across types: 2^53 + 1 is larger than the float 2^53.
        assert_eq!(
            with_values(
                "math.max",
                json!([9_007_199_254_740_992.0, 9_007_199_254_740_993i64])
            )
            .await,
            json!(9_007_199_254_740_993i64)
        );
        assert_eq!(with_values("math.min", ramp()).await, json!(0));
        assert_eq!(with_values("math.max", ramp()).await, json!(99_999));
        assert_eq!(
            code("math.min", json!({"values": []})).await,
            "invalid_input"
        );
        assert_eq!(
            code("math.max", json!({"values": [null]})).await,
            "invalid_input"
        );
    }
}
