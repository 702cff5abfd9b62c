//! OTLP/gRPC transport: a lazily connected tonic channel to `exporter.endpoint`.

use std::error::Error as _;

use bytes::{BufMut as _, Bytes};
use http::uri::PathAndQuery;
use http::HeaderMap;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
use tonic::client::Grpc;
use tonic::codec::{Codec, CompressionEncoding, EncodeBuf, Encoder};
use tonic::metadata::MetadataMap;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::GrpcMethod;
use tonic_prost::ProstDecoder;

use super::retry::{grpc_class, retry_info};
use super::tls::TlsFiles;
use super::{Accepted, Error, Failure, SendError, Transport};
use crate::config;

/// The service and method of OTLP metrics export.
const SERVICE: &str = "opentelemetry.proto.collector.metrics.v1.MetricsService";
const METHOD: &str = "Export";
const PATH: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";

/// Sends requests as unary `MetricsService/Export` calls.
#[derive(Debug)]
pub(crate) struct Client {
    client: Grpc<Channel>,
}

impl Client {
    /// Builds the channel; it connects at the first request and reconnects by itself.
    ///
    /// # Errors
    /// [`Error::Endpoint`] for a URL tonic refuses, [`Error::Tls`] for TLS settings it
    /// refuses.
    pub(crate) fn new(config: &config::Exporter, tls: &TlsFiles) -> Result<Self, Error> {
        let mut endpoint = Endpoint::from_shared(config.endpoint.clone())
            .map_err(|source| Error::Endpoint {
                endpoint: config.endpoint.clone(),
                source: Box::new(source),
            })?
            // The per-request deadline, sent as `grpc-timeout` and enforced locally.
            .timeout(config.timeout)
            .connect_timeout(config.timeout);

        if endpoint.uri().scheme_str() == Some("https") {
            let mut tls_config = ClientTlsConfig::new();
            if let Some(ca) = &tls.ca {
                tls_config = tls_config.ca_certificate(Certificate::from_pem(ca));
            }
            if let Some((cert, key)) = &tls.identity {
                tls_config = tls_config.identity(Identity::from_pem(cert, key));
            }
            endpoint = endpoint
                .tls_config(tls_config)
                .map_err(|source| Error::Tls {
                    source: Box::new(source),
                })?;
        }

        let mut client = Grpc::new(endpoint.connect_lazy());
        if config.compression == config::Compression::Gzip {
            client = client
                .send_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Gzip);
        }
        Ok(Self { client })
    }
}

impl Transport for Client {
    // The encoded request, shared by every attempt; tonic compresses it per attempt.
    type Prepared = Bytes;

    fn prepare(&self, request: Vec<u8>) -> Bytes {
        request.into()
    }

    async fn export(&self, request: &Bytes, headers: &HeaderMap) -> Result<Accepted, Failure> {
        let mut call = tonic::Request::new(request.clone());
        *call.metadata_mut() = MetadataMap::from_headers(headers.clone());
        call.extensions_mut()
            .insert(GrpcMethod::new(SERVICE, METHOD));

        // A clone shares the channel; the call needs `&mut` only for readiness. A channel
        // that is not ready failed locally: the error is kept as the status' source, so
        // `effective_code` retries it as UNAVAILABLE.
        let mut client = self.client.clone();
        let result = match client.ready().await {
            Ok(()) => {
                client
                    .unary(call, PathAndQuery::from_static(PATH), PreEncoded)
                    .await
            }
            Err(error) => Err(tonic::Status::from_error(error.into())),
        };
        match result {
            Ok(response) => {
                let partial = response.into_inner().partial_success.unwrap_or_default();
                Ok(Accepted {
                    rejected: u64::try_from(partial.rejected_data_points).unwrap_or(0),
                    message: partial.error_message,
                })
            }
            Err(status) => {
                let hint = retry_info(status.details());
                Err(Failure {
                    class: grpc_class(effective_code(&status), hint),
                    retry_after: hint,
                    error: SendError::Grpc {
                        code: status.code(),
                        message: describe(&status),
                    },
                })
            }
        }
    }
}

/// The gRPC codec of a request encoded beforehand (see `encode_bytes`): its bytes go out as
/// they are; the response is decoded by prost.
#[derive(Debug, Clone, Copy)]
struct PreEncoded;

impl Codec for PreEncoded {
    type Encode = Bytes;
    type Decode = ExportMetricsServiceResponse;
    type Encoder = Raw;
    type Decoder = ProstDecoder<ExportMetricsServiceResponse>;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::default()
    }
}

/// Writes bytes that are already a protobuf message.
#[derive(Debug, Clone, Copy)]
struct Raw;

impl Encoder for Raw {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.reserve(item.len());
        dst.put(item);
        Ok(())
    }
}

/// The code to classify `status` by. A transport failure during the call (the connection
/// closed or reset, or a TLS alert such as a refused client certificate, which TLS 1.3
/// delivers after the client considers the handshake done) reaches here as `UNKNOWN`
/// carrying the local error as its source, whereas a status the receiver sent has no
/// source. The receiver never answered such a call, so it is retried like a failed
/// connect (`UNAVAILABLE`), as the HTTP transport retries a request that got no answer.
fn effective_code(status: &tonic::Status) -> tonic::Code {
    match status.code() {
        tonic::Code::Unknown if status.source().is_some() => tonic::Code::Unavailable,
        code => code,
    }
}

/// The status message, followed by the transport error behind it when there is one
/// (tonic reports a refused connection as `UNAVAILABLE` with the I/O error as source).
fn describe(status: &tonic::Status) -> String {
    let mut text = status.message().to_owned();
    let mut source = status.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // tonic often repeats its source's text in the message.
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transport_failure_during_the_call_is_classified_as_unavailable() {
        let local = tonic::Status::from_error(Box::new(std::io::Error::other(
            "received fatal alert: CertificateRequired",
        )));
        assert_eq!(local.code(), tonic::Code::Unknown);
        assert_eq!(effective_code(&local), tonic::Code::Unavailable);

        // The same code sent by the receiver is its answer, classified as it is.
        let answered = tonic::Status::new(tonic::Code::Unknown, "receiver bug");
        assert_eq!(effective_code(&answered), tonic::Code::Unknown);
        let refused = tonic::Status::new(tonic::Code::InvalidArgument, "bad data");
        assert_eq!(effective_code(&refused), tonic::Code::InvalidArgument);
    }
}
