//! Listening sockets: one per reactor on the same address with `SO_REUSEPORT`, so the
//! kernel spreads incoming connections over the reactors with no shared accept lock.

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

/// Binds `n` listeners on one address. With port 0 the first picks a free port and the
/// others join it.
pub fn bind_group(
    addr: SocketAddr,
    n: usize,
    backlog: i32,
) -> io::Result<(Vec<mio::net::TcpListener>, SocketAddr)> {
    let first = bind_reuseport(addr, backlog)?;
    let bound = first.local_addr()?;
    let mut all = vec![first];
    for _ in 1..n {
        all.push(bind_reuseport(bound, backlog)?);
    }
    Ok((all, bound))
}
