//! Admission control shared by all reactors: the connection cap (503), the per-address
//! cap (429), and the drain flag (503). It is touched once per connect and once per
//! disconnect, never per message.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use parking_lot::Mutex;
use protocol::handshake::Status;

/// Sockets beyond the cap that are still read so they can be told 503; past this many,
/// new sockets are closed at once.
const REFUSAL_SLACK: usize = 256;

/// What admission decided for a new socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Serve it.
    Admit,
    /// Read the request, then answer with this status.
    Refuse(Status),
    /// Close at once: too many sockets even to refuse politely.
    Drop,
}

/// The shared state.
#[derive(Debug)]
pub struct Admission {
    max_connections: usize,
    max_per_ip: u32,
    open: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, u32>>,
    draining: AtomicBool,
}

impl Admission {
    /// `max_per_ip` 0 means no per-address limit.
    pub fn new(max_connections: usize, max_per_ip: u32) -> Self {
        Admission {
            max_connections,
            max_per_ip,
            open: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            draining: AtomicBool::new(false),
        }
    }

    /// The configured cap.
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// Sockets open now (admitted and being refused).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Stop admitting: every new socket is refused with 503.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether the node is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Decides on a new socket from `ip`. Every verdict but `Drop` must be paired with
    /// one [`release`](Self::release) with the same verdict when the socket closes.
    pub fn admit(&self, ip: IpAddr) -> Verdict {
        let open = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        if open > self.max_connections + REFUSAL_SLACK {
            self.open.fetch_sub(1, Ordering::Relaxed);
            return Verdict::Drop;
        }
        if self.is_draining() || open > self.max_connections {
            return Verdict::Refuse(Status::ServiceUnavailable);
        }
        if self.max_per_ip > 0 {
            let mut map = self.per_ip.lock();
            let n = map.entry(ip).or_insert(0);
            if *n >= self.max_per_ip {
                return Verdict::Refuse(Status::TooManyRequests);
            }
            *n += 1;
        }
        Verdict::Admit
    }

    /// Returns what [`admit`](Self::admit) took.
    pub fn release(&self, ip: IpAddr, verdict: Verdict) {
        if verdict == Verdict::Drop {
            return;
        }
        self.open.fetch_sub(1, Ordering::Relaxed);
        if verdict == Verdict::Admit && self.max_per_ip > 0 {
            let mut map = self.per_ip.lock();
            if let Some(n) = map.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&ip);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_limit_counts_only_admitted_sockets() {
        let a = Admission::new(100, 2);
        let ip: IpAddr = [127, 0, 0, 2].into();
        let other: IpAddr = [127, 0, 0, 3].into();
        assert_eq!(a.admit(ip), Verdict::Admit);
        assert_eq!(a.admit(ip), Verdict::Admit);
        let v = a.admit(ip);
        assert_eq!(v, Verdict::Refuse(Status::TooManyRequests));
        assert_eq!(a.admit(other), Verdict::Admit);
        a.release(ip, v);
        a.release(ip, Verdict::Admit);
        assert_eq!(a.admit(ip), Verdict::Admit);
        // ip twice (one released, one re-admitted), other once.
        assert_eq!(a.open(), 3);
    }

    #[test]
    fn capacity_then_slack_then_drop() {
        let a = Admission::new(1, 0);
        let ip: IpAddr = [127, 0, 0, 2].into();
        assert_eq!(a.admit(ip), Verdict::Admit);
        for _ in 0..REFUSAL_SLACK {
            assert_eq!(a.admit(ip), Verdict::Refuse(Status::ServiceUnavailable));
        }
        assert_eq!(a.admit(ip), Verdict::Drop);
        assert_eq!(a.open(), 1 + REFUSAL_SLACK);
    }

    #[test]
    fn draining_refuses_everyone() {
        let a = Admission::new(10, 0);
        a.start_draining();
        assert_eq!(
            a.admit([127, 0, 0, 1].into()),
            Verdict::Refuse(Status::ServiceUnavailable)
        );
    }
}
