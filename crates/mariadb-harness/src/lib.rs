//! MariaDB servers of one's own on loopback: [`own_mariadb::OwnMariaDb`]
//! (one server with its own port and data directory, to kill, stall and
//! restart) and [`galera::Galera`] (a 3-node Galera cluster of them).
//!
//! Shared by the fault tests (crates/testkit re-exports both modules) and
//! floatlm-bench's Galera scenario. Neither ever touches the shared server
//! on 3306. Failures panic with the server's error log: both callers treat
//! a harness that cannot start as fatal.

pub mod galera;
pub mod own_mariadb;
