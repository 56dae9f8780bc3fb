//! Node identity: Ed25519 keys, [`NodeId`] and signatures.

use std::fmt;
use std::str::FromStr;

use data_encoding::Encoding;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use rand::{CryptoRng, RngCore};

/// Lowercase RFC 4648 base32 without padding: the human form of ids and keys.
fn base32() -> &'static Encoding {
    static ENC: std::sync::OnceLock<Encoding> = std::sync::OnceLock::new();
    ENC.get_or_init(|| {
        let mut spec = data_encoding::Specification::new();
        spec.symbols.push_str("abcdefghijklmnopqrstuvwxyz234567");
        // A fixed, valid specification: building it cannot fail.
        #[allow(clippy::expect_used)]
        spec.encoding()
            .expect("static base32 specification is valid")
    })
}

/// Length of a [`NodeId`] in its text form (52 base32 characters).
pub const NODE_ID_TEXT_LEN: usize = 52;

/// Error parsing a [`NodeId`] from text or bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NodeIdError {
    /// The text or byte string has the wrong length.
    #[error("node id has length {len}, expected {expected}")]
    InvalidLength {
        /// Length that was given.
        len: usize,
        /// Length that was expected.
        expected: usize,
    },
    /// The text contains a character outside lowercase base32 (`a-z`, `2-7`).
    #[error("node id has an invalid character at position {position}")]
    InvalidCharacter {
        /// Byte offset of the first bad character.
        position: usize,
    },
    /// The bytes do not encode a valid Ed25519 public key.
    #[error("node id is not a valid Ed25519 public key")]
    InvalidKey,
}

/// The name of a peer: its Ed25519 public key.
///
/// A `NodeId` always holds a key that decodes to a valid curve point; it is
/// checked when parsed. Its text form is 52 characters of lowercase base32.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId([u8; 32]);

impl NodeId {
    /// Parses a node id from its 32 raw bytes, checking that they are a valid key.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, NodeIdError> {
        VerifyingKey::from_bytes(bytes).map_err(|_| NodeIdError::InvalidKey)?;
        Ok(Self(*bytes))
    }

    /// Parses a node id from a byte slice that must be exactly 32 bytes long.
    pub fn try_from_slice(bytes: &[u8]) -> Result<Self, NodeIdError> {
        let arr: &[u8; 32] = bytes.try_into().map_err(|_| NodeIdError::InvalidLength {
            len: bytes.len(),
            expected: 32,
        })?;
        Self::from_bytes(arr)
    }

    /// The 32 raw bytes of the public key.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A short form for logs and user interfaces: the first 10 base32 characters.
    pub fn fmt_short(&self) -> String {
        let mut s = self.to_string();
        s.truncate(10);
        s
    }

    /// Verifies `signature` over `message` against this key (strict RFC 8032 checks).
    pub fn verify(&self, message: &[u8], signature: &Signature) -> Result<(), SignatureError> {
        let key = VerifyingKey::from_bytes(&self.0).map_err(|_| SignatureError)?;
        let sig = ed25519_dalek::Signature::from_bytes(&signature.0);
        key.verify_strict(message, &sig).map_err(|_| SignatureError)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&base32().encode(&self.0))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.fmt_short())
    }
}

impl FromStr for NodeId {
    type Err = NodeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != NODE_ID_TEXT_LEN {
            return Err(NodeIdError::InvalidLength {
                len: s.len(),
                expected: NODE_ID_TEXT_LEN,
            });
        }
        if let Some(position) = s
            .bytes()
            .position(|b| !(b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b)))
        {
            return Err(NodeIdError::InvalidCharacter { position });
        }
        let mut out = [0u8; 32];
        // 52 base32 characters carry 260 bits; the decoder rejects non-zero trailing bits.
        let n = base32().decode_mut(s.as_bytes(), &mut out).map_err(|e| {
            NodeIdError::InvalidCharacter {
                position: e.error.position,
            }
        })?;
        debug_assert_eq!(n, 32);
        Self::from_bytes(&out)
    }
}

/// An Ed25519 signature (64 bytes).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub [u8; 64]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({})", &base32().encode(&self.0)[..10])
    }
}

/// A signature did not verify against the claimed key and message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("signature verification failed")]
pub struct SignatureError;

/// An Ed25519 secret key: the private half of a node's identity.
///
/// The key material is zeroed on drop and never printed by `Debug`.
#[derive(Clone)]
pub struct SecretKey(SigningKey);

impl SecretKey {
    /// Generates a fresh key from a cryptographically secure random source.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        Self(SigningKey::generate(rng))
    }

    /// Restores a key from its 32-byte seed.
    pub fn from_bytes(seed: &[u8; 32]) -> Self {
        Self(SigningKey::from_bytes(seed))
    }

    /// The 32-byte seed. Handle with care: anyone holding it can act as this node.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The public half: this node's [`NodeId`].
    pub fn node_id(&self) -> NodeId {
        NodeId(self.0.verifying_key().to_bytes())
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> Signature {
        Signature(self.0.sign(message).to_bytes())
    }

    /// The key as an RFC 8410 / RFC 5958 PKCS#8 v1 document (DER), as TLS libraries expect.
    pub fn to_pkcs8_der(&self) -> Vec<u8> {
        // SEQUENCE { INTEGER 0, SEQUENCE { OID 1.3.101.112 }, OCTET STRING { OCTET STRING seed } }
        const PREFIX: [u8; 16] = [
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        let mut der = Vec::with_capacity(48);
        der.extend_from_slice(&PREFIX);
        der.extend_from_slice(&self.0.to_bytes());
        der
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(for {:?})", self.node_id())
    }
}

/// DER prefix of an Ed25519 `SubjectPublicKeyInfo` (RFC 8410), followed by the 32-byte key.
pub(crate) const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

impl NodeId {
    /// The key as a DER `SubjectPublicKeyInfo`, the form TLS raw public keys (RFC 7250) use.
    pub fn to_spki_der(&self) -> Vec<u8> {
        let mut der = Vec::with_capacity(44);
        der.extend_from_slice(&ED25519_SPKI_PREFIX);
        der.extend_from_slice(&self.0);
        der
    }

    /// Parses a DER `SubjectPublicKeyInfo` that must hold an Ed25519 key and nothing else.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, NodeIdError> {
        match der.strip_prefix(&ED25519_SPKI_PREFIX[..]) {
            Some(key) => Self::try_from_slice(key),
            None => Err(NodeIdError::InvalidKey),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;

    fn key(seed: u64) -> SecretKey {
        SecretKey::generate(&mut rand::rngs::StdRng::seed_from_u64(seed))
    }

    #[test]
    fn text_round_trip_and_length() {
        let id = key(1).node_id();
        let s = id.to_string();
        assert_eq!(s.len(), NODE_ID_TEXT_LEN);
        assert!(
            s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        );
        assert_eq!(s.parse::<NodeId>(), Ok(id));
    }

    #[test]
    fn text_errors_are_typed() {
        let s = key(2).node_id().to_string();
        assert!(matches!(
            s[..51].parse::<NodeId>(),
            Err(NodeIdError::InvalidLength { len: 51, .. })
        ));
        let upper = s.to_uppercase();
        assert!(matches!(
            upper.parse::<NodeId>(),
            Err(NodeIdError::InvalidCharacter { position: 0 })
        ));
        let mut bad = s.clone().into_bytes();
        bad[7] = b'1';
        assert!(matches!(
            String::from_utf8(bad).unwrap_or_default().parse::<NodeId>(),
            Err(NodeIdError::InvalidCharacter { position: 7 })
        ));
    }

    #[test]
    fn sign_and_verify() {
        let k = key(3);
        let sig = k.sign(b"hello");
        assert_eq!(k.node_id().verify(b"hello", &sig), Ok(()));
        assert_eq!(k.node_id().verify(b"hellO", &sig), Err(SignatureError));
        assert_eq!(key(4).node_id().verify(b"hello", &sig), Err(SignatureError));
    }

    #[test]
    fn spki_round_trip() {
        let id = key(5).node_id();
        assert_eq!(NodeId::from_spki_der(&id.to_spki_der()), Ok(id));
        assert!(NodeId::from_spki_der(&[0u8; 44]).is_err());
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in ".{0,80}") {
            let _ = s.parse::<NodeId>();
        }

        #[test]
        fn valid_ids_round_trip(seed in any::<u64>()) {
            let id = key(seed).node_id();
            prop_assert_eq!(id.to_string().parse::<NodeId>(), Ok(id));
            prop_assert_eq!(NodeId::try_from_slice(id.as_bytes()), Ok(id));
        }

        #[test]
        fn any_bytes_either_parse_or_give_typed_error(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            match NodeId::try_from_slice(&bytes) {
                Ok(id) => prop_assert_eq!(id.as_bytes().as_slice(), bytes.as_slice()),
                Err(NodeIdError::InvalidLength { .. }) => prop_assert_ne!(bytes.len(), 32),
                Err(NodeIdError::InvalidKey) => prop_assert_eq!(bytes.len(), 32),
                Err(e) => prop_assert!(false, "unexpected {e:?}"),
            }
        }
    }
}
