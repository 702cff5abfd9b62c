//! The MySQL and MariaDB receiver.
