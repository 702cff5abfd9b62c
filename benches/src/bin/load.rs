//! The load bench binary: parses the options, runs [`dbcollector_benches::load::run`] and
//! prints its markdown report. `scripts/load-bench.sh` builds and runs it.

use clap::Parser as _;
use dbcollector_benches::load::{self, Args};

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    dbcollector_tests::init_tracing();
    // One process-wide rustls crypto provider for the HTTP clients.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Runtime::new()?;
    let report = runtime.block_on(load::run(args, command))?;
    println!("{report}");
    Ok(())
}
