//! A TCP listener that accepts connections and never answers, for connect and handshake
//! deadlines.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::LOOPBACK;

/// Accepts TCP connections on 127.0.0.1 and holds them open, silent, until dropped.
///
/// A database client connecting here completes the TCP handshake and then waits forever
/// for the server greeting, so only its own deadline ends the attempt. Runs on a plain
/// thread, so it works with any (or no) async runtime.
#[derive(Debug)]
pub struct Blackhole {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    held: Arc<Mutex<Vec<TcpStream>>>,
    thread: Option<JoinHandle<()>>,
}

impl Blackhole {
    /// Listens on a free port of 127.0.0.1.
    ///
    /// # Errors
    ///
    /// Fails when no port can be bound or the accept thread cannot start.
    pub fn start() -> io::Result<Self> {
        let listener = TcpListener::bind((LOOPBACK, 0))?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let held = Arc::new(Mutex::new(Vec::new()));

        let thread = std::thread::Builder::new()
            .name("blackhole".into())
            .spawn({
                let stop = Arc::clone(&stop);
                let held = Arc::clone(&held);
                move || {
                    for stream in listener.incoming() {
                        if stop.load(Ordering::Acquire) {
                            break;
                        }
                        if let Ok(stream) = stream {
                            held.lock().unwrap_or_else(|p| p.into_inner()).push(stream);
                        }
                    }
                }
            })?;

        Ok(Self {
            addr,
            stop,
            held,
            thread: Some(thread),
        })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// How many connections were accepted so far (and are held, unless the peer closed).
    pub fn accepted(&self) -> usize {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        // Wake the blocking accept with one last connection, which it sees after the flag.
        self.stop.store(true, Ordering::Release);
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.held.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}
