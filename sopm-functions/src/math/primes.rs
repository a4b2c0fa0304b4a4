//! Primes: is_prime (Miller-Rabin), prime_factors (Pollard-Brent), and a segmented
//! sieve behind primes_up_to and nth_prime.

use num_integer::Integer;
use serde_json::Value;
use sopm_core::{Error, Result};

use crate::schema::Args;

/// Largest `n` of `math.primes_up_to`.
pub(super) const MAX_SIEVE_N: i64 = 1_000_000;
/// Largest `n` of `math.nth_prime` (the millionth prime is 15,485,863).
pub(super) const MAX_NTH: i64 = 1_000_000;

pub(super) fn is_prime(args: &Args<'_>) -> Result<Value> {
    Ok(Value::Bool(is_prime_u64(args.u64("n")?)))
}

pub(super) fn prime_factors(args: &Args<'_>) -> Result<Value> {
    let n = args.u64("n")?;
    if n < 2 {
        return Err(Error::invalid("field 'n': must be >= 2"));
    }
    Ok(Value::from(factorize(n)?))
}

pub(super) fn primes_up_to(args: &Args<'_>) -> Result<Value> {
    let n = args.usize("n")?;
    let mut out = Vec::new();
    if n >= 2 {
        out.push(Value::from(2));
    }
    sieve_odd(n, |first, composite| {
        out.extend(primes_in(first, composite).map(Value::from));
        true
    });
    Ok(Value::Array(out))
}

pub(super) fn nth_prime(args: &Args<'_>) -> Result<Value> {
    let n = args.usize("n")?;
    if n <= 1 {
        return Ok(Value::from(2));
    }
    // Whole segments are counted (a branch-free count); only the segment holding
    // the answer is walked prime by prime.
    let mut odd_to_skip = n - 2; // odd primes before the answer (2 is the first prime)
    let mut found = None;
    sieve_odd(nth_prime_bound(n), |first, composite| {
        let count = composite.iter().filter(|&&c| !c).count();
        if count <= odd_to_skip {
            odd_to_skip -= count;
            return true;
        }
        found = primes_in(first, composite).nth(odd_to_skip);
        false
    });
    found
        .map(Value::from)
        .ok_or_else(|| Error::Internal(format!("math.nth_prime: no {n}-th prime below the bound")))
}

/// An upper bound for the n-th prime: p(n) < n (ln n + ln ln n) for n >= 6 (Rosser's
/// theorem), and p(5) = 11 covers the smaller ones.
fn nth_prime_bound(n: usize) -> usize {
    if n < 6 {
        return 11;
    }
    let x = n as f64;
    (x * (x.ln() + x.ln().ln())) as usize + 1
}

/// `a * b mod m` without overflow.
fn mul_mod(a: u64, b: u64, m: u64) -> u64 {
    ((u128::from(a) * u128::from(b)) % u128::from(m)) as u64
}

fn pow_mod(mut base: u64, mut exp: u64, m: u64) -> u64 {
    let mut acc = 1 % m;
    base %= m;
    while exp > 0 {
        if exp & 1 == 1 {
            acc = mul_mod(acc, base, m);
        }
        base = mul_mod(base, base, m);
        exp >>= 1;
    }
    acc
}

/// Deterministic Miller-Rabin: the first twelve primes as bases are proven to
/// decide every n < 3.3·10^24, so every `u64`.
fn is_prime_u64(n: u64) -> bool {
    const BASES: [u64; 12] = [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37];
    if n < 2 {
        return false;
    }
    if let Some(&p) = BASES.iter().find(|&&p| n.is_multiple_of(p)) {
        return n == p;
    }
    // n - 1 = d · 2^s with d odd.
    let s = (n - 1).trailing_zeros();
    let d = (n - 1) >> s;
    'bases: for a in BASES {
        let mut x = pow_mod(a, d, n);
        if x == 1 || x == n - 1 {
            continue;
        }
        for _ in 1..s {
            x = mul_mod(x, x, n);
            if x == n - 1 {
                continue 'bases;
            }
        }
        return false;
    }
    true
}

/// Prime factors of `n >= 2`, ascending, with repetition.
///
/// Trial division takes out the factors below 1000 cheaply; what is left has only
/// large prime factors, which Pollard's rho (Brent's variant) splits in about
/// n^(1/4) steps, so even a product of two 31-bit primes takes milliseconds.
fn factorize(mut n: u64) -> Result<Vec<u64>> {
    const TRIAL_LIMIT: u64 = 1000;
    let mut factors = Vec::new();
    let mut d = 2;
    while d < TRIAL_LIMIT && d * d <= n {
        while n.is_multiple_of(d) {
            factors.push(d);
            n /= d;
        }
        d += if d == 2 { 1 } else { 2 };
    }
    let mut pending = vec![n];
    while let Some(m) = pending.pop() {
        if m == 1 {
            continue;
        }
        if is_prime_u64(m) {
            factors.push(m);
            continue;
        }
        let f = (1..=MAX_RHO_TRIES)
            .find_map(|c| brent(m, c))
            .ok_or_else(|| {
                Error::Internal(format!("math.prime_factors: no factor of {m} found"))
            })?;
        pending.push(f);
        pending.push(m / f);
    }
    factors.sort_unstable();
    Ok(factors)
}

/// How many polynomials `x² + c` to try on one composite before giving up (in
/// practice the first one almost always succeeds).
const MAX_RHO_TRIES: u64 = 32;

/// One run of Pollard's rho with Brent's cycle finding on `x -> x² + c (mod n)`:
/// a non-trivial factor of the odd composite `n`, or `None` when this `c` finds none.
///
/// The differences |x − y| are multiplied together in batches so that one gcd serves
/// `BATCH` steps; when a batch overshoots (its gcd is `n`), it is replayed one step
/// at a time. The cycle length searched is capped so a run always ends.
fn brent(n: u64, c: u64) -> Option<u64> {
    const BATCH: u64 = 128;
    /// Far above the ~2^17 steps a factor below 2^31.5 needs.
    const MAX_CYCLE: u64 = 1 << 24;
    let f = |x: u64| (mul_mod(x, x, n) + c) % n;
    let (mut x, mut y, mut saved) = (2, 2, 2);
    let (mut q, mut g, mut r) = (1, 1, 1);
    while g == 1 && r <= MAX_CYCLE {
        x = y;
        for _ in 0..r {
            y = f(y);
        }
        let mut k = 0;
        while k < r && g == 1 {
            saved = y;
            for _ in 0..BATCH.min(r - k) {
                y = f(y);
                q = mul_mod(q, x.abs_diff(y), n);
            }
            g = q.gcd(&n);
            k += BATCH;
        }
        r *= 2;
    }
    if g == n {
        g = 1;
        for _ in 0..BATCH {
            saved = f(saved);
            g = x.abs_diff(saved).gcd(&n);
            if g != 1 {
                break;
            }
        }
    }
    (g != 1 && g != n).then_some(g)
}

/// Sieves the odd numbers 3, 5, 7, … `<= limit`, handing them to `visit` one segment
/// at a time as `(first, composite)`, where `composite[i]` says whether `first + 2i`
/// is composite; stops early when `visit` returns `false`.
///
/// A segmented sieve of Eratosthenes: the base primes up to √limit cross off their
/// multiples one cache-sized segment at a time, so the ~16 million numbers of
/// `nth_prime(1_000_000)` never need a flat array far larger than the cache.
/// Positions are indices of odd numbers (i stands for 2i + 1), in which the odd
/// multiples of p are p apart.
fn sieve_odd(limit: usize, mut visit: impl FnMut(usize, &[bool]) -> bool) {
    /// Odd numbers per segment (one byte each).
    const SEGMENT: usize = 1 << 15;
    let end = limit.div_ceil(2); // the odd numbers <= limit are 2i + 1 for i < end
    let base = odd_primes_up_to(limit.isqrt());
    // Per base prime p, the index of the next multiple to cross off, starting at p²:
    // the multiples below it have a smaller prime factor that crosses them off.
    let mut next: Vec<usize> = base.iter().map(|p| p * p / 2).collect();
    let mut composite = vec![false; SEGMENT];
    let mut low = 1; // the index of 3
    while low < end {
        let len = SEGMENT.min(end - low);
        let high = low + len;
        let segment = &mut composite[..len];
        segment.fill(false);
        for (&p, at) in base.iter().zip(next.iter_mut()) {
            if *at < high {
                segment[*at - low..]
                    .iter_mut()
                    .step_by(p)
                    .for_each(|c| *c = true);
                *at += (high - *at).div_ceil(p) * p;
            }
        }
        if !visit(2 * low + 1, segment) {
            return;
        }
        low = high;
    }
}

/// The primes of one segment handed out by [`sieve_odd`].
fn primes_in(first: usize, composite: &[bool]) -> impl Iterator<Item = usize> + '_ {
    composite
        .iter()
        .enumerate()
        .filter(|&(_, &c)| !c)
        .map(move |(i, _)| first + 2 * i)
}

/// The odd primes `<= n` by a plain sieve (used for the sieve's base primes, n <= ~4100).
fn odd_primes_up_to(n: usize) -> Vec<usize> {
    let mut composite = vec![false; n + 1];
    let mut primes = Vec::new();
    for i in (3..=n).step_by(2) {
        if !composite[i] {
            primes.push(i);
            for m in (i * i..=n).step_by(2 * i) {
                composite[m] = true;
            }
        }
    }
    primes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{code, ok};
    use serde_json::json;

    /// 2^63 − 1, the largest input.
    const MAX: u64 = i64::MAX as u64;

    #[test]
    fn miller_rabin_agrees_with_trial_division() {
        let trial = |n: u64| {
            n >= 2
                && (2..)
                    .take_while(|d| d * d <= n)
                    .all(|d| !n.is_multiple_of(d))
        };
        for n in 0..20_000 {
            assert_eq!(is_prime_u64(n), trial(n), "{n}");
        }
    }

    #[tokio::test]
    async fn is_prime_edges_and_pseudoprimes() {
        let is_prime = |n: u64| ok("math.is_prime", json!({"n": n}));
        for n in [
            2,
            3,
            5,
            37,
            41,
            97,
            7919,
            1_000_000_007,
            2_147_483_647,
            MAX - 24,
        ] {
            assert_eq!(is_prime(n).await, json!(true), "{n}");
        }
        // Carmichael numbers and strong pseudoprimes to the first few prime bases.
        for n in [
            0,
            1,
            4,
            9,
            561,
            1105,
            2047,
            3_215_031_751,
            3_825_123_056_546_413_051,
            MAX,
        ] {
            assert_eq!(is_prime(n).await, json!(false), "{n}");
        }
        // 2^61 − 1 is a Mersenne prime; (2^31 − 1)² is a square of a prime.
        assert_eq!(is_prime((1 << 61) - 1).await, json!(true));
        assert_eq!(is_prime(2_147_483_647 * 2_147_483_647).await, json!(false));
        assert_eq!(
            code("math.is_prime", json!({"n": -1})).await,
            "invalid_input"
        );
        assert_eq!(
            code("math.is_prime", json!({"n": MAX as f64 * 2.0})).await,
            "invalid_input"
        );
        assert_eq!(
            code("math.is_prime", json!({"n": 7.5})).await,
            "invalid_input"
        );
    }

    #[tokio::test]
    async fn prime_factors_small() {
        let factors = |n: u64| ok("math.prime_factors", json!({"n": n}));
        assert_eq!(factors(360).await, json!([2, 2, 2, 3, 3, 5]));
        assert_eq!(factors(2).await, json!([2]));
        assert_eq!(factors(97).await, json!([97]));
        assert_eq!(factors(1024).await, json!([2, 2, 2, 2, 2, 2, 2, 2, 2, 2]));
        assert_eq!(factors(999_983 * 999_983).await, json!([999_983, 999_983]));
        assert_eq!(
            code("math.prime_factors", json!({"n": 1})).await,
            "invalid_input"
        );
        assert_eq!(
            code("math.prime_factors", json!({"n": 0})).await,
            "invalid_input"
        );
        assert_eq!(
            code("math.prime_factors", json!({"n": -12})).await,
            "invalid_input"
        );
    }

    #[tokio::test]
    async fn prime_factors_at_the_bound() {
        let factors = |n: u64| ok("math.prime_factors", json!({"n": n}));
        // 2^63 − 1 = 7² · 73 · 127 · 337 · 92737 · 649657.
        assert_eq!(
            factors(MAX).await,
            json!([7, 7, 73, 127, 337, 92737, 649_657])
        );
        // The largest prime below 2^63 and the hardest case for rho: two primes near √(2^63).
        assert_eq!(factors(MAX - 24).await, json!([MAX - 24]));
        assert_eq!(
            factors(3_037_000_453 * 3_037_000_493).await,
            json!([3_037_000_453u64, 3_037_000_493u64])
        );
        // A cube of a prime and a square of a prime, both past the trial division.
        assert_eq!(
            factors(2_097_143u64.pow(3)).await,
            json!([2_097_143, 2_097_143, 2_097_143])
        );
        assert_eq!(
            factors(3_037_000_493 * 3_037_000_493).await,
            json!([3_037_000_493u64, 3_037_000_493u64])
        );
        assert_eq!(
            factors(3_825_123_056_546_413_051).await,
            json!([149_491, 747_451, 34_233_211])
        );
    }

    #[test]
    fn factorize_multiplies_back() {
        for n in (2..5000).chain((MAX - 2000)..=MAX) {
            let f = factorize(n).unwrap_or_else(|e| panic!("{n}: {e}"));
            assert!(
                f.windows(2).all(|w| w[0] <= w[1]),
                "{n}: {f:?} not ascending"
            );
            assert!(f.iter().all(|&p| is_prime_u64(p)), "{n}: {f:?}");
            assert_eq!(f.iter().product::<u64>(), n);
        }
    }

    #[tokio::test]
    async fn primes_up_to_small() {
        let primes = |n: u64| ok("math.primes_up_to", json!({"n": n}));
        assert_eq!(primes(0).await, json!([]));
        assert_eq!(primes(1).await, json!([]));
        assert_eq!(primes(2).await, json!([2]));
        assert_eq!(primes(3).await, json!([2, 3]));
        assert_eq!(primes(20).await, json!([2, 3, 5, 7, 11, 13, 17, 19]));
        assert_eq!(primes(49).await.as_array().map(Vec::len), Some(15));
        assert_eq!(
            code("math.primes_up_to", json!({"n": 1_000_001})).await,
            "invalid_input"
        );
        assert_eq!(
            code("math.primes_up_to", json!({"n": -5})).await,
            "invalid_input"
        );
    }

    #[tokio::test]
    async fn primes_up_to_the_bound() {
        let v = ok("math.primes_up_to", json!({"n": 1_000_000})).await;
        let primes = v.as_array().unwrap_or_else(|| panic!("not an array: {v}"));
        assert_eq!(primes.len(), 78_498);
        assert_eq!(primes.last(), Some(&json!(999_983)));
        assert!(primes.windows(2).all(|w| w[0].as_u64() < w[1].as_u64()));
    }

    #[test]
    fn sieve_agrees_with_miller_rabin_across_segments() {
        // Several segments of 2^15 odd numbers, so the segment edges are crossed.
        let mut sieved = vec![2];
        sieve_odd(300_001, |first, composite| {
            sieved.extend(primes_in(first, composite).map(|p| p as u64));
            true
        });
        let expected: Vec<u64> = (0..=300_001).filter(|&n| is_prime_u64(n)).collect();
        assert_eq!(sieved, expected);
    }

    #[tokio::test]
    async fn nth_prime_values() {
        for (n, p) in [
            (1, 2),
            (2, 3),
            (3, 5),
            (5, 11),
            (6, 13),
            (10, 29),
            (100, 541),
            (10_000, 104_729),
        ] {
            assert_eq!(
                ok("math.nth_prime", json!({"n": n})).await,
                json!(p),
                "prime #{n}"
            );
        }
        assert_eq!(
            code("math.nth_prime", json!({"n": 0})).await,
            "invalid_input"
        );
        assert_eq!(
            code("math.nth_prime", json!({"n": 1_000_001})).await,
            "invalid_input"
        );
    }

    #[tokio::test]
    async fn nth_prime_agrees_with_miller_rabin() {
        let primes: Vec<u64> = (0..300_000).filter(|&n| is_prime_u64(n)).collect();
        // The first segment ends at 65,537, between the 6542nd and 6543rd primes.
        let ns = (1..primes.len()).step_by(257).chain(6535..6550);
        for n in ns {
            assert_eq!(
                ok("math.nth_prime", json!({"n": n})).await,
                json!(primes[n - 1]),
                "prime #{n}"
            );
        }
    }

    #[tokio::test]
    async fn nth_prime_at_the_bound() {
        assert_eq!(
            ok("math.nth_prime", json!({"n": 1_000_000})).await,
            json!(15_485_863)
        );
        assert_eq!(
            ok("math.nth_prime", json!({"n": 999_999})).await,
            json!(15_485_857)
        );
    }
}
