//! The TCP exchange that starts a multi-process NCCL group, torchrun-style:
//! rank 0 listens on `MASTER_ADDR:MASTER_PORT`, every other rank connects,
//! says who it is, and receives rank 0's NCCL unique id (128 bytes).
//!
//! Plain `std`, no CUDA: the NCCL collective calls it, and it is tested on
//! any machine. Every wait has a deadline, and every failure says what to
//! check: the address that does not resolve, the port already in use, the
//! ranks that never connected, two processes claiming one rank.

use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Bytes of the id handed out (NCCL's `ncclUniqueId`).
pub const ID_BYTES: usize = 128;

/// Opens every message, so that a stray client or server is recognised.
const MAGIC: &[u8; 8] = b"maskddp1";

/// How often a connecting rank retries while rank 0 is not listening yet.
const RETRY: Duration = Duration::from_millis(100);

/// Why the exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum RendezvousError {
    /// `MASTER_ADDR:MASTER_PORT` does not resolve.
    #[error(
        "cannot resolve the rendezvous address {addr}: {source}; check MASTER_ADDR (the host \
         of rank 0, as the other ranks reach it)"
    )]
    Resolve {
        /// `host:port`.
        addr: String,
        /// The resolver's error.
        source: io::Error,
    },
    /// Rank 0 cannot listen on the port.
    #[error(
        "rank 0 cannot listen on {addr}: {source}; pick a free MASTER_PORT (another job may \
         hold this one) and a MASTER_ADDR of this host"
    )]
    Listen {
        /// `host:port`.
        addr: String,
        /// The socket error.
        source: io::Error,
    },
    /// Some ranks never connected to rank 0 in time.
    #[error(
        "rank 0 waited {waited:.0?} at {addr} but ranks {missing:?} never connected; start \
         every rank with the same MASTER_ADDR, MASTER_PORT and WORLD_SIZE"
    )]
    Missing {
        /// Where rank 0 listened.
        addr: String,
        /// The ranks that did not connect.
        missing: Vec<usize>,
        /// How long rank 0 waited.
        waited: Duration,
    },
    /// A rank could not reach rank 0 in time.
    #[error(
        "rank {rank} could not reach rank 0 at {addr} within {waited:.0?} (last error: \
         {source}); check MASTER_ADDR and MASTER_PORT, and that rank 0 is running"
    )]
    Unreachable {
        /// The connecting rank.
        rank: usize,
        /// Rank 0's address.
        addr: String,
        /// How long it tried.
        waited: Duration,
        /// The last connection error.
        source: io::Error,
    },
    /// The peers disagree about the group, or one is not a rendezvous peer.
    #[error("rendezvous at {addr}: {reason}")]
    Protocol {
        /// Rank 0's address.
        addr: String,
        /// What is wrong.
        reason: String,
    },
}

fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, RendezvousError> {
    let addr = format!("{host}:{port}");
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|source| RendezvousError::Resolve {
            addr: addr.clone(),
            source,
        })?
        .collect();
    if addrs.is_empty() {
        return Err(RendezvousError::Resolve {
            addr,
            source: io::Error::new(io::ErrorKind::NotFound, "no address"),
        });
    }
    Ok(addrs)
}

/// Rank 0's side: a bound listener, before anybody connects.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    addr: String,
}

impl Server {
    /// Listens on `host:port` (port 0: any free port, for tests).
    pub fn bind(host: &str, port: u16) -> Result<Self, RendezvousError> {
        let addrs = resolve(host, port)?;
        let addr = format!("{host}:{port}");
        let listener = TcpListener::bind(&addrs[..]).map_err(|source| RendezvousError::Listen {
            addr: addr.clone(),
            source,
        })?;
        Ok(Self { listener, addr })
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map_or(0, |addr| addr.port())
    }

    /// Waits until ranks `1..world` have connected (or `timeout` passes),
    /// then sends each of them `id`.
    pub fn hand_out(
        self,
        world: usize,
        id: &[u8; ID_BYTES],
        timeout: Duration,
    ) -> Result<(), RendezvousError> {
        let start = Instant::now();
        let protocol = |reason: String| RendezvousError::Protocol {
            addr: self.addr.clone(),
            reason,
        };
        let io_error = |err: io::Error| protocol(format!("a connection failed: {err}"));
        self.listener.set_nonblocking(true).map_err(io_error)?;
        let mut peers: Vec<(usize, TcpStream)> = Vec::new();
        let mut joined = BTreeSet::new();
        while joined.len() + 1 < world {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    stream.set_nonblocking(false).map_err(io_error)?;
                    let remaining = timeout.saturating_sub(start.elapsed()).max(RETRY);
                    stream.set_read_timeout(Some(remaining)).map_err(io_error)?;
                    let mut hello = [0u8; 24];
                    stream.read_exact(&mut hello).map_err(io_error)?;
                    if &hello[..8] != MAGIC {
                        return Err(protocol(
                            "a connection that is not a maskddp rank arrived; is MASTER_PORT \
                             used by another service?"
                                .to_owned(),
                        ));
                    }
                    let rank = u64::from_le_bytes(hello[8..16].try_into().unwrap()) as usize;
                    let their_world =
                        u64::from_le_bytes(hello[16..24].try_into().unwrap()) as usize;
                    if their_world != world {
                        return Err(protocol(format!(
                            "rank {rank} was started with WORLD_SIZE {their_world}, rank 0 with \
                             {world}"
                        )));
                    }
                    if rank == 0 || rank >= world || !joined.insert(rank) {
                        return Err(protocol(format!(
                            "two processes claim rank {rank} (or it is out of 1..{world}); give \
                             every process its own RANK"
                        )));
                    }
                    peers.push((rank, stream));
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    if start.elapsed() >= timeout {
                        return Err(RendezvousError::Missing {
                            addr: self.addr.clone(),
                            missing: (1..world).filter(|rank| !joined.contains(rank)).collect(),
                            waited: start.elapsed(),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(err) => return Err(io_error(err)),
            }
        }
        for (_, stream) in &mut peers {
            stream.write_all(MAGIC).map_err(io_error)?;
            stream.write_all(id).map_err(io_error)?;
        }
        Ok(())
    }
}

/// Rank `rank`'s side (not 0): connects to rank 0 at `host:port`, retrying
/// until `timeout` while rank 0 is not listening yet, and receives the id.
pub fn fetch_id(
    host: &str,
    port: u16,
    rank: usize,
    world: usize,
    timeout: Duration,
) -> Result<[u8; ID_BYTES], RendezvousError> {
    let addrs = resolve(host, port)?;
    let addr = format!("{host}:{port}");
    let start = Instant::now();
    let mut stream = loop {
        match TcpStream::connect(&addrs[..]) {
            Ok(stream) => break stream,
            Err(source) if start.elapsed() >= timeout => {
                return Err(RendezvousError::Unreachable {
                    rank,
                    addr,
                    waited: start.elapsed(),
                    source,
                });
            }
            Err(_) => std::thread::sleep(RETRY),
        }
    };
    let protocol = |reason: String| RendezvousError::Protocol {
        addr: addr.clone(),
        reason,
    };
    let io_error = |err: io::Error| {
        protocol(format!(
            "rank {rank} lost rank 0 before it handed out the id ({err}); rank 0 gives up when a \
             rank is missing: see its error"
        ))
    };
    let remaining = timeout.saturating_sub(start.elapsed()).max(RETRY);
    // Rank 0 answers once every rank is in: allow it the whole timeout.
    stream
        .set_read_timeout(Some(remaining + timeout))
        .map_err(io_error)?;
    let mut hello = Vec::with_capacity(24);
    hello.extend_from_slice(MAGIC);
    hello.extend_from_slice(&(rank as u64).to_le_bytes());
    hello.extend_from_slice(&(world as u64).to_le_bytes());
    stream.write_all(&hello).map_err(io_error)?;
    let mut reply = [0u8; 8 + ID_BYTES];
    stream.read_exact(&mut reply).map_err(io_error)?;
    if &reply[..8] != MAGIC {
        return Err(protocol(
            "the server at MASTER_ADDR:MASTER_PORT is not maskddp's rank 0".to_owned(),
        ));
    }
    Ok(reply[8..].try_into().expect("128 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHORT: Duration = Duration::from_secs(2);

    fn id() -> [u8; ID_BYTES] {
        std::array::from_fn(|i| i as u8)
    }

    #[test]
    fn every_rank_gets_rank_0s_id() {
        let server = Server::bind("127.0.0.1", 0).unwrap();
        let port = server.port();
        let ranks: Vec<_> = (1..4)
            .map(|rank| std::thread::spawn(move || fetch_id("127.0.0.1", port, rank, 4, SHORT)))
            .collect();
        server.hand_out(4, &id(), SHORT).unwrap();
        for rank in ranks {
            assert_eq!(rank.join().unwrap().unwrap(), id());
        }
    }

    #[test]
    fn a_missing_rank_is_named_and_its_peers_fail_too() {
        let server = Server::bind("127.0.0.1", 0).unwrap();
        let port = server.port();
        let rank1 = std::thread::spawn(move || fetch_id("127.0.0.1", port, 1, 3, SHORT));
        let err = server
            .hand_out(3, &id(), Duration::from_millis(500))
            .unwrap_err();
        assert!(matches!(&err, RendezvousError::Missing { missing, .. } if missing == &[2]));
        assert!(
            err.to_string().contains("ranks [2] never connected"),
            "{err}"
        );
        let err = rank1.join().unwrap().unwrap_err();
        assert!(err.to_string().contains("rank 1 lost rank 0"), "{err}");
    }

    #[test]
    fn a_port_in_use_is_reported() {
        let first = Server::bind("127.0.0.1", 0).unwrap();
        let err = Server::bind("127.0.0.1", first.port()).unwrap_err();
        assert!(err.to_string().contains("pick a free MASTER_PORT"), "{err}");
    }

    #[test]
    fn a_wrong_address_is_reported() {
        let err = fetch_id("no-such-host.invalid", 29500, 1, 2, SHORT).unwrap_err();
        assert!(matches!(err, RendezvousError::Resolve { .. }), "{err}");
        assert!(err.to_string().contains("check MASTER_ADDR"), "{err}");

        // Resolves, but nobody listens.
        let port = Server::bind("127.0.0.1", 0).unwrap().port();
        let err = fetch_id("127.0.0.1", port, 1, 2, Duration::from_millis(300)).unwrap_err();
        assert!(err.to_string().contains("could not reach rank 0"), "{err}");
    }

    #[test]
    fn disagreeing_ranks_are_reported() {
        let server = Server::bind("127.0.0.1", 0).unwrap();
        let port = server.port();
        let other = std::thread::spawn(move || fetch_id("127.0.0.1", port, 1, 3, SHORT));
        let err = server.hand_out(2, &id(), SHORT).unwrap_err();
        assert!(
            err.to_string().contains("WORLD_SIZE 3, rank 0 with 2"),
            "{err}"
        );
        assert!(other.join().unwrap().is_err());

        let server = Server::bind("127.0.0.1", 0).unwrap();
        let port = server.port();
        let twins: Vec<_> = (0..2)
            .map(|_| std::thread::spawn(move || fetch_id("127.0.0.1", port, 1, 3, SHORT)))
            .collect();
        let err = server.hand_out(3, &id(), SHORT).unwrap_err();
        assert!(
            err.to_string().contains("two processes claim rank 1"),
            "{err}"
        );
        for twin in twins {
            assert!(twin.join().unwrap().is_err());
        }
    }
}
