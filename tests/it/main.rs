//! The integration tests, in one binary so that DataFusion is linked once.
//! Each module is one area, run end to end on the committed sample: real
//! Parquet snapshots, a real SQLite state database and, for the service, a
//! real HTTP server on a loopback port.

mod common;

mod analyst_side;
mod cli;
mod dp;
mod generator;
mod import;
mod protect;
mod ptable;
mod query_properties;
mod redteam;
mod report;
mod robust;
mod saved;
mod service;
mod service_crash;
mod service_fuzz;
mod sql_corpus;
mod state;
mod suppress;
mod utility;
