//! DHT messages: the domain types the core handles, their protobuf wire form
//! (schema: `docs/proto/dht.proto`), and the checked conversion between them.

use bytes::Bytes;
use kith_core::{NodeAddr, NodeId, Signature};
use prost::Message as _;

use super::key::Key;
use super::record::{MutableRecord, Record, RecordKind, SignedNodeAddr};

/// Largest encoded DHT message (one frame on a stream).
pub const MAX_MESSAGE_LEN: usize = 64 * 1024;
/// Most node addresses in one `closer` list.
pub const MAX_CLOSER: usize = 32;
/// Most provider addresses in one response.
pub const MAX_PROVIDERS: usize = 32;
/// Longest value carried on the wire (the record limit applies on top).
const WIRE_MAX_VALUE: usize = super::record::MAX_VALUE_LEN;

/// One DHT message: a request or a response, matched by `txid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Transaction id chosen by the requester and echoed in the response.
    pub txid: u64,
    /// How to reach the sender, as it advertises itself (its node id must be the
    /// authenticated sender's). `None` if it does not want to be contacted.
    pub sender: Option<NodeAddr>,
    /// A client-mode sender queries but must not be added to routing tables.
    pub client_mode: bool,
    /// The request or response.
    pub body: Body,
}

/// Request or response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// A request.
    Request(Request),
    /// A response.
    Response(Response),
}

/// Requests a node can make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Liveness check.
    Ping,
    /// The k nodes closest to `target` the receiver knows.
    FindNode {
        /// The target key.
        target: Key,
    },
    /// The record of `kind` under `key`, if stored, and closer nodes.
    Get {
        /// The record's key.
        key: Key,
        /// The record's kind.
        kind: RecordKind,
    },
    /// Store a record.
    Put {
        /// The record.
        record: Record,
        /// Compare-and-swap: store only if the stored sequence equals this.
        cas: Option<u64>,
    },
    /// Register the sender (its advertised address) as a provider of `key`.
    AddProvider {
        /// The content hash.
        key: Key,
    },
    /// Providers of `key`, and closer nodes.
    GetProviders {
        /// The content hash.
        key: Key,
    },
}

/// Responses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// Answer to `Ping`.
    Pong,
    /// Answer to `FindNode`.
    Nodes {
        /// Closest nodes known to the responder.
        closer: Vec<NodeAddr>,
    },
    /// Answer to `Get`.
    Value {
        /// The record, if stored.
        record: Option<Record>,
        /// Closest nodes known to the responder.
        closer: Vec<NodeAddr>,
    },
    /// Answer to `GetProviders`.
    Providers {
        /// Known providers.
        providers: Vec<NodeAddr>,
        /// Closest nodes known to the responder.
        closer: Vec<NodeAddr>,
    },
    /// Answer to `Put` and `AddProvider`.
    Stored(StoreStatus),
    /// The request was refused.
    Error(ErrorCode),
}

/// Outcome of a store request at one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreStatus {
    /// Stored.
    Ok,
    /// A newer record is stored (its sequence number).
    Stale(u64),
    /// Compare-and-swap failed (the stored sequence, if any).
    CasMismatch(Option<u64>),
    /// The record failed validation.
    Invalid,
    /// The node's store is full.
    Full,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The sender exceeded its request rate.
    RateLimited,
    /// The request was malformed (for example `AddProvider` without an address).
    BadRequest,
}

/// Error converting wire bytes into a [`Message`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// The message is longer than [`MAX_MESSAGE_LEN`].
    #[error("message of {0} bytes exceeds {MAX_MESSAGE_LEN}")]
    TooLong(usize),
    /// The bytes are not valid protobuf for this schema.
    #[error("message does not decode: {0}")]
    Decode(String),
    /// The message has no body, or a body field is missing.
    #[error("missing field {0}")]
    Missing(&'static str),
    /// A key is not 32 bytes.
    #[error("invalid key length")]
    BadKey,
    /// A node id, node address or signature is malformed.
    #[error("invalid {0}")]
    Invalid(&'static str),
    /// A list has more entries than allowed.
    #[error("too many entries in {0}")]
    TooMany(&'static str),
    /// A value or salt exceeds the hard size limit.
    #[error("value or salt too large")]
    TooLarge,
    /// An enum field has an unknown value.
    #[error("unknown enum value in {0}")]
    UnknownEnum(&'static str),
}

/// The protobuf messages, hand-written with prost (schema: `docs/proto/dht.proto`).
///
/// Use [`Message::decode`] / [`Message::from_wire`] to turn them into validated domain
/// types; the raw structs trust nothing.
#[allow(missing_docs)]
pub mod wire {
    /// `kith.dht.DhtMessage`.
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct DhtMessage {
        #[prost(uint64, tag = "1")]
        pub txid: u64,
        /// Encoded `kith.core.NodeAddr`; empty when absent.
        #[prost(bytes = "bytes", tag = "2")]
        pub sender: ::bytes::Bytes,
        #[prost(bool, tag = "3")]
        pub client_mode: bool,
        #[prost(
            oneof = "dht_message::Body",
            tags = "10, 11, 12, 13, 14, 15, 20, 21, 22, 23, 24, 25"
        )]
        pub body: Option<dht_message::Body>,
    }

    /// Nested types of [`DhtMessage`].
    pub mod dht_message {
        /// The `body` oneof.
        #[derive(Clone, PartialEq, ::prost::Oneof)]
        pub enum Body {
            #[prost(message, tag = "10")]
            Ping(super::Empty),
            #[prost(message, tag = "11")]
            FindNode(super::KeyMsg),
            #[prost(message, tag = "12")]
            Get(super::GetMsg),
            #[prost(message, tag = "13")]
            Put(super::PutMsg),
            #[prost(message, tag = "14")]
            AddProvider(super::KeyMsg),
            #[prost(message, tag = "15")]
            GetProviders(super::KeyMsg),
            #[prost(message, tag = "20")]
            Pong(super::Empty),
            #[prost(message, tag = "21")]
            Nodes(super::NodesMsg),
            #[prost(message, tag = "22")]
            Value(super::ValueMsg),
            #[prost(message, tag = "23")]
            Providers(super::ProvidersMsg),
            #[prost(message, tag = "24")]
            Stored(super::StoredMsg),
            #[prost(message, tag = "25")]
            Error(super::ErrorMsg),
        }
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct Empty {}

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct KeyMsg {
        #[prost(bytes = "bytes", tag = "1")]
        pub key: ::bytes::Bytes,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct GetMsg {
        #[prost(bytes = "bytes", tag = "1")]
        pub key: ::bytes::Bytes,
        /// 0 immutable, 1 mutable, 2 node address.
        #[prost(int32, tag = "2")]
        pub kind: i32,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct PutMsg {
        #[prost(message, optional, tag = "1")]
        pub record: Option<RecordMsg>,
        #[prost(uint64, optional, tag = "2")]
        pub cas: Option<u64>,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct RecordMsg {
        #[prost(oneof = "record_msg::Kind", tags = "1, 2, 3")]
        pub kind: Option<record_msg::Kind>,
    }

    /// Nested types of [`RecordMsg`].
    pub mod record_msg {
        /// The `kind` oneof.
        #[derive(Clone, PartialEq, ::prost::Oneof)]
        pub enum Kind {
            #[prost(bytes = "bytes", tag = "1")]
            Immutable(::bytes::Bytes),
            #[prost(message, tag = "2")]
            Mutable(super::MutableMsg),
            #[prost(message, tag = "3")]
            NodeAddr(super::SignedNodeAddrMsg),
        }
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct MutableMsg {
        #[prost(bytes = "bytes", tag = "1")]
        pub public_key: ::bytes::Bytes,
        #[prost(bytes = "bytes", tag = "2")]
        pub salt: ::bytes::Bytes,
        #[prost(uint64, tag = "3")]
        pub seq: u64,
        #[prost(bytes = "bytes", tag = "4")]
        pub value: ::bytes::Bytes,
        #[prost(bytes = "bytes", tag = "5")]
        pub signature: ::bytes::Bytes,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct SignedNodeAddrMsg {
        /// Encoded `kith.core.NodeAddr`.
        #[prost(bytes = "bytes", tag = "1")]
        pub addr: ::bytes::Bytes,
        #[prost(uint64, tag = "2")]
        pub seq: u64,
        #[prost(bytes = "bytes", tag = "3")]
        pub signature: ::bytes::Bytes,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct NodesMsg {
        /// Encoded `kith.core.NodeAddr`s.
        #[prost(bytes = "bytes", repeated, tag = "1")]
        pub closer: Vec<::bytes::Bytes>,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct ValueMsg {
        #[prost(message, optional, tag = "1")]
        pub record: Option<RecordMsg>,
        #[prost(bytes = "bytes", repeated, tag = "2")]
        pub closer: Vec<::bytes::Bytes>,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct ProvidersMsg {
        #[prost(bytes = "bytes", repeated, tag = "1")]
        pub providers: Vec<::bytes::Bytes>,
        #[prost(bytes = "bytes", repeated, tag = "2")]
        pub closer: Vec<::bytes::Bytes>,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct StoredMsg {
        /// 0 ok, 1 stale, 2 cas mismatch, 3 invalid, 4 full.
        #[prost(int32, tag = "1")]
        pub status: i32,
        #[prost(uint64, optional, tag = "2")]
        pub current_seq: Option<u64>,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct ErrorMsg {
        /// 1 rate limited, 2 bad request.
        #[prost(uint32, tag = "1")]
        pub code: u32,
    }
}

use wire::dht_message::Body as WBody;
use wire::record_msg::Kind as WKind;

fn key_from(b: &[u8]) -> Result<Key, MessageError> {
    Key::from_slice(b).ok_or(MessageError::BadKey)
}

fn kind_to_i32(k: RecordKind) -> i32 {
    match k {
        RecordKind::Immutable => 0,
        RecordKind::Mutable => 1,
        RecordKind::NodeAddr => 2,
    }
}

fn kind_from_i32(k: i32) -> Result<RecordKind, MessageError> {
    match k {
        0 => Ok(RecordKind::Immutable),
        1 => Ok(RecordKind::Mutable),
        2 => Ok(RecordKind::NodeAddr),
        _ => Err(MessageError::UnknownEnum("kind")),
    }
}

fn addr_to(a: &NodeAddr) -> Bytes {
    a.encode().into()
}

fn addr_from(b: &[u8]) -> Result<NodeAddr, MessageError> {
    NodeAddr::decode(b).map_err(|_| MessageError::Invalid("node address"))
}

fn addrs_to(v: &[NodeAddr]) -> Vec<Bytes> {
    v.iter().map(addr_to).collect()
}

fn addrs_from(v: &[Bytes], max: usize, what: &'static str) -> Result<Vec<NodeAddr>, MessageError> {
    if v.len() > max {
        return Err(MessageError::TooMany(what));
    }
    v.iter().map(|b| addr_from(b)).collect()
}

fn sig_from(b: &[u8]) -> Result<Signature, MessageError> {
    let arr: [u8; 64] = b
        .try_into()
        .map_err(|_| MessageError::Invalid("signature"))?;
    Ok(Signature(arr))
}

/// Converts a record to its wire form.
pub(crate) fn record_to_wire(r: &Record) -> wire::RecordMsg {
    let kind = match r {
        Record::Immutable(v) => WKind::Immutable(v.clone()),
        Record::Mutable(m) => WKind::Mutable(wire::MutableMsg {
            public_key: Bytes::copy_from_slice(m.public_key.as_bytes()),
            salt: m.salt.clone(),
            seq: m.seq,
            value: m.value.clone(),
            signature: Bytes::copy_from_slice(&m.signature.0),
        }),
        Record::NodeAddr(n) => WKind::NodeAddr(wire::SignedNodeAddrMsg {
            addr: addr_to(&n.addr),
            seq: n.seq,
            signature: Bytes::copy_from_slice(&n.signature.0),
        }),
    };
    wire::RecordMsg { kind: Some(kind) }
}

/// Converts a wire record, checking field shapes and hard size ceilings (signatures are
/// verified by the core, which knows the configured limits).
pub(crate) fn record_from_wire(r: &wire::RecordMsg) -> Result<Record, MessageError> {
    match r
        .kind
        .as_ref()
        .ok_or(MessageError::Missing("record.kind"))?
    {
        WKind::Immutable(v) => {
            if v.len() > WIRE_MAX_VALUE {
                return Err(MessageError::TooLarge);
            }
            Ok(Record::Immutable(v.clone()))
        }
        WKind::Mutable(m) => {
            if m.value.len() > WIRE_MAX_VALUE || m.salt.len() > super::record::MAX_SALT_LEN {
                return Err(MessageError::TooLarge);
            }
            Ok(Record::Mutable(MutableRecord {
                public_key: NodeId::try_from_slice(&m.public_key)
                    .map_err(|_| MessageError::Invalid("public key"))?,
                salt: m.salt.clone(),
                seq: m.seq,
                value: m.value.clone(),
                signature: sig_from(&m.signature)?,
            }))
        }
        WKind::NodeAddr(n) => Ok(Record::NodeAddr(SignedNodeAddr {
            addr: addr_from(&n.addr)?,
            seq: n.seq,
            signature: sig_from(&n.signature)?,
        })),
    }
}

impl StoreStatus {
    fn to_wire(self) -> wire::StoredMsg {
        let (status, current_seq) = match self {
            StoreStatus::Ok => (0, None),
            StoreStatus::Stale(s) => (1, Some(s)),
            StoreStatus::CasMismatch(s) => (2, s),
            StoreStatus::Invalid => (3, None),
            StoreStatus::Full => (4, None),
        };
        wire::StoredMsg {
            status,
            current_seq,
        }
    }

    fn from_wire(m: &wire::StoredMsg) -> Result<Self, MessageError> {
        Ok(match (m.status, m.current_seq) {
            (0, _) => StoreStatus::Ok,
            (1, s) => StoreStatus::Stale(s.ok_or(MessageError::Missing("current_seq"))?),
            (2, s) => StoreStatus::CasMismatch(s),
            (3, _) => StoreStatus::Invalid,
            (4, _) => StoreStatus::Full,
            _ => return Err(MessageError::UnknownEnum("status")),
        })
    }
}

impl Message {
    /// Converts to the protobuf form.
    pub fn to_wire(&self) -> wire::DhtMessage {
        let key = |k: &Key| wire::KeyMsg {
            key: Bytes::copy_from_slice(&k.0),
        };
        let body = match &self.body {
            Body::Request(r) => match r {
                Request::Ping => WBody::Ping(wire::Empty {}),
                Request::FindNode { target } => WBody::FindNode(key(target)),
                Request::Get { key: k, kind } => WBody::Get(wire::GetMsg {
                    key: Bytes::copy_from_slice(&k.0),
                    kind: kind_to_i32(*kind),
                }),
                Request::Put { record, cas } => WBody::Put(wire::PutMsg {
                    record: Some(record_to_wire(record)),
                    cas: *cas,
                }),
                Request::AddProvider { key: k } => WBody::AddProvider(key(k)),
                Request::GetProviders { key: k } => WBody::GetProviders(key(k)),
            },
            Body::Response(r) => match r {
                Response::Pong => WBody::Pong(wire::Empty {}),
                Response::Nodes { closer } => WBody::Nodes(wire::NodesMsg {
                    closer: addrs_to(closer),
                }),
                Response::Value { record, closer } => WBody::Value(wire::ValueMsg {
                    record: record.as_ref().map(record_to_wire),
                    closer: addrs_to(closer),
                }),
                Response::Providers { providers, closer } => WBody::Providers(wire::ProvidersMsg {
                    providers: addrs_to(providers),
                    closer: addrs_to(closer),
                }),
                Response::Stored(s) => WBody::Stored(s.to_wire()),
                Response::Error(c) => WBody::Error(wire::ErrorMsg {
                    code: match c {
                        ErrorCode::RateLimited => 1,
                        ErrorCode::BadRequest => 2,
                    },
                }),
            },
        };
        wire::DhtMessage {
            txid: self.txid,
            sender: self.sender.as_ref().map(addr_to).unwrap_or_default(),
            client_mode: self.client_mode,
            body: Some(body),
        }
    }

    /// Converts from the protobuf form, validating every field.
    pub fn from_wire(m: &wire::DhtMessage) -> Result<Self, MessageError> {
        let sender = if m.sender.is_empty() {
            None
        } else {
            Some(addr_from(&m.sender)?)
        };
        let req = |r| Ok(Body::Request(r));
        let resp = |r| Ok(Body::Response(r));
        let body: Result<Body, MessageError> =
            match m.body.as_ref().ok_or(MessageError::Missing("body"))? {
                WBody::Ping(_) => req(Request::Ping),
                WBody::FindNode(k) => req(Request::FindNode {
                    target: key_from(&k.key)?,
                }),
                WBody::Get(g) => req(Request::Get {
                    key: key_from(&g.key)?,
                    kind: kind_from_i32(g.kind)?,
                }),
                WBody::Put(p) => req(Request::Put {
                    record: record_from_wire(
                        p.record.as_ref().ok_or(MessageError::Missing("record"))?,
                    )?,
                    cas: p.cas,
                }),
                WBody::AddProvider(k) => req(Request::AddProvider {
                    key: key_from(&k.key)?,
                }),
                WBody::GetProviders(k) => req(Request::GetProviders {
                    key: key_from(&k.key)?,
                }),
                WBody::Pong(_) => resp(Response::Pong),
                WBody::Nodes(n) => resp(Response::Nodes {
                    closer: addrs_from(&n.closer, MAX_CLOSER, "closer")?,
                }),
                WBody::Value(v) => resp(Response::Value {
                    record: v.record.as_ref().map(record_from_wire).transpose()?,
                    closer: addrs_from(&v.closer, MAX_CLOSER, "closer")?,
                }),
                WBody::Providers(p) => resp(Response::Providers {
                    providers: addrs_from(&p.providers, MAX_PROVIDERS, "providers")?,
                    closer: addrs_from(&p.closer, MAX_CLOSER, "closer")?,
                }),
                WBody::Stored(s) => resp(Response::Stored(StoreStatus::from_wire(s)?)),
                WBody::Error(e) => resp(Response::Error(match e.code {
                    1 => ErrorCode::RateLimited,
                    2 => ErrorCode::BadRequest,
                    _ => return Err(MessageError::UnknownEnum("error code")),
                })),
            };
        Ok(Message {
            txid: m.txid,
            sender,
            client_mode: m.client_mode,
            body: body?,
        })
    }

    /// Encodes to bytes (the body of one frame).
    pub fn encode(&self) -> Vec<u8> {
        self.to_wire().encode_to_vec()
    }

    /// Decodes and validates bytes received from the network. Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, MessageError> {
        if bytes.len() > MAX_MESSAGE_LEN {
            return Err(MessageError::TooLong(bytes.len()));
        }
        // Lists are counted before prost materialises them: an empty entry costs a peer
        // two bytes and us a whole value.
        for (body, field, max, what) in [
            (21, 1, MAX_CLOSER, "closer nodes"),
            (22, 2, MAX_CLOSER, "closer nodes"),
            (23, 1, MAX_PROVIDERS, "providers"),
            (23, 2, MAX_CLOSER, "closer nodes"),
        ] {
            let n = kith_core::scan::count(bytes, &[body], field)
                .map_err(|e| MessageError::Decode(e.to_string()))?;
            if n > max {
                return Err(MessageError::TooMany(what));
            }
        }
        let m = wire::DhtMessage::decode(bytes).map_err(|e| MessageError::Decode(e.to_string()))?;
        Self::from_wire(&m)
    }

    /// Whether this is a request.
    pub fn is_request(&self) -> bool {
        matches!(self.body, Body::Request(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kith_core::SecretKey;
    use proptest::prelude::*;

    fn sk(n: u64) -> SecretKey {
        let mut b = [0u8; 32];
        b[..8].copy_from_slice(&n.to_le_bytes());
        SecretKey::from_bytes(&b)
    }

    fn arb_addr() -> impl Strategy<Value = NodeAddr> {
        (
            any::<u64>(),
            proptest::collection::vec(any::<([u8; 4], u16)>(), 0..3),
        )
            .prop_map(|(n, d)| {
                NodeAddr::new(sk(n).node_id()).with_direct(d.into_iter().map(Into::into))
            })
    }

    fn arb_key() -> impl Strategy<Value = Key> {
        any::<[u8; 32]>().prop_map(Key)
    }

    fn arb_record() -> impl Strategy<Value = Record> {
        let lim = super::super::record::Limits::default();
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..100)
                .prop_map(|v| Record::Immutable(v.into())),
            (
                any::<u64>(),
                proptest::collection::vec(any::<u8>(), 0..64),
                any::<u64>(),
                proptest::collection::vec(any::<u8>(), 0..200)
            )
                .prop_map(move |(n, salt, seq, v)| Record::Mutable(
                    MutableRecord::sign(&sk(n), salt, seq, v, &lim)
                        .unwrap_or_else(|e| panic!("{e}"))
                )),
            (any::<u64>(), any::<u64>()).prop_map(|(n, seq)| Record::NodeAddr(
                SignedNodeAddr::sign(&sk(n), NodeAddr::new(sk(n).node_id()), seq)
                    .unwrap_or_else(|e| panic!("{e}"))
            )),
        ]
    }

    fn arb_kind() -> impl Strategy<Value = RecordKind> {
        prop_oneof![
            Just(RecordKind::Immutable),
            Just(RecordKind::Mutable),
            Just(RecordKind::NodeAddr)
        ]
    }

    fn arb_body() -> impl Strategy<Value = Body> {
        let addrs = || proptest::collection::vec(arb_addr(), 0..5);
        prop_oneof![
            Just(Body::Request(Request::Ping)),
            arb_key().prop_map(|target| Body::Request(Request::FindNode { target })),
            (arb_key(), arb_kind())
                .prop_map(|(key, kind)| Body::Request(Request::Get { key, kind })),
            (arb_record(), any::<Option<u64>>())
                .prop_map(|(record, cas)| Body::Request(Request::Put { record, cas })),
            arb_key().prop_map(|key| Body::Request(Request::AddProvider { key })),
            arb_key().prop_map(|key| Body::Request(Request::GetProviders { key })),
            Just(Body::Response(Response::Pong)),
            addrs().prop_map(|closer| Body::Response(Response::Nodes { closer })),
            (proptest::option::of(arb_record()), addrs())
                .prop_map(|(record, closer)| Body::Response(Response::Value { record, closer })),
            (addrs(), addrs()).prop_map(|(providers, closer)| Body::Response(
                Response::Providers { providers, closer }
            )),
            prop_oneof![
                Just(StoreStatus::Ok),
                any::<u64>().prop_map(StoreStatus::Stale),
                any::<Option<u64>>().prop_map(StoreStatus::CasMismatch),
                Just(StoreStatus::Invalid),
                Just(StoreStatus::Full)
            ]
            .prop_map(|s| Body::Response(Response::Stored(s))),
            prop_oneof![Just(ErrorCode::RateLimited), Just(ErrorCode::BadRequest)]
                .prop_map(|c| Body::Response(Response::Error(c))),
        ]
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        (
            any::<u64>(),
            proptest::option::of(arb_addr()),
            any::<bool>(),
            arb_body(),
        )
            .prop_map(|(txid, sender, client_mode, body)| Message {
                txid,
                sender,
                client_mode,
                body,
            })
    }

    #[test]
    fn rejects_bad_fields() {
        let mut w = Message {
            txid: 1,
            sender: None,
            client_mode: false,
            body: Body::Request(Request::FindNode {
                target: Key([0; 32]),
            }),
        }
        .to_wire();
        w.body = Some(WBody::FindNode(wire::KeyMsg {
            key: Bytes::from_static(&[1; 31]),
        }));
        assert_eq!(Message::from_wire(&w), Err(MessageError::BadKey));
        w.body = None;
        assert_eq!(Message::from_wire(&w), Err(MessageError::Missing("body")));
        w.body = Some(WBody::Nodes(wire::NodesMsg {
            closer: vec![addr_to(&NodeAddr::new(sk(1).node_id())); MAX_CLOSER + 1],
        }));
        assert_eq!(Message::from_wire(&w), Err(MessageError::TooMany("closer")));
        w.body = Some(WBody::Get(wire::GetMsg {
            key: Bytes::from_static(&[1; 32]),
            kind: 9,
        }));
        assert_eq!(
            Message::from_wire(&w),
            Err(MessageError::UnknownEnum("kind"))
        );
        w.body = Some(WBody::Put(wire::PutMsg {
            record: Some(wire::RecordMsg {
                kind: Some(WKind::Immutable(vec![0; WIRE_MAX_VALUE + 1].into())),
            }),
            cas: None,
        }));
        assert_eq!(Message::from_wire(&w), Err(MessageError::TooLarge));
        w.body = Some(WBody::Put(wire::PutMsg {
            record: Some(wire::RecordMsg {
                kind: Some(WKind::Mutable(wire::MutableMsg {
                    public_key: Bytes::copy_from_slice(sk(1).node_id().as_bytes()),
                    signature: Bytes::from_static(&[0; 63]),
                    ..Default::default()
                })),
            }),
            cas: None,
        }));
        assert_eq!(
            Message::from_wire(&w),
            Err(MessageError::Invalid("signature"))
        );
        w.sender = Bytes::from_static(b"\x0a\x01\x00");
        assert_eq!(
            Message::from_wire(&w),
            Err(MessageError::Invalid("node address"))
        );
        assert_eq!(
            Message::decode(&vec![0; MAX_MESSAGE_LEN + 1]),
            Err(MessageError::TooLong(MAX_MESSAGE_LEN + 1))
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        #[test]
        fn round_trip(m in arb_message()) {
            let bytes = m.encode();
            prop_assert!(bytes.len() <= MAX_MESSAGE_LEN);
            prop_assert_eq!(Message::decode(&bytes), Ok(m));
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let _ = Message::decode(&data);
        }

        #[test]
        fn mutated_messages_never_panic(m in arb_message(), idx in any::<usize>(), byte in any::<u8>()) {
            let mut bytes = m.encode();
            if !bytes.is_empty() {
                let i = idx % bytes.len();
                bytes[i] = byte;
            }
            if let Ok(d) = Message::decode(&bytes) {
                // Whatever decodes re-encodes to something that decodes the same.
                prop_assert_eq!(Message::decode(&d.encode()), Ok(d));
            }
        }
    }
}
