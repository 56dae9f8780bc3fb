//! Site names and the signed record that maps a name to a version of the site.
//!
//! A site's name is an Ed25519 public key in kith's text form (52 lowercase base32
//! characters: a valid DNS label, so `<name>.localhost` works in a browser). The record
//! is a DHT mutable value (BEP 44 style) under that key and the salt [`SALT`]: a sequence
//! number and a [`SiteValue`] naming the collection root of that version and a few peers
//! that serve it. The same signed record travels on the site's gossip topic as a
//! [`SiteUpdate`], so followers switch without waiting for the DHT.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use kith_core::{NodeAddr, NodeId, SecretKey, Signature};
use kith_overlay::dht::record::{Limits, MutableRecord, RecordError};
use kith_overlay::gossip::TopicId;
use kith_store::Hash;
use prost::Message;

/// The salt of every site record: one key names one site.
pub const SALT: &[u8] = b"kith/site/1";

/// Most provider hints a record carries (fewer when they do not fit the DHT's value cap).
pub const MAX_PROVIDER_HINTS: usize = 4;

/// Longest gossip payload a [`SiteUpdate`] may have: the DHT value cap plus the key,
/// signature and framing.
pub const MAX_UPDATE_LEN: usize = 1200;

/// A site's name: the public key its records are signed with.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SiteName(pub NodeId);

impl SiteName {
    /// The name of the site `key` publishes.
    pub fn of(key: &SecretKey) -> Self {
        Self(key.node_id())
    }

    /// The gossip topic on which new versions of this site are pushed.
    pub fn topic(&self) -> TopicId {
        let mut h = blake3::Hasher::new();
        h.update(b"kith/site/1 topic ");
        h.update(self.0.as_bytes());
        TopicId(*h.finalize().as_bytes())
    }
}

impl fmt::Display for SiteName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for SiteName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SiteName({})", self.0.fmt_short())
    }
}

/// Why a site name did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a site name (52 base32 characters of an Ed25519 public key): {0}")]
pub struct SiteNameError(String);

impl FromStr for SiteName {
    type Err = SiteNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Host names arrive in any case; names are lowercase.
        s.to_ascii_lowercase()
            .parse::<NodeId>()
            .map(SiteName)
            .map_err(|e| SiteNameError(e.to_string()))
    }
}

/// The value of a site record: which collection is the site, and who serves it.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct SiteValue {
    /// The BLAKE3 hash of the site's collection manifest (32 bytes).
    #[prost(bytes = "vec", tag = "1")]
    pub root: Vec<u8>,
    /// Peers that serve this version, each a NodeAddr in its wire form (hints: the
    /// DHT's provider records find the others).
    #[prost(bytes = "vec", repeated, tag = "2")]
    pub providers: Vec<Vec<u8>>,
}

/// A site record in gossip: the signed DHT record, whole.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct SiteUpdate {
    /// The site's public key (32 bytes).
    #[prost(bytes = "vec", tag = "1")]
    pub public_key: Vec<u8>,
    /// The record's sequence number.
    #[prost(uint64, tag = "2")]
    pub seq: u64,
    /// An encoded [`SiteValue`].
    #[prost(bytes = "vec", tag = "3")]
    pub value: Vec<u8>,
    /// Ed25519 signature of the DHT's mutable-record bytes (64 bytes).
    #[prost(bytes = "vec", tag = "4")]
    pub signature: Vec<u8>,
}

impl SiteUpdate {
    /// Decodes a gossip payload without checking it (tests and tools; followers use
    /// [`SiteRecord::from_update`]). Malformed bytes give an empty update.
    pub fn decode_from(bytes: &[u8]) -> Self {
        Self::decode(bytes).unwrap_or_default()
    }

    /// Encodes it.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.encode_to_vec()
    }
}

/// Why a site record was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SiteRecordError {
    /// The record is not under the site salt.
    #[error("record is not a site record (wrong salt)")]
    WrongSalt,
    /// The record is signed by another key than the site's.
    #[error("record signed by {found}, not by the site {expected}")]
    WrongKey {
        /// The site asked for.
        expected: SiteName,
        /// The key in the record.
        found: SiteName,
    },
    /// Size or signature check failed.
    #[error("record check failed: {0}")]
    Record(#[from] RecordError),
    /// The value or the gossip payload does not decode.
    #[error("malformed site record: {0}")]
    Malformed(String),
    /// The payload is longer than [`MAX_UPDATE_LEN`].
    #[error("site update of {0} bytes exceeds the {MAX_UPDATE_LEN}-byte limit")]
    TooLarge(usize),
}

/// A verified site record: name, version and content.
#[derive(Clone, PartialEq, Eq)]
pub struct SiteRecord {
    /// The site.
    pub name: SiteName,
    /// Version: a higher one replaces a lower one.
    pub seq: u64,
    /// The collection that is this version of the site.
    pub root: Hash,
    /// Peers that served this version when it was signed.
    pub providers: Vec<NodeAddr>,
    record: MutableRecord,
}

impl fmt::Debug for SiteRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SiteRecord")
            .field("name", &self.name)
            .field("seq", &self.seq)
            .field("root", &self.root)
            .field("providers", &self.providers.len())
            .finish()
    }
}

impl SiteRecord {
    /// Signs version `seq` of the site `key` publishes, naming collection `root`. As many
    /// of `providers` (up to [`MAX_PROVIDER_HINTS`]) are kept as fit the DHT's value cap.
    pub fn sign(
        key: &SecretKey,
        seq: u64,
        root: Hash,
        providers: &[NodeAddr],
        limits: &Limits,
    ) -> Result<Self, SiteRecordError> {
        let mut hints: Vec<Vec<u8>> = providers
            .iter()
            .take(MAX_PROVIDER_HINTS)
            .map(NodeAddr::encode)
            .collect();
        let value = loop {
            let value = SiteValue {
                root: root.as_bytes().to_vec(),
                providers: hints.clone(),
            }
            .encode_to_vec();
            if value.len() <= limits.max_value_len || hints.pop().is_none() {
                break value;
            }
        };
        let record = MutableRecord::sign(key, Bytes::from_static(SALT), seq, value, limits)?;
        Self::from_record(SiteName::of(key), record, limits)
    }

    /// Checks a record fetched from the DHT for site `name`: salt, key, size and
    /// signature, then decodes its value.
    pub fn from_record(
        name: SiteName,
        record: MutableRecord,
        limits: &Limits,
    ) -> Result<Self, SiteRecordError> {
        if record.salt.as_ref() != SALT {
            return Err(SiteRecordError::WrongSalt);
        }
        if record.public_key != name.0 {
            return Err(SiteRecordError::WrongKey {
                expected: name,
                found: SiteName(record.public_key),
            });
        }
        record.verify(limits)?;
        let value = SiteValue::decode(record.value.as_ref())
            .map_err(|e| SiteRecordError::Malformed(e.to_string()))?;
        let root: [u8; 32] = value
            .root
            .as_slice()
            .try_into()
            .map_err(|_| SiteRecordError::Malformed("root is not 32 bytes".into()))?;
        let providers = value
            .providers
            .iter()
            .take(MAX_PROVIDER_HINTS)
            .filter_map(|b| NodeAddr::decode(b).ok())
            .collect();
        Ok(Self {
            name,
            seq: record.seq,
            root: Hash::from(root),
            providers,
            record,
        })
    }

    /// Decodes and checks a gossip payload for site `name`.
    pub fn from_update(
        name: SiteName,
        payload: &[u8],
        limits: &Limits,
    ) -> Result<Self, SiteRecordError> {
        if payload.len() > MAX_UPDATE_LEN {
            return Err(SiteRecordError::TooLarge(payload.len()));
        }
        let u =
            SiteUpdate::decode(payload).map_err(|e| SiteRecordError::Malformed(e.to_string()))?;
        let key: [u8; 32] = u
            .public_key
            .as_slice()
            .try_into()
            .map_err(|_| SiteRecordError::Malformed("key is not 32 bytes".into()))?;
        let signature: [u8; 64] = u
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| SiteRecordError::Malformed("signature is not 64 bytes".into()))?;
        let public_key =
            NodeId::from_bytes(&key).map_err(|e| SiteRecordError::Malformed(e.to_string()))?;
        let record = MutableRecord {
            public_key,
            salt: Bytes::from_static(SALT),
            seq: u.seq,
            value: u.value.into(),
            signature: Signature(signature),
        };
        Self::from_record(name, record, limits)
    }

    /// The gossip payload carrying this record.
    pub fn to_update(&self) -> Vec<u8> {
        SiteUpdate {
            public_key: self.name.0.as_bytes().to_vec(),
            seq: self.seq,
            value: self.record.value.to_vec(),
            signature: self.record.signature.0.to_vec(),
        }
        .encode_to_vec()
    }

    /// The signed DHT record.
    pub fn record(&self) -> &MutableRecord {
        &self.record
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(n: u8) -> SecretKey {
        SecretKey::from_bytes(&[n; 32])
    }

    #[test]
    fn round_trips_through_gossip_and_checks_the_key() {
        let k = key(1);
        let name = SiteName::of(&k);
        let addr =
            NodeAddr::new(key(2).node_id()).with_direct(["127.0.0.1:4000".parse().expect("addr")]);
        let rec = SiteRecord::sign(
            &k,
            7,
            Hash::from([9; 32]),
            std::slice::from_ref(&addr),
            &Limits::default(),
        )
        .expect("sign");
        let back = SiteRecord::from_update(name, &rec.to_update(), &Limits::default()).expect("ok");
        assert_eq!(back, rec);
        assert_eq!(back.providers, vec![addr]);
        assert_eq!(back.seq, 7);
        // The same record checked for another site is refused.
        let other = SiteName::of(&key(3));
        assert!(matches!(
            SiteRecord::from_update(other, &rec.to_update(), &Limits::default()),
            Err(SiteRecordError::WrongKey { .. })
        ));
    }

    #[test]
    fn a_tampered_record_fails_its_signature() {
        let k = key(1);
        let rec =
            SiteRecord::sign(&k, 7, Hash::from([9; 32]), &[], &Limits::default()).expect("sign");
        let mut u = SiteUpdate::decode(rec.to_update().as_slice()).expect("decode");
        u.seq = 8;
        assert!(matches!(
            SiteRecord::from_update(rec.name, &u.encode_to_vec(), &Limits::default()),
            Err(SiteRecordError::Record(RecordError::BadSignature))
        ));
    }

    #[test]
    fn hints_are_dropped_until_the_value_fits() {
        let k = key(1);
        let fat = NodeAddr::new(key(2).node_id()).with_direct(
            (0..40u16).map(|p| std::net::SocketAddr::from(([127, 0, 0, 1], 4000 + p))),
        );
        let rec = SiteRecord::sign(
            &k,
            1,
            Hash::from([1; 32]),
            &[fat.clone(), fat],
            &Limits::default(),
        )
        .expect("sign");
        assert!(rec.record().value.len() <= Limits::default().max_value_len);
    }

    #[test]
    fn names_are_dns_labels() {
        let name = SiteName::of(&key(5)).to_string();
        assert!(name.len() <= 63);
        assert!(
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        );
        assert_eq!(
            name.to_uppercase().parse::<SiteName>(),
            Ok(SiteName::of(&key(5)))
        );
    }

    proptest! {
        #[test]
        fn any_payload_is_checked_not_trusted(bytes in proptest::collection::vec(any::<u8>(), 0..1500)) {
            let name = SiteName::of(&key(1));
            // Never panics; random bytes never pass the signature check.
            prop_assert!(SiteRecord::from_update(name, &bytes, &Limits::default()).is_err());
        }
    }
}
