//! One worker: a monoio runtime on its own thread, its own listener, and the connections it
//! accepted. Shutdown stops the accept loop, asks every connection to finish (WebSockets close
//! with 1001), and waits up to the grace period before dropping what is left.

use super::http_conn;
use super::notify::Notify;
use super::ws_session::{self, WsWorker};
use super::Service;
use crate::config::DriverKind;
use crate::state::{GatewayState, Slot, SlotKind};
use futures_channel::oneshot;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::TcpListener;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why a connection is asked to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// Server shutdown: finish the current request; WebSockets close with 1001.
    Shutdown,
}

/// The worker's handle on one connection, used to stop it from outside its task.
#[derive(Debug, Default)]
pub struct ConnControl {
    stop: Cell<Option<StopReason>>,
    /// Woken when `stop` is set; the connection's main task is the only waiter.
    pub wake: Notify,
}

impl ConnControl {
    pub fn stop_reason(&self) -> Option<StopReason> {
        self.stop.get()
    }

    pub fn request_stop(&self, reason: StopReason) {
        self.stop.set(Some(reason));
        self.wake.notify();
    }
}

/// Worker-local state shared by the worker's connection tasks.
pub struct WorkerContext {
    /// Ends the broadcast delivery task at shutdown.
    delivery_stop: Notify,
    /// The WebSocket sessions' shared machinery: broadcast recipients, read buffer, flusher, timers.
    pub ws: WsWorker,
    pub index: usize,
    pub service: Service,
    pub state: Arc<GatewayState>,
    connections: RefCell<HashMap<u64, Rc<ConnControl>>>,
    next_connection_id: Cell<u64>,
    stopping: Cell<bool>,
}

impl WorkerContext {
    pub fn is_stopping(&self) -> bool {
        self.stopping.get()
    }

    fn register(&self) -> (u64, Rc<ConnControl>) {
        let id = self.next_connection_id.get();
        self.next_connection_id.set(id + 1);
        let control = Rc::new(ConnControl::default());
        self.connections.borrow_mut().insert(id, control.clone());
        (id, control)
    }

    fn unregister(&self, id: u64) {
        self.connections.borrow_mut().remove(&id);
    }
}

/// Thread entry point: builds the runtime for `driver` and serves until shutdown.
pub(super) fn run(
    index: usize,
    driver: DriverKind,
    service: Service,
    listener: TcpListener,
    state: Arc<GatewayState>,
    shutdown: oneshot::Receiver<()>,
) {
    let served = match driver {
        DriverKind::IoUring | DriverKind::Auto => {
            monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                .enable_timer()
                .build()
                .map(|mut runtime| {
                    runtime.block_on(serve(index, service, listener, state, shutdown));
                })
        }
        DriverKind::Legacy => monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .map(|mut runtime| {
                runtime.block_on(serve(index, service, listener, state, shutdown));
            }),
    };
    if let Err(error) = served {
        tracing::error!(worker = index, %error, "worker runtime could not start");
    }
}

async fn serve(
    index: usize,
    service: Service,
    listener: TcpListener,
    state: Arc<GatewayState>,
    mut shutdown: oneshot::Receiver<()>,
) {
    let listener = match monoio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(worker = index, %error, "listener could not join the runtime");
            return;
        }
    };
    let context = Rc::new(WorkerContext {
        delivery_stop: Notify::default(),
        ws: WsWorker::default(),
        index,
        service,
        state: state.clone(),
        connections: RefCell::new(HashMap::new()),
        next_connection_id: Cell::new(0),
        stopping: Cell::new(false),
    });
    let delivery = state
        .hub
        .take_receiver(index)
        .map(|receiver| monoio::spawn(deliver_broadcasts(context.clone(), receiver)));
    let flusher = monoio::spawn(ws_session::flusher(context.clone()));
    let ticker = monoio::spawn(ws_session::ticker(context.clone()));
    loop {
        monoio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => accept(&context, stream, peer),
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning on a full table.
                    tracing::warn!(worker = index, %error, "accept failed");
                    monoio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    context.stopping.set(true);
    let controls: Vec<Rc<ConnControl>> = context.connections.borrow().values().cloned().collect();
    for control in controls {
        control.request_stop(StopReason::Shutdown);
    }
    let deadline = Instant::now() + Duration::from_millis(state.config.shutdown_grace_ms);
    while !context.connections.borrow().is_empty() && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(10)).await;
    }
    context.delivery_stop.notify();
    if let Some(delivery) = delivery {
        delivery.await;
    }
    context.ws.stop();
    flusher.await;
    ticker.await;
    let left = context.connections.borrow().len();
    if left > 0 {
        tracing::warn!(
            worker = index,
            connections = left,
            "grace period over; dropping connections"
        );
    }
}

/// Hands each batch from the hub to every session of this worker, in order.
async fn deliver_broadcasts(
    context: Rc<WorkerContext>,
    receiver: flume::Receiver<crate::events::hub::BroadcastBatch>,
) {
    loop {
        let batch = monoio::select! {
            batch = receiver.recv_async() => batch,
            _ = context.delivery_stop.notified() => return,
        };
        let Ok(batch) = batch else { return };
        context.ws.deliver(&batch);
    }
}

fn accept(context: &Rc<WorkerContext>, stream: monoio::net::TcpStream, peer: std::net::SocketAddr) {
    let state = &context.state;
    let Some(slot) = Slot::try_acquire(state, SlotKind::Socket, state.config.sockets_max) else {
        state
            .counters
            .sockets_refused
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(worker = context.index, %peer, "socket limit reached; closing new connection");
        return;
    };
    let _ = stream.set_nodelay(true);
    set_send_buffer(&stream, state.config.socket_send_buffer_bytes);
    let (id, control) = context.register();
    let context = context.clone();
    // The HTTP phase is boxed outside the task and its result consumed in a block, so none of
    // its state (the socket and address it was given included) stays in the task while the
    // WebSocket session runs.
    let http = Box::pin(http_conn::serve(
        stream,
        peer,
        context.clone(),
        control.clone(),
    ));
    let task = async move {
        let opened = {
            let upgraded = http.await;
            upgraded.and_then(|upgraded| ws_session::open(upgraded, &context, &control))
        };
        drop(control);
        if let Some(opened) = opened {
            ws_session::serve(opened).await;
        }
        context.unregister(id);
        drop(slot);
    };
    monoio::spawn(task);
}

/// Bounds the kernel send buffer so a slow reader shows up in our own queue quickly.
fn set_send_buffer(stream: &monoio::net::TcpStream, bytes: usize) {
    use std::os::fd::AsRawFd;
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: the fd is a valid socket owned by `stream` for the duration of the call, and the
    // option value is a c_int as SO_SNDBUF expects.
    let result = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result != 0 {
        tracing::debug!("SO_SNDBUF could not be set");
    }
}
