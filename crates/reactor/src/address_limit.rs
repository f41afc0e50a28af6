//! A per-address bound on the control listener's connections, shared by the reactors
//! (`SO_REUSEPORT` spreads one address's connections over all of them). Touched once per
//! accept and once per close, never per request.

use std::collections::HashMap;
use std::net::IpAddr;

use parking_lot::Mutex;

/// Connections held per client address; 0 for no limit.
#[derive(Debug)]
pub(crate) struct AddressLimit {
    max: u32,
    held: Mutex<HashMap<IpAddr, u32>>,
}

impl AddressLimit {
    pub(crate) fn new(max: u32) -> Self {
        AddressLimit {
            max,
            held: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a place for a connection from `ip`; false if the address holds its limit.
    /// Every true is paired with one [`release`](Self::release).
    pub(crate) fn take(&self, ip: IpAddr) -> bool {
        if self.max == 0 {
            return true;
        }
        let mut held = self.held.lock();
        let n = held.entry(ip).or_insert(0);
        if *n >= self.max {
            return false;
        }
        *n += 1;
        true
    }

    /// Gives back what [`take`](Self::take) took.
    pub(crate) fn release(&self, ip: IpAddr) {
        if self.max == 0 {
            return;
        }
        let mut held = self.held.lock();
        if let Some(n) = held.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                held.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_holds_at_most_its_limit_and_gets_places_back() {
        let limit = AddressLimit::new(2);
        let (a, b): (IpAddr, IpAddr) = ([127, 0, 0, 2].into(), [127, 0, 0, 3].into());
        assert!(limit.take(a) && limit.take(a));
        assert!(!limit.take(a), "third from one address");
        assert!(limit.take(b), "another address is not affected");
        limit.release(a);
        assert!(limit.take(a));
        limit.release(a);
        limit.release(a);
        limit.release(b);
        assert!(
            limit.held.lock().is_empty(),
            "no entry kept for a gone address"
        );
        let none = AddressLimit::new(0);
        assert!((0..1000).all(|_| none.take(a)));
    }
}
