//! The crate's one integration-test binary: fixtures (spec ↔ code), property tests, the simulated
//! link, and bounded runs of the fuzz targets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod sim;
mod bad_input;
mod fixtures;
mod fuzz_smoke;
mod link;
mod props;
