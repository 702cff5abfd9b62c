//! Processors between the receivers and the exporter, each bounded by construction.

/// Splits a scrape's points into export-sized batches.
pub mod batcher;
/// Per-target circuit breakers with backoff and jitter.
pub mod breaker;
/// Replaces the literals of SQL text by `?`.
pub mod obfuscate;
/// The adaptive sampler that picks which statements go out one by one.
pub mod sampler;
/// Turns statement statistics into points: ranking, sampling and the aggregate.
pub mod statements;
