//! A channel's keys and root chain, as a publisher keeps them.
//!
//! On disk (`kith update init KEYS`): `root-<i>.key`, `release-<i>.key`, `announce.key`
//! (32-byte Ed25519 seeds, mode 0600) and `roots` (the signed root documents, version 1
//! first). Keep root keys offline in practice: only the announce key must be online.

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kith_core::SecretKey;
use prost::Message;
use rand::{CryptoRng, RngCore};

use crate::metadata::{Bundle, ChannelId, MetadataError, Root, RootBody, SignedDoc};

/// Why keys could not be made, loaded or rotated.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeysError {
    /// The filesystem failed.
    #[error("{path}: {source}")]
    Io {
        /// Where.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A key file or the root chain is malformed.
    #[error("{0}")]
    Invalid(String),
    /// The root chain fails its own checks.
    #[error(transparent)]
    Metadata(#[from] MetadataError),
}

/// A channel's secret keys and its signed root chain.
#[derive(Debug, Clone)]
pub struct ChannelKeys {
    /// Root keys of the newest root.
    pub root: Vec<SecretKey>,
    /// Release keys of the newest root.
    pub release: Vec<SecretKey>,
    /// The announce key.
    pub announce: SecretKey,
    /// Signed roots, version 1 first.
    pub roots: Vec<SignedDoc>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// How long a root stays valid (one year).
pub const ROOT_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

fn body_for(
    version: u64,
    root: &[SecretKey],
    root_threshold: u32,
    release: &[SecretKey],
    release_threshold: u32,
    announce: &SecretKey,
) -> RootBody {
    RootBody {
        version,
        expires_ms: now_ms() + ROOT_TTL.as_millis() as u64,
        root_keys: root
            .iter()
            .map(|k| k.node_id().as_bytes().to_vec())
            .collect(),
        root_threshold,
        release_keys: release
            .iter()
            .map(|k| k.node_id().as_bytes().to_vec())
            .collect(),
        release_threshold,
        announce_key: announce.node_id().as_bytes().to_vec(),
    }
}

impl ChannelKeys {
    /// A new channel: `n_root` root keys with threshold `k_root`, `n_release` release
    /// keys with threshold `k_release`, an announce key; root version 1 signed by every
    /// root key.
    pub fn generate<R: RngCore + CryptoRng>(
        rng: &mut R,
        (n_root, k_root): (usize, u32),
        (n_release, k_release): (usize, u32),
    ) -> Result<Self, KeysError> {
        let root: Vec<SecretKey> = (0..n_root).map(|_| SecretKey::generate(rng)).collect();
        let release: Vec<SecretKey> = (0..n_release).map(|_| SecretKey::generate(rng)).collect();
        let announce = SecretKey::generate(rng);
        let body = body_for(1, &root, k_root, &release, k_release, &announce);
        let signers: Vec<&SecretKey> = root.iter().collect();
        let doc = Root::sign(&body, &signers);
        let keys = Self {
            root,
            release,
            announce,
            roots: vec![doc],
        };
        keys.check()?;
        Ok(keys)
    }

    /// The channel these keys publish to.
    pub fn channel(&self) -> ChannelId {
        let first = self
            .roots
            .first()
            .map(|d| d.body.as_slice())
            .unwrap_or_default();
        let announce = RootBody::decode(first)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b.announce_key.as_slice()).ok())
            .and_then(|k| kith_core::NodeId::from_bytes(&k).ok())
            .unwrap_or(self.announce.node_id());
        ChannelId {
            announce,
            root: kith_store::Hash::from(*blake3::hash(first).as_bytes()),
        }
    }

    /// Checks the root chain verifies from its first root.
    pub fn check(&self) -> Result<Root, KeysError> {
        let mut it = self.roots.iter();
        let first = it
            .next()
            .ok_or_else(|| KeysError::Invalid("no root".into()))?;
        let mut root = Root::verify_first(first, &self.channel())?;
        for d in it {
            root = root.verify_next(d)?;
        }
        Ok(root)
    }

    /// The release keys that sign: the first `threshold` of them.
    pub fn release_signers(&self) -> Result<Vec<&SecretKey>, String> {
        let root = self.check().map_err(|e| e.to_string())?;
        let k = root.body.release_threshold as usize;
        if self.release.len() < k {
            return Err(format!(
                "{} release keys here, {k} needed to sign",
                self.release.len()
            ));
        }
        Ok(self.release.iter().take(k).collect())
    }

    /// Rotates to new root and release keys: root version + 1, signed by the current
    /// root keys (`old_signers` of them: at least their threshold) and every new root key.
    pub fn rotate<R: RngCore + CryptoRng>(
        &mut self,
        rng: &mut R,
        old_signers: usize,
        (n_root, k_root): (usize, u32),
        (n_release, k_release): (usize, u32),
    ) -> Result<(), KeysError> {
        let current = self.check()?;
        let root: Vec<SecretKey> = (0..n_root).map(|_| SecretKey::generate(rng)).collect();
        let release: Vec<SecretKey> = (0..n_release).map(|_| SecretKey::generate(rng)).collect();
        let body = body_for(
            current.body.version + 1,
            &root,
            k_root,
            &release,
            k_release,
            &self.announce,
        );
        let mut signers: Vec<&SecretKey> = self.root.iter().take(old_signers).collect();
        signers.extend(root.iter());
        self.roots.push(Root::sign(&body, &signers));
        self.root = root;
        self.release = release;
        self.check()?;
        Ok(())
    }

    /// Writes the keys and the root chain into `dir` (created; keys mode 0600).
    pub fn save(&self, dir: &Path) -> Result<(), KeysError> {
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| KeysError::Io { path, source }
        };
        fs::create_dir_all(dir).map_err(io(dir))?;
        let write_key = |name: String, k: &SecretKey| -> Result<(), KeysError> {
            let p = dir.join(name);
            fs::write(&p, k.to_bytes()).map_err(io(&p))?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).map_err(io(&p))?;
            }
            Ok(())
        };
        // Old key files of a previous rotation go first.
        if let Ok(rd) = fs::read_dir(dir) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if (n.starts_with("root-") || n.starts_with("release-")) && n.ends_with(".key") {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        for (i, k) in self.root.iter().enumerate() {
            write_key(format!("root-{}.key", i + 1), k)?;
        }
        for (i, k) in self.release.iter().enumerate() {
            write_key(format!("release-{}.key", i + 1), k)?;
        }
        write_key("announce.key".into(), &self.announce)?;
        let chain = Bundle {
            roots: self.roots.clone(),
            release: None,
        }
        .encode_to_vec();
        let p = dir.join("roots");
        fs::write(&p, chain).map_err(io(&p))?;
        Ok(())
    }

    /// Reads keys and root chain written by [`save`](Self::save). Missing root or
    /// release key files are allowed (keys kept elsewhere); the chain must verify.
    pub fn load(dir: &Path) -> Result<Self, KeysError> {
        let read_key = |p: &Path| -> Result<SecretKey, KeysError> {
            let b = fs::read(p).map_err(|source| KeysError::Io {
                path: p.display().to_string(),
                source,
            })?;
            let seed: [u8; 32] = b
                .as_slice()
                .try_into()
                .map_err(|_| KeysError::Invalid(format!("{}: not a 32-byte key", p.display())))?;
            Ok(SecretKey::from_bytes(&seed))
        };
        let numbered = |prefix: &str| -> Result<Vec<SecretKey>, KeysError> {
            let mut out = Vec::new();
            for i in 1.. {
                let p = dir.join(format!("{prefix}-{i}.key"));
                if !p.exists() {
                    break;
                }
                out.push(read_key(&p)?);
            }
            Ok(out)
        };
        let p = dir.join("roots");
        let chain = fs::read(&p).map_err(|source| KeysError::Io {
            path: p.display().to_string(),
            source,
        })?;
        let chain = Bundle::decode_checked(&chain)?;
        let keys = Self {
            root: numbered("root")?,
            release: numbered("release")?,
            announce: read_key(&dir.join("announce.key"))?,
            roots: chain.roots,
        };
        keys.check()?;
        Ok(keys)
    }
}
