//! Array built-ins: sort, unique, reverse, flatten, chunk, zip, set operations,
//! histogram, transpose and paginate.

use std::cmp::Ordering;

use serde_json::{json, Value};
use sopm_core::{Error, Result};

use super::value::{ByValue, Distinct, Exact};
use crate::schema::{describe, float, Args};

/// Largest page of `data.paginate`: a page is cheap enough to cut inline.
pub(super) const MAX_PER_PAGE: i64 = 1000;

/// A sort key: the table allows all numbers or all strings, never a mix.
enum SortKey<'a> {
    Num(Exact),
    Text(&'a str),
}

impl SortKey<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (SortKey::Num(a), SortKey::Num(b)) => a.cmp(*b),
            (SortKey::Text(a), SortKey::Text(b)) => a.cmp(b),
            // Never compared: `sort` rejects mixed arrays before sorting.
            (SortKey::Num(_), SortKey::Text(_)) => Ordering::Less,
            (SortKey::Text(_), SortKey::Num(_)) => Ordering::Greater,
        }
    }
}

/// Numbers by exact value (integers stay integers), strings by Unicode code point.
/// The sort is stable, so equal values keep their order either way.
pub(super) fn sort(args: &Args<'_>) -> Result<Value> {
    let values = args.array("values")?;
    let descending = args.opt_bool("descending")?.unwrap_or(false);
    // The first value decides which kind all of them must be.
    let numbers = matches!(values.first(), Some(Value::Number(_)));
    let mut keyed = Vec::with_capacity(values.len());
    for (i, v) in values.iter().enumerate() {
        let key = match (v, numbers) {
            (Value::Number(n), true) => SortKey::Num(Exact::of(n)),
            (Value::String(s), false) => SortKey::Text(s),
            _ => {
                return Err(Error::invalid(format!(
                    "field 'values[{i}]': the values must be all numbers or all strings, \
                     but item 0 is {} and this is {}",
                    values.first().map_or("missing", describe),
                    describe(v)
                )))
            }
        };
        keyed.push((key, v));
    }
    keyed.sort_by(|(a, _), (b, _)| {
        let o = a.cmp(b);
        if descending {
            o.reverse()
        } else {
            o
        }
    });
    Ok(Value::Array(
        keyed.into_iter().map(|(_, v)| v.clone()).collect(),
    ))
}

/// Equality is by JSON value: `1` and `1.0` are the same, objects regardless of key
/// order.
pub(super) fn unique(args: &Args<'_>) -> Result<Value> {
    Ok(owned(Distinct::of(args.array("values")?, "values")?.firsts))
}

pub(super) fn reverse(args: &Args<'_>) -> Result<Value> {
    Ok(Value::Array(
        args.array("values")?.iter().rev().cloned().collect(),
    ))
}

/// Walks the nested arrays with an explicit stack rather than recursion, so any
/// nesting is safe.
pub(super) fn flatten(args: &Args<'_>) -> Result<Value> {
    let values = args.array("values")?;
    let max_depth = match args.opt_i64("depth")? {
        Some(d) => usize::try_from(d).unwrap_or(usize::MAX),
        None => usize::MAX,
    };
    let mut out = Vec::with_capacity(values.len());
    let mut stack = vec![(values.iter(), 0usize)];
    while let Some((items, level)) = stack.last_mut() {
        let level = *level;
        match items.next() {
            None => {
                stack.pop();
            }
            Some(Value::Array(inner)) if level < max_depth => stack.push((inner.iter(), level + 1)),
            Some(v) => out.push(v.clone()),
        }
    }
    Ok(Value::Array(out))
}

pub(super) fn chunk(args: &Args<'_>) -> Result<Value> {
    let values = args.array("values")?;
    let size = usize::try_from(args.i64("size")?)
        .unwrap_or(usize::MAX)
        .max(1);
    Ok(Value::Array(
        values
            .chunks(size)
            .map(|c| Value::Array(c.to_vec()))
            .collect(),
    ))
}

pub(super) fn zip(args: &Args<'_>) -> Result<Value> {
    let (a, b) = (args.array("a")?, args.array("b")?);
    Ok(Value::Array(
        a.iter()
            .zip(b)
            .map(|(x, y)| Value::Array(vec![x.clone(), y.clone()]))
            .collect(),
    ))
}

/// Treats `a` and `b` as sets (duplicates dropped, equality by JSON value); each
/// result keeps the order in which its values are first seen, `a` before `b`.
pub(super) fn set_operations(args: &Args<'_>) -> Result<Value> {
    let a = Distinct::of(args.array("a")?, "a")?;
    let b = Distinct::of(args.array("b")?, "b")?;
    let (both, only_a): (Vec<ByValue>, Vec<ByValue>) =
        a.firsts.iter().partition(|v| b.set.contains(*v));
    let only_b: Vec<ByValue> = b
        .firsts
        .into_iter()
        .filter(|v| !a.set.contains(v))
        .collect();
    Ok(json!({
        "union": owned(a.firsts.iter().chain(&only_b).copied()),
        "intersection": owned(both),
        "difference": owned(only_a.iter().copied()),
        "symmetric_difference": owned(only_a.into_iter().chain(only_b)),
    }))
}

/// An array of copies of the values.
fn owned<'a>(values: impl IntoIterator<Item = ByValue<'a>>) -> Value {
    Value::Array(values.into_iter().map(|v| v.0.clone()).collect())
}

/// Bins `i` cover `[edges[i], edges[i+1])`, the last one `[edges[bins-1], max]`.
/// When all values are equal the range has no width, so there is a single bin
/// `[v, v]` holding them all, whatever `bins` asks for.
pub(super) fn histogram(args: &Args<'_>) -> Result<Value> {
    let values = args.f64_array("values")?;
    let bins = usize::try_from(args.i64("bins")?).unwrap_or(1).max(1);
    let Some(&first) = values.first() else {
        return Err(Error::invalid("field 'values': must not be empty"));
    };
    let (min, max) = values
        .iter()
        .fold((first, first), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    if min == max {
        return Ok(json!({"edges": [float(min)?, float(max)?], "counts": [values.len()]}));
    }
    let span = max - min;
    let edge = |i: usize| {
        let t = i as f64 / bins as f64;
        if span.is_finite() {
            min + span * t
        } else {
            // The values span more than f64::MAX: step in halves of the range.
            let half = (max / 2.0 - min / 2.0) * t;
            min + half + half
        }
    };
    let edges: Vec<f64> = (0..bins).map(edge).chain([max]).collect();
    let mut counts = vec![0u64; bins];
    for &x in &values {
        // The bin starting at the last edge not above x, so that the counts agree
        // with the published edges; the maximum falls in the last, closed bin.
        let i = edges
            .partition_point(|&e| e <= x)
            .saturating_sub(1)
            .min(bins - 1);
        if let Some(c) = counts.get_mut(i) {
            *c += 1;
        }
    }
    let edges = edges.into_iter().map(float).collect::<Result<Vec<_>>>()?;
    Ok(json!({"edges": edges, "counts": counts}))
}

/// Rows may hold any values but must all have the same length.
pub(super) fn transpose(args: &Args<'_>) -> Result<Value> {
    let rows = args
        .array("matrix")?
        .iter()
        .enumerate()
        .map(|(i, row)| {
            row.as_array()
                .ok_or_else(|| Error::invalid(format!("field 'matrix[{i}]': expected an array")))
        })
        .collect::<Result<Vec<_>>>()?;
    let width = rows.first().map_or(0, |r| r.len());
    if let Some((i, row)) = rows.iter().enumerate().find(|(_, r)| r.len() != width) {
        return Err(Error::invalid(format!(
            "field 'matrix': rows must all have the same length (row 0 has {width}, row {i} has {})",
            row.len()
        )));
    }
    Ok(Value::Array(
        (0..width)
            .map(|j| Value::Array(rows.iter().filter_map(|r| r.get(j).cloned()).collect()))
            .collect(),
    ))
}

/// A page past the last one is empty, not an error.
pub(super) fn paginate(args: &Args<'_>) -> Result<Value> {
    let values = args.array("values")?;
    let page = args.i64("page")?;
    let per_page = args.i64("per_page")?;
    let per = usize::try_from(per_page).unwrap_or(1).max(1);
    let total = values.len();
    let start = usize::try_from(page.saturating_sub(1))
        .ok()
        .and_then(|p| p.checked_mul(per))
        .unwrap_or(usize::MAX);
    let items: Vec<Value> = values.iter().skip(start).take(per).cloned().collect();
    Ok(json!({
        "items": items,
        "page": page,
        "per_page": per_page,
        "total": total,
        "total_pages": total.div_ceil(per),
    }))
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use crate::testing::{call, code};

    async fn ok(name: &str, input: Value) -> Value {
        call(name, input).await.unwrap()
    }

    #[tokio::test]
    async fn sort_numbers_and_strings() {
        let sort = |v: Value| ok("data.sort", v);
        assert_eq!(
            sort(json!({"values": [3, 1.5, -2, 10, 0, -0.5]})).await,
            json!([-2, -0.5, 0, 1.5, 3, 10])
        );
        assert_eq!(
            sort(json!({"values": [3, 1.5, -2, 10], "descending": true})).await,
            json!([10, 3, 1.5, -2])
        );
        assert_eq!(
            sort(json!({"values": ["b", "a", "é", "Z", ""]})).await,
            json!(["", "Z", "a", "b", "é"])
        );
        assert_eq!(sort(json!({"values": []})).await, json!([]));
        assert_eq!(
            sort(json!({"values": [], "descending": null})).await,
            json!([])
        );
        // Exact: these two differ by one but are the same double.
        assert_eq!(
            sort(json!({"values": [9_007_199_254_740_993_i64, 9_007_199_254_740_992_i64]})).await,
            json!([9_007_199_254_740_992_i64, 9_007_199_254_740_993_i64])
        );
        assert_eq!(
            sort(json!({"values": [u64::MAX, i64::MIN, 0]})).await,
            json!([i64::MIN, 0, u64::MAX])
        );
    }

    #[tokio::test]
    async fn sort_is_stable_both_ways() {
        // 1 and 1.0 are equal, so they keep their input order in either direction.
        assert_eq!(
            ok("data.sort", json!({"values": [1.0, 2, 1]})).await,
            json!([1.0, 1, 2])
        );
        assert_eq!(
            ok(
                "data.sort",
                json!({"values": [1.0, 2, 1], "descending": true})
            )
            .await,
            json!([2, 1.0, 1])
        );
    }

    #[tokio::test]
    async fn sort_rejects_mixed_and_other_values() {
        for values in [
            json!([1, "a"]),
            json!(["a", 1]),
            json!([true]),
            json!([null, 1]),
            json!([[1]]),
        ] {
            assert_eq!(
                code("data.sort", json!({"values": values})).await,
                "invalid_input"
            );
        }
        let err = call("data.sort", json!({"values": [1, 2, "x"]}))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("field 'values[2]'"), "{err}");
        assert_eq!(
            code("data.sort", json!({"values": [1], "descending": 1})).await,
            "invalid_input"
        );
    }

    #[tokio::test]
    async fn sort_at_the_cap() {
        // A fixed permutation of 0..100000: 7919 is prime, so i * 7919 mod n visits all.
        let n = super::super::MAX_ITEMS as u64;
        let values: Vec<u64> = (0..n).map(|i| i * 7919 % n).collect();
        let out = ok("data.sort", json!({"values": values})).await;
        assert_eq!(out, json!((0..n).collect::<Vec<_>>()));
        let out = ok("data.sort", json!({"values": values, "descending": true})).await;
        assert_eq!(out, json!((0..n).rev().collect::<Vec<_>>()));
        let too_many = vec![0; super::super::MAX_ITEMS + 1];
        assert_eq!(
            code("data.sort", json!({"values": too_many})).await,
            "invalid_input"
        );
    }

    #[tokio::test]
    async fn unique_by_json_value() {
        assert_eq!(
            ok(
                "data.unique",
                json!({"values": [1, 1.0, "1", {"a": 1, "b": [2]}, {"b": [2.0], "a": 1}, [1], [1], null, null, "é", "é"]})
            )
            .await,
            json!([1, "1", {"a": 1, "b": [2]}, [1], null, "é"])
        );
        assert_eq!(ok("data.unique", json!({"values": []})).await, json!([]));
        assert_eq!(
            code("data.unique", json!({"values": {"a": 1}})).await,
            "invalid_input"
        );
    }

    #[tokio::test]
    async fn unique_at_the_cap() {
        let values: Vec<u64> = (0..100_000).map(|i| i % 1000).collect();
        let out = ok("data.unique", json!({"values": values})).await;
        assert_eq!(out, json!((0..1000).collect::<Vec<u64>>()));
    }

    #[tokio::test]
    async fn reverse_values() {
        assert_eq!(
            ok("data.reverse", json!({"values": [1, "a", null, [2]]})).await,
            json!([[2], null, "a", 1])
        );
        assert_eq!(ok("data.reverse", json!({"values": []})).await, json!([]));
        assert_eq!(
            code("data.reverse", json!({"values": "abc"})).await,
            "invalid_input"
        );
    }

    #[tokio::test]
    async fn flatten_depths() {
        let values = json!([1, [2, [3, [4]]], [], [[]], "x"]);
        assert_eq!(
            ok("data.flatten", json!({"values": values})).await,
            json!([1, 2, 3, 4, "x"])
        );
        assert_eq!(
            ok("data.flatten", json!({"values": values, "depth": 0})).await,
            values
        );
        assert_eq!(
            ok("data.flatten", json!({"values": values, "depth": 1})).await,
            json!([1, 2, [3, [4]], [], "x"])
        );
        assert_eq!(
            ok("data.flatten", json!({"values": values, "depth": 2})).await,
            json!([1, 2, 3, [4], "x"])
        );
        assert_eq!(
            ok("data.flatten", json!({"values": values, "depth": i64::MAX})).await,
            json!([1, 2, 3, 4, "x"])
        );
        // Objects are values, not arrays to splice.
        assert_eq!(
            ok("data.flatten", json!({"values": [{"a": [1]}, [{"b": 2}]]})).await,
            json!([{"a": [1]}, {"b": 2}])
        );
        assert_eq!(
            code("data.flatten", json!({"values": [], "depth": -1})).await,
            "invalid_input"
        );
        assert_eq!(
            code("data.flatten", json!({"values": [], "depth": 1.5})).await,
            "invalid_input"
        );
    }

    #[tokio::test]
    async fn flatten_deep_nesting_without_recursion() {
        // Deeper than the JSON parser allows; the walk is iterative.
        let mut v = json!([7]);
        for _ in 0..1000 {
            v = json!([v, 1]);
        }
        let out = ok("data.flatten", json!({"values": [v]})).await;
        let items = out.as_array().unwrap();
        assert_eq!(items.len(), 1001);
        assert_eq!(items[0], json!(7));
        assert!(items[1..].iter().all(|x| *x == json!(1)));
    }

    #[tokio::test]
    async fn chunk_sizes() {
        assert_eq!(
            ok("data.chunk", json!({"values": [1, 2, 3, 4], "size": 2})).await,
            json!([[1, 2], [3, 4]])
        );
        assert_eq!(
            ok("data.chunk", json!({"values": [1, 2, 3], "size": 1})).await,
            json!([[1], [2], [3]])
        );
        assert_eq!(
            ok("data.chunk", json!({"values": [1, 2, 3], "size": i64::MAX})).await,
            json!([[1, 2, 3]])
        );
        assert_eq!(
            ok("data.chunk", json!({"values": [], "size": 3})).await,
            json!([])
        );
        for size in [json!(0), json!(-1), json!(1.5), json!("2")] {
            assert_eq!(
                code("data.chunk", json!({"values": [1], "size": size})).await,
                "invalid_input"
            );
        }
        assert_eq!(
            code("data.chunk", json!({"values": [1]})).await,
            "invalid_input"
        );
    }

    #[tokio::test]
    async fn zip_pairs() {
        assert_eq!(
            ok("data.zip", json!({"a": [1, 2], "b": ["x", "y", "z"]})).await,
            json!([[1, "x"], [2, "y"]])
        );
        assert_eq!(ok("data.zip", json!({"a": [], "b": [1]})).await, json!([]));
        assert_eq!(
            ok("data.zip", json!({"a": [null, [1]], "b": [{"k": 1}, null]})).await,
            json!([[null, {"k": 1}], [[1], null]])
        );
        assert_eq!(code("data.zip", json!({"a": [1]})).await, "invalid_input");
    }

    #[tokio::test]
    async fn set_operations_keep_first_seen_order() {
        let out = ok(
            "data.set_operations",
            json!({"a": ["x", {"k": 1}, 2, "x", 1], "b": [3, 1.0, {"k": 1}, 3, "y"]}),
        )
        .await;
        assert_eq!(
            out,
            json!({
                "union": ["x", {"k": 1}, 2, 1, 3, "y"],
                "intersection": [{"k": 1}, 1],
                "difference": ["x", 2],
                "symmetric_difference": ["x", 2, 3, "y"],
            })
        );
        let empty = ok("data.set_operations", json!({"a": [], "b": []})).await;
        assert_eq!(
            empty,
            json!({"union": [], "intersection": [], "difference": [], "symmetric_difference": []})
        );
        let one_side = ok("data.set_operations", json!({"a": [], "b": [1, 1]})).await;
        assert_eq!(one_side["union"], json!([1]));
        assert_eq!(one_side["symmetric_difference"], json!([1]));
        assert_eq!(
            code("data.set_operations", json!({"a": [], "b": 1})).await,
            "invalid_input"
        );
    }

    #[tokio::test]
    async fn set_operations_at_the_cap() {
        let a: Vec<u64> = (0..100_000).collect();
        let b: Vec<u64> = (50_000..150_000).collect();
        let out = ok("data.set_operations", json!({"a": a, "b": b})).await;
        assert_eq!(out["union"], json!((0..150_000).collect::<Vec<u64>>()));
        assert_eq!(
            out["intersection"],
            json!((50_000..100_000).collect::<Vec<u64>>())
        );
        assert_eq!(out["difference"], json!((0..50_000).collect::<Vec<u64>>()));
        let sym: Vec<u64> = (0..50_000).chain(100_000..150_000).collect();
        assert_eq!(out["symmetric_difference"], json!(sym));
    }

    #[tokio::test]
    async fn histogram_bins() {
        assert_eq!(
            ok(
                "data.histogram",
                json!({"values": [0, 10, 5, 2.5], "bins": 2})
            )
            .await,
            json!({"edges": [0.0, 5.0, 10.0], "counts": [2, 2]})
        );
        // The last bin is closed: the maximum lands in it.
        assert_eq!(
            ok("data.histogram", json!({"values": [0, 10], "bins": 10})).await["counts"],
            json!([1, 0, 0, 0, 0, 0, 0, 0, 0, 1])
        );
        assert_eq!(
            ok("data.histogram", json!({"values": [-3, -1, -2], "bins": 1})).await,
            json!({"edges": [-3.0, -1.0], "counts": [3]})
        );
        // No width: one bin, whatever `bins` says.
        assert_eq!(
            ok("data.histogram", json!({"values": [4, 4, 4.0], "bins": 5})).await,
            json!({"edges": [4.0, 4.0], "counts": [3]})
        );
        // max - min overflows a double; the bins are still right.
        assert_eq!(
            ok(
                "data.histogram",
                json!({"values": [-1e308, 1e308, 1], "bins": 2})
            )
            .await,
            json!({"edges": [-1e308, 0.0, 1e308], "counts": [1, 2]})
        );
        // A range of one subnormal step: inner edges round onto the ends, and the
        // counts follow the edges as published (the empty bin [min, min) stays empty).
        assert_eq!(
            ok("data.histogram", json!({"values": [-5e-324, 0], "bins": 3})).await,
            json!({"edges": [-5e-324, -5e-324, 0.0, 0.0], "counts": [0, 1, 1]})
        );
    }

    #[tokio::test]
    async fn histogram_rejects_bad_input() {
        for input in [
            json!({"values": [], "bins": 1}),
            json!({"values": [1], "bins": 0}),
            json!({"values": [1], "bins": 1001}),
            json!({"values": [1, "2"], "bins": 1}),
            json!({"values": [1]}),
        ] {
            assert_eq!(code("data.histogram", input).await, "invalid_input");
        }
    }

    #[tokio::test]
    async fn histogram_at_the_cap_agrees_with_its_edges() {
        let values: Vec<f64> = (0..100_000)
            .map(|i| (i as f64 * 0.37).sin() * 1e3)
            .collect();
        let out = ok("data.histogram", json!({"values": values, "bins": 1000})).await;
        let edges: Vec<f64> = out["edges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_f64().unwrap())
            .collect();
        let counts: Vec<u64> = out["counts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_u64().unwrap())
            .collect();
        assert_eq!(edges.len(), 1001);
        assert_eq!(counts.iter().sum::<u64>(), 100_000);
        for (i, &c) in counts.iter().enumerate() {
            let (lo, hi) = (edges[i], edges[i + 1]);
            let last = i == counts.len() - 1;
            let expected = values
                .iter()
                .filter(|&&x| x >= lo && (x < hi || (last && x <= hi)))
                .count();
            assert_eq!(c as usize, expected, "bin {i}");
        }
    }

    #[tokio::test]
    async fn transpose_matrices() {
        assert_eq!(
            ok(
                "data.transpose",
                json!({"matrix": [["a", null], [true, [1]]]})
            )
            .await,
            json!([["a", true], [null, [1]]])
        );
        assert_eq!(
            ok("data.transpose", json!({"matrix": [[1, 2, 3]]})).await,
            json!([[1], [2], [3]])
        );
        assert_eq!(ok("data.transpose", json!({"matrix": []})).await, json!([]));
        assert_eq!(
            ok("data.transpose", json!({"matrix": [[], []]})).await,
            json!([])
        );
        let err = call("data.transpose", json!({"matrix": [[1, 2], [3]]}))
            .await
            .unwrap_err();
        assert_eq!(err.code(), "invalid_input");
        assert!(err.to_string().contains("row 1 has 1"), "{err}");
        assert_eq!(
            code("data.transpose", json!({"matrix": [1, 2]})).await,
            "invalid_input"
        );
    }

    #[tokio::test]
    async fn transpose_a_large_matrix() {
        let matrix: Vec<Vec<u64>> = (0..300)
            .map(|i| (0..300).map(|j| i * 300 + j).collect())
            .collect();
        let out = ok("data.transpose", json!({"matrix": matrix})).await;
        assert_eq!(out[299][0], json!(299));
        assert_eq!(out[0][299], json!(299 * 300));
        assert_eq!(out[123][45], json!(45 * 300 + 123));
    }

    #[tokio::test]
    async fn paginate_pages() {
        let values = json!([1, 2, 3, 4, 5]);
        let page = |p: i64, per: i64| {
            ok(
                "data.paginate",
                json!({"values": values, "page": p, "per_page": per}),
            )
        };
        assert_eq!(
            page(1, 2).await,
            json!({"items": [1, 2], "page": 1, "per_page": 2, "total": 5, "total_pages": 3})
        );
        assert_eq!(page(3, 2).await["items"], json!([5]));
        assert_eq!(page(4, 2).await["items"], json!([]));
        assert_eq!(page(i64::MAX, 1000).await["items"], json!([]));
        assert_eq!(page(1, 1000).await["total_pages"], json!(1));
        let empty = ok(
            "data.paginate",
            json!({"values": [], "page": 1, "per_page": 10}),
        )
        .await;
        assert_eq!(
            empty,
            json!({"items": [], "page": 1, "per_page": 10, "total": 0, "total_pages": 0})
        );
        for (p, per) in [(0, 1), (-1, 1), (1, 0), (1, 1001)] {
            let input = json!({"values": values, "page": p, "per_page": per});
            assert_eq!(code("data.paginate", input).await, "invalid_input");
        }
    }
}
