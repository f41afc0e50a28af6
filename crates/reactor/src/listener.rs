//! Listening sockets: one per reactor on the same address with `SO_REUSEPORT`, so the
//! kernel spreads incoming connections over the reactors with no shared accept lock; never
//! on an address another process already listens on.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Binds a non-blocking listener with `SO_REUSEADDR` and `SO_REUSEPORT`.
pub fn bind_reuseport(addr: SocketAddr, backlog: i32) -> io::Result<mio::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(mio::net::TcpListener::from_std(socket.into()))
}

/// Fails with `AddrInUse` when a socket already listens on `addr`. Binding with
/// `SO_REUSEPORT` would join any other `SO_REUSEPORT` listener there (another pushgate of
/// the same user) and silently take a share of its clients; a socket without it is
/// refused by every listener, whatever its options. `SO_REUSEADDR` lets the probe past
/// the `TIME_WAIT` connections a node restarted on its own port leaves behind. With port
/// 0 the kernel picks a free port: nothing to probe.
pub fn ensure_unused(addr: SocketAddr) -> io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    probe.set_reuse_address(true)?;
    match probe.bind(&addr.into()) {
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "address already in use by another process",
        )),
        other => other,
    }
}

/// Binds `n` listeners on one address, after [`ensure_unused`] found no other listener
/// there. With port 0 the first picks a free port and the others join it.
pub fn bind_group(
    addr: SocketAddr,
    n: usize,
    backlog: i32,
) -> io::Result<(Vec<mio::net::TcpListener>, SocketAddr)> {
    ensure_unused(addr)?;
    let first = bind_reuseport(addr, backlog)?;
    let bound = first.local_addr()?;
    let mut all = vec![first];
    for _ in 1..n {
        all.push(bind_reuseport(bound, backlog)?);
    }
    Ok((all, bound))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_in_use_is_refused_and_a_free_one_shared_by_the_group() {
        let (group, addr) = bind_group("127.0.0.1:0".parse().unwrap(), 3, 16).unwrap();
        assert_eq!(group.len(), 3);
        // Our own SO_REUSEPORT group would admit a fourth member; the probe refuses it.
        let err = bind_group(addr, 1, 16).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(err.to_string().contains("another process"), "{err}");
        // Any listener, with or without SO_REUSEPORT, on the wildcard too.
        let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = plain.local_addr().unwrap().port();
        for a in [format!("127.0.0.1:{port}"), format!("0.0.0.0:{port}")] {
            let err = bind_group(a.parse().unwrap(), 2, 16).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{a}");
        }
        drop(plain);
        let (again, _) = bind_group(format!("127.0.0.1:{port}").parse().unwrap(), 2, 16).unwrap();
        assert_eq!(again.len(), 2);
    }
}
