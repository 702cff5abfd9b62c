//! Which export failures are retried (the OTLP specification's rules) and how long to wait.

use std::time::Duration;

use prost::Message;
use rand::Rng;

use crate::config;

/// What to do after a failed export request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    /// Try again after a backoff: the receiver is overloaded, unreachable or restarting.
    Retryable,
    /// The receiver refused the credentials. The headers are read again; if they changed
    /// (a rotated secret) the request is retried, otherwise it is dropped.
    Auth,
    /// The request can never succeed as it is; drop it.
    Permanent,
}

impl Class {
    /// The `result` label of `export_requests`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Class::Retryable => "retryable",
            Class::Auth | Class::Permanent => "permanent",
        }
    }
}

/// Classifies a gRPC status by the OTLP/gRPC rules: `RESOURCE_EXHAUSTED` is retried only
/// when the server says when to come back (`RetryInfo`); otherwise it is a hard limit
/// such as a message too large.
pub(crate) fn grpc_class(code: tonic::Code, retry_info: Option<Duration>) -> Class {
    use tonic::Code;
    match code {
        Code::Unavailable
        | Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::DataLoss => Class::Retryable,
        Code::ResourceExhausted if retry_info.is_some() => Class::Retryable,
        Code::Unauthenticated | Code::PermissionDenied => Class::Auth,
        _ => Class::Permanent,
    }
}

/// Classifies an HTTP response status by the OTLP/HTTP rules.
pub(crate) fn http_class(status: http::StatusCode) -> Class {
    match status.as_u16() {
        429 | 502 | 503 | 504 => Class::Retryable,
        401 | 403 => Class::Auth,
        _ => Class::Permanent,
    }
}

/// `google.rpc.Status`, as carried in gRPC's `grpc-status-details-bin` trailer and in an
/// OTLP/HTTP error body. Only the fields read here are declared.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct RpcStatus {
    /// The gRPC code.
    #[prost(int32, tag = "1")]
    pub code: i32,
    /// The developer-facing message.
    #[prost(string, tag = "2")]
    pub message: String,
    /// Typed details.
    #[prost(message, repeated, tag = "3")]
    pub details: Vec<Any>,
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Any {
    /// e.g. `type.googleapis.com/google.rpc.RetryInfo`.
    #[prost(string, tag = "1")]
    pub type_url: String,
    /// The encoded message.
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// `google.rpc.RetryInfo`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct RetryInfo {
    /// How long to wait before retrying.
    #[prost(message, optional, tag = "1")]
    pub retry_delay: Option<ProtoDuration>,
}

/// `google.protobuf.Duration`.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub(crate) struct ProtoDuration {
    /// Whole seconds.
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    /// Nanoseconds on top of `seconds`.
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

const RETRY_INFO_TYPE: &str = "google.rpc.RetryInfo";

/// The server's requested delay from an encoded `google.rpc.Status`, if it carries a
/// `RetryInfo`. Malformed details are ignored: the hint is advice, not a requirement.
pub(crate) fn retry_info(status_details: &[u8]) -> Option<Duration> {
    if status_details.is_empty() {
        return None;
    }
    let status = RpcStatus::decode(status_details).ok()?;
    let any = status
        .details
        .iter()
        .find(|d| d.type_url.rsplit('/').next() == Some(RETRY_INFO_TYPE))?;
    let delay = RetryInfo::decode(any.value.as_slice()).ok()?.retry_delay?;
    let seconds = u64::try_from(delay.seconds).ok()?;
    let nanos = u32::try_from(delay.nanos).ok()?;
    Some(Duration::new(seconds, nanos.min(999_999_999)))
}

/// The delay of an HTTP `Retry-After` header given in seconds. The HTTP-date form is not
/// read (receivers send seconds) and then the backoff alone decides.
pub(crate) fn retry_after(value: Option<&http::HeaderValue>) -> Option<Duration> {
    let seconds = value?.to_str().ok()?.trim().parse::<u64>().ok()?;
    Some(Duration::from_secs(seconds))
}

/// Exponential backoff with jitter for one request.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// Starts at `initial_backoff`.
    pub(crate) fn new(policy: &config::Retry) -> Self {
        Self {
            next: policy.initial_backoff,
            max: policy.max_backoff,
        }
    }

    /// The wait before the next attempt: the current step scaled by a random factor in
    /// [0.5, 1.5) (so senders that failed together do not retry together), at most
    /// `max_backoff`, and never shorter than the server's `hint`. The step doubles each
    /// call up to `max_backoff`.
    pub(crate) fn next_delay(&mut self, hint: Option<Duration>) -> Duration {
        let factor = rand::rng().random_range(0.5..1.5);
        let jittered = self.next.mul_f64(factor).min(self.max);
        self.next = self.next.saturating_mul(2).min(self.max);
        hint.map_or(jittered, |h| h.max(jittered))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn encoded_status(details: Vec<Any>) -> Vec<u8> {
        RpcStatus {
            code: Code::ResourceExhausted as i32,
            message: "slow down".into(),
            details,
        }
        .encode_to_vec()
    }

    fn retry_info_any(seconds: i64, nanos: i32) -> Any {
        Any {
            type_url: "type.googleapis.com/google.rpc.RetryInfo".into(),
            value: RetryInfo {
                retry_delay: Some(ProtoDuration { seconds, nanos }),
            }
            .encode_to_vec(),
        }
    }

    #[test]
    fn grpc_codes_follow_the_otlp_retry_rules() {
        for code in [
            Code::Unavailable,
            Code::Cancelled,
            Code::DeadlineExceeded,
            Code::Aborted,
            Code::OutOfRange,
            Code::DataLoss,
        ] {
            assert_eq!(grpc_class(code, None), Class::Retryable, "{code:?}");
        }
        for code in [
            Code::InvalidArgument,
            Code::Unimplemented,
            Code::Internal,
            Code::Unknown,
        ] {
            assert_eq!(grpc_class(code, None), Class::Permanent, "{code:?}");
        }
        assert_eq!(grpc_class(Code::Unauthenticated, None), Class::Auth);
    }

    #[test]
    fn resource_exhausted_is_retried_only_with_retry_info() {
        assert_eq!(grpc_class(Code::ResourceExhausted, None), Class::Permanent);
        let hint = Some(Duration::from_secs(1));
        assert_eq!(grpc_class(Code::ResourceExhausted, hint), Class::Retryable);
    }

    #[test]
    fn http_statuses_follow_the_otlp_retry_rules() {
        for s in [429, 502, 503, 504] {
            let status = http::StatusCode::from_u16(s).unwrap();
            assert_eq!(http_class(status), Class::Retryable, "{s}");
        }
        for s in [400, 404, 413, 500] {
            let status = http::StatusCode::from_u16(s).unwrap();
            assert_eq!(http_class(status), Class::Permanent, "{s}");
        }
        assert_eq!(http_class(http::StatusCode::UNAUTHORIZED), Class::Auth);
    }

    #[test]
    fn retry_info_is_read_from_the_status_details() {
        let details = encoded_status(vec![
            Any {
                type_url: "type.googleapis.com/google.rpc.DebugInfo".into(),
                value: vec![],
            },
            retry_info_any(2, 500_000_000),
        ]);
        assert_eq!(retry_info(&details), Some(Duration::from_millis(2500)));
    }

    #[test]
    fn missing_or_malformed_retry_info_gives_no_hint() {
        assert_eq!(retry_info(&[]), None);
        assert_eq!(retry_info(&encoded_status(vec![])), None);
        assert_eq!(retry_info(&[0xff, 0xff, 0xff]), None);
        assert_eq!(
            retry_info(&encoded_status(vec![retry_info_any(-1, 0)])),
            None
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_ignores_dates() {
        let secs = http::HeaderValue::from_static(" 3 ");
        assert_eq!(retry_after(Some(&secs)), Some(Duration::from_secs(3)));
        let date = http::HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT");
        assert_eq!(retry_after(Some(&date)), None);
        assert_eq!(retry_after(None), None);
    }

    #[test]
    fn backoff_grows_with_jitter_up_to_the_maximum_and_honors_a_longer_hint() {
        let policy = config::Retry {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(400),
            ..Default::default()
        };
        let mut b = Backoff::new(&policy);
        let d = b.next_delay(None);
        assert!(
            d >= Duration::from_millis(50) && d < Duration::from_millis(150),
            "{d:?}"
        );
        let d = b.next_delay(None);
        assert!(
            d >= Duration::from_millis(100) && d < Duration::from_millis(300),
            "{d:?}"
        );
        for _ in 0..10 {
            assert!(b.next_delay(None) <= Duration::from_millis(400));
        }
        assert_eq!(
            b.next_delay(Some(Duration::from_secs(5))),
            Duration::from_secs(5)
        );
    }
}
