//! Assembles a running gateway: opens storage, loads the workflows, starts the hub, the engine and
//! the workers, and stops them in the reverse order. `main` and the tests start the gateway
//! through here, so they run the same wiring.

use crate::auth::Authenticator;
use crate::config::Config;
use crate::cron::scheduler::{self, Scheduler, SchedulerThread};
use crate::engine::core::{self as engine, EngineHandle, EngineOptions};
use crate::engine::workflow::{load_dir, Registry};
use crate::events::hub::Hub;
use crate::runtime::Server;
use crate::state::{GatewayState, Services};
use crate::storage::{self, StorageOptions};
use std::path::PathBuf;
use std::sync::Arc;

/// Where the gateway keeps its database file inside the data directory.
pub const DATABASE_FILE: &str = "smithers.db";

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Workflows(#[from] crate::engine::workflow::LoadError),
    #[error("storage: {0}")]
    Storage(#[from] crate::storage::StorageError),
    #[error("cannot listen: {0}")]
    Listen(#[from] std::io::Error),
}

/// How long shutdown waits for the storage thread's last commit.
const STORAGE_STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Everything `start` needs beyond the config.
pub struct StartOptions {
    pub workflows_dir: PathBuf,
    pub authenticator: Authenticator,
    pub engine: EngineOptions,
    pub synchronous_full: bool,
}

/// A running gateway with its threads.
pub struct Gateway {
    pub server: Server,
    engine: EngineHandle,
    engine_thread: Option<std::thread::JoinHandle<()>>,
    cron_thread: Option<SchedulerThread>,
    storage_thread: Option<std::thread::JoinHandle<()>>,
}

pub fn start(config: Config, options: StartOptions) -> Result<Gateway, StartError> {
    let registry = Arc::new(if options.workflows_dir.is_dir() {
        load_dir(&options.workflows_dir)?
    } else {
        Registry::default()
    });
    let mut storage_options = StorageOptions::new(config.data_dir.join(DATABASE_FILE));
    storage_options.synchronous_full = options.synchronous_full;
    let (storage, storage_thread) = storage::open(storage_options)?;
    let workers = config.workers.max(1);
    let hub = Hub::new(workers, config.gateway.event_window_size);
    // The engine announces committed frames to this hub; the workers serve DevTools from it.
    let devtools = options.engine.devtools.clone();
    let (engine, engine_thread) = engine::start(
        storage.clone(),
        registry.clone(),
        hub.clone(),
        options.engine,
    )?;
    // Workflow schedules become `gateway:<key>` rows before anything can list or fire them;
    // the scheduler's first tick comes one poll interval later.
    let now_ms = i64::try_from(crate::clock::now_ms()).unwrap_or(i64::MAX);
    scheduler::sync_schedules(&storage, &registry, now_ms)?;
    let cron_thread = scheduler::start(
        Scheduler {
            storage: storage.clone(),
            engine: engine.clone(),
            registry: registry.clone(),
        },
        std::time::Duration::from_millis(scheduler::poll_interval_ms(config.gateway.heartbeat_ms)),
    )?;
    let services = Services {
        hub,
        registry,
        storage: Some(storage),
        engine: Some(engine.clone()),
        devtools,
    };
    let gateway = config.gateway.clone();
    let authenticator = options.authenticator;
    let server = match Server::start(config, move |port| {
        GatewayState::new(gateway, authenticator, services, port)
    }) {
        Ok(server) => server,
        Err(error) => {
            // Nothing may fire for a gateway that never started.
            cron_thread.stop();
            return Err(error.into());
        }
    };
    Ok(Gateway {
        server,
        engine,
        engine_thread: Some(engine_thread),
        cron_thread: Some(cron_thread),
        storage_thread: Some(storage_thread),
    })
}

impl Gateway {
    /// Stops accepting and closes sockets (waiting for the workers), then the cron scheduler (it
    /// launches through the engine), then the engine, and finally storage: its thread ends once
    /// the last handle is gone, after its last commit.
    pub fn shutdown(self) {
        let Gateway {
            server,
            engine,
            engine_thread,
            cron_thread,
            storage_thread,
        } = self;
        server.shutdown();
        server.join();
        if let Some(cron_thread) = cron_thread {
            cron_thread.stop();
        }
        engine.stop();
        drop(engine);
        if let Some(thread) = engine_thread {
            let _ = thread.join();
        }
        // The storage thread ends when its last handle is dropped; a handle still held elsewhere
        // (a detached task) must not hang shutdown, so the wait is bounded.
        if let Some(thread) = storage_thread {
            let deadline = std::time::Instant::now() + STORAGE_STOP_WAIT;
            while !thread.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            if thread.is_finished() {
                let _ = thread.join();
            } else {
                tracing::warn!(
                    "storage thread still running at shutdown; leaving it to the process exit"
                );
            }
        }
    }
}
