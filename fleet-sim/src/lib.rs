//! `fleet-sim`: a fleet of simulated redeemd terminals running real sync passes against a clearing
//! server, to measure the platform under a fleet's load (issue 14).
//!
//! Each simulated terminal does what the daemon does in a pass — deny list, journal head, upload,
//! entitlements, end-of-day closes — with the daemon's own planning code and the contract's signing,
//! chaining and verification, over real HTTP; it redeems against the cards its bundles gave it, so
//! every delta carries the cards other shops redeemed. See `fleet-sim/README.md`.
//!
//! * [`terminal`] — one terminal, pure: journal and chain, acknowledgements, card pool, deny list,
//!   redemptions and voids, closes due (with [`pool`] and [`bundle`]: the cards kept and how a bundle
//!   is verified and applied).
//! * [`http`] — the thin HTTP/1.1 driver (a kept connection per terminal, timeouts, decoding).
//! * [`pass`] — one sync pass of a terminal over [`http`], timed request by request.
//! * [`load`] — the scheduler: interval (the deployed fleet) and open-loop rate, phases.
//! * [`metrics`] — histograms, error kinds and the printed table.
//! * [`platform`] — everything asked of the platform's admin side (enrolment, cards, loss reports,
//!   statements), through its command line; the fleet's cards and their CSV.
//! * [`probe`] — CPU time of a process, the process behind a port, database size.
//! * [`reconcile`] — the end-of-run checks: journals held exactly, statements equal to what was sent.
//! * [`run`] — `fleet-sim run`, putting it together.
#![forbid(unsafe_code)]

pub mod bundle;
pub mod http;
pub mod load;
pub mod metrics;
pub mod pass;
pub mod platform;
pub mod pool;
pub mod probe;
pub mod reconcile;
pub mod run;
pub mod terminal;
