//! Starting the reactors, and stopping them with a drain.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use mio::{Poll, Waker};

use crate::admission::Admission;
use crate::config::ReactorConfig;
use crate::connections::{Reactor, SERVICE_BASE, WAKER};
use crate::driver::epoll::Epoll;
use crate::driver::uring::Uring;
use crate::driver::IoBackend;
use crate::inbox::{Hooks, InboxShared, ReactorHandle};
use crate::listener::bind_group;
use crate::service::{Service, ServiceConns, ServiceLimits};
use crate::stats::ReactorStats;

/// The client listener: bound by [`Server::bind`], serving once [`Server::run`] starts
/// its reactor threads.
#[derive(Debug)]
pub struct Server {
    local_addr: SocketAddr,
    service_addr: Option<SocketAddr>,
    handles: Vec<ReactorHandle>,
    /// Reactors bound but not yet running.
    ready: Vec<Ready>,
    backend: IoBackend,
    threads: Vec<JoinHandle<io::Result<()>>>,
    admission: Arc<Admission>,
}

impl Server {
    /// Binds and starts serving at once: [`Server::bind`] then [`Server::run`].
    pub fn start(
        config: ReactorConfig,
        hooks: impl FnMut(u16, &Arc<ReactorStats>) -> Box<dyn Hooks>,
    ) -> io::Result<Server> {
        let mut server = Server::bind(config, hooks)?;
        server.run()?;
        Ok(server)
    }

    /// Binds the listener and prepares `config.reactors` reactors without running them,
    /// so that whatever their hooks deliver to (the router) can be given their handles
    /// before the first client is accepted. `hooks(i, stats)` makes reactor `i`'s hooks,
    /// which may count into that reactor's `stats`.
    pub fn bind(
        config: ReactorConfig,
        hooks: impl FnMut(u16, &Arc<ReactorStats>) -> Box<dyn Hooks>,
    ) -> io::Result<Server> {
        Self::bind_with_service(config, hooks, |_| None)
    }

    /// [`Server::bind`], and each reactor also serves `config.service` with the
    /// [`Service`] that `services(i)` makes for reactor `i` (`None`: that reactor does
    /// not serve it).
    pub fn bind_with_service(
        config: ReactorConfig,
        mut hooks: impl FnMut(u16, &Arc<ReactorStats>) -> Box<dyn Hooks>,
        mut services: impl FnMut(u16) -> Option<Box<dyn Service>>,
    ) -> io::Result<Server> {
        let n = config.reactors.max(1);
        let backend = config.io.resolve()?;
        let named = |what: &'static str, addr: SocketAddr| {
            move |e: io::Error| io::Error::new(e.kind(), format!("{what} {addr}: {e}"))
        };
        let (listeners, local_addr) = bind_group(config.listen, n, config.backlog)
            .map_err(named("client listener", config.listen))?;
        let (mut service_listeners, service_addr) = match &config.service {
            Some(s) => {
                let (l, addr) = bind_group(s.listen, n, config.backlog)
                    .map_err(named("control listener", s.listen))?;
                (l.into_iter().map(Some).collect(), Some(addr))
            }
            None => (Vec::new(), None),
        };
        service_listeners.resize_with(n, || None);
        let admission = Arc::new(Admission::new(
            config.max_connections,
            config.max_connections_per_ip,
        ));
        let service_per_ip = Arc::new(crate::address_limit::AddressLimit::new(
            config
                .service
                .as_ref()
                .map_or(0, |s| s.limits.max_connections_per_ip),
        ));
        let config = Arc::new(config);
        let mut handles = Vec::with_capacity(n);
        let mut ready = Vec::with_capacity(n);
        for ((i, listener), service_listener) in
            listeners.into_iter().enumerate().zip(service_listeners)
        {
            let id = i as u16;
            let poll = Poll::new()?;
            let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
            let (tx, rx) = crossbeam_channel::bounded(config.inbox_depth.max(1));
            let inbox = Arc::new(InboxShared::new(config.inbox_bytes.max(1)));
            let stats = Arc::new(ReactorStats::default());
            let (answers_tx, answers_rx) = crossbeam_channel::unbounded();
            let (welcomes_tx, welcomes_rx) = crossbeam_channel::unbounded();
            let handle = ReactorHandle {
                id,
                tx,
                waker,
                stats: Arc::clone(&stats),
                inbox: Arc::clone(&inbox),
                backend: backend.name(),
                answers: answers_tx,
                welcomes: welcomes_tx,
            };
            let service = match (service_listener, &config.service) {
                (Some(l), Some(sc)) => {
                    // The node's bound, shared out: SO_REUSEPORT spreads connections evenly.
                    let limits = ServiceLimits {
                        max_connections: sc.limits.max_connections.div_ceil(n).max(1),
                        ..sc.limits
                    };
                    services(id).map(|s| {
                        ServiceConns::new(l, s, limits, SERVICE_BASE, Arc::clone(&service_per_ip))
                            .with_parking(handle.clone(), answers_rx)
                    })
                }
                _ => None,
            };
            let hooks = hooks(id, &stats);
            // The same reactor over either driver: only how bytes move differs.
            macro_rules! reactor {
                ($driver:expr) => {
                    Box::new(Reactor::new(
                        id,
                        $driver,
                        rx,
                        welcomes_rx,
                        Arc::clone(&inbox),
                        Arc::clone(&config),
                        Arc::clone(&admission),
                        Arc::clone(&stats),
                        hooks,
                        service,
                    )?)
                };
            }
            ready.push(match backend {
                IoBackend::IoUring => Ready::Uring(reactor!(Uring::new(
                    poll,
                    listener,
                    config.io_uring_buffers,
                    config.io_uring_buffer_size,
                )?)),
                IoBackend::Epoll | IoBackend::Auto => {
                    Ready::Epoll(reactor!(Epoll::new(poll, listener)?))
                }
            });
            handles.push(handle);
        }
        Ok(Server {
            local_addr,
            service_addr,
            handles,
            ready,
            backend,
            threads: Vec::with_capacity(n),
            admission,
        })
    }

    /// Starts the reactor threads: from here on clients are accepted.
    pub fn run(&mut self) -> io::Result<()> {
        for reactor in self.ready.drain(..) {
            let id = match &reactor {
                Ready::Epoll(r) => r.id(),
                Ready::Uring(r) => r.id(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("reactor-{id}"))
                .spawn(move || {
                    crate::inbox::set_current_reactor(id);
                    match reactor {
                        Ready::Epoll(r) => r.run(),
                        Ready::Uring(r) => r.run(),
                    }
                })?;
            self.threads.push(thread);
        }
        Ok(())
    }

    /// The I/O backend the reactors use (`epoll` or `io_uring`), `auto` resolved.
    pub fn io_backend(&self) -> &'static str {
        self.backend.name()
    }

    /// The bound client address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The bound service (server API) address, if the reactors serve one.
    pub fn service_addr(&self) -> Option<SocketAddr> {
        self.service_addr
    }

    /// One handle per reactor, by reactor index.
    pub fn reactors(&self) -> &[ReactorHandle] {
        &self.handles
    }

    /// Shared admission state (open sockets, capacity).
    pub fn admission(&self) -> &Arc<Admission> {
        &self.admission
    }

    /// Whether every reactor thread is still running.
    pub fn is_running(&self) -> bool {
        self.threads.iter().all(|t| !t.is_finished())
    }

    /// Stops accepting, closes every connection with 1001 spread over `window`, and waits
    /// for the reactors to finish (at most `window` plus the close timeout).
    pub fn shutdown(self, window: Duration) -> io::Result<()> {
        self.admission.start_draining();
        for h in &self.handles {
            h.drain(window);
        }
        let mut result = Ok(());
        for t in self.threads {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => result = Err(e),
                Err(_) => result = Err(io::Error::other("reactor thread panicked")),
            }
        }
        result
    }
}

/// A reactor bound and not yet running, over its backend.
#[derive(Debug)]
enum Ready {
    Epoll(Box<Reactor<Epoll>>),
    Uring(Box<Reactor<Uring>>),
}
