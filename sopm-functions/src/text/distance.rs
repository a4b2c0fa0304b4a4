//! String distances for `text.levenshtein` and `text.similarity`, both over Unicode
//! scalar values and both linear in memory, so the largest inputs stay cheap.

/// Gives every distinct character of `a` and `b` a small id (in order of first
/// appearance), so that per-character tables are plain vectors rather than hash maps.
/// Returns the two id sequences and the number of distinct characters.
fn dense_ids(a: &str, b: &str) -> (Vec<u32>, Vec<u32>, usize) {
    // id + 1 per code point; 0 = not seen yet. Zeroed, so the allocator hands out
    // lazily mapped pages and only the ones touched cost anything.
    let mut table = vec![0u32; char::MAX as usize + 1];
    let mut count = 0u32;
    let mut id = |c: char| {
        let slot = &mut table[c as usize];
        if *slot == 0 {
            count += 1;
            *slot = count;
        }
        *slot - 1
    };
    let a: Vec<u32> = a.chars().map(&mut id).collect();
    let b: Vec<u32> = b.chars().map(&mut id).collect();
    (a, b, count as usize)
}

/// Levenshtein distance (unit-cost insertions, deletions and substitutions) by Myers'
/// bit-parallel algorithm in Hyyrö's multi-word form: `a` is cut into blocks of 64
/// characters, one bit per row, and each block sweeps all of `b` one column at a time,
/// handing the horizontal delta at its bottom row to the next block. That is
/// O(|a|/64 * |b|) word operations: 10,000 x 10,000 characters takes a few ms where
/// the classic table would fill 10^8 cells.
pub(super) fn levenshtein(a: &str, b: &str) -> usize {
    let (a, b, alphabet) = dense_ids(a, b);
    // The horizontal delta D[row][j+1] - D[row][j] at the bottom row of the blocks done
    // so far; the top row is D[0][j] = j, so it starts at +1 everywhere.
    let mut carry = vec![1i8; b.len()];
    // peq[c]: bit r set when row r of the current block holds character c.
    let mut peq = vec![0u64; alphabet];
    for block in a.chunks(64) {
        for (row, &c) in block.iter().enumerate() {
            peq[c as usize] |= 1 << row;
        }
        // A short last block reports the delta at its last real row; the unused rows
        // below it never feed back upwards, so they need no masking.
        let bottom = 1u64 << (block.len() - 1);
        // The left column is D[i][0] = i: every vertical delta is +1.
        let (mut pv, mut mv) = (!0u64, 0u64);
        for (&c, h) in b.iter().zip(carry.iter_mut()) {
            *h = advance_block(&mut pv, &mut mv, peq[c as usize], *h, bottom);
        }
        for &c in block {
            peq[c as usize] = 0;
        }
    }
    // D[m][n] = D[m][0] + the sum of the deltas along the bottom row.
    let bottom_row: i64 = carry.iter().map(|&h| i64::from(h)).sum();
    usize::try_from(a.len() as i64 + bottom_row).unwrap_or(0)
}

/// One column step of one block (Myers 1999, "advance_block"): `pv`/`mv` are the
/// positive/negative vertical deltas of the block's rows, `eq` marks the rows whose
/// character equals this column's, `h_in` is the horizontal delta entering at the top.
/// Returns the horizontal delta leaving at row `bottom`.
fn advance_block(pv: &mut u64, mv: &mut u64, mut eq: u64, h_in: i8, bottom: u64) -> i8 {
    let xv = eq | *mv;
    if h_in < 0 {
        eq |= 1;
    }
    let xh = ((eq & *pv).wrapping_add(*pv) ^ *pv) | eq;
    let mut ph = *mv | !(xh | *pv);
    let mut mh = *pv & xh;
    let h_out = if ph & bottom != 0 {
        1
    } else if mh & bottom != 0 {
        -1
    } else {
        0
    };
    ph <<= 1;
    mh <<= 1;
    if h_in < 0 {
        mh |= 1;
    } else if h_in > 0 {
        ph |= 1;
    }
    *pv = mh | !(xv | ph);
    *mv = ph & xv;
    h_out
}

/// Jaro-Winkler similarity with exactly the definition (and floating-point steps) of
/// `strsim::jaro_winkler`, whose search is quadratic; this one is linear. The Jaro
/// step matches each character of `a` to the first unmatched equal character of `b`
/// within the window `i ± (max(|a|, |b|) / 2 - 1)`. Since the window only moves right,
/// the candidates for a character are its occurrences in `b` in order, so a cursor per
/// character (over a linked list of occurrences) finds that match in amortised O(1).
/// Winkler then adds 0.1 per common leading character (up to 4) when Jaro is > 0.7.
pub(super) fn jaro_winkler(a: &str, b: &str) -> f64 {
    let (a, b, alphabet) = dense_ids(a, b);
    if a.is_empty() && b.is_empty() {
        return 1.0;
    }
    if a.is_empty() || b.is_empty() {
        return 0.0;
    }
    let range = (a.len().max(b.len()) / 2).saturating_sub(1);

    // next[j]: position + 1 of the next occurrence of b[j] in `b` (0: none);
    // cursor[c]: position + 1 of the first occurrence of c not yet matched or passed.
    let mut next = vec![0usize; b.len()];
    let mut cursor = vec![0usize; alphabet];
    for (j, &c) in b.iter().enumerate().rev() {
        next[j] = cursor[c as usize];
        cursor[c as usize] = j + 1;
    }

    let mut a_matched = vec![false; a.len()];
    let mut b_matched = vec![false; b.len()];
    let mut matches = 0usize;
    for (i, &c) in a.iter().enumerate() {
        let (lo, hi) = (i.saturating_sub(range), (i + range + 1).min(b.len()));
        let mut p = cursor[c as usize];
        while p != 0 && p - 1 < lo {
            p = next[p - 1];
        }
        if p != 0 && p - 1 < hi {
            a_matched[i] = true;
            b_matched[p - 1] = true;
            matches += 1;
            p = next[p - 1];
        }
        cursor[c as usize] = p;
    }
    if matches == 0 {
        return 0.0;
    }

    let in_a = a.iter().zip(&a_matched).filter(|(_, &m)| m).map(|(c, _)| c);
    let in_b = b.iter().zip(&b_matched).filter(|(_, &m)| m).map(|(c, _)| c);
    let transpositions = in_a.zip(in_b).filter(|(x, y)| x != y).count() / 2;

    let m = matches as f64;
    let jaro =
        (m / a.len() as f64 + m / b.len() as f64 + (matches - transpositions) as f64 / m) / 3.0;
    if jaro > 0.7 {
        let prefix = a.iter().take(4).zip(&b).take_while(|(x, y)| x == y).count();
        jaro + 0.1 * prefix as f64 * (1.0 - jaro)
    } else {
        jaro
    }
}
