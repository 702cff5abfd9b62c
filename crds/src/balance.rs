//! The shard assignment rule: which worker pod owns which slots, balanced by target count.
//!
//! [`rebalance`] is a pure function of the number of targets in each slot
//! ([`slot_weights`]), who owns which slots now, and the workers that shall own them. The
//! operator applies it on every reconcile and writes out what it returns; it is
//! deterministic, and applied to its own output with the same inputs it returns that
//! output unchanged, so a steady collector keeps its assignment.
//!
//! # Terms
//!
//! A worker's *load* is the number of targets in the slots it owns; its *heaviest slot*
//! is the largest number of targets in any one of them (0 if it owns none with targets).
//! The assignment is *balanced* when every worker, without its heaviest slot, would carry
//! no more targets than the least loaded worker:
//!
//! `load − heaviest ≤ least load`, for every worker.
//!
//! A *piece* of a worker's range is one end of it up to and including the first slot that
//! holds targets, or the whole range when only one of its slots holds targets. Pieces are
//! what moves between workers while balancing: taking one never splits the giver's range,
//! and it carries the empty slots at the range's end along instead of stranding them.
//!
//! # The rule
//!
//! 1. **Initial assignment.** When no worker owns a slot (the first assignment, or every
//!    owner replaced), and always when no slot holds a target, the slots are cut into
//!    contiguous blocks, one per worker in worker order. Each cut lies where the number
//!    of targets before it comes nearest to an equal share; where it can slide over empty
//!    slots without changing that number, it lies nearest to an equal share of slots. So
//!    with no targets the blocks differ in size by one slot at most.
//! 2. **Orphaned slots.** Slots owned by nobody, or by an owner that is not among the
//!    workers (a pod leaving or gone), are cut into pieces in front of each of their slots
//!    with targets (a run's leading empty slots go with its first piece). Each worker gets
//!    a quota of their targets: what raises the least loaded workers to a common level.
//!    The pieces are handed out in slot order, each to the owner of the slot before it,
//!    else of the slot after it, else to the worker with the most quota left, as long as
//!    that worker has at least half the piece left of its quota; when none has, to the
//!    least loaded worker (ties: one owning an adjacent slot, fewer slots, worker order).
//!    So a leaving worker's block goes in long runs to few workers. Then, as in step 4
//!    but moving only the orphaned pieces just placed, the assignment is balanced. When
//!    that is not possible (a worker over the bound has no orphaned piece at an end of a
//!    range), the orphaned pieces are placed the plain way instead: heaviest first, each
//!    to the least loaded worker (same ties), which always ends balanced.
//! 3. **Starving workers.** A worker below the mean load by more than twice the heaviest
//!    slot plus two targets (a new one, after a scale up) takes pieces until it reaches
//!    the mean, one worker at a time in worker order: first the piece at the end of a
//!    range next to one of its own (so it keeps eating into the same range), else, from
//!    the most loaded worker that has one, the piece nearest to what the giver has above
//!    the mean or the taker lacks, whichever is less. A piece is taken only if it leaves
//!    neither the taker above the mean nor the giver below it by more than half the piece,
//!    and the giver no lower than any other worker's load without its heaviest slot (else
//!    the giver would end least loaded and draw pieces back from the others). After a
//!    balanced assignment, adding or removing one target never starves a worker.
//! 4. **Balancing.** While the assignment is not balanced, the most loaded worker that
//!    breaks the bound (ties: more slots, then worker order) gives one of its pieces to
//!    the least loaded worker (ties: one owning an adjacent slot, fewer slots, worker
//!    order): the piece whose target count comes nearest to the smaller of the giver's
//!    excess over the mean and the receiver's shortfall below it (at least one target),
//!    then one adjacent to a least loaded worker, then the lowest. A worker breaking the
//!    bound holds more targets above the least loaded than any of its slots, so each move
//!    strictly narrows the difference between the two and the loop ends; on a balanced
//!    assignment it moves nothing.
//! 5. **Empty slots**, last, so that future targets land evenly, moving no target: a
//!    worker owning no slot takes a run of empty slots (up to an equal share of slots)
//!    from an end of a range of the worker with most slots that has two or more and an
//!    empty end. Then, where two workers' ranges meet and the one with at least two slots
//!    more has empty slots at that end, it hands over up to half the difference, those
//!    nearest the boundary; the largest difference first. Neither splits a range.
//!
//! A slot in the ranges of several workers (which the caller never passes) stays with the
//! one whose name sorts first; slots beyond the shard space are ignored.
//!
//! # Guarantees
//!
//! For a change applied to an assignment this rule returned, with T targets, N workers
//! before and N' after, and w the largest number of targets in any one slot:
//!
//! - **Balance.** Any two workers differ by at most w targets: the most loaded exceeds the
//!   least loaded by at most its heaviest slot.
//! - **One target added or removed** (same workers) moves at most one piece, so at most w
//!   other targets. No slot is orphaned and no worker starves. Added to worker A: only A
//!   can break the bound, by one target, and giving any of its pieces to the least loaded
//!   restores it (both end at or above the old least load, each within its heaviest slot
//!   of it). Removed from A: only if A was the least loaded can others break the bound;
//!   any piece of the most loaded of them given to A restores it, for the same reason.
//! - **Workers removed** (N' < N, the others staying): exactly the removed workers'
//!   targets move, at most (N − N')·(T/N + w). Step 2 ends balanced (the plain
//!   placement does: each receiver got its last piece while least loaded, and the least
//!   load only grows), so steps 3 and 4 move nothing.
//! - **Workers added** (N' > N): the property tests check that at most
//!   1.1·T·(N' − N)/N' + w·(N' − N) + 2 targets move, along random sequences of scales
//!   and target changes; the most seen is 0.91 of that bound (1/1.1: the new workers'
//!   share, which any rule must move). This one is measured, not proven.
//!
//! A worker's ranges stay few when slots hold few targets each: pieces carry the empty
//! slots between targets, leaving workers' blocks go in runs, and new workers eat into one
//! range at a time. When every slot holds several targets, each piece is a single slot
//! and balancing scatters them: after many scale changes a worker's ranges can approach
//! its slot count (that is the price of moving no more targets than needed).

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::ops::RangeInclusive;

use crate::shard::{slot_of, Ranges};

/// The number of targets in each slot: `weights[s]` counts the targets whose
/// [`slot_of`]`(name, shards)` is `s`; the length is `shards` (empty for 0 shards).
pub fn slot_weights<'a>(targets: impl IntoIterator<Item = &'a str>, shards: u32) -> Vec<u32> {
    let mut weights = vec![0u32; shards as usize];
    if shards == 0 {
        return weights;
    }
    for name in targets {
        if let Some(weight) = weights.get_mut(slot_of(name, shards) as usize) {
            *weight = weight.saturating_add(1);
        }
    }
    weights
}

/// The new owner of every slot, by the rule in the [module docs](self).
///
/// `weights` is [`slot_weights`] (its length is the number of slots). `current` maps each
/// owner to the slots it owns now; owners may be missing from `workers` (leaving or gone),
/// some slots may be owned by nobody, and the ranges of different owners never overlap.
/// `workers` are the pods that shall own slots after the change, in ordinal order, with
/// unique names (a repeated name is ignored after its first position).
///
/// Returns one entry per worker (its ranges may be empty) and every slot
/// `0..weights.len()` in exactly one entry. No workers: an empty map.
pub fn rebalance(
    weights: &[u32],
    current: &BTreeMap<String, Ranges>,
    workers: &[String],
) -> BTreeMap<String, Ranges> {
    let mut names: Vec<&str> = Vec::with_capacity(workers.len());
    let mut index: HashMap<&str, usize> = HashMap::with_capacity(workers.len());
    for name in workers {
        if !index.contains_key(name.as_str()) {
            index.insert(name, names.len());
            names.push(name);
        }
    }
    if names.is_empty() {
        return BTreeMap::new();
    }

    // Slots are u32 throughout (as in `Ranges`); a longer space is cut to fit.
    let weights = &weights[..weights.len().min(u32::MAX as usize)];
    let mut plan = Plan::new(weights, names.len());
    // Without targets nothing can move a target: always the initial blocks.
    if plan.total > 0 {
        plan.adopt(current, &index);
    }
    if plan.workers.iter().all(|w| w.slots == 0) {
        plan.cut_blocks();
    } else {
        plan.place_orphans();
    }
    plan.feed_starving();
    plan.balance();
    plan.spread_empty();

    names
        .into_iter()
        .zip(plan.workers)
        .map(|(name, worker)| (name.to_owned(), worker.ranges))
        .collect()
}

/// The owner of a slot nobody owns.
const NOBODY: usize = usize::MAX;

/// What the rule tracks about one worker.
#[derive(Clone, Debug, Default)]
struct Worker {
    /// Targets in its slots.
    load: u64,
    /// Slots it owns.
    slots: u64,
    /// Targets in its heaviest slot.
    heaviest: u32,
    /// Its slots.
    ranges: Ranges,
}

/// A contiguous run of slots that moves as one, with the targets it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Piece {
    first: u32,
    last: u32,
    weight: u64,
}

impl Piece {
    fn slots(self) -> RangeInclusive<u32> {
        self.first..=self.last
    }
}

/// Slot ownership while the rule runs.
#[derive(Clone)]
struct Plan<'w> {
    weights: &'w [u32],
    /// Per slot: the index of its owner among the workers, or [`NOBODY`].
    owner: Vec<usize>,
    /// Per slot: the first slot at or after it that holds targets (the slot count if none).
    next_full: Vec<u32>,
    /// Per slot: the last slot at or before it that holds targets, if any.
    prev_full: Vec<Option<u32>>,
    workers: Vec<Worker>,
    /// Targets in all slots.
    total: u64,
}

impl<'w> Plan<'w> {
    fn new(weights: &'w [u32], workers: usize) -> Self {
        let len = weights.len();
        let mut next_full = vec![len as u32; len];
        let mut prev_full = vec![None; len];
        for s in (0..len).rev() {
            next_full[s] = match weights[s] {
                0 => next_full.get(s + 1).copied().unwrap_or(len as u32),
                _ => s as u32,
            };
        }
        for s in 0..len {
            prev_full[s] = match weights[s] {
                0 => s.checked_sub(1).and_then(|p| prev_full[p]),
                _ => Some(s as u32),
            };
        }
        Self {
            weights,
            owner: vec![NOBODY; len],
            next_full,
            prev_full,
            workers: (0..workers).map(|_| Worker::default()).collect(),
            total: weights.iter().map(|&w| u64::from(w)).sum(),
        }
    }

    fn len(&self) -> u32 {
        self.weights.len() as u32
    }

    /// The owner of `slot`, or [`NOBODY`] also for slots outside the space.
    fn owner_of(&self, slot: Option<u32>) -> usize {
        slot.and_then(|s| self.owner.get(s as usize).copied())
            .unwrap_or(NOBODY)
    }

    /// Takes over the slots of `current` owned by workers; the rest stay orphaned.
    fn adopt(&mut self, current: &BTreeMap<String, Ranges>, index: &HashMap<&str, usize>) {
        let len = self.len();
        for (name, ranges) in current {
            let Some(&worker) = index.get(name.as_str()) else {
                continue;
            };
            for range in ranges.iter() {
                let (first, last) = range.into_inner();
                if first >= len {
                    break;
                }
                for slot in first..=last.min(len - 1) {
                    if self.owner[slot as usize] == NOBODY {
                        self.owner[slot as usize] = worker;
                    }
                }
            }
        }

        // Record the adopted slots run by run.
        let mut start = 0;
        while start < len {
            let owner = self.owner[start as usize];
            let mut end = start;
            while end + 1 < len && self.owner[end as usize + 1] == owner {
                end += 1;
            }
            if owner != NOBODY {
                let piece = self.piece(start, end);
                self.credit(owner, piece);
            }
            start = end + 1;
        }
    }

    /// The piece of slots `first..=last`, with its target count.
    fn piece(&self, first: u32, last: u32) -> Piece {
        let weight = self.weights[first as usize..=last as usize]
            .iter()
            .map(|&w| u64::from(w))
            .sum();
        Piece {
            first,
            last,
            weight,
        }
    }

    /// Adds `piece` to `worker`'s books (not to the owner table).
    fn credit(&mut self, worker: usize, piece: Piece) {
        let slots = &self.weights[piece.first as usize..=piece.last as usize];
        let w = &mut self.workers[worker];
        w.load += piece.weight;
        w.slots += slots.len() as u64;
        w.heaviest = slots.iter().copied().fold(w.heaviest, u32::max);
        w.ranges.insert_range(piece.slots());
    }

    /// Moves `piece` (all owned by one worker, or by nobody) to `to`.
    fn give(&mut self, to: usize, piece: Piece) {
        let from = self.owner[piece.first as usize];
        for slot in piece.slots() {
            self.owner[slot as usize] = to;
        }
        if from != NOBODY {
            let slots = &self.weights[piece.first as usize..=piece.last as usize];
            let heaviest = slots.iter().copied().max().unwrap_or(0);
            let weights = self.weights;
            let w = &mut self.workers[from];
            w.load -= piece.weight;
            w.slots -= slots.len() as u64;
            w.ranges.remove_range(piece.slots());
            if heaviest == w.heaviest {
                w.heaviest = w
                    .ranges
                    .slots()
                    .map(|s| weights[s as usize])
                    .max()
                    .unwrap_or(0);
            }
        }
        self.credit(to, piece);
    }

    /// Whether `worker` owns a slot right before or right after `piece`.
    fn adjacent(&self, worker: usize, piece: Piece) -> bool {
        self.owner_of(piece.first.checked_sub(1)) == worker
            || self.owner_of(piece.last.checked_add(1)) == worker
    }

    /// Step 1: contiguous blocks in worker order, cut at equal shares of targets.
    fn cut_blocks(&mut self) {
        let cuts = cuts(self.weights, self.workers.len());
        for (worker, pair) in cuts.windows(2).enumerate() {
            if pair[0] < pair[1] {
                let piece = self.piece(pair[0], pair[1] - 1);
                self.give(worker, piece);
            }
        }
    }

    /// Step 2: orphaned pieces in runs, each worker up to its quota, then balanced by
    /// moving orphaned pieces only; if that cannot balance, least loaded first instead.
    fn place_orphans(&mut self) {
        let pieces = self.orphan_pieces();
        if pieces.is_empty() {
            return;
        }
        let start = self.clone();
        self.place_in_runs(&pieces);
        if !self.settle(&pieces) {
            *self = start;
            self.place_greedily(&pieces);
        }
    }

    /// Balances by moving only slots of `pieces` (which move anyway, so this moves no
    /// other target); false if a worker over the bound has none of them at an end.
    fn settle(&mut self, pieces: &[Piece]) -> bool {
        let mut orphaned = vec![false; self.weights.len()];
        for piece in pieces {
            orphaned[piece.first as usize..=piece.last as usize].fill(true);
        }
        let movable = |p: &Piece| {
            orphaned[p.first as usize..=p.last as usize]
                .iter()
                .all(|&o| o)
        };
        while let Some(giver) = self.overloaded() {
            let Some((to, piece)) = self.choose_piece(giver, movable) else {
                return false;
            };
            self.give(to, piece);
        }
        true
    }

    /// Heaviest first, each piece to the least loaded worker (ties: one owning an adjacent
    /// slot, fewer slots, worker order). Every receiver ends within its heaviest slot of
    /// the least load, so the result is balanced.
    fn place_greedily(&mut self, pieces: &[Piece]) {
        let mut pieces = pieces.to_vec();
        pieces.sort_by_key(|p| (Reverse(p.weight), p.first));
        for piece in pieces {
            let to = self.least_loaded_for(piece);
            self.give(to, piece);
        }
    }

    /// The least loaded worker (ties: one owning an adjacent slot, fewer slots, order).
    fn least_loaded_for(&self, piece: Piece) -> usize {
        (0..self.workers.len())
            .min_by_key(|&i| {
                let w = &self.workers[i];
                (w.load, !self.adjacent(i, piece), w.slots, i)
            })
            .unwrap_or(0)
    }

    /// In slot order, each piece to the owner of the slot before it, else of the slot after
    /// it, else the worker with most quota left, if the piece brings it nearer its quota;
    /// else to the least loaded worker.
    fn place_in_runs(&mut self, pieces: &[Piece]) {
        let mut quota = self.quotas(pieces.iter().map(|p| p.weight).sum());
        for &piece in pieces {
            let fits = |i: usize| i != NOBODY && 2 * quota[i] >= piece.weight;
            let before = self.owner_of(piece.first.checked_sub(1));
            let after = self.owner_of(piece.last.checked_add(1));
            let roomiest = (0..self.workers.len()).max_by_key(|&i| (quota[i], Reverse(i)));
            let to = [Some(before), Some(after), roomiest]
                .into_iter()
                .flatten()
                .find(|&i| fits(i))
                .unwrap_or_else(|| self.least_loaded_for(piece));
            quota[to] = quota[to].saturating_sub(piece.weight);
            self.give(to, piece);
        }
    }

    /// How many of `orphaned` targets each worker should take so that loads come out as
    /// even as they can (water-filling from the least loaded up).
    fn quotas(&self, orphaned: u64) -> Vec<u64> {
        let mut order: Vec<usize> = (0..self.workers.len()).collect();
        order.sort_by_key(|&i| (self.workers[i].load, i));
        let load = |k: usize| self.workers[order[k]].load;

        // Raise the k least loaded to a common level, for the largest k that is needed.
        let (mut k, mut sum) = (0, 0u64);
        while k < order.len() && (k as u64) * load(k) - sum < orphaned {
            sum += load(k);
            k += 1;
        }
        let mut quota = vec![0; self.workers.len()];
        if k == 0 {
            return quota;
        }
        let (level, extra) = ((orphaned + sum) / k as u64, (orphaned + sum) % k as u64);
        for (j, &i) in order[..k].iter().enumerate() {
            quota[i] = level + u64::from((j as u64) < extra) - self.workers[i].load;
        }
        quota
    }

    /// The orphaned slots, cut in front of each slot with targets but the first of a run.
    fn orphan_pieces(&self) -> Vec<Piece> {
        let mut pieces = Vec::new();
        let len = self.len();
        let mut start = 0;
        while start < len {
            if self.owner[start as usize] != NOBODY {
                start += 1;
                continue;
            }
            let mut end = start;
            while end + 1 < len && self.owner[end as usize + 1] == NOBODY {
                end += 1;
            }
            // The cuts: every slot with targets after the run's first one.
            let mut first = start;
            let mut next = self.next_full[start as usize];
            while next <= end {
                let after = self
                    .next_full
                    .get(next as usize + 1)
                    .copied()
                    .unwrap_or(len);
                if after > end {
                    break;
                }
                pieces.push(self.piece(first, after - 1));
                first = after;
                next = after;
            }
            pieces.push(self.piece(first, end));
            start = end + 1;
        }
        pieces
    }

    /// Step 3: each worker far below the mean (more than twice the heaviest slot and two
    /// targets) takes pieces up to the mean, in worker order, from the ends of ranges next
    /// to its own, else from the most loaded workers with a piece to spare.
    fn feed_starving(&mut self) {
        let n = self.workers.len() as u64;
        let heaviest = u64::from(self.weights.iter().copied().max().unwrap_or(0));
        let level = self.total / n;
        let starving: Vec<usize> = (0..self.workers.len())
            .filter(|&i| n * (self.workers[i].load + 2 * heaviest + 2) < self.total)
            .collect();
        for taker in starving {
            while let Some(piece) = self.spare_piece(taker, level) {
                self.give(taker, piece);
            }
        }
    }

    /// A piece `taker` can take on its way up to `level`: one that leaves neither it nor
    /// the giver more than half the piece beyond `level`.
    fn spare_piece(&self, taker: usize, level: u64) -> Option<Piece> {
        let need = level.saturating_sub(self.workers[taker].load);
        let excess = |g: usize| self.workers[g].load.saturating_sub(level);
        // No giver goes below what another worker carries without its heaviest slot:
        // it would become the least loaded and draw pieces back from the others.
        let floor = (0..self.workers.len())
            .filter(|&i| i != taker)
            .map(|i| self.workers[i].load - u64::from(self.workers[i].heaviest))
            .max()
            .unwrap_or(0);
        let fits = |g: usize, p: &Piece| {
            g != taker
                && p.weight > 0
                && 2 * need >= p.weight
                && 2 * excess(g) >= p.weight
                && self.workers[g].load - p.weight >= floor
        };

        // Next to what the taker owns: keep eating the same end.
        for range in self.workers[taker].ranges.iter() {
            let (first, last) = range.into_inner();
            for slot in [first.checked_sub(1), last.checked_add(1)]
                .into_iter()
                .flatten()
            {
                let giver = self.owner_of(Some(slot));
                if giver == NOBODY {
                    continue;
                }
                let piece = self.end_piece(giver, slot);
                if let Some(piece) = piece.filter(|p| fits(giver, p)) {
                    return Some(piece);
                }
            }
        }

        // Else from the most loaded worker that has a piece to spare.
        let mut givers: Vec<usize> = (0..self.workers.len())
            .filter(|&g| g != taker && excess(g) > 0)
            .collect();
        givers.sort_by_key(|&g| (Reverse(self.workers[g].load), g));
        givers.into_iter().find_map(|g| {
            let want = excess(g).min(need);
            self.pieces_of(g)
                .into_iter()
                .filter(|p| fits(g, p))
                .min_by_key(|p| (p.weight.abs_diff(want), p.first))
        })
    }

    /// The piece of `worker` at the end of its range that ends or starts at `slot`.
    fn end_piece(&self, worker: usize, slot: u32) -> Option<Piece> {
        let range = self.workers[worker]
            .ranges
            .iter()
            .find(|r| r.contains(&slot))?;
        self.range_pieces(*range.start(), *range.end())
            .into_iter()
            .find(|p| p.first <= slot && slot <= p.last)
    }

    /// The least load of any worker.
    fn least_load(&self) -> u64 {
        self.workers.iter().map(|w| w.load).min().unwrap_or(0)
    }

    /// Step 4: move pieces from the most loaded worker over the bound to the least loaded.
    fn balance(&mut self) {
        while let Some(giver) = self.overloaded() {
            // A worker over the bound holds a slot with targets, so it has a piece.
            let Some((to, piece)) = self.choose_piece(giver, |_| true) else {
                return;
            };
            self.give(to, piece);
        }
    }

    /// The most loaded worker that carries more than its heaviest slot above the least
    /// loaded (ties: more slots, then worker order), if any.
    fn overloaded(&self) -> Option<usize> {
        let least = self.least_load();
        (0..self.workers.len())
            .filter(|&i| {
                let w = &self.workers[i];
                w.load - u64::from(w.heaviest) > least
            })
            .max_by_key(|&i| (self.workers[i].load, self.workers[i].slots, Reverse(i)))
    }

    /// The piece `giver` gives and who receives it (see the module docs, step 4).
    fn choose_piece(
        &self,
        giver: usize,
        movable: impl Fn(&Piece) -> bool,
    ) -> Option<(usize, Piece)> {
        let least = self.least_load();
        // Shares scaled by the worker count, to compare with the mean exactly.
        let n = self.workers.len() as u128;
        let total = u128::from(self.total);
        let excess = (n * u128::from(self.workers[giver].load)).saturating_sub(total);
        let shortfall = total.saturating_sub(n * u128::from(least));
        let wanted = excess.min(shortfall).max(n);

        let least_loaded = |i: usize| i != NOBODY && self.workers[i].load == least;
        let by_slots = |i: &usize| (self.workers[*i].slots, *i);
        let fallback = (0..self.workers.len())
            .filter(|&i| least_loaded(i))
            .min_by_key(by_slots)
            .unwrap_or(0);

        let mut best: Option<((u128, bool, u32), usize, Piece)> = None;
        for piece in self.pieces_of(giver).into_iter().filter(movable) {
            let neighbour = [
                self.owner_of(piece.first.checked_sub(1)),
                self.owner_of(piece.last.checked_add(1)),
            ]
            .into_iter()
            .filter(|&i| least_loaded(i))
            .min_by_key(by_slots);
            let key = (
                (n * u128::from(piece.weight)).abs_diff(wanted),
                neighbour.is_none(),
                piece.first,
            );
            if best.as_ref().is_none_or(|(k, _, _)| key < *k) {
                best = Some((key, neighbour.unwrap_or(fallback), piece));
            }
        }
        best.map(|(_, to, piece)| (to, piece))
    }

    /// The pieces of `worker`'s ranges (see the module docs).
    fn pieces_of(&self, worker: usize) -> Vec<Piece> {
        self.workers[worker]
            .ranges
            .iter()
            .flat_map(|r| self.range_pieces(*r.start(), *r.end()))
            .collect()
    }

    /// The pieces of the range `first..=last`: each end up to its first slot with targets,
    /// or the whole range when one slot of it holds targets; none without targets.
    fn range_pieces(&self, first: u32, last: u32) -> Vec<Piece> {
        let head = self.next_full[first as usize];
        let Some(tail) = self.prev_full[last as usize].filter(|&t| t >= first) else {
            return Vec::new();
        };
        if head == tail {
            vec![self.piece(first, last)]
        } else {
            vec![self.piece(first, head), self.piece(tail, last)]
        }
    }

    /// Step 5: empty slots go to workers owning none, then slide over the boundaries
    /// between workers towards the side with fewer slots.
    fn spread_empty(&mut self) {
        while let Some((to, piece)) = self.feed_idle().or_else(|| self.slide()) {
            self.give(to, piece);
        }
    }

    /// A run of empty slots for the first worker owning no slot, from an end of a range
    /// of the worker with most slots (of those with two or more and an empty end).
    fn feed_idle(&self) -> Option<(usize, Piece)> {
        let idle = self.workers.iter().position(|w| w.slots == 0)?;
        let (giver, run) = (0..self.workers.len())
            .filter(|&g| self.workers[g].slots >= 2)
            .filter_map(|g| {
                let runs = self.empty_ends(g).map(|(_, run)| run);
                let longest = runs.max_by_key(|run| (run.len(), Reverse(run.inner.min(run.end))));
                longest.map(|run| (g, run))
            })
            .max_by_key(|(g, _)| (self.workers[*g].slots, Reverse(*g)))?;

        let level = u64::from(self.len()) / self.workers.len() as u64;
        let count = level.min(self.workers[giver].slots / 2).max(1);
        Some((idle, run.take(count)))
    }

    /// Empty slots to slide across a boundary: where a worker's range meets another
    /// worker's, and the one with at least two slots more has empty slots at that end, up
    /// to half the difference of those nearest the boundary. The largest difference first.
    fn slide(&self) -> Option<(usize, Piece)> {
        let mut best: Option<((u64, Reverse<u32>), usize, Piece)> = None;
        for (giver, worker) in self.workers.iter().enumerate() {
            for (beyond, run) in self.empty_ends(giver) {
                let to = self.owner_of(beyond);
                if to == NOBODY {
                    continue;
                }
                let gap = worker.slots.saturating_sub(self.workers[to].slots);
                let piece = run.take(gap / 2);
                let key = (gap, Reverse(piece.first));
                if gap >= 2 && best.as_ref().is_none_or(|(k, _, _)| key > *k) {
                    best = Some((key, to, piece));
                }
            }
        }
        best.map(|(_, to, piece)| (to, piece))
    }

    /// The runs of empty slots at the ends of `worker`'s ranges, each with the slot just
    /// beyond that end.
    fn empty_ends(&self, worker: usize) -> impl Iterator<Item = (Option<u32>, EmptyEnd)> + '_ {
        self.workers[worker].ranges.iter().flat_map(move |range| {
            let (first, last) = range.into_inner();
            let head = self.empty_head(first, last).map(|p| {
                let run = EmptyEnd {
                    inner: p.last,
                    end: first,
                };
                (first.checked_sub(1), run)
            });
            let tail = self.empty_tail(first, last).map(|p| {
                let run = EmptyEnd {
                    inner: p.first,
                    end: last,
                };
                (last.checked_add(1), run)
            });
            [head, tail].into_iter().flatten()
        })
    }

    /// The empty slots at the start of the range `first..=last`, if it starts with one.
    fn empty_head(&self, first: u32, last: u32) -> Option<Piece> {
        let end = self.next_full[first as usize].min(last + 1);
        (end > first).then(|| Piece {
            first,
            last: end - 1,
            weight: 0,
        })
    }

    /// The empty slots at the end of the range `first..=last`, if it ends with one.
    fn empty_tail(&self, first: u32, last: u32) -> Option<Piece> {
        let start = self.prev_full[last as usize]
            .filter(|&p| p >= first)
            .map_or(first, |p| p + 1);
        (start <= last).then_some(Piece {
            first: start,
            last,
            weight: 0,
        })
    }
}

/// A run of empty slots at one end of a range, from its innermost slot to the range's end
/// (`inner > end` when the end is the range's first slot).
#[derive(Clone, Copy, Debug)]
struct EmptyEnd {
    inner: u32,
    end: u32,
}

impl EmptyEnd {
    fn len(self) -> u64 {
        u64::from(self.inner.abs_diff(self.end)) + 1
    }

    /// The `count` slots (at least one) nearest the range's end, so the range stays whole.
    fn take(self, count: u64) -> Piece {
        let keep = u32::try_from(self.len().saturating_sub(count.max(1))).unwrap_or(0);
        let (first, last) = if self.inner <= self.end {
            (self.inner + keep, self.end)
        } else {
            (self.end, self.inner - keep)
        };
        Piece {
            first,
            last,
            weight: 0,
        }
    }
}

/// The starts of the initial blocks, `workers + 1` of them from 0 to the slot count: each
/// cut nearest to an equal share of targets, then of slots.
fn cuts(weights: &[u32], workers: usize) -> Vec<u32> {
    let len = weights.len() as u32;
    let mut prefix = Vec::with_capacity(weights.len() + 1);
    prefix.push(0u64);
    for &w in weights {
        prefix.push(prefix[prefix.len() - 1] + u64::from(w));
    }
    let total = u128::from(prefix[prefix.len() - 1]);
    let n = workers as u128;

    let mut cuts = vec![0u32];
    for i in 1..n {
        // Compare shares scaled by the worker count: `n * prefix[c]` against `i * total`.
        let share = i * total;
        let above = prefix.partition_point(|&p| n * u128::from(p) < share);
        let mut candidates = Vec::with_capacity(2);
        for c in [above.checked_sub(1), Some(above)].into_iter().flatten() {
            let Some(&value) = prefix.get(c) else {
                continue;
            };
            // All cuts with the same number of targets before them: pick by slots.
            let lo = prefix.partition_point(|&p| p < value) as u128;
            let hi = prefix.partition_point(|&p| p <= value) as u128 - 1;
            let ideal = i * u128::from(len);
            let cut = (ideal / n).clamp(lo, hi);
            let cut = [cut, (cut + 1).min(hi)]
                .into_iter()
                .min_by_key(|&c| ((n * c).abs_diff(ideal), c))
                .unwrap_or(cut);
            let key = (
                (n * u128::from(value)).abs_diff(share),
                (n * cut).abs_diff(ideal),
                cut,
            );
            candidates.push((key, cut));
        }
        let cut = candidates.into_iter().min().map_or(0, |(_, c)| c) as u32;
        let previous = cuts[cuts.len() - 1];
        cuts.push(cut.max(previous));
    }
    cuts.push(len);
    cuts
}

#[cfg(test)]
mod tests;
