//! quinn over turmoil's simulated UDP: an [`AsyncUdpSocket`] backed by a
//! `turmoil::net::UdpSocket`, so the real QUIC stack (quinn, rustls) runs
//! between simulated hosts, under turmoil's partitions, latency and loss.

use agentd_protocol::sync::lock;
use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The port every simulated node listens on.
pub const NODE_PORT: u16 = 7000;

/// The address of node `node` (turmoil numbers hosts in the order they are
/// registered, and nodes are registered first).
pub fn node_ip(node: u64) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 168, 0, node as u8))
}

/// Duplicates datagrams a socket sends, at a rate the fault plan sets
/// (per million datagrams), with the socket's own seeded generator.
#[derive(Clone)]
pub struct Duplication {
    pub per_million: Arc<AtomicU32>,
    pub seed: u64,
}

type Readable = Pin<Box<dyn Future<Output = io::Result<()>> + Send>>;

/// A simulated UDP socket for a quinn endpoint.
pub struct SimSocket {
    socket: Arc<turmoil::net::UdpSocket>,
    local: SocketAddr,
    /// The pending wait for a datagram, kept across polls.
    readable: Mutex<Option<Readable>>,
    duplication: Option<(Arc<AtomicU32>, Mutex<StdRng>)>,
}

impl SimSocket {
    /// Binds `addr` on the current simulated host.
    pub async fn bind(addr: SocketAddr) -> io::Result<Arc<SimSocket>> {
        SimSocket::bind_with(addr, None).await
    }

    /// Binds `addr`, duplicating sent datagrams as `duplication` says.
    pub async fn bind_with(addr: SocketAddr, duplication: Option<Duplication>) -> io::Result<Arc<SimSocket>> {
        let socket = turmoil::net::UdpSocket::bind(addr).await?;
        let local = socket.local_addr()?;
        let duplication = duplication
            .map(|duplication| (duplication.per_million, Mutex::new(StdRng::seed_from_u64(duplication.seed))));
        Ok(Arc::new(SimSocket { socket: Arc::new(socket), local, readable: Mutex::new(None), duplication }))
    }

    fn duplicate_next(&self) -> bool {
        let Some((per_million, rng)) = &self.duplication else { return false };
        let rate = per_million.load(Ordering::Relaxed);
        rate > 0 && lock(rng).random_range(0..1_000_000) < rate
    }
}

impl fmt::Debug for SimSocket {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.debug_struct("SimSocket").field("local", &self.local).finish()
    }
}

/// Simulated sends never block, so the socket is always writable.
#[derive(Debug)]
struct AlwaysWritable;

impl UdpPoller for AlwaysWritable {
    fn poll_writable(self: Pin<&mut Self>, _cx: &mut Context) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncUdpSocket for SimSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(AlwaysWritable)
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        // A send to a crashed or unknown host is a lost datagram, as on a
        // real network; QUIC recovers.
        let copies = if self.duplicate_next() { 2 } else { 1 };
        for _ in 0..copies {
            if let Err(error) = self.socket.try_send_to(transmit.contents, transmit.destination) {
                if error.kind() == io::ErrorKind::WouldBlock {
                    return Err(error);
                }
            }
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let (Some(buf), Some(slot)) = (bufs.first_mut(), meta.first_mut()) else {
            return Poll::Ready(Ok(0));
        };
        let mut readable = lock(&self.readable);
        loop {
            match self.socket.try_recv_from(buf) {
                Ok((len, addr)) => {
                    *slot = RecvMeta { addr, len, stride: len, ecn: None, dst_ip: None };
                    return Poll::Ready(Ok(1));
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Poll::Ready(Err(error)),
            }
            let wait = readable.get_or_insert_with(|| {
                let socket = Arc::clone(&self.socket);
                Box::pin(async move { socket.readable().await })
            });
            match wait.as_mut().poll(cx) {
                Poll::Ready(result) => {
                    *readable = None;
                    result?;
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    fn may_fragment(&self) -> bool {
        false
    }
}
