//! Relay reservations: [`Endpoint::ensure_relay`] (QUIC first, TLS over TCP where UDP is
//! blocked; packets from the relay feed the path layer), reserving the home relay at
//! bind and again after it was lost, and the home relay hint peers get in our address.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use kith_core::net::BoxFuture;
use kith_core::{NodeAddr, NodeId, RelayHint};

use super::{Endpoint, Handle, Inner};
use crate::relay::{RelayClient, RelayError, RelayEvent};
use crate::sync::lock;

/// Relay reservations by relay id, and the home relay once reserved.
#[derive(Default)]
pub(super) struct Relays {
    /// Relay reservations by relay id.
    clients: Mutex<HashMap<NodeId, RelayClient>>,
    /// The home relay, once reserved.
    home: Mutex<Option<RelayHint>>,
}

impl Relays {
    /// The home relay's hint, once reserved.
    pub(super) fn home(&self) -> Option<RelayHint> {
        *lock(&self.home)
    }
}

impl Inner {
    /// Whether `id` is the home relay (`EndpointConfig::relay`): a trusted observer.
    pub(super) fn is_home_relay(&self, id: &NodeId) -> bool {
        self.config.relay.as_ref().is_some_and(|r| r.node_id == *id)
    }
}

impl Endpoint {
    /// Reserves on the home relay ([`EndpointConfig::relay`](crate::EndpointConfig::relay))
    /// at bind and records its hint for [`node_addr`](Self::node_addr).
    pub(super) async fn reserve_home(&self) {
        if let Some(home) = self.config().relay.clone() {
            // A relay that is down now is not fatal: the node still works directly.
            match self.ensure_relay(home.clone()).await {
                Ok(_) => {
                    if let Some(addr) = home.direct.first() {
                        *lock(&self.inner().relays.home) = Some(RelayHint {
                            node_id: home.node_id,
                            addr: *addr,
                        });
                    }
                }
                Err(e) => {
                    tracing::warn!(relay = ?home.node_id, error = %e, "home relay unavailable")
                }
            }
        }
    }

    /// The reservation on `relay`, made if needed. Packets from it feed the path layer.
    ///
    /// Boxed (not `async fn`) because the task it spawns may call it again (re-reserving
    /// the home relay), which an opaque future type cannot express.
    pub(super) fn ensure_relay(
        &self,
        relay: NodeAddr,
    ) -> BoxFuture<'_, Result<RelayClient, RelayError>> {
        Box::pin(async move {
            let inner = self.inner();
            if let Some(c) = lock(&inner.relays.clients).get(&relay.node_id) {
                return Ok(c.clone());
            }
            let relay_id = relay.node_id;
            // QUIC first; where UDP is blocked, TLS over TCP to the same address.
            let quic = if inner.config.relay_over_tcp_only() {
                None
            } else {
                let limit = inner
                    .config
                    .handshake_timeout
                    .min(std::time::Duration::from_secs(3));
                match tokio::time::timeout(limit, RelayClient::connect(self, relay.clone())).await {
                    Ok(Ok(c)) => Some(c),
                    Ok(Err(RelayError::Refused)) => return Err(RelayError::Refused),
                    _ => None,
                }
            };
            let (client, mut events) = match quic {
                Some(c) => c,
                None => {
                    tracing::debug!(relay = %relay_id.fmt_short(), "relay over TCP");
                    RelayClient::connect_tcp(&inner.key, relay).await?
                }
            };
            let table = inner
                .primary()
                .map(|s| s.table.clone())
                .ok_or(RelayError::Closed)?;
            lock(&inner.relays.clients).insert(relay_id, client.clone());
            // Connections already going through this relay (a new reservation after the
            // old one was lost) continue on the new one.
            table.replace_relay(&client);
            let weak = Arc::downgrade(&self.handle);
            let pump_client = client.clone();
            tokio::spawn(async move {
                while let Some(ev) = events.recv().await {
                    if let RelayEvent::Packet { from, packet } = ev {
                        table.on_relay_packet(&pump_client, from, packet);
                    }
                }
                let home = match weak.upgrade() {
                    Some(handle) => {
                        let inner = &handle.inner;
                        lock(&inner.relays.clients).remove(&relay_id);
                        inner.config.relay.clone().filter(|h| h.node_id == relay_id)
                    }
                    None => None,
                };
                if let Some(home) = home {
                    tracing::info!(relay = %relay_id.fmt_short(), "home relay lost; reserving again");
                    reserve_again(weak, home).await;
                }
            });
            Ok(client)
        })
    }
}

/// First retry delay after the home relay's reservation is lost, and the cap of the
/// doubling backoff.
const RESERVE_RETRY: std::time::Duration = std::time::Duration::from_millis(500);
const RESERVE_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// Reserves on the home relay again after the reservation was lost (the relay restarted,
/// the network changed), with doubling backoff, for as long as the endpoint is open. The
/// task holds the endpoint only while it dials, so dropping the endpoint ends it.
async fn reserve_again(weak: std::sync::Weak<Handle>, home: NodeAddr) {
    let mut wait = RESERVE_RETRY;
    loop {
        tokio::time::sleep(wait).await;
        let Some(handle) = weak.upgrade() else {
            return;
        };
        if handle.inner.closing.load(Ordering::Acquire) {
            return;
        }
        let ep = Endpoint { handle };
        match ep.ensure_relay(home.clone()).await {
            Ok(_) => {
                tracing::info!(relay = %home.node_id.fmt_short(), "home relay reserved again");
                return;
            }
            Err(e) => {
                tracing::debug!(relay = %home.node_id.fmt_short(), error = %e, ?wait, "home relay still unavailable");
            }
        }
        drop(ep);
        wait = (wait * 2).min(RESERVE_RETRY_MAX);
    }
}
