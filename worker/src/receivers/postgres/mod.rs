//! The PostgreSQL receiver.
