//! Array built-ins: sort, unique, reverse, flatten, chunk, zip, set operations,
//! histogram, transpose and paginate.

use std::cmp::Ordering;
use std::collections::HashSet;

use serde_json::{json, Value};
use sopm_core::{Error, Result};

use super::value::{distinct, Exact};
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
    let values = args.array("values")?;
    let firsts = distinct(values, "values")?;
    Ok(Value::Array(
        firsts.into_iter().map(|(_, v)| v.clone()).collect(),
    ))
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
        a.iter().zip(b).map(|(x, y)| json!([x, y])).collect(),
    ))
}

/// Treats `a` and `b` as sets (duplicates dropped, equality by JSON value); each
/// result keeps the order in which its values are first seen, `a` before `b`.
pub(super) fn set_operations(args: &Args<'_>) -> Result<Value> {
    let a = distinct(args.array("a")?, "a")?;
    let b = distinct(args.array("b")?, "b")?;
    let in_a: HashSet<&str> = a.iter().map(|(k, _)| k.as_str()).collect();
    let in_b: HashSet<&str> = b.iter().map(|(k, _)| k.as_str()).collect();
    let only_a = || a.iter().filter(|(k, _)| !in_b.contains(k.as_str()));
    let only_b = || b.iter().filter(|(k, _)| !in_a.contains(k.as_str()));
    let both = a.iter().filter(|(k, _)| in_b.contains(k.as_str()));
    let array = |pairs: &mut dyn Iterator<Item = &(String, &Value)>| {
        Value::Array(pairs.map(|(_, v)| (*v).clone()).collect())
    };
    Ok(json!({
        "union": array(&mut a.iter().chain(only_b())),
        "intersection": array(&mut { both }),
        "difference": array(&mut only_a()),
        "symmetric_difference": array(&mut only_a().chain(only_b())),
    }))
}

/// Bins `i` cover `[edges[i], edges[i+1])`, the last one `[edges[bins-1], max]`.
/// When all values are equal the range has no width, so there is a single bin
/// `[v, v]` holding them all, whatever `bins` asks for.
pub(super) fn histogram(args: &Args<'_>) -> Result<Value> {
    let values = args.f64_array("values")?;
    let bins = usize::try_from(args.i64("bins")?).unwrap_or(1).max(1);
    let (Some(&first), count) = (values.first(), values.len()) else {
        return Err(Error::invalid("field 'values': must not be empty"));
    };
    let (min, max) = values
        .iter()
        .fold((first, first), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    if min == max {
        return Ok(json!({"edges": [float(min)?, float(max)?], "counts": [count]}));
    }
    // Half the range and half a bin width: `max - min` itself may overflow.
    let half_span = max / 2.0 - min / 2.0;
    let half_width = half_span / bins as f64;
    let edges: Vec<f64> = (0..=bins)
        .map(|i| {
            if i == bins {
                max
            } else {
                let half = half_width * i as f64;
                min + half + half
            }
        })
        .collect();
    let mut counts = vec![0u64; bins];
    for &x in &values {
        let position = (x / 2.0 - min / 2.0) / half_span;
        // Float rounding can put a value just past a computed edge: settle it against
        // the edges themselves so that the counts agree with the published edges.
        let mut i = ((position * bins as f64).floor() as usize).min(bins - 1);
        if i + 1 < bins && edges.get(i + 1).is_some_and(|&e| x >= e) {
            i += 1;
        } else if i > 0 && edges.get(i).is_some_and(|&e| x < e) {
            i -= 1;
        }
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
