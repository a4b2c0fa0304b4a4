//! The `math.*` built-ins.
//!
//! This file registers the 30 functions in catalog order; the bodies live in
//! submodules by kind: [`arith`] (scalar arithmetic), [`exact`] (big-integer
//! results), [`primes`], [`stats`] (arrays of numbers) and [`matrix`].

use serde_json::json;

use crate::schema::Ty;
use crate::Builtin;

mod arith;
mod exact;
mod matrix;
mod primes;
mod stats;

/// Most values a `values` array may hold.
const MAX_VALUES: usize = 100_000;
/// Most rows, and most columns, of a matrix.
const MAX_DIM: usize = 200;

/// An array of 1..=`MAX_VALUES` numbers.
fn values() -> Ty {
    Ty::non_empty_array(Ty::number(), MAX_VALUES)
}

/// A matrix of 1..=`MAX_DIM` rows of 1..=`MAX_DIM` numbers (equal row lengths are
/// checked by [`crate::schema::Args::matrix`]).
fn matrix() -> Ty {
    Ty::non_empty_array(Ty::non_empty_array(Ty::number(), MAX_DIM), MAX_DIM)
}

pub(crate) fn register(out: &mut Vec<Builtin>) {
    out.push(
        Builtin::describe(
            "math.add",
            "Returns a + b (an integer when both are integers)",
        )
        .param("a", Ty::number())
        .param("b", Ty::number())
        .example(json!({"a": 2, "b": 3}), json!(5))
        .inline(arith::add),
    );
    out.push(
        Builtin::describe(
            "math.subtract",
            "Returns a - b (an integer when both are integers)",
        )
        .param("a", Ty::number())
        .param("b", Ty::number())
        .example(json!({"a": 5, "b": 8}), json!(-3))
        .inline(arith::subtract),
    );
    out.push(
        Builtin::describe(
            "math.multiply",
            "Returns a * b (an integer when both are integers)",
        )
        .param("a", Ty::number())
        .param("b", Ty::number())
        .example(json!({"a": 6, "b": 7}), json!(42))
        .inline(arith::multiply),
    );
    out.push(
        Builtin::describe("math.divide", "Returns a / b as a float")
            .param("a", Ty::number())
            .param("b", Ty::number())
            .example(json!({"a": 7, "b": 2}), json!(3.5))
            .inline(arith::divide),
    );
    out.push(
        Builtin::describe(
            "math.modulo",
            "Returns the Euclidean remainder of a / b (always >= 0)",
        )
        .param("a", Ty::integer())
        .param("b", Ty::integer())
        .example(json!({"a": -7, "b": 3}), json!(2))
        .inline(arith::modulo),
    );
    out.push(
        Builtin::describe(
            "math.power",
            "Returns base raised to exponent (an integer when both are integers, exponent >= 0 and it fits)",
        )
        .param("base", Ty::number())
        .param("exponent", Ty::number())
        .example(json!({"base": 2, "exponent": 10}), json!(1024))
        .inline(arith::power),
    );
    out.push(
        Builtin::describe("math.sqrt", "Returns the square root of x")
            .param("x", Ty::number())
            .example(json!({"x": 2}), json!(std::f64::consts::SQRT_2))
            .inline(arith::sqrt),
    );
    out.push(
        Builtin::describe("math.abs", "Returns the absolute value of x")
            .param("x", Ty::number())
            .example(json!({"x": -4.5}), json!(4.5))
            .inline(arith::abs),
    );
    out.push(
        Builtin::describe("math.factorial", "Returns n! exactly, as a decimal string")
            .param("n", Ty::int_range(0, exact::MAX_FACTORIAL))
            .example(json!({"n": 10}), json!("3628800"))
            .blocking(exact::factorial),
    );
    out.push(
        Builtin::describe(
            "math.fibonacci",
            "Returns the n-th Fibonacci number exactly, as a decimal string",
        )
        .param("n", Ty::int_range(0, exact::MAX_FIBONACCI))
        .example(json!({"n": 10}), json!("55"))
        .blocking(exact::fibonacci),
    );
    out.push(
        Builtin::describe(
            "math.gcd",
            "Returns the greatest common divisor of a and b (>= 0)",
        )
        .param("a", Ty::integer())
        .param("b", Ty::integer())
        .example(json!({"a": 12, "b": 18}), json!(6))
        .inline(arith::gcd),
    );
    out.push(
        Builtin::describe(
            "math.lcm",
            "Returns the least common multiple of a and b (>= 0)",
        )
        .param("a", Ty::integer())
        .param("b", Ty::integer())
        .example(json!({"a": 4, "b": 6}), json!(12))
        .inline(arith::lcm),
    );
    out.push(
        Builtin::describe(
            "math.is_prime",
            "Returns whether n is prime (exact for every 63-bit n)",
        )
        .param("n", Ty::int_range(0, i64::MAX))
        .example(json!({"n": 97}), json!(true))
        .inline(primes::is_prime),
    );
    out.push(
        Builtin::describe(
            "math.prime_factors",
            "Returns the prime factors of n, ascending, with repetition",
        )
        .param("n", Ty::int_range(2, i64::MAX))
        .example(json!({"n": 360}), json!([2, 2, 2, 3, 3, 5]))
        .blocking(primes::prime_factors),
    );
    out.push(
        Builtin::describe("math.primes_up_to", "Returns every prime <= n, ascending")
            .param("n", Ty::int_range(0, primes::MAX_SIEVE_N))
            .example(json!({"n": 20}), json!([2, 3, 5, 7, 11, 13, 17, 19]))
            .blocking(primes::primes_up_to),
    );
    out.push(
        Builtin::describe("math.nth_prime", "Returns the n-th prime (the first is 2)")
            .param("n", Ty::int_range(1, primes::MAX_NTH))
            .example(json!({"n": 10}), json!(29))
            .blocking(primes::nth_prime),
    );
    out.push(
        Builtin::describe(
            "math.sum",
            "Returns the sum of the values (an integer when all are integers)",
        )
        .param("values", Ty::array(Ty::number(), MAX_VALUES))
        .example(json!({"values": [1, 2, 3.5]}), json!(6.5))
        .linear(stats::sum),
    );
    out.push(
        Builtin::describe("math.mean", "Returns the arithmetic mean of the values")
            .param("values", values())
            .example(json!({"values": [1, 2, 3, 4]}), json!(2.5))
            .linear(stats::mean),
    );
    out.push(
        Builtin::describe(
            "math.median",
            "Returns the median of the values (the mean of the two middle ones for an even count)",
        )
        .param("values", values())
        .example(json!({"values": [3, 1, 4, 1, 5]}), json!(3))
        .linear(stats::median),
    );
    out.push(
        Builtin::describe("math.mode", "Returns the most frequent values, ascending")
            .param("values", values())
            .example(json!({"values": [1, 2, 2, 3, 3]}), json!([2, 3]))
            .linear(stats::mode),
    );
    out.push(
        Builtin::describe(
            "math.variance",
            "Returns the population (or, with sample, the sample) variance",
        )
        .param("values", values())
        .optional("sample", Ty::Bool)
        .example(json!({"values": [2, 4, 4, 4, 5, 5, 7, 9]}), json!(4.0))
        .linear(stats::variance),
    );
    out.push(
        Builtin::describe(
            "math.stddev",
            "Returns the population (or, with sample, the sample) standard deviation",
        )
        .param("values", values())
        .optional("sample", Ty::Bool)
        .example(json!({"values": [2, 4, 4, 4, 5, 5, 7, 9]}), json!(2.0))
        .linear(stats::stddev),
    );
    out.push(
        Builtin::describe("math.min", "Returns the smallest value")
            .param("values", values())
            .example(json!({"values": [3, -1, 2]}), json!(-1))
            .linear(stats::min),
    );
    out.push(
        Builtin::describe("math.max", "Returns the largest value")
            .param("values", values())
            .example(json!({"values": [3, -1, 2]}), json!(3))
            .linear(stats::max),
    );
    out.push(
        Builtin::describe(
            "math.round",
            "Returns x rounded to digits decimals, half away from zero",
        )
        .param("x", Ty::number())
        .optional("digits", Ty::int_range(0, 15))
        .example(json!({"x": 2.345, "digits": 2}), json!(2.35))
        .inline(arith::round),
    );
    out.push(
        Builtin::describe("math.clamp", "Returns x limited to the range [min, max]")
            .param("x", Ty::number())
            .param("min", Ty::number())
            .param("max", Ty::number())
            .example(json!({"x": 15, "min": 0, "max": 10}), json!(10))
            .inline(arith::clamp),
    );
    out.push(
        Builtin::describe("math.log", "Returns the logarithm of x in base (default e)")
            .param("x", Ty::number())
            .optional("base", Ty::number())
            .example(json!({"x": 8, "base": 2}), json!(3.0))
            .inline(arith::log),
    );
    out.push(
        Builtin::describe(
            "math.binomial",
            "Returns C(n, k) exactly, as a decimal string (0 when k > n)",
        )
        .param("n", Ty::int_range(0, exact::MAX_BINOMIAL))
        .param("k", Ty::int_range(0, exact::MAX_BINOMIAL))
        .example(json!({"n": 5, "k": 2}), json!("10"))
        .blocking(exact::binomial),
    );
    out.push(
        Builtin::describe("math.matrix_multiply", "Returns the matrix product a x b")
            .param("a", matrix())
            .param("b", matrix())
            .example(
                json!({"a": [[1, 2], [3, 4]], "b": [[5, 6], [7, 8]]}),
                json!([[19.0, 22.0], [43.0, 50.0]]),
            )
            .blocking(matrix::multiply),
    );
    out.push(
        Builtin::describe("math.solve_linear", "Returns the vector x with a x = b")
            .param("a", matrix())
            .param("b", Ty::non_empty_array(Ty::number(), MAX_DIM))
            .example(
                json!({"a": [[2, 1], [1, 3]], "b": [5, 10]}),
                json!([1.0, 3.0]),
            )
            .blocking(matrix::solve_linear),
    );
}
