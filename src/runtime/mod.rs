//! Worker threads and their lifecycle: one monoio runtime per worker (io_uring, or epoll when
//! io_uring is unavailable or the legacy driver is chosen), each with its own `SO_REUSEPORT`
//! listener, owning its connections for life; start-up, and graceful shutdown on request.
//!
//! Invariant: no connection state is shared between workers; the only shared values are in
//! `state::GatewayState`.

mod http_conn;
pub use http_conn::auth_rpc_error;
pub mod notify;
pub mod outbound;
mod worker;
mod ws_session;

use crate::config::{Config, DriverKind};
use crate::state::GatewayState;
use futures_channel::oneshot;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// What upgraded sockets do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// The gateway protocol: challenge, connect, RPC, events.
    Gateway,
    /// Echo every data message back, with no auth and no pool limits: the Autobahn harness
    /// (tests/autobahn) runs the production HTTP, handshake, codec and writer code this way.
    Echo,
}

/// A running gateway.
pub struct Server {
    local_addr: SocketAddr,
    driver: DriverKind,
    state: Arc<GatewayState>,
    shutdown_senders: Mutex<Vec<oneshot::Sender<()>>>,
    workers: Vec<JoinHandle<()>>,
}

/// Stack for worker threads: parsing and encoding recurse up to the JSON depth limit.
const WORKER_STACK_BYTES: usize = 8 * 1024 * 1024;
const LISTEN_BACKLOG: i32 = 4096;

fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    // Each worker binds its own listener to the same address; the kernel spreads connections.
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// Whether io_uring can be used by this process.
pub fn io_uring_available() -> bool {
    monoio::utils::detect_uring()
}

impl Server {
    /// Binds one listener per worker and starts the workers. With port 0 the first listener picks
    /// the port and the others join it.
    pub fn start(
        config: Config,
        state_builder: impl FnOnce(u16) -> Arc<GatewayState>,
    ) -> io::Result<Server> {
        Server::start_service(config, Service::Gateway, state_builder)
    }

    /// Starts workers whose upgraded sockets run `service`.
    pub fn start_service(
        config: Config,
        service: Service,
        state_builder: impl FnOnce(u16) -> Arc<GatewayState>,
    ) -> io::Result<Server> {
        if config.workers == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "workers must be at least 1",
            ));
        }
        let driver = match config.driver {
            DriverKind::Auto if io_uring_available() => DriverKind::IoUring,
            DriverKind::Auto => DriverKind::Legacy,
            DriverKind::IoUring if !io_uring_available() => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "io_uring is not available on this kernel",
                ))
            }
            other => other,
        };
        let first = bind_listener(config.listen)?;
        let local_addr = first.local_addr()?;
        let mut listeners = vec![first];
        for _ in 1..config.workers {
            listeners.push(bind_listener(local_addr)?);
        }
        let state = state_builder(local_addr.port());
        let mut shutdown_senders = Vec::new();
        let mut workers = Vec::new();
        for (index, listener) in listeners.into_iter().enumerate() {
            let (sender, receiver) = oneshot::channel();
            shutdown_senders.push(sender);
            let state = state.clone();
            let handle = std::thread::Builder::new()
                .name(format!("worker-{index}"))
                .stack_size(WORKER_STACK_BYTES)
                .spawn(move || worker::run(index, driver, service, listener, state, receiver))?;
            workers.push(handle);
        }
        Ok(Server {
            local_addr,
            driver,
            state,
            shutdown_senders: Mutex::new(shutdown_senders),
            workers,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The driver the workers run on (never `Auto`).
    pub fn driver(&self) -> DriverKind {
        self.driver
    }

    pub fn state(&self) -> &Arc<GatewayState> {
        &self.state
    }

    /// Asks every worker to stop accepting, close WebSockets with 1001 and finish in-flight
    /// requests within the grace period. Returns at once; `join` waits.
    pub fn shutdown(&self) {
        let senders = match self.shutdown_senders.lock() {
            Ok(mut guard) => std::mem::take(&mut *guard),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        for sender in senders {
            let _ = sender.send(());
        }
    }

    /// Waits for every worker to finish.
    pub fn join(mut self) {
        for handle in self.workers.drain(..) {
            if handle.join().is_err() {
                tracing::error!("a worker thread panicked");
            }
        }
    }
}
