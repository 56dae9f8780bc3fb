//! Channel metadata: TUF's roles in a compact, threshold-signed form.
//!
//! * **Root** ([`RootBody`]): the channel's trust. `n` root keys with a threshold `k`, the
//!   release keys with their threshold, and the announce key. Version 1 defines the
//!   channel: its hash is part of the channel's name. A new root (version + 1) must be
//!   signed by a threshold of the old root keys *and* of its own.
//! * **Release** ([`ReleaseBody`], TUF's targets and snapshot in one): the version, an
//!   expiry, the collection that holds the release, and every file with its size and
//!   BLAKE3 hash; signed by a threshold of the release keys.
//! * **Announce** (TUF's timestamp): an online key that signs the DHT record and gossip
//!   message pointing at the newest [`Bundle`]. It vouches for freshness only: what it
//!   points at is checked against the root and release thresholds.
//!
//! A [`Bundle`] (the root chain and one release) is one blob, fetched through kith-share
//! like any other.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use kith_core::{NodeId, SecretKey, Signature};
use kith_store::Hash;
use kith_store::collection::Manifest;
use prost::Message;

/// Largest bundle accepted, in bytes.
pub const MAX_BUNDLE_LEN: usize = 1 << 20;
/// Most keys a role may list.
pub const MAX_KEYS: usize = 64;
/// Most root documents a bundle may carry (rotations since the channel began).
pub const MAX_ROOTS: usize = 64;

const ROOT_DOMAIN: &[u8] = b"kith/update/1 root\0";
const RELEASE_DOMAIN: &[u8] = b"kith/update/1 release\0";

pub use crate::wire::{Bundle, FileEntry, KeySignature, ReleaseBody, RootBody, SignedDoc};

/// Why metadata was refused. Nothing is installed on any of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MetadataError {
    /// Bytes that do not decode, or a field of the wrong size.
    #[error("malformed metadata: {0}")]
    Malformed(String),
    /// Larger than [`MAX_BUNDLE_LEN`] or another cap.
    #[error("metadata too large: {0}")]
    TooLarge(String),
    /// The first root is not the one the channel is named by.
    #[error("the root does not match the channel")]
    WrongChannel,
    /// Fewer valid signatures by distinct listed keys than the threshold.
    #[error("{role} has {valid} valid signatures of distinct keys, {threshold} needed")]
    BelowThreshold {
        /// Which document.
        role: &'static str,
        /// Valid signatures by distinct keys of the role.
        valid: usize,
        /// Needed.
        threshold: usize,
    },
    /// A root rotation that skips or repeats a version.
    #[error("root version {got} follows {trusted}; it must be {trusted} + 1")]
    RootVersion {
        /// The trusted root's version.
        trusted: u64,
        /// The offered one.
        got: u64,
    },
    /// A role with an impossible threshold (0, or more than its keys).
    #[error("invalid threshold {threshold} for {keys} keys")]
    BadThreshold {
        /// The threshold.
        threshold: u32,
        /// Keys listed.
        keys: usize,
    },
    /// Metadata past its expiry: the channel may be frozen by an attacker.
    #[error("{role} expired at {expires_ms} ms (now {now_ms} ms): the channel may be frozen")]
    Expired {
        /// Which document.
        role: &'static str,
        /// Its expiry.
        expires_ms: u64,
        /// Now.
        now_ms: u64,
    },
    /// A release not newer than the installed one (a rollback attack, or a replay).
    #[error("release {offered} is not newer than the installed {installed}")]
    Rollback {
        /// The offered version.
        offered: u64,
        /// The installed version.
        installed: u64,
    },
    /// The release's collection differs from its file list (files of two releases, or a
    /// file larger or smaller than declared).
    #[error("the release's files do not match its metadata: {0}")]
    FileMismatch(String),
}

fn key_of(bytes: &[u8]) -> Result<NodeId, MetadataError> {
    let arr: [u8; 32] = bytes
        .try_into()
        .map_err(|_| MetadataError::Malformed("a key is not 32 bytes".into()))?;
    NodeId::from_bytes(&arr).map_err(|e| MetadataError::Malformed(e.to_string()))
}

fn keys_of(list: &[Vec<u8>]) -> Result<Vec<NodeId>, MetadataError> {
    if list.len() > MAX_KEYS {
        return Err(MetadataError::TooLarge(format!("{} keys", list.len())));
    }
    list.iter().map(|k| key_of(k)).collect()
}

fn check_threshold(threshold: u32, keys: usize) -> Result<usize, MetadataError> {
    if threshold == 0 || threshold as usize > keys {
        return Err(MetadataError::BadThreshold { threshold, keys });
    }
    Ok(threshold as usize)
}

/// Counts valid signatures over `domain || body` by distinct keys of `keys`.
fn count_valid(doc: &SignedDoc, domain: &[u8], keys: &[NodeId]) -> usize {
    let mut msg = domain.to_vec();
    msg.extend_from_slice(&doc.body);
    let mut seen = HashSet::new();
    for s in doc.signatures.iter().take(MAX_KEYS * 2) {
        let Ok(key) = key_of(&s.key) else { continue };
        let Ok(sig): Result<[u8; 64], _> = s.signature.as_slice().try_into() else {
            continue;
        };
        if keys.contains(&key) && !seen.contains(&key) && key.verify(&msg, &Signature(sig)).is_ok()
        {
            seen.insert(key);
        }
    }
    seen.len()
}

fn sign_doc(body: Vec<u8>, domain: &[u8], keys: &[&SecretKey]) -> SignedDoc {
    let mut msg = domain.to_vec();
    msg.extend_from_slice(&body);
    let signatures = keys
        .iter()
        .map(|k| KeySignature {
            key: k.node_id().as_bytes().to_vec(),
            signature: k.sign(&msg).0.to_vec(),
        })
        .collect();
    SignedDoc { body, signatures }
}

/// A root whose signatures were checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root {
    /// Its body.
    pub body: RootBody,
    /// Root keys.
    pub root_keys: Vec<NodeId>,
    /// Release keys.
    pub release_keys: Vec<NodeId>,
    /// The announce key.
    pub announce_key: NodeId,
    /// BLAKE3 of the encoded body.
    pub hash: Hash,
}

impl Root {
    fn parse(doc: &SignedDoc) -> Result<Self, MetadataError> {
        let body = RootBody::decode_bounded(doc.body.as_slice())?;
        let root_keys = keys_of(&body.root_keys)?;
        let release_keys = keys_of(&body.release_keys)?;
        check_threshold(body.root_threshold, root_keys.len())?;
        check_threshold(body.release_threshold, release_keys.len())?;
        let announce_key = key_of(&body.announce_key)?;
        Ok(Self {
            hash: Hash::from(*blake3::hash(&doc.body).as_bytes()),
            body,
            root_keys,
            release_keys,
            announce_key,
        })
    }

    fn self_signed(&self, doc: &SignedDoc) -> Result<(), MetadataError> {
        let valid = count_valid(doc, ROOT_DOMAIN, &self.root_keys);
        let threshold = self.body.root_threshold as usize;
        if valid < threshold {
            return Err(MetadataError::BelowThreshold {
                role: "root",
                valid,
                threshold,
            });
        }
        Ok(())
    }

    /// Checks version 1 of a channel's root: its hash must be `channel`'s, and a
    /// threshold of its own root keys must sign it.
    pub fn verify_first(doc: &SignedDoc, channel: &ChannelId) -> Result<Self, MetadataError> {
        let root = Self::parse(doc)?;
        if root.hash != channel.root || root.body.version != 1 {
            return Err(MetadataError::WrongChannel);
        }
        root.self_signed(doc)?;
        Ok(root)
    }

    /// Checks a rotation from this (trusted) root: the next version, signed by a
    /// threshold of this root's keys and of its own.
    pub fn verify_next(&self, doc: &SignedDoc) -> Result<Self, MetadataError> {
        let next = Self::parse(doc)?;
        if next.body.version != self.body.version + 1 {
            return Err(MetadataError::RootVersion {
                trusted: self.body.version,
                got: next.body.version,
            });
        }
        let valid = count_valid(doc, ROOT_DOMAIN, &self.root_keys);
        let threshold = self.body.root_threshold as usize;
        if valid < threshold {
            return Err(MetadataError::BelowThreshold {
                role: "root rotation (old keys)",
                valid,
                threshold,
            });
        }
        next.self_signed(doc)?;
        Ok(next)
    }

    /// Signs a root body with `keys` (a new channel's root, or a rotation: then sign
    /// with old and new root keys).
    pub fn sign(body: &RootBody, keys: &[&SecretKey]) -> SignedDoc {
        sign_doc(body.encode_to_vec(), ROOT_DOMAIN, keys)
    }
}

/// A release whose signatures and freshness were checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// Its body.
    pub body: ReleaseBody,
    /// The collection holding it.
    pub collection: Hash,
}

impl Release {
    /// Signs a release body with `keys`.
    pub fn sign(body: &ReleaseBody, keys: &[&SecretKey]) -> SignedDoc {
        sign_doc(body.encode_to_vec(), RELEASE_DOMAIN, keys)
    }

    /// Checks that the release's collection manifest lists exactly its files: same paths,
    /// sizes, hashes and exec bits. A file of another release, or one larger than
    /// declared, fails here.
    pub fn check_manifest(&self, manifest: &Manifest) -> Result<(), MetadataError> {
        if manifest.entries.len() != self.body.files.len() {
            return Err(MetadataError::FileMismatch(format!(
                "{} files in the collection, {} in the metadata",
                manifest.entries.len(),
                self.body.files.len()
            )));
        }
        for (m, f) in manifest.entries.iter().zip(&self.body.files) {
            if m.path != f.path {
                return Err(MetadataError::FileMismatch(format!(
                    "{} where the metadata has {}",
                    m.path, f.path
                )));
            }
            if m.size != f.size {
                return Err(MetadataError::FileMismatch(format!(
                    "{}: {} bytes, declared {}",
                    m.path, m.size, f.size
                )));
            }
            if m.hash != f.hash || m.executable != f.executable {
                return Err(MetadataError::FileMismatch(format!(
                    "{}: not the declared file",
                    m.path
                )));
            }
        }
        Ok(())
    }
}

/// A channel's identity: the announce key (where its newest release is announced) and
/// the hash of its version-1 root (what it trusts). Text form: `kithup` + base32.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChannelId {
    /// The announce key of root version 1.
    pub announce: NodeId,
    /// BLAKE3 of root version 1's body.
    pub root: Hash,
}

const CHANNEL_PREFIX: &str = "kithup";

fn b32() -> data_encoding::Encoding {
    let mut spec = data_encoding::Specification::new();
    spec.symbols.push_str("abcdefghijklmnopqrstuvwxyz234567");
    // A fixed, valid specification.
    #[allow(clippy::expect_used)]
    spec.encoding().expect("valid base32 specification")
}

impl fmt::Display for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut bytes = self.announce.as_bytes().to_vec();
        bytes.extend_from_slice(self.root.as_bytes());
        write!(f, "{CHANNEL_PREFIX}{}", b32().encode(&bytes))
    }
}

impl fmt::Debug for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChannelId({})", &self.to_string()[..16])
    }
}

/// Why a channel name did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a channel name (kithup…, as `kith update init` printed it): {0}")]
pub struct ChannelIdError(String);

impl FromStr for ChannelId {
    type Err = ChannelIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .trim()
            .strip_prefix(CHANNEL_PREFIX)
            .ok_or_else(|| ChannelIdError("missing the kithup prefix".into()))?;
        let bytes = b32()
            .decode(rest.as_bytes())
            .map_err(|e| ChannelIdError(e.to_string()))?;
        if bytes.len() != 64 {
            return Err(ChannelIdError(format!("{} bytes, not 64", bytes.len())));
        }
        let announce = key_of(&bytes[..32]).map_err(|e| ChannelIdError(e.to_string()))?;
        let mut root = [0u8; 32];
        root.copy_from_slice(&bytes[32..]);
        Ok(Self {
            announce,
            root: Hash::from(root),
        })
    }
}

impl ChannelId {
    /// The gossip topic new releases are pushed on.
    pub fn topic(&self) -> kith_overlay::gossip::TopicId {
        let mut h = blake3::Hasher::new();
        h.update(b"kith/update/1 topic ");
        h.update(self.root.as_bytes());
        kith_overlay::gossip::TopicId(*h.finalize().as_bytes())
    }
}

/// A bundle whose root chain and release were checked, for a channel at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The newest root of the chain.
    pub root: Root,
    /// The release.
    pub release: Release,
}

impl Bundle {
    /// Decodes a bundle, refusing oversized ones.
    pub fn decode_checked(bytes: &[u8]) -> Result<Self, MetadataError> {
        if bytes.len() > MAX_BUNDLE_LEN {
            return Err(MetadataError::TooLarge(format!(
                "bundle of {} bytes",
                bytes.len()
            )));
        }
        // Lists counted before decoding: roots, and each signed document's signatures.
        counted(bytes, &[], 1, MAX_ROOTS, "roots")?;
        counted(bytes, &[1], 2, MAX_ROOTS * MAX_KEYS, "root signatures")?;
        counted(bytes, &[2], 2, MAX_KEYS, "release signatures")?;
        let b = Self::decode(bytes).map_err(|e| MetadataError::Malformed(e.to_string()))?;
        if b.roots.len() > MAX_ROOTS {
            return Err(MetadataError::TooLarge(format!("{} roots", b.roots.len())));
        }
        Ok(b)
    }

    /// Checks everything a follower must before fetching the release: the root chain
    /// from the channel's first root, the release's threshold, channel and expiry, and
    /// that it is newer than `installed`.
    pub fn verify(
        &self,
        channel: &ChannelId,
        now_ms: u64,
        installed: Option<u64>,
    ) -> Result<Verified, MetadataError> {
        let mut roots = self.roots.iter();
        let first = roots
            .next()
            .ok_or_else(|| MetadataError::Malformed("no root".into()))?;
        let mut root = Root::verify_first(first, channel)?;
        for doc in roots {
            root = root.verify_next(doc)?;
        }
        if root.body.expires_ms <= now_ms {
            return Err(MetadataError::Expired {
                role: "root",
                expires_ms: root.body.expires_ms,
                now_ms,
            });
        }
        let doc = self
            .release
            .as_ref()
            .ok_or_else(|| MetadataError::Malformed("no release".into()))?;
        let valid = count_valid(doc, RELEASE_DOMAIN, &root.release_keys);
        let threshold = root.body.release_threshold as usize;
        if valid < threshold {
            return Err(MetadataError::BelowThreshold {
                role: "release",
                valid,
                threshold,
            });
        }
        let body = ReleaseBody::decode_bounded(doc.body.as_slice())?;
        if body.channel.as_slice() != channel.root.as_bytes() {
            return Err(MetadataError::WrongChannel);
        }
        if body.expires_ms <= now_ms {
            return Err(MetadataError::Expired {
                role: "release",
                expires_ms: body.expires_ms,
                now_ms,
            });
        }
        if let Some(installed) = installed {
            if body.version <= installed {
                return Err(MetadataError::Rollback {
                    offered: body.version,
                    installed,
                });
            }
        }
        let collection: [u8; 32] = body
            .collection
            .as_slice()
            .try_into()
            .map_err(|_| MetadataError::Malformed("collection is not 32 bytes".into()))?;
        Ok(Verified {
            root,
            release: Release {
                body,
                collection: Hash::from(collection),
            },
        })
    }
}

/// Rejects a list longer than `max` at `path`/`field` of `bytes` before prost
/// materialises it: an empty entry costs a peer two bytes and us a whole value.
fn counted(
    bytes: &[u8],
    path: &[u32],
    field: u32,
    max: usize,
    what: &str,
) -> Result<(), MetadataError> {
    let n = kith_core::scan::count(bytes, path, field)
        .map_err(|e| MetadataError::Malformed(e.to_string()))?;
    if n > max {
        return Err(MetadataError::TooLarge(format!("{n} {what}")));
    }
    Ok(())
}

impl RootBody {
    /// Decodes a root body with its key lists bounded ([`MAX_KEYS`]) before decoding.
    pub(crate) fn decode_bounded(bytes: &[u8]) -> Result<Self, MetadataError> {
        counted(bytes, &[], 3, MAX_KEYS, "root keys")?;
        counted(bytes, &[], 5, MAX_KEYS, "release keys")?;
        Self::decode(bytes).map_err(|e| MetadataError::Malformed(e.to_string()))
    }
}

impl ReleaseBody {
    /// Decodes a release body with its file list bounded before decoding: every file
    /// entry carries a 32-byte hash, so a body of N bytes lists at most N / 36 files.
    pub(crate) fn decode_bounded(bytes: &[u8]) -> Result<Self, MetadataError> {
        counted(bytes, &[], 5, bytes.len() / 36, "files")?;
        Self::decode(bytes).map_err(|e| MetadataError::Malformed(e.to_string()))
    }
}

#[cfg(test)]
mod bounded_tests {
    use super::*;
    use kith_core::scan::length_delimited as field;

    #[test]
    fn bodies_with_more_entries_than_their_type_allows_are_refused_before_decoding() {
        // 65 root keys.
        let keys = field(3, &[1; 32]).repeat(MAX_KEYS + 1);
        assert!(matches!(
            RootBody::decode_bounded(&keys),
            Err(MetadataError::TooLarge(_))
        ));
        assert!(RootBody::decode_bounded(&field(3, &[1; 32]).repeat(MAX_KEYS)).is_ok());
        // Empty file entries: more than the bytes can hold valid ones.
        let files = field(5, &[]).repeat(100);
        assert!(matches!(
            ReleaseBody::decode_bounded(&files),
            Err(MetadataError::TooLarge(_))
        ));
        // Valid-sized entries pass the count.
        let mut entry = field(1, b"bin/app");
        entry.extend(field(3, &[9; 32]));
        let files = field(5, &entry).repeat(10);
        assert_eq!(
            ReleaseBody::decode_bounded(&files)
                .map(|b| b.files.len())
                .ok(),
            Some(10)
        );
    }
}
