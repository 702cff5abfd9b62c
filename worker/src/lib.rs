//! dbcollector worker: collects PostgreSQL and MySQL/MariaDB metrics and exports them over
//! OTLP, standalone or, in a pod, as one shard of a fleet (the targets its pod is assigned).

pub mod app;
pub mod assignment;
pub mod config;
pub mod exporter;
pub mod lease;
pub mod metrics;
pub mod pipeline;
pub mod pool;
pub mod processors;
pub mod receivers;
pub mod scheduler;
pub mod secret;
pub mod server;
pub mod source;
pub mod telemetry;
