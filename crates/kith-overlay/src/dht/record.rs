//! Records the DHT stores: immutable values, signed mutable values, signed node
//! addresses, and provider entries; their validation and the local record store.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kith_core::{NodeAddr, NodeId, SecretKey, Signature};

use super::key::Key;

/// Domain separator of the bytes a mutable record's signature covers.
pub const MUTABLE_DOMAIN: &[u8] = b"kith-dht-mutable-v1";
/// Domain separator of the bytes a node-address record's signature covers.
pub const NODE_ADDR_DOMAIN: &[u8] = b"kith-dht-nodeaddr-v1";
/// Hard ceiling on a value (immutable or mutable); [`Limits::max_value_len`] may be lower.
pub const MAX_VALUE_LEN: usize = 16 * 1024;
/// Longest salt of a mutable record.
pub const MAX_SALT_LEN: usize = 64;

/// Size limits applied to records, configurable with safe defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Longest value accepted (default 1000 bytes, as in BEP 44; at most [`MAX_VALUE_LEN`]).
    pub max_value_len: usize,
    /// Longest salt accepted (default and ceiling [`MAX_SALT_LEN`]).
    pub max_salt_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_value_len: 1000,
            max_salt_len: MAX_SALT_LEN,
        }
    }
}

/// Why a record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The value is longer than the limit.
    #[error("value of {len} bytes exceeds the limit of {max}")]
    ValueTooLarge {
        /// Length of the value.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The salt is longer than the limit.
    #[error("salt of {len} bytes exceeds the limit of {max}")]
    SaltTooLarge {
        /// Length of the salt.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The signature does not verify against the record's public key.
    #[error("record signature does not verify")]
    BadSignature,
    /// The record does not belong under the key it was requested or stored for.
    #[error("record does not match the requested key")]
    KeyMismatch,
    /// The stored record has a higher (or the same, with other content) sequence number.
    #[error("stale sequence number {got}: {stored} is stored")]
    StaleSequence {
        /// Sequence number already stored.
        stored: u64,
        /// Sequence number offered.
        got: u64,
    },
    /// Compare-and-swap failed: the stored sequence is not the expected one.
    #[error("compare-and-swap failed: expected sequence {expected}, stored {current:?}")]
    CasMismatch {
        /// The sequence number the writer expected.
        expected: u64,
        /// What is stored, if anything.
        current: Option<u64>,
    },
    /// The secret key does not match the node address being signed.
    #[error("the secret key does not belong to the node address")]
    WrongSigner,
    /// The local store is full.
    #[error("record store is full")]
    StoreFull,
}

/// A value signed by a key pair; the newest (highest `seq`) wins (BEP 44 style).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MutableRecord {
    /// The owner's public key; the record lives at `Key::for_mutable(public_key, salt)`.
    pub public_key: NodeId,
    /// Lets one key own several records.
    pub salt: Bytes,
    /// Sequence number; a higher one replaces a lower one.
    pub seq: u64,
    /// The value.
    pub value: Bytes,
    /// Signature over [`MutableRecord::signed_bytes`].
    pub signature: Signature,
}

impl MutableRecord {
    /// Signs a new record, checking sizes against `limits`.
    pub fn sign(
        secret: &SecretKey,
        salt: impl Into<Bytes>,
        seq: u64,
        value: impl Into<Bytes>,
        limits: &Limits,
    ) -> Result<Self, RecordError> {
        let (salt, value) = (salt.into(), value.into());
        check_sizes(&salt, &value, limits)?;
        let public_key = secret.node_id();
        let signature = secret.sign(&Self::signed_bytes(&public_key, &salt, seq, &value));
        Ok(Self {
            public_key,
            salt,
            seq,
            value,
            signature,
        })
    }

    /// `MUTABLE_DOMAIN || public key || u32 salt length || salt || u64 seq || value`,
    /// all integers big-endian.
    pub fn signed_bytes(public_key: &NodeId, salt: &[u8], seq: u64, value: &[u8]) -> Vec<u8> {
        let mut m =
            Vec::with_capacity(MUTABLE_DOMAIN.len() + 32 + 4 + salt.len() + 8 + value.len());
        m.extend_from_slice(MUTABLE_DOMAIN);
        m.extend_from_slice(public_key.as_bytes());
        m.extend_from_slice(&(salt.len() as u32).to_be_bytes());
        m.extend_from_slice(salt);
        m.extend_from_slice(&seq.to_be_bytes());
        m.extend_from_slice(value);
        m
    }

    /// Where this record lives.
    pub fn key(&self) -> Key {
        Key::for_mutable(&self.public_key, &self.salt)
    }

    /// Checks sizes and the signature.
    pub fn verify(&self, limits: &Limits) -> Result<(), RecordError> {
        check_sizes(&self.salt, &self.value, limits)?;
        let msg = Self::signed_bytes(&self.public_key, &self.salt, self.seq, &self.value);
        self.public_key
            .verify(&msg, &self.signature)
            .map_err(|_| RecordError::BadSignature)
    }
}

fn check_sizes(salt: &[u8], value: &[u8], limits: &Limits) -> Result<(), RecordError> {
    let max_salt = limits.max_salt_len.min(MAX_SALT_LEN);
    if salt.len() > max_salt {
        return Err(RecordError::SaltTooLarge {
            len: salt.len(),
            max: max_salt,
        });
    }
    let max_value = limits.max_value_len.min(MAX_VALUE_LEN);
    if value.len() > max_value {
        return Err(RecordError::ValueTooLarge {
            len: value.len(),
            max: max_value,
        });
    }
    Ok(())
}

/// A node's own, signed statement of how to reach it; lives at `Key::from_node(id)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedNodeAddr {
    /// The addresses; `addr.node_id` is the signer.
    pub addr: NodeAddr,
    /// Sequence number; a higher one replaces a lower one.
    pub seq: u64,
    /// Signature by `addr.node_id` over [`SignedNodeAddr::signed_bytes`].
    pub signature: Signature,
}

impl SignedNodeAddr {
    /// Signs `addr`, which must name `secret`'s own node id.
    pub fn sign(secret: &SecretKey, addr: NodeAddr, seq: u64) -> Result<Self, RecordError> {
        if secret.node_id() != addr.node_id {
            return Err(RecordError::WrongSigner);
        }
        let signature = secret.sign(&Self::signed_bytes(&addr, seq));
        Ok(Self {
            addr,
            seq,
            signature,
        })
    }

    /// `NODE_ADDR_DOMAIN || u64 seq || encoded kith.core.NodeAddr`.
    pub fn signed_bytes(addr: &NodeAddr, seq: u64) -> Vec<u8> {
        let enc = addr.encode();
        let mut m = Vec::with_capacity(NODE_ADDR_DOMAIN.len() + 8 + enc.len());
        m.extend_from_slice(NODE_ADDR_DOMAIN);
        m.extend_from_slice(&seq.to_be_bytes());
        m.extend_from_slice(&enc);
        m
    }

    /// Where this record lives.
    pub fn key(&self) -> Key {
        Key::from_node(&self.addr.node_id)
    }

    /// Checks the signature.
    pub fn verify(&self) -> Result<(), RecordError> {
        self.addr
            .node_id
            .verify(&Self::signed_bytes(&self.addr, self.seq), &self.signature)
            .map_err(|_| RecordError::BadSignature)
    }
}

/// The kinds of record a get can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// [`Record::Immutable`].
    Immutable,
    /// [`Record::Mutable`].
    Mutable,
    /// [`Record::NodeAddr`].
    NodeAddr,
}

/// A record stored in the DHT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A value stored under its BLAKE3 hash.
    Immutable(Bytes),
    /// A signed, versioned value.
    Mutable(MutableRecord),
    /// A node's signed addresses.
    NodeAddr(SignedNodeAddr),
}

impl Record {
    /// Where the record lives.
    pub fn key(&self) -> Key {
        match self {
            Record::Immutable(v) => Key::for_immutable(v),
            Record::Mutable(m) => m.key(),
            Record::NodeAddr(n) => n.key(),
        }
    }

    /// The record's kind.
    pub fn kind(&self) -> RecordKind {
        match self {
            Record::Immutable(_) => RecordKind::Immutable,
            Record::Mutable(_) => RecordKind::Mutable,
            Record::NodeAddr(_) => RecordKind::NodeAddr,
        }
    }

    /// The sequence number of a versioned record.
    pub fn seq(&self) -> Option<u64> {
        match self {
            Record::Immutable(_) => None,
            Record::Mutable(m) => Some(m.seq),
            Record::NodeAddr(n) => Some(n.seq),
        }
    }

    /// Checks sizes and signatures (an immutable value is valid under its own hash).
    pub fn validate(&self, limits: &Limits) -> Result<(), RecordError> {
        match self {
            Record::Immutable(v) => check_sizes(&[], v, limits),
            Record::Mutable(m) => m.verify(limits),
            Record::NodeAddr(n) => n.verify(),
        }
    }

    /// Validates the record and checks it belongs under `key` with kind `kind`.
    pub fn validate_for(
        &self,
        key: &Key,
        kind: RecordKind,
        limits: &Limits,
    ) -> Result<(), RecordError> {
        if self.kind() != kind || self.key() != *key {
            return Err(RecordError::KeyMismatch);
        }
        self.validate(limits)
    }
}

/// How long stored entries live and how many the store holds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StoreLimits {
    pub(crate) max_records: usize,
    pub(crate) max_provider_keys: usize,
    pub(crate) max_providers_per_key: usize,
}

#[derive(Debug)]
struct Stored {
    record: Record,
    expires: Instant,
}

#[derive(Debug)]
struct Provider {
    addr: NodeAddr,
    expires: Instant,
}

/// The records this node stores for others. It trusts nothing: callers validate
/// signatures first, the store enforces sequence order, CAS and capacity.
#[derive(Debug)]
pub(crate) struct RecordStore {
    limits: StoreLimits,
    records: HashMap<Key, Stored>,
    providers: HashMap<Key, Vec<Provider>>,
}

impl RecordStore {
    pub(crate) fn new(limits: StoreLimits) -> Self {
        Self {
            limits,
            records: HashMap::new(),
            providers: HashMap::new(),
        }
    }

    /// Stores an already validated record.
    pub(crate) fn put(
        &mut self,
        now: Instant,
        record: Record,
        cas: Option<u64>,
        ttl: Duration,
    ) -> Result<(), RecordError> {
        let key = record.key();
        let expires = now + ttl;
        let current = self.records.get(&key).and_then(|s| s.record.seq());
        if let Some(expected) = cas {
            if current != Some(expected) {
                return Err(RecordError::CasMismatch { expected, current });
            }
        }
        match self.records.get_mut(&key) {
            Some(stored) => {
                if let (Some(old), Some(new)) = (stored.record.seq(), record.seq()) {
                    if new < old || (new == old && stored.record != record) {
                        return Err(RecordError::StaleSequence {
                            stored: old,
                            got: new,
                        });
                    }
                }
                if stored.record.kind() != record.kind() {
                    return Err(RecordError::KeyMismatch);
                }
                stored.record = record;
                stored.expires = stored.expires.max(expires);
                Ok(())
            }
            None => {
                if self.records.len() >= self.limits.max_records {
                    self.expire(now);
                    if self.records.len() >= self.limits.max_records {
                        return Err(RecordError::StoreFull);
                    }
                }
                self.records.insert(key, Stored { record, expires });
                Ok(())
            }
        }
    }

    pub(crate) fn get(&self, now: Instant, key: &Key) -> Option<&Record> {
        self.records
            .get(key)
            .filter(|s| s.expires > now)
            .map(|s| &s.record)
    }

    pub(crate) fn add_provider(
        &mut self,
        now: Instant,
        key: Key,
        addr: NodeAddr,
        ttl: Duration,
    ) -> Result<(), RecordError> {
        let expires = now + ttl;
        if !self.providers.contains_key(&key)
            && self.providers.len() >= self.limits.max_provider_keys
        {
            self.expire(now);
            if self.providers.len() >= self.limits.max_provider_keys {
                return Err(RecordError::StoreFull);
            }
        }
        let list = self.providers.entry(key).or_default();
        if let Some(p) = list.iter_mut().find(|p| p.addr.node_id == addr.node_id) {
            p.addr = addr;
            p.expires = expires;
            return Ok(());
        }
        list.retain(|p| p.expires > now);
        if list.len() >= self.limits.max_providers_per_key {
            // Replace the entry closest to expiry: fresh announcements win.
            if let Some(oldest) = list.iter_mut().min_by_key(|p| p.expires) {
                *oldest = Provider { addr, expires };
            }
            return Ok(());
        }
        list.push(Provider { addr, expires });
        Ok(())
    }

    pub(crate) fn providers(&self, now: Instant, key: &Key, max: usize) -> Vec<NodeAddr> {
        self.providers
            .get(key)
            .map(|l| {
                l.iter()
                    .filter(|p| p.expires > now)
                    .take(max)
                    .map(|p| p.addr.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Drops every expired entry.
    pub(crate) fn expire(&mut self, now: Instant) {
        self.records.retain(|_, s| s.expires > now);
        self.providers.retain(|_, l| {
            l.retain(|p| p.expires > now);
            !l.is_empty()
        });
    }

    /// Number of records (not provider entries) held.
    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }

    /// Number of provider entries held.
    pub(crate) fn provider_count(&self) -> usize {
        self.providers.values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sk(n: u8) -> SecretKey {
        SecretKey::from_bytes(&[n; 32])
    }

    fn store() -> RecordStore {
        RecordStore::new(StoreLimits {
            max_records: 2,
            max_provider_keys: 2,
            max_providers_per_key: 2,
        })
    }

    #[test]
    fn mutable_sign_verify_and_forgery() {
        let l = Limits::default();
        let r = MutableRecord::sign(&sk(1), &b"salt"[..], 3, &b"v"[..], &l)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.verify(&l), Ok(()));
        let mut forged = r.clone();
        forged.value = Bytes::from_static(b"evil");
        assert_eq!(forged.verify(&l), Err(RecordError::BadSignature));
        let mut forged = r.clone();
        forged.seq = 4;
        assert_eq!(forged.verify(&l), Err(RecordError::BadSignature));
        let mut forged = r.clone();
        forged.public_key = sk(2).node_id();
        assert_eq!(forged.verify(&l), Err(RecordError::BadSignature));
        assert!(matches!(
            MutableRecord::sign(&sk(1), vec![0; 65], 1, &b""[..], &l),
            Err(RecordError::SaltTooLarge { .. })
        ));
        assert!(matches!(
            MutableRecord::sign(&sk(1), &b""[..], 1, vec![0; 1001], &l),
            Err(RecordError::ValueTooLarge { .. })
        ));
    }

    #[test]
    fn node_addr_signing() {
        let a = NodeAddr::new(sk(1).node_id());
        assert_eq!(
            SignedNodeAddr::sign(&sk(2), a.clone(), 1),
            Err(RecordError::WrongSigner)
        );
        let s = SignedNodeAddr::sign(&sk(1), a, 1).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.verify(), Ok(()));
        let mut forged = s.clone();
        forged.addr.direct.push(([192, 0, 2, 1], 1).into());
        assert_eq!(forged.verify(), Err(RecordError::BadSignature));
        let r = Record::NodeAddr(s);
        assert_eq!(
            r.validate_for(&Key([0; 32]), RecordKind::NodeAddr, &Limits::default()),
            Err(RecordError::KeyMismatch)
        );
    }

    #[test]
    fn store_orders_sequences_and_cas() {
        let l = Limits::default();
        let now = Instant::now();
        let ttl = Duration::from_secs(60);
        let rec = |seq, v: &'static [u8]| {
            Record::Mutable(
                MutableRecord::sign(&sk(1), &b""[..], seq, v, &l).unwrap_or_else(|e| panic!("{e}")),
            )
        };
        let mut s = store();
        assert_eq!(s.put(now, rec(5, b"a"), None, ttl), Ok(()));
        assert_eq!(
            s.put(now, rec(4, b"b"), None, ttl),
            Err(RecordError::StaleSequence { stored: 5, got: 4 })
        );
        assert_eq!(
            s.put(now, rec(5, b"b"), None, ttl),
            Err(RecordError::StaleSequence { stored: 5, got: 5 })
        );
        assert_eq!(s.put(now, rec(5, b"a"), None, ttl), Ok(()));
        assert_eq!(
            s.put(now, rec(7, b"c"), Some(4), ttl),
            Err(RecordError::CasMismatch {
                expected: 4,
                current: Some(5)
            })
        );
        assert_eq!(s.put(now, rec(7, b"c"), Some(5), ttl), Ok(()));
        let key = rec(7, b"c").key();
        assert_eq!(s.get(now, &key).and_then(Record::seq), Some(7));
        assert_eq!(s.get(now + ttl, &key), None);
        s.expire(now + ttl);
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn store_capacity_and_providers() {
        let now = Instant::now();
        let ttl = Duration::from_secs(60);
        let mut s = store();
        for v in [&b"1"[..], b"2"] {
            assert_eq!(
                s.put(now, Record::Immutable(Bytes::from(v)), None, ttl),
                Ok(())
            );
        }
        assert_eq!(
            s.put(now, Record::Immutable(Bytes::from_static(b"3")), None, ttl),
            Err(RecordError::StoreFull)
        );
        let k = Key([1; 32]);
        for n in 1..=3 {
            let later = now + Duration::from_secs(u64::from(n));
            assert_eq!(
                s.add_provider(later, k, NodeAddr::new(sk(n).node_id()), ttl),
                Ok(())
            );
        }
        let p = s.providers(now, &k, 10);
        assert_eq!(p.len(), 2);
        assert!(p.iter().any(|a| a.node_id == sk(3).node_id()));
        assert_eq!(s.provider_count(), 2);
    }
}
