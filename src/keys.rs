//! Loading the terminal secret: from a file only its owner can read, or from a systemd credential.
//!
//! The file holds the secret as hexadecimal text (at least 64 hex digits = 32 bytes). A file that is
//! group- or world-accessible is refused: a secret anyone on the shop PC could read protects nothing.
//! A systemd credential (`LoadCredential=` / `LoadCredentialEncrypted=`) is read from
//! `$CREDENTIALS_DIRECTORY/<name>`, with the same checks.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use redeemd_contract::keys::{SecretError, TerminalSecret};
use thiserror::Error;
use zeroize::Zeroizing;

/// Largest key file read (a hex secret is ~64 bytes; anything huge is not a key file).
const MAX_KEY_FILE: u64 = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// Absolute path of a key file, mode 0600 or 0400.
    File(PathBuf),
    /// Name of a systemd credential.
    Credential(String),
}

#[derive(Debug, Error)]
pub enum KeyError {
    #[error("key file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "key file {path} has mode {mode:04o}: it must not be readable or writable by group or others (chmod 600)"
    )]
    LoosePermissions { path: PathBuf, mode: u32 },
    #[error("key file {path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error("key file {path} is larger than {MAX_KEY_FILE} bytes: not a key file")]
    TooLarge { path: PathBuf },
    #[error(
        "credential {name:?}: $CREDENTIALS_DIRECTORY is not set (is LoadCredential= in the unit?)"
    )]
    NoCredentialsDirectory { name: String },
    #[error("credential name {name:?} must be a plain file name")]
    BadCredentialName { name: String },
    #[error("key file {path}: {source}")]
    Secret { path: PathBuf, source: SecretError },
}

/// Where the shipped unit's credential comes from (`LoadCredential=terminal.key:/etc/redeemd/terminal.key`):
/// the tools read a credential there when they run outside the service (`doctor` defaults to it too).
pub const CREDENTIAL_SOURCE_DIR: &str = "/etc/redeemd";

/// Loads the secret; `$CREDENTIALS_DIRECTORY` is read from the environment for credentials.
pub fn load_secret(source: &KeySource) -> Result<TerminalSecret, KeyError> {
    let dir = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
    load_secret_with(source, dir.as_deref())
}

/// As [`load_secret`] for the command-line tools, which systemd gives no credentials directory: a
/// credential is then read from its source, [`CREDENTIAL_SOURCE_DIR`] (root-only, as the key file's
/// permission check demands), so that `sudo redeemd status` works on a packaged install.
pub fn load_secret_outside_service(source: &KeySource) -> Result<TerminalSecret, KeyError> {
    let dir = std::env::var_os("CREDENTIALS_DIRECTORY")
        .map_or_else(|| PathBuf::from(CREDENTIAL_SOURCE_DIR), PathBuf::from);
    load_secret_with(source, Some(&dir))
}

/// As [`load_secret`], with the credentials directory passed in (for tests).
pub fn load_secret_with(
    source: &KeySource,
    credentials_dir: Option<&Path>,
) -> Result<TerminalSecret, KeyError> {
    let path = match source {
        KeySource::File(p) => p.clone(),
        KeySource::Credential(name) => {
            if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                return Err(KeyError::BadCredentialName { name: name.clone() });
            }
            let dir = credentials_dir
                .ok_or_else(|| KeyError::NoCredentialsDirectory { name: name.clone() })?;
            dir.join(name)
        }
    };
    let io = |source| KeyError::Io {
        path: path.clone(),
        source,
    };
    // Checked before opening too: opening a FIFO for reading blocks until a writer comes, which
    // would hang the daemon's start (and every tool) on a mistyped path instead of refusing it.
    if !std::fs::metadata(&path).map_err(io)?.is_file() {
        return Err(KeyError::NotAFile { path });
    }
    let file = std::fs::File::open(&path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(KeyError::NotAFile { path });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyError::LoosePermissions { path, mode });
    }
    if meta.len() > MAX_KEY_FILE {
        return Err(KeyError::TooLarge { path });
    }
    // The text copy is zeroized on drop, like the secret itself.
    let mut text = Zeroizing::new(String::new());
    file.take(MAX_KEY_FILE)
        .read_to_string(&mut text)
        .map_err(io)?;
    TerminalSecret::from_hex_text(&text).map_err(|source| KeyError::Secret {
        path: path.clone(),
        source,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn private_key_files_load_and_loose_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let hex = "11".repeat(32);
        let ok = write(dir.path(), "ok.key", &format!("{hex}\n"), 0o600);
        assert!(load_secret_with(&KeySource::File(ok), None).is_ok());
        for mode in [0o640, 0o604, 0o644, 0o660, 0o602] {
            let p = write(dir.path(), &format!("loose{mode:o}.key"), &hex, mode);
            match load_secret_with(&KeySource::File(p), None) {
                Err(KeyError::LoosePermissions { mode: m, .. }) => assert_eq!(m, mode),
                other => panic!("mode {mode:o}: {other:?}"),
            }
        }
        let short = write(dir.path(), "short.key", "abcd", 0o400);
        assert!(matches!(
            load_secret_with(&KeySource::File(short), None),
            Err(KeyError::Secret { .. })
        ));
        let missing = dir.path().join("missing.key");
        assert!(matches!(
            load_secret_with(&KeySource::File(missing), None),
            Err(KeyError::Io { .. })
        ));
        assert!(matches!(
            load_secret_with(&KeySource::File(dir.path().to_path_buf()), None),
            Err(KeyError::LoosePermissions { .. } | KeyError::NotAFile { .. })
        ));
    }

    #[test]
    fn a_fifo_as_key_file_is_refused_without_waiting_for_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo.key");
        let made = std::process::Command::new("mkfifo")
            .arg("-m")
            .arg("600")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let (tx, rx) = std::sync::mpsc::channel();
        let path = fifo.clone();
        std::thread::spawn(move || {
            let _ = tx.send(load_secret_with(&KeySource::File(path), None));
        });
        // Without the check the open blocks until a writer comes: give it ample time, then fail.
        let result = rx.recv_timeout(std::time::Duration::from_secs(20));
        if result.is_err() {
            // Unblock the thread so the test process can end.
            let _ = std::fs::OpenOptions::new().write(true).open(&fifo);
        }
        match result {
            Ok(Err(KeyError::NotAFile { path })) => assert_eq!(path, fifo),
            other => panic!("FIFO key file: {other:?}"),
        }
    }

    #[test]
    fn credentials_come_from_the_credentials_directory() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "terminal.key", &"22".repeat(32), 0o400);
        let src = KeySource::Credential("terminal.key".into());
        assert!(load_secret_with(&src, Some(dir.path())).is_ok());
        assert!(matches!(
            load_secret_with(&src, None),
            Err(KeyError::NoCredentialsDirectory { .. })
        ));
        let bad = KeySource::Credential("../etc/shadow".into());
        assert!(matches!(
            load_secret_with(&bad, Some(dir.path())),
            Err(KeyError::BadCredentialName { .. })
        ));
    }
}
