//! Processors between the receivers and the exporter, each bounded by construction.
