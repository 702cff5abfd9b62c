//! An in-test OTLP metrics receiver over gRPC and HTTP/protobuf, plain or TLS: records
//! every export, can be told to fail, and flattens what it received into data points.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::io::Read as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context as _};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, AggregationTemporality, NumberDataPoint,
};
use prost::Message as _;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::codec::CompressionEncoding;

use crate::LOOPBACK;

/// The transport an export arrived on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// OTLP/gRPC.
    Grpc,
    /// OTLP/HTTP with a protobuf body.
    Http,
}

/// How the receiver answered an export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Success.
    Accepted,
    /// Success with `rejected_data_points` reported as rejected.
    PartialSuccess {
        /// The count sent back in the partial success.
        rejected_data_points: i64,
    },
    /// Refused: gRPC got `code`, HTTP got `http_status`.
    Rejected {
        /// gRPC status sent.
        code: tonic::Code,
        /// HTTP status sent.
        http_status: u16,
    },
}

impl Outcome {
    /// Whether the receiver took the data (fully or partially).
    pub fn is_accepted(&self) -> bool {
        !matches!(self, Self::Rejected { .. })
    }
}

/// One decoded export and how it was answered.
#[derive(Clone, Debug)]
pub struct Received {
    /// Transport it arrived on.
    pub protocol: Protocol,
    /// When it was decoded.
    pub received_at: SystemTime,
    /// Request headers, names lowercase, values lossily decoded. For gRPC these are the
    /// metadata: `te` and `content-type` are not included.
    pub headers: Vec<(String, String)>,
    /// The export itself.
    pub request: ExportMetricsServiceRequest,
    /// The answer sent.
    pub outcome: Outcome,
}

impl Received {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header_value(&self.headers, name)
    }

    /// The data points of this export, flattened.
    pub fn points(&self) -> Vec<Point> {
        flatten(self)
    }
}

/// An HTTP export that could not be decoded (bad content type, encoding or protobuf). It
/// was answered with a 4xx status and is not among the [`Received`] exports.
#[derive(Clone, Debug)]
pub struct Undecodable {
    /// When it arrived.
    pub received_at: SystemTime,
    /// Request headers, as in [`Received::headers`].
    pub headers: Vec<(String, String)>,
    /// Why it could not be decoded.
    pub error: String,
}

/// Aggregation temporality of a sum or histogram.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Temporality {
    /// Not set, which OTLP forbids.
    Unspecified,
    /// Change since the previous report.
    Delta,
    /// Total since `start_time_unix_nano`.
    Cumulative,
}

impl Temporality {
    fn from_proto(value: i32) -> Self {
        match AggregationTemporality::try_from(value) {
            Ok(AggregationTemporality::Delta) => Self::Delta,
            Ok(AggregationTemporality::Cumulative) => Self::Cumulative,
            _ => Self::Unspecified,
        }
    }
}

/// The type of the metric a [`Point`] belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A gauge.
    Gauge,
    /// A sum.
    Sum {
        /// Delta or cumulative.
        temporality: Temporality,
        /// Whether the sum only goes up.
        monotonic: bool,
    },
    /// An explicit-bucket histogram; the point's value is the sum.
    Histogram {
        /// Delta or cumulative.
        temporality: Temporality,
    },
    /// An exponential histogram; the point's value is the sum.
    ExponentialHistogram {
        /// Delta or cumulative.
        temporality: Temporality,
    },
    /// A summary; the point's value is the sum.
    Summary,
}

/// One data point with everything that identifies it, for simple assertions.
#[derive(Clone, Debug)]
pub struct Point {
    /// Transport the export arrived on.
    pub protocol: Protocol,
    /// When the export was decoded.
    pub received_at: SystemTime,
    /// Headers of the export, as in [`Received::headers`].
    pub headers: Vec<(String, String)>,
    /// Resource attributes, values rendered as strings (see [`Point::attrs`]).
    pub resource: BTreeMap<String, String>,
    /// Instrumentation scope name.
    pub scope: String,
    /// Instrumentation scope version.
    pub scope_version: String,
    /// Metric name.
    pub metric: String,
    /// Metric description.
    pub description: String,
    /// Metric unit (UCUM).
    pub unit: String,
    /// Metric type.
    pub kind: Kind,
    /// Point attributes. Values are rendered as strings: integers and doubles in Rust's
    /// `Display` form, booleans as `true`/`false`, arrays as `[a,b]`, maps as `{k=v}`,
    /// bytes as hex.
    pub attrs: BTreeMap<String, String>,
    /// The value: a number point's value (integers converted), or the sum of a histogram
    /// or summary (NaN when the histogram has no sum or a number point no value).
    pub value: f64,
    /// Number of observations of a histogram or summary; `None` for numbers.
    pub count: Option<u64>,
    /// Start of the aggregation interval; 0 when unset.
    pub start_time_unix_nano: u64,
    /// Observation time.
    pub time_unix_nano: u64,
    /// Data point flags; bit 0 is "no recorded value" (a staleness marker).
    pub flags: u32,
}

impl Point {
    /// Point attribute `key`.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attrs.get(key).map(String::as_str)
    }

    /// Resource attribute `key`.
    pub fn resource_attr(&self, key: &str) -> Option<&str> {
        self.resource.get(key).map(String::as_str)
    }

    /// Header `name` of the export this point came in (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header_value(&self.headers, name)
    }

    /// Whether the "no recorded value" flag is set.
    pub fn no_recorded_value(&self) -> bool {
        self.flags & 1 == 1
    }
}

/// A misbehaviour injected with [`OtlpReceiver::inject`]; applies to either transport.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Refuse the export. gRPC answers `code`, with a `google.rpc.RetryInfo` detail when
    /// `retry_after` is set; HTTP answers `http_status` with a `google.rpc.Status` body and,
    /// when `retry_after` is set, a `Retry-After` header in whole seconds (rounded up).
    /// The export is still recorded, with [`Outcome::Rejected`].
    Reject {
        /// gRPC status to answer.
        code: tonic::Code,
        /// HTTP status to answer.
        http_status: u16,
        /// Retry hint to send.
        retry_after: Option<Duration>,
    },
    /// Accept, but report `rejected_data_points` rejected in a partial success.
    PartialSuccess {
        /// The count to report.
        rejected_data_points: i64,
        /// The accompanying error message.
        message: String,
    },
    /// Wait this long, then answer success. The export is recorded on arrival.
    Delay(Duration),
}

impl Fault {
    /// Retryable refusal: gRPC `UNAVAILABLE` / HTTP 503, with an optional retry hint.
    pub fn unavailable(retry_after: Option<Duration>) -> Self {
        Self::Reject {
            code: tonic::Code::Unavailable,
            http_status: 503,
            retry_after,
        }
    }

    /// Throttling: gRPC `RESOURCE_EXHAUSTED` / HTTP 429, with an optional retry hint.
    pub fn throttled(retry_after: Option<Duration>) -> Self {
        Self::Reject {
            code: tonic::Code::ResourceExhausted,
            http_status: 429,
            retry_after,
        }
    }

    /// Permanent refusal: gRPC `INVALID_ARGUMENT` / HTTP 400.
    pub fn bad_request() -> Self {
        Self::Reject {
            code: tonic::Code::InvalidArgument,
            http_status: 400,
            retry_after: None,
        }
    }

    /// Partial success with `rejected_data_points` rejected.
    pub fn partial_success(rejected_data_points: i64) -> Self {
        Self::PartialSuccess {
            rejected_data_points,
            message: format!("{rejected_data_points} data points rejected by the test"),
        }
    }

    /// Answer success after `delay`.
    pub fn delay(delay: Duration) -> Self {
        Self::Delay(delay)
    }
}

/// How an [`OtlpReceiver`] is set up.
#[derive(Clone, Debug)]
pub struct OtlpOptions {
    /// gRPC port on 127.0.0.1; `None` (default) picks a free one. Set it to the port of a
    /// dropped receiver to bring the endpoint back.
    pub grpc_port: Option<u16>,
    /// HTTP port on 127.0.0.1; `None` (default) picks a free one.
    pub http_port: Option<u16>,
    /// Largest accepted export, in bytes after decompression. Default 64 MiB.
    pub max_message_bytes: usize,
    /// Serve both transports over TLS (`https://` endpoints). Default `None`: plain text.
    pub tls: Option<ReceiverTls>,
}

impl Default for OtlpOptions {
    fn default() -> Self {
        Self {
            grpc_port: None,
            http_port: None,
            max_message_bytes: 64 * 1024 * 1024,
            tls: None,
        }
    }
}

/// TLS settings of an [`OtlpReceiver`], the same for gRPC and HTTP. See
/// `TestPki::receiver_tls` for a ready-made one.
#[derive(Clone, Debug)]
pub struct ReceiverTls {
    /// PEM certificate chain the receiver presents.
    pub cert_file: PathBuf,
    /// PEM private key of `cert_file`.
    pub key_file: PathBuf,
    /// PEM CA bundle. When set, a client must present a certificate it signed (mutual
    /// TLS); a handshake without one fails, and nothing is recorded.
    pub client_ca_file: Option<PathBuf>,
}

/// Receives OTLP metrics over gRPC and HTTP/protobuf on two ports of 127.0.0.1.
///
/// Both transports accept gzip. Runs on the runtime that started it; dropping it stops
/// listening.
#[derive(Debug)]
pub struct OtlpReceiver {
    shared: Arc<Shared>,
    /// `https` when serving TLS, else `http`.
    scheme: &'static str,
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    /// Dropping this shuts both servers down.
    _shutdown: watch::Sender<()>,
}

/// State shared with the request handlers.
#[derive(Debug)]
struct Shared {
    received: Mutex<Vec<Received>>,
    undecodable: Mutex<Vec<Undecodable>>,
    /// Faults still to apply, each with how many more requests it applies to.
    faults: Mutex<VecDeque<(Fault, usize)>>,
    /// Bumped on every recorded request, to wake [`OtlpReceiver::wait_for`].
    changes: watch::Sender<u64>,
    max_message_bytes: usize,
}

impl OtlpReceiver {
    /// Starts both servers.
    ///
    /// # Errors
    ///
    /// Fails when a port cannot be bound (a fixed port is retried for 5 s, in case a
    /// dropped receiver is still closing it).
    pub async fn start(opts: OtlpOptions) -> anyhow::Result<Self> {
        let shared = Arc::new(Shared {
            received: Mutex::default(),
            undecodable: Mutex::default(),
            faults: Mutex::default(),
            changes: watch::Sender::new(0),
            max_message_bytes: opts.max_message_bytes,
        });
        let (shutdown, _) = watch::channel(());

        let grpc_listener = bind(opts.grpc_port)
            .await
            .context("binding the OTLP/gRPC port")?;
        let grpc_addr = grpc_listener.local_addr()?;
        let service = MetricsServiceServer::from_arc(Arc::new(GrpcExport(Arc::clone(&shared))))
            .accept_compressed(CompressionEncoding::Gzip)
            .send_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(opts.max_message_bytes);
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = &opts.tls {
            builder = builder
                .tls_config(tonic_tls(tls)?)
                .context("configuring OTLP/gRPC TLS")?;
        }
        let serve = builder.serve_with_incoming_shutdown(
            service,
            tonic::transport::server::TcpIncoming::from(grpc_listener),
            closed(shutdown.subscribe()),
        );
        tokio::spawn(async move {
            if let Err(e) = serve.await {
                tracing::warn!(error = %e, "OTLP/gRPC test receiver failed");
            }
        });

        let http_listener = bind(opts.http_port)
            .await
            .context("binding the OTLP/HTTP port")?;
        let http_addr = http_listener.local_addr()?;
        let router = axum::Router::new()
            .route("/v1/metrics", axum::routing::post(export_http))
            .layer(DefaultBodyLimit::max(opts.max_message_bytes))
            .with_state(Arc::clone(&shared));
        match &opts.tls {
            None => {
                let serve = axum::serve(http_listener, router)
                    .with_graceful_shutdown(closed(shutdown.subscribe()));
                tokio::spawn(async move {
                    if let Err(e) = serve.await {
                        tracing::warn!(error = %e, "OTLP/HTTP test receiver failed");
                    }
                });
            }
            Some(tls) => {
                let config = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(
                    rustls_server_config(tls)?,
                ));
                let handle = axum_server::Handle::<SocketAddr>::new();
                let serve = axum_server::Server::from_listener(http_listener)
                    .acceptor(axum_server::tls_rustls::RustlsAcceptor::new(config))
                    .handle(handle.clone())
                    .serve(router.into_make_service());
                tokio::spawn(async move {
                    if let Err(e) = serve.await {
                        tracing::warn!(error = %e, "OTLPS/HTTP test receiver failed");
                    }
                });
                let stop = closed(shutdown.subscribe());
                tokio::spawn(async move {
                    stop.await;
                    handle.graceful_shutdown(Some(Duration::from_secs(5)));
                });
            }
        }

        Ok(Self {
            shared,
            scheme: if opts.tls.is_some() { "https" } else { "http" },
            grpc_addr,
            http_addr,
            _shutdown: shutdown,
        })
    }

    /// The gRPC endpoint: `http://127.0.0.1:PORT` (`https://` with TLS).
    pub fn grpc_endpoint(&self) -> String {
        format!("{}://{}", self.scheme, self.grpc_addr)
    }

    /// The HTTP endpoint, without the `/v1/metrics` path: `http://127.0.0.1:PORT`
    /// (`https://` with TLS).
    pub fn http_endpoint(&self) -> String {
        format!("{}://{}", self.scheme, self.http_addr)
    }

    /// The gRPC listening address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The HTTP listening address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Applies `fault` to the next `times` exports, on either transport, after the faults
    /// injected before. `usize::MAX` applies it until [`Self::clear_faults`].
    pub fn inject(&self, fault: Fault, times: usize) {
        if times > 0 {
            lock(&self.shared.faults).push_back((fault, times));
        }
    }

    /// Forgets all faults not yet applied.
    pub fn clear_faults(&self) {
        lock(&self.shared.faults).clear();
    }

    /// Every decoded export so far, accepted or not, in arrival order.
    pub fn requests(&self) -> Vec<Received> {
        lock(&self.shared.received).clone()
    }

    /// HTTP exports that could not be decoded.
    pub fn undecodable(&self) -> Vec<Undecodable> {
        lock(&self.shared.undecodable).clone()
    }

    /// The data points of the accepted exports (including partial successes), flattened,
    /// in arrival order.
    pub fn points(&self) -> Vec<Point> {
        accepted_points(&lock(&self.shared.received))
    }

    /// Forgets everything received so far (not the faults).
    pub fn clear(&self) {
        lock(&self.shared.received).clear();
        lock(&self.shared.undecodable).clear();
    }

    /// Waits until `pred` holds for all exports received so far (accepted or not), and
    /// returns them.
    ///
    /// # Errors
    ///
    /// Fails after `timeout`, with a summary of what was received.
    pub async fn wait_for<F>(&self, mut pred: F, timeout: Duration) -> anyhow::Result<Vec<Received>>
    where
        F: FnMut(&[Received]) -> bool,
    {
        let deadline = Instant::now() + timeout;
        let mut changes = self.shared.changes.subscribe();
        loop {
            // Mark the current state seen before looking at it, so no change is missed.
            changes.borrow_and_update();
            let received = self.requests();
            if pred(&received) {
                return Ok(received);
            }
            let wait = tokio::time::timeout_at(deadline.into(), changes.changed()).await;
            if wait.is_err() {
                bail!(
                    "timed out after {timeout:?} waiting for OTLP exports; {}",
                    self.summary()
                );
            }
        }
    }

    /// Waits until `pred` holds for the points of all accepted exports (see
    /// [`Self::points`]), and returns them.
    ///
    /// # Errors
    ///
    /// Fails after `timeout`, with a summary of what was received.
    pub async fn wait_for_points<F>(
        &self,
        mut pred: F,
        timeout: Duration,
    ) -> anyhow::Result<Vec<Point>>
    where
        F: FnMut(&[Point]) -> bool,
    {
        let received = self
            .wait_for(|received| pred(&accepted_points(received)), timeout)
            .await?;
        Ok(accepted_points(&received))
    }

    /// What was received, for error messages: counts, metric names, decoding errors.
    pub fn summary(&self) -> String {
        let received = self.requests();
        let accepted = received.iter().filter(|r| r.outcome.is_accepted()).count();
        let names: BTreeSet<String> = accepted_points(&received)
            .into_iter()
            .map(|p| p.metric)
            .collect();
        let mut out = format!(
            "{} exports received ({accepted} accepted), {} distinct metrics",
            received.len(),
            names.len()
        );
        if !names.is_empty() {
            let shown: Vec<&str> = names.iter().take(40).map(String::as_str).collect();
            let _ = write!(out, ": {}", shown.join(", "));
            if names.len() > shown.len() {
                out.push_str(", ...");
            }
        }
        for bad in self.undecodable() {
            let _ = write!(out, "; undecodable export: {}", bad.error);
        }
        out
    }
}

impl Shared {
    /// Records an export and decides the answer from the next fault.
    async fn handle(
        &self,
        protocol: Protocol,
        headers: Vec<(String, String)>,
        request: ExportMetricsServiceRequest,
    ) -> Reply {
        let fault = self.next_fault();
        let outcome = match &fault {
            Some(Fault::Reject {
                code, http_status, ..
            }) => Outcome::Rejected {
                code: *code,
                http_status: *http_status,
            },
            Some(Fault::PartialSuccess {
                rejected_data_points,
                ..
            }) => Outcome::PartialSuccess {
                rejected_data_points: *rejected_data_points,
            },
            Some(Fault::Delay(_)) | None => Outcome::Accepted,
        };
        lock(&self.received).push(Received {
            protocol,
            received_at: SystemTime::now(),
            headers,
            request,
            outcome,
        });
        self.changes.send_modify(|n| *n += 1);

        match fault {
            None => Reply::Success(ExportMetricsServiceResponse::default()),
            Some(Fault::Delay(delay)) => {
                tokio::time::sleep(delay).await;
                Reply::Success(ExportMetricsServiceResponse::default())
            }
            Some(Fault::PartialSuccess {
                rejected_data_points,
                message,
            }) => Reply::Success(ExportMetricsServiceResponse {
                partial_success: Some(ExportMetricsPartialSuccess {
                    rejected_data_points,
                    error_message: message,
                }),
            }),
            Some(Fault::Reject {
                code,
                http_status,
                retry_after,
            }) => Reply::Reject {
                code,
                http_status,
                retry_after,
            },
        }
    }

    fn next_fault(&self) -> Option<Fault> {
        let mut faults = lock(&self.faults);
        let (fault, remaining) = faults.front_mut()?;
        let fault = fault.clone();
        *remaining -= 1;
        if *remaining == 0 {
            faults.pop_front();
        }
        Some(fault)
    }
}

/// The answer to an export, before it is put into a transport's terms.
enum Reply {
    Success(ExportMetricsServiceResponse),
    Reject {
        code: tonic::Code,
        http_status: u16,
        retry_after: Option<Duration>,
    },
}

/// Message of every injected refusal.
const REJECT_MESSAGE: &str = "export refused by the test receiver";

/// The gRPC service.
#[derive(Debug)]
struct GrpcExport(Arc<Shared>);

#[tonic::async_trait]
impl MetricsService for GrpcExport {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let headers = header_pairs(&request.metadata().clone().into_headers());
        match self
            .0
            .handle(Protocol::Grpc, headers, request.into_inner())
            .await
        {
            Reply::Success(response) => Ok(tonic::Response::new(response)),
            Reply::Reject {
                code,
                retry_after: None,
                ..
            } => Err(tonic::Status::new(code, REJECT_MESSAGE)),
            Reply::Reject {
                code,
                retry_after: Some(delay),
                ..
            } => {
                let details = rpc_status(code, Some(delay)).encode_to_vec();
                Err(tonic::Status::with_details(
                    code,
                    REJECT_MESSAGE,
                    details.into(),
                ))
            }
        }
    }
}

/// The HTTP handler of `POST /v1/metrics`.
async fn export_http(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let pairs = header_pairs(&headers);
    let request = match decode_http(&headers, &body, shared.max_message_bytes) {
        Ok(request) => request,
        Err((status, error)) => {
            tracing::warn!(%error, "undecodable OTLP/HTTP export");
            let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
                tonic::Code::ResourceExhausted
            } else {
                tonic::Code::InvalidArgument
            };
            let mut body = rpc_status(code, None);
            body.message.clone_from(&error);
            lock(&shared.undecodable).push(Undecodable {
                received_at: SystemTime::now(),
                headers: pairs,
                error,
            });
            shared.changes.send_modify(|n| *n += 1);
            return protobuf_response(status, body.encode_to_vec(), None);
        }
    };

    match shared.handle(Protocol::Http, pairs, request).await {
        Reply::Success(response) => {
            protobuf_response(StatusCode::OK, response.encode_to_vec(), None)
        }
        Reply::Reject {
            code,
            http_status,
            retry_after,
        } => {
            let status =
                StatusCode::from_u16(http_status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            protobuf_response(status, rpc_status(code, None).encode_to_vec(), retry_after)
        }
    }
}

/// Decodes an OTLP/HTTP protobuf body, gzip or not; errors carry the status to answer.
fn decode_http(
    headers: &HeaderMap,
    body: &[u8],
    limit: usize,
) -> Result<ExportMetricsServiceRequest, (StatusCode, String)> {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };

    let content_type = text(header::CONTENT_TYPE).unwrap_or_default();
    if !content_type.starts_with("application/x-protobuf") {
        return Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("content-type {content_type:?} is not application/x-protobuf"),
        ));
    }

    let bytes: Cow<'_, [u8]> = match text(header::CONTENT_ENCODING).unwrap_or("identity") {
        "identity" | "" => Cow::Borrowed(body),
        "gzip" => {
            let mut inflated = Vec::new();
            flate2::read::GzDecoder::new(body)
                .take(limit as u64 + 1)
                .read_to_end(&mut inflated)
                .map_err(|e| (StatusCode::BAD_REQUEST, format!("invalid gzip body: {e}")))?;
            Cow::Owned(inflated)
        }
        other => {
            return Err((
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("content-encoding {other:?} is not supported"),
            ))
        }
    };
    if bytes.len() > limit {
        return Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body over {limit} bytes"),
        ));
    }

    ExportMetricsServiceRequest::decode(&*bytes).map_err(|e| {
        (
            StatusCode::BAD_REQUEST,
            format!("invalid protobuf body: {e}"),
        )
    })
}

fn protobuf_response(status: StatusCode, body: Vec<u8>, retry_after: Option<Duration>) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-protobuf"),
    );
    if let Some(delay) = retry_after {
        let seconds = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// `google.rpc.Status`, the error body of OTLP/HTTP and the gRPC status details.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<ProtoAny>,
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, prost::Message)]
struct ProtoAny {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

/// `google.rpc.RetryInfo`.
#[derive(Clone, PartialEq, prost::Message)]
struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    retry_delay: Option<ProtoDuration>,
}

/// `google.protobuf.Duration`.
#[derive(Clone, PartialEq, prost::Message)]
struct ProtoDuration {
    #[prost(int64, tag = "1")]
    seconds: i64,
    #[prost(int32, tag = "2")]
    nanos: i32,
}

/// A `google.rpc.Status` for `code`, with a `RetryInfo` detail when `retry_after` is set.
fn rpc_status(code: tonic::Code, retry_after: Option<Duration>) -> RpcStatus {
    let details = retry_after
        .map(|delay| ProtoAny {
            type_url: "type.googleapis.com/google.rpc.RetryInfo".into(),
            value: RetryInfo {
                retry_delay: Some(ProtoDuration {
                    seconds: i64::try_from(delay.as_secs()).unwrap_or(i64::MAX),
                    nanos: i32::try_from(delay.subsec_nanos()).unwrap_or(0),
                }),
            }
            .encode_to_vec(),
        })
        .into_iter()
        .collect();
    RpcStatus {
        code: code as i32,
        message: REJECT_MESSAGE.into(),
        details,
    }
}

/// tonic's server TLS settings from `tls`.
fn tonic_tls(tls: &ReceiverTls) -> anyhow::Result<tonic::transport::ServerTlsConfig> {
    let cert = read_file(&tls.cert_file)?;
    let key = read_file(&tls.key_file)?;
    let mut config = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(cert, key));
    if let Some(ca) = &tls.client_ca_file {
        // Without `client_auth_optional(true)`, a client certificate is required.
        config = config.client_ca_root(tonic::transport::Certificate::from_pem(read_file(ca)?));
    }
    Ok(config)
}

/// rustls server settings from `tls`, with the ring provider the whole workspace uses and
/// ALPN for HTTP/2 (which the exporter's client prefers) and HTTP/1.1.
fn rustls_server_config(tls: &ReceiverTls) -> anyhow::Result<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let pem_certs = |path: &Path| -> anyhow::Result<Vec<CertificateDer<'static>>> {
        CertificateDer::pem_slice_iter(&read_file(path)?)
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("parsing certificates in {}", path.display()))
    };
    let certs = pem_certs(&tls.cert_file)?;
    let key = PrivateKeyDer::from_pem_slice(&read_file(&tls.key_file)?)
        .with_context(|| format!("parsing the key in {}", tls.key_file.display()))?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match &tls.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in pem_certs(ca)? {
                roots.add(cert)?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .context("the receiver certificate and key do not match")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

fn read_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// Binds 127.0.0.1:`port` (0 when `None`), retrying a fixed port that is still in use.
async fn bind(port: Option<u16>) -> anyhow::Result<TcpListener> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpListener::bind((LOOPBACK, port.unwrap_or(0))).await {
            Ok(listener) => return Ok(listener),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Resolves when the shutdown sender is dropped.
async fn closed(mut shutdown: watch::Receiver<()>) {
    while shutdown.changed().await.is_ok() {}
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn header_pairs(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect()
}

fn header_value<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_str())
}

fn accepted_points(received: &[Received]) -> Vec<Point> {
    received
        .iter()
        .filter(|r| r.outcome.is_accepted())
        .flat_map(flatten)
        .collect()
}

/// Flattens one export into points.
fn flatten(received: &Received) -> Vec<Point> {
    let mut points = Vec::new();
    for resource_metrics in &received.request.resource_metrics {
        let resource = attr_map(
            resource_metrics
                .resource
                .as_ref()
                .map(|r| r.attributes.as_slice())
                .unwrap_or_default(),
        );
        for scope_metrics in &resource_metrics.scope_metrics {
            let (scope, scope_version) = scope_metrics
                .scope
                .as_ref()
                .map(|s| (s.name.clone(), s.version.clone()))
                .unwrap_or_default();
            for metric in &scope_metrics.metrics {
                let template = Point {
                    protocol: received.protocol,
                    received_at: received.received_at,
                    headers: received.headers.clone(),
                    resource: resource.clone(),
                    scope: scope.clone(),
                    scope_version: scope_version.clone(),
                    metric: metric.name.clone(),
                    description: metric.description.clone(),
                    unit: metric.unit.clone(),
                    kind: Kind::Gauge,
                    attrs: BTreeMap::new(),
                    value: f64::NAN,
                    count: None,
                    start_time_unix_nano: 0,
                    time_unix_nano: 0,
                    flags: 0,
                };
                flatten_metric(metric.data.as_ref(), &template, &mut points);
            }
        }
    }
    points
}

/// Appends the points of one metric, each a copy of `template` with its own fields set.
fn flatten_metric(data: Option<&metric::Data>, template: &Point, points: &mut Vec<Point>) {
    let number = |kind: Kind, p: &NumberDataPoint| Point {
        kind,
        attrs: attr_map(&p.attributes),
        value: match p.value {
            Some(number_data_point::Value::AsDouble(v)) => v,
            Some(number_data_point::Value::AsInt(v)) => v as f64,
            None => f64::NAN,
        },
        start_time_unix_nano: p.start_time_unix_nano,
        time_unix_nano: p.time_unix_nano,
        flags: p.flags,
        ..template.clone()
    };

    match data {
        None => {}
        Some(metric::Data::Gauge(gauge)) => {
            points.extend(gauge.data_points.iter().map(|p| number(Kind::Gauge, p)));
        }
        Some(metric::Data::Sum(sum)) => {
            let kind = Kind::Sum {
                temporality: Temporality::from_proto(sum.aggregation_temporality),
                monotonic: sum.is_monotonic,
            };
            points.extend(sum.data_points.iter().map(|p| number(kind, p)));
        }
        Some(metric::Data::Histogram(histogram)) => {
            let temporality = Temporality::from_proto(histogram.aggregation_temporality);
            points.extend(histogram.data_points.iter().map(|p| Point {
                kind: Kind::Histogram { temporality },
                attrs: attr_map(&p.attributes),
                value: p.sum.unwrap_or(f64::NAN),
                count: Some(p.count),
                start_time_unix_nano: p.start_time_unix_nano,
                time_unix_nano: p.time_unix_nano,
                flags: p.flags,
                ..template.clone()
            }));
        }
        Some(metric::Data::ExponentialHistogram(histogram)) => {
            let temporality = Temporality::from_proto(histogram.aggregation_temporality);
            points.extend(histogram.data_points.iter().map(|p| Point {
                kind: Kind::ExponentialHistogram { temporality },
                attrs: attr_map(&p.attributes),
                value: p.sum.unwrap_or(f64::NAN),
                count: Some(p.count),
                start_time_unix_nano: p.start_time_unix_nano,
                time_unix_nano: p.time_unix_nano,
                flags: p.flags,
                ..template.clone()
            }));
        }
        Some(metric::Data::Summary(summary)) => {
            points.extend(summary.data_points.iter().map(|p| Point {
                kind: Kind::Summary,
                attrs: attr_map(&p.attributes),
                value: p.sum,
                count: Some(p.count),
                start_time_unix_nano: p.start_time_unix_nano,
                time_unix_nano: p.time_unix_nano,
                flags: p.flags,
                ..template.clone()
            }));
        }
    }
}

fn attr_map(attributes: &[KeyValue]) -> BTreeMap<String, String> {
    attributes
        .iter()
        .map(|kv| (kv.key.clone(), render(kv.value.as_ref())))
        .collect()
}

/// Renders an attribute value as a string; see [`Point::attrs`].
fn render(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        None => String::new(),
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::ArrayValue(array)) => {
            let items: Vec<String> = array.values.iter().map(|v| render(Some(v))).collect();
            format!("[{}]", items.join(","))
        }
        Some(any_value::Value::KvlistValue(list)) => {
            let items: Vec<String> = list
                .values
                .iter()
                .map(|kv| format!("{}={}", kv.key, render(kv.value.as_ref())))
                .collect();
            format!("{{{}}}", items.join(","))
        }
        Some(any_value::Value::BytesValue(bytes)) => {
            bytes.iter().fold(String::new(), |mut hex, b| {
                let _ = write!(hex, "{b:02x}");
                hex
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_formats_every_attribute_value_kind() {
        let v = |value| Some(AnyValue { value: Some(value) });
        assert_eq!(render(v(any_value::Value::IntValue(-3)).as_ref()), "-3");
        assert_eq!(
            render(v(any_value::Value::BoolValue(true)).as_ref()),
            "true"
        );
        assert_eq!(
            render(v(any_value::Value::BytesValue(vec![0xab, 1])).as_ref()),
            "ab01"
        );
        let array =
            any_value::Value::ArrayValue(opentelemetry_proto::tonic::common::v1::ArrayValue {
                values: vec![AnyValue {
                    value: Some(any_value::Value::StringValue("a".into())),
                }],
            });
        assert_eq!(render(v(array).as_ref()), "[a]");
        assert_eq!(render(None), "");
    }

    #[test]
    fn faults_apply_in_order_for_their_count() {
        let shared = Shared {
            received: Mutex::default(),
            undecodable: Mutex::default(),
            faults: Mutex::new(VecDeque::from([
                (Fault::bad_request(), 2),
                (Fault::delay(Duration::ZERO), 1),
            ])),
            changes: watch::Sender::new(0),
            max_message_bytes: 1,
        };
        assert_eq!(shared.next_fault(), Some(Fault::bad_request()));
        assert_eq!(shared.next_fault(), Some(Fault::bad_request()));
        assert_eq!(shared.next_fault(), Some(Fault::delay(Duration::ZERO)));
        assert_eq!(shared.next_fault(), None);
    }

    #[test]
    fn retry_after_is_rounded_up_to_whole_seconds() {
        let response = protobuf_response(
            StatusCode::OK,
            Vec::new(),
            Some(Duration::from_millis(1500)),
        );
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
    }

    #[test]
    fn decode_http_rejects_json_and_unknown_encodings() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let err = decode_http(&headers, b"{}", 100)
            .err()
            .map(|(status, _)| status);
        assert_eq!(err, Some(StatusCode::UNSUPPORTED_MEDIA_TYPE));

        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("zstd"));
        let err = decode_http(&headers, b"", 100)
            .err()
            .map(|(status, _)| status);
        assert_eq!(err, Some(StatusCode::UNSUPPORTED_MEDIA_TYPE));
    }
}
