//! Tests of the assignment rule: worked examples of each step, then its bounds along random
//! sequences of scales and target changes.

use proptest::prelude::*;
use proptest::sample::Index;

use super::*;

/// Worker pod names in ordinal order: `collector-0`, `collector-1`, ...
fn workers(count: u32) -> Vec<String> {
    (0..count).map(|i| format!("collector-{i}")).collect()
}

fn ranges(text: &str) -> Ranges {
    text.parse().expect("ranges text")
}

/// An assignment from `(worker, ranges text)` pairs.
fn assignment(pairs: &[(&str, &str)]) -> BTreeMap<String, Ranges> {
    pairs
        .iter()
        .map(|&(name, text)| (name.to_owned(), ranges(text)))
        .collect()
}

/// The assignment as `worker ranges` lines in worker order, for readable assertions.
fn text(result: &BTreeMap<String, Ranges>, workers: &[String]) -> Vec<String> {
    workers
        .iter()
        .map(|w| {
            format!(
                "{w} {}",
                result.get(w).map_or("missing".into(), |r| r.to_string())
            )
        })
        .collect()
}

/// Targets per worker, in worker order.
fn loads(weights: &[u32], result: &BTreeMap<String, Ranges>, workers: &[String]) -> Vec<u64> {
    workers
        .iter()
        .map(|w| {
            result[w]
                .slots()
                .map(|s| u64::from(weights[s as usize]))
                .sum()
        })
        .collect()
}

/// The owner of every slot, checking that each has exactly one and that the entries are
/// exactly the workers.
fn owners(
    shards: usize,
    result: &BTreeMap<String, Ranges>,
    workers: &[String],
) -> Result<Vec<usize>, String> {
    let names: Vec<&String> = result.keys().collect();
    let mut expected: Vec<&String> = workers.iter().collect();
    expected.sort();
    if names != expected {
        return Err(format!("entries {names:?}, workers {expected:?}"));
    }
    let mut owner = vec![usize::MAX; shards];
    for (i, name) in workers.iter().enumerate() {
        for slot in result[name].slots() {
            match owner.get_mut(slot as usize) {
                None => return Err(format!("{name} owns slot {slot} of {shards}")),
                Some(o) if *o != usize::MAX => {
                    return Err(format!("slot {slot} owned twice ({name})"));
                }
                Some(o) => *o = i,
            }
        }
    }
    match owner.iter().position(|&o| o == usize::MAX) {
        Some(slot) => Err(format!("slot {slot} owned by nobody")),
        None => Ok(owner),
    }
}

#[test]
fn slot_weights_count_the_targets_of_each_slot() {
    let names = ["db1", "db2", "db3", "pg-main", "orders-db"];
    // From the golden values of the slot hash: slots for 7 shards are 4, 0, 1, 6, 3.
    assert_eq!(slot_weights(names, 7), vec![1, 1, 0, 1, 1, 0, 1]);
    assert_eq!(slot_weights(["a", "a", "a"], 1), vec![3]);
    assert_eq!(slot_weights(names, 0), Vec::<u32>::new());
    assert_eq!(slot_weights([], 3), vec![0, 0, 0]);
}

#[test]
fn no_workers_get_an_empty_map() {
    let current = assignment(&[("collector-0", "0-15")]);
    assert!(rebalance(&[1; 16], &current, &[]).is_empty());
}

#[test]
fn an_empty_shard_space_leaves_every_worker_an_empty_entry() {
    let w = workers(2);
    let result = rebalance(&[], &BTreeMap::new(), &w);
    assert_eq!(text(&result, &w), ["collector-0 none", "collector-1 none"]);
}

#[test]
fn a_repeated_worker_name_counts_once() {
    let w = vec!["collector-0".to_owned(), "collector-0".to_owned()];
    let result = rebalance(&[1, 1], &BTreeMap::new(), &w);
    assert_eq!(text(&result, &w[..1]), ["collector-0 0-1"]);
    assert_eq!(result.len(), 1);
}

#[test]
fn without_targets_the_initial_blocks_have_equal_sizes() {
    let w = workers(3);
    let result = rebalance(&[0; 16], &BTreeMap::new(), &w);
    assert_eq!(
        text(&result, &w),
        ["collector-0 0-4", "collector-1 5-10", "collector-2 11-15"]
    );
}

#[test]
fn initial_blocks_are_cut_at_equal_shares_of_targets() {
    // 12 targets, 6 of them in slots 0-2, and slots 3-5 are empty: a cut anywhere from 3
    // to 6 halves the targets, and 6 also halves the slots.
    let weights = [3, 0, 3, 0, 0, 0, 1, 2, 1, 1, 0, 1];
    let w = workers(2);
    let result = rebalance(&weights, &BTreeMap::new(), &w);
    assert_eq!(text(&result, &w), ["collector-0 0-5", "collector-1 6-11"]);
}

#[test]
fn the_cut_slides_over_empty_slots_to_an_equal_share_of_slots() {
    // One target each in slots 0 and 15: any cut from 1 to 15 splits them evenly.
    let mut weights = [0; 16];
    weights[0] = 1;
    weights[15] = 1;
    let w = workers(2);
    let result = rebalance(&weights, &BTreeMap::new(), &w);
    assert_eq!(text(&result, &w), ["collector-0 0-7", "collector-1 8-15"]);
}

#[test]
fn one_worker_owns_every_slot() {
    let w = workers(1);
    let result = rebalance(&[5, 0, 2], &BTreeMap::new(), &w);
    assert_eq!(text(&result, &w), ["collector-0 0-2"]);
    let current = assignment(&[("collector-0", "1"), ("gone", "0,2")]);
    assert_eq!(rebalance(&[5, 0, 2], &current, &w), result);
}

#[test]
fn one_slot_stays_with_its_owner() {
    let w = workers(3);
    let current = assignment(&[("collector-1", "0")]);
    let result = rebalance(&[7], &current, &w);
    assert_eq!(
        text(&result, &w),
        ["collector-0 none", "collector-1 0", "collector-2 none"]
    );
}

#[test]
fn workers_beyond_the_slot_count_own_nothing() {
    let w = workers(6);
    let weights = [4, 0, 9, 1];
    let result = rebalance(&weights, &BTreeMap::new(), &w);
    let owner = owners(weights.len(), &result, &w).unwrap();
    // Balanced: nobody carries more than its heaviest slot above the least loaded (0),
    // so every worker holds one slot with targets at most.
    for name in &w {
        let full = result[name].slots().filter(|&s| weights[s as usize] > 0);
        assert!(full.count() <= 1, "{:?}", text(&result, &w));
    }
    assert_eq!(owner.len(), 4);
    assert_eq!(rebalance(&weights, &result, &w), result);
}

#[test]
fn unowned_slots_go_to_the_least_loaded_worker() {
    let w = workers(2);
    let weights = [2, 2, 2, 1, 1];
    let current = assignment(&[("collector-0", "0-1"), ("collector-1", "3-4")]);
    let result = rebalance(&weights, &current, &w);
    // Slot 2 (2 targets) is orphaned; collector-1 carries 2, collector-0 carries 4.
    assert_eq!(text(&result, &w), ["collector-0 0-1", "collector-1 2-4"]);
}

#[test]
fn a_leaving_workers_slots_go_in_runs_up_to_each_workers_quota() {
    let w = workers(2);
    let weights = [3, 3, 3, 3, 5, 1, 4, 2];
    let current = assignment(&[
        ("collector-0", "0-1"),
        ("collector-1", "2-3"),
        ("collector-2", "4-7"),
    ]);
    let result = rebalance(&weights, &current, &w);
    // 12 orphaned targets, quotas 6 and 6. In slot order: slot 4 (5 targets) and slot 5
    // (1) to collector-1, which owns slot 3 before them; slot 6 (4) does not fit its quota
    // any more and goes to collector-0, and slot 7 (2) follows it.
    assert_eq!(
        text(&result, &w),
        ["collector-0 0-1,6-7", "collector-1 2-5"]
    );
    assert_eq!(loads(&weights, &result, &w), [12, 12]);
}

#[test]
fn a_new_worker_takes_pieces_from_the_most_loaded() {
    let w = workers(3);
    let weights = [1; 12];
    let current = assignment(&[("collector-0", "0-5"), ("collector-1", "6-11")]);
    let result = rebalance(&weights, &current, &w);
    assert_eq!(loads(&weights, &result, &w), [4, 4, 4]);
    // Four targets move, all to the new worker, taken from ends of the old ranges.
    assert_eq!(result["collector-0"].range_count(), 1);
    assert_eq!(result["collector-1"].range_count(), 1);
    assert_eq!(rebalance(&weights, &result, &w), result);
}

#[test]
fn a_balanced_assignment_is_kept() {
    let w = workers(3);
    // Loads 5, 4, 4 and slot counts 2, 4, 3: every worker is within its heaviest slot of
    // the least loaded, and the one owning an empty slot within one slot of the fewest.
    let weights = [1, 4, 1, 1, 1, 1, 2, 2, 0];
    let current = assignment(&[
        ("collector-0", "0-1"),
        ("collector-1", "2-5"),
        ("collector-2", "6-8"),
    ]);
    assert_eq!(rebalance(&weights, &current, &w), current);
}

#[test]
fn without_targets_the_assignment_is_always_the_initial_blocks() {
    let w = workers(3);
    let current = assignment(&[("collector-0", "0-2,9-11"), ("collector-2", "3-8")]);
    let result = rebalance(&[0; 12], &current, &w);
    assert_eq!(
        text(&result, &w),
        ["collector-0 0-3", "collector-1 4-7", "collector-2 8-11"]
    );
}

#[test]
fn empty_slots_slide_to_the_neighbour_with_fewer_slots() {
    // Balanced by targets (one each), but collector-0 has 7 slots and collector-1 one.
    let w = workers(2);
    let weights = [1, 0, 0, 0, 0, 0, 0, 1];
    let current = assignment(&[("collector-0", "0-6"), ("collector-1", "7")]);
    let result = rebalance(&weights, &current, &w);
    assert_eq!(text(&result, &w), ["collector-0 0-3", "collector-1 4-7"]);
}

#[test]
fn a_worker_without_slots_gets_a_run_of_empty_slots() {
    // The new worker is not short of targets (each of the others has one in one slot),
    // but would get no future target without a slot: it takes two empty slots (a third of
    // the space, at most half the giver's) from collector-0's end, then one slides over
    // from collector-1, which has two more than it.
    let w = workers(3);
    let weights = [1, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let current = assignment(&[("collector-0", "0-4"), ("collector-1", "5-9")]);
    let result = rebalance(&weights, &current, &w);
    assert_eq!(
        text(&result, &w),
        ["collector-0 0-2", "collector-1 6-9", "collector-2 3-5"]
    );
}

/// With a few hundred targets in 1024 slots, pieces carry the empty slots between targets
/// and orphaned blocks go in runs: a handful of ranges per worker at most (without runs,
/// pieces alternating between the least loaded workers, it took over a hundred).
#[test]
fn scaling_keeps_ranges_few_when_slots_hold_few_targets() {
    for (targets, sizes) in [
        (20, [3, 4, 2, 5, 8, 3]),
        (300, [3, 4, 2, 5, 8, 3]),
        (300, [1, 3, 6, 2, 7, 4]),
    ] {
        let mut fleet = Fleet::new(1024, targets, sizes[0]).unwrap();
        for size in &sizes[1..] {
            fleet.apply(&Step::Scale(*size)).unwrap();
            let most = fleet.assignment.values().map(Ranges::range_count).max();
            assert!(
                most <= Some(6),
                "{:?}",
                text(&fleet.assignment, &fleet.workers)
            );
        }
    }
}

#[test]
fn new_workers_eat_into_one_range_each() {
    let mut fleet = Fleet::new(1024, 10_000, 1).unwrap();
    fleet.apply(&Step::Scale(3)).unwrap();
    let text = text(&fleet.assignment, &fleet.workers);
    for name in &fleet.workers {
        assert_eq!(fleet.assignment[name].range_count(), 1, "{text:?}");
    }
}

#[test]
fn removing_a_target_from_the_least_loaded_moves_one_piece() {
    // collector-0 holds slots of one target and is the least loaded; collector-1 holds
    // slots of 5 and sits exactly one heaviest slot above it. A target leaves collector-0:
    // one slot of 5 moves to it and nothing else (collector-0 then carries 4 targets more
    // than the least loaded in slots of one, which the bound allows: its heaviest is 5).
    let w = workers(3);
    let mut weights = vec![1, 1, 1, 1, 1, 5, 5, 0, 5];
    let current = assignment(&[
        ("collector-0", "0-4"),
        ("collector-1", "5-6"),
        ("collector-2", "7-8"),
    ]);
    assert_eq!(rebalance(&weights, &current, &w), current);
    weights[2] = 0;
    let result = rebalance(&weights, &current, &w);
    assert_eq!(
        moved(&weights, &current, &result),
        5,
        "{:?}",
        text(&result, &w)
    );
    assert_eq!(loads(&weights, &result, &w), [9, 5, 5]);
}

#[test]
fn adding_a_target_to_a_worker_at_the_bound_moves_one_piece() {
    // Loads 6, 3, 3: collector-0 is exactly its heaviest slot (3) above the least loaded.
    // One more target in its slot 0 puts it over; one piece goes to collector-1.
    let w = workers(3);
    let mut weights = vec![1, 2, 3, 1, 2, 3];
    let current = assignment(&[
        ("collector-0", "0-2"),
        ("collector-1", "3-4"),
        ("collector-2", "5"),
    ]);
    assert_eq!(rebalance(&weights, &current, &w), current);
    weights[0] = 2;
    let result = rebalance(&weights, &current, &w);
    assert!(
        moved(&weights, &current, &result) <= 3,
        "{:?}",
        text(&result, &w)
    );
    assert_eq!(rebalance(&weights, &result, &w), result);
    let loads = loads(&weights, &result, &w);
    assert!(loads.iter().max() <= Some(&5), "{loads:?}");
}

#[test]
fn slots_outside_the_space_and_unknown_owners_are_ignored() {
    let w = workers(2);
    let current = assignment(&[
        ("collector-0", "0-1,7-900"),
        ("collector-1", "2-3"),
        ("other", "0-3"),
    ]);
    let result = rebalance(&[1; 4], &current, &w);
    assert_eq!(text(&result, &w), ["collector-0 0-1", "collector-1 2-3"]);
}

/// Targets (of `weights`) whose slot changed owner from `before` to `after`.
fn moved(
    weights: &[u32],
    before: &BTreeMap<String, Ranges>,
    after: &BTreeMap<String, Ranges>,
) -> u32 {
    let owner = |map: &BTreeMap<String, Ranges>, slot: u32| {
        map.iter()
            .find(|(_, r)| r.contains(slot))
            .map(|(name, _)| name.clone())
    };
    (0..weights.len() as u32)
        .filter(|&s| owner(before, s) != owner(after, s))
        .map(|s| weights[s as usize])
        .sum()
}

/// A collector along a sequence of changes: its targets, workers and assignment.
#[derive(Debug)]
struct Fleet {
    shards: u32,
    /// The slot of each target; a target added is named `db-{n}`, n counting up.
    targets: Vec<u32>,
    /// Targets added so far, to name the next one.
    added: usize,
    weights: Vec<u32>,
    workers: Vec<String>,
    assignment: BTreeMap<String, Ranges>,
}

/// One change applied to a [`Fleet`].
#[derive(Clone, Debug)]
enum Step {
    /// Scale to this many workers.
    Scale(u32),
    /// Scale by this many workers, within 1 to 100.
    ScaleBy(i32),
    /// Add one target.
    AddOne,
    /// Remove the target at this position.
    RemoveOne(Index),
    /// Add this many targets.
    Add(usize),
    /// Remove this many targets, each at this position of the shrinking list.
    Remove(usize, Index),
}

impl Fleet {
    /// The initial assignment of `targets` targets over `replicas` workers.
    fn new(shards: u32, targets: usize, replicas: u32) -> Result<Self, TestCaseError> {
        let mut fleet = Self {
            shards,
            targets: Vec::new(),
            added: 0,
            weights: vec![0; shards as usize],
            workers: workers(replicas),
            assignment: BTreeMap::new(),
        };
        fleet.add(targets);
        fleet.assignment = rebalance(&fleet.weights, &BTreeMap::new(), &fleet.workers);
        fleet.check()?;
        Ok(fleet)
    }

    fn add(&mut self, count: usize) {
        for _ in 0..count {
            let slot = slot_of(&format!("db-{}", self.added), self.shards);
            self.added += 1;
            self.targets.push(slot);
            self.weights[slot as usize] += 1;
        }
    }

    fn remove(&mut self, count: usize, at: Index) {
        for _ in 0..count.min(self.targets.len()) {
            let slot = self.targets.swap_remove(at.index(self.targets.len()));
            self.weights[slot as usize] -= 1;
        }
    }

    /// w: the most targets in one slot.
    fn heaviest(&self) -> u64 {
        u64::from(self.weights.iter().copied().max().unwrap_or(0))
    }

    /// Applies `step`, rebalances, checks the result and the targets it moved.
    fn apply(&mut self, step: &Step) -> Result<(), TestCaseError> {
        let weights_before = self.weights.clone();
        let w_before = self.heaviest();
        let before = owners(self.weights.len(), &self.assignment, &self.workers)
            .map_err(TestCaseError::fail)?;
        let replicas = self.workers.len() as u32;
        match *step {
            Step::Scale(to) => self.workers = workers(to),
            Step::ScaleBy(by) => {
                self.workers = workers(replicas.saturating_add_signed(by).clamp(1, 100));
            }
            Step::AddOne => self.add(1),
            Step::RemoveOne(at) => self.remove(1, at),
            Step::Add(count) => self.add(count),
            Step::Remove(count, at) => self.remove(count, at),
        }
        self.assignment = rebalance(&self.weights, &self.assignment, &self.workers);
        let after = self.check()?;

        // A target moves when its slot changes owner; only targets present both before and
        // after count. Owners are positions in worker order, which names keep.
        let moved: u64 = (0..after.len())
            .filter(|&s| before[s] != after[s])
            .map(|s| u64::from(weights_before[s].min(self.weights[s])))
            .sum();
        let w = self.heaviest();
        match step {
            Step::Scale(_) | Step::ScaleBy(_) => {
                let (n, n2) = (f64::from(replicas), self.workers.len() as f64);
                let change = (n2 - n).abs();
                let targets = self.targets.len() as f64;
                let bound = 1.1 * targets * change / n.max(n2) + w as f64 * change + 2.0;
                if n2 < n {
                    // Workers removed: exactly their targets move, no other.
                    let removed: u64 = (0..after.len())
                        .filter(|&s| before[s] >= self.workers.len())
                        .map(|s| u64::from(self.weights[s]))
                        .sum();
                    prop_assert_eq!(moved, removed, "{} -> {} workers", n, n2);
                }
                prop_assert!(
                    moved as f64 <= bound,
                    "{n} -> {n2} workers, {targets} targets, w {w}: moved {moved} > {bound:.1}"
                );
            }
            Step::AddOne | Step::RemoveOne(_) => {
                let bound = w.min(w_before);
                prop_assert!(moved <= bound, "{step:?}: moved {moved} > w {bound}");
            }
            Step::Add(_) | Step::Remove(..) => {}
        }
        Ok(())
    }

    /// Checks the invariants of an assignment the rule returned; returns the slot owners.
    fn check(&self) -> Result<Vec<usize>, TestCaseError> {
        let owner = owners(self.weights.len(), &self.assignment, &self.workers)
            .map_err(TestCaseError::fail)?;
        let loads = loads(&self.weights, &self.assignment, &self.workers);
        let least = loads.iter().copied().min().unwrap_or(0);
        let most = loads.iter().copied().max().unwrap_or(0);
        let w = self.heaviest();
        prop_assert!(
            most - least <= w,
            "loads {least}..{most} differ by more than w {w}"
        );

        // The documented balance.
        for (name, load) in self.workers.iter().zip(&loads) {
            let heaviest = self.assignment[name]
                .slots()
                .map(|s| u64::from(self.weights[s as usize]))
                .max()
                .unwrap_or(0);
            prop_assert!(
                load - heaviest <= least,
                "{name}: {load} - {heaviest} > {least}"
            );
        }

        // The spread of empty slots: none left to slide over a boundary, and no worker
        // without slots while another could spare an empty end.
        let count = |i: usize| self.assignment[&self.workers[i]].len();
        let empty = |s: usize| self.weights[s] == 0;
        for s in 1..owner.len() {
            let (left, right) = (owner[s - 1], owner[s]);
            if left != right {
                prop_assert!(
                    !(empty(s - 1) && count(left) >= count(right) + 2),
                    "slide at {s}"
                );
                prop_assert!(
                    !(empty(s) && count(right) >= count(left) + 2),
                    "slide at {s}"
                );
            }
        }
        if (0..self.workers.len()).any(|i| count(i) == 0) {
            for name in &self.workers {
                let ranges = &self.assignment[name];
                let empty_end = ranges
                    .iter()
                    .any(|r| empty(*r.start() as usize) || empty(*r.end() as usize));
                prop_assert!(
                    ranges.len() < 2 || !empty_end,
                    "{name} could feed an idle worker"
                );
            }
        }

        let again = rebalance(&self.weights, &self.assignment, &self.workers);
        prop_assert_eq!(&again, &self.assignment, "not idempotent");
        Ok(owner)
    }
}

/// Regression: sliding a run of empty slots that ends at slot 0 towards a neighbour
/// underflowed a slot number (57 slots, one target, 58 workers then 2).
#[test]
fn empty_slots_slide_from_the_start_of_the_space() {
    let mut fleet = Fleet::new(57, 0, 1).unwrap();
    for step in [Step::Scale(58), Step::AddOne, Step::Scale(2)] {
        fleet.apply(&step).unwrap();
    }
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => (1u32..=100).prop_map(Step::Scale),
        2 => (-3i32..=3).prop_map(Step::ScaleBy),
        2 => Just(Step::AddOne),
        2 => any::<Index>().prop_map(Step::RemoveOne),
        1 => (1usize..2_000).prop_map(Step::Add),
        1 => (1usize..2_000, any::<Index>()).prop_map(|(n, at)| Step::Remove(n, at)),
    ]
}

/// 1024 slots (the default), 16 and 1 (many targets per slot), and odd sizes.
fn shards() -> impl Strategy<Value = u32> {
    prop_oneof![Just(1024), Just(16), Just(1), 2u32..200]
}

/// Few, some, and up to 10k targets.
fn targets() -> impl Strategy<Value = usize> {
    prop_oneof![0usize..=30, 0usize..=1_000, 0usize..=10_000]
}

proptest! {
    // About two seconds unoptimized on two cores; the cases run in sequence.
    #![proptest_config(ProptestConfig { cases: 384, ..ProptestConfig::default() })]

    #[test]
    fn every_step_keeps_ownership_balance_moves_and_idempotence(
        shards in shards(),
        targets in targets(),
        replicas in 1u32..=100,
        steps in proptest::collection::vec(step(), 1..24),
    ) {
        let mut fleet = Fleet::new(shards, targets, replicas)?;
        for step in &steps {
            fleet.apply(step)?;
        }
    }

    #[test]
    fn one_target_added_or_removed_moves_at_most_w_others(
        shards in prop_oneof![Just(1024u32), Just(16), 1u32..64],
        targets in 0usize..=10_000,
        replicas in 1u32..=100,
        steps in proptest::collection::vec(
            prop_oneof![Just(Step::AddOne), any::<Index>().prop_map(Step::RemoveOne)],
            1..48,
        ),
    ) {
        let mut fleet = Fleet::new(shards, targets, replicas)?;
        for step in &steps {
            fleet.apply(step)?;
        }
    }
}
