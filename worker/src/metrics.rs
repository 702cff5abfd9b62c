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

/// Points in order, in buffers of at most [`Points::CHUNK`] points each.
///
/// A scrape of a large estate yields 100k points and more. In one `Vec`, they would be
/// held in a buffer of tens of megabytes that grows by doubling, that the allocator maps
/// fresh from the system (and the kernel faults in page by page) at every scrape, and that
/// batching would then copy into export batches. Here each buffer stays below the
/// allocator's threshold for mapping, so buffers are reused from its free lists, and each
/// buffer leaves as one export batch as it is: no point is copied after it is built.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Points {
    chunks: Vec<Vec<Point>>,
    len: usize,
}

// A point grown so large that a buffer holds few of them would make batches tiny.
const _: () = assert!(Points::CHUNK >= 256);

impl Points {
    /// Points per buffer: as many as fit in 96 KiB, below glibc's default 128 KiB
    /// threshold above which an allocation gets its own mapping.
    pub const CHUNK: usize = 96 * 1024 / std::mem::size_of::<Point>();

    /// No points.
    pub fn new() -> Self {
        Self::default()
    }

    /// Room in the first buffer: it doubles up to [`Points::CHUNK`], so a small scrape (a
    /// lone `up` point) holds little; later buffers are whole from the start.
    const FIRST: usize = 16;

    /// Appends a point.
    pub fn push(&mut self, point: Point) {
        match self.chunks.last_mut() {
            Some(chunk) if chunk.len() < Self::CHUNK => {
                if chunk.len() == chunk.capacity() {
                    let grown = (chunk.capacity() * 2).clamp(Self::FIRST, Self::CHUNK);
                    chunk.reserve_exact(grown - chunk.len());
                }
                chunk.push(point);
            }
            _ => {
                let room = match self.chunks.is_empty() {
                    true => Self::FIRST,
                    false => Self::CHUNK,
                };
                let mut chunk = Vec::with_capacity(room);
                chunk.push(point);
                self.chunks.push(chunk);
            }
        }
        self.len += 1;
    }

    /// How many points.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The points in order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &Point> + '_ {
        self.chunks.iter().flatten()
    }

    /// The last point.
    pub fn last(&self) -> Option<&Point> {
        self.chunks.last().and_then(|c| c.last())
    }

    /// The buffers, in order, none empty. The last one, when mostly empty, gives its
    /// spare room back (the allocator shrinks it in place): a batch in the export queue
    /// holds about the memory of its points, whatever its size.
    pub fn into_chunks(mut self) -> Vec<Vec<Point>> {
        if let Some(last) = self.chunks.last_mut() {
            if last.capacity() > 2 * last.len() {
                last.shrink_to_fit();
            }
        }
        self.chunks
    }
}

impl IntoIterator for Points {
    type Item = Point;
    type IntoIter = std::iter::Flatten<std::vec::IntoIter<Vec<Point>>>;

    fn into_iter(self) -> Self::IntoIter {
        self.chunks.into_iter().flatten()
    }
}

impl FromIterator<Point> for Points {
    fn from_iter<I: IntoIterator<Item = Point>>(iter: I) -> Self {
        let mut points = Points::new();
        iter.into_iter().for_each(|p| points.push(p));
        points
    }
}

/// Where a [`PointSink`] appends: a scrape's [`Points`], or a plain `Vec` (tests, benches).
pub trait PointOut: std::fmt::Debug + Send {
    /// Appends a point.
    fn push_point(&mut self, point: Point);
}

impl PointOut for Points {
    fn push_point(&mut self, point: Point) {
        self.push(point);
    }
}

impl PointOut for Vec<Point> {
    fn push_point(&mut self, point: Point) {
        self.push(point);
    }
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
    out: &'a mut dyn PointOut,
    /// Read time of the points pushed, Unix nanoseconds.
    pub now: u64,
    /// Start time used for cumulative sums, Unix nanoseconds.
    pub start: u64,
}

impl<'a> PointSink<'a> {
    /// A sink that appends to `out`, stamping `now`, with `start` for cumulative sums.
    pub fn new(out: &'a mut dyn PointOut, now: u64, start: u64) -> Self {
        Self { out, now, start }
    }

    /// Appends a point; the start time follows the descriptor's kind.
    pub fn push(&mut self, desc: &'static Descriptor, value: Value, attrs: Attributes) {
        let start = match desc.kind {
            Kind::Gauge => 0,
            Kind::CumulativeSum { .. } | Kind::DeltaSum { .. } => self.start,
        };
        self.out.push_point(Point {
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
        self.out.push_point(Point {
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

#[cfg(test)]
mod tests {
    use super::*;

    static G: Descriptor = Descriptor::gauge("g", "1", "");

    fn point(i: usize) -> Point {
        Point {
            desc: &G,
            attrs: Attributes::new(),
            value: Value::Int(i as i64),
            start_unix_nanos: 0,
            time_unix_nanos: 1,
        }
    }

    #[test]
    fn points_keep_their_order_across_full_buffers() {
        let n = Points::CHUNK * 2 + 7;
        let points: Points = (0..n).map(point).collect();
        assert_eq!(points.len(), n);
        assert_eq!(points.last(), Some(&point(n - 1)));
        let values: Vec<_> = points.iter().map(|p| p.value).collect();
        assert_eq!(
            values,
            (0..n).map(|i| Value::Int(i as i64)).collect::<Vec<_>>()
        );

        assert_eq!(points.clone().into_iter().count(), n);

        let chunks = points.into_chunks();
        let sizes: Vec<_> = chunks.iter().map(Vec::len).collect();
        assert_eq!(sizes, [Points::CHUNK, Points::CHUNK, 7]);
        // Full buffers hold exactly their points; the last one gave its spare room back.
        let capacities: Vec<_> = chunks.iter().map(Vec::capacity).collect();
        assert_eq!(capacities, [Points::CHUNK, Points::CHUNK, 7]);
    }

    #[test]
    fn a_small_scrape_holds_a_small_buffer() {
        let one: Points = (0..1).map(point).collect();
        assert!(one.into_chunks()[0].capacity() <= Points::FIRST);
        let some: Points = (0..40).map(point).collect();
        let chunks = some.into_chunks();
        assert_eq!(chunks.len(), 1);
        assert!(chunks[0].capacity() < 80, "{}", chunks[0].capacity());
    }

    #[test]
    fn no_points_have_no_buffer() {
        let points = Points::new();
        assert!(points.is_empty());
        assert_eq!(points.last(), None);
        assert!(points.into_chunks().is_empty());
    }
}
