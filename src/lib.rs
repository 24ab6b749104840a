//! agregat: aggregate-only statistics over the Indonesian population
//! register (UU 24/2013 Pasal 58 ayat 3).
//!
//! The modules follow the data flow:
//!
//! - [`service`]: the HTTP API: tokens, agreements, rate limits, the
//!   budget ledger and the audit entry of every request;
//! - [`policy`]: the directory of PKS agreement files and their tokens;
//! - [`agreement`]: what one institution (PKS) may ask;
//! - [`query`]: SQL plan, the aggregate-only gate, execution and the
//!   complete result grid;
//! - [`protect`]: cell-key perturbation, suppression, differential privacy;
//! - [`output`]: encoding released tables (JSON, CSV, Parquet);
//! - [`state`]: the audit log and the budget ledger (SQLite);
//! - [`report`]: the six-monthly monitoring report over the audit log;
//!
//! and underneath, the warehouse layer:
//!
//! - [`catalog`]: the 31 elements, their classes, code lists and regions;
//! - [`record_key`]: the keyed hash of the NIK behind the cell-key method;
//! - [`warehouse`]: snapshot layout, Parquet writing and verified opening;
//! - [`generate`]: realistic synthetic snapshots;
//! - [`import`]: strict import of the register's CSV export.

pub mod agreement;
pub mod catalog;
pub mod error;
pub mod generate;
pub mod import;
pub mod output;
pub mod policy;
pub mod protect;
pub mod query;
pub mod record_key;
pub mod report;
pub mod saved;
pub mod service;
pub mod state;
pub mod warehouse;

pub use error::{Error, ErrorCategory};
