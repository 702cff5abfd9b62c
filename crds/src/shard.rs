//! The shard space: which slot a target hashes to, and sets of slots written as ranges.
//!
//! Every DatabaseCollector has a fixed space of `spec.shards` slots, numbered `0` to
//! `shards - 1`. A target lives in exactly one slot, chosen by [`slot_of`] from its name;
//! each worker pod owns a set of slots, a [`Ranges`], written on the pod as text such as
//! `0-99,200-255` (or `none`). Operator and worker must agree on both byte for byte, so
//! both are defined here once and pinned by golden-value tests.

use std::fmt;
use std::ops::RangeInclusive;
use std::str::FromStr;

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// The seed of the slot hash. Part of the contract: changing it moves every target.
pub const HASH_SEED: u64 = 0;

/// Largest allowed `spec.shards`. Bounded so that the worst-case range list of one pod
/// (see [`MAX_RANGES_LEN`]) fits comfortably in a pod annotation (256 KiB for all of a
/// pod's annotations together).
pub const MAX_SHARDS: u32 = 16_384;

/// Default `spec.shards`: with up to a thousand targets per collector, 1024 slots keep
/// most slots at one target or none, so balancing by slot moves targets one at a time.
pub const DEFAULT_SHARDS: u32 = 1_024;

/// Longest canonical text of any set of slots within [`MAX_SHARDS`].
///
/// Why this bound holds: in canonical text consecutive runs are separated by at least one
/// slot that belongs to neither. A run of one slot costs at most 6 characters (`16383,`)
/// and, with its gap, uses 2 slots: 3 characters per slot. A longer run costs at most 12
/// characters (`16382-16383,`) and, with its gap, uses at least 3 slots: 4 characters per
/// slot. So the text is at most 4 characters per slot of the space, plus a few for the
/// last run, which has no gap after it.
pub const MAX_RANGES_LEN: u32 = 4 * MAX_SHARDS + 16;

/// How the empty set of slots is spelled (an empty annotation value would be easy to
/// confuse with a missing one).
pub const EMPTY: &str = "none";

/// The regular expression every [`Ranges`] text matches (a schema pattern).
pub const RANGES_PATTERN: &str = r"^(none|[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*)$";

/// The slot of a target in a shard space of `shards` slots.
///
/// The algorithm, which operator and worker share and must never change: take the
/// UTF-8 bytes of the target's `name` (nothing else: not its host, engine or labels),
/// hash them with XXH3-64 (xxHash 3, 64-bit variant, as in the reference xxHash library's
/// `XXH3_64bits_withSeed`) with seed [`HASH_SEED`] (0), and reduce the 64-bit result
/// modulo `shards`. Modulo bias is below `shards / 2^64` and is ignored.
///
/// A `shards` of 0 (which the schema forbids: its minimum is 1) is treated as 1, so
/// every target lands in slot 0 rather than dividing by zero.
pub fn slot_of(target_name: &str, shards: u32) -> u32 {
    let hash = xxh3_64_with_seed(target_name.as_bytes(), HASH_SEED);
    let slot = hash % u64::from(shards.max(1));
    // The remainder is below `shards`, itself a u32: the conversion is exact.
    u32::try_from(slot).unwrap_or(0)
}

/// Why a ranges text could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The text is empty.
    #[error("is empty; an empty set of slots is spelled `{EMPTY}`")]
    Empty,
    /// An item between commas is neither `a` nor `a-b` with decimal numbers.
    #[error("`{item}` is not a slot or a range of slots (`a` or `a-b`)")]
    BadItem {
        /// The item, cut to its first 32 characters.
        item: String,
    },
    /// A range ends before it starts.
    #[error("range {start}-{end} ends before it starts")]
    Reversed {
        /// Its first slot.
        start: u32,
        /// Its last slot.
        end: u32,
    },
    /// A slot lies outside the shard space.
    #[error("slot {slot} is outside the shard space of {shards} slots")]
    OutsideSpace {
        /// The offending slot.
        slot: u32,
        /// The size of the space.
        shards: u32,
    },
}

/// A set of shard slots, stored as sorted, disjoint, non-adjacent inclusive ranges.
///
/// Text form (what [`fmt::Display`] writes and [`FromStr`] reads): comma-separated items,
/// each a slot `a` or an inclusive range `a-b` (`a < b`), in decimal, without spaces,
/// e.g. `0-99,150,200-255`; the empty set is `none`. Written text is canonical: ascending,
/// adjacent and overlapping ranges merged (`0-4,5-9` is written `0-9`), single slots
/// written alone. Reading also accepts non-canonical text (any order, overlaps, `3-3`,
/// leading zeros) and normalizes it, but nothing else: no spaces, signs or empty items.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ranges {
    /// Inclusive `(first, last)` pairs; sorted, disjoint and non-adjacent.
    runs: Vec<(u32, u32)>,
}

impl Ranges {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every slot of a space of `shards` slots: `0-(shards-1)`; empty for 0.
    pub fn full(shards: u32) -> Self {
        match shards.checked_sub(1) {
            Some(last) => Self::from(0..=last),
            None => Self::new(),
        }
    }

    /// Reads ranges text and checks that every slot lies in a space of `shards` slots.
    ///
    /// # Errors
    /// As [`FromStr`], and [`ParseError::OutsideSpace`] for a slot `>= shards`.
    pub fn parse_in(text: &str, shards: u32) -> Result<Self, ParseError> {
        let ranges: Self = text.parse()?;
        match ranges.last_slot() {
            Some(slot) if slot >= shards => Err(ParseError::OutsideSpace { slot, shards }),
            _ => Ok(ranges),
        }
    }

    /// Whether the set holds no slot.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// The number of slots in the set.
    pub fn len(&self) -> u64 {
        self.runs
            .iter()
            .map(|&(a, b)| u64::from(b) - u64::from(a) + 1)
            .sum()
    }

    /// The number of ranges in the canonical text (adjacent ones being merged).
    pub fn range_count(&self) -> usize {
        self.runs.len()
    }

    /// Whether `slot` is in the set.
    pub fn contains(&self, slot: u32) -> bool {
        // The runs are sorted and disjoint: find the last one starting at or before `slot`.
        let i = self.runs.partition_point(|&(a, _)| a <= slot);
        i > 0 && self.runs[i - 1].1 >= slot
    }

    /// The highest slot in the set.
    pub fn last_slot(&self) -> Option<u32> {
        self.runs.last().map(|&(_, b)| b)
    }

    /// The lowest slot in the set.
    pub fn first_slot(&self) -> Option<u32> {
        self.runs.first().map(|&(a, _)| a)
    }

    /// The ranges, ascending, each as wide as possible.
    pub fn iter(&self) -> impl Iterator<Item = RangeInclusive<u32>> + '_ {
        self.runs.iter().map(|&(a, b)| a..=b)
    }

    /// Every slot, ascending.
    pub fn slots(&self) -> impl Iterator<Item = u32> + '_ {
        self.runs.iter().flat_map(|&(a, b)| a..=b)
    }

    /// Adds one slot.
    pub fn insert(&mut self, slot: u32) {
        self.insert_range(slot..=slot);
    }

    /// Adds the slots of `range`; an empty range (start after end) adds nothing.
    pub fn insert_range(&mut self, range: RangeInclusive<u32>) {
        let (a, b) = range.into_inner();
        if a > b {
            return;
        }
        // Every run overlapping or touching [a, b] merges into it; the rest stay put.
        let first = self
            .runs
            .partition_point(|&(_, end)| end.saturating_add(1) < a);
        let last = self
            .runs
            .partition_point(|&(start, _)| start <= b.saturating_add(1));
        let (mut lo, mut hi) = (a, b);
        if first < last {
            lo = lo.min(self.runs[first].0);
            hi = hi.max(self.runs[last - 1].1);
        }
        self.runs.splice(first..last, [(lo, hi)]);
    }

    /// Removes the slots of `range`; an empty range removes nothing.
    pub fn remove_range(&mut self, range: RangeInclusive<u32>) {
        let cut = Self::from(range);
        *self = self.difference(&cut);
    }

    /// The slots in either set.
    pub fn union(&self, other: &Self) -> Self {
        let mut runs: Vec<_> = self.runs.iter().chain(&other.runs).copied().collect();
        runs.sort_unstable();
        Self::from_sorted(runs)
    }

    /// The slots in both sets.
    pub fn intersection(&self, other: &Self) -> Self {
        let (mut i, mut j) = (0, 0);
        let mut runs = Vec::new();
        while i < self.runs.len() && j < other.runs.len() {
            let (a1, b1) = self.runs[i];
            let (a2, b2) = other.runs[j];
            let (lo, hi) = (a1.max(a2), b1.min(b2));
            if lo <= hi {
                runs.push((lo, hi));
            }
            // Drop whichever run ends first; the other may still overlap the next one.
            if b1 < b2 {
                i += 1;
            } else {
                j += 1;
            }
        }
        Self { runs }
    }

    /// The slots in `self` and not in `other`.
    pub fn difference(&self, other: &Self) -> Self {
        let mut runs = Vec::new();
        let mut j = 0;
        for &(a, b) in &self.runs {
            let mut start = a;
            // Skip the cuts that end before this run.
            while j < other.runs.len() && other.runs[j].1 < start {
                j += 1;
            }
            let mut k = j;
            let mut whole_rest_cut = false;
            while k < other.runs.len() && other.runs[k].0 <= b {
                let (ca, cb) = other.runs[k];
                if ca > start {
                    runs.push((start, ca - 1));
                }
                if cb >= b {
                    whole_rest_cut = true;
                    break;
                }
                start = cb + 1;
                k += 1;
            }
            if !whole_rest_cut {
                runs.push((start, b));
            }
        }
        Self { runs }
    }

    /// Whether the two sets share no slot.
    pub fn is_disjoint(&self, other: &Self) -> bool {
        self.intersection(other).is_empty()
    }

    /// Builds the canonical form from runs sorted by start (overlaps and adjacency allowed).
    fn from_sorted(sorted: Vec<(u32, u32)>) -> Self {
        let mut runs: Vec<(u32, u32)> = Vec::with_capacity(sorted.len());
        for (a, b) in sorted {
            match runs.last_mut() {
                Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
                _ => runs.push((a, b)),
            }
        }
        Self { runs }
    }
}

impl From<RangeInclusive<u32>> for Ranges {
    fn from(range: RangeInclusive<u32>) -> Self {
        let (a, b) = range.into_inner();
        let runs = if a <= b { vec![(a, b)] } else { Vec::new() };
        Self { runs }
    }
}

impl FromIterator<u32> for Ranges {
    fn from_iter<I: IntoIterator<Item = u32>>(slots: I) -> Self {
        let mut runs: Vec<_> = slots.into_iter().map(|s| (s, s)).collect();
        runs.sort_unstable();
        Self::from_sorted(runs)
    }
}

impl fmt::Display for Ranges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.runs.is_empty() {
            return f.write_str(EMPTY);
        }
        for (i, &(a, b)) in self.runs.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if a == b {
                write!(f, "{a}")?;
            } else {
                write!(f, "{a}-{b}")?;
            }
        }
        Ok(())
    }
}

impl FromStr for Ranges {
    type Err = ParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.is_empty() {
            return Err(ParseError::Empty);
        }
        if text == EMPTY {
            return Ok(Self::new());
        }
        let mut runs = Vec::new();
        for item in text.split(',') {
            let (a, b) = match item.split_once('-') {
                Some((a, b)) => (parse_slot(a, item)?, parse_slot(b, item)?),
                None => {
                    let a = parse_slot(item, item)?;
                    (a, a)
                }
            };
            if a > b {
                return Err(ParseError::Reversed { start: a, end: b });
            }
            runs.push((a, b));
        }
        runs.sort_unstable();
        Ok(Self::from_sorted(runs))
    }
}

/// One decimal slot number: digits only (`u32::from_str` alone would accept `+7`).
fn parse_slot(digits: &str, item: &str) -> Result<u32, ParseError> {
    let bad = || ParseError::BadItem {
        item: item.chars().take(32).collect(),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    digits.parse().map_err(|_| bad())
}

impl serde::Serialize for Ranges {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Ranges {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl schemars::JsonSchema for Ranges {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Ranges".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": RANGES_PATTERN,
            "maxLength": MAX_RANGES_LEN,
        })
    }
}

#[cfg(test)]
mod tests;
