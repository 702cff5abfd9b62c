//! Turns batches of points into one OTLP `ExportMetricsServiceRequest`.
//!
//! The data path writes the request's protobuf bytes straight from the points
//! ([`encode_bytes`]): no message tree with an owned string per attribute, and every
//! length written once, where prost would recompute each nested message's length at every
//! level. [`encode`] builds the same request as an `opentelemetry-proto` message; the two
//! agree byte for byte (checked by the tests), so the message stays the reference for what
//! the bytes mean.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::BufMut as _;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, AggregationTemporality, Gauge, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource as ProtoResource;
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};

use crate::metrics::{AttrValue, Attributes, Batch, Descriptor, Kind, Point, Resource, Value};

/// The instrumentation scope every metric is reported under.
pub const SCOPE_NAME: &str = "dbcollector";

/// Encodes `batches` as one request: one `ResourceMetrics` per distinct resource (in order
/// of first appearance), each with one scope `dbcollector` and one `Metric` per descriptor.
///
/// Points of one descriptor end up in one `Metric` even when they are not consecutive, so a
/// receiver never sees the same metric twice in a scope. Values, start times and attributes
/// are copied as read: nothing is aggregated.
pub fn encode(batches: &[Batch]) -> ExportMetricsServiceRequest {
    let resource_metrics = group(batches)
        .0
        .into_iter()
        .map(|group| ResourceMetrics {
            resource: Some(ProtoResource {
                attributes: key_values(&group.resource.attrs),
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: SCOPE_NAME.to_owned(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    ..Default::default()
                }),
                metrics: group
                    .metrics
                    .iter()
                    .map(|(desc, points)| metric_message(desc, points))
                    .collect(),
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        })
        .collect();
    ExportMetricsServiceRequest { resource_metrics }
}

/// The points of `batches` by resource (in order of first appearance) and, within each,
/// by descriptor, with how many points there are in all.
fn group(batches: &[Batch]) -> (Vec<Group<'_>>, usize) {
    let mut resources: Vec<Group<'_>> = Vec::new();
    let mut points = 0;
    for batch in batches.iter().filter(|b| !b.points.is_empty()) {
        // Few resources per request: a linear scan beats hashing the attributes.
        let index = resources
            .iter()
            .position(|r| Arc::ptr_eq(r.resource, &batch.resource) || *r.resource == batch.resource)
            .unwrap_or_else(|| {
                resources.push(Group::new(&batch.resource));
                resources.len() - 1
            });
        let group = &mut resources[index];
        for point in &batch.points {
            group.push(point);
        }
        points += batch.points.len();
    }
    (resources, points)
}

/// Encodes `batches` as the protobuf bytes of one `ExportMetricsServiceRequest`: the same
/// request as [`encode`], grouped the same way, and the same bytes prost writes for it
/// (fields in tag order, proto3 defaults left out).
pub fn encode_bytes(batches: &[Batch]) -> Vec<u8> {
    let (resources, points) = group(batches);
    let mut out = Proto(Vec::with_capacity(points * BYTES_PER_POINT));
    for group in &resources {
        // ExportMetricsServiceRequest.resource_metrics
        out.message(1, 3, |out| {
            // ResourceMetrics.resource: attributes only.
            out.message(1, 2, |out| {
                for (key, value) in group.resource.attrs.iter() {
                    out.message(1, 1, |out| out.key_value(key, value));
                }
            });
            // ResourceMetrics.scope_metrics: one scope.
            out.message(2, 3, |out| {
                out.message(1, 1, |out| {
                    out.string(1, SCOPE_NAME);
                    out.string(2, env!("CARGO_PKG_VERSION"));
                });
                for (desc, points) in &group.metrics {
                    out.message(2, 3, |out| out.metric(desc, points));
                }
            });
        });
    }
    out.0
}

/// Room reserved per point before encoding: a little over what the receivers' points take
/// (120 to 165 bytes on the benches' PostgreSQL and MySQL batches), so most requests are
/// written without growing the buffer.
const BYTES_PER_POINT: usize = 192;

/// The points of one resource, by descriptor in order of first appearance.
struct Group<'a> {
    resource: &'a Arc<Resource>,
    metrics: Vec<(&'static Descriptor, Vec<&'a Point>)>,
    /// Index into `metrics` by descriptor address (descriptors are statics).
    by_desc: HashMap<*const Descriptor, usize>,
    /// The descriptor of the previous point: receivers emit a metric's points together.
    last: Option<(*const Descriptor, usize)>,
}

impl<'a> Group<'a> {
    fn new(resource: &'a Arc<Resource>) -> Self {
        Self {
            resource,
            metrics: Vec::new(),
            by_desc: HashMap::new(),
            last: None,
        }
    }

    fn push(&mut self, point: &'a Point) {
        let key: *const Descriptor = point.desc;
        let index = match self.last {
            Some((last, index)) if last == key => index,
            _ => {
                let index = *self.by_desc.entry(key).or_insert_with(|| {
                    self.metrics.push((point.desc, Vec::new()));
                    self.metrics.len() - 1
                });
                self.last = Some((key, index));
                index
            }
        };
        self.metrics[index].1.push(point);
    }
}

/// A protobuf writer for the few message shapes of a metrics request.
struct Proto(Vec<u8>);

impl Proto {
    /// Writes field `tag` as a nested message whose body `body` writes. `reserve` bytes are
    /// set aside for the length before the body is written; when the length needs another
    /// count of bytes, the body is moved once. Each level reserves what its large bodies
    /// need, so the bodies that move are the small ones (a metric of a few points).
    fn message(&mut self, tag: u32, reserve: usize, body: impl FnOnce(&mut Self)) {
        encode_key(tag, WireType::LengthDelimited, &mut self.0);
        let at = self.0.len();
        self.0.resize(at + reserve, 0);
        body(self);
        let len = self.0.len() - at - reserve;
        let needed = encoded_len_varint(len as u64);
        if needed > reserve {
            self.0.resize(self.0.len() + needed - reserve, 0);
            self.0
                .copy_within(at + reserve..at + reserve + len, at + needed);
        } else if needed < reserve {
            self.0.copy_within(at + reserve.., at + needed);
            self.0.truncate(at + needed + len);
        }
        encode_varint(len as u64, &mut &mut self.0[at..at + needed]);
    }

    /// A string field, left out when empty (proto3).
    fn string(&mut self, tag: u32, value: &str) {
        if !value.is_empty() {
            self.string_always(tag, value);
        }
    }

    /// A string field written even when empty (a `oneof` member).
    fn string_always(&mut self, tag: u32, value: &str) {
        encode_key(tag, WireType::LengthDelimited, &mut self.0);
        encode_varint(value.len() as u64, &mut self.0);
        self.0.extend_from_slice(value.as_bytes());
    }

    /// A `fixed64` field, left out when zero.
    fn fixed64(&mut self, tag: u32, value: u64) {
        if value != 0 {
            encode_key(tag, WireType::SixtyFourBit, &mut self.0);
            self.0.put_u64_le(value);
        }
    }

    /// A varint field, left out when zero.
    fn varint(&mut self, tag: u32, value: u64) {
        if value != 0 {
            encode_key(tag, WireType::Varint, &mut self.0);
            encode_varint(value, &mut self.0);
        }
    }

    /// A `Metric` with its gauge or sum of `points`.
    fn metric(&mut self, desc: &Descriptor, points: &[&Point]) {
        self.string(1, desc.name);
        self.string(2, desc.description);
        self.string(3, desc.unit);
        let (tag, sum) = match desc.kind {
            Kind::Gauge => (5, None),
            Kind::CumulativeSum { monotonic } => {
                (7, Some((AggregationTemporality::Cumulative, monotonic)))
            }
            Kind::DeltaSum { monotonic } => (7, Some((AggregationTemporality::Delta, monotonic))),
        };
        self.message(tag, 3, |out| {
            for point in points {
                out.message(1, 2, |out| out.data_point(point));
            }
            if let Some((temporality, monotonic)) = sum {
                out.varint(2, temporality as u64);
                out.varint(3, u64::from(monotonic));
            }
        });
    }

    /// A `NumberDataPoint`, fields in tag order: start, time, value, attributes.
    fn data_point(&mut self, point: &Point) {
        // A gauge has no window: its start time stays unset whatever the point carries.
        let start = match point.desc.kind {
            Kind::Gauge => 0,
            Kind::CumulativeSum { .. } | Kind::DeltaSum { .. } => point.start_unix_nanos,
        };
        self.fixed64(2, start);
        self.fixed64(3, point.time_unix_nanos);
        match point.value {
            Value::Double(v) => {
                encode_key(4, WireType::SixtyFourBit, &mut self.0);
                self.0.put_f64_le(v);
            }
            Value::Int(v) => {
                encode_key(6, WireType::SixtyFourBit, &mut self.0);
                self.0.put_i64_le(v);
            }
        }
        for (key, value) in point.attrs.iter() {
            self.message(7, 1, |out| out.key_value(key, value));
        }
    }

    /// A `KeyValue` body: the key and an `AnyValue`.
    fn key_value(&mut self, key: &str, value: &AttrValue) {
        self.string(1, key);
        self.message(2, 1, |out| match value {
            AttrValue::Str(s) => out.string_always(1, s),
            AttrValue::Bool(b) => {
                encode_key(2, WireType::Varint, &mut out.0);
                encode_varint(u64::from(*b), &mut out.0);
            }
            AttrValue::Int(i) => {
                encode_key(3, WireType::Varint, &mut out.0);
                encode_varint(*i as u64, &mut out.0);
            }
        });
    }
}

/// A descriptor's points as an `opentelemetry-proto` metric.
fn metric_message(desc: &Descriptor, points: &[&Point]) -> Metric {
    let data_points = points.iter().map(|p| data_point(p)).collect();
    let data = match desc.kind {
        Kind::Gauge => metric::Data::Gauge(Gauge { data_points }),
        Kind::CumulativeSum { monotonic } => metric::Data::Sum(sum(
            data_points,
            AggregationTemporality::Cumulative,
            monotonic,
        )),
        Kind::DeltaSum { monotonic } => {
            metric::Data::Sum(sum(data_points, AggregationTemporality::Delta, monotonic))
        }
    };
    Metric {
        name: desc.name.to_owned(),
        description: desc.description.to_owned(),
        unit: desc.unit.to_owned(),
        metadata: Vec::new(),
        data: Some(data),
    }
}

fn sum(
    data_points: Vec<NumberDataPoint>,
    temporality: AggregationTemporality,
    is_monotonic: bool,
) -> Sum {
    Sum {
        data_points,
        aggregation_temporality: temporality as i32,
        is_monotonic,
    }
}

fn data_point(point: &Point) -> NumberDataPoint {
    let value = match point.value {
        Value::Int(v) => number_data_point::Value::AsInt(v),
        Value::Double(v) => number_data_point::Value::AsDouble(v),
    };
    // A gauge has no window: its start time stays unset whatever the point carries.
    let start = match point.desc.kind {
        Kind::Gauge => 0,
        Kind::CumulativeSum { .. } | Kind::DeltaSum { .. } => point.start_unix_nanos,
    };
    NumberDataPoint {
        attributes: key_values(&point.attrs),
        start_time_unix_nano: start,
        time_unix_nano: point.time_unix_nanos,
        exemplars: Vec::new(),
        flags: 0,
        value: Some(value),
    }
}

fn key_values(attrs: &Attributes) -> Vec<KeyValue> {
    attrs
        .iter()
        .map(|(key, value)| KeyValue {
            key: (*key).to_owned(),
            value: Some(AnyValue {
                value: Some(any_value(value)),
            }),
        })
        .collect()
}

fn any_value(value: &AttrValue) -> any_value::Value {
    match value {
        AttrValue::Str(s) => any_value::Value::StringValue(s.as_ref().to_owned()),
        AttrValue::Int(i) => any_value::Value::IntValue(*i),
        AttrValue::Bool(b) => any_value::Value::BoolValue(*b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attrs;
    use prost::Message as _;

    static COMMITS: Descriptor =
        Descriptor::counter("postgresql.commits", "{commit}", "Commits since the reset.");
    static BACKENDS: Descriptor =
        Descriptor::gauge("postgresql.backends", "{connection}", "Open connections.");
    static SIZE: Descriptor = Descriptor::updown("postgresql.db_size", "By", "Database size.");
    static OTHERS: Descriptor = Descriptor::delta(
        "db.statements.others.calls",
        "{call}",
        "Calls outside the top N.",
    );

    fn resource(name: &str) -> Arc<Resource> {
        Arc::new(Resource {
            attrs: attrs!("db.system.name" => "postgresql", "target" => name),
        })
    }

    fn point(desc: &'static Descriptor, db: &str, value: Value) -> Point {
        Point {
            desc,
            attrs: attrs!("postgresql.database.name" => db),
            value,
            start_unix_nanos: 100,
            time_unix_nanos: 200,
        }
    }

    fn batch(resource: Arc<Resource>, points: Vec<Point>) -> Batch {
        let mut b = Batch::new("t".into(), resource);
        b.points = points;
        b
    }

    fn metric<'a>(rm: &'a ResourceMetrics, name: &str) -> &'a Metric {
        rm.scope_metrics[0]
            .metrics
            .iter()
            .find(|m| m.name == name)
            .unwrap()
    }

    fn points(m: &Metric) -> &[NumberDataPoint] {
        match m.data.as_ref().unwrap() {
            metric::Data::Gauge(g) => &g.data_points,
            metric::Data::Sum(s) => &s.data_points,
            other => panic!("unexpected data {other:?}"),
        }
    }

    #[test]
    fn kinds_map_to_gauge_and_sums_with_their_temporality() {
        let req = encode(&[batch(
            resource("a"),
            vec![
                point(&COMMITS, "db1", Value::Int(5)),
                point(&BACKENDS, "db1", Value::Int(3)),
                point(&SIZE, "db1", Value::Double(1.5)),
                point(&OTHERS, "db1", Value::Int(7)),
            ],
        )]);
        let rm = &req.resource_metrics[0];

        let Some(metric::Data::Sum(commits)) = &metric(rm, "postgresql.commits").data else {
            panic!("commits is not a sum");
        };
        assert_eq!(
            commits.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        assert!(commits.is_monotonic);

        assert!(matches!(
            metric(rm, "postgresql.backends").data,
            Some(metric::Data::Gauge(_))
        ));

        let Some(metric::Data::Sum(size)) = &metric(rm, "postgresql.db_size").data else {
            panic!("db_size is not a sum");
        };
        assert!(!size.is_monotonic);
        assert_eq!(
            size.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );

        let Some(metric::Data::Sum(others)) = &metric(rm, "db.statements.others.calls").data else {
            panic!("others is not a sum");
        };
        assert_eq!(
            others.aggregation_temporality,
            AggregationTemporality::Delta as i32
        );
        assert!(others.is_monotonic);
    }

    #[test]
    fn points_carry_values_times_and_attributes_and_gauges_have_no_start() {
        let mut typed = point(&BACKENDS, "db1", Value::Double(0.25));
        typed.attrs.push(("port", AttrValue::Int(5432)));
        typed.attrs.push(("primary", AttrValue::Bool(true)));
        let req = encode(&[batch(
            resource("a"),
            vec![point(&COMMITS, "db1", Value::Int(5)), typed],
        )]);
        let rm = &req.resource_metrics[0];

        let commit = &points(metric(rm, "postgresql.commits"))[0];
        assert_eq!(commit.value, Some(number_data_point::Value::AsInt(5)));
        assert_eq!(
            (commit.start_time_unix_nano, commit.time_unix_nano),
            (100, 200)
        );

        let gauge = &points(metric(rm, "postgresql.backends"))[0];
        assert_eq!(gauge.value, Some(number_data_point::Value::AsDouble(0.25)));
        assert_eq!((gauge.start_time_unix_nano, gauge.time_unix_nano), (0, 200));
        let attrs: Vec<_> = gauge
            .attributes
            .iter()
            .map(|kv| {
                (
                    kv.key.as_str(),
                    kv.value.as_ref().and_then(|v| v.value.clone()),
                )
            })
            .collect();
        assert_eq!(
            attrs,
            vec![
                (
                    "postgresql.database.name",
                    Some(any_value::Value::StringValue("db1".into()))
                ),
                ("port", Some(any_value::Value::IntValue(5432))),
                ("primary", Some(any_value::Value::BoolValue(true))),
            ]
        );
    }

    #[test]
    fn metric_carries_name_unit_description_and_the_scope_names_dbcollector() {
        let req = encode(&[batch(
            resource("a"),
            vec![point(&COMMITS, "db1", Value::Int(1))],
        )]);
        let scope = &req.resource_metrics[0].scope_metrics[0];
        let s = scope.scope.as_ref().unwrap();
        assert_eq!(
            (s.name.as_str(), s.version.as_str()),
            ("dbcollector", env!("CARGO_PKG_VERSION"))
        );
        let m = &scope.metrics[0];
        assert_eq!(
            (m.name.as_str(), m.unit.as_str(), m.description.as_str()),
            ("postgresql.commits", "{commit}", "Commits since the reset.")
        );
    }

    #[test]
    fn points_of_one_descriptor_end_in_one_metric_even_when_interleaved() {
        let req = encode(&[batch(
            resource("a"),
            vec![
                point(&COMMITS, "db1", Value::Int(1)),
                point(&COMMITS, "db2", Value::Int(2)),
                point(&BACKENDS, "db1", Value::Int(3)),
                point(&COMMITS, "db3", Value::Int(4)),
            ],
        )]);
        let metrics = &req.resource_metrics[0].scope_metrics[0].metrics;
        let names: Vec<_> = metrics.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["postgresql.commits", "postgresql.backends"]);
        let values: Vec<_> = points(&metrics[0]).iter().map(|p| p.value).collect();
        assert_eq!(
            values,
            [1, 2, 4]
                .map(|v| Some(number_data_point::Value::AsInt(v)))
                .to_vec()
        );
    }

    #[test]
    fn batches_of_one_resource_share_a_resource_metrics_and_others_get_their_own() {
        let a = resource("a");
        let a_again = resource("a"); // equal by value, another allocation
        let b = resource("b");
        let req = encode(&[
            batch(a.clone(), vec![point(&COMMITS, "db1", Value::Int(1))]),
            batch(b, vec![point(&COMMITS, "db1", Value::Int(2))]),
            batch(a_again, vec![point(&COMMITS, "db2", Value::Int(3))]),
            batch(a, vec![point(&BACKENDS, "db1", Value::Int(4))]),
        ]);
        assert_eq!(req.resource_metrics.len(), 2);

        let first = &req.resource_metrics[0];
        let target = &first.resource.as_ref().unwrap().attributes[1];
        assert_eq!(
            target.value.as_ref().unwrap().value,
            Some(any_value::Value::StringValue("a".into()))
        );
        assert_eq!(points(metric(first, "postgresql.commits")).len(), 2);
        assert_eq!(points(metric(first, "postgresql.backends")).len(), 1);
        assert_eq!(req.resource_metrics[1].scope_metrics[0].metrics.len(), 1);
    }

    #[test]
    fn empty_batches_add_no_resource() {
        assert!(encode(&[]).resource_metrics.is_empty());
        assert!(encode(&[batch(resource("a"), Vec::new())])
            .resource_metrics
            .is_empty());
        assert!(encode_bytes(&[]).is_empty());
        assert!(encode_bytes(&[batch(resource("a"), Vec::new())]).is_empty());
    }

    /// The bytes written directly are prost's bytes for the message.
    fn assert_same_bytes(batches: &[Batch]) {
        let direct = encode_bytes(batches);
        let message = encode(batches);
        assert_eq!(direct, message.encode_to_vec());
        assert_eq!(
            ExportMetricsServiceRequest::decode(&*direct).unwrap(),
            message
        );
    }

    #[test]
    fn direct_bytes_match_the_message_when_lengths_outgrow_their_reserved_room() {
        // A point over 16 KiB (its length takes 3 bytes where 2 are reserved) and a
        // request over 2 MiB (4 bytes where 3 are reserved), next to short ones.
        let mut long = point(&BACKENDS, &"x".repeat(20_000), Value::Int(1));
        long.attrs.push(("port", AttrValue::Int(-1)));
        let many: Vec<Point> = (0..40_000)
            .map(|i| point(&COMMITS, &format!("database-{i:06}"), Value::Int(i)))
            .collect();
        let mut metrics = batch(resource("a"), many);
        metrics.points.push(long);
        assert!(encode_bytes(std::slice::from_ref(&metrics)).len() > 2 << 20);
        assert_same_bytes(&[
            metrics,
            batch(resource("b"), vec![point(&SIZE, "", Value::Double(0.0))]),
        ]);
    }

    use proptest::prelude::*;

    static DESCRIPTORS: [&Descriptor; 5] = [&COMMITS, &BACKENDS, &SIZE, &OTHERS, &EMPTY];
    static EMPTY: Descriptor = Descriptor::gauge("", "", "");
    static KEYS: [&str; 4] = ["postgresql.database.name", "db.query.text", "", "k"];

    fn attr_value() -> impl Strategy<Value = AttrValue> {
        prop_oneof![
            ".{0,40}".prop_map(|s| AttrValue::Str(Arc::from(s.as_str()))),
            any::<i64>().prop_map(AttrValue::Int),
            any::<bool>().prop_map(AttrValue::Bool),
        ]
    }

    fn attributes() -> impl Strategy<Value = Attributes> {
        prop::collection::vec((prop::sample::select(&KEYS[..]), attr_value()), 0..6)
            .prop_map(|v| v.into_iter().collect())
    }

    fn any_point() -> impl Strategy<Value = Point> {
        (
            prop::sample::select(&DESCRIPTORS[..]),
            attributes(),
            prop_oneof![
                any::<i64>().prop_map(Value::Int),
                any::<f64>().prop_map(Value::Double),
            ],
            prop_oneof![Just(0u64), any::<u64>()],
            prop_oneof![Just(0u64), any::<u64>()],
        )
            .prop_map(|(desc, attrs, value, start, time)| Point {
                desc,
                attrs,
                value,
                start_unix_nanos: start,
                time_unix_nanos: time,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any mix of resources (shared, equal or distinct), descriptors of every kind,
        /// interleaved points, empty strings and keys, zero times and extreme values.
        #[test]
        fn direct_bytes_are_the_bytes_of_the_message(
            batches in prop::collection::vec(
                (0..3usize, attributes(), prop::collection::vec(any_point(), 0..40)),
                0..5,
            )
        ) {
            let shared = resource("shared");
            let batches: Vec<Batch> = batches
                .into_iter()
                .map(|(which, attrs, points)| {
                    let resource = match which {
                        0 => shared.clone(),
                        1 => resource("shared"),
                        _ => Arc::new(Resource { attrs }),
                    };
                    batch(resource, points)
                })
                .collect();
            assert_same_bytes(&batches);
        }
    }
}
