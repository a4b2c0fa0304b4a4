//! Matrices: matrix_multiply and solve_linear.

use serde_json::Value;
use sopm_core::{Error, Result};

use crate::schema::{float, Args};

/// After each row is scaled so its largest entry is in [1, 2), a pivot this small
/// means the matrix is singular, or so close to it that the answer would be noise.
const SINGULAR_PIVOT: f64 = 1e-12;

fn columns(m: &[Vec<f64>]) -> usize {
    m.first().map_or(0, Vec::len)
}

/// Floats as a JSON array; a NaN or infinity is `domain_error`.
fn vector(xs: Vec<f64>) -> Result<Value> {
    xs.into_iter()
        .map(float)
        .collect::<Result<Vec<_>>>()
        .map(Value::Array)
}

pub(super) fn multiply(args: &Args<'_>) -> Result<Value> {
    let (a, b) = (args.matrix("a")?, args.matrix("b")?);
    let inner = columns(&a);
    if b.len() != inner {
        return Err(Error::invalid(format!(
            "field 'b': expected {inner} rows (one per column of 'a'), got {}",
            b.len()
        )));
    }
    let mut product = vec![vec![0.0; columns(&b)]; a.len()];
    // Row by row, adding a[i][k] · (row k of b): the inner loop walks both b and
    // the result contiguously.
    for (a_row, out) in a.iter().zip(&mut product) {
        for (&x, b_row) in a_row.iter().zip(&b) {
            for (o, &y) in out.iter_mut().zip(b_row) {
                *o += x * y;
            }
        }
    }
    product
        .into_iter()
        .map(vector)
        .collect::<Result<Vec<_>>>()
        .map(Value::Array)
}

fn singular() -> Error {
    Error::domain("field 'a': the matrix is singular (or nearly so)")
}

/// Gaussian elimination with partial pivoting, then back substitution.
///
/// Each equation is first scaled by a power of two (exact in floating point) so its
/// largest coefficient is in [1, 2); the pivot test then means the same for every
/// row, and an equation written in large units is not mistaken for a dependent one.
pub(super) fn solve_linear(args: &Args<'_>) -> Result<Value> {
    let (mut a, mut b) = (args.matrix("a")?, args.f64_array("b")?);
    let n = a.len();
    if columns(&a) != n {
        return Err(Error::invalid(format!(
            "field 'a': must be square, got {n} rows of {} columns",
            columns(&a)
        )));
    }
    if b.len() != n {
        return Err(Error::invalid(format!(
            "field 'b': expected {n} values (one per row of 'a'), got {}",
            b.len()
        )));
    }
    for (row, rhs) in a.iter_mut().zip(&mut b) {
        let largest = row.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        if largest == 0.0 {
            return Err(singular());
        }
        // Clamped so the scale stays a finite, normal power of two.
        let scale = 2f64.powi(-(largest.log2().floor() as i32).clamp(-1022, 1022));
        row.iter_mut().for_each(|x| *x *= scale);
        *rhs *= scale;
    }
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))
            .unwrap_or(col);
        if a[pivot][col].abs() <= SINGULAR_PIVOT {
            return Err(singular());
        }
        a.swap(col, pivot);
        b.swap(col, pivot);
        let (done, below) = a.split_at_mut(col + 1);
        let (pivot_row, pivot_rhs) = (&done[col], b[col]);
        for (row, rhs) in below.iter_mut().zip(&mut b[col + 1..]) {
            let factor = row[col] / pivot_row[col];
            if factor != 0.0 {
                for (x, &p) in row[col..].iter_mut().zip(&pivot_row[col..]) {
                    *x -= factor * p;
                }
                *rhs -= factor * pivot_rhs;
            }
        }
    }
    let mut x = vec![0.0; n];
    for r in (0..n).rev() {
        let known: f64 = (r + 1..n).map(|c| a[r][c] * x[c]).sum();
        x[r] = (b[r] - known) / a[r][r];
    }
    vector(x)
}

#[cfg(test)]
mod tests {
    use crate::testing::{code, ok};
    use serde_json::{json, Value};

    /// The n×n matrix with entry f(i, j).
    fn square(n: usize, f: impl Fn(usize, usize) -> f64) -> Vec<Vec<f64>> {
        (0..n).map(|i| (0..n).map(|j| f(i, j)).collect()).collect()
    }

    fn floats(v: &Value) -> Vec<f64> {
        v.as_array()
            .unwrap_or_else(|| panic!("not an array: {v}"))
            .iter()
            .map(|x| x.as_f64().unwrap_or_else(|| panic!("not a number: {x}")))
            .collect()
    }

    #[tokio::test]
    async fn multiply_shapes() {
        let mm = |a: Value, b: Value| ok("math.matrix_multiply", json!({"a": a, "b": b}));
        assert_eq!(
            mm(json!([[1, 2], [3, 4]]), json!([[5, 6], [7, 8]])).await,
            json!([[19.0, 22.0], [43.0, 50.0]])
        );
        // 1×3 times 3×1, and 3×1 times 1×3.
        assert_eq!(
            mm(json!([[1, 2, 3]]), json!([[4], [5], [6]])).await,
            json!([[32.0]])
        );
        assert_eq!(
            mm(json!([[1], [2], [3]]), json!([[4, 5]])).await,
            json!([[4.0, 5.0], [8.0, 10.0], [12.0, 15.0]])
        );
        assert_eq!(
            mm(json!([[0.5, -1]]), json!([[2], [0.25]])).await,
            json!([[0.75]])
        );
    }

    #[tokio::test]
    async fn multiply_rejects_bad_shapes_and_overflow() {
        let mm = |a: Value, b: Value| code("math.matrix_multiply", json!({"a": a, "b": b}));
        assert_eq!(mm(json!([[1, 2]]), json!([[1, 2]])).await, "invalid_input");
        assert_eq!(
            mm(json!([[1, 2], [3]]), json!([[1], [2]])).await,
            "invalid_input"
        );
        assert_eq!(mm(json!([]), json!([[1]])).await, "invalid_input");
        assert_eq!(mm(json!([[]]), json!([[1]])).await, "invalid_input");
        assert_eq!(
            mm(json!([[1, "x"]]), json!([[1], [2]])).await,
            "invalid_input"
        );
        assert_eq!(mm(json!([1, 2]), json!([[1], [2]])).await, "invalid_input");
        assert_eq!(
            mm(json!(vec![vec![1; 201]; 1]), json!(vec![vec![1]; 201])).await,
            "invalid_input"
        );
        assert_eq!(mm(json!([[1e200]]), json!([[1e200]])).await, "domain_error");
    }

    #[tokio::test]
    async fn multiply_at_the_bound() {
        // A (i + j) times the all-ones matrix: entry (i, j) is the row sum
        // Σ_k (i + k) = 200 i + 19900.
        let a = square(200, |i, j| (i + j) as f64);
        let ones = square(200, |_, _| 1.0);
        let v = ok("math.matrix_multiply", json!({"a": a, "b": ones})).await;
        let rows = v.as_array().unwrap_or_else(|| panic!("not an array: {v}"));
        assert_eq!(rows.len(), 200);
        for (i, row) in rows.iter().enumerate() {
            let expected = 200.0 * i as f64 + 19_900.0;
            assert_eq!(floats(row), vec![expected; 200], "row {i}");
        }
    }

    #[tokio::test]
    async fn solve_small_systems() {
        let solve = |a: Value, b: Value| ok("math.solve_linear", json!({"a": a, "b": b}));
        assert_eq!(
            solve(json!([[2, 1], [1, 3]]), json!([5, 10])).await,
            json!([1.0, 3.0])
        );
        assert_eq!(solve(json!([[4]]), json!([2])).await, json!([0.5]));
        // Needs a row swap: the first pivot is zero.
        assert_eq!(
            solve(json!([[0, 1], [1, 0]]), json!([7, 9])).await,
            json!([9.0, 7.0])
        );
        assert_eq!(
            solve(
                json!([[1, 1, 1], [0, 2, 5], [2, 5, -1]]),
                json!([6, -4, 27])
            )
            .await,
            json!([5.0, 3.0, -2.0])
        );
        // Rows of very different scales are fine: this is diagonal.
        assert_eq!(
            solve(json!([[1e-20, 0], [0, 1e20]]), json!([1e-20, 1e20])).await,
            json!([1.0, 1.0])
        );
    }

    #[tokio::test]
    async fn solve_rejects_singular_and_bad_shapes() {
        let solve = |a: Value, b: Value| code("math.solve_linear", json!({"a": a, "b": b}));
        assert_eq!(
            solve(json!([[1, 2], [2, 4]]), json!([1, 2])).await,
            "domain_error"
        );
        assert_eq!(
            solve(json!([[0, 0], [0, 0]]), json!([0, 0])).await,
            "domain_error"
        );
        assert_eq!(
            solve(json!([[1, 2], [0, 0]]), json!([1, 0])).await,
            "domain_error"
        );
        assert_eq!(
            solve(json!([[1, 1], [1, 1.0000000000001]]), json!([1, 2])).await,
            "domain_error"
        );
        assert_eq!(
            solve(json!([[1, 2, 3], [4, 5, 6]]), json!([1, 2])).await,
            "invalid_input"
        );
        assert_eq!(
            solve(json!([[1, 2], [3, 4]]), json!([1, 2, 3])).await,
            "invalid_input"
        );
        assert_eq!(
            solve(json!([[1, 2], [3, 4]]), json!([])).await,
            "invalid_input"
        );
        assert_eq!(
            solve(json!([[1, 2], [3]]), json!([1, 2])).await,
            "invalid_input"
        );
        assert_eq!(
            code(
                "math.solve_linear",
                json!({"a": vec![vec![1; 201]; 201], "b": vec![1; 201]})
            )
            .await,
            "invalid_input"
        );
    }

    #[tokio::test]
    async fn solve_at_the_bound() {
        // A diagonally dominant 200×200 system built from a known solution.
        let n = 200;
        let a = square(n, |i, j| {
            if i == j {
                400.0
            } else {
                ((i * 7 + j * 13) % 11) as f64 - 5.0
            }
        });
        let x: Vec<f64> = (0..n).map(|i| i as f64 - 99.5).collect();
        let b: Vec<f64> = a
            .iter()
            .map(|row| row.iter().zip(&x).map(|(p, q)| p * q).sum())
            .collect();
        let v = ok("math.solve_linear", json!({"a": a, "b": b})).await;
        let got = floats(&v);
        assert_eq!(got.len(), n);
        for (i, (g, want)) in got.iter().zip(&x).enumerate() {
            assert!((g - want).abs() < 1e-9, "x[{i}] = {g}, expected {want}");
        }
    }
}
