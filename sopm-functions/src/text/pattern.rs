//! `text.regex_match` and `text.regex_replace`: finite automata, never backtracking
//! (hence no backreferences, lookahead or lookbehind), and all their work counted.
//!
//! Automata are linear in the text, but the factor can grow with the pattern, and the
//! `regex` crate took seconds on some patterns over 1 MiB: `a[ab]{1000}c` over random
//! a/b text needs a new DFA state, built from a thousand NFA states, at nearly every
//! byte (then its fallback, a PikeVM, pays for every live NFA state at every byte);
//! and `a*b|a` over "aaa..." makes each search read to the end for the `b` that never
//! comes, quadratic in the number of matches. So here the engines are driven by hand
//! and each call keeps a [`Meter`] of bytes read, DFA transitions computed (each
//! charged what computing one may cost: the size of the NFA), NFA states visited and
//! so on. A call that runs past [`WORK_BUDGET`] stops and is refused as
//! `invalid_input` ("too complex for a text of this size"), whatever made it costly.
//! The count depends only on the pattern and the text, never on the clock, so the
//! answer is deterministic.
//!
//! - Matches come from `regex-automata`'s lazy DFAs, as in the `regex` crate: a forward
//!   leftmost-first one for the end, then a reverse one from the end for the start.
//! - Where a lazy DFA cannot go (a Unicode `\b` next to non-ASCII text, which it
//!   cannot evaluate) the search is redone by [`Pike`], a PikeVM that tracks only where
//!   each thread started and counts the NFA states it visits; it skips ahead with lazy
//!   DFAs for the pattern with those word boundaries taken as always true.
//! - Capture groups (only when a replacement uses them) come from a one-pass DFA or
//!   the crate's PikeVM, run on the match alone and charged their worst case first.

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};

use regex_automata::dfa::onepass;
use regex_automata::hybrid::dfa::{Cache as LazyCache, DFA};
use regex_automata::hybrid::LazyStateID;
use regex_automata::nfa::thompson::pikevm::{Cache as PikeVmCache, PikeVM};
use regex_automata::nfa::thompson::{self, State, WhichCaptures, NFA};
use regex_automata::util::captures::{Captures, GroupInfo};
use regex_automata::util::look::Look;
use regex_automata::util::primitives::{PatternID, StateID};
use regex_automata::util::syntax;
use regex_automata::{Anchored, Input, MatchKind};
use serde_json::{json, Value};
use sopm_core::{Error, Result};

/// Longest pattern, in bytes.
pub(super) const MAX_PATTERN_BYTES: usize = 4096;
/// Largest compiled NFA, in bytes of memory: a pattern such as `\w{1000}{1000}` is a
/// clean `invalid_input` instead of a huge build.
const MAX_REGEX_SIZE: usize = 1 << 20;
/// The same for the reverse NFA (for match starts), which is up to about twice as big
/// for large Unicode classes.
const MAX_REVERSE_SIZE: usize = 4 << 20;
/// Most matches `text.regex_match` returns. An empty pattern matches at every one of
/// the 2^20 positions of a 1 MiB text, and each `{match, start, end}` object costs a
/// B-tree node of some 600 bytes: 100,000 of them took 35-140 ms to build, 10,000 a
/// tenth of that.
pub(super) const MAX_MATCHES: usize = 10_000;

/// The work one call may do, in the units below. They are calibrated (release build,
/// one core, best of 9 runs on a busy machine) so that a unit costs at most about a
/// nanosecond in each engine's worst case: `budget_holds_in_release` measured
/// 0.13-0.95 ns per unit, and 33 ms for the slowest call accepted.
const WORK_BUDGET: u64 = 40_000_000;
/// Per byte of NFA built (forward, reverse, and the relaxed ones): compiling a pattern
/// of 4 KiB can take 10 ms, when large Unicode classes are repeated.
const COMPILE_BYTE: u64 = 4;
/// Per DFA search (forward or reverse): finding the start state and setting up.
const DFA_SEARCH: u64 = 20;
/// Per byte a lazy DFA reads.
const DFA_BYTE: u64 = 2;
/// Extra per byte read out of a match state, which takes a look in [`Seen`]...
const DFA_MATCH_BYTE: u64 = 4;
/// ... and more when that look goes past its table of recent transitions.
const DFA_SEEN_LOOKUP: u64 = 12;
/// Per DFA transition computed: the fixed part (allocating and indexing a state)...
const DFA_MISS_BASE: u64 = 500;
/// ... and per unit of [`nfa_size`], since the powerset step visits each NFA state and
/// edge at most once.
const DFA_MISS: u64 = 3;
/// Start states a DFA may compute after each cache clear.
const DFA_START_STATES: u64 = 6;
/// Per NFA state [`Pike`] visits.
const PIKE_VISIT: u64 = 8;
/// Per search for capture groups.
const CAPTURES_SEARCH: u64 = 25;
/// Per byte of a match and unit of [`nfa_size`], for captures by the crate's PikeVM,
/// times `1 + slots / 8` for the slots it copies.
const PIKEVM_CAPTURES: u64 = 4;
/// Per byte of a match, for captures by a one-pass DFA, times `1 + slots / 8`.
const ONEPASS_CAPTURES: u64 = 3;
/// Most bytes of memory a one-pass DFA may use.
const MAX_ONEPASS_SIZE: usize = 1 << 20;

/// A compiled pattern.
struct Pattern {
    /// The forward NFA, with its capture groups.
    nfa: NFA,
    /// [`nfa_size`] of `nfa`.
    size: u64,
    /// What building it cost, in units of [`WORK_BUDGET`]: charged to each call.
    compile_cost: u64,
    /// The length of every match, if they all have the same: then the start of a
    /// match needs no reverse search.
    fixed_len: Option<usize>,
    /// Lazy DFAs, forward (leftmost-first, for the end of a match) and reverse (every
    /// match, for its start); `None` if they could not be built, and then [`Pike`]
    /// does all the work.
    dfas: Option<(DFA, DFA)>,
    /// The same for the pattern with its Unicode word boundaries taken as always true,
    /// when it has some: these never quit, and where they find no match there is
    /// none, so [`Pike`] skips ahead by them.
    relaxed: Option<(DFA, DFA)>,
}

/// Compiles `pattern`, its NFA size capped; any error names the field.
fn compile(pattern: &str) -> Result<Pattern> {
    fn invalid(e: impl std::fmt::Display) -> Error {
        Error::invalid(format!("field 'pattern': {e}"))
    }
    let hir = syntax::parse(pattern).map_err(invalid)?;
    let config = thompson::Config::new().nfa_size_limit(Some(MAX_REGEX_SIZE));
    let nfa = thompson::Compiler::new()
        .configure(config.clone())
        .build_from_hir(&hir)
        .map_err(invalid)?;
    let reverse = thompson::Compiler::new()
        .configure(
            config
                .nfa_size_limit(Some(MAX_REVERSE_SIZE))
                .reverse(true)
                .which_captures(WhichCaptures::None),
        )
        .build_from_hir(&hir)
        .ok();
    let pair = |forward: &NFA, reverse: &NFA| {
        Some((
            lazy_dfa(forward, MatchKind::LeftmostFirst)?,
            lazy_dfa(reverse, MatchKind::All)?,
        ))
    };
    let dfas = reverse.as_ref().and_then(|reverse| pair(&nfa, reverse));
    let relaxed = match &reverse {
        Some(reverse) if nfa.look_set_any().contains_word_unicode() => relax(&nfa)
            .zip(relax(reverse))
            .and_then(|(f, r)| pair(&f, &r)),
        _ => None,
    };
    let built = [Some(&nfa), reverse.as_ref()]
        .into_iter()
        .flatten()
        .chain(relaxed.iter().flat_map(|(f, r)| [f.get_nfa(), r.get_nfa()]))
        .map(|nfa| nfa.memory_usage() as u64)
        .sum::<u64>();
    let props = hir.properties();
    Ok(Pattern {
        compile_cost: built * COMPILE_BYTE,
        fixed_len: props
            .minimum_len()
            .filter(|&len| props.maximum_len() == Some(len)),
        size: nfa_size(&nfa),
        nfa,
        dfas,
        relaxed,
    })
}

fn lazy_dfa(nfa: &NFA, kind: MatchKind) -> Option<DFA> {
    let config = DFA::config()
        .match_kind(kind)
        // A Unicode `\b` is evaluated on ASCII only: the DFA quits at any other byte.
        .unicode_word_boundary(true)
        // Never give up on a thrashing cache: the meter decides when to stop.
        .minimum_cache_clear_count(None)
        .skip_cache_capacity_check(true)
        .specialize_start_states(false);
    DFA::builder()
        .configure(config)
        .build_from_nfa(nfa.clone())
        .ok()
}

/// `nfa` with its Unicode word boundaries replaced by nothing (always true), and its
/// capture groups dropped: it matches wherever `nfa` does, and more. `None` if it
/// cannot be built (then nothing is skipped).
fn relax(nfa: &NFA) -> Option<NFA> {
    let unicode_word = |look: Look| {
        matches!(
            look,
            Look::WordUnicode
                | Look::WordUnicodeNegate
                | Look::WordStartUnicode
                | Look::WordEndUnicode
                | Look::WordStartHalfUnicode
                | Look::WordEndHalfUnicode
        )
    };
    let mut b = thompson::Builder::new();
    b.set_utf8(nfa.is_utf8());
    b.set_reverse(nfa.is_reverse());
    b.set_look_matcher(nfa.look_matcher().clone());
    b.set_size_limit(Some(MAX_REVERSE_SIZE)).ok()?;
    b.start_pattern().ok()?;
    // One builder state per NFA state, in order, so that the IDs stay the same.
    for (i, state) in nfa.states().iter().enumerate() {
        let id = match state {
            State::ByteRange { trans } => b.add_range(*trans),
            State::Sparse(sparse) => b.add_sparse(sparse.transitions.to_vec()),
            State::Look { look, next } if !unicode_word(*look) => b.add_look(*next, *look),
            State::Look { next, .. } | State::Capture { next, .. } => {
                let id = b.add_empty();
                if let Ok(id) = id {
                    b.patch(id, *next).ok()?;
                }
                id
            }
            State::Union { alternates } => b.add_union(alternates.to_vec()),
            State::BinaryUnion { alt1, alt2 } => b.add_union(vec![*alt1, *alt2]),
            State::Fail => b.add_fail(),
            State::Match { .. } => b.add_match(),
            State::Dense(_) => return None,
        }
        .ok()?;
        if id.as_usize() != i {
            return None;
        }
    }
    b.finish_pattern(nfa.start_pattern(PatternID::ZERO)?).ok()?;
    b.build(nfa.start_anchored(), nfa.start_unanchored()).ok()
}

/// The NFA's states plus its edges: what one powerset step or one PikeVM step over
/// one byte visits at most.
fn nfa_size(nfa: &NFA) -> u64 {
    let edges = |state: &State| match state {
        State::Sparse(sparse) => sparse.transitions.len(),
        State::Dense(_) => 256,
        State::Union { alternates } => alternates.len(),
        _ => 1,
    };
    nfa.states().iter().map(|s| 1 + edges(s) as u64).sum()
}

/// The work of one call so far, in the units of [`WORK_BUDGET`].
#[derive(Debug, Default)]
struct Meter {
    spent: u64,
}

/// The work budget ran out.
#[derive(Debug)]
struct Costly;

type Metered<T> = std::result::Result<T, Costly>;

impl Meter {
    fn charge(&mut self, units: u64) -> Metered<()> {
        self.spent = self.spent.saturating_add(units);
        if self.spent > WORK_BUDGET {
            Err(Costly)
        } else {
            Ok(())
        }
    }
}

/// Why a lazy DFA search stopped short.
#[derive(Debug)]
enum Stop {
    /// The DFA cannot answer (a Unicode word boundary next to a non-ASCII byte).
    Quit,
    Costly,
}

impl From<Costly> for Stop {
    fn from(_: Costly) -> Stop {
        Stop::Costly
    }
}

/// FxHash, for [`Seen`], whose keys are small integers.
#[derive(Default)]
struct Fx(u64);

impl Fx {
    fn add(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for Fx {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.add(b.into());
        }
    }
    fn write_u16(&mut self, n: u16) {
        self.add(n.into());
    }
    fn write_u32(&mut self, n: u32) {
        self.add(n.into());
    }
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 29)
    }
}

/// The key of the end-of-input transition in [`Seen`] (byte classes are < 256).
const EOI: u16 = 256;

/// A transition: a state and a byte class (or [`EOI`]).
type Transition = (LazyStateID, u16);

/// Transitions, with the latest for each byte class in a table in front of the set.
struct Seen {
    recent: [Option<Transition>; 64],
    all: HashSet<Transition, BuildHasherDefault<Fx>>,
}

impl Seen {
    fn new() -> Seen {
        Seen {
            recent: [None; 64],
            all: HashSet::default(),
        }
    }

    /// Records `transition`, charging a look past the table of recent ones, and a
    /// new transition (one about to be computed) at `miss` units.
    #[inline]
    fn insert(&mut self, transition: Transition, meter: &mut Meter, miss: u64) -> Metered<()> {
        let slot = &mut self.recent[usize::from(transition.1) % 64];
        if *slot == Some(transition) {
            return Ok(());
        }
        *slot = Some(transition);
        self.insert_slow(transition, meter, miss)
    }

    #[inline(never)]
    fn insert_slow(&mut self, transition: Transition, meter: &mut Meter, miss: u64) -> Metered<()> {
        match self.all.insert(transition) {
            true => meter.charge(miss),
            false => meter.charge(DFA_SEEN_LOOKUP),
        }
    }

    fn clear(&mut self) {
        self.recent = [None; 64];
        self.all.clear();
    }
}

/// A lazy DFA with its cache, counting the transitions it computes.
struct Lazy<'p> {
    dfa: &'p DFA,
    cache: LazyCache,
    /// Units per transition computed: it may visit the whole NFA and fill a row.
    miss: u64,
    /// The transitions asked of match states since the cache was last cleared. Other
    /// states are probed with `next_state_untagged`, which shows a transition not yet
    /// computed, but match states are tagged and cannot be; so a transition out of one
    /// is charged as computed the first time it is asked for.
    seen: Seen,
    /// `cache.clear_count()` when `seen` was last emptied.
    clears: usize,
}

impl<'p> Lazy<'p> {
    fn new(dfa: &'p DFA, meter: &mut Meter) -> Metered<Self> {
        let size = nfa_size(dfa.get_nfa()) + dfa.byte_classes().alphabet_len() as u64;
        let miss = DFA_MISS_BASE + DFA_MISS * size;
        meter.charge(DFA_START_STATES * miss)?;
        Ok(Lazy {
            dfa,
            cache: dfa.create_cache(),
            miss,
            seen: Seen::new(),
            clears: 0,
        })
    }

    /// Accounts for a cache clear the last computation may have caused: the IDs in
    /// `seen` are void, and the start states will be computed again.
    fn after_compute(&mut self, meter: &mut Meter) -> Metered<()> {
        if self.cache.clear_count() != self.clears {
            self.clears = self.cache.clear_count();
            self.seen.clear();
            meter.charge(DFA_START_STATES * self.miss)?;
        }
        Ok(())
    }

    /// The state after `byte`.
    #[inline]
    fn next(
        &mut self,
        meter: &mut Meter,
        sid: LazyStateID,
        byte: u8,
    ) -> std::result::Result<LazyStateID, Stop> {
        if !sid.is_tagged() {
            let next = self.dfa.next_state_untagged(&self.cache, sid, byte);
            if !next.is_unknown() {
                return Ok(next);
            }
            meter.charge(self.miss)?;
        } else {
            let class = self.dfa.byte_classes().get(byte);
            self.seen.insert((sid, class.into()), meter, self.miss)?;
        }
        let next = self
            .dfa
            .next_state(&mut self.cache, sid, byte)
            .map_err(|_| Stop::Quit)?;
        self.after_compute(meter)?;
        Ok(next)
    }

    /// The state after the end of the text.
    fn next_eoi(
        &mut self,
        meter: &mut Meter,
        sid: LazyStateID,
    ) -> std::result::Result<LazyStateID, Stop> {
        self.seen.insert((sid, EOI), meter, self.miss)?;
        let next = self
            .dfa
            .next_eoi_state(&mut self.cache, sid)
            .map_err(|_| Stop::Quit)?;
        self.after_compute(meter)?;
        Ok(next)
    }

    /// The end of the leftmost-first match at or after `pos` (forward DFA).
    fn forward(
        &mut self,
        meter: &mut Meter,
        hay: &[u8],
        pos: usize,
    ) -> std::result::Result<Option<usize>, Stop> {
        meter.charge(DFA_SEARCH)?;
        let input = Input::new(hay).span(pos..hay.len());
        let mut sid = self
            .dfa
            .start_state_forward(&mut self.cache, &input)
            .map_err(|_| Stop::Quit)?;
        self.after_compute(meter)?;
        // Matches show one byte late: a match state after the byte at `at` means a
        // match ending at `at`.
        let mut end = None;
        let mut scan = Scan::new(pos);
        while scan.at < hay.len() {
            if let Some(next) = self.cached_untagged(sid, hay[scan.at]) {
                sid = next;
                scan.at += 1;
                continue;
            }
            scan.count(sid);
            sid = match self.next(meter, sid, hay[scan.at]) {
                Ok(next) => next,
                Err(stop) => return scan.charged(meter, Err(stop)),
            };
            if sid.is_match() {
                end = Some(scan.at);
            } else if sid.is_dead() {
                return scan.charged(meter, Ok(end));
            } else if sid.is_quit() {
                return scan.charged(meter, Err(Stop::Quit));
            }
            scan.at += 1;
        }
        scan.count(sid);
        let found = self.next_eoi(meter, sid).map(|sid| match sid.is_match() {
            true => Some(hay.len()),
            false => end,
        });
        scan.charged(meter, found)
    }

    /// The start of the match that ends at `end`, the leftmost at or after `pos`
    /// (reverse DFA, anchored at `end`).
    fn reverse(
        &mut self,
        meter: &mut Meter,
        hay: &[u8],
        pos: usize,
        end: usize,
    ) -> std::result::Result<Option<usize>, Stop> {
        meter.charge(DFA_SEARCH)?;
        let input = Input::new(hay).span(pos..end).anchored(Anchored::Yes);
        let mut sid = self
            .dfa
            .start_state_reverse(&mut self.cache, &input)
            .map_err(|_| Stop::Quit)?;
        self.after_compute(meter)?;
        // `scan.at` is one past the next byte to read.
        let mut start = None;
        let mut scan = Scan::new(end);
        while scan.at > pos {
            if let Some(next) = self.cached_untagged(sid, hay[scan.at - 1]) {
                sid = next;
                scan.at -= 1;
                continue;
            }
            scan.count(sid);
            sid = match self.next(meter, sid, hay[scan.at - 1]) {
                Ok(next) => next,
                Err(stop) => return scan.charged(meter, Err(stop)),
            };
            scan.at -= 1;
            if sid.is_match() {
                start = Some(scan.at + 1);
            } else if sid.is_dead() {
                return scan.charged(meter, Ok(start));
            } else if sid.is_quit() {
                return scan.charged(meter, Err(Stop::Quit));
            }
        }
        // A match starting at `pos` shows after the byte before it, or the start.
        scan.count(sid);
        let last = match pos.checked_sub(1) {
            Some(before) => self.next(meter, sid, hay[before]),
            None => self.next_eoi(meter, sid),
        };
        let found = last.and_then(|sid| match sid {
            sid if sid.is_match() => Ok(Some(pos)),
            sid if sid.is_quit() => Err(Stop::Quit),
            _ => Ok(start),
        });
        scan.charged(meter, found)
    }

    /// The transition from `sid` on `byte` if it is cached and leads to a state that
    /// is neither a match nor special: the fast path.
    #[inline(always)]
    fn cached_untagged(&self, sid: LazyStateID, byte: u8) -> Option<LazyStateID> {
        if sid.is_tagged() {
            return None;
        }
        let next = self.dfa.next_state_untagged(&self.cache, sid, byte);
        (!next.is_tagged()).then_some(next)
    }
}

/// The leftmost-first match at or after `pos`, by a forward then a reverse DFA.
fn find_by_dfas(
    (forward, reverse): &mut (Lazy<'_>, Lazy<'_>),
    fixed_len: Option<usize>,
    meter: &mut Meter,
    hay: &[u8],
    pos: usize,
) -> std::result::Result<Option<(usize, usize)>, Stop> {
    let Some(end) = forward.forward(meter, hay, pos)? else {
        return Ok(None);
    };
    if end == pos || forward.dfa.get_nfa().is_always_start_anchored() {
        return Ok(Some((pos, end)));
    }
    if let Some(len) = fixed_len {
        return Ok(Some((end - len, end)));
    }
    match reverse.reverse(meter, hay, pos, end)? {
        Some(start) => Ok(Some((start, end))),
        // Cannot happen (the forward DFA found a match), but the PikeVM can say.
        None => Err(Stop::Quit),
    }
}

/// The bytes one DFA search read, charged when it ends (one search reads at most the
/// text, so that is all the budget can be overrun by).
struct Scan {
    from: usize,
    at: usize,
    /// Bytes read out of match states.
    from_match_states: u64,
}

impl Scan {
    fn new(from: usize) -> Scan {
        Scan {
            from,
            at: from,
            from_match_states: 0,
        }
    }

    fn count(&mut self, sid: LazyStateID) {
        self.from_match_states += u64::from(sid.is_match());
    }

    /// Charges the bytes read (plus one for the end) and passes on `result`.
    fn charged<T>(
        &self,
        meter: &mut Meter,
        result: std::result::Result<T, Stop>,
    ) -> std::result::Result<T, Stop> {
        let bytes = self.at.abs_diff(self.from) as u64 + 1;
        meter.charge(bytes * DFA_BYTE + self.from_match_states * DFA_MATCH_BYTE)?;
        result
    }
}

/// NFA states in insertion (priority) order, each with where its thread started.
struct Threads {
    dense: Vec<StateID>,
    index: Vec<usize>,
    starts: Vec<usize>,
}

impl Threads {
    fn new(states: usize) -> Threads {
        Threads {
            dense: Vec::with_capacity(states),
            index: vec![0; states],
            starts: vec![0; states],
        }
    }

    fn insert(&mut self, sid: StateID, start: usize) -> bool {
        let i = self.index[sid.as_usize()];
        if self.dense.get(i) == Some(&sid) {
            return false;
        }
        self.index[sid.as_usize()] = self.dense.len();
        self.starts[sid.as_usize()] = start;
        self.dense.push(sid);
        true
    }
}

/// A PikeVM for match bounds, for what the lazy DFAs cannot do: the crate's
/// `PikeVM::find`, with each thread carrying where it started instead of capture
/// slots, a count of the NFA states it visits charged at every byte, and a way to
/// skip ahead when no thread is running.
struct Pike {
    curr: Threads,
    next: Threads,
    stack: Vec<StateID>,
}

impl Pike {
    fn new(nfa: &NFA) -> Pike {
        let states = nfa.states().len();
        Pike {
            curr: Threads::new(states),
            next: Threads::new(states),
            stack: Vec::new(),
        }
    }

    /// The leftmost-first match at or after `pos`. With no thread running, `skip(at)`
    /// gives the first position from `at` where a match could start, if any.
    fn find(
        &mut self,
        nfa: &NFA,
        meter: &mut Meter,
        hay: &[u8],
        pos: usize,
        mut skip: impl FnMut(&mut Meter, usize) -> Metered<Option<usize>>,
    ) -> Metered<Option<(usize, usize)>> {
        let anchored = nfa.is_always_start_anchored();
        let Pike { curr, next, stack } = self;
        curr.dense.clear();
        next.dense.clear();
        let mut found = None;
        let mut at = pos;
        while at <= hay.len() {
            if curr.dense.is_empty() {
                if found.is_some() || (anchored && at > pos) {
                    break;
                }
                if !anchored {
                    match skip(meter, at)? {
                        Some(start) => at = start,
                        None => break,
                    }
                }
            }
            let mut visits = 1 + curr.dense.len() as u64;
            // A new thread at each position until a match is found, after (below in
            // priority) those already running.
            if found.is_none() && (!anchored || at == pos) {
                visits += closure(nfa, hay, curr, stack, at, at, nfa.start_anchored());
            }
            for &sid in &curr.dense {
                let start = curr.starts[sid.as_usize()];
                let to = match nfa.state(sid) {
                    State::ByteRange { trans } => trans.matches(hay, at).then_some(trans.next),
                    State::Sparse(sparse) => sparse.matches(hay, at),
                    State::Dense(dense) => dense.matches(hay, at),
                    State::Match { .. } => {
                        // Leftmost-first: the threads after this one lose.
                        found = Some((start, at));
                        break;
                    }
                    _ => None,
                };
                if let Some(to) = to {
                    visits += closure(nfa, hay, next, stack, at + 1, start, to);
                }
            }
            meter.charge(visits * PIKE_VISIT)?;
            std::mem::swap(curr, next);
            next.dense.clear();
            at += 1;
        }
        Ok(found)
    }
}

/// Adds `sid` and the states its epsilon transitions reach at `at` to `set`, in
/// priority order, as threads started at `start`; returns the states visited.
fn closure(
    nfa: &NFA,
    hay: &[u8],
    set: &mut Threads,
    stack: &mut Vec<StateID>,
    at: usize,
    start: usize,
    sid: StateID,
) -> u64 {
    let mut visits = 0;
    stack.push(sid);
    while let Some(mut sid) = stack.pop() {
        loop {
            visits += 1;
            if !set.insert(sid, start) {
                break;
            }
            match nfa.state(sid) {
                State::Look { look, next } if nfa.look_matcher().matches(*look, hay, at) => {
                    sid = *next;
                }
                State::Union { alternates } => {
                    let Some((&first, rest)) = alternates.split_first() else {
                        break;
                    };
                    stack.extend(rest.iter().rev());
                    visits += rest.len() as u64;
                    sid = first;
                }
                State::BinaryUnion { alt1, alt2 } => {
                    stack.push(*alt2);
                    sid = *alt1;
                }
                State::Capture { next, .. } => sid = *next,
                _ => break,
            }
        }
    }
    visits
}

/// Capture groups, of a match already found: by a one-pass DFA if the pattern is one,
/// else by the crate's PikeVM, each charged its worst case over the match up front.
struct Groups {
    onepass: Option<(onepass::DFA, onepass::Cache)>,
    pikevm: PikeVM,
    pikevm_cache: PikeVmCache,
    caps: Captures,
    /// Units per byte of a match, for each engine.
    onepass_cost: u64,
    pikevm_cost: u64,
}

impl Groups {
    fn new(pattern: &Pattern) -> Result<Groups> {
        let nfa = &pattern.nfa;
        let onepass = onepass::DFA::builder()
            .configure(onepass::DFA::config().size_limit(Some(MAX_ONEPASS_SIZE)))
            .build_from_nfa(nfa.clone())
            .ok()
            .map(|dfa| {
                let cache = dfa.create_cache();
                (dfa, cache)
            });
        let pikevm = PikeVM::new_from_nfa(nfa.clone())
            .map_err(|e| Error::invalid(format!("field 'pattern': {e}")))?;
        let slots = 1 + nfa.group_info().slot_len() as u64 / 8;
        Ok(Groups {
            onepass,
            pikevm_cache: pikevm.create_cache(),
            pikevm,
            caps: Captures::all(nfa.group_info().clone()),
            onepass_cost: ONEPASS_CAPTURES * slots,
            pikevm_cost: PIKEVM_CAPTURES * pattern.size * slots,
        })
    }

    /// The groups of the match `start..end`: an anchored search bounded by it finds
    /// that same match, by the same path.
    fn of(&mut self, meter: &mut Meter, hay: &str, start: usize, end: usize) -> Metered<&Captures> {
        let input = Input::new(hay).span(start..end).anchored(Anchored::Yes);
        let bytes = (end - start + 1) as u64;
        meter.charge(CAPTURES_SEARCH)?;
        if let Some((dfa, cache)) = &mut self.onepass {
            meter.charge(bytes * self.onepass_cost)?;
            if dfa.try_search(cache, &input, &mut self.caps).is_ok() && self.caps.is_match() {
                return Ok(&self.caps);
            }
        }
        meter.charge(bytes * self.pikevm_cost)?;
        self.pikevm
            .search(&mut self.pikevm_cache, &input, &mut self.caps);
        Ok(&self.caps)
    }
}

/// The matches of one pattern in one text, with the iteration rules of
/// `Regex::find_iter` (after a match, search from its end; an empty match right where
/// the previous one ended is skipped), and the engines, caches and meter behind them.
struct Matches<'p, 't> {
    pattern: &'p Pattern,
    text: &'t str,
    meter: Meter,
    lazies: Option<(Lazy<'p>, Lazy<'p>)>,
    /// Built on first use, as are `pike` and `groups`.
    relaxed: Option<(Lazy<'p>, Lazy<'p>)>,
    pike: Option<Pike>,
    groups: Option<Groups>,
    pos: usize,
    last_end: Option<usize>,
}

impl<'p, 't> Matches<'p, 't> {
    fn new(pattern: &'p Pattern, text: &'t str) -> Result<Self> {
        let mut meter = Meter::default();
        let lazies = meter
            .charge(pattern.compile_cost)
            .and_then(|()| lazy_pair(&pattern.dfas, &mut meter))
            .map_err(|Costly| too_complex(text))?;
        Ok(Matches {
            pattern,
            text,
            meter,
            lazies,
            relaxed: None,
            pike: None,
            groups: None,
            pos: 0,
            last_end: None,
        })
    }

    /// The next match, as byte offsets.
    fn next(&mut self) -> Result<Option<(usize, usize)>> {
        let text = self.text;
        while self.pos <= text.len() {
            let found = self.find(self.pos).map_err(|Costly| too_complex(text))?;
            let Some((start, end)) = found else { break };
            if start == end && self.last_end == Some(end) {
                match text[self.pos..].chars().next() {
                    Some(c) => self.pos += c.len_utf8(),
                    None => break,
                }
                continue;
            }
            self.last_end = Some(end);
            // After an empty match, a search from its end would only find it again.
            self.pos = match start == end {
                true => text[end..]
                    .chars()
                    .next()
                    .map_or(text.len() + 1, |c| end + c.len_utf8()),
                false => end,
            };
            return Ok(Some((start, end)));
        }
        Ok(None)
    }

    /// The groups of the match `start..end` that [`Matches::next`] returned.
    fn groups(&mut self, start: usize, end: usize) -> Result<&Captures> {
        if self.groups.is_none() {
            let nfa_bytes = self.pattern.nfa.memory_usage() as u64;
            self.meter
                .charge(nfa_bytes * COMPILE_BYTE)
                .map_err(|Costly| too_complex(self.text))?;
            self.groups = Some(Groups::new(self.pattern)?);
        }
        let groups = self.groups.as_mut().expect("just built");
        groups
            .of(&mut self.meter, self.text, start, end)
            .map_err(|Costly| too_complex(self.text))
    }

    /// The leftmost-first match at or after `pos`, a character boundary.
    fn find(&mut self, mut pos: usize) -> Metered<Option<(usize, usize)>> {
        let hay = self.text.as_bytes();
        loop {
            let by_dfas = match &mut self.lazies {
                Some(lazies) => {
                    find_by_dfas(lazies, self.pattern.fixed_len, &mut self.meter, hay, pos)
                }
                None => Err(Stop::Quit),
            };
            let found = match by_dfas {
                Ok(found) => found,
                Err(Stop::Costly) => return Err(Costly),
                Err(Stop::Quit) => self.find_by_pike(pos)?,
            };
            // An empty match inside a character does not count, as in `regex`.
            match found {
                Some((start, end)) if start == end && !self.text.is_char_boundary(end) => {
                    pos = end + 1;
                }
                found => return Ok(found),
            }
        }
    }

    fn find_by_pike(&mut self, pos: usize) -> Metered<Option<(usize, usize)>> {
        let hay = self.text.as_bytes();
        let nfa = &self.pattern.nfa;
        if self.relaxed.is_none() {
            self.relaxed = lazy_pair(&self.pattern.relaxed, &mut self.meter)?;
        }
        let relaxed = &mut self.relaxed;
        let fixed_len = self.pattern.fixed_len;
        let skip = |meter: &mut Meter, at: usize| match relaxed {
            Some(lazies) => match find_by_dfas(lazies, fixed_len, meter, hay, at) {
                Ok(found) => Ok(found.map(|(start, _)| start)),
                Err(Stop::Costly) => Err(Costly),
                Err(Stop::Quit) => Ok(Some(at)),
            },
            None => Ok(Some(at)),
        };
        let pike = self.pike.get_or_insert_with(|| Pike::new(nfa));
        pike.find(nfa, &mut self.meter, hay, pos, skip)
    }
}

/// Lazy DFAs with fresh caches for a pair of DFAs, if any.
fn lazy_pair<'p>(
    dfas: &'p Option<(DFA, DFA)>,
    meter: &mut Meter,
) -> Metered<Option<(Lazy<'p>, Lazy<'p>)>> {
    match dfas {
        Some((forward, reverse)) => Ok(Some((
            Lazy::new(forward, meter)?,
            Lazy::new(reverse, meter)?,
        ))),
        None => Ok(None),
    }
}

fn too_complex(text: &str) -> Error {
    Error::invalid(format!(
        "field 'pattern': the pattern is too complex for a text of this size ({} bytes): \
         matching would take too long",
        text.len()
    ))
}

/// The first [`MAX_MATCHES`] non-overlapping matches as `{match, start, end}`, with
/// byte offsets.
pub(super) fn find_all(text: &str, pattern: &str) -> Result<Value> {
    let pattern = compile(pattern)?;
    let mut matches = Matches::new(&pattern, text)?;
    let mut out = Vec::new();
    while out.len() < MAX_MATCHES {
        let Some((start, end)) = matches.next()? else {
            break;
        };
        out.push(json!({"match": &text[start..end], "start": start, "end": end}));
    }
    Ok(out.into())
}

/// One piece of a parsed replacement.
#[derive(Debug, PartialEq)]
enum Piece {
    Literal(String),
    Group(usize),
}

/// A replacement parsed once, with the syntax of `regex::Captures::expand`: `$n` or
/// `${n}` is group n, `$name` / `${name}` a named group (a bare name is the longest run
/// of `[0-9A-Za-z_]`, so `$1a` is the group named "1a"), `$$` is a `$`, a reference to
/// a group that does not exist is empty, and a `$` that starts no reference is itself.
#[derive(Debug, PartialEq)]
struct Template {
    pieces: Vec<Piece>,
    /// Whether some piece is a group other than the whole match.
    uses_groups: bool,
}

impl Template {
    fn parse(replacement: &str, info: &GroupInfo) -> Template {
        let groups = info.group_len(PatternID::ZERO);
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut rest = replacement;
        while let Some(dollar) = rest.find('$') {
            literal.push_str(&rest[..dollar]);
            rest = &rest[dollar + 1..];
            if let Some(after) = rest.strip_prefix('$') {
                literal.push('$');
                rest = after;
                continue;
            }
            let (name, after) = match rest.strip_prefix('{') {
                Some(braced) => match braced.find('}') {
                    Some(close) => (&braced[..close], &braced[close + 1..]),
                    None => ("", rest),
                },
                None => {
                    let len = rest
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(rest.len());
                    (&rest[..len], &rest[len..])
                }
            };
            // "$" then no name (or an unclosed brace) stays a literal "$"; "${}" names
            // the empty string, which no group has.
            if after.len() == rest.len() {
                literal.push('$');
                continue;
            }
            rest = after;
            let index = name
                .parse::<usize>()
                .ok()
                .or_else(|| info.to_index(PatternID::ZERO, name));
            if let Some(i) = index.filter(|&i| i < groups) {
                if !literal.is_empty() {
                    pieces.push(Piece::Literal(std::mem::take(&mut literal)));
                }
                pieces.push(Piece::Group(i));
            }
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal));
        }
        let uses_groups = pieces
            .iter()
            .any(|p| matches!(p, Piece::Group(i) if *i > 0));
        Template {
            pieces,
            uses_groups,
        }
    }
}

/// Every match replaced, with the iteration rules of `Regex::replace_all`. Groups are
/// only computed when the replacement uses them.
///
/// The result is capped at `max_bytes`, checked before each write. Each match is
/// charged its expansion plus one per template piece, so that the work stays bounded
/// too when a long list of references expands to nothing on a million empty matches.
pub(super) fn replace_all(
    text: &str,
    pattern: &str,
    replacement: &str,
    max_bytes: usize,
) -> Result<String> {
    let pattern = compile(pattern)?;
    let template = Template::parse(replacement, pattern.nfa.group_info());
    let mut matches = Matches::new(&pattern, text)?;
    let mut out = String::new();
    let mut charged = 0usize;
    let mut last_end = 0;
    while let Some((start, end)) = matches.next()? {
        let caps = match template.uses_groups {
            true => Some(matches.groups(start, end)?),
            false => None,
        };
        let group = |i: usize| match (i, caps) {
            (0, _) | (_, None) => &text[start..end],
            (_, Some(caps)) => caps.get_group(i).map_or("", |span| &text[span.range()]),
        };
        let gap = &text[last_end..start];
        let expansion = template.pieces.iter().fold(0usize, |sum, p| {
            sum.saturating_add(match p {
                Piece::Literal(s) => s.len() + 1,
                Piece::Group(i) => group(*i).len() + 1,
            })
        });
        charged = charged.saturating_add(gap.len()).saturating_add(expansion);
        if charged > max_bytes {
            return Err(Error::invalid(format!(
                "field 'replacement': the result would be longer than {} MiB",
                max_bytes >> 20
            )));
        }
        out.push_str(gap);
        for piece in &template.pieces {
            match piece {
                Piece::Literal(s) => out.push_str(s),
                Piece::Group(i) => out.push_str(group(*i)),
            }
        }
        last_end = end;
    }
    out.push_str(&text[last_end..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use regex::Regex;

    /// What `Regex::find_iter` gives, in the shape of [`find_all`].
    fn regex_find_all(text: &str, pattern: &str) -> Value {
        let re = Regex::new(pattern).unwrap();
        let matches: Vec<Value> = re
            .find_iter(text)
            .take(MAX_MATCHES)
            .map(|m| json!({"match": m.as_str(), "start": m.start(), "end": m.end()}))
            .collect();
        matches.into()
    }

    /// Every match, by the PikeVM alone (as when the DFAs cannot be built).
    fn pike_find_all(text: &str, pattern: &str) -> Value {
        let mut pattern = compile(pattern).unwrap();
        pattern.dfas = None;
        let mut matches = Matches::new(&pattern, text).unwrap();
        let mut out = Vec::new();
        while let Some((start, end)) = matches.next().unwrap() {
            out.push(json!({"match": &text[start..end], "start": start, "end": end}));
        }
        out.into()
    }

    /// 1 MiB of pseudo-random "a"s and "b"s.
    fn random_ab() -> String {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        (0..1 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if x & 1 == 0 {
                    'a'
                } else {
                    'b'
                }
            })
            .collect()
    }

    /// `unit` repeated to just under 1 MiB.
    fn mib(unit: &str) -> String {
        unit.repeat((1 << 20) / unit.len())
    }

    fn assert_too_complex(result: Result<impl std::fmt::Debug>) {
        let err = result.unwrap_err();
        assert_eq!(err.code(), "invalid_input", "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("field 'pattern'") && msg.contains("too complex for a text of this size"),
            "{msg}"
        );
    }

    #[test]
    fn templates_parse_like_regex_expand() {
        let pattern = compile(r"(?P<first>\w+) (\w+)").unwrap();
        let info = pattern.nfa.group_info();
        let lit = |s: &str| Piece::Literal(s.to_string());
        let parse = |s: &str| Template::parse(s, info).pieces;
        assert_eq!(parse(""), vec![]);
        assert_eq!(
            parse("$2, $first!"),
            vec![Piece::Group(2), lit(", "), Piece::Group(1), lit("!")]
        );
        assert_eq!(parse("$$1 $"), vec![lit("$1 $")]);
        assert_eq!(
            parse("${2}x $2x $9 ${nope} ${}"),
            vec![Piece::Group(2), lit("x    ")]
        );
        assert_eq!(
            parse("${unclosed $0"),
            vec![lit("${unclosed "), Piece::Group(0)]
        );
        assert_eq!(parse("$01 $ $-"), vec![Piece::Group(1), lit(" $ $-")]);
        assert!(!Template::parse("$0$$", info).uses_groups);
        assert!(Template::parse("${first}", info).uses_groups);
    }

    #[test]
    fn relaxing_drops_only_unicode_word_boundaries() {
        let pattern = compile(r"\bé(?-u:\b)x\B|(a)").unwrap();
        let (forward, _) = pattern.relaxed.as_ref().unwrap();
        let looks = forward.get_nfa().look_set_any();
        assert!(!looks.contains_word_unicode() && looks.contains_word_ascii());
        assert!(compile(r"(?-u:\b)a").unwrap().relaxed.is_none());
    }

    #[test]
    fn hostile_patterns_are_refused() {
        // The lazy DFA needs a new state at nearly every byte, built from the
        // pattern's NFA: 0.2 s, 4 s and 30 s with the `regex` crate.
        let ab = random_ab();
        for pattern in ["a[ab]{25}c", "a[ab]{1000}c", "a[ab]{4000}c"] {
            assert_too_complex(find_all(&ab, pattern));
            assert_too_complex(replace_all(&ab, pattern, "x", 16 << 20));
        }
        // Each search reads to the end for the `a*b` that never comes, but finds the
        // `a`: quadratic in the number of matches.
        let a = "a".repeat(1 << 20);
        assert_too_complex(find_all(&a, "a*b|a"));
        assert_too_complex(replace_all(&a, "a*b|a", "x", 16 << 20));
        // The same without the DFA: a Unicode word boundary on non-ASCII text.
        let e = "é".repeat(1 << 19);
        assert_too_complex(find_all(&e, r"\b|é*x"));
        // Capture groups the PikeVM must find, over the whole text.
        assert_too_complex(replace_all(&ab, "(a|ab)*(b*)", "$1", 16 << 20));
    }

    #[test]
    fn ordinary_patterns_work_on_a_mebibyte() {
        let english = mib("Mail foo@bar.com, 12-34 or café-bar: the quick brown fox. ");
        let mixed = mib("héllo wörld, ça va? Привет мир 你好 the fox’s 42 ");
        for (text, pattern) in [
            (&english, r"\b\w+@\w+\.com\b"),
            (&english, r"(\d+)-(\d+)"),
            (&english, r"\p{L}+"),
            (&mixed, r"\p{L}+"),
            (&mixed, r"\b\w+@\w+\.com\b"),
            (&mixed, r"\bfox\b"),
            (&mixed, r"(?i)ПРИВЕТ"),
            (&english, "(a+)+$"),
        ] {
            assert_eq!(
                find_all(text, pattern).unwrap(),
                regex_find_all(text, pattern),
                "{pattern}"
            );
        }
        for (text, pattern, replacement) in [
            (&english, r"(\d+)-(\d+)", "$2-$1"),
            (
                &english,
                r"(?P<user>\w+)@(?P<host>\w+)\.com",
                "${host} at $user",
            ),
            (&mixed, r"\p{L}+", "<$0>"),
            (&mixed, r"\bfox\b", "dog"),
        ] {
            let expected = Regex::new(pattern)
                .unwrap()
                .replace_all(text, replacement)
                .into_owned();
            assert_eq!(
                replace_all(text, pattern, replacement, 16 << 20).unwrap(),
                expected,
                "{pattern}"
            );
        }
    }

    proptest! {
        /// Same output as `Regex::replace_all` (which uses `Captures::expand`) for
        /// random texts, patterns and replacements full of `$`, braces and names.
        #[test]
        fn agrees_with_regex_replace_all(
            text in "[ab é1_]{0,30}",
            pattern in prop::sample::select(vec![
                "", "a", "a*", "b?", r"(?P<x>a)(b)?", r"(a|)(?P<y>é*)", r"\b", r"(\d)|(_)", "é|$",
                r"(a|ab)(b*)", r"\b(\w)(\w*)\b",
            ]),
            replacement in r"[$ab{}x_yé0-3]{0,12}",
        ) {
            let re = Regex::new(pattern).unwrap();
            let expected = re.replace_all(&text, replacement.as_str()).into_owned();
            prop_assert_eq!(replace_all(&text, pattern, &replacement, 1 << 20).unwrap(), expected);
        }

        /// Same matches as `Regex::find_iter`, by the DFAs and by the PikeVM alone,
        /// with Unicode word boundaries next to ASCII and non-ASCII letters, empty
        /// matches, anchors and alternations whose order matters.
        #[test]
        fn agrees_with_regex_find_iter(
            text in "[ab é1_.’\n-]{0,40}",
            pattern in prop::sample::select(vec![
                "", "a", "a*", r"\b", r"\B", r"\b\w+\b", r"\bé", r"é\b", r"\b{start}\w",
                r"\w\b{end}", r"(?m)^a|b$", r"^\w*", r"\w*$", "a*b|a", "a|ab", "ab|a",
                r"(?i)É|B", r"[^a]+", r"(?-u:\b)a", r"\Bé|\b1", r"(a|b)*?b", r"é|$",
                r"\b(?:a|é)+\b|_", r"(?s).\b.",
            ]),
        ) {
            let expected = regex_find_all(&text, pattern);
            prop_assert_eq!(&find_all(&text, pattern).unwrap(), &expected);
            prop_assert_eq!(&pike_find_all(&text, pattern), &expected);
        }
    }

    /// Compiles and runs `pattern` over `text` like the built-ins (all matches, and
    /// the groups of each if `groups`): the work spent, and whether it was accepted.
    fn run(pattern: &str, text: &str, groups: bool) -> (u64, bool) {
        let pattern = compile(pattern).unwrap();
        let Ok(mut matches) = Matches::new(&pattern, text) else {
            return (pattern.compile_cost, false);
        };
        let accepted = loop {
            match matches.next() {
                Ok(Some((start, end))) => {
                    if groups && matches.groups(start, end).is_err() {
                        break false;
                    }
                }
                Ok(None) => break true,
                Err(_) => break false,
            }
        };
        (matches.meter.spent, accepted)
    }

    /// For patterns that stress each engine and each kind of charge: the time to
    /// refuse a 1 MiB text, and the time of the longest prefix still accepted (the
    /// worst accepted call, right under the budget). Run with
    /// `cargo test --release -p sopm-functions --lib text::pattern -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn budget_holds_in_release() {
        let ab = random_ab();
        let a = "a".repeat(1 << 20);
        let e = "é".repeat(1 << 19);
        let english = mib("Mail foo@bar.com, 12-34 or café-bar: the quick brown fox. ");
        let mixed = mib("héllo wörld, ça va? Привет мир 你好 the fox’s 42 ");
        // 2^12 small DFA states, each with a transition on "z" to one big state.
        let mut x: u64 = 1;
        let mut abz = String::new();
        while abz.len() < 1 << 20 {
            for _ in 0..13 {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                abz.push(if x >> 63 == 0 { 'a' } else { 'b' });
            }
            abz.push('z');
        }
        let wide = "a[ab]{12}c|z(?:c?){1500}d";
        let foo = mib("éfooé ");
        let abab = mib("ab");
        let cases: Vec<(&str, &str, &str, bool)> = vec![
            ("ordinary", &english, r"\b\w+@\w+\.com\b", false),
            ("ordinary", &english, r"(\d+)-(\d+)", true),
            ("ordinary", &mixed, r"\p{L}+", false),
            ("ordinary", &mixed, r"\b\w+@\w+\.com\b", false),
            ("ordinary", &mixed, r"\bfox\b", false),
            ("dfa bytes", &ab, "zzz", false),
            ("dfa match bytes", &ab, "[ab]+", false),
            ("dfa match bytes", &mixed, r"[^\n]+", false),
            ("dfa searches", &ab, "a|b", false),
            ("dfa searches", &ab, "", false),
            ("dfa searches", &english, r"\b", false),
            ("dfa searches", &mixed, r"\b", false),
            ("dfa searches", &mixed, r"\p{L}+", false),
            ("dfa misses", &ab, "a[ab]{25}c", false),
            ("dfa misses", &ab, "a[ab]{1000}c", false),
            ("dfa misses", &ab, "a[ab]{4000}c", false),
            ("dfa misses", &abz, wide, false),
            ("dfa misses", &ab, "(?:a|b|a[ab]{12}c)*", false),
            ("dfa rescans", &a, "a*b|a", false),
            ("pike", &e, r"\b|é*x", false),
            ("pike", &e, r"\b(?:é|é[é]{200}x)", false),
            ("pike", &mixed, r"\b\w+\b", false),
            ("pike", &foo, r"\bfoo\b", false),
            ("captures", &ab, "(a|ab)*(b*)", true),
            ("captures", &ab, "(a|ab)(b|)", true),
            ("captures", &ab, "(a)(b)", true),
            ("captures", &abab, "(a)(b)", true),
            ("captures", &ab, "((((a)))|(((b))))", true),
            ("compile", &mixed, r"\b\w{40}\b", false),
            ("compile", &english, r"(?i)\w{40}", false),
        ];
        let mut worst = 0f64;
        for (kind, text, pattern, groups) in cases {
            let cut = |len: usize| {
                let mut len = len.min(text.len());
                while !text.is_char_boundary(len) {
                    len -= 1;
                }
                &text[..len]
            };
            // The longest accepted prefix, by bisection.
            let (mut lo, mut hi) = (0, text.len());
            if run(pattern, text, groups).1 {
                lo = hi;
            }
            while hi - lo > 64 {
                let mid = (lo + hi) / 2;
                if run(pattern, cut(mid), groups).1 {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            // The best of 9, as the least disturbed by other work on the machine.
            let time = |text: &str| {
                (0..9)
                    .map(|_| {
                        let started = std::time::Instant::now();
                        let (units, accepted) = run(pattern, text, groups);
                        (started.elapsed().as_nanos() as u64, units, accepted)
                    })
                    .min()
                    .unwrap()
            };
            let (refuse_ns, _, accepted) = time(text);
            let (ns, units, _) = time(cut(lo));
            worst = worst.max(ns as f64 / 1e6);
            println!(
                "{kind:15} {pattern:26.26} {:>26} | accepts {:>7} B: {:>9} units in {:>6.2} ms ({:.2} ns/unit)",
                if accepted { "1 MiB accepted".to_string() } else { format!("1 MiB refused in {:.2} ms", refuse_ns as f64 / 1e6) },
                cut(lo).len(),
                units,
                ns as f64 / 1e6,
                ns as f64 / units.max(1) as f64,
            );
        }
        println!("worst accepted: {worst:.2} ms");
    }
}
