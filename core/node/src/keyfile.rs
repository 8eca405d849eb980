//! Reading and writing the node's secret key file (mode 0600, never silently overwritten).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use skyroute_proto::{KeyError, SecretKey};

#[derive(Debug, thiserror::Error)]
/// Why a key file could not be read or written.
pub enum KeyFileError {
    #[error("{0} exists; pass --force to overwrite it")]
    /// The file exists and overwriting was not asked for.
    Exists(PathBuf),
    #[error("{path}: {source}")]
    /// Reading or writing failed.
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    /// The file does not hold a key.
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: KeyError,
    },
}

/// The default data directory: `$HOME/.local/share/skyroute`.
pub fn default_data_dir() -> PathBuf {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/share/skyroute")
}

/// Writes `key` to `path` with mode 0600. Refuses to replace an existing file unless `force`.
pub fn write(path: &Path, key: &SecretKey, force: bool) -> Result<(), KeyFileError> {
    let io = |source| KeyFileError::Io { path: path.to_path_buf(), source };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(io)?;
    }
    let mut opts = OpenOptions::new();
    opts.write(true);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            KeyFileError::Exists(path.to_path_buf())
        } else {
            io(e)
        }
    })?;
    #[cfg(unix)]
    {
        // `mode` only applies to new files; tighten a file we overwrite with --force too.
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    f.write_all(key.to_key_file().as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)
}

/// Reads a secret key from `path` (hex, one line).
pub fn read(path: &Path) -> Result<SecretKey, KeyFileError> {
    let text = zeroize::Zeroizing::new(
        fs::read_to_string(path).map_err(|source| KeyFileError::Io { path: path.to_path_buf(), source })?,
    );
    SecretKey::from_key_file(&text).map_err(|source| KeyFileError::Parse { path: path.to_path_buf(), source })
}
