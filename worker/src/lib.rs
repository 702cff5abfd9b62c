//! dbcollector worker: collects PostgreSQL and MySQL/MariaDB metrics and exports them over
//! OTLP, standalone from a config file or (later) as part of a sharded fleet.

pub mod app;
pub mod config;
pub mod exporter;
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
