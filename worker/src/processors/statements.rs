//! Turns a target's statement statistics into points: ranking, sampling and the aggregate.
//!
//! Servers keep cumulative counters per statement. Each scrape, the change since the
//! previous scrape ranks the statements by execution time; the top N are candidates,
//! the sampler picks among them, and each kept statement goes out with its cumulative
//! counters (its series stays a proper cumulative sum whoever exports it). Every other
//! statement is folded into one aggregate per target, sent as delta sums over the
//! interval since the previous scrape, so totals stay right however the top N changes.
//!
//! What is remembered is bounded: each target keeps, by key hash, the counters of its
//! statements as last read, in a map rebuilt at every scrape: first the statements of this
//! scrape, then, while there is room, those read within `sampler.key_ttl` that this scrape
//! did not return (a receiver reads at most 10,000 statements, so those near that cut come
//! and go), at most as many of those as this scrape returned. All targets together
//! remember at most `sampler.max_keys` statements (briefly more while a scrape's new map is
//! built beside its old one). Past that budget, a scrape's remaining statements are not
//! remembered and counted in `dbcollector_sampler_keys_over_budget_total`; at the target's
//! next scrape a statement without a baseline cannot be told from one of those, so its
//! change counts as zero rather than as its whole cumulative value (an understatement
//! while the budget is short, never a spike). Otherwise a statement without a baseline is
//! new since the previous scrape and its cumulative value is its change. A target not
//! scraped for `sampler.key_ttl` is forgotten with its statements.
//!
//! Looking a statement up is one probe of the target's own map, with the key's hash as
//! the map's hash: about a tenth of what a concurrent cache costs per key, which matters
//! as every statement of every scrape is looked up before the first of its points leaves.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use moka::notification::RemovalCause;
use moka::sync::Cache;
use nohash_hasher::IntMap;
use smallvec::SmallVec;

use crate::config::{self, QueryText};
use crate::metrics::{AttrValue, Attributes, Descriptor, Point, Points, Value};
use crate::processors::obfuscate::obfuscate;
use crate::processors::sampler::{key_hash, Candidate, Sampler};
use crate::receivers::{StatementDescriptors, StatementRow, StatementSet};
use crate::telemetry::Metrics;

/// Most targets whose previous scrape time and rate are remembered. Far above what one
/// worker collects; beyond it a target loses its baseline (one scrape without aggregate).
const MAX_TARGETS: u64 = 65_536;

/// Moka refuses expiry times over 1000 years; a config may say more.
const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The attribute carrying obfuscated query text (OpenTelemetry semantic conventions).
const QUERY_TEXT: &str = "db.query.text";

/// The cumulative counters of one statement at one scrape.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Counters {
    calls: i64,
    time: f64,
    rows: i64,
    errors: i64,
}

impl Counters {
    /// No change.
    const NONE: Counters = Counters {
        calls: 0,
        time: 0.0,
        rows: 0,
        errors: 0,
    };

    fn of(row: &StatementRow) -> Self {
        let time = if row.total_time_s.is_finite() {
            row.total_time_s
        } else {
            0.0
        };
        Self {
            calls: row.calls,
            time,
            rows: row.rows,
            errors: row.errors,
        }
    }

    /// The change from `prev` to `self`. When any counter went back, the statement was
    /// reset (or evicted by the server and seen again): its current value is its change.
    fn since(self, prev: Counters) -> Counters {
        let went_back = self.calls < prev.calls
            || self.time < prev.time
            || self.rows < prev.rows
            || self.errors < prev.errors;
        if went_back {
            return self;
        }
        Counters {
            calls: self.calls - prev.calls,
            time: self.time - prev.time,
            rows: self.rows - prev.rows,
            errors: self.errors - prev.errors,
        }
    }
}

/// A statement's counters as last read, and when.
#[derive(Clone, Copy, Debug)]
struct Seen {
    counters: Counters,
    /// Read time of the scrape that returned it, Unix nanoseconds.
    at: u64,
}

/// What is remembered of a target between scrapes.
#[derive(Debug)]
struct TargetState {
    /// Read time of the previous scrape, Unix nanoseconds: the aggregate's start.
    previous: Option<u64>,
    /// The sampler's rate at the previous scrape.
    rate: Option<f64>,
    /// The statements remembered, by [`key_hash`]. A collision within one target needs
    /// ~2^32 keys.
    counters: IntMap<u64, Seen>,
    /// The previous scrape had statements it could not remember for want of budget.
    incomplete: bool,
    /// The worker-wide count of remembered keys this map's entries are part of.
    budget: Arc<KeyBudget>,
}

impl TargetState {
    fn new(budget: Arc<KeyBudget>) -> Self {
        Self {
            previous: None,
            rate: None,
            counters: IntMap::default(),
            incomplete: false,
            budget,
        }
    }
}

impl Drop for TargetState {
    /// A forgotten target gives its keys back (when the last processing of it is done).
    fn drop(&mut self) {
        self.budget.release(self.counters.len());
    }
}

/// Statement keys remembered by all targets together, at most `max`.
#[derive(Debug)]
struct KeyBudget {
    held: AtomicU64,
    max: u64,
}

impl KeyBudget {
    /// Gives back `released` keys and takes up to `wanted`; returns how many were taken.
    fn exchange(&self, released: usize, wanted: usize) -> usize {
        let (released, wanted) = (released as u64, wanted as u64);
        let mut taken = 0;
        // The closure always returns `Some`, so the update cannot fail.
        let _ = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                let others = held.saturating_sub(released);
                taken = wanted.min(self.max.saturating_sub(others));
                Some(others + taken)
            });
        taken as usize
    }

    fn release(&self, keys: usize) {
        let keys = keys as u64;
        let _ = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                Some(held.saturating_sub(keys))
            });
    }

    fn held(&self) -> u64 {
        self.held.load(Ordering::Acquire)
    }
}

/// The statement processor, shared by every processing task.
pub struct Statements {
    /// Per target; the lock also keeps two scrapes of one target from interleaving.
    targets: Cache<Arc<str>, Arc<Mutex<TargetState>>>,
    budget: Arc<KeyBudget>,
    /// `sampler.key_ttl` in nanoseconds.
    ttl_nanos: u64,
    sampler: Sampler,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Statements {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Statements")
            .field("keys", &self.budget.held())
            .field("targets", &self.targets.entry_count())
            .field("sampler", &self.sampler)
            .finish_non_exhaustive()
    }
}

/// The statements of one scrape left out of the individual series, summed.
#[derive(Debug, Default)]
struct Others {
    calls: i64,
    time: f64,
    rows: i64,
    count: i64,
}

impl Others {
    fn add(&mut self, c: &Candidate) {
        self.calls = self.calls.saturating_add(c.calls);
        self.time += c.time;
        self.rows = self.rows.saturating_add(c.rows);
        self.count += 1;
    }
}

impl Statements {
    /// A processor sampling as `sampler` says, reporting to `metrics`.
    pub fn new(sampler: &config::Sampler, metrics: Arc<Metrics>) -> Self {
        let ttl = sampler.key_ttl.min(MAX_TTL);
        let listener_metrics = metrics.clone();
        let targets = Cache::builder()
            .max_capacity(MAX_TARGETS)
            .time_to_idle(ttl)
            .eviction_listener(move |target: Arc<Arc<str>>, _, cause| {
                if cause != RemovalCause::Replaced {
                    listener_metrics
                        .sampler_rate
                        .remove(&Metrics::target(&target));
                }
            })
            .build();
        Self {
            targets,
            budget: Arc::new(KeyBudget {
                held: AtomicU64::new(0),
                max: sampler.max_keys,
            }),
            ttl_nanos: u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX),
            sampler: Sampler::new(sampler),
            metrics,
        }
    }

    /// Appends the points for `set`, a scrape of `target`, to `out`.
    ///
    /// A set not newer than the target's previous one (a scrape processed out of order)
    /// is dropped: its changes were already counted.
    pub fn process(
        &self,
        target: &Arc<str>,
        settings: &config::Statements,
        set: StatementSet,
        out: &mut Points,
    ) {
        let slot = self.targets.get_with_by_ref(target, || {
            Arc::new(Mutex::new(TargetState::new(self.budget.clone())))
        });
        // A panic while holding the lock leaves at worst an old baseline.
        let mut state = slot.lock().unwrap_or_else(PoisonError::into_inner);
        if state.previous.is_some_and(|p| set.time_unix_nanos <= p) {
            tracing::debug!(
                target_name = %target,
                time = set.time_unix_nanos,
                "statement set not newer than the previous one; dropped"
            );
            return;
        }

        // Changes since the previous scrape, slowest first; the top N are the candidates,
        // the rest go to the aggregate.
        let mut ranked = self.changes(&mut state, &set.rows, set.time_unix_nanos);
        let top = match settings.top_n {
            0 => ranked.len(),
            n => (n as usize).min(ranked.len()),
        };
        if top < ranked.len() {
            ranked.select_nth_unstable_by(top, slowest_first);
        }
        let (candidates, rest) = ranked.split_at_mut(top);
        candidates.sort_unstable_by(slowest_first);

        let mut keep = Vec::new();
        let rate = self.sampler.select(candidates, state.rate, &mut keep);

        // Kept candidates go out one by one; the others join the rest in the aggregate.
        let desc = set.descriptors;
        let (start, time) = (set.start_unix_nanos, set.time_unix_nanos);
        let mut rows = set.rows;

        let mut others = Others::default();
        rest.iter().for_each(|c| others.add(c));
        let mut sampled_out = 0;
        for (c, &kept) in candidates.iter().zip(&keep) {
            let Some(row) = rows.get_mut(c.index) else {
                continue;
            };
            if kept {
                let text = query_text(settings, row);
                push_statement(desc, row, text, start, time, out);
            } else {
                others.add(c);
                sampled_out += points_of(desc, row);
            }
        }

        // A new owner's first scrape only sets the baseline; without top N or sampling
        // nothing is ever left out, so the aggregate would always be zero.
        let aggregates = settings.top_n != 0 || self.sampler.enabled();
        if let (Some(previous), true) = (state.previous, aggregates) {
            push_others(desc, &others, previous, time, out);
        }
        out.push(gauge(desc.sample_rate, Value::Double(rate), time));

        state.previous = Some(time);
        state.rate = Some(rate);
        self.report(target, rate, sampled_out);
    }

    /// Exports the sampler's self-metrics after a scrape of `target`.
    fn report(&self, target: &str, rate: f64, sampled_out: u64) {
        self.metrics.points_sampled_out.inc_by(sampled_out);
        self.metrics
            .sampler_rate
            .get_or_create(&Metrics::target(target))
            .set(rate);
        let keys = i64::try_from(self.budget.held()).unwrap_or(i64::MAX);
        self.metrics.sampler_keys.set(keys);
    }

    /// Each row's change since the previous scrape, remembering the new counters in place
    /// of the previous ones as the worker's key budget allows (see the module docs).
    fn changes(&self, state: &mut TargetState, rows: &[StatementRow], time: u64) -> Vec<Candidate> {
        let mut previous = std::mem::take(&mut state.counters);
        let mut reserved = self.budget.exchange(previous.len(), rows.len());
        let mut counters = IntMap::with_capacity_and_hasher(reserved, Default::default());
        let baseline_unknown = state.previous.is_some() && state.incomplete;
        let mut over = 0;
        let candidates = rows
            .iter()
            .enumerate()
            .map(|(index, row)| {
                let hash = key_hash(&row.key);
                let now = Counters::of(row);
                let change = match previous.remove(&hash) {
                    Some(seen) => now.since(seen.counters),
                    None if baseline_unknown => Counters::NONE,
                    None => now,
                };
                if counters.len() < reserved {
                    counters.insert(
                        hash,
                        Seen {
                            counters: now,
                            at: time,
                        },
                    );
                } else {
                    over += 1;
                }
                Candidate {
                    index,
                    hash,
                    calls: change.calls,
                    time: change.time,
                    rows: change.rows,
                    errors: change.errors,
                }
            })
            .collect();

        // Statements read before but not now, while they are recent and there is room.
        let recent = |seen: &Seen| time.saturating_sub(seen.at) <= self.ttl_nanos;
        let carried = previous
            .values()
            .filter(|s| recent(s))
            .count()
            .min(rows.len());
        if carried > 0 && over == 0 {
            let room = counters.len() + self.budget.exchange(0, carried);
            reserved += room - counters.len();
            for (hash, seen) in previous.into_iter().filter(|(_, s)| recent(s)) {
                if counters.len() >= room {
                    break;
                }
                counters.entry(hash).or_insert(seen);
            }
        }

        // Keys repeated within the scrape, and room not used, go back.
        self.budget.release(reserved - counters.len());
        if over > 0 {
            self.metrics.sampler_keys_over_budget.inc_by(over);
        }
        state.incomplete = over > 0;
        state.counters = counters;
        candidates
    }
}

/// Slowest in the interval first; ties by key hash then position, so every worker ranks
/// alike.
fn slowest_first(a: &Candidate, b: &Candidate) -> std::cmp::Ordering {
    b.time
        .total_cmp(&a.time)
        .then(a.hash.cmp(&b.hash))
        .then(a.index.cmp(&b.index))
}

/// How many points a statement produces.
fn points_of(desc: &StatementDescriptors, row: &StatementRow) -> u64 {
    3 + u64::from(desc.errors.is_some()) + row.extra.len() as u64
}

/// The obfuscated text of a kept statement, when the target exports it. Raw text never
/// leaves this module.
fn query_text(settings: &config::Statements, row: &StatementRow) -> Option<Arc<str>> {
    match (settings.query_text, row.text.as_deref()) {
        (QueryText::Obfuscated, Some(text)) => Some(Arc::from(obfuscate(
            text,
            settings.max_text_length as usize,
        ))),
        (QueryText::Obfuscated | QueryText::None, _) => None,
    }
}

/// Appends a kept statement's cumulative counters. The attributes are built once and
/// shared by its points (the last one takes them).
fn push_statement(
    desc: &StatementDescriptors,
    row: &mut StatementRow,
    text: Option<Arc<str>>,
    start: u64,
    time: u64,
    out: &mut Points,
) {
    let mut values: SmallVec<[(&'static Descriptor, Value); 12]> = SmallVec::new();
    values.push((desc.calls, Value::Int(row.calls)));
    if row.total_time_s.is_finite() {
        values.push((desc.time, Value::Double(row.total_time_s)));
    }
    values.push((desc.rows, Value::Int(row.rows)));
    if let Some(errors) = desc.errors {
        values.push((errors, Value::Int(row.errors)));
    }
    values.extend(row.extra.iter().copied());

    let mut attrs: Attributes = std::mem::take(&mut row.attrs);
    if let Some(text) = text {
        attrs.push((QUERY_TEXT, AttrValue::Str(text)));
    }
    let last = values.len() - 1;
    for (i, (desc, value)) in values.into_iter().enumerate() {
        let attrs = if i == last {
            std::mem::take(&mut attrs)
        } else {
            attrs.clone()
        };
        out.push(Point {
            desc,
            attrs,
            value,
            start_unix_nanos: start,
            time_unix_nanos: time,
        });
    }
}

/// Appends the aggregate of the statements left out, over `[previous, time]`.
fn push_others(
    desc: &StatementDescriptors,
    others: &Others,
    previous: u64,
    time: u64,
    out: &mut Points,
) {
    let delta = |desc: &'static Descriptor, value: Value| Point {
        desc,
        attrs: Attributes::new(),
        value,
        start_unix_nanos: previous,
        time_unix_nanos: time,
    };
    out.push(delta(desc.others_calls, Value::Int(others.calls)));
    out.push(delta(desc.others_time, Value::Double(others.time)));
    out.push(delta(desc.others_rows, Value::Int(others.rows)));
    out.push(gauge(desc.others_count, Value::Int(others.count), time));
}

fn gauge(desc: &'static Descriptor, value: Value, time: u64) -> Point {
    Point {
        desc,
        attrs: Attributes::new(),
        value,
        start_unix_nanos: 0,
        time_unix_nanos: time,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Descriptor;
    use std::collections::BTreeSet;

    static CALLS: Descriptor = Descriptor::counter("s.calls", "{call}", "");
    static TIME: Descriptor = Descriptor::counter("s.time", "s", "");
    static ROWS: Descriptor = Descriptor::counter("s.rows", "{row}", "");
    static ERRORS: Descriptor = Descriptor::counter("s.errors", "{error}", "");
    static BLOCKS: Descriptor = Descriptor::counter("s.blocks", "{block}", "");
    static OTHERS_CALLS: Descriptor = Descriptor::delta("o.calls", "{call}", "");
    static OTHERS_TIME: Descriptor = Descriptor::delta("o.time", "s", "");
    static OTHERS_ROWS: Descriptor = Descriptor::delta("o.rows", "{row}", "");
    static OTHERS_COUNT: Descriptor = Descriptor::gauge("o.count", "{statement}", "");
    static RATE: Descriptor = Descriptor::gauge("s.rate", "1", "");
    static DESCS: StatementDescriptors = StatementDescriptors {
        calls: &CALLS,
        time: &TIME,
        rows: &ROWS,
        errors: Some(&ERRORS),
        others_calls: &OTHERS_CALLS,
        others_time: &OTHERS_TIME,
        others_rows: &OTHERS_ROWS,
        others_count: &OTHERS_COUNT,
        sample_rate: &RATE,
    };

    const START: u64 = 7;

    fn row(key: &str, calls: i64, time: f64, rows: i64, errors: i64) -> StatementRow {
        StatementRow {
            key: Arc::from(key),
            attrs: crate::attrs!["db.query.id" => key],
            text: None,
            calls,
            total_time_s: time,
            rows,
            errors,
            extra: SmallVec::new(),
        }
    }

    fn statements(sampler: config::Sampler) -> (Statements, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::unregistered());
        (Statements::new(&sampler, metrics.clone()), metrics)
    }

    fn no_sampling() -> config::Sampler {
        config::Sampler {
            enabled: false,
            ..Default::default()
        }
    }

    fn top(n: u32) -> config::Statements {
        config::Statements {
            top_n: n,
            ..Default::default()
        }
    }

    fn scrape(
        s: &Statements,
        settings: &config::Statements,
        rows: Vec<StatementRow>,
        time: u64,
    ) -> Vec<Point> {
        scrape_of(s, "db", settings, rows, time)
    }

    fn scrape_of(
        s: &Statements,
        target: &str,
        settings: &config::Statements,
        rows: Vec<StatementRow>,
        time: u64,
    ) -> Vec<Point> {
        let set = StatementSet {
            descriptors: &DESCS,
            rows,
            time_unix_nanos: time,
            start_unix_nanos: START,
        };
        let mut out = Points::new();
        s.process(&Arc::from(target), settings, set, &mut out);
        out.into_iter().collect()
    }

    /// The query ids exported one by one.
    fn exported(points: &[Point]) -> BTreeSet<String> {
        points
            .iter()
            .filter(|p| std::ptr::eq(p.desc, &CALLS))
            .filter_map(|p| p.attrs.iter().find(|(k, _)| *k == "db.query.id"))
            .map(|(_, v)| v.to_string())
            .collect()
    }

    fn only<'a>(points: &'a [Point], desc: &'static Descriptor) -> &'a Point {
        let mut it = points.iter().filter(|p| std::ptr::eq(p.desc, desc));
        let p = it
            .next()
            .unwrap_or_else(|| panic!("no {} point", desc.name));
        assert!(it.next().is_none(), "more than one {} point", desc.name);
        p
    }

    fn has(points: &[Point], desc: &'static Descriptor) -> bool {
        points.iter().any(|p| std::ptr::eq(p.desc, desc))
    }

    #[test]
    fn top_n_ranks_by_the_change_since_the_previous_scrape_not_the_cumulative_value() {
        let (s, _) = statements(no_sampling());
        scrape(
            &s,
            &top(1),
            vec![row("huge", 1, 1000.0, 1, 0), row("small", 1, 1.0, 1, 0)],
            1,
        );

        let out = scrape(
            &s,
            &top(1),
            vec![row("huge", 1, 1000.0, 1, 0), row("small", 2, 11.0, 2, 0)],
            2,
        );

        assert_eq!(exported(&out), BTreeSet::from(["small".to_owned()]));
    }

    #[test]
    fn the_first_scrape_ranks_by_the_cumulative_value() {
        let (s, _) = statements(no_sampling());
        let out = scrape(
            &s,
            &top(1),
            vec![row("small", 9, 1.0, 1, 0), row("huge", 1, 1000.0, 1, 0)],
            1,
        );
        assert_eq!(exported(&out), BTreeSet::from(["huge".to_owned()]));
    }

    #[test]
    fn the_aggregate_is_the_sum_of_the_changes_of_the_statements_left_out() {
        let (s, _) = statements(no_sampling());
        let first = vec![
            row("a", 10, 100.0, 50, 0),
            row("b", 5, 2.0, 5, 0),
            row("c", 7, 1.5, 3, 0),
            row("d", 100, 3.0, 10, 0),
        ];
        scrape(&s, &top(1), first, 1_000);

        let second = vec![
            row("a", 20, 200.0, 60, 0), // change (10, 100, 10): the top one
            row("b", 8, 2.5, 9, 0),     // change (3, 0.5, 4)
            row("c", 2, 0.25, 1, 0),    // reset: its value is its change
            row("d", 100, 3.0, 10, 0),  // no change
            row("e", 4, 1.0, 2, 0),     // new
        ];
        let out = scrape(&s, &top(1), second, 2_000);

        assert_eq!(exported(&out), BTreeSet::from(["a".to_owned()]));
        for (desc, value) in [
            (&OTHERS_CALLS, Value::Int(3 + 2 + 4)),
            (&OTHERS_TIME, Value::Double(0.5 + 0.25 + 1.0)),
            (&OTHERS_ROWS, Value::Int(4 + 1 + 2)),
        ] {
            let p = only(&out, desc);
            assert_eq!(p.value, value, "{}", desc.name);
            assert_eq!(
                (p.start_unix_nanos, p.time_unix_nanos),
                (1_000, 2_000),
                "{}",
                desc.name
            );
        }
        assert_eq!(only(&out, &OTHERS_COUNT).value, Value::Int(4));

        // The exported statement carries its cumulative counters since the server's start.
        let calls = only(&out, &CALLS);
        assert_eq!(calls.value, Value::Int(20));
        assert_eq!(
            (calls.start_unix_nanos, calls.time_unix_nanos),
            (START, 2_000)
        );
        assert_eq!(only(&out, &TIME).value, Value::Double(200.0));
        assert_eq!(only(&out, &ROWS).value, Value::Int(60));
        assert_eq!(only(&out, &ERRORS).value, Value::Int(0));
    }

    #[test]
    fn the_first_scrape_sends_no_aggregate_only_the_rate() {
        let (s, _) = statements(no_sampling());
        let out = scrape(
            &s,
            &top(1),
            vec![row("a", 1, 1.0, 1, 0), row("b", 1, 2.0, 1, 0)],
            1,
        );

        for desc in [&OTHERS_CALLS, &OTHERS_TIME, &OTHERS_ROWS, &OTHERS_COUNT] {
            assert!(!has(&out, desc), "{}", desc.name);
        }
        assert_eq!(only(&out, &RATE).value, Value::Double(1.0));
        assert_eq!(exported(&out).len(), 1);
    }

    #[test]
    fn every_counter_and_extra_of_a_kept_statement_shares_its_attributes() {
        let (s, _) = statements(no_sampling());
        let mut r = row("a", 3, 1.5, 4, 1);
        r.extra.push((&BLOCKS, Value::Int(99)));
        let out = scrape(&s, &top(10), vec![r], 1);

        let statement: Vec<&Point> = out
            .iter()
            .filter(|p| !std::ptr::eq(p.desc, &RATE))
            .collect();
        assert_eq!(statement.len(), 5);
        assert!(statement
            .iter()
            .all(|p| p.attrs == crate::attrs!["db.query.id" => "a"]));
        assert_eq!(only(&out, &BLOCKS).value, Value::Int(99));
    }

    fn many(prefix: &str, n: usize, scale: i64) -> Vec<StatementRow> {
        (0..n)
            .map(|i| {
                let v = (i as i64 + 1) * scale;
                row(&format!("{prefix}{i}"), v, v as f64, v, 0)
            })
            .collect()
    }

    fn sampling(target_points: u32) -> config::Sampler {
        config::Sampler {
            target_points,
            always_keep: 0,
            ..Default::default()
        }
    }

    #[test]
    fn two_instances_keep_the_same_statements() {
        let (x, _) = statements(sampling(100));
        let (y, _) = statements(sampling(100));

        let mut kept = Vec::new();
        for s in [&x, &y] {
            scrape(s, &top(0), many("q", 5000, 1), 1);
            kept.push(exported(&scrape(s, &top(0), many("q", 5000, 2), 2)));
        }

        assert_eq!(kept[0], kept[1]);
        assert!(
            kept[0].len() > 20 && kept[0].len() < 400,
            "{}",
            kept[0].len()
        );
    }

    #[test]
    fn the_rate_falls_as_candidates_grow_and_memory_stays_within_max_keys() {
        let sampler = config::Sampler {
            max_keys: 1000,
            ..sampling(50)
        };
        let (s, metrics) = statements(sampler);
        let rate = |out: &[Point]| only(out, &RATE).value.as_f64();

        let small = rate(&scrape(&s, &top(0), many("a", 40, 1), 1));
        let medium = rate(&scrape(&s, &top(0), many("b", 500, 1), 2));
        assert_eq!(small, 1.0);
        assert!(medium < small, "{medium}");

        // 100k distinct keys churn through, 1000 per scrape.
        let mut last = medium;
        let mut kept = 0;
        for round in 0..100 {
            let out = scrape(&s, &top(0), many(&format!("c{round}_"), 1000, 1), 3 + round);
            last = rate(&out);
            kept = exported(&out).len();
        }
        assert!(last < medium, "{last}");
        assert!((25..100).contains(&kept), "{kept} kept for a budget of 50");

        assert_eq!(s.budget.held(), 1000);
        assert_eq!(
            metrics
                .sampler_rate
                .get_or_create(&Metrics::target("db"))
                .get(),
            last
        );
        assert!(metrics.sampler_keys.get() > 0);
    }

    #[test]
    fn targets_share_the_key_budget_and_a_forgotten_target_gives_its_keys_back() {
        let sampler = config::Sampler {
            max_keys: 1000,
            ..no_sampling()
        };
        let (s, metrics) = statements(sampler);
        let run = |target: &str, rows, time| scrape_of(&s, target, &top(1), rows, time);
        // Each statement has run once per scrape so far: its change is 1 call when its
        // previous counters were remembered, its cumulative count when not. The slowest
        // (the last row) is the top 1; the others go to the aggregate.
        let rows = |scrape: i64| -> Vec<StatementRow> {
            (0..600)
                .map(|i| {
                    row(
                        &format!("q{i}"),
                        scrape,
                        (i + 1) as f64 * scrape as f64,
                        1,
                        0,
                    )
                })
                .collect()
        };
        let others_calls = |out: &[Point]| only(out, &OTHERS_CALLS).value;

        run("a", rows(1), 1);
        run("b", rows(1), 1);
        assert_eq!(s.budget.held(), 1000);
        assert_eq!(metrics.sampler_keys.get(), 1000);
        assert_eq!(metrics.sampler_keys_over_budget.get(), 200);

        // `a` remembered all 600. `b` remembered its first 400: the other 200 have no
        // baseline and cannot be told from new ones, so their change counts as none (never
        // as their whole cumulative value, again at every scrape); the slowest of the 400
        // is the top 1.
        let a = run("a", rows(2), 2);
        assert_eq!(others_calls(&a), Value::Int(599));
        let b = run("b", rows(2), 2);
        assert_eq!(others_calls(&b), Value::Int(399));
        let b = run("b", rows(3), 3);
        assert_eq!(others_calls(&b), Value::Int(399));
        assert_eq!(metrics.sampler_keys_over_budget.get(), 600);

        // `a` forgotten: its keys go back, and `b` remembers all of its statements.
        s.targets.invalidate("a");
        s.targets.run_pending_tasks();
        assert_eq!(s.budget.held(), 400);
        run("b", rows(4), 4);
        assert_eq!(s.budget.held(), 600);
        let b = run("b", rows(5), 5);
        assert_eq!(others_calls(&b), Value::Int(599));
    }

    #[test]
    fn a_statement_missing_from_a_scrape_keeps_its_baseline_until_key_ttl() {
        // Read times in nanoseconds; key_ttl is the default hour.
        const HOUR: u64 = 3_600_000_000_000;
        let (s, _) = statements(no_sampling());
        // "kept" is the slowest, so the top 1; "gone" goes to the aggregate when read.
        let pair = |gone: Option<i64>, kept: i64| {
            let mut rows = vec![row("kept", kept, kept as f64 * 1000.0, 1, 0)];
            rows.extend(gone.map(|c| row("gone", c, c as f64, 1, 0)));
            rows
        };
        let others = |out: &[Point]| only(out, &OTHERS_CALLS).value;

        // Not returned by the scrape at 3 (e.g. past the receiver's row cap), "gone" ran
        // 10 times between the scrapes at 1 and 5: its change at 5 is 10, not 110.
        scrape(&s, &top(1), pair(Some(100), 1), 1);
        scrape(&s, &top(1), pair(None, 2), 3);
        let out = scrape(&s, &top(1), pair(Some(110), 3), 5);
        assert_eq!(others(&out), Value::Int(10));

        // Unseen for longer than key_ttl, it is forgotten and counts as new.
        scrape(&s, &top(1), pair(None, 4), 7);
        scrape(&s, &top(1), pair(None, 5), 5 + HOUR + 1);
        let out = scrape(&s, &top(1), pair(Some(120), 6), 5 + HOUR + 2);
        assert_eq!(others(&out), Value::Int(120));
    }

    #[test]
    fn sampled_out_statements_are_counted_and_folded_into_the_aggregate() {
        let (s, metrics) = statements(sampling(10));
        scrape(&s, &top(0), many("q", 1000, 1), 1);
        let sampled_first = metrics.points_sampled_out.get();
        let out = scrape(&s, &top(0), many("q", 1000, 2), 2);

        let kept = exported(&out).len() as i64;
        let Value::Int(count) = only(&out, &OTHERS_COUNT).value else {
            panic!("not an int")
        };
        assert_eq!(kept + count, 1000);
        // Each statement has calls, time, rows and errors.
        assert_eq!(
            metrics.points_sampled_out.get() - sampled_first,
            4 * count as u64
        );

        // The changes of the kept and the folded add up to the total change.
        let kept_calls: i64 = exported(&out)
            .iter()
            .map(|k| k[1..].parse::<i64>().expect("index") + 1)
            .sum();
        let Value::Int(others) = only(&out, &OTHERS_CALLS).value else {
            panic!("not an int")
        };
        assert_eq!(kept_calls + others, (1..=1000).sum::<i64>());
    }

    #[test]
    fn statements_with_errors_are_always_kept() {
        let (s, _) = statements(sampling(0));
        let mut rows = many("q", 2000, 1);
        scrape(&s, &top(0), rows.clone(), 1);
        for r in &mut rows {
            r.calls += 1;
        }
        rows[1234].errors = 1;

        let out = scrape(&s, &top(0), rows, 2);

        assert_eq!(exported(&out), BTreeSet::from(["q1234".to_owned()]));
    }

    #[test]
    fn the_slowest_and_most_called_of_the_interval_are_always_kept() {
        let sampler = config::Sampler {
            target_points: 0,
            always_keep: 1,
            ..Default::default()
        };
        let (s, _) = statements(sampler);
        let mut rows = many("q", 100, 1);
        scrape(&s, &top(0), rows.clone(), 1);
        rows[10].total_time_s += 1000.0;
        rows[20].calls += 1000;

        let out = scrape(&s, &top(0), rows, 2);

        assert_eq!(
            exported(&out),
            BTreeSet::from(["q10".to_owned(), "q20".to_owned()])
        );
    }

    #[test]
    fn obfuscated_query_text_carries_no_literal() {
        let (s, _) = statements(no_sampling());
        let settings = config::Statements {
            query_text: QueryText::Obfuscated,
            max_text_length: 200,
            ..Default::default()
        };
        let mut r = row("a", 1, 1.0, 1, 0);
        r.text = Some("SELECT * FROM users WHERE email = 'bob@example.com' AND id = 42".into());

        let out = scrape(&s, &settings, vec![r], 1);

        let text = only(&out, &CALLS)
            .attrs
            .iter()
            .find(|(k, _)| *k == QUERY_TEXT)
            .map(|(_, v)| v.to_string())
            .expect("query text");
        assert_eq!(text, "SELECT * FROM users WHERE email = ? AND id = ?");
    }

    #[test]
    fn query_text_is_not_exported_by_default() {
        let (s, _) = statements(no_sampling());
        let mut r = row("a", 1, 1.0, 1, 0);
        r.text = Some("SELECT 1".into());

        let out = scrape(&s, &config::Statements::default(), vec![r], 1);

        assert!(out
            .iter()
            .all(|p| p.attrs.iter().all(|(k, _)| *k != QUERY_TEXT)));
    }

    #[test]
    fn a_set_processed_out_of_order_is_dropped() {
        let (s, _) = statements(no_sampling());
        scrape(&s, &top(1), vec![row("a", 5, 5.0, 5, 0)], 2_000);
        let out = scrape(&s, &top(1), vec![row("a", 1, 1.0, 1, 0)], 1_000);
        assert!(out.is_empty());

        let out = scrape(
            &s,
            &top(1),
            vec![row("a", 6, 6.0, 6, 0), row("b", 1, 1.0, 1, 0)],
            3_000,
        );
        assert_eq!(only(&out, &OTHERS_CALLS).value, Value::Int(1));
        assert_eq!(only(&out, &OTHERS_CALLS).start_unix_nanos, 2_000);
    }

    #[test]
    fn without_top_n_or_sampling_there_is_no_aggregate() {
        let (s, _) = statements(no_sampling());
        scrape(&s, &top(0), many("q", 10, 1), 1);
        let out = scrape(&s, &top(0), many("q", 10, 2), 2);
        assert_eq!(exported(&out).len(), 10);
        assert!(!has(&out, &OTHERS_CALLS) && !has(&out, &OTHERS_COUNT));
    }
}
