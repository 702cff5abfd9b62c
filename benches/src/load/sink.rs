//! A cheap OTLP/HTTP receiver: counts the data points of each request per target and
//! answers success, decoding no more of the protobuf than the counting needs.
//!
//! It runs in the bench process; the worker under measurement is a separate process, so
//! what the sink costs is not counted as the worker's.

use std::collections::HashMap;
use std::io::Read as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use bytes::Bytes;

/// What the sink has received since it started (or was last [`Sink::take`]n).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Received {
    /// Data points per `dbcollector.target` resource attribute (`""` when missing).
    pub points: HashMap<String, u64>,
    /// Scrapes per target: the worker sends one `dbcollector.up` point per scrape.
    pub scrapes: HashMap<String, u64>,
    /// Export requests accepted.
    pub requests: u64,
    /// Requests whose body could not be read as OTLP (answered 400).
    pub malformed: u64,
}

impl Received {
    /// Points of every target.
    pub fn total(&self) -> u64 {
        self.points.values().sum()
    }
}

/// The running receiver.
#[derive(Debug)]
pub struct Sink {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

/// The counts and when the last request came.
#[derive(Debug)]
struct State {
    received: Received,
    last: Instant,
}

impl Sink {
    /// Listens on a free loopback port.
    ///
    /// # Errors
    /// When no loopback port can be bound.
    pub async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            received: Received::default(),
            last: Instant::now(),
        }));
        let app = axum::Router::new()
            .route("/v1/metrics", post(export))
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = &e as &dyn std::error::Error, "otlp sink stopped");
            }
        });
        Ok(Self { addr, state, task })
    }

    /// The base URL to configure as the worker's `http/protobuf` endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The counts so far, which start again from zero.
    pub fn take(&self) -> Received {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::take(&mut state.received)
    }

    /// Waits until no request has come for `quiet` (the exports of one scrape are over),
    /// or `timeout` passes.
    pub async fn wait_quiet(&self, quiet: Duration, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let last = self
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .last;
            let now = Instant::now();
            if now.duration_since(last) >= quiet || now >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn export(
    extract::State(state): extract::State<Arc<Mutex<State>>>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let gzip = headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
    let counted = if gzip {
        let mut raw = Vec::with_capacity(body.len() * 8);
        flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut raw)
            .ok()
            .and_then(|_| count_points(&raw))
    } else {
        count_points(&body)
    };
    let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
    state.last = Instant::now();
    let received = &mut state.received;
    let Some(counted) = counted else {
        received.malformed += 1;
        return StatusCode::BAD_REQUEST.into_response();
    };
    received.requests += 1;
    for (target, n) in counted {
        *received.points.entry(target.clone()).or_default() += n.points;
        *received.scrapes.entry(target).or_default() += n.ups;
    }
    // An empty body is an `ExportMetricsServiceResponse` with no partial success.
    (
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        Vec::new(),
    )
        .into_response()
}

// ---- Protobuf walking ------------------------------------------------------------------

/// One field of a protobuf message: its number and, for length-delimited fields, the
/// bytes (other wire types are skipped and carry none).
type Field<'a> = (u32, Option<&'a [u8]>);

/// The top-level fields of a message; `None` as soon as the bytes are not protobuf.
fn fields(mut buf: &[u8]) -> impl Iterator<Item = Option<Field<'_>>> {
    let mut failed = false;
    std::iter::from_fn(move || {
        if buf.is_empty() || failed {
            return None;
        }
        let field = next_field(&mut buf);
        failed = field.is_none();
        Some(field)
    })
}

fn next_field<'a>(buf: &mut &'a [u8]) -> Option<Field<'a>> {
    let key = varint(buf)?;
    let number = u32::try_from(key >> 3).ok()?;
    let bytes = match key & 7 {
        0 => {
            varint(buf)?;
            None
        }
        1 => {
            *buf = buf.get(8..)?;
            None
        }
        2 => {
            let len = usize::try_from(varint(buf)?).ok()?;
            let (bytes, rest) = (buf.get(..len)?, buf.get(len..)?);
            *buf = rest;
            Some(bytes)
        }
        5 => {
            *buf = buf.get(4..)?;
            None
        }
        _ => return None,
    };
    Some((number, bytes))
}

fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = buf.split_first()?;
        *buf = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// The length-delimited fields numbered `number` of a message.
fn messages(buf: &[u8], number: u32) -> impl Iterator<Item = Option<&[u8]>> {
    fields(buf).filter_map(move |f| match f {
        None => Some(None),
        Some((n, Some(bytes))) if n == number => Some(Some(bytes)),
        Some(_) => None,
    })
}

/// What one request holds for one target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counted {
    /// Data points.
    pub points: u64,
    /// Of them, `dbcollector.up` points: one per scrape.
    pub ups: u64,
}

/// The metric counting scrapes.
const UP: &[u8] = b"dbcollector.up";

/// Data points per `dbcollector.target` of an `ExportMetricsServiceRequest`; `None` when
/// it is not one.
///
/// Only the nesting is walked: request → ResourceMetrics (1) → Resource (1) →
/// KeyValue (1) for the target, and ScopeMetrics (2) → Metric (2) → its name (1) and
/// the data oneof (gauge 5, sum 7, histogram 9, exponential histogram 10, summary 11) →
/// data points (1), which are counted, not decoded.
pub fn count_points(request: &[u8]) -> Option<HashMap<String, Counted>> {
    let mut out: HashMap<String, Counted> = HashMap::new();
    for resource_metrics in messages(request, 1) {
        let resource_metrics = resource_metrics?;
        let mut target = String::new();
        let mut counted = Counted::default();
        for (number, bytes) in fields(resource_metrics).collect::<Option<Vec<_>>>()? {
            match (number, bytes) {
                (1, Some(resource)) => target = target_of(resource)?,
                (2, Some(scope)) => count_scope(scope, &mut counted)?,
                _ => {}
            }
        }
        let entry = out.entry(target).or_default();
        entry.points += counted.points;
        entry.ups += counted.ups;
    }
    Some(out)
}

/// The `dbcollector.target` string attribute of a Resource, `""` when missing.
fn target_of(resource: &[u8]) -> Option<String> {
    for kv in messages(resource, 1) {
        let mut key = None;
        let mut value = None;
        for field in fields(kv?) {
            match field? {
                (1, Some(k)) => key = Some(k),
                (2, Some(v)) => value = Some(v),
                _ => {}
            }
        }
        if key == Some(b"dbcollector.target".as_slice()) {
            // AnyValue: string_value is field 1.
            let text = messages(value?, 1).next().flatten().unwrap_or_default();
            return Some(String::from_utf8_lossy(text).into_owned());
        }
    }
    Some(String::new())
}

fn count_scope(scope: &[u8], counted: &mut Counted) -> Option<()> {
    for metric in messages(scope, 2) {
        let (mut up, mut points) = (false, 0);
        for field in fields(metric?) {
            match field? {
                (1, Some(name)) => up = name == UP,
                (5 | 7 | 9 | 10 | 11, Some(data)) => {
                    for point in messages(data, 1) {
                        point?;
                        points += 1;
                    }
                }
                _ => {}
            }
        }
        counted.points += points;
        if up {
            counted.ups += points;
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
    use opentelemetry_proto::tonic::metrics::v1::{
        metric, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics,
        ScopeMetrics, Sum,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use prost::Message as _;

    fn attr(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(value.into())),
            }),
        }
    }

    fn resource_metrics(target: &str, gauges: usize, sums: usize) -> ResourceMetrics {
        let number = |n: usize| vec![NumberDataPoint::default(); n];
        ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![
                    attr("server.address", "h"),
                    attr("dbcollector.target", target),
                ],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![
                    Metric {
                        name: "dbcollector.up".into(),
                        data: Some(metric::Data::Gauge(Gauge {
                            data_points: number(gauges),
                        })),
                        ..Default::default()
                    },
                    Metric {
                        name: "s".into(),
                        data: Some(metric::Data::Sum(Sum {
                            data_points: number(sums),
                            aggregation_temporality: 2,
                            is_monotonic: true,
                        })),
                        ..Default::default()
                    },
                    Metric {
                        name: "h".into(),
                        data: Some(metric::Data::Histogram(Histogram {
                            data_points: vec![HistogramDataPoint::default()],
                            aggregation_temporality: 2,
                        })),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn points_and_up_points_are_counted_per_target() {
        let request = ExportMetricsServiceRequest {
            resource_metrics: vec![
                resource_metrics("pg", 3, 4),
                resource_metrics("maria", 0, 2),
                resource_metrics("pg", 1, 0),
            ],
        };
        let counted = count_points(&request.encode_to_vec()).unwrap();
        assert_eq!(counted["pg"], Counted { points: 10, ups: 4 });
        assert_eq!(counted["maria"], Counted { points: 3, ups: 0 });
        assert_eq!(counted.len(), 2);
    }

    #[test]
    fn a_truncated_request_is_not_counted() {
        let request = ExportMetricsServiceRequest {
            resource_metrics: vec![resource_metrics("pg", 3, 4)],
        };
        let bytes = request.encode_to_vec();
        assert_eq!(count_points(&bytes[..bytes.len() - 3]), None);
        assert_eq!(count_points(&[]), Some(HashMap::new()));
    }
}
