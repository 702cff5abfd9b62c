//! Turns batches of points into one OTLP `ExportMetricsServiceRequest`.

use std::collections::HashMap;
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, AggregationTemporality, Gauge, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource as ProtoResource;

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
    let mut resources: Vec<ResourceBuilder<'_>> = Vec::new();
    for batch in batches.iter().filter(|b| !b.points.is_empty()) {
        // Few resources per request: a linear scan beats hashing the attributes.
        let index = resources
            .iter()
            .position(|r| Arc::ptr_eq(r.resource, &batch.resource) || *r.resource == batch.resource)
            .unwrap_or_else(|| {
                resources.push(ResourceBuilder::new(&batch.resource));
                resources.len() - 1
            });
        let builder = &mut resources[index];
        for point in &batch.points {
            builder.push(point);
        }
    }
    ExportMetricsServiceRequest {
        resource_metrics: resources.into_iter().map(ResourceBuilder::finish).collect(),
    }
}

/// The metrics of one resource while they are being collected.
struct ResourceBuilder<'a> {
    resource: &'a Arc<Resource>,
    metrics: Vec<Metric>,
    /// Index into `metrics` by descriptor address: descriptors are statics, so the address
    /// is their identity.
    by_desc: HashMap<*const Descriptor, usize>,
    /// The descriptor of the previous point: receivers emit a metric's points together, so
    /// this skips the map for most points.
    last: Option<(*const Descriptor, usize)>,
}

impl<'a> ResourceBuilder<'a> {
    fn new(resource: &'a Arc<Resource>) -> Self {
        Self {
            resource,
            metrics: Vec::new(),
            by_desc: HashMap::new(),
            last: None,
        }
    }

    fn push(&mut self, point: &Point) {
        let key: *const Descriptor = point.desc;
        let index = match self.last {
            Some((last, index)) if last == key => index,
            _ => {
                let index = *self.by_desc.entry(key).or_insert_with(|| {
                    self.metrics.push(empty_metric(point.desc));
                    self.metrics.len() - 1
                });
                self.last = Some((key, index));
                index
            }
        };
        let data_point = data_point(point);
        match &mut self.metrics[index].data {
            Some(metric::Data::Gauge(g)) => g.data_points.push(data_point),
            Some(metric::Data::Sum(s)) => s.data_points.push(data_point),
            // `empty_metric` only builds gauges and sums.
            _ => {}
        }
    }

    fn finish(self) -> ResourceMetrics {
        ResourceMetrics {
            resource: Some(ProtoResource {
                attributes: key_values(&self.resource.attrs),
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: SCOPE_NAME.to_owned(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    ..Default::default()
                }),
                metrics: self.metrics,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }
    }
}

fn empty_metric(desc: &Descriptor) -> Metric {
    let data = match desc.kind {
        Kind::Gauge => metric::Data::Gauge(Gauge {
            data_points: Vec::new(),
        }),
        Kind::CumulativeSum { monotonic } => {
            metric::Data::Sum(sum(AggregationTemporality::Cumulative, monotonic))
        }
        Kind::DeltaSum { monotonic } => {
            metric::Data::Sum(sum(AggregationTemporality::Delta, monotonic))
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

fn sum(temporality: AggregationTemporality, is_monotonic: bool) -> Sum {
    Sum {
        data_points: Vec::new(),
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
    }
}
