//! Exact big-integer results, as decimal strings: factorial, fibonacci, binomial.

use num_bigint::BigUint;
use num_traits::{One, Zero};
use serde_json::Value;
use sopm_core::Result;

use crate::schema::Args;

/// Largest `n` of `math.factorial` (5000! has 16326 digits).
pub(super) const MAX_FACTORIAL: i64 = 5000;
/// Largest `n` of `math.fibonacci` (F(20000) has 4180 digits).
pub(super) const MAX_FIBONACCI: i64 = 20_000;
/// Largest `n` and `k` of `math.binomial`.
pub(super) const MAX_BINOMIAL: i64 = 5000;

fn decimal(n: &BigUint) -> Value {
    Value::String(n.to_string())
}

pub(super) fn factorial(args: &Args<'_>) -> Result<Value> {
    let n = args.u64("n")?;
    // Small factors are multiplied together in one machine word before each big
    // multiplication, which needs a few times fewer passes over the big number.
    let mut acc = BigUint::one();
    let mut word: u64 = 1;
    for f in 2..=n {
        match word.checked_mul(f) {
            Some(w) => word = w,
            None => {
                acc *= word;
                word = f;
            }
        }
    }
    Ok(decimal(&(acc * word)))
}

/// F(n) by fast doubling: F(2k) = F(k)·(2F(k+1) − F(k)) and
/// F(2k+1) = F(k)² + F(k+1)², walking the bits of `n` from the top, so only
/// O(log n) big multiplications.
pub(super) fn fibonacci(args: &Args<'_>) -> Result<Value> {
    let n = args.u64("n")?;
    // (a, b) = (F(k), F(k+1)), starting at k = 0.
    let (mut a, mut b) = (BigUint::zero(), BigUint::one());
    for bit in (0..u64::BITS - n.leading_zeros()).rev() {
        // 2F(k+1) >= F(k), so the subtraction cannot underflow.
        let f2k = &a * ((&b << 1u32) - &a);
        let f2k1 = &a * &a + &b * &b;
        if (n >> bit) & 1 == 1 {
            b = &f2k + &f2k1;
            a = f2k1;
        } else {
            a = f2k;
            b = f2k1;
        }
    }
    Ok(decimal(&a))
}

/// C(n, k) multiplicatively with k = min(k, n − k): after step i the running value is
/// C(n − k + i, i), an integer, so each division is exact.
pub(super) fn binomial(args: &Args<'_>) -> Result<Value> {
    let (n, k) = (args.u64("n")?, args.u64("k")?);
    if k > n {
        return Ok(decimal(&BigUint::zero()));
    }
    let k = k.min(n - k);
    let mut c = BigUint::one();
    for i in 1..=k {
        c *= n - k + i;
        c /= i;
    }
    Ok(decimal(&c))
}

#[cfg(test)]
mod tests {
    use crate::testing::{code, ok};
    use serde_json::{json, Value};

    fn digits(v: &Value) -> &str {
        v.as_str()
            .unwrap_or_else(|| panic!("expected a string, got {v}"))
    }

    #[tokio::test]
    async fn factorial_small_and_bounds() {
        for (n, f) in [
            (0, "1"),
            (1, "1"),
            (2, "2"),
            (5, "120"),
            (10, "3628800"),
            (20, "2432902008176640000"),
        ] {
            assert_eq!(
                ok("math.factorial", json!({"n": n})).await,
                json!(f),
                "{n}!"
            );
        }
        assert_eq!(
            ok("math.factorial", json!({"n": 25})).await,
            json!("15511210043330985984000000")
        );
        assert_eq!(
            code("math.factorial", json!({"n": -1})).await,
            "invalid_input"
        );
        assert_eq!(
            code("math.factorial", json!({"n": 5001})).await,
            "invalid_input"
        );
        assert_eq!(
            code("math.factorial", json!({"n": 2.5})).await,
            "invalid_input"
        );
        assert_eq!(
            code("math.factorial", json!({"n": "5"})).await,
            "invalid_input"
        );
    }

    #[tokio::test]
    async fn factorial_at_the_bound() {
        let v = ok("math.factorial", json!({"n": 5000})).await;
        let s = digits(&v);
        assert_eq!(s.len(), 16326);
        assert!(s.starts_with("4228577926605543522201064200233584405390786674626646748849782402181358052708108200690899047871706387"));
        // 5000! has 1249 trailing zeros (5000/5 + 5000/25 + 5000/125 + 5000/625 + 5000/3125).
        let zeros = s.len() - s.trim_end_matches('0').len();
        assert_eq!(zeros, 1249);
    }

    #[tokio::test]
    async fn fibonacci_values() {
        for (n, f) in [
            (0, "0"),
            (1, "1"),
            (2, "1"),
            (3, "2"),
            (10, "55"),
            (50, "12586269025"),
        ] {
            assert_eq!(
                ok("math.fibonacci", json!({"n": n})).await,
                json!(f),
                "F({n})"
            );
        }
        assert_eq!(
            ok("math.fibonacci", json!({"n": 100})).await,
            json!("354224848179261915075")
        );
        assert_eq!(
            ok("math.fibonacci", json!({"n": 300})).await,
            json!("222232244629420445529739893461909967206666939096499764990979600")
        );
        assert_eq!(
            code("math.fibonacci", json!({"n": 20001})).await,
            "invalid_input"
        );
        assert_eq!(
            code("math.fibonacci", json!({"n": -1})).await,
            "invalid_input"
        );
    }

    #[tokio::test]
    async fn fibonacci_at_the_bound() {
        let v = ok("math.fibonacci", json!({"n": 20000})).await;
        let s = digits(&v);
        assert_eq!(s.len(), 4180);
        assert!(s.starts_with("2531162323732361242240155003520607291766356485802485278951929841991312781760541315230153423463758831"));
        // F(n) mod 10 repeats every 60 and 20000 = 20 (mod 60): the last digit is
        // that of F(20) = 6765. F(4) = 3 divides F(20000) (4 divides 20000), so its
        // digit sum is a multiple of 3.
        assert!(s.ends_with('5'));
        let digit_sum: u32 = s.bytes().map(|b| u32::from(b - b'0')).sum();
        assert_eq!(digit_sum % 3, 0);
    }

    #[tokio::test]
    async fn binomial_values() {
        for (n, k, c) in [
            (5, 2, "10"),
            (5, 0, "1"),
            (5, 5, "1"),
            (0, 0, "1"),
            (3, 4, "0"),
            (0, 5000, "0"),
            (52, 5, "2598960"),
            (100, 50, "100891344545564193334812497256"),
        ] {
            assert_eq!(
                ok("math.binomial", json!({"n": n, "k": k})).await,
                json!(c),
                "C({n}, {k})"
            );
        }
        assert_eq!(
            code("math.binomial", json!({"n": 5001, "k": 1})).await,
            "invalid_input"
        );
        assert_eq!(
            code("math.binomial", json!({"n": 5, "k": -1})).await,
            "invalid_input"
        );
        assert_eq!(
            code("math.binomial", json!({"n": 5})).await,
            "invalid_input"
        );
    }

    #[tokio::test]
    async fn binomial_at_the_bound_is_symmetric() {
        let mid = ok("math.binomial", json!({"n": 5000, "k": 2500})).await;
        assert_eq!(digits(&mid).len(), 1504);
        assert_eq!(
            ok("math.binomial", json!({"n": 5000, "k": 1})).await,
            json!("5000")
        );
        assert_eq!(
            ok("math.binomial", json!({"n": 5000, "k": 4998})).await,
            json!("12497500")
        );
        assert_eq!(
            ok("math.binomial", json!({"n": 5000, "k": 1234})).await,
            ok("math.binomial", json!({"n": 5000, "k": 3766})).await
        );
    }
}
