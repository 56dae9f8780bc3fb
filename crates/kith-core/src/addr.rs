//! [`NodeAddr`]: how to reach a node, and its wire and text forms.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use prost::Message;

use crate::id::{NodeId, NodeIdError};

/// Most direct addresses a [`NodeAddr`] may carry.
pub const MAX_DIRECT_ADDRS: usize = 16;
/// Most relay hints a [`NodeAddr`] may carry.
pub const MAX_RELAYS: usize = 4;
/// Largest encoded [`NodeAddr`] accepted by [`NodeAddr::decode`].
pub const MAX_NODE_ADDR_LEN: usize = 1024;

/// A relay through which a node can be reached: the relay's id and address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RelayHint {
    /// The relay's identity.
    pub node_id: NodeId,
    /// Where the relay listens.
    pub addr: SocketAddr,
}

/// Everything needed to reach a node: its id, direct addresses and relay hints.
///
/// Only the id is authenticated (by the TLS handshake); addresses are hints.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeAddr {
    /// The node's identity; a dial fails unless the peer proves this key.
    pub node_id: NodeId,
    /// UDP socket addresses to try directly.
    pub direct: Vec<SocketAddr>,
    /// Relays the node can be reached through.
    pub relays: Vec<RelayHint>,
}

/// Error decoding a [`NodeAddr`] from bytes or text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NodeAddrError {
    /// The encoded form is longer than [`MAX_NODE_ADDR_LEN`].
    #[error("node address of {len} bytes exceeds {MAX_NODE_ADDR_LEN}")]
    TooLong {
        /// Encoded length.
        len: usize,
    },
    /// The bytes are not a valid protobuf `NodeAddr`.
    #[error("node address does not decode: {0}")]
    Decode(String),
    /// The node id (or a relay's id) is invalid.
    #[error("invalid node id: {0}")]
    NodeId(#[from] NodeIdError),
    /// A socket address is malformed (wrong length or unparsable text).
    #[error("invalid socket address")]
    InvalidSocketAddr,
    /// More than [`MAX_DIRECT_ADDRS`] addresses or [`MAX_RELAYS`] relays.
    #[error("too many addresses or relays")]
    TooManyEntries,
}

impl NodeAddr {
    /// An address with only an id (to be resolved by discovery, or already connected).
    pub fn new(node_id: NodeId) -> Self {
        Self {
            node_id,
            direct: Vec::new(),
            relays: Vec::new(),
        }
    }

    /// Adds direct addresses.
    pub fn with_direct(mut self, addrs: impl IntoIterator<Item = SocketAddr>) -> Self {
        self.direct.extend(addrs);
        self
    }

    /// Adds a relay hint.
    pub fn with_relay(mut self, relay: RelayHint) -> Self {
        self.relays.push(relay);
        self
    }

    /// Encodes to the protobuf wire form (`kith.core.NodeAddr`, see docs/proto/core.proto).
    pub fn encode(&self) -> Vec<u8> {
        self.to_wire().encode_to_vec()
    }

    pub(crate) fn to_wire(&self) -> wire::NodeAddrMsg {
        wire::NodeAddrMsg {
            node_id: self.node_id.as_bytes().to_vec().into(),
            direct: self
                .direct
                .iter()
                .map(|a| encode_sockaddr(a).into())
                .collect(),
            relays: self
                .relays
                .iter()
                .map(|r| wire::RelayHintMsg {
                    node_id: r.node_id.as_bytes().to_vec().into(),
                    addr: encode_sockaddr(&r.addr).into(),
                })
                .collect(),
        }
    }

    /// Decodes the protobuf wire form, with every length and count bounded.
    pub fn decode(bytes: &[u8]) -> Result<Self, NodeAddrError> {
        if bytes.len() > MAX_NODE_ADDR_LEN {
            return Err(NodeAddrError::TooLong { len: bytes.len() });
        }
        // Counted before prost materialises them (an empty entry costs two bytes).
        let counted = |field, max| match crate::scan::count(bytes, &[], field) {
            Ok(n) if n <= max => Ok(()),
            Ok(_) => Err(NodeAddrError::TooManyEntries),
            Err(e) => Err(NodeAddrError::Decode(e.to_string())),
        };
        counted(2, MAX_DIRECT_ADDRS)?;
        counted(3, MAX_RELAYS)?;
        let msg =
            wire::NodeAddrMsg::decode(bytes).map_err(|e| NodeAddrError::Decode(e.to_string()))?;
        Self::from_wire(&msg)
    }

    pub(crate) fn from_wire(msg: &wire::NodeAddrMsg) -> Result<Self, NodeAddrError> {
        if msg.direct.len() > MAX_DIRECT_ADDRS || msg.relays.len() > MAX_RELAYS {
            return Err(NodeAddrError::TooManyEntries);
        }
        let node_id = NodeId::try_from_slice(&msg.node_id)?;
        let direct = msg
            .direct
            .iter()
            .map(|a| decode_sockaddr(a))
            .collect::<Result<_, _>>()?;
        let relays = msg
            .relays
            .iter()
            .map(|r| {
                Ok(RelayHint {
                    node_id: NodeId::try_from_slice(&r.node_id)?,
                    addr: decode_sockaddr(&r.addr)?,
                })
            })
            .collect::<Result<_, NodeAddrError>>()?;
        Ok(Self {
            node_id,
            direct,
            relays,
        })
    }
}

/// Text form: `<node id>[@<addr>[,<addr>…]]`, for example
/// `ab…xyz@127.0.0.1:4433,[::1]:4433`. Relay hints travel only in the wire form.
impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.node_id)?;
        for (i, a) in self.direct.iter().enumerate() {
            f.write_str(if i == 0 { "@" } else { "," })?;
            write!(f, "{a}")?;
        }
        Ok(())
    }
}

impl FromStr for NodeAddr {
    type Err = NodeAddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (id, rest) = match s.split_once('@') {
            Some((id, rest)) => (id, Some(rest)),
            None => (s, None),
        };
        let mut addr = NodeAddr::new(id.parse()?);
        if let Some(rest) = rest {
            for part in rest.split(',') {
                if addr.direct.len() == MAX_DIRECT_ADDRS {
                    return Err(NodeAddrError::TooManyEntries);
                }
                addr.direct
                    .push(part.parse().map_err(|_| NodeAddrError::InvalidSocketAddr)?);
            }
        }
        Ok(addr)
    }
}

/// 6 bytes for IPv4 (address, port big-endian) or 18 for IPv6.
fn encode_sockaddr(addr: &SocketAddr) -> Vec<u8> {
    let mut out = match addr.ip() {
        IpAddr::V4(ip) => ip.octets().to_vec(),
        IpAddr::V6(ip) => ip.octets().to_vec(),
    };
    out.extend_from_slice(&addr.port().to_be_bytes());
    out
}

fn decode_sockaddr(b: &[u8]) -> Result<SocketAddr, NodeAddrError> {
    match b.len() {
        6 => Ok(SocketAddr::new(
            Ipv4Addr::new(b[0], b[1], b[2], b[3]).into(),
            u16::from_be_bytes([b[4], b[5]]),
        )),
        18 => {
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&b[..16]);
            Ok(SocketAddr::new(
                Ipv6Addr::from(ip).into(),
                u16::from_be_bytes([b[16], b[17]]),
            ))
        }
        _ => Err(NodeAddrError::InvalidSocketAddr),
    }
}

/// The protobuf messages of docs/proto/core.proto (package `kith.core`), generated by
/// `cargo xtask codegen`.
#[path = "gen/kith.core.rs"]
#[rustfmt::skip]
#[allow(unreachable_pub)]
mod generated;

/// Protobuf messages of the core wire format (schema: docs/proto/core.proto).
pub(crate) mod wire {
    /// `kith.core.NodeAddr`.
    pub(crate) use super::generated::NodeAddr as NodeAddrMsg;
    /// `kith.core.RelayHint`.
    pub(crate) use super::generated::RelayHint as RelayHintMsg;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SecretKey;
    use proptest::prelude::*;
    use rand::SeedableRng;

    fn id(seed: u64) -> NodeId {
        SecretKey::generate(&mut rand::rngs::StdRng::seed_from_u64(seed)).node_id()
    }

    fn arb_sockaddr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>())
                .prop_map(|(ip, p)| SocketAddr::new(Ipv4Addr::from(ip).into(), p)),
            (any::<[u8; 16]>(), any::<u16>())
                .prop_map(|(ip, p)| SocketAddr::new(Ipv6Addr::from(ip).into(), p)),
        ]
    }

    fn arb_addr() -> impl Strategy<Value = NodeAddr> {
        (
            any::<u64>(),
            proptest::collection::vec(arb_sockaddr(), 0..=MAX_DIRECT_ADDRS),
            proptest::collection::vec((any::<u64>(), arb_sockaddr()), 0..=MAX_RELAYS),
        )
            .prop_map(|(seed, direct, relays)| NodeAddr {
                node_id: id(seed),
                direct,
                relays: relays
                    .into_iter()
                    .map(|(s, addr)| RelayHint {
                        node_id: id(s),
                        addr,
                    })
                    .collect(),
            })
    }

    #[test]
    fn text_form() {
        let a = NodeAddr::new(id(1)).with_direct([
            "127.0.0.1:4433".parse().unwrap_or_else(|_| unreachable!()),
            "[::1]:5".parse().unwrap_or_else(|_| unreachable!()),
        ]);
        let s = a.to_string();
        assert!(s.ends_with("@127.0.0.1:4433,[::1]:5"));
        assert_eq!(s.parse::<NodeAddr>(), Ok(a));
        assert_eq!(
            format!("{}@nope", id(1)).parse::<NodeAddr>(),
            Err(NodeAddrError::InvalidSocketAddr)
        );
    }

    #[test]
    fn decode_bounds() {
        assert!(matches!(
            NodeAddr::decode(&vec![0u8; MAX_NODE_ADDR_LEN + 1]),
            Err(NodeAddrError::TooLong { .. })
        ));
        let mut a = NodeAddr::new(id(2));
        a.direct =
            vec!["1.2.3.4:5".parse().unwrap_or_else(|_| unreachable!()); MAX_DIRECT_ADDRS + 1];
        assert_eq!(
            NodeAddr::decode(&a.encode()),
            Err(NodeAddrError::TooManyEntries)
        );
        let mut m = NodeAddr::new(id(2)).to_wire();
        m.direct.push(vec![1, 2, 3].into());
        assert_eq!(
            NodeAddr::decode(&m.encode_to_vec()),
            Err(NodeAddrError::InvalidSocketAddr)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        #[test]
        fn wire_round_trip(a in arb_addr()) {
            prop_assert_eq!(NodeAddr::decode(&a.encode()), Ok(a));
        }

        #[test]
        fn text_round_trip(a in arb_addr()) {
            let mut a = a;
            a.relays.clear();
            prop_assert_eq!(a.to_string().parse::<NodeAddr>(), Ok(a));
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..1200)) {
            let _ = NodeAddr::decode(&data);
        }
    }
}
