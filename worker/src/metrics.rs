//! The in-memory form of collected data: metric descriptors, data points and batches.
//!
//! Receivers turn rows into [`Point`]s that reference a static [`Descriptor`]; processors
//! work on [`Batch`]es of points that share one [`Resource`]; the exporter encodes them
//! into OTLP. Descriptors are `'static` so a point costs no string allocation for its
//! name, unit or kind.

use std::fmt;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// How a metric's points are to be read by a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A value sampled at a point in time.
    Gauge,
    /// A running total since `start_time` (the database's own counter).
    CumulativeSum {
        /// Whether the total only goes up (until a reset).
        monotonic: bool,
    },
    /// The change over `[start_time, time]`: used where the set of contributors changes
    /// between scrapes (e.g. the aggregate of statements outside the top N).
    DeltaSum {
        /// Whether the change is never negative.
        monotonic: bool,
    },
}

/// The identity and meaning of a metric: its name, unit and kind.
#[derive(Debug, PartialEq, Eq)]
pub struct Descriptor {
    /// OpenTelemetry metric name, e.g. `postgresql.commits`.
    pub name: &'static str,
    /// UCUM unit, e.g. `By`, `s`, `{commit}`.
    pub unit: &'static str,
    /// One sentence for backends that show it.
    pub description: &'static str,
    /// Gauge or sum, and the sum's temporality.
    pub kind: Kind,
}

impl Descriptor {
    /// A gauge descriptor.
    pub const fn gauge(name: &'static str, unit: &'static str, description: &'static str) -> Self {
        Self {
            name,
            unit,
            description,
            kind: Kind::Gauge,
        }
    }

    /// A monotonic cumulative sum descriptor (a database counter).
    pub const fn counter(
        name: &'static str,
        unit: &'static str,
        description: &'static str,
    ) -> Self {
        Self {
            name,
            unit,
            description,
            kind: Kind::CumulativeSum { monotonic: true },
        }
    }

    /// A non-monotonic cumulative sum descriptor (e.g. a size that can shrink, reported
    /// as a sum by the reference receivers).
    pub const fn updown(name: &'static str, unit: &'static str, description: &'static str) -> Self {
        Self {
            name,
            unit,
            description,
            kind: Kind::CumulativeSum { monotonic: false },
        }
    }

    /// A monotonic delta sum descriptor (a per-interval change).
    pub const fn delta(name: &'static str, unit: &'static str, description: &'static str) -> Self {
        Self {
            name,
            unit,
            description,
            kind: Kind::DeltaSum { monotonic: true },
        }
    }
}

/// A data point's value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    /// Integers: counts, bytes.
    Int(i64),
    /// Floating point: durations in seconds, ratios.
    Double(f64),
}

impl Value {
    /// The value as `f64`, for ranking and tests.
    pub fn as_f64(self) -> f64 {
        match self {
            Value::Int(v) => v as f64,
            Value::Double(v) => v,
        }
    }
}

/// An attribute value. Strings are shared so one name (a database, a table) used by many
/// points is allocated once.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum AttrValue {
    /// A string.
    Str(Arc<str>),
    /// An integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
}

impl fmt::Display for AttrValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttrValue::Str(s) => f.write_str(s),
            AttrValue::Int(i) => write!(f, "{i}"),
            AttrValue::Bool(b) => write!(f, "{b}"),
        }
    }
}

impl From<&str> for AttrValue {
    fn from(s: &str) -> Self {
        AttrValue::Str(Arc::from(s))
    }
}

impl From<String> for AttrValue {
    fn from(s: String) -> Self {
        AttrValue::Str(Arc::from(s))
    }
}

impl From<Arc<str>> for AttrValue {
    fn from(s: Arc<str>) -> Self {
        AttrValue::Str(s)
    }
}

impl From<&Arc<str>> for AttrValue {
    fn from(s: &Arc<str>) -> Self {
        AttrValue::Str(s.clone())
    }
}

impl From<i64> for AttrValue {
    fn from(i: i64) -> Self {
        AttrValue::Int(i)
    }
}

impl From<bool> for AttrValue {
    fn from(b: bool) -> Self {
        AttrValue::Bool(b)
    }
}

/// Attributes of a point or resource: few, with static keys, kept inline.
pub type Attributes = smallvec::SmallVec<[(&'static str, AttrValue); 4]>;

/// One data point.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    /// The metric this point belongs to.
    pub desc: &'static Descriptor,
    /// Identifying attributes (never the collecting worker).
    pub attrs: Attributes,
    /// The value.
    pub value: Value,
    /// Start of the cumulative or delta window, in Unix nanoseconds (0 for gauges).
    pub start_unix_nanos: u64,
    /// When the value was read, in Unix nanoseconds.
    pub time_unix_nanos: u64,
}

/// What identifies the monitored database instance a batch comes from; becomes the OTLP
/// resource. It never names the worker, so series do not fork when a target moves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resource {
    /// Resource attributes (semantic conventions: `db.system.name`, `server.address`, ...).
    pub attrs: Attributes,
}

/// Points from one scrape of one target, sharing a resource.
#[derive(Clone, Debug)]
pub struct Batch {
    /// The target's name (its identity); used for self-telemetry, not exported.
    pub target: Arc<str>,
    /// The monitored instance.
    pub resource: Arc<Resource>,
    /// The points, grouped by descriptor where the receiver emitted them together.
    pub points: Vec<Point>,
    /// When the rows of this batch's scrape had been read: the pipeline latency starts
    /// here.
    pub read_at: Instant,
}

impl Batch {
    /// An empty batch for `target`.
    pub fn new(target: Arc<str>, resource: Arc<Resource>) -> Self {
        Self {
            target,
            resource,
            points: Vec::new(),
            read_at: Instant::now(),
        }
    }
}

/// Builds points that share a read time, so receivers stay one metric per line.
#[derive(Debug)]
pub struct PointSink<'a> {
    out: &'a mut Vec<Point>,
    /// Read time of the points pushed, Unix nanoseconds.
    pub now: u64,
    /// Start time used for cumulative sums, Unix nanoseconds.
    pub start: u64,
}

impl<'a> PointSink<'a> {
    /// A sink that appends to `out`, stamping `now`, with `start` for cumulative sums.
    pub fn new(out: &'a mut Vec<Point>, now: u64, start: u64) -> Self {
        Self { out, now, start }
    }

    /// Appends a point; the start time follows the descriptor's kind.
    pub fn push(&mut self, desc: &'static Descriptor, value: Value, attrs: Attributes) {
        let start = match desc.kind {
            Kind::Gauge => 0,
            Kind::CumulativeSum { .. } | Kind::DeltaSum { .. } => self.start,
        };
        self.out.push(Point {
            desc,
            attrs,
            value,
            start_unix_nanos: start,
            time_unix_nanos: self.now,
        });
    }

    /// Appends an integer point, skipping it when the value is NULL.
    pub fn int(&mut self, desc: &'static Descriptor, value: Option<i64>, attrs: Attributes) {
        if let Some(v) = value {
            self.push(desc, Value::Int(v), attrs);
        }
    }

    /// Appends a floating point, skipping it when the value is NULL or not finite.
    pub fn double(&mut self, desc: &'static Descriptor, value: Option<f64>, attrs: Attributes) {
        if let Some(v) = value.filter(|v| v.is_finite()) {
            self.push(desc, Value::Double(v), attrs);
        }
    }

    /// Appends a point with an explicit start time (e.g. a statement's own reset time).
    pub fn push_with_start(
        &mut self,
        desc: &'static Descriptor,
        value: Value,
        attrs: Attributes,
        start: u64,
    ) {
        self.out.push(Point {
            desc,
            attrs,
            value,
            start_unix_nanos: start,
            time_unix_nanos: self.now,
        });
    }
}

/// The current time in Unix nanoseconds.
pub fn unix_nanos_now() -> u64 {
    to_unix_nanos(SystemTime::now())
}

/// A system time in Unix nanoseconds (0 before the epoch).
pub fn to_unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Builds [`Attributes`] from `key => value` pairs.
#[macro_export]
macro_rules! attrs {
    () => { $crate::metrics::Attributes::new() };
    ($($k:expr => $v:expr),+ $(,)?) => {{
        let mut a = $crate::metrics::Attributes::new();
        $( a.push(($k, $crate::metrics::AttrValue::from($v))); )+
        a
    }};
}
