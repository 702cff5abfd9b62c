//! OTLP/HTTP transport: binary protobuf POSTed to `<exporter.endpoint>/v1/metrics`.

use std::io::Write as _;

use bytes::Bytes;
use flate2::write::GzEncoder;
use http::header::{CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use http::HeaderMap;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
use prost::Message;

use super::retry::{http_class, retry_after, Class, RpcStatus};
use super::tls::TlsFiles;
use super::{Accepted, Error, Failure, SendError, Transport};
use crate::config;

const PROTOBUF: &str = "application/x-protobuf";

/// Sends requests with one shared `reqwest` client (connection pool, HTTP/2 over TLS).
#[derive(Debug)]
pub(crate) struct Client {
    client: reqwest::Client,
    url: reqwest::Url,
    gzip: bool,
}

/// A request body, encoded and compressed once for every attempt.
#[derive(Debug)]
pub(crate) struct Body {
    bytes: Bytes,
    gzip: bool,
}

impl Client {
    /// Builds the client with the configured CA and client identity (no other roots are
    /// trusted).
    ///
    /// # Errors
    /// [`Error::Endpoint`] for a URL that does not parse, [`Error::Client`] when the TLS
    /// material is refused.
    pub(crate) fn new(config: &config::Exporter, tls: &TlsFiles) -> Result<Self, Error> {
        let url = metrics_url(&config.endpoint)?;

        let mut builder = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout);
        if let Some(ca) = &tls.ca {
            let roots = reqwest::Certificate::from_pem_bundle(ca).map_err(|source| Error::Tls {
                source: Box::new(source),
            })?;
            for root in roots {
                builder = builder.add_root_certificate(root);
            }
        }
        if let Some((cert, key)) = &tls.identity {
            let identity = reqwest::Identity::from_pem(&[cert.as_slice(), key].concat()).map_err(
                |source| Error::Tls {
                    source: Box::new(source),
                },
            )?;
            builder = builder.identity(identity);
        }
        let client = builder.build().map_err(|source| Error::Client { source })?;

        Ok(Self {
            client,
            url,
            gzip: config.compression == config::Compression::Gzip,
        })
    }
}

/// `<endpoint>/v1/metrics`, with exactly one slash between them.
fn metrics_url(endpoint: &str) -> Result<reqwest::Url, Error> {
    reqwest::Url::parse(&format!("{}/v1/metrics", endpoint.trim_end_matches('/'))).map_err(
        |source| Error::Endpoint {
            endpoint: endpoint.to_owned(),
            source: Box::new(source),
        },
    )
}

impl Transport for Client {
    type Prepared = Body;

    fn prepare(&self, plain: Vec<u8>) -> Body {
        if !self.gzip {
            return Body {
                bytes: plain.into(),
                gzip: false,
            };
        }
        match gzip(&plain) {
            Ok(compressed) => Body {
                bytes: compressed.into(),
                gzip: true,
            },
            Err(error) => {
                // Writing into memory does not fail in practice; sending uncompressed is
                // still correct.
                tracing::debug!(error = &error as &dyn std::error::Error, "gzip failed");
                Body {
                    bytes: plain.into(),
                    gzip: false,
                }
            }
        }
    }

    async fn export(&self, body: &Body, headers: &HeaderMap) -> Result<Accepted, Failure> {
        let mut request = self
            .client
            .post(self.url.clone())
            .headers(headers.clone())
            .header(CONTENT_TYPE, PROTOBUF)
            .body(body.bytes.clone());
        if body.gzip {
            request = request.header(CONTENT_ENCODING, "gzip");
        }

        let response = request.send().await.map_err(|error| Failure {
            // Connect errors, timeouts and resets are worth retrying; a request that could
            // not even be built is not.
            class: if error.is_builder() {
                Class::Permanent
            } else {
                Class::Retryable
            },
            retry_after: None,
            error: SendError::Http(error),
        })?;

        let status = response.status();
        if status.is_success() {
            // The request is accepted whatever the body holds; it only adds partial
            // success details, and a body that is not protobuf (or cut short) has none.
            let body = response.bytes().await.unwrap_or_default();
            let partial = ExportMetricsServiceResponse::decode(body)
                .ok()
                .and_then(|r| r.partial_success)
                .unwrap_or_default();
            return Ok(Accepted {
                rejected: u64::try_from(partial.rejected_data_points).unwrap_or(0),
                message: partial.error_message,
            });
        }

        let hint = retry_after(response.headers().get(RETRY_AFTER));
        // OTLP/HTTP error bodies are a `google.rpc.Status`; anything else has no message.
        let message = response
            .bytes()
            .await
            .ok()
            .and_then(|b| RpcStatus::decode(b).ok())
            .map(|s| s.message)
            .unwrap_or_default();
        Err(Failure {
            class: http_class(status),
            retry_after: hint,
            error: SendError::HttpStatus { status, message },
        })
    }
}

/// The gzip level of OTLP/HTTP bodies: 1, the fastest.
///
/// Metric requests are repetitive (the same names and attributes on every point), so even
/// the fastest level shrinks them tenfold or more. On the benches' PostgreSQL batches,
/// level 1 costs a sixth of the CPU of the default level 6 for 1.5 to 1.75 times its bytes
/// (16 B against 11 B per point in a 1000-point request); levels 2 and 3 save 12 to 24 % of
/// level 1's bytes for 1.5 to 3 times its CPU. At level 6, compression had been a third of
/// the worker's CPU. gRPC bodies are compressed by tonic, whose level is fixed at 6.
pub const GZIP_LEVEL: u32 = 1;

fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let level = flate2::Compression::new(GZIP_LEVEL);
    let mut encoder = GzEncoder::new(Vec::with_capacity(data.len() / 4), level);
    encoder.write_all(data)?;
    encoder.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_path_is_appended_with_one_slash() {
        for endpoint in ["http://127.0.0.1:4318", "http://127.0.0.1:4318/"] {
            assert_eq!(
                metrics_url(endpoint).unwrap().as_str(),
                "http://127.0.0.1:4318/v1/metrics"
            );
        }
        assert_eq!(
            metrics_url("https://otel.example/otlp/").unwrap().as_str(),
            "https://otel.example/otlp/v1/metrics"
        );
    }

    #[test]
    fn gzip_body_inflates_to_the_encoded_request() {
        use std::io::Read as _;
        let data = b"some protobuf bytes, repeated, repeated, repeated".to_vec();
        let compressed = gzip(&data).unwrap();
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(compressed.as_slice())
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, data);
    }
}
