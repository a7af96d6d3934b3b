//! redeemd: offline member-card redemption daemon.
#![forbid(unsafe_code)]
