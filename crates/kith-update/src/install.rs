//! Atomic installation of releases into a directory.
//!
//! ```text
//! DIR/current            symlink → releases/<version>   (what the application runs)
//! DIR/previous           symlink → releases/<version>   (kept for rollback)
//! DIR/releases/<v>/      a complete release, never modified after it appears
//! DIR/releases/<v>.bundle the signed metadata it was installed from
//! DIR/rejected           versions that failed their health check (one per line)
//! ```
//!
//! A release is written into a staging directory, every file and the directory synced,
//! then renamed into `releases/`; only then does `current` move, by renaming a new
//! symlink over it. A crash at any point leaves `current` on the old release or on the
//! new one, each complete: never a mix. Leftovers of an interrupted install are removed
//! by the next one.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use kith_store::collection;
use kith_store::{Hash, Store};

use crate::metadata::{Bundle, MetadataError, Release};

/// Why an install or rollback failed. Whatever happened, `current` still names a
/// complete release (or none, before the first install).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InstallError {
    /// The filesystem failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Writing the release out of the store failed.
    #[error("exporting the release: {0}")]
    Export(String),
    /// The written files are not the release's.
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    /// There is no previous release to go back to.
    #[error("no previous release to roll back to")]
    NoPrevious,
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> InstallError {
    let path = path.to_owned();
    move |source| InstallError::Io { what, path, source }
}

/// Installs releases into one directory.
#[derive(Debug, Clone)]
pub struct Installer {
    dir: PathBuf,
}

impl Installer {
    /// An installer for `dir` (created if missing).
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self, InstallError> {
        let dir = dir.into();
        fs::create_dir_all(dir.join("releases")).map_err(io_err("creating", &dir))?;
        Ok(Self { dir })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path the application runs from: `DIR/current`.
    pub fn current_path(&self) -> PathBuf {
        self.dir.join("current")
    }

    fn link_version(&self, name: &str) -> Option<u64> {
        let target = fs::read_link(self.dir.join(name)).ok()?;
        target.file_name()?.to_str()?.parse().ok()
    }

    /// The installed release's version, if any.
    pub fn current(&self) -> Option<u64> {
        self.link_version("current")
    }

    /// The release kept for rollback, if any.
    pub fn previous(&self) -> Option<u64> {
        self.link_version("previous")
    }

    /// The signed metadata the installed release came from.
    pub fn current_bundle(&self) -> Option<Vec<u8>> {
        let v = self.current()?;
        fs::read(self.dir.join("releases").join(format!("{v}.bundle"))).ok()
    }

    /// Versions that failed their health check; they are not installed again.
    pub fn rejected(&self) -> Vec<u64> {
        fs::read_to_string(self.dir.join("rejected"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Writes release `release` (whose collection is complete in `store`) and its
    /// `bundle` bytes into `releases/`, checks every file against the metadata, then
    /// makes it current and the old current previous. Blocking: run it on a blocking
    /// thread.
    pub fn install(
        &self,
        store: &(dyn Store + Send + Sync),
        release: &Release,
        bundle: &[u8],
    ) -> Result<(), InstallError> {
        let version = release.body.version;
        let releases = self.dir.join("releases");
        self.clean_leftovers()?;
        let manifest = collection::read_manifest(store, release.collection)
            .map_err(|e| InstallError::Export(e.to_string()))?;
        release.check_manifest(&manifest)?;
        let final_dir = releases.join(version.to_string());
        if self.current() == Some(version) {
            return Ok(());
        }
        if !final_dir.exists() {
            let staging = releases.join(format!(".staging-{version}-{}", rand::random::<u32>()));
            collection::export_dir(store, release.collection, &staging)
                .map_err(|e| InstallError::Export(e.to_string()))?;
            // Every byte is on disk, and is what the metadata names, before it can
            // become current.
            for f in &release.body.files {
                let path = staging.join(&f.path);
                let file = File::open(&path).map_err(io_err("opening", &path))?;
                file.sync_all().map_err(io_err("syncing", &path))?;
                let hash = hash_file(&path)?;
                if hash.as_bytes().as_slice() != f.hash.as_slice() {
                    return Err(MetadataError::FileMismatch(format!(
                        "{} changed while it was written",
                        f.path
                    ))
                    .into());
                }
            }
            sync_tree(&staging)?;
            let bundle_path = releases.join(format!("{version}.bundle"));
            write_atomic(&bundle_path, bundle)?;
            fs::rename(&staging, &final_dir).map_err(io_err("renaming", &staging))?;
            sync_dir(&releases)?;
        }
        let old = self.current();
        self.point("current", version)?;
        if let Some(old) = old {
            self.point("previous", old)?;
        }
        self.prune();
        Ok(())
    }

    /// Makes the previous release current again (after a failed health check), records
    /// the abandoned version in `rejected`, and removes it.
    pub fn rollback(&self) -> Result<u64, InstallError> {
        let prev = self.previous().ok_or(InstallError::NoPrevious)?;
        let bad = self.current();
        self.point("current", prev)?;
        let _ = fs::remove_file(self.dir.join("previous"));
        if let Some(bad) = bad {
            let path = self.dir.join("rejected");
            let mut text = fs::read_to_string(&path).unwrap_or_default();
            text.push_str(&format!("{bad}\n"));
            write_atomic(&path, text.as_bytes())?;
        }
        sync_dir(&self.dir)?;
        self.prune();
        Ok(prev)
    }

    /// Points symlink `name` at `releases/<version>`, atomically.
    fn point(&self, name: &str, version: u64) -> Result<(), InstallError> {
        let tmp = self
            .dir
            .join(format!(".{name}.tmp-{}", rand::random::<u32>()));
        let target = Path::new("releases").join(version.to_string());
        symlink(&target, &tmp).map_err(io_err("linking", &tmp))?;
        let path = self.dir.join(name);
        fs::rename(&tmp, &path).map_err(io_err("switching", &path))?;
        sync_dir(&self.dir)
    }

    /// Removes releases other than current and previous (best effort).
    fn prune(&self) {
        let keep: Vec<String> = [self.current(), self.previous()]
            .into_iter()
            .flatten()
            .map(|v| v.to_string())
            .collect();
        let Ok(rd) = fs::read_dir(self.dir.join("releases")) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let version = name.strip_suffix(".bundle").unwrap_or(&name);
            if name.starts_with('.') || keep.iter().any(|k| k == version) {
                continue;
            }
            let p = e.path();
            let _ = if p.is_dir() {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
        }
    }

    /// Removes what an interrupted install left: staging directories and temporary
    /// links.
    fn clean_leftovers(&self) -> Result<(), InstallError> {
        for (dir, prefix) in [
            // Staging directories and temporary bundle files.
            (self.dir.join("releases"), "."),
            (self.dir.clone(), ".current.tmp-"),
            (self.dir.clone(), ".previous.tmp-"),
            (self.dir.clone(), ".rejected.tmp-"),
        ] {
            let rd = fs::read_dir(&dir).map_err(io_err("listing", &dir))?;
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(prefix) {
                    let p = e.path();
                    let r = if p.is_dir() && !p.is_symlink() {
                        fs::remove_dir_all(&p)
                    } else {
                        fs::remove_file(&p)
                    };
                    r.map_err(io_err("removing", &p))?;
                }
            }
        }
        Ok(())
    }

    /// Checks that `current` is a complete release matching its metadata (the
    /// invariant the crash test asserts).
    pub fn verify_current(&self) -> Result<Option<u64>, InstallError> {
        let Some(v) = self.current() else {
            return Ok(None);
        };
        let bundle = self.current_bundle().ok_or_else(|| {
            MetadataError::Malformed("the installed release has no metadata".into())
        })?;
        let bundle = Bundle::decode_checked(&bundle)?;
        let doc = bundle
            .release
            .ok_or_else(|| MetadataError::Malformed("no release".into()))?;
        let body = crate::metadata::ReleaseBody::decode_bounded(doc.body.as_slice())?;
        if body.version != v {
            return Err(MetadataError::FileMismatch("metadata of another version".into()).into());
        }
        let root = self.current_path();
        let mut count = 0;
        for f in &body.files {
            let hash = hash_file(&root.join(&f.path))?;
            if hash.as_bytes().as_slice() != f.hash.as_slice() {
                return Err(MetadataError::FileMismatch(format!("{} differs", f.path)).into());
            }
            count += 1;
        }
        // No file beyond those named.
        let mut on_disk = 0;
        let mut stack = vec![root.clone()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).map_err(io_err("listing", &d))?.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    on_disk += 1;
                }
            }
        }
        if on_disk != count {
            return Err(MetadataError::FileMismatch(format!(
                "{on_disk} files installed, {count} in the metadata"
            ))
            .into());
        }
        Ok(Some(v))
    }
}

fn hash_file(path: &Path) -> Result<Hash, InstallError> {
    let mut h = blake3::Hasher::new();
    let mut f = File::open(path).map_err(io_err("opening", path))?;
    io::copy(&mut f, &mut h).map_err(io_err("reading", path))?;
    Ok(Hash::from(*h.finalize().as_bytes()))
}

fn sync_dir(dir: &Path) -> Result<(), InstallError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing", dir))
}

fn sync_tree(dir: &Path) -> Result<(), InstallError> {
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).map_err(io_err("listing", &d))?.flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            }
        }
        sync_dir(&d)?;
    }
    Ok(())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), InstallError> {
    let parent = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = parent.join(format!(".{name}.tmp-{}", rand::random::<u32>()));
    {
        use std::io::Write;
        let mut f = File::create(&tmp).map_err(io_err("creating", &tmp))?;
        f.write_all(bytes).map_err(io_err("writing", &tmp))?;
        f.sync_all().map_err(io_err("syncing", &tmp))?;
    }
    fs::rename(&tmp, path).map_err(io_err("renaming", &tmp))?;
    sync_dir(parent)
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) -> io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

#[cfg(not(unix))]
fn symlink(_target: &Path, _link: &Path) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "atomic release switching needs symlinks (Unix)",
    ))
}

/// The hash of a file, as the store would compute it (for tools and tests).
pub fn file_hash(path: &Path) -> Result<Hash, InstallError> {
    hash_file(path)
}
