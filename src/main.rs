//! The `smithers-gateway` binary: parse flags and the config file, bootstrap the admin token,
//! start the workers, print where to connect, and wait for SIGINT/SIGTERM. Nothing else.

use anyhow::Context;
use clap::{Parser, Subcommand};
use smithers_gateway::auth::Authenticator;
use smithers_gateway::config::Synchronous;
use smithers_gateway::config::{Config, DriverKind, FileConfig, DEFAULT_LISTEN};
use smithers_gateway::engine::core::EngineOptions;
use smithers_gateway::gateway::StartOptions;
use smithers_gateway::logging::{self, LogFormat};
use std::net::SocketAddr;
use std::path::PathBuf;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "smithers-gateway",
    version,
    about = "The Smithers Gateway: headless control plane for Smithers workflows"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the gateway.
    Serve(ServeArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on (default 127.0.0.1:7331).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Worker threads, one per core by default.
    #[arg(long)]
    workers: Option<usize>,
    /// TOML config file with the gateway options (docs/CONFIG.md).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where the gateway keeps its state (default ./data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Directory of workflow files (default ./workflows).
    #[arg(long)]
    workflows: Option<PathBuf>,
    /// IO driver: auto (io_uring, else epoll), io-uring, or legacy (epoll). Env: GATEWAY_DRIVER.
    #[arg(long, value_enum, env = "GATEWAY_DRIVER")]
    driver: Option<DriverKind>,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "human", env = "GATEWAY_LOG_FORMAT")]
    log_format: LogFormat,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let Command::Serve(args) = cli.command;
    logging::init(args.log_format);
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let mut gateway = file.gateway;
    gateway.validate()?;
    let data_dir = args
        .data_dir
        .or(file.data_dir)
        .unwrap_or_else(|| PathBuf::from("data"));
    let config = Config {
        listen: args
            .listen
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.parse().unwrap_or_else(|_| unreachable!())),
        workers: args
            .workers
            .or(file.workers)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        data_dir: data_dir.clone(),
        driver: args.driver.or(file.driver).unwrap_or(DriverKind::Auto),
        gateway: gateway.clone(),
    };
    let admin = match &gateway.auth {
        Some(_) => None,
        None => {
            let admin = smithers_gateway::bootstrap::admin_token(&data_dir).with_context(|| {
                format!("cannot prepare the data directory {}", data_dir.display())
            })?;
            gateway.auth = Some(smithers_gateway::bootstrap::admin_auth(&admin.token));
            Some(admin)
        }
    };
    let auth = gateway
        .auth
        .clone()
        .unwrap_or_else(|| unreachable!("auth was set above"));
    let trust_env = std::env::var("SMITHERS_GATEWAY_TRUST_ANY_HOST").ok();
    let authenticator = Authenticator::new(auth, trust_env.as_deref());
    let mode = match &gateway.auth {
        Some(smithers_gateway::config::AuthConfig::None { .. }) => "none",
        Some(smithers_gateway::config::AuthConfig::Token { .. }) => "token",
        Some(smithers_gateway::config::AuthConfig::Jwt { .. }) => "jwt",
        Some(smithers_gateway::config::AuthConfig::TrustedProxy { .. }) => "trusted-proxy",
        None => "token",
    };
    let workflows_dir = args
        .workflows
        .or(file.workflows_dir)
        .unwrap_or_else(|| PathBuf::from("workflows"));
    let running = smithers_gateway::gateway::start(
        Config {
            gateway: gateway.clone(),
            ..config.clone()
        },
        StartOptions {
            workflows_dir: workflows_dir.clone(),
            authenticator,
            engine: EngineOptions::default(),
            synchronous_full: gateway.synchronous != Synchronous::Normal,
        },
    )
    .with_context(|| format!("cannot start the gateway on {}", config.listen))?;
    let server = &running.server;
    let addr = server.local_addr();
    tracing::info!(
        listen = %addr,
        workers = config.workers,
        driver = ?server.driver(),
        auth = mode,
        data_dir = %data_dir.display(),
        workflows_dir = %workflows_dir.display(),
        workflows = server.state().registry.workflows.len(),
        heartbeat_ms = gateway.heartbeat_ms,
        max_connections = gateway.connections_max,
        max_payload = gateway.message_bytes_max,
        max_body_bytes = gateway.body_bytes_max,
        "gateway started"
    );
    println!("smithers-gateway listening on http://{addr} (WebSocket ws://{addr}/)");
    if let Some(admin) = &admin {
        let note = if admin.created { "created" } else { "kept" };
        println!(
            "admin token ({note} in {}): {}",
            admin.path.display(),
            admin.token
        );
    }
    wait_for_signal()?;
    tracing::info!("shutting down");
    running.shutdown();
    tracing::info!("stopped");
    Ok(())
}

fn wait_for_signal() -> anyhow::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])?;
    let _ = signals.forever().next();
    Ok(())
}
