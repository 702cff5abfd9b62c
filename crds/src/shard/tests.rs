//! Tests of the slot hash (golden values) and of the ranges text and set operations.

use std::collections::BTreeSet;

use proptest::prelude::*;

use super::*;

/// Golden values of the slot hash: (name, 64-bit hash, slot for 7, 1024 and 16384 shards).
///
/// Computed once, independently of this crate, with the reference xxHash library through
/// Python's `xxhash` package (PyPI `xxhash` 4.1.0, bundling libxxhash 0.8.4):
/// `xxhash.xxh3_64_intdigest(name.encode("utf-8"), seed=0) % shards`. The hash of the
/// empty input, 0x2d06800538d394c2, is also the published XXH3_64bits test vector. The
/// names cover each input-length branch of XXH3 a target name can take (0, 1-3, 4-8,
/// 9-16 and 17-128 bytes) and a non-ASCII name.
const GOLDEN: &[(&str, u64, [u32; 3])] = &[
    ("", 0x2d06_8005_38d3_94c2, [4, 194, 5314]),
    ("a", 0xe6c6_32b6_1e96_4e1f, [1, 543, 3615]),
    ("db1", 0xcbed_fd43_86d1_e438, [4, 56, 9272]),
    ("db2", 0x7c2a_524f_d5ca_f2cc, [0, 716, 13004]),
    ("db3", 0xfe62_6954_20f6_5fa7, [1, 935, 8103]),
    ("pg-main", 0x6c0d_187c_237e_c7a7, [6, 935, 1959]),
    ("orders-db", 0xf766_464f_3dc3_e223, [3, 547, 8739]),
    ("mysql.reporting_01", 0xb05b_ed3d_3a3d_ba5a, [0, 602, 14938]),
    (
        "billing_eu-west-1.prod",
        0xfc85_d62e_8a26_0b08,
        [3, 776, 2824],
    ),
    ("datenbank-ü", 0xd802_7856_434a_77ea, [2, 1002, 14314]),
];

#[test]
fn slot_hash_matches_the_reference_xxh3_values() {
    for &(name, hash, _) in GOLDEN {
        assert_eq!(
            xxh3_64_with_seed(name.as_bytes(), HASH_SEED),
            hash,
            "hash of {name:?}"
        );
    }
}

#[test]
fn slot_of_matches_the_golden_slots_for_several_shard_counts() {
    for &(name, _, slots) in GOLDEN {
        for (shards, slot) in [7, 1024, 16384].into_iter().zip(slots) {
            assert_eq!(slot_of(name, shards), slot, "{name:?} in {shards} shards");
        }
    }
}

#[test]
fn a_single_shard_or_zero_shards_put_every_target_in_slot_zero() {
    for &(name, _, _) in GOLDEN {
        assert_eq!(slot_of(name, 1), 0);
        assert_eq!(slot_of(name, 0), 0);
    }
}

#[test]
fn empty_set_is_spelled_none_and_read_back() {
    assert_eq!(Ranges::new().to_string(), "none");
    assert_eq!("none".parse::<Ranges>(), Ok(Ranges::new()));
    assert_eq!("".parse::<Ranges>(), Err(ParseError::Empty));
}

#[test]
fn text_is_canonical_with_adjacent_ranges_merged() {
    let ranges: Ranges = "200-255,0-4,5-9,7,100-100,101".parse().unwrap();
    assert_eq!(ranges.to_string(), "0-9,100-101,200-255");
    assert_eq!(ranges.range_count(), 3);
    assert_eq!(ranges.len(), 10 + 2 + 56);
}

#[test]
fn malformed_text_is_refused_with_the_offending_item() {
    for bad in [
        " 1",
        "1 ",
        "1,,2",
        ",1",
        "1,",
        "-",
        "1-",
        "-1",
        "+1",
        "1-2-3",
        "a",
        "none,1",
        "0x1",
        "4294967296",
    ] {
        assert!(
            matches!(bad.parse::<Ranges>(), Err(ParseError::BadItem { .. })),
            "{bad:?} was accepted"
        );
    }
    assert_eq!(
        "9-3".parse::<Ranges>(),
        Err(ParseError::Reversed { start: 9, end: 3 })
    );
}

#[test]
fn parse_in_refuses_slots_outside_the_space() {
    assert_eq!(
        Ranges::parse_in("0-1023", 1024).unwrap(),
        Ranges::full(1024)
    );
    assert_eq!(
        Ranges::parse_in("0-1024", 1024),
        Err(ParseError::OutsideSpace {
            slot: 1024,
            shards: 1024
        })
    );
}

#[test]
fn full_space_is_one_range_and_zero_shards_are_empty() {
    assert_eq!(Ranges::full(16384).to_string(), "0-16383");
    assert_eq!(Ranges::full(1).to_string(), "0");
    assert!(Ranges::full(0).is_empty());
}

#[test]
fn contains_is_exact_at_range_edges() {
    let ranges: Ranges = "3-5,9".parse().unwrap();
    let inside: Vec<u32> = (0..12).filter(|&s| ranges.contains(s)).collect();
    assert_eq!(inside, [3, 4, 5, 9]);
}

#[test]
fn set_operations_at_the_top_of_the_u32_range_do_not_overflow() {
    let mut ranges = Ranges::from(u32::MAX - 1..=u32::MAX);
    ranges.insert(u32::MAX - 2);
    assert_eq!(ranges.len(), 3);
    ranges.remove_range(u32::MAX..=u32::MAX);
    assert_eq!(ranges, Ranges::from(u32::MAX - 2..=u32::MAX - 1));
    assert!(Ranges::from(0..=u32::MAX).contains(u32::MAX));
    assert_eq!(Ranges::from(0..=u32::MAX).len(), 1 << 32);
}

#[test]
fn worst_case_text_in_the_largest_space_fits_the_bound() {
    // Pairs with one-slot gaps and single slots with one-slot gaps are the longest texts
    // (see MAX_RANGES_LEN); both must fit.
    let pairs: Ranges = (0..MAX_SHARDS).filter(|s| s % 3 != 2).collect();
    let singles: Ranges = (0..MAX_SHARDS).filter(|s| s % 2 == 0).collect();
    let odd_singles: Ranges = (0..MAX_SHARDS).filter(|s| s % 2 == 1).collect();
    for ranges in [pairs, singles, odd_singles] {
        let len = ranges.to_string().len();
        assert!(len <= MAX_RANGES_LEN as usize, "{len} > {MAX_RANGES_LEN}");
    }
}

#[test]
fn ranges_serialize_as_their_text() {
    let ranges: Ranges = "0-9,12".parse().unwrap();
    let json = serde_json::to_string(&ranges).unwrap();
    assert_eq!(json, r#""0-9,12""#);
    assert_eq!(serde_json::from_str::<Ranges>(&json).unwrap(), ranges);
    assert!(serde_json::from_str::<Ranges>(r#""1,x""#).is_err());
}

#[test]
fn canonical_text_matches_the_schema_pattern() {
    let pattern = regex::Regex::new(RANGES_PATTERN).unwrap();
    for text in ["none", "0", "0-9", "0-9,12,14-15"] {
        assert!(pattern.is_match(text), "{text}");
    }
    for text in ["", "0,", "1 ", "none,1", "-1"] {
        assert!(!pattern.is_match(text), "{text}");
    }
}

fn slot_set(max: u32) -> impl Strategy<Value = BTreeSet<u32>> {
    proptest::collection::btree_set(0..max, 0..64)
}

fn ranges_of(set: &BTreeSet<u32>) -> Ranges {
    set.iter().copied().collect()
}

proptest! {
    #[test]
    fn text_round_trips(set in slot_set(300)) {
        let ranges = ranges_of(&set);
        let text = ranges.to_string();
        let back: Ranges = text.parse().unwrap();
        prop_assert_eq!(&back, &ranges);
        prop_assert_eq!(&back.to_string(), &text);
        prop_assert_eq!(back.slots().collect::<BTreeSet<_>>(), set);
        prop_assert!(regex::Regex::new(RANGES_PATTERN).unwrap().is_match(&text));
    }

    #[test]
    fn canonical_text_never_has_adjacent_or_unsorted_ranges(set in slot_set(300)) {
        let ranges = ranges_of(&set);
        let runs: Vec<_> = ranges.iter().collect();
        for pair in runs.windows(2) {
            prop_assert!(pair[0].end() + 1 < *pair[1].start());
        }
        prop_assert_eq!(ranges.len(), set.len() as u64);
    }

    #[test]
    fn non_canonical_text_reads_as_the_same_set(
        items in proptest::collection::vec((0u32..200, 0u32..5), 1..20)
    ) {
        let text: Vec<String> = items.iter().map(|&(a, w)| format!("{a}-{}", a + w)).collect();
        let ranges: Ranges = text.join(",").parse().unwrap();
        let expected: BTreeSet<u32> = items.iter().flat_map(|&(a, w)| a..=a + w).collect();
        prop_assert_eq!(ranges.slots().collect::<BTreeSet<_>>(), expected);
    }

    #[test]
    fn contains_agrees_with_the_slot_set(set in slot_set(300), probe in 0u32..320) {
        prop_assert_eq!(ranges_of(&set).contains(probe), set.contains(&probe));
    }

    #[test]
    fn set_operations_agree_with_btreeset(a in slot_set(200), b in slot_set(200)) {
        let (ra, rb) = (ranges_of(&a), ranges_of(&b));
        prop_assert_eq!(ra.union(&rb), a.union(&b).copied().collect::<Ranges>());
        prop_assert_eq!(ra.intersection(&rb), a.intersection(&b).copied().collect::<Ranges>());
        prop_assert_eq!(ra.difference(&rb), a.difference(&b).copied().collect::<Ranges>());
        prop_assert_eq!(ra.is_disjoint(&rb), a.is_disjoint(&b));
    }

    #[test]
    fn insert_and_remove_ranges_agree_with_btreeset(
        set in slot_set(200),
        ops in proptest::collection::vec((any::<bool>(), 0u32..200, 0u32..20), 0..20)
    ) {
        let mut ranges = ranges_of(&set);
        let mut model = set;
        for (insert, a, w) in ops {
            if insert {
                ranges.insert_range(a..=a + w);
                model.extend(a..=a + w);
            } else {
                ranges.remove_range(a..=a + w);
                model.retain(|s| !(a..=a + w).contains(s));
            }
            prop_assert_eq!(&ranges, &ranges_of(&model));
        }
    }

    #[test]
    fn every_name_gets_a_slot_inside_the_space(
        name in "[a-z0-9_.-]{1,63}",
        shards in 1u32..=MAX_SHARDS,
    ) {
        prop_assert!(slot_of(&name, shards) < shards);
    }
}
