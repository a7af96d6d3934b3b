//! The redeemd reader↔daemon serial protocol (see `PROTOCOL.md`).
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![forbid(unsafe_code)]
