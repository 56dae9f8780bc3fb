//! Persistent node identity: a secret key file readable only by its owner.

use std::fs;
use std::io::Write;
use std::path::Path;

use kith_core::SecretKey;

/// Error loading or creating a key file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The file could not be read, created or written.
    #[error("key file {path}: {source}")]
    Io {
        /// The key file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file does not hold a key in kith's format (64 hex characters of seed).
    #[error("key file {path} is malformed")]
    Malformed {
        /// The key file.
        path: String,
    },
    /// The file is readable or writable by others than its owner.
    #[error("key file {path} has insecure permissions {mode:o}; expected 600")]
    InsecurePermissions {
        /// The key file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
}

/// Loads the secret key stored at `path`, or creates one there (mode 0600) if the file
/// does not exist. The file holds the 32-byte seed as 64 lowercase hex characters.
pub fn load_or_create_secret_key(path: &Path) -> Result<SecretKey, IdentityError> {
    let p = path.display().to_string();
    let io = |source| IdentityError::Io {
        path: p.clone(),
        source,
    };
    match fs::read(path) {
        Ok(bytes) => {
            check_permissions(path, &p)?;
            parse_key(&bytes).ok_or(IdentityError::Malformed { path: p.clone() })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SecretKey::generate(&mut rand::rngs::OsRng);
            let mut opts = fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                fs::create_dir_all(dir).map_err(io)?;
            }
            let mut f = opts.open(path).map_err(io)?;
            let hex: String = key.to_bytes().iter().map(|b| format!("{b:02x}")).collect();
            f.write_all(format!("{hex}\n").as_bytes()).map_err(io)?;
            f.sync_all().map_err(io)?;
            Ok(key)
        }
        Err(e) => Err(io(e)),
    }
}

fn parse_key(bytes: &[u8]) -> Option<SecretKey> {
    let text = std::str::from_utf8(bytes).ok()?.trim();
    if text.len() != 64 {
        return None;
    }
    let mut seed = [0u8; 32];
    for (i, out) in seed.iter_mut().enumerate() {
        *out = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(SecretKey::from_bytes(&seed))
}

#[cfg(unix)]
fn check_permissions(path: &Path, p: &str) -> Result<(), IdentityError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(path)
        .map_err(|source| IdentityError::Io {
            path: p.to_owned(),
            source,
        })?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(IdentityError::InsecurePermissions {
            path: p.to_owned(),
            mode: mode & 0o777,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_permissions(_path: &Path, _p: &str) -> Result<(), IdentityError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_then_load_same_key_mode_600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/key");
        let a = load_or_create_secret_key(&path).unwrap();
        let b = load_or_create_secret_key(&path).unwrap();
        assert_eq!(a.node_id(), b.node_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn malformed_and_insecure_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        fs::write(&path, "not a key").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
            assert!(matches!(
                load_or_create_secret_key(&path),
                Err(IdentityError::Malformed { .. })
            ));
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
            assert!(matches!(
                load_or_create_secret_key(&path),
                Err(IdentityError::InsecurePermissions { mode: 0o644, .. })
            ));
        }
    }
}
