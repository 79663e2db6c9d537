//! Admission of connections to the QUIC endpoint, so that a flood of
//! connections that handshake and then say nothing cannot exhaust a node:
//! a cap on all connections (checked before the handshake), caps on client
//! connections in total and per IP address (checked once the ALPN says it
//! is a client), a QUIC Retry for unvalidated addresses when handshakes come
//! fast, and closing client connections that stay idle. Existing
//! connections are never touched by a cap.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use agentd_protocol::limits::{
    CLIENT_CONNECTIONS_MAX, CLIENT_CONNECTIONS_PER_ADDRESS_MAX, CONNECTIONS_MAX, HANDSHAKES_PER_SECOND_BEFORE_RETRY,
};
use agentd_protocol::sync::lock;
use tokio::time::{Duration, Instant};

/// Counts of what the endpoint holds; shared by its connection tasks.
#[derive(Default)]
pub(super) struct Gate {
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    connections: usize,
    clients: usize,
    clients_by_address: HashMap<IpAddr, usize>,
    /// Handshakes started in the current one-second window.
    window_start: Option<Instant>,
    window_handshakes: u32,
}

/// What to do with an incoming connection.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    Accept(ConnectionTicket),
    /// Ask the client to prove its address (QUIC Retry) first.
    Retry,
    Refuse,
}

/// Held for as long as a connection (or its handshake) lives.
#[derive(Debug)]
pub(super) struct ConnectionTicket {
    gate: Arc<Gate>,
}

/// Held for as long as a client connection lives.
#[derive(Debug)]
pub(super) struct ClientTicket {
    gate: Arc<Gate>,
    address: IpAddr,
}

impl PartialEq for ConnectionTicket {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.gate, &other.gate)
    }
}
impl Eq for ConnectionTicket {}

impl std::fmt::Debug for Gate {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Gate")
    }
}

impl Gate {
    /// The verdict on a new connection whose address is `validated` or not.
    pub(super) fn incoming(self: &Arc<Self>, validated: bool) -> Verdict {
        let now = Instant::now();
        let mut counts = lock(&self.counts);
        if counts.connections >= CONNECTIONS_MAX {
            metrics::counter!("agentd_connections_refused_total", "why" => "cap").increment(1);
            return Verdict::Refuse;
        }
        if counts.window_start.is_none_or(|start| now - start >= Duration::from_secs(1)) {
            counts.window_start = Some(now);
            counts.window_handshakes = 0;
        }
        if !validated && counts.window_handshakes >= HANDSHAKES_PER_SECOND_BEFORE_RETRY {
            metrics::counter!("agentd_connections_retried_total").increment(1);
            return Verdict::Retry;
        }
        counts.window_handshakes += 1;
        counts.connections += 1;
        metrics::gauge!("agentd_connections").set(counts.connections as f64);
        Verdict::Accept(ConnectionTicket { gate: self.clone() })
    }

    /// Admits a connection that turned out to be a client's, or `None` past
    /// a client cap.
    pub(super) fn client(self: &Arc<Self>, address: IpAddr) -> Option<ClientTicket> {
        let mut counts = lock(&self.counts);
        let from_address = counts.clients_by_address.get(&address).copied().unwrap_or(0);
        if counts.clients >= CLIENT_CONNECTIONS_MAX || from_address >= CLIENT_CONNECTIONS_PER_ADDRESS_MAX {
            metrics::counter!("agentd_connections_refused_total", "why" => "client cap").increment(1);
            return None;
        }
        counts.clients += 1;
        *counts.clients_by_address.entry(address).or_default() += 1;
        metrics::gauge!("agentd_client_connections").set(counts.clients as f64);
        Some(ClientTicket { gate: self.clone(), address })
    }
}

impl Drop for ConnectionTicket {
    fn drop(&mut self) {
        let mut counts = lock(&self.gate.counts);
        counts.connections -= 1;
        metrics::gauge!("agentd_connections").set(counts.connections as f64);
    }
}

impl Drop for ClientTicket {
    fn drop(&mut self) {
        let mut counts = lock(&self.gate.counts);
        counts.clients -= 1;
        if let Some(count) = counts.clients_by_address.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                counts.clients_by_address.remove(&self.address);
            }
        }
        metrics::gauge!("agentd_client_connections").set(counts.clients as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn caps_refuse_new_connections_and_free_up_when_tickets_drop() {
        let gate = Arc::new(Gate::default());
        let address: IpAddr = "10.0.0.1".parse().unwrap();
        let mut tickets = Vec::new();
        for _ in 0..CLIENT_CONNECTIONS_PER_ADDRESS_MAX {
            tickets.push(gate.client(address).expect("under the cap"));
        }
        assert!(gate.client(address).is_none(), "one past the per-address cap");
        assert!(gate.client("10.0.0.2".parse().unwrap()).is_some(), "another address is unaffected");
        tickets.pop();
        assert!(gate.client(address).is_some(), "a closed connection frees its slot");
    }

    #[tokio::test(start_paused = true)]
    async fn fast_handshakes_get_a_retry_and_the_total_cap_refuses() {
        let gate = Arc::new(Gate::default());
        let mut tickets = Vec::new();
        for _ in 0..HANDSHAKES_PER_SECOND_BEFORE_RETRY {
            let Verdict::Accept(ticket) = gate.incoming(false) else { panic!("under the rate") };
            tickets.push(ticket);
        }
        assert_eq!(gate.incoming(false), Verdict::Retry);
        // A validated address is not asked again; a new second resets the rate.
        assert!(matches!(gate.incoming(true), Verdict::Accept(_)));
        tokio::time::advance(Duration::from_secs(1)).await;
        while tickets.len() < CONNECTIONS_MAX {
            let Verdict::Accept(ticket) = gate.incoming(true) else { panic!("under the cap") };
            tickets.push(ticket);
        }
        assert_eq!(gate.incoming(true), Verdict::Refuse);
        tickets.pop();
        assert!(matches!(gate.incoming(true), Verdict::Accept(_)));
    }
}
