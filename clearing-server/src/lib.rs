//! Reference clearing server for redeemd terminals (`docs/api/openapi.yaml`, `docs/api/README.md`).
//!
//! The folders say the architecture (`clearing-server/README.md` has the code map):
//!
//! * [`core`] — pure rules, no I/O and no clock: clearing statements and exceptions, cache validity.
//! * [`storage`] — the database: schema and migrations, and every operation the server performs on it
//!   (terminals and nonces, journal upload, batch close, cards and packages, bundles, reports).
//! * [`http`] — the terminal API (axum): request authentication, body limits, thin handlers over
//!   [`storage`] and [`core`].
//! * [`admin`] — the operator's commands (`clearing-server admin …`): a thin client of the same
//!   operations, and the text rendering of reports.
#![forbid(unsafe_code)]

pub mod admin;
pub mod core;
pub mod http;
pub mod service;
pub mod storage;
pub mod vault;

pub use http::{AppState, Clock, Limits, router, serve, system_clock};
