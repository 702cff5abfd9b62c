//! Sends batches to an OTLP receiver over gRPC or HTTP/protobuf, with retry and a bounded queue.
//!
//! The data path writes OTLP requests directly from [`Batch`]es (see [`encode_bytes`]) instead of
//! going through the OpenTelemetry SDK: the SDK would aggregate the points itself, apply its
//! cardinality limits and stamp its own start times, which would alter the database's own
//! cumulative counters and their reset times. Here a point leaves exactly as it was read.
//!
//! Flow: [`ExporterHandle::send`] puts a batch into a bounded queue (measured in points,
//! never waiting, dropping the oldest batches when full); `exporter.queue.concurrency`
//! sender tasks take batches from it, coalesce small ones into one request, and send it
//! with retries for the failures the OTLP specification calls retryable. Every point
//! handed over is, in the end, counted exactly once: in `points_exported` or in
//! `points_dropped{reason}`.
//!
//! Every request carries the header [`WORKER_HEADER`] with the worker's id, so a receiver
//! (and the tests) can tell which worker sent what, plus the configured
//! `exporter.headers`.

mod encode;
mod grpc;
mod http;
mod queue;
mod retry;
mod tls;

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use ::http::{HeaderMap, HeaderName, HeaderValue};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use encode::{encode, encode_bytes, SCOPE_NAME};
pub use http::GZIP_LEVEL;

use crate::config::{self, ValueSource};
use crate::metrics::Batch;
use crate::secret;
use crate::telemetry::{DropReason, Metrics, ResultLabel};
use queue::Queue;
use retry::{Backoff, Class};

/// The request header naming the worker that sent the data.
pub const WORKER_HEADER: &str = "x-dbcollector-worker";

/// Most points coalesced into one request: small scrapes share a request, while a request
/// stays far below the 4 MiB message limit common to OTLP receivers.
const REQUEST_POINTS: u64 = 4096;

/// At most one warning per this period for failures that repeat (refused batches).
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Why the exporter could not start. Each message names the config field at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `exporter.endpoint` is not usable by the chosen protocol.
    #[error("exporter.endpoint: {endpoint:?} is not a valid URL")]
    Endpoint {
        /// The endpoint as configured (validation keeps credentials out of it).
        endpoint: String,
        /// Why the client library refused it.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A TLS file could not be read.
    #[error("{field}: reading {path}")]
    ReadFile {
        /// The config field, e.g. `exporter.tls.ca_file`.
        field: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A TLS file holds no certificate or key, or malformed PEM.
    #[error("{field}: {path} holds no valid PEM")]
    Pem {
        /// The config field.
        field: &'static str,
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// A TLS value source (`exporter.tls.ca`, `cert` or `key`) could not be read.
    #[error("{field}: reading the value")]
    TlsSource {
        /// The config field, e.g. `exporter.tls.ca`.
        field: &'static str,
        /// Why (names the file, variable or Secret, never the content).
        #[source]
        source: secret::Error,
    },
    /// A TLS value source holds no certificate or key, or malformed PEM.
    #[error("{field}: the value holds no valid PEM")]
    PemValue {
        /// The config field.
        field: &'static str,
        /// The parse error.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// The TLS settings were refused by the client library.
    #[error("exporter.tls: building the TLS client configuration")]
    Tls {
        /// The library's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A header value could not be read.
    #[error("exporter.headers.{name}: reading the value")]
    HeaderSource {
        /// The header's name.
        name: String,
        /// Why (names the file or variable, never the value).
        #[source]
        source: secret::Error,
    },
    /// A header name is not a valid HTTP header name.
    #[error("exporter.headers.{name}: not a valid HTTP header name")]
    HeaderName {
        /// The name as configured.
        name: String,
    },
    /// A header value holds characters HTTP forbids (e.g. a newline inside).
    #[error("exporter.headers.{name}: the value is not a valid HTTP header value")]
    HeaderValue {
        /// The header's name.
        name: String,
    },
    /// The worker id cannot be sent as a header value.
    #[error("worker id {worker_id:?} is not a valid HTTP header value")]
    WorkerId {
        /// The id.
        worker_id: String,
    },
    /// The HTTP client could not be built.
    #[error("exporter: building the HTTP client")]
    Client {
        /// The library's error.
        #[source]
        source: reqwest::Error,
    },
    /// [`Exporter::start`] was called outside a tokio runtime.
    #[error("exporter: must be started inside a tokio runtime")]
    NoRuntime,
}

/// The running exporter, shared by its handles and sender tasks. Reach it through
/// [`ExporterHandle`].
#[derive(Debug)]
pub struct Exporter {
    queue: Arc<Queue>,
    metrics: Arc<Metrics>,
    shutdown_timeout: Duration,
    /// Stops the senders, in flight or retrying, when the shutdown deadline passes.
    cancel: CancellationToken,
    senders: Mutex<Vec<JoinHandle<()>>>,
}

/// Hands batches to the exporter and shuts it down. Clones share one exporter.
#[derive(Clone, Debug)]
pub struct ExporterHandle {
    inner: Arc<Exporter>,
}

impl Exporter {
    /// Reads the header values and TLS files, builds the client for `config.protocol` and
    /// spawns the sender tasks on the current tokio runtime. No connection is made yet: an
    /// unreachable receiver delays data, it does not stop the worker from starting.
    ///
    /// # Errors
    /// [`Error`] naming the config field at fault: an unreadable or invalid TLS file or
    /// header source, an endpoint the client refuses, or no runtime.
    pub fn start(
        config: &config::Exporter,
        worker_id: &str,
        metrics: Arc<Metrics>,
    ) -> Result<ExporterHandle, Error> {
        tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let headers = Headers::load(config, worker_id)?;
        let tls = tls::TlsFiles::load(&config.tls)?;
        match config.protocol {
            config::Protocol::Grpc => {
                let client = grpc::Client::new(config, &tls)?;
                Ok(launch(client, headers, config, metrics))
            }
            config::Protocol::HttpProtobuf => {
                let client = http::Client::new(config, &tls)?;
                Ok(launch(client, headers, config, metrics))
            }
        }
    }
}

/// Starts the senders over `transport`.
fn launch<T: Transport>(
    transport: T,
    headers: Headers,
    config: &config::Exporter,
    metrics: Arc<Metrics>,
) -> ExporterHandle {
    let queue = Arc::new(Queue::new(config.queue.max_points, metrics.clone()));
    let cancel = CancellationToken::new();
    let sender = Arc::new(Sender {
        transport,
        headers,
        queue: queue.clone(),
        metrics: metrics.clone(),
        retry: config.retry.clone(),
        cancel: cancel.clone(),
        endpoint: loggable_endpoint(&config.endpoint),
        log: LogState::default(),
    });
    let senders = (0..config.queue.concurrency.max(1))
        .map(|_| tokio::spawn(sender.clone().run()))
        .collect();
    tracing::info!(
        endpoint = %sender.endpoint,
        protocol = ?config.protocol,
        concurrency = config.queue.concurrency,
        "otlp exporter started"
    );
    ExporterHandle {
        inner: Arc::new(Exporter {
            queue,
            metrics,
            shutdown_timeout: config.queue.shutdown_timeout,
            cancel,
            senders: Mutex::new(senders),
        }),
    }
}

impl Drop for Exporter {
    /// Dropping every handle without [`ExporterHandle::shutdown`] still lets the senders
    /// export what is queued and stop, with no deadline.
    fn drop(&mut self) {
        self.queue.close();
    }
}

impl ExporterHandle {
    /// Queues a batch for export. Never waits: when the queue is full the oldest batches
    /// are dropped and counted as `queue_full`. After [`ExporterHandle::shutdown`] batches
    /// are dropped and counted as `shutdown`.
    pub fn send(&self, batch: Batch) {
        self.inner
            .metrics
            .pipeline_latency
            .observe(batch.read_at.elapsed().as_secs_f64());
        self.inner.queue.push(batch);
    }

    /// Points waiting in the queue (not those in flight).
    pub fn queued_points(&self) -> u64 {
        self.inner.queue.points()
    }

    /// Stops accepting batches and keeps exporting what is queued for at most
    /// `exporter.queue.shutdown_timeout`; then stops the senders, in flight or retrying,
    /// and counts every point not delivered as `shutdown`. Affects every clone.
    pub fn shutdown(self) -> impl Future<Output = ()> {
        let inner = self.inner;
        async move {
            inner.queue.close();
            let senders = std::mem::take(&mut *lock(&inner.senders));
            let mut all = std::pin::pin!(futures::future::join_all(senders));
            if tokio::time::timeout(inner.shutdown_timeout, all.as_mut())
                .await
                .is_err()
            {
                inner.cancel.cancel();
                all.await;
                let left = inner.queue.clear();
                inner.metrics.dropped(DropReason::Shutdown, left);
                tracing::warn!(
                    timeout = ?inner.shutdown_timeout,
                    "otlp exporter shutdown deadline passed; undelivered points dropped"
                );
            }
            tracing::info!("otlp exporter stopped");
        }
    }
}

/// What a receiver answered to an accepted request.
#[derive(Debug, Default)]
pub(crate) struct Accepted {
    /// Points the receiver refused (OTLP partial success).
    pub rejected: u64,
    /// The receiver's explanation, empty when none.
    pub message: String,
}

/// A failed export request.
#[derive(Debug)]
pub(crate) struct Failure {
    /// Retry, re-read credentials, or drop.
    pub class: Class,
    /// The server's requested wait (`Retry-After`, `RetryInfo`).
    pub retry_after: Option<Duration>,
    /// What happened, for the log.
    pub error: SendError,
}

/// Why a request failed, for the log; [`Failure::class`] decides what happens next.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    /// A gRPC status other than OK (connection failures included, as `UNAVAILABLE`).
    #[error("gRPC status {code:?}: {message}")]
    Grpc {
        /// The status code.
        code: tonic::Code,
        /// The status message.
        message: String,
    },
    /// An HTTP status other than 2xx.
    #[error("receiver answered HTTP {status}: {message}")]
    HttpStatus {
        /// The status.
        status: ::http::StatusCode,
        /// The `google.rpc.Status` message of the body, when there is one.
        message: String,
    },
    /// The HTTP request did not get an answer (connect error, timeout, reset).
    #[error("sending the request")]
    Http(#[source] reqwest::Error),
}

/// One way of sending requests: gRPC or HTTP.
pub(crate) trait Transport: Send + Sync + 'static {
    /// A request ready to be sent, possibly more than once.
    type Prepared: Send + Sync + 'static;

    /// Turns an encoded request (its protobuf bytes) into what `export` sends (e.g.
    /// compressed bytes), once per request rather than once per attempt.
    fn prepare(&self, request: Vec<u8>) -> Self::Prepared;

    /// Sends one attempt with these headers.
    fn export(
        &self,
        request: &Self::Prepared,
        headers: &HeaderMap,
    ) -> impl Future<Output = Result<Accepted, Failure>> + Send;
}

/// The request headers: the worker header plus the configured ones, read at start and
/// again when the receiver refuses the credentials (a rotated secret).
#[derive(Debug)]
pub(crate) struct Headers {
    sources: Vec<(HeaderName, ValueSource)>,
    worker: HeaderValue,
    current: RwLock<Arc<HeaderMap>>,
}

impl Headers {
    /// Reads every configured header once.
    ///
    /// # Errors
    /// [`Error::HeaderSource`], [`Error::HeaderValue`] or [`Error::WorkerId`].
    pub(crate) fn load(config: &config::Exporter, worker_id: &str) -> Result<Self, Error> {
        let worker = HeaderValue::from_str(worker_id).map_err(|_| Error::WorkerId {
            worker_id: worker_id.to_owned(),
        })?;
        let mut sources = Vec::with_capacity(config.headers.len());
        for (name, source) in &config.headers {
            // Validation checked the names; a bad one here is still reported, not unwrapped.
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| Error::HeaderName { name: name.clone() })?;
            sources.push((header, source.clone()));
        }
        let mut headers = Self {
            sources,
            worker,
            current: RwLock::new(Arc::new(HeaderMap::new())),
        };
        let map = headers.read()?;
        headers.current = RwLock::new(Arc::new(map));
        Ok(headers)
    }

    fn read(&self) -> Result<HeaderMap, Error> {
        let mut map = HeaderMap::with_capacity(self.sources.len() + 1);
        for (name, source) in &self.sources {
            let text = secret::read(source).map_err(|source| Error::HeaderSource {
                name: name.to_string(),
                source,
            })?;
            let mut value = HeaderValue::from_str(&text).map_err(|_| Error::HeaderValue {
                name: name.to_string(),
            })?;
            // Keeps the value out of debug output and HTTP/2 header compression tables.
            value.set_sensitive(true);
            map.insert(name.clone(), value);
        }
        // Last, so a configured header cannot impersonate another worker.
        map.insert(HeaderName::from_static(WORKER_HEADER), self.worker.clone());
        Ok(map)
    }

    /// The headers to send now.
    pub(crate) fn current(&self) -> Arc<HeaderMap> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Reads the values again; `true` when they changed (worth retrying the request).
    pub(crate) fn reload(&self) -> bool {
        let map = match self.read() {
            Ok(map) => map,
            Err(error) => {
                tracing::warn!(
                    error = &error as &dyn std::error::Error,
                    "re-reading exporter headers failed; keeping the previous values"
                );
                return false;
            }
        };
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        if **current == map {
            return false;
        }
        *current = Arc::new(map);
        true
    }
}

/// State behind the rate-limited logs, shared by the senders.
#[derive(Debug, Default)]
struct LogState {
    /// The receiver is failing with retryable errors (down); logged on change only.
    failing: std::sync::atomic::AtomicBool,
    /// The last partial-success message, logged when it changes.
    partial: Mutex<String>,
    /// When a dropped request was last logged at warn.
    last_drop_warning: Mutex<Option<Instant>>,
}

impl LogState {
    /// `true` at most once per [`WARN_EVERY`].
    fn drop_warning_due(&self) -> bool {
        let mut last = lock(&self.last_drop_warning);
        let due = last.is_none_or(|t| t.elapsed() >= WARN_EVERY);
        if due {
            *last = Some(Instant::now());
        }
        due
    }
}

/// One of the sender tasks' shared context.
struct Sender<T> {
    transport: T,
    headers: Headers,
    queue: Arc<Queue>,
    metrics: Arc<Metrics>,
    retry: config::Retry,
    cancel: CancellationToken,
    /// Scheme, host, port and path of the endpoint, for logs.
    endpoint: String,
    log: LogState,
}

impl<T: Transport> Sender<T> {
    /// Takes requests from the queue until it is closed and empty, or the shutdown
    /// deadline cancels the task.
    async fn run(self: Arc<Self>) {
        loop {
            let next = tokio::select! {
                biased;
                () = self.cancel.cancelled() => return,
                next = self.queue.pop(REQUEST_POINTS) => next,
            };
            let Some(batches) = next else { return };
            let points: u64 = batches.iter().map(|b| b.points.len() as u64).sum();
            let request = self.transport.prepare(encode_bytes(&batches));
            drop(batches);

            tokio::select! {
                biased;
                () = self.cancel.cancelled() => {
                    self.metrics.dropped(DropReason::Shutdown, points);
                    return;
                }
                () = self.deliver(&request, points) => {}
            }
        }
    }

    /// Sends one request until it is accepted, refused for good, or its retry time runs
    /// out; counts its points accordingly. Counting happens only after the last await, so
    /// a cancelled delivery counts nothing and the caller counts it as `shutdown`.
    async fn deliver(&self, request: &T::Prepared, points: u64) {
        let started = Instant::now();
        let mut backoff = Backoff::new(&self.retry);
        let mut headers_reloaded = false;
        loop {
            let headers = self.headers.current();
            let failure = match self.transport.export(request, &headers).await {
                Ok(accepted) => return self.accepted(points, accepted),
                Err(failure) => failure,
            };
            self.count_request(failure.class.label());

            match failure.class {
                Class::Retryable => {
                    self.mark_failing(&failure);
                    let delay = backoff.next_delay(failure.retry_after);
                    if !self.retry.enabled || started.elapsed() + delay > self.retry.max_elapsed {
                        return self.drop_request(points, &failure, "retries exhausted");
                    }
                    tracing::debug!(
                        error = &failure.error as &dyn std::error::Error,
                        ?delay,
                        "otlp export failed; retrying"
                    );
                    tokio::time::sleep(delay).await;
                }
                Class::Auth if !headers_reloaded && self.headers.reload() => {
                    // A rotated credential: try once more with the new values.
                    headers_reloaded = true;
                }
                Class::Auth | Class::Permanent => {
                    return self.drop_request(points, &failure, "refused by the receiver");
                }
            }
        }
    }

    fn accepted(&self, points: u64, accepted: Accepted) {
        self.count_request("success");
        let rejected = accepted.rejected.min(points);
        self.metrics.points_exported.inc_by(points - rejected);
        if rejected > 0 {
            self.metrics.dropped(DropReason::Rejected, rejected);
        }
        if rejected > 0 || !accepted.message.is_empty() {
            let mut last = lock(&self.log.partial);
            if *last != accepted.message {
                tracing::warn!(
                    endpoint = %self.endpoint,
                    rejected,
                    message = %accepted.message,
                    "otlp receiver rejected part of a request"
                );
                *last = accepted.message;
            }
        }
        if self
            .log
            .failing
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::warn!(endpoint = %self.endpoint, "otlp receiver accepts data again");
        }
    }

    fn mark_failing(&self, failure: &Failure) {
        if !self
            .log
            .failing
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::warn!(
                endpoint = %self.endpoint,
                error = &failure.error as &dyn std::error::Error,
                "otlp receiver unavailable; retrying with backoff"
            );
        }
    }

    fn drop_request(&self, points: u64, failure: &Failure, why: &'static str) {
        self.metrics.dropped(DropReason::ExportFailed, points);
        if self.log.drop_warning_due() {
            tracing::warn!(
                endpoint = %self.endpoint,
                points,
                reason = why,
                error = &failure.error as &dyn std::error::Error,
                "otlp export dropped"
            );
        } else {
            tracing::debug!(
                points,
                reason = why,
                error = &failure.error as &dyn std::error::Error,
                "otlp export dropped"
            );
        }
    }

    fn count_request(&self, result: &'static str) {
        self.metrics
            .export_requests
            .get_or_create(&ResultLabel { result })
            .inc();
    }
}

/// The endpoint without anything but scheme, authority and path (validation already
/// refuses credentials in the authority; a query string is left out all the same).
fn loggable_endpoint(endpoint: &str) -> String {
    match endpoint.parse::<::http::Uri>() {
        Ok(uri) => format!(
            "{}://{}{}",
            uri.scheme_str().unwrap_or("?"),
            uri.authority().map_or("?", |a| a.as_str()),
            uri.path().trim_end_matches('/')
        ),
        Err(_) => "<invalid endpoint>".to_owned(),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every value behind these locks is valid at every instant: poisoning is harmless.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
