//! Scalar arithmetic: add … abs, gcd, lcm, round, clamp, log.

use std::cmp::Ordering;
use std::fmt::Display;

use serde_json::Value;
use sopm_core::{Error, Result};

use crate::schema::{float, num_value, Args, Num};

/// Orders two numbers exactly: a large integer and a float near it compare by value,
/// not after rounding the integer to a float. This is a total order (inputs are
/// always finite), which sorting needs.
pub(super) fn cmp_num(a: Num, b: Num) -> Ordering {
    match (a, b) {
        (Num::Int(x), Num::Int(y)) => x.cmp(&y),
        (Num::Int(x), Num::Float(y)) => cmp_int_float(x, y),
        (Num::Float(x), Num::Int(y)) => cmp_int_float(y, x).reverse(),
        (Num::Float(x), Num::Float(y)) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
    }
}

fn cmp_int_float(i: i64, f: f64) -> Ordering {
    /// 2^63, exactly representable as a float.
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    if f >= TWO_63 {
        return Ordering::Less;
    }
    if f < -TWO_63 {
        return Ordering::Greater;
    }
    // Here `f.trunc()` is in [-2^63, 2^63), so the cast is exact.
    let t = f.trunc();
    i.cmp(&(t as i64))
        .then(t.partial_cmp(&f).unwrap_or(Ordering::Equal))
}

/// An exact integer result as JSON, or `domain_error` when it does not fit in an `i64`.
pub(super) fn int_result<T: TryInto<i64> + Display + Copy>(x: T) -> Result<Value> {
    x.try_into()
        .map(Value::from)
        .map_err(|_| Error::domain(format!("the result {x} does not fit in a 64-bit integer")))
}

/// `a op b` in checked integers when both are integers, else in floats.
fn binary(
    args: &Args<'_>,
    int_op: fn(i64, i64) -> Option<i64>,
    float_op: fn(f64, f64) -> f64,
) -> Result<Value> {
    match (args.num("a")?, args.num("b")?) {
        (Num::Int(a), Num::Int(b)) => int_op(a, b)
            .map(Value::from)
            .ok_or_else(|| Error::domain("the result overflows a 64-bit integer")),
        (a, b) => float(float_op(a.as_f64(), b.as_f64())),
    }
}

pub(super) fn add(args: &Args<'_>) -> Result<Value> {
    binary(args, i64::checked_add, |a, b| a + b)
}

pub(super) fn subtract(args: &Args<'_>) -> Result<Value> {
    binary(args, i64::checked_sub, |a, b| a - b)
}

pub(super) fn multiply(args: &Args<'_>) -> Result<Value> {
    binary(args, i64::checked_mul, |a, b| a * b)
}

pub(super) fn divide(args: &Args<'_>) -> Result<Value> {
    let (a, b) = (args.f64("a")?, args.f64("b")?);
    if b == 0.0 {
        return Err(Error::domain("field 'b': division by zero"));
    }
    float(a / b)
}

pub(super) fn modulo(args: &Args<'_>) -> Result<Value> {
    let (a, b) = (args.i64("a")?, args.i64("b")?);
    if b == 0 {
        return Err(Error::domain("field 'b': division by zero"));
    }
    // `None` only for i64::MIN mod -1 (b = 0 is excluded above), whose remainder is 0.
    Ok(Value::from(a.checked_rem_euclid(b).unwrap_or(0)))
}

pub(super) fn power(args: &Args<'_>) -> Result<Value> {
    let (base, exponent) = (args.num("base")?, args.num("exponent")?);
    if let (Num::Int(b), Num::Int(e)) = (base, exponent) {
        if let Some(r) = int_pow(b, e) {
            return Ok(Value::from(r));
        }
    }
    // A negative exponent, a float operand, or an integer power past i64: a float,
    // which is `domain_error` only when it is not finite (e.g. 0^-1, (-8)^0.5).
    float(base.as_f64().powf(exponent.as_f64()))
}

/// `b^e` in integers, or `None` when `e < 0` or the result does not fit in an `i64`.
fn int_pow(b: i64, e: i64) -> Option<i64> {
    let e = u64::try_from(e).ok()?;
    match b {
        // The only bases whose powers stay in range for exponents past u32.
        0 => Some(i64::from(e == 0)),
        1 => Some(1),
        -1 => Some(if e % 2 == 0 { 1 } else { -1 }),
        _ => b.checked_pow(u32::try_from(e).ok()?),
    }
}

pub(super) fn sqrt(args: &Args<'_>) -> Result<Value> {
    let x = args.f64("x")?;
    if x < 0.0 {
        return Err(Error::domain(format!(
            "field 'x': no real square root of {x} < 0"
        )));
    }
    float(x.sqrt())
}

pub(super) fn abs(args: &Args<'_>) -> Result<Value> {
    match args.num("x")? {
        Num::Int(i) => i
            .checked_abs()
            .map(Value::from)
            .ok_or_else(|| Error::domain("the result overflows a 64-bit integer")),
        Num::Float(f) => float(f.abs()),
    }
}

pub(super) fn gcd(args: &Args<'_>) -> Result<Value> {
    let (a, b) = (args.i64("a")?, args.i64("b")?);
    int_result(gcd_u64(a.unsigned_abs(), b.unsigned_abs()))
}

pub(super) fn lcm(args: &Args<'_>) -> Result<Value> {
    let (a, b) = (args.i64("a")?.unsigned_abs(), args.i64("b")?.unsigned_abs());
    if a == 0 || b == 0 {
        return Ok(Value::from(0));
    }
    // a / gcd * b, in u128 so the product cannot wrap before the range check.
    int_result(u128::from(a / gcd_u64(a, b)) * u128::from(b))
}

fn gcd_u64(a: u64, b: u64) -> u64 {
    num_integer::Integer::gcd(&a, &b)
}

pub(super) fn round(args: &Args<'_>) -> Result<Value> {
    let digits = args.opt_i64("digits")?.unwrap_or(0);
    match args.num("x")? {
        // An integer is already rounded to any number of decimals >= 0.
        Num::Int(i) => Ok(Value::from(i)),
        Num::Float(x) => {
            let digits = u32::try_from(digits)
                .map_err(|_| Error::invalid("field 'digits': must be between 0 and 15"))?;
            float(round_decimal(x, digits)?)
        }
    }
}

/// Rounds `x` to `digits` decimals, half away from zero, working on its shortest
/// decimal form (the digits Rust prints, which read back as `x`) rather than on
/// `x * 10^digits`. 2.345 is stored as 2.34499999999999997…, so scaling would give
/// 2.34, while the number the client wrote, and the answer it expects, is 2.35.
/// Scaling could also overflow for large `x`.
fn round_decimal(x: f64, digits: u32) -> Result<f64> {
    let sci = format!("{:e}", x.abs()); // "2.345e0", "1e-7", "0e0"
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i64 = exp.parse().unwrap_or(0);
    let ds: Vec<u64> = mantissa
        .bytes()
        .filter(u8::is_ascii_digit)
        .map(|b| u64::from(b - b'0'))
        .collect();
    // |x| = 0.d1 d2 d3 … × 10^(exp + 1); keep the first `keep` digits.
    let keep = exp + 1 + i64::from(digits);
    let Ok(keep) = usize::try_from(keep) else {
        return Ok(0.0); // |x| < 10^-(digits + 1): below half a unit
    };
    let Some(&next) = ds.get(keep) else {
        return Ok(x); // no digit past the last kept one: nothing to round
    };
    // At most 16 digits (a shortest form has at most 17), so this fits in a u64.
    let kept = ds[..keep].iter().fold(0, |acc, d| acc * 10 + d) + u64::from(next >= 5);
    let r: f64 = format!("{kept}e-{digits}")
        .parse()
        .map_err(|e| Error::Internal(format!("math.round: {e}")))?;
    // No negative zero: round(-0.2) is 0.
    Ok(if r == 0.0 { 0.0 } else { r.copysign(x) })
}

pub(super) fn clamp(args: &Args<'_>) -> Result<Value> {
    let (x, min, max) = (args.num("x")?, args.num("min")?, args.num("max")?);
    if cmp_num(min, max) == Ordering::Greater {
        return Err(Error::invalid(format!(
            "field 'min': must be <= max, got min {} > max {}",
            min.as_f64(),
            max.as_f64()
        )));
    }
    num_value(if cmp_num(x, min) == Ordering::Less {
        min
    } else if cmp_num(x, max) == Ordering::Greater {
        max
    } else {
        x
    })
}

pub(super) fn log(args: &Args<'_>) -> Result<Value> {
    let x = args.f64("x")?;
    if x <= 0.0 {
        return Err(Error::domain(format!(
            "field 'x': the logarithm needs x > 0, got {x}"
        )));
    }
    let Some(base) = args.opt_f64("base")? else {
        return float(x.ln());
    };
    if base <= 0.0 || base == 1.0 {
        return Err(Error::domain(format!(
            "field 'base': must be > 0 and not 1, got {base}"
        )));
    }
    let r = if base == 2.0 {
        x.log2()
    } else if base == 10.0 {
        x.log10()
    } else {
        x.ln() / base.ln()
    };
    float(snap_to_exact_power(r, x, base))
}

/// `ln x / ln b` is often a rounding error off an exact answer (log_5 125 comes
/// out as 3.0000000000000004); when `r` is next to an integer `k` with `b^k == x`
/// exactly, the answer is `k`.
fn snap_to_exact_power(r: f64, x: f64, base: f64) -> f64 {
    let k = r.round();
    if (r - k).abs() < 1e-9 && base.powf(k) == x {
        k
    } else {
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{code, ok};
    use serde_json::json;

    #[test]
    fn cmp_num_is_exact_across_integers_and_floats() {
        use Ordering::*;
        let big = (1i64 << 53) + 1; // not representable as a float
        assert_eq!(
            cmp_num(Num::Int(big), Num::Float((1u64 << 53) as f64)),
            Greater
        );
        assert_eq!(
            cmp_num(Num::Float((1u64 << 53) as f64), Num::Int(big)),
            Less
        );
        assert_eq!(cmp_num(Num::Int(2), Num::Float(2.0)), Equal);
        assert_eq!(cmp_num(Num::Int(2), Num::Float(2.5)), Less);
        assert_eq!(cmp_num(Num::Int(-2), Num::Float(-2.5)), Greater);
        assert_eq!(cmp_num(Num::Int(0), Num::Float(-0.0)), Equal);
        assert_eq!(cmp_num(Num::Int(i64::MAX), Num::Float(9.3e18)), Less);
        assert_eq!(
            cmp_num(Num::Int(i64::MIN), Num::Float(i64::MIN as f64)),
            Equal
        );
        assert_eq!(cmp_num(Num::Int(i64::MIN), Num::Float(-1e19)), Greater);
        assert_eq!(cmp_num(Num::Float(-0.0), Num::Float(0.0)), Equal);
    }

    #[tokio::test]
    async fn add_subtract_multiply_keep_integers_and_check_overflow() {
        assert_eq!(ok("math.add", json!({"a": 2, "b": 3})).await, json!(5));
        assert_eq!(ok("math.add", json!({"a": 2, "b": 0.5})).await, json!(2.5));
        assert_eq!(
            ok("math.add", json!({"a": 0.1, "b": 0.2})).await,
            json!(0.30000000000000004)
        );
        assert_eq!(ok("math.add", json!({"a": -5, "b": 5})).await, json!(0));
        assert_eq!(
            ok("math.add", json!({"a": i64::MAX, "b": i64::MIN})).await,
            json!(-1)
        );
        assert_eq!(
            code("math.add", json!({"a": i64::MAX, "b": 1})).await,
            "domain_error"
        );
        assert_eq!(
            code("math.add", json!({"a": 1.7e308, "b": 1.7e308})).await,
            "domain_error"
        );
        assert_eq!(
            ok("math.subtract", json!({"a": 5, "b": 8})).await,
            json!(-3)
        );
        assert_eq!(
            ok("math.subtract", json!({"a": 1.5, "b": 2})).await,
            json!(-0.5)
        );
        assert_eq!(
            code("math.subtract", json!({"a": i64::MIN, "b": 1})).await,
            "domain_error"
        );
        assert_eq!(
            ok("math.multiply", json!({"a": -6, "b": 7})).await,
            json!(-42)
        );
        assert_eq!(
            ok("math.multiply", json!({"a": 0, "b": i64::MIN})).await,
            json!(0)
        );
        assert_eq!(
            ok("math.multiply", json!({"a": 1.5, "b": 4})).await,
            json!(6.0)
        );
        assert_eq!(
            code("math.multiply", json!({"a": 1i64 << 32, "b": 1i64 << 31})).await,
            "domain_error"
        );
    }

    #[tokio::test]
    async fn arithmetic_rejects_bad_input() {
        assert_eq!(code("math.add", json!({"a": 1})).await, "invalid_input");
        assert_eq!(
            code("math.add", json!({"a": "1", "b": 2})).await,
            "invalid_input"
        );
        assert_eq!(
            code("math.multiply", json!({"a": null, "b": 2})).await,
            "invalid_input"
        );
        assert_eq!(
            code("math.divide", json!({"a": 1, "b": true})).await,
            "invalid_input"
        );
    }

    #[tokio::test]
    async fn divide_is_a_float_and_rejects_zero() {
        assert_eq!(ok("math.divide", json!({"a": 7, "b": 2})).await, json!(3.5));
        assert_eq!(ok("math.divide", json!({"a": 6, "b": 3})).await, json!(2.0));
        assert_eq!(
            ok("math.divide", json!({"a": -1, "b": 4})).await,
            json!(-0.25)
        );
        assert_eq!(
            ok("math.divide", json!({"a": 0, "b": -3})).await,
            json!(-0.0)
        );
        assert_eq!(
            code("math.divide", json!({"a": 1, "b": 0})).await,
            "domain_error"
        );
        assert_eq!(
            code("math.divide", json!({"a": 1, "b": 0.0})).await,
            "domain_error"
        );
        assert_eq!(
            code("math.divide", json!({"a": 1e308, "b": 1e-308})).await,
            "domain_error"
        );
    }

    #[tokio::test]
    async fn modulo_is_euclidean() {
        assert_eq!(ok("math.modulo", json!({"a": 7, "b": 3})).await, json!(1));
        assert_eq!(ok("math.modulo", json!({"a": -7, "b": 3})).await, json!(2));
        assert_eq!(ok("math.modulo", json!({"a": 7, "b": -3})).await, json!(1));
        assert_eq!(ok("math.modulo", json!({"a": -7, "b": -3})).await, json!(2));
        assert_eq!(ok("math.modulo", json!({"a": 0, "b": 5})).await, json!(0));
        assert_eq!(
            ok("math.modulo", json!({"a": i64::MIN, "b": -1})).await,
            json!(0)
        );
        assert_eq!(
            ok("math.modulo", json!({"a": i64::MIN, "b": i64::MAX})).await,
            json!(i64::MAX - 1)
        );
        assert_eq!(ok("math.modulo", json!({"a": 9.0, "b": 4})).await, json!(1));
        assert_eq!(
            code("math.modulo", json!({"a": 7, "b": 0})).await,
            "domain_error"
        );
        assert_eq!(
            code("math.modulo", json!({"a": 7.5, "b": 2})).await,
            "invalid_input"
        );
    }

    #[tokio::test]
    async fn power_keeps_integers_while_they_fit() {
        assert_eq!(
            ok("math.power", json!({"base": 2, "exponent": 10})).await,
            json!(1024)
        );
        assert_eq!(
            ok("math.power", json!({"base": -3, "exponent": 3})).await,
            json!(-27)
        );
        assert_eq!(
            ok("math.power", json!({"base": 0, "exponent": 0})).await,
            json!(1)
        );
        assert_eq!(
            ok("math.power", json!({"base": 7, "exponent": 0})).await,
            json!(1)
        );
        assert_eq!(
            ok("math.power", json!({"base": 2, "exponent": 62})).await,
            json!(1i64 << 62)
        );
        assert_eq!(
            ok("math.power", json!({"base": -2, "exponent": 63})).await,
            json!(i64::MIN)
        );
        assert_eq!(
            ok("math.power", json!({"base": -1, "exponent": i64::MAX})).await,
            json!(-1)
        );
        assert_eq!(
            ok("math.power", json!({"base": 0, "exponent": i64::MAX})).await,
            json!(0)
        );
        assert_eq!(
            ok("math.power", json!({"base": 1, "exponent": i64::MAX})).await,
            json!(1)
        );
        // Past i64, or with a negative exponent, the answer is a float.
        assert_eq!(
            ok("math.power", json!({"base": 2, "exponent": 64})).await,
            json!(18446744073709551616.0)
        );
        assert_eq!(
            ok("math.power", json!({"base": 2, "exponent": -2})).await,
            json!(0.25)
        );
        assert_eq!(
            ok("math.power", json!({"base": 4, "exponent": 0.5})).await,
            json!(2.0)
        );
        assert_eq!(
            ok("math.power", json!({"base": 1.5, "exponent": 2})).await,
            json!(2.25)
        );
        assert_eq!(
            code("math.power", json!({"base": 10, "exponent": 400})).await,
            "domain_error"
        );
        assert_eq!(
            code("math.power", json!({"base": 2, "exponent": i64::MAX})).await,
            "domain_error"
        );
        assert_eq!(
            code("math.power", json!({"base": 0, "exponent": -1})).await,
            "domain_error"
        );
        assert_eq!(
            code("math.power", json!({"base": -8, "exponent": 0.5})).await,
            "domain_error"
        );
        assert_eq!(
            code("math.power", json!({"base": 2})).await,
            "invalid_input"
        );
    }

    #[tokio::test]
    async fn sqrt_and_abs() {
        assert_eq!(ok("math.sqrt", json!({"x": 16})).await, json!(4.0));
        assert_eq!(ok("math.sqrt", json!({"x": 0})).await, json!(0.0));
        assert_eq!(ok("math.sqrt", json!({"x": 0.25})).await, json!(0.5));
        assert_eq!(ok("math.sqrt", json!({"x": 1e308})).await, json!(1e154));
        assert_eq!(code("math.sqrt", json!({"x": -1})).await, "domain_error");
        assert_eq!(
            code("math.sqrt", json!({"x": -1e-300})).await,
            "domain_error"
        );
        assert_eq!(ok("math.abs", json!({"x": -4.5})).await, json!(4.5));
        assert_eq!(ok("math.abs", json!({"x": -7})).await, json!(7));
        assert_eq!(ok("math.abs", json!({"x": 0})).await, json!(0));
        assert_eq!(
            ok("math.abs", json!({"x": i64::MAX})).await,
            json!(i64::MAX)
        );
        assert_eq!(ok("math.abs", json!({"x": -0.0})).await, json!(0.0));
        assert_eq!(
            code("math.abs", json!({"x": i64::MIN})).await,
            "domain_error"
        );
        assert_eq!(code("math.abs", json!({"x": "-1"})).await, "invalid_input");
    }

    #[tokio::test]
    async fn gcd_and_lcm() {
        assert_eq!(ok("math.gcd", json!({"a": 12, "b": 18})).await, json!(6));
        assert_eq!(ok("math.gcd", json!({"a": -12, "b": 18})).await, json!(6));
        assert_eq!(ok("math.gcd", json!({"a": 0, "b": -5})).await, json!(5));
        assert_eq!(ok("math.gcd", json!({"a": 0, "b": 0})).await, json!(0));
        assert_eq!(ok("math.gcd", json!({"a": 17, "b": 31})).await, json!(1));
        assert_eq!(
            ok("math.gcd", json!({"a": i64::MIN, "b": 6})).await,
            json!(2)
        );
        assert_eq!(
            code("math.gcd", json!({"a": i64::MIN, "b": 0})).await,
            "domain_error"
        );
        assert_eq!(
            code("math.gcd", json!({"a": 1.5, "b": 3})).await,
            "invalid_input"
        );
        assert_eq!(ok("math.lcm", json!({"a": 4, "b": 6})).await, json!(12));
        assert_eq!(ok("math.lcm", json!({"a": -4, "b": 6})).await, json!(12));
        assert_eq!(ok("math.lcm", json!({"a": 0, "b": 6})).await, json!(0));
        assert_eq!(ok("math.lcm", json!({"a": 7, "b": 7})).await, json!(7));
        assert_eq!(
            ok("math.lcm", json!({"a": 1i64 << 62, "b": 2})).await,
            json!(1i64 << 62)
        );
        assert_eq!(
            code("math.lcm", json!({"a": i64::MAX, "b": i64::MAX - 1})).await,
            "domain_error"
        );
        assert_eq!(
            code("math.lcm", json!({"a": i64::MIN, "b": 1})).await,
            "domain_error"
        );
    }

    #[tokio::test]
    async fn round_is_half_away_from_zero_on_the_written_digits() {
        let round = |x: Value, digits: Value| ok("math.round", json!({"x": x, "digits": digits}));
        assert_eq!(round(json!(2.345), json!(2)).await, json!(2.35));
        assert_eq!(round(json!(1.005), json!(2)).await, json!(1.01));
        assert_eq!(round(json!(2.5), json!(null)).await, json!(3.0));
        assert_eq!(round(json!(-2.5), json!(0)).await, json!(-3.0));
        assert_eq!(round(json!(0.5), json!(0)).await, json!(1.0));
        assert_eq!(
            round(json!(0.49999999999999994), json!(0)).await,
            json!(0.0)
        );
        assert_eq!(round(json!(-0.2), json!(0)).await, json!(0.0));
        assert_eq!(round(json!(9.995), json!(2)).await, json!(10.0));
        assert_eq!(round(json!(99.5), json!(0)).await, json!(100.0));
        assert_eq!(round(json!(0.0004), json!(3)).await, json!(0.0));
        assert_eq!(round(json!(0.0005), json!(3)).await, json!(0.001));
        assert_eq!(round(json!(0.00005), json!(3)).await, json!(0.0));
        assert_eq!(round(json!(1.23456789), json!(15)).await, json!(1.23456789));
        assert_eq!(
            round(json!(0.1234567890123456), json!(15)).await,
            json!(0.123456789012346)
        );
        assert_eq!(round(json!(1e300), json!(2)).await, json!(1e300));
        assert_eq!(round(json!(1.5e-300), json!(15)).await, json!(0.0));
        assert_eq!(
            round(json!(123_456_789.987_654_33), json!(1)).await,
            json!(123456790.0)
        );
        assert_eq!(round(json!(-1.25), json!(1)).await, json!(-1.3));
        assert_eq!(ok("math.round", json!({"x": 42})).await, json!(42));
        assert_eq!(
            ok("math.round", json!({"x": -7, "digits": 3})).await,
            json!(-7)
        );
        assert_eq!(
            code("math.round", json!({"x": 1.5, "digits": 16})).await,
            "invalid_input"
        );
        assert_eq!(
            code("math.round", json!({"x": 1.5, "digits": -1})).await,
            "invalid_input"
        );
        assert_eq!(
            code("math.round", json!({"x": 1.5, "digits": 1.5})).await,
            "invalid_input"
        );
    }

    #[tokio::test]
    async fn clamp_keeps_the_given_number() {
        assert_eq!(
            ok("math.clamp", json!({"x": 15, "min": 0, "max": 10})).await,
            json!(10)
        );
        assert_eq!(
            ok("math.clamp", json!({"x": -3, "min": 0, "max": 10})).await,
            json!(0)
        );
        assert_eq!(
            ok("math.clamp", json!({"x": 5, "min": 0, "max": 10})).await,
            json!(5)
        );
        assert_eq!(
            ok("math.clamp", json!({"x": 2.5, "min": 0, "max": 10})).await,
            json!(2.5)
        );
        assert_eq!(
            ok("math.clamp", json!({"x": 11, "min": 0.5, "max": 10.5})).await,
            json!(10.5)
        );
        assert_eq!(
            ok("math.clamp", json!({"x": 3, "min": 3, "max": 3})).await,
            json!(3)
        );
        assert_eq!(
            code("math.clamp", json!({"x": 1, "min": 2, "max": 1})).await,
            "invalid_input"
        );
        assert_eq!(
            code("math.clamp", json!({"x": 1, "min": 0})).await,
            "invalid_input"
        );
    }

    #[tokio::test]
    async fn log_bases_and_domain() {
        assert_eq!(ok("math.log", json!({"x": 8, "base": 2})).await, json!(3.0));
        assert_eq!(
            ok("math.log", json!({"x": 1000, "base": 10})).await,
            json!(3.0)
        );
        assert_eq!(
            ok("math.log", json!({"x": 125, "base": 5})).await,
            json!(3.0)
        );
        assert_eq!(
            ok("math.log", json!({"x": 8, "base": 0.5})).await,
            json!(-3.0)
        );
        assert_eq!(ok("math.log", json!({"x": 1})).await, json!(0.0));
        assert_eq!(
            ok("math.log", json!({"x": std::f64::consts::E})).await,
            json!(1.0)
        );
        assert_eq!(
            ok("math.log", json!({"x": 2, "base": null})).await,
            json!(std::f64::consts::LN_2)
        );
        assert_eq!(
            ok("math.log", json!({"x": 2, "base": 10})).await,
            json!(std::f64::consts::LOG10_2)
        );
        assert_eq!(
            ok("math.log", json!({"x": 0.001, "base": 10})).await,
            json!(-3.0)
        );
        assert_eq!(code("math.log", json!({"x": 0})).await, "domain_error");
        assert_eq!(code("math.log", json!({"x": -1})).await, "domain_error");
        assert_eq!(
            code("math.log", json!({"x": 2, "base": 1})).await,
            "domain_error"
        );
        assert_eq!(
            code("math.log", json!({"x": 2, "base": 0})).await,
            "domain_error"
        );
        assert_eq!(
            code("math.log", json!({"x": 2, "base": -2})).await,
            "domain_error"
        );
        assert_eq!(
            code("math.log", json!({"x": 2, "base": "e"})).await,
            "invalid_input"
        );
    }
}
