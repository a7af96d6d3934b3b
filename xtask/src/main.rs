//! `cargo xtask`: the repository's own tasks, so that a fresh machine needs two commands, not a page
//! of setup (README, "Quick start").
//!
//! * `cargo xtask test [ARGS…]` makes sure the system packages the tests need are there — installing
//!   the missing ones with `apt-get` when run as root, else printing the exact command to run and
//!   stopping — then runs `cargo test --workspace --locked [ARGS…]`.
//! * `cargo xtask deps` installs (as root) every system package the tests and CI's other checks
//!   need; `.ci/run` calls it first.
//!
//! [`REQUIREMENTS`] is the one list of those packages: add a line when a test or a check starts to
//! need another (a database server, a headless browser). Standard library only, so that it builds in
//! seconds on a fresh machine.
#![forbid(unsafe_code)]

use std::path::Path;
use std::process::{Command, ExitCode};

/// What needs a system package.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needed {
    /// `cargo test --workspace` (and so `cargo xtask test`).
    ByTests,
    /// CI's other checks (`.ci/run`: unit files, udev rules).
    ByChecks,
}

/// How to tell that a package is installed.
#[derive(Debug, Clone, Copy)]
enum Probe {
    /// A command on `PATH`.
    Command(&'static str),
    /// Any of these files, `{arch}` standing for the machine's multiarch triple's first part.
    AnyFile(&'static [&'static str]),
}

/// A Debian package something in this repository needs.
#[derive(Debug, Clone, Copy)]
struct Requirement {
    package: &'static str,
    why: &'static str,
    needed: Needed,
    probe: Probe,
}

/// Every system package the tests and CI need (beyond a Rust toolchain and a C compiler).
const REQUIREMENTS: &[Requirement] = &[
    Requirement {
        package: "faketime",
        why: "tests/it/offline_week.rs runs the clearing server and the daemon on a faked wall clock (libfaketime)",
        needed: Needed::ByTests,
        probe: Probe::AnyFile(&[
            "/usr/lib/{arch}-linux-gnu/faketime/libfaketime.so.1",
            "/usr/local/lib/faketime/libfaketime.so.1",
        ]),
    },
    Requirement {
        package: "postgresql",
        why: "the clearing server's tests run every case on PostgreSQL too, in a cluster of their own (initdb, pg_ctl)",
        needed: Needed::ByTests,
        probe: Probe::AnyFile(&["/usr/lib/postgresql/15/bin/initdb"]),
    },
    Requirement {
        package: "chromium",
        why: "tests/it/console_e2e.rs drives the web console in headless Chromium",
        needed: Needed::ByTests,
        probe: Probe::Command("chromium"),
    },
    Requirement {
        package: "chromium-driver",
        why: "tests/it/console_e2e.rs speaks WebDriver to Chromium through chromedriver",
        needed: Needed::ByTests,
        probe: Probe::Command("chromedriver"),
    },
    Requirement {
        package: "fonts-wqy-microhei",
        why: "the console's screenshots (tests/it/console_e2e.rs) show Chinese text, not empty boxes",
        needed: Needed::ByTests,
        probe: Probe::AnyFile(&["/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"]),
    },
    Requirement {
        package: "systemd",
        why: "systemd/check-units verifies the service units with systemd-analyze",
        needed: Needed::ByChecks,
        probe: Probe::Command("systemd-analyze"),
    },
    Requirement {
        package: "udev",
        why: "systemd/check-units parses the readers' udev rules with udevadm",
        needed: Needed::ByChecks,
        probe: Probe::Command("udevadm"),
    },
];

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("test") => match ensure(&[Needed::ByTests]) {
            Ok(()) => cargo_test(args.collect()),
            Err(code) => code,
        },
        Some("deps") => match ensure(&[Needed::ByTests, Needed::ByChecks]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(code) => code,
        },
        _ => {
            eprintln!(
                "usage: cargo xtask test [ARGS…]   install what the tests need (as root), then cargo test --workspace --locked [ARGS…]\n       cargo xtask deps             install every system package the tests and CI need (as root)"
            );
            ExitCode::from(2)
        }
    }
}

/// The requirements of `needed` that are not installed.
fn missing<'r>(requirements: &'r [Requirement], needed: &[Needed]) -> Vec<&'r Requirement> {
    requirements
        .iter()
        .filter(|r| needed.contains(&r.needed) && !present(r.probe))
        .collect()
}

/// What is missing and why, and — for a user who cannot install — the one command to run.
fn advice(missing: &[&Requirement], root: bool) -> String {
    let mut text = String::from("xtask: missing system packages:\n");
    for r in missing {
        text.push_str(&format!("  {:<10} {}\n", r.package, r.why));
    }
    if !root {
        text.push_str(&format!(
            "xtask: run this once (as root), then this command again:\n\n    sudo {}\n",
            install_command(missing)
        ));
    }
    text
}

fn install_command(missing: &[&Requirement]) -> String {
    let packages: Vec<&str> = missing.iter().map(|r| r.package).collect();
    format!("apt-get install -y {}", packages.join(" "))
}

/// Installs the missing packages needed by `needed` (as root), or says what to run.
fn ensure(needed: &[Needed]) -> Result<(), ExitCode> {
    let missing = missing(REQUIREMENTS, needed);
    if missing.is_empty() {
        return Ok(());
    }
    let packages: Vec<&str> = missing.iter().map(|r| r.package).collect();
    let root = is_root();
    eprint!("{}", advice(&missing, root));
    if !root {
        return Err(ExitCode::from(1));
    }
    let install = install_command(&missing);
    if !on_path("apt-get") {
        eprintln!(
            "xtask: no apt-get on this machine: install the packages above with its package manager"
        );
        return Err(ExitCode::from(1));
    }
    eprintln!("xtask: installing them: {install}");
    let installed = run(Command::new("apt-get").args(["update", "-qq"]))
        && run(Command::new("apt-get")
            .args(["install", "-y", "-qq"])
            .args(&packages)
            .env("DEBIAN_FRONTEND", "noninteractive"));
    let still: Vec<&str> = missing
        .iter()
        .filter(|r| !present(r.probe))
        .map(|r| r.package)
        .collect();
    if !installed || !still.is_empty() {
        eprintln!("xtask: installing {} failed", still.join(" "));
        return Err(ExitCode::from(1));
    }
    Ok(())
}

/// `cargo test --workspace --locked ARGS…` with the cargo that runs this task.
fn cargo_test(args: Vec<String>) -> ExitCode {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["test", "--workspace", "--locked"])
        .args(args)
        .status();
    match status {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(s) => ExitCode::from(u8::try_from(s.code().unwrap_or(1)).unwrap_or(1)),
        Err(e) => {
            eprintln!("xtask: cannot run cargo: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(command: &mut Command) -> bool {
    command.status().is_ok_and(|s| s.success())
}

fn present(probe: Probe) -> bool {
    match probe {
        Probe::Command(name) => on_path(name),
        Probe::AnyFile(paths) => paths
            .iter()
            .any(|p| Path::new(&p.replace("{arch}", std::env::consts::ARCH)).exists()),
    }
}

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()))
}

/// Whether the effective user is root (from `/proc/self/status`: no libc needed).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ABSENT: Requirement = Requirement {
        package: "faketime",
        why: "a test needs it",
        needed: Needed::ByTests,
        probe: Probe::AnyFile(&["/nonexistent/{arch}/libfaketime.so.1"]),
    };
    const CHECKS_ONLY: Requirement = Requirement {
        package: "udev",
        why: "a check needs it",
        needed: Needed::ByChecks,
        probe: Probe::Command("no-such-command-anywhere"),
    };
    const THERE: Requirement = Requirement {
        package: "coreutils",
        why: "always there",
        needed: Needed::ByTests,
        probe: Probe::Command("ls"),
    };

    #[test]
    fn a_user_who_cannot_install_is_told_the_exact_command() {
        let reqs = [ABSENT, CHECKS_ONLY, THERE];
        let for_tests = missing(&reqs, &[Needed::ByTests]);
        assert_eq!(
            for_tests.iter().map(|r| r.package).collect::<Vec<_>>(),
            ["faketime"]
        );
        let text = advice(&for_tests, false);
        assert!(text.contains("faketime   a test needs it"), "{text}");
        assert!(
            text.contains("\n    sudo apt-get install -y faketime\n"),
            "{text}"
        );
        // Root is not told to sudo: the task installs them itself.
        assert!(!advice(&for_tests, true).contains("sudo"));
        let all = missing(&reqs, &[Needed::ByTests, Needed::ByChecks]);
        assert_eq!(install_command(&all), "apt-get install -y faketime udev");
    }
}
