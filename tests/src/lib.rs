//! Test harness: throwaway database servers, an OTLP receiver and a black-hole listener;
//! a Kubernetes control plane, and a fleet of operator and worker processes on it, with
//! the coverage of targets by workers counted from what the receiver got.
//!
//! Every server binds 127.0.0.1 on a port picked at start, keeps its files in a fresh
//! directory (under `/dev/shm` when it has room, else the system temporary directory; or
//! `$DBCOLLECTOR_TEST_DIR`) and is stopped, and its directory removed, when dropped.
//! Servers also die with the test process: they are started with a parent-death signal,
//! and directories left behind by a test process that was killed are removed by the next.

mod blackhole;
pub mod coverage;
mod fleet;
mod kube;
mod mariadb;
mod otlp;
mod postgres;
mod process;
mod tls;

use std::collections::HashSet;
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

pub use self::kube::{client_from_kubeconfig, ControlPlane};
pub use blackhole::Blackhole;
pub use fleet::{
    assignment_table, Binaries, Fleet, FleetOptions, WorkerState, OPERATOR_BIN_ENV,
    OPERATOR_IDENTITY, WORKER_BIN_ENV,
};
pub use mariadb::{MariaDbOptions, MariaDbServer};
pub use otlp::{
    Fault, Kind, OtlpOptions, OtlpReceiver, Outcome, Point, Protocol, Received, ReceiverTls,
    Temporality, Undecodable,
};
pub use postgres::{PgOptions, PgServer};
pub use tls::{TestPki, CLIENT_NAME, SERVER_NAMES};

/// The address every harness server listens on.
pub const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// Ports this process has already handed out; never handed out twice, so two servers
/// started concurrently by this process cannot race for the same port.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// Returns a TCP port on 127.0.0.1 that was free a moment ago and that this process has not
/// handed out before.
///
/// The port is found by binding port 0 and releasing it, so another process can still take
/// it before the caller binds it; servers of this harness retry with a new port when that
/// happens.
///
/// # Errors
///
/// Fails when no port can be bound on 127.0.0.1.
pub fn try_free_port() -> io::Result<u16> {
    for _ in 0..100 {
        let port = TcpListener::bind((LOOPBACK, 0))?.local_addr()?.port();
        let mut guard = HANDED_OUT
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if guard.get_or_insert_with(HashSet::new).insert(port) {
            return Ok(port);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        "no unused free port found in 100 tries",
    ))
}

/// Returns a free TCP port on 127.0.0.1; see [`try_free_port`].
///
/// # Panics
///
/// Panics when no port can be bound on 127.0.0.1, which only a broken test machine causes.
pub fn free_port() -> u16 {
    match try_free_port() {
        Ok(port) => port,
        Err(e) => panic!("cannot find a free port on 127.0.0.1: {e}"),
    }
}

/// Installs a `tracing` subscriber that writes through the test output capture.
///
/// The filter comes from `RUST_LOG` (default `info`). Safe to call from every test: only
/// the first call installs anything.
pub fn init_tracing() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));

        // Another subscriber may already be installed by the test itself; keep it.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

/// Polls `check` every 50 ms until it returns `Ok(Some(value))`, and returns the value.
///
/// For statistics that a server updates after the client already has its answer: MariaDB
/// aggregates performance_schema statement and table I/O summaries only after sending the
/// result, and PostgreSQL flushes `pg_stat_*` counters asynchronously. Runs on real time,
/// so not under a paused tokio clock.
///
/// # Errors
///
/// Fails after `timeout`, naming `what` and the last error `check` returned, if any.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => None,
            Err(e) => Some(e),
        };
        if Instant::now() >= deadline {
            return Err(match last {
                Some(e) => e.context(format!("{what}: still failing after {timeout:?}")),
                None => anyhow::anyhow!("{what}: not true after {timeout:?}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Percent-encodes `s` for the user-info or path part of a URL.
pub(crate) fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_never_hands_out_the_same_port_twice() {
        let ports: HashSet<u16> = (0..50).map(|_| free_port()).collect();
        assert_eq!(ports.len(), 50);
    }

    #[test]
    fn url_encode_escapes_reserved_characters() {
        assert_eq!(url_encode("a b@c:d/é"), "a%20b%40c%3Ad%2F%C3%A9");
        assert_eq!(url_encode("plain-1.2_3~"), "plain-1.2_3~");
    }
}
