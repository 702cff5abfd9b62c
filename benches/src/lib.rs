//! Shared parts of the micro benchmarks (realistic fixtures, the allocation counter and
//! the report printed after criterion's output), and the load bench ([`load`]).
//!
//! Each bench target under `benches/` installs [`alloc::CountingAlloc`] as its global
//! allocator and prints a [`report::Report`] at the end: allocations and bytes per
//! element next to a rough time of the same pass, so a change that adds an allocation
//! per point shows up even when the time barely moves.
//!
//! Run them all (under two minutes on two cores once built; each group's criterion
//! settings are in [`harness::criterion`]): `cargo bench -p dbcollector-benches`; one
//! target or group: `cargo bench -p dbcollector-benches --bench pipeline -- statements`.
//! `cargo test --all-targets` runs every routine once, unoptimized, as a smoke test.

pub mod alloc;
pub mod fixtures;
pub mod harness;
pub mod load;
pub mod report;
