//! [`Ticket`]: one copy-pasteable string that names a share and where to get it.
//!
//! # Text form
//!
//! `kith` followed by lowercase RFC 4648 base32 (no padding) of:
//!
//! ```text
//! version     1 byte, 1
//! kind        1 byte: 0 raw blob, 1 collection
//! root        32 bytes: the BLAKE3 hash of the blob or of the collection's manifest
//! count       1 byte: number of providers (at most MAX_TICKET_PROVIDERS)
//! providers   count × (u16 big-endian length, then a NodeAddr in its wire form)
//! ```
//!
//! A ticket with no providers is valid: the downloader finds providers through the DHT
//! or the LAN. The whole text is at most [`MAX_TICKET_LEN`] characters.

use std::fmt;
use std::str::FromStr;

use data_encoding::{Encoding, Specification};
use kith_core::{NodeAddr, NodeAddrError};
use kith_store::{BlobFormat, Hash};

/// The text prefix of every ticket.
pub const TICKET_PREFIX: &str = "kith";
/// Most providers a ticket carries.
pub const MAX_TICKET_PROVIDERS: usize = 8;
/// Longest ticket text accepted, in characters.
pub const MAX_TICKET_LEN: usize = 8192;
const VERSION: u8 = 1;

fn base32() -> Encoding {
    let mut spec = Specification::new();
    spec.symbols.push_str("abcdefghijklmnopqrstuvwxyz234567");
    // A fixed, valid specification: this cannot fail.
    spec.encoding()
        .unwrap_or_else(|_| data_encoding::BASE32_NOPAD.clone())
}

/// Why a ticket string was rejected. Each variant says what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TicketError {
    /// The text does not start with `kith`.
    #[error("not a kith ticket: it must start with \"kith\"")]
    Prefix,
    /// The text is longer than [`MAX_TICKET_LEN`].
    #[error("ticket is {len} characters long, more than the limit of {MAX_TICKET_LEN}")]
    TooLong {
        /// Its length.
        len: usize,
    },
    /// A character outside lowercase base32, or a length base32 cannot produce.
    #[error(
        "ticket is damaged: invalid character or length at position {position} (was it cut off or mistyped?)"
    )]
    Encoding {
        /// Position in the text (after the prefix) where decoding failed.
        position: usize,
    },
    /// A ticket version this build does not know.
    #[error("ticket version {0} is not supported (this build reads version {VERSION})")]
    Version(u8),
    /// The kind byte is neither raw (0) nor collection (1).
    #[error("ticket names an unknown kind of content ({0})")]
    Kind(u8),
    /// The ticket ends before its fields do.
    #[error("ticket is truncated: it ends inside the {0}")]
    Truncated(&'static str),
    /// More providers than [`MAX_TICKET_PROVIDERS`].
    #[error("ticket lists {0} providers, more than the limit of {MAX_TICKET_PROVIDERS}")]
    TooManyProviders(usize),
    /// A provider address does not decode.
    #[error("provider {index} of the ticket is invalid: {source}")]
    Provider {
        /// Which provider.
        index: usize,
        /// What is wrong with it.
        source: NodeAddrError,
    },
    /// Bytes after the last provider.
    #[error("ticket has {0} unexpected bytes at its end")]
    Trailing(usize),
}

/// A share and where to get it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    /// The root hash: the blob's, or the collection manifest's.
    pub root: Hash,
    /// Whether `root` is a raw blob or a collection.
    pub format: BlobFormat,
    /// Nodes that provide it (may be empty).
    pub providers: Vec<NodeAddr>,
}

impl Ticket {
    /// A ticket for `root` of `format`, provided by `providers` (at most
    /// [`MAX_TICKET_PROVIDERS`] are kept).
    pub fn new(root: Hash, format: BlobFormat, mut providers: Vec<NodeAddr>) -> Self {
        providers.truncate(MAX_TICKET_PROVIDERS);
        Self {
            root,
            format,
            providers,
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.push(VERSION);
        out.push(match self.format {
            BlobFormat::Raw => 0,
            BlobFormat::Collection => 1,
        });
        out.extend_from_slice(self.root.as_bytes());
        let providers = &self.providers[..self.providers.len().min(MAX_TICKET_PROVIDERS)];
        out.push(providers.len() as u8);
        for p in providers {
            let enc = p.encode();
            out.extend_from_slice(&(enc.len() as u16).to_be_bytes());
            out.extend_from_slice(&enc);
        }
        out
    }

    fn from_bytes(b: &[u8]) -> Result<Self, TicketError> {
        let mut rest = b;
        let mut take = |n: usize, what: &'static str| -> Result<&[u8], TicketError> {
            if rest.len() < n {
                return Err(TicketError::Truncated(what));
            }
            let (a, r) = rest.split_at(n);
            rest = r;
            Ok(a)
        };
        let version = take(1, "version")?[0];
        if version != VERSION {
            return Err(TicketError::Version(version));
        }
        let format = match take(1, "kind")?[0] {
            0 => BlobFormat::Raw,
            1 => BlobFormat::Collection,
            k => return Err(TicketError::Kind(k)),
        };
        let mut root = [0u8; 32];
        root.copy_from_slice(take(32, "root hash")?);
        let count = take(1, "provider count")?[0] as usize;
        if count > MAX_TICKET_PROVIDERS {
            return Err(TicketError::TooManyProviders(count));
        }
        let mut providers = Vec::with_capacity(count);
        for index in 0..count {
            let len = take(2, "provider list")?;
            let len = u16::from_be_bytes([len[0], len[1]]) as usize;
            let enc = take(len, "provider list")?;
            let addr =
                NodeAddr::decode(enc).map_err(|source| TicketError::Provider { index, source })?;
            providers.push(addr);
        }
        if !rest.is_empty() {
            return Err(TicketError::Trailing(rest.len()));
        }
        Ok(Self {
            root: Hash::from_bytes(root),
            format,
            providers,
        })
    }
}

impl fmt::Display for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(TICKET_PREFIX)?;
        f.write_str(&base32().encode(&self.to_bytes()))
    }
}

impl FromStr for Ticket {
    type Err = TicketError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.len() > MAX_TICKET_LEN {
            return Err(TicketError::TooLong { len: s.len() });
        }
        let body = s.strip_prefix(TICKET_PREFIX).ok_or(TicketError::Prefix)?;
        let bytes = base32()
            .decode(body.as_bytes())
            .map_err(|e| TicketError::Encoding {
                position: e.position,
            })?;
        Self::from_bytes(&bytes)
    }
}

/// Parses ticket bytes (after base32), for the fuzz target.
#[doc(hidden)]
pub fn fuzz_ticket_bytes(b: &[u8]) -> Result<Ticket, TicketError> {
    Ticket::from_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kith_core::{RelayHint, SecretKey};
    use proptest::prelude::*;

    fn addr(seed: u8) -> NodeAddr {
        let id = SecretKey::from_bytes(&[seed; 32]).node_id();
        NodeAddr::new(id)
            .with_direct(["203.0.113.7:4433"
                .parse()
                .unwrap_or_else(|_| unreachable!())])
            .with_relay(RelayHint {
                node_id: SecretKey::from_bytes(&[seed ^ 0xff; 32]).node_id(),
                addr: "198.51.100.1:443"
                    .parse()
                    .unwrap_or_else(|_| unreachable!()),
            })
    }

    #[test]
    fn round_trips_and_says_what_is_wrong() {
        let t = Ticket::new(
            Hash::of(b"x"),
            BlobFormat::Collection,
            vec![addr(1), addr(2)],
        );
        let s = t.to_string();
        assert!(s.starts_with("kith"));
        assert!(
            s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        );
        assert_eq!(s.parse::<Ticket>(), Ok(t.clone()));
        assert_eq!(format!(" {s}\n").parse::<Ticket>(), Ok(t));
        assert_eq!("blob123".parse::<Ticket>(), Err(TicketError::Prefix));
        assert!(matches!(
            format!("{}!", &s[..20]).parse::<Ticket>(),
            Err(TicketError::Encoding { .. })
        ));
        // Cut off: the base32 length may still be valid, then the fields run out.
        let cut = &s[..s.len() - 16];
        assert!(matches!(
            cut.parse::<Ticket>(),
            Err(TicketError::Truncated(_) | TicketError::Encoding { .. })
        ));
        let mut b = Ticket::new(Hash::of(b"y"), BlobFormat::Raw, vec![]).to_bytes();
        b[0] = 9;
        let s = format!("kith{}", base32().encode(&b));
        assert_eq!(s.parse::<Ticket>(), Err(TicketError::Version(9)));
        assert!(matches!(
            "x".repeat(MAX_TICKET_LEN + 1).parse::<Ticket>(),
            Err(TicketError::TooLong { .. })
        ));
    }

    #[test]
    fn at_most_eight_providers() {
        let many: Vec<NodeAddr> = (0..12).map(addr).collect();
        let t = Ticket::new(Hash::of(b"z"), BlobFormat::Raw, many);
        assert_eq!(t.providers.len(), MAX_TICKET_PROVIDERS);
        let mut b = t.to_bytes();
        b[34] = 9;
        let s = format!("kith{}", base32().encode(&b));
        assert_eq!(s.parse::<Ticket>(), Err(TicketError::TooManyProviders(9)));
        assert!(t.to_string().len() < MAX_TICKET_LEN);
    }

    fn cfg() -> ProptestConfig {
        ProptestConfig {
            cases: 512,
            rng_algorithm: proptest::test_runner::RngAlgorithm::ChaCha,
            rng_seed: proptest::test_runner::RngSeed::Fixed(0x7469_636b),
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    proptest! {
        #![proptest_config(cfg())]

        #[test]
        fn garbage_never_panics(s in "kith[a-z2-7]{0,300}") {
            let _ = s.parse::<Ticket>();
        }

        #[test]
        fn bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..400)) {
            if let Ok(t) = Ticket::from_bytes(&b) {
                prop_assert_eq!(t.to_bytes(), b);
            }
        }

        #[test]
        fn any_ticket_round_trips(root in any::<[u8; 32]>(), coll in any::<bool>(), n in 0usize..9) {
            let t = Ticket::new(
                Hash::from_bytes(root),
                if coll { BlobFormat::Collection } else { BlobFormat::Raw },
                (0..n as u8).map(addr).collect(),
            );
            prop_assert_eq!(t.to_string().parse::<Ticket>(), Ok(t));
        }
    }
}
