//! agregat: aggregate-only statistics over the Indonesian population
//! register (UU 24/2013 Pasal 58 ayat 3).
//!
//! A request flows through the modules in this order:
//!
//! 1. [`service`] (or [`cli`]): the front end: HTTP, with the audit token
//!    opened when a request arrives ([`service::audit::AuditToken`]);
//! 2. [`agreement`]: admission: the PKS agreement, its one file format and
//!    every access rule (validity, stage, elements, region, limits,
//!    protection parameters);
//! 3. [`release`]: the one pipeline for every front end: plan → validate →
//!    DP reuse → reserve → execute + protect → commit → post-plan;
//!    - [`query`]: SQL to a plan, the aggregate-only gate
//!      ([`query::ValidatedPlan`]), execution and the complete result grid;
//!    - [`protect`]: cell-key perturbation, suppression, differential
//!      privacy ([`protect::ProtectedTable`]);
//!    - [`state`]: the budget ledger, the release store, the audit chain;
//! 4. [`output`]: encoding released tables (JSON, CSV, Parquet);
//! 5. the audit entry, appended before the response leaves; [`report`]
//!    reads the log for the six-monthly monitoring report.
//!
//! Underneath, shared vocabulary that imports nothing above it:
//! [`error`] (error categories and the one table of exit codes and HTTP
//! statuses), [`refusal`] (the stable refusal codes), [`calendar`] (WIB,
//! ages, six-month periods, the clock), [`catalog`] (the 31 elements, code
//! lists, regions), [`record_key`], and the warehouse layer: [`warehouse`],
//! [`generate`], [`import`], [`saved`].

pub mod agreement;
pub mod calendar;
pub mod catalog;
pub mod cli;
pub mod error;
pub mod generate;
pub mod import;
pub mod output;
pub mod protect;
pub mod query;
pub mod record_key;
pub mod refusal;
pub mod release;
pub mod report;
pub mod saved;
pub mod service;
pub mod state;
pub mod warehouse;

pub use cli::Error;
pub use error::ErrorCategory;
