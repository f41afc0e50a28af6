//! Starting the reactors, and stopping them with a drain.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use mio::{Poll, Waker};

use crate::admission::Admission;
use crate::config::ReactorConfig;
use crate::event_loop::{Reactor, WAKER};
use crate::inbox::{Command, Hooks, ReactorHandle};
use crate::listener::bind_group;
use crate::stats::ReactorStats;

/// The running client listener.
#[derive(Debug)]
pub struct Server {
    local_addr: SocketAddr,
    handles: Vec<ReactorHandle>,
    threads: Vec<JoinHandle<io::Result<()>>>,
    admission: Arc<Admission>,
}

impl Server {
    /// Binds the listener and starts `config.reactors` threads. `hooks(i, stats)` makes
    /// reactor `i`'s hooks, which may count into that reactor's `stats`.
    pub fn start(
        config: ReactorConfig,
        mut hooks: impl FnMut(u16, &Arc<ReactorStats>) -> Box<dyn Hooks>,
    ) -> io::Result<Server> {
        let n = config.reactors.max(1);
        let (listeners, local_addr) = bind_group(config.listen, n, config.backlog)?;
        let admission = Arc::new(Admission::new(
            config.max_connections,
            config.max_connections_per_ip,
        ));
        let config = Arc::new(config);
        let mut handles = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for (i, listener) in listeners.into_iter().enumerate() {
            let id = i as u16;
            let poll = Poll::new()?;
            let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
            let (tx, rx) = crossbeam_channel::unbounded();
            let stats = Arc::new(ReactorStats::default());
            let reactor = Reactor::new(
                id,
                poll,
                listener,
                rx,
                Arc::clone(&config),
                Arc::clone(&admission),
                Arc::clone(&stats),
                hooks(id, &stats),
            )?;
            let thread = std::thread::Builder::new()
                .name(format!("reactor-{i}"))
                .spawn(move || reactor.run())?;
            handles.push(ReactorHandle {
                id,
                tx,
                waker,
                stats,
            });
            threads.push(thread);
        }
        Ok(Server {
            local_addr,
            handles,
            threads,
            admission,
        })
    }

    /// The bound client address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
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
            h.send(Command::Drain { window });
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
