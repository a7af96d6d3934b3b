#![forbid(unsafe_code)]
//! The `redeemd` binary: see `redeemd --help` and `redeemd::cli`.
fn main() -> std::process::ExitCode {
    redeemd::cli::main()
}
