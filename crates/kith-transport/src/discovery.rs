//! Combining discovery sources.
//!
//! An [`Endpoint`](crate::Endpoint) has one discovery slot
//! ([`set_discovery`](crate::Endpoint::set_discovery)); [`Chain`] fills it with several
//! sources asked in order, for example LAN discovery first
//! ([`MdnsDiscovery`](crate::mdns::MdnsDiscovery), which answers at once for a peer on the
//! LAN), then the DHT (`kith_overlay::dht::DhtHandle`) for everyone else.
//!
//! ```
//! use std::sync::Arc;
//! use kith_core::net::{BoxFuture, Discovery};
//! use kith_core::{NodeAddr, NodeId};
//! use kith_transport::discovery::Chain;
//!
//! /// A fixed table, standing in for a real source.
//! #[derive(Debug)]
//! struct Table(Vec<NodeAddr>);
//! impl Discovery for Table {
//!     fn resolve(&self, id: NodeId) -> BoxFuture<'_, Option<NodeAddr>> {
//!         let found = self.0.iter().find(|a| a.node_id == id).cloned();
//!         Box::pin(async move { found })
//!     }
//! }
//!
//! let chain = Chain::new()
//!     .with(Arc::new(Table(Vec::new())))
//!     .with(Arc::new(Table(Vec::new())));
//! assert_eq!(chain.len(), 2);
//! // endpoint.set_discovery(Arc::new(chain));
//! ```

use std::sync::Arc;

use kith_core::net::{BoxFuture, Discovery};
use kith_core::{NodeAddr, NodeId};

/// Discovery sources asked one after the other; the first answer wins.
///
/// [`resolve`](Discovery::resolve) asks each source in the order they were added and
/// returns the first `Some` whose id is the one asked for (an answer about another node
/// is ignored). Sources are asked sequentially, not raced: a source that does not know
/// the node delays the next one by however long it takes to say so, so put sources that
/// answer quickly (a LAN cache) before slow ones (a DHT lookup), and give each its own
/// bound (the endpoint bounds the whole resolution by its handshake timeout).
#[derive(Debug, Clone, Default)]
pub struct Chain {
    sources: Vec<Arc<dyn Discovery>>,
}

impl Chain {
    /// An empty chain (resolves nothing).
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a source, asked after the ones already in the chain.
    pub fn with(mut self, source: Arc<dyn Discovery>) -> Self {
        self.sources.push(source);
        self
    }

    /// Appends a source, asked after the ones already in the chain.
    pub fn push(&mut self, source: Arc<dyn Discovery>) {
        self.sources.push(source);
    }

    /// Number of sources.
    pub fn len(&self) -> usize {
        self.sources.len()
    }

    /// Whether the chain has no source.
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }
}

impl Discovery for Chain {
    fn resolve(&self, id: NodeId) -> BoxFuture<'_, Option<NodeAddr>> {
        Box::pin(async move {
            for source in &self.sources {
                if let Some(found) = source.resolve(id).await {
                    if found.node_id == id {
                        return Some(found);
                    }
                    tracing::debug!(%id, answer = %found.node_id, "discovery answered for another node");
                }
            }
            None
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use kith_core::SecretKey;

    use super::*;

    /// Answers from a table and records which ids it was asked for.
    #[derive(Debug, Default)]
    struct Table {
        known: Vec<NodeAddr>,
        asked: Mutex<Vec<NodeId>>,
    }

    impl Discovery for Table {
        fn resolve(&self, id: NodeId) -> BoxFuture<'_, Option<NodeAddr>> {
            self.asked.lock().unwrap().push(id);
            let found = self.known.iter().find(|a| a.node_id == id).cloned();
            Box::pin(async move { found })
        }
    }

    fn id(seed: u8) -> NodeId {
        SecretKey::from_bytes(&[seed; 32]).node_id()
    }

    fn addr(seed: u8, port: u16) -> NodeAddr {
        NodeAddr::new(id(seed)).with_direct([([192, 0, 2, 1], port).into()])
    }

    #[tokio::test]
    async fn first_answer_in_order_wins_and_later_sources_are_not_asked() {
        let lan = Arc::new(Table {
            known: vec![addr(1, 1000)],
            ..Table::default()
        });
        let dht = Arc::new(Table {
            known: vec![addr(1, 2000), addr(2, 2000)],
            ..Table::default()
        });
        let chain = Chain::new().with(lan.clone()).with(dht.clone());
        assert_eq!(chain.resolve(id(1)).await, Some(addr(1, 1000)));
        assert!(dht.asked.lock().unwrap().is_empty());
        // Unknown to the first source: the second answers.
        assert_eq!(chain.resolve(id(2)).await, Some(addr(2, 2000)));
        // Unknown to both.
        assert_eq!(chain.resolve(id(3)).await, None);
        assert_eq!(*lan.asked.lock().unwrap(), vec![id(1), id(2), id(3)]);
        assert_eq!(*dht.asked.lock().unwrap(), vec![id(2), id(3)]);
        assert_eq!(Chain::new().resolve(id(1)).await, None);
    }

    #[tokio::test]
    async fn an_answer_about_another_node_is_skipped() {
        /// Always answers with node 9's address.
        #[derive(Debug)]
        struct Liar;
        impl Discovery for Liar {
            fn resolve(&self, _id: NodeId) -> BoxFuture<'_, Option<NodeAddr>> {
                Box::pin(async { Some(addr(9, 9)) })
            }
        }
        let honest = Arc::new(Table {
            known: vec![addr(1, 1)],
            ..Table::default()
        });
        let chain = Chain::new().with(Arc::new(Liar)).with(honest);
        assert_eq!(chain.resolve(id(1)).await, Some(addr(1, 1)));
    }
}
