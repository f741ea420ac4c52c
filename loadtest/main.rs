//! `loadtest`: the load generator of smithers-gateway (docs/LOADTEST.md).
//!
//! `loadtest SCENARIO [options]` starts a fresh gateway (or uses `--url`), runs the scenario with
//! a raw-epoll client pinned to its own CPU, does the same against the tokio baseline, repeats
//! both interleaved (`--runs`, A/B/A/B with fresh processes), and reports medians, the gateway's
//! advantage over the baseline, and the project's targets as a table or JSON.
//!
//! Everything is bounded: phase durations, connection counts (at most 19,000 per process, under
//! the 20,000 open-file limit), handshake and drain deadlines; loopback addresses only.

mod client;
mod control;
mod publisher;
mod report;
mod scenarios;
mod server;
mod stats;
mod sys;
mod wire;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use scenarios::{Bound, Scenario, Settings};
use server::{Kind, Server, ServerOptions};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Connections this process may hold: under the machine's hard limit of 20,000 descriptors,
/// with room for the control calls, FIFOs and the binary itself.
const CONNECTIONS_MAX: usize = 19_000;

#[derive(Parser)]
#[command(
    name = "loadtest",
    version,
    about = "Load generator for smithers-gateway, with a tokio baseline measured in the same run",
    long_about = "Load generator for smithers-gateway, with a tokio baseline measured in the same run.\n\n\
        Without --url it starts the gateway itself (one worker pinned to --server-cpu, the client on \
        --client-cpu), and the tokio baseline the same way, --runs times each, interleaved. The report \
        gives medians, the gateway's advantage over the baseline, and the project's targets.\n\n\
        Scenarios, figures and method: docs/LOADTEST.md."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Memory per idle connection (RssAnon growth / N).
    Idle(IdleArgs),
    /// Closed-loop fan-out: single events and bursts in flight (--inflight).
    Fanout(FanoutArgs),
    /// Open-loop fan-out at a fixed publish rate: latency p50/p99/max at that rate.
    Sustained(RateArgs),
    /// Stalled subscribers among fast ones: time to cut them, fast subscribers' p99.
    Backpressure(BackpressureArgs),
    /// Handshakes per second with many in flight.
    ConnectStorm(StormArgs),
    /// POST /rpc and WebSocket `health` requests, closed loop, at depth 1 and 8.
    Rpc(RpcArgs),
    /// DevTools streams (`streamDevTools`) following a busy run. Gateway only.
    Devtools(DevtoolsArgs),
    /// Broadcast, run streams, DevTools streams and RPC at once. Gateway only.
    Mixed(MixedArgs),
    /// Print a workflow file loadtest needs (for --url: put it in the gateway's workflows dir).
    PrintWorkflow {
        #[arg(value_enum, default_value = "pulse")]
        which: WhichWorkflow,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum WhichWorkflow {
    /// loadtest-pulse: FIFO lines become task.output events (every broadcast scenario).
    Pulse,
    /// loadtest-churn: a run that renders frames quickly (devtools, mixed).
    Churn,
}

#[derive(Args, Clone)]
struct Common {
    /// Use a gateway already running on this machine (ws://127.0.0.1:PORT/) instead of starting one.
    #[arg(long)]
    url: Option<String>,
    /// Bearer token for --url (default: $SMITHERS_TOKEN).
    #[arg(long, env = "SMITHERS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Measured time of each phase (e.g. 30s, 500ms, 2m).
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    duration: Duration,
    /// Unmeasured time before each measured phase.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    warmup: Duration,
    /// Runs per server; gateway and baseline alternate (A/B/A/B), each run a fresh process.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Print the report as JSON on stdout (the table goes to stderr).
    #[arg(long)]
    json: bool,
    /// Save the report under --runs-dir/DATE-MACHINE/.
    #[arg(long)]
    save: bool,
    /// Where --save writes.
    #[arg(long, default_value = "loadtest/runs")]
    runs_dir: PathBuf,
    /// Exit non-zero unless the scenario's checks pass (for broadcasts: every subscriber got
    /// every published event exactly once).
    #[arg(long)]
    check: bool,
    /// Measure the gateway only.
    #[arg(long)]
    no_baseline: bool,
    /// Measure one server only (e.g. to profile it).
    #[arg(long, value_enum)]
    only: Option<Kind>,
    /// The gateway binary (default: smithers-gateway next to this binary).
    #[arg(long)]
    gateway_bin: Option<PathBuf>,
    /// The baseline binary (default: loadtest-baseline next to this binary).
    #[arg(long)]
    baseline_bin: Option<PathBuf>,
    /// CPU the servers are pinned to.
    #[arg(long, default_value_t = 0)]
    server_cpu: usize,
    /// CPU the client is pinned to.
    #[arg(long, default_value_t = 1)]
    client_cpu: usize,
    /// Do not pin anything.
    #[arg(long)]
    no_pin: bool,
    /// Gateway worker threads (more than 1 is informational: the client then competes for CPU).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Size of a published event's frame on the wire (lines are padded to reach it).
    #[arg(long, default_value_t = 370)]
    frame_bytes: usize,
    /// SQLite durability of the spawned gateway: full (its default) or normal.
    #[arg(long, default_value = "full", value_parser = ["full", "normal"])]
    synchronous: String,
    /// Handshakes in flight while opening connections [default: 128; with --url 32, under the
    /// gateway's default maxPreAuthConnections of 64].
    #[arg(long)]
    connect_parallel: Option<usize>,
    /// Keep the spawned servers' scratch directories (data, logs).
    #[arg(long)]
    keep: bool,
}

#[derive(Args)]
struct IdleArgs {
    #[command(flatten)]
    common: Common,
    /// Idle connections.
    #[arg(long, default_value_t = 1_000)]
    subscribers: usize,
    /// Wait after the last handshake before memory is read.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    settle: Duration,
}

#[derive(Args)]
struct FanoutArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value_t = 1_000)]
    subscribers: usize,
    /// Published events kept in flight, one phase per value.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    inflight: Vec<usize>,
}

#[derive(Args)]
struct RateArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value_t = 1_000)]
    subscribers: usize,
    /// Published events per second.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
}

#[derive(Args)]
struct BackpressureArgs {
    #[command(flatten)]
    common: Common,
    /// Fast subscribers.
    #[arg(long, default_value_t = 100)]
    subscribers: usize,
    /// Stalled subscribers.
    #[arg(long, default_value_t = 1)]
    stalled: usize,
    /// Published events per second.
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// The bound that should cut a stalled subscriber.
    #[arg(long, value_enum, default_value = "stream")]
    bound: Bound,
    /// maxOutboundBytes of the spawned gateway (default: its own, 32 MiB).
    #[arg(long)]
    outbound_bytes: Option<u64>,
}

#[derive(Args)]
struct StormArgs {
    #[command(flatten)]
    common: Common,
    /// Connections opened.
    #[arg(long, default_value_t = 10_000)]
    subscribers: usize,
    /// Handshakes in flight.
    #[arg(long, default_value_t = 256)]
    parallel: usize,
}

#[derive(Args)]
struct RpcArgs {
    #[command(flatten)]
    common: Common,
    /// Connections per phase.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// WebSocket requests in flight per connection, one phase per value (at most 8).
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    depths: Vec<usize>,
    /// Skip the POST /rpc phase.
    #[arg(long)]
    no_http: bool,
}

#[derive(Args)]
struct DevtoolsArgs {
    #[command(flatten)]
    common: Common,
    /// DevTools subscribers.
    #[arg(long, default_value_t = 100)]
    subscribers: usize,
    /// delay_ms of the churn workflow's task (a frame every few of these).
    #[arg(long, default_value_t = 20)]
    churn_delay_ms: u64,
}

#[derive(Args)]
struct MixedArgs {
    #[command(flatten)]
    common: Common,
    /// Broadcast subscribers.
    #[arg(long, default_value_t = 1_000)]
    subscribers: usize,
    /// Published events per second.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Connections with a streamRunEvents stream on the pulse run.
    #[arg(long, default_value_t = 8)]
    streams: usize,
    /// Connections with a streamDevTools stream on a churn run.
    #[arg(long, default_value_t = 8)]
    devtools_streams: usize,
    /// WebSocket connections with one health request in flight.
    #[arg(long, default_value_t = 16)]
    rpc_connections: usize,
    /// Keep-alive connections with one POST /rpc in flight.
    #[arg(long, default_value_t = 8)]
    http_connections: usize,
    #[arg(long, default_value_t = 20)]
    churn_delay_ms: u64,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number with ms, s or m"))?;
    let seconds = match unit {
        "ms" => value / 1_000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("{text:?}: unit must be ms, s or m")),
    };
    if !(0.0..=3_600.0).contains(&seconds) {
        return Err(format!("{text:?}: must be between 0 and 1 hour"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// The settings of one invocation, and the options it shares.
fn resolve(command: Command) -> Result<(Settings, Common, u64)> {
    let mut settings = Settings {
        scenario: Scenario::Idle,
        subscribers: 0,
        duration: Duration::ZERO,
        warmup: Duration::ZERO,
        frame_bytes: 0,
        connect_parallel: 0,
        check: false,
        inflight: vec![1],
        rate: 0.0,
        stalled: 0,
        bound: Bound::Stream,
        storm_parallel: 0,
        rpc_connections: 0,
        rpc_depths: Vec::new(),
        rpc_http: false,
        streams: 0,
        devtools_streams: 0,
        http_connections: 0,
        outbound_bytes_max: None,
        settle: Duration::ZERO,
    };
    let mut churn_delay_ms = 20;
    let common = match command {
        Command::Idle(a) => {
            settings.scenario = Scenario::Idle;
            settings.subscribers = a.subscribers;
            settings.settle = a.settle;
            a.common
        }
        Command::Fanout(a) => {
            settings.scenario = Scenario::Fanout;
            settings.subscribers = a.subscribers;
            if a.inflight.is_empty() || a.inflight.iter().any(|n| *n == 0 || *n > 4_096) {
                bail!("--inflight values must be 1..=4096");
            }
            settings.inflight = a.inflight;
            a.common
        }
        Command::Sustained(a) => {
            settings.scenario = Scenario::Sustained;
            settings.subscribers = a.subscribers;
            settings.rate = a.rate;
            a.common
        }
        Command::Backpressure(a) => {
            settings.scenario = Scenario::Backpressure;
            settings.subscribers = a.subscribers;
            settings.stalled = a.stalled;
            settings.rate = a.rate;
            settings.bound = a.bound;
            settings.outbound_bytes_max = a.outbound_bytes;
            a.common
        }
        Command::ConnectStorm(a) => {
            settings.scenario = Scenario::ConnectStorm;
            settings.subscribers = a.subscribers;
            settings.storm_parallel = a.parallel.max(1);
            a.common
        }
        Command::Rpc(a) => {
            settings.scenario = Scenario::Rpc;
            settings.rpc_connections = a.connections;
            settings.rpc_depths = a.depths;
            settings.rpc_http = !a.no_http;
            a.common
        }
        Command::Devtools(a) => {
            settings.scenario = Scenario::Devtools;
            settings.subscribers = a.subscribers;
            churn_delay_ms = a.churn_delay_ms;
            a.common
        }
        Command::Mixed(a) => {
            settings.scenario = Scenario::Mixed;
            settings.subscribers = a.subscribers;
            settings.rate = a.rate;
            settings.streams = a.streams;
            settings.devtools_streams = a.devtools_streams;
            settings.rpc_connections = a.rpc_connections;
            settings.http_connections = a.http_connections;
            churn_delay_ms = a.churn_delay_ms;
            a.common
        }
        Command::PrintWorkflow { .. } => bail!("print-workflow has no settings"),
    };
    settings.duration = common.duration;
    settings.warmup = common.warmup;
    settings.frame_bytes = common.frame_bytes;
    let default_parallel = if common.url.is_some() { 32 } else { 128 };
    settings.connect_parallel = common.connect_parallel.unwrap_or(default_parallel).max(1);
    settings.check = common.check;
    if common.runs == 0 || common.runs > 101 {
        bail!("--runs must be 1..=101");
    }
    if settings.scenario == Scenario::Sustained && settings.rate <= 0.0 {
        bail!("--rate must be above 0");
    }
    Ok((settings, common, churn_delay_ms))
}

/// Connections the client will hold at once.
fn connections_needed(settings: &Settings) -> usize {
    match settings.scenario {
        Scenario::Rpc => settings.rpc_connections,
        Scenario::Mixed => {
            settings.subscribers
                + settings.streams
                + settings.devtools_streams
                + settings.rpc_connections
                + settings.http_connections
                + 1
        }
        _ => settings.subscribers + settings.stalled + 1,
    }
}

fn sibling_binary(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(error) => {
            eprintln!("loadtest: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main() -> Result<ExitCode> {
    let cli = Cli::parse();
    if let Command::PrintWorkflow { which } = cli.command {
        match which {
            WhichWorkflow::Pulse => print!("{}", server::PULSE_WORKFLOW_TOML),
            WhichWorkflow::Churn => print!("{}", server::churn_workflow_toml(20)),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let (settings, common, churn_delay_ms) = resolve(cli.command)?;
    sys::ignore_sigpipe();
    let (nofile, _) = sys::raise_nofile_limit().context("cannot raise the open-file limit")?;
    let needed = connections_needed(&settings);
    if needed > CONNECTIONS_MAX {
        bail!(
            "{needed} connections asked for; one loadtest process holds at most {CONNECTIONS_MAX} (the machine's hard limit is 20,000 open files per process)"
        );
    }
    if needed as u64 + 200 > nofile {
        bail!("{needed} connections need more than the open-file limit of {nofile}");
    }
    let pin = !common.no_pin && sys::cpus_allowed() >= 2;
    let pinning = if pin {
        sys::pin_to_cpu(0, common.client_cpu)
            .with_context(|| format!("cannot pin the client to CPU {}", common.client_cpu))?;
        format!(
            "server on CPU {}, client on CPU {}",
            common.server_cpu, common.client_cpu
        )
    } else {
        "not pinned".to_string()
    };
    let options = ServerOptions {
        gateway_bin: common
            .gateway_bin
            .clone()
            .unwrap_or_else(|| sibling_binary("smithers-gateway")),
        baseline_bin: common
            .baseline_bin
            .clone()
            .unwrap_or_else(|| sibling_binary("loadtest-baseline")),
        server_cpu: pin.then_some(common.server_cpu),
        workers: common.workers.max(1),
        connections: needed,
        parallel_handshakes: settings.connect_parallel.max(settings.storm_parallel),
        synchronous: common.synchronous.clone(),
        outbound_bytes_max: settings.outbound_bytes_max,
        churn_delay_ms,
        baseline_capacity: 1024,
        keep_dirs: common.keep,
    };
    let mut servers = vec![Kind::Gateway];
    if settings.scenario.has_baseline() && !common.no_baseline {
        servers.push(Kind::Baseline);
    }
    if let Some(only) = common.only {
        if only == Kind::Baseline && !settings.scenario.has_baseline() {
            bail!("the baseline cannot run {}", settings.scenario.name());
        }
        servers = vec![only];
    }
    let token = common.token.clone().unwrap_or_default();
    if common.url.is_some() && token.is_empty() {
        bail!("--url needs --token (or SMITHERS_TOKEN)");
    }
    // Taken before the first run, so the load average shows what else was running.
    let setup = report::setup(pinning, nofile);
    let mut records = Vec::new();
    let mut given_up: Vec<Kind> = Vec::new();
    for run in 0..common.runs {
        for &kind in &servers {
            if given_up.contains(&kind) {
                continue;
            }
            eprintln!(
                "loadtest: {} run {}/{} against the {}",
                settings.scenario.name(),
                run + 1,
                common.runs,
                kind.name()
            );
            let (outcome, error) = match one_run(&settings, &common, &options, kind, &token) {
                Ok(outcome) => (Some(outcome), None),
                Err(error) => {
                    eprintln!(
                        "loadtest: {} run {} failed: {error:#}",
                        kind.name(),
                        run + 1
                    );
                    // The same failure would repeat: do not spend the remaining runs on it.
                    given_up.push(kind);
                    (None, Some(format!("{error:#}")))
                }
            };
            records.push(report::RunRecord {
                server: kind,
                run,
                outcome,
                error,
            });
        }
    }
    let report = report::Report::build(setup, settings, records);
    if common.json {
        eprint!("{}", report.table());
        println!("{}", report.json());
    } else {
        print!("{}", report.table());
    }
    if common.save {
        let path = report.save(&common.runs_dir)?;
        eprintln!("loadtest: saved {}", path.display());
    }
    Ok(if report.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn one_run(
    settings: &Settings,
    common: &Common,
    options: &ServerOptions,
    kind: Kind,
    token: &str,
) -> Result<scenarios::Outcome> {
    let server = match (kind, &common.url) {
        (Kind::Gateway, Some(url)) => {
            let server = Server::attach_gateway(url, token, common.keep)?;
            let mut needed = Vec::new();
            if matches!(
                settings.scenario,
                Scenario::Fanout | Scenario::Sustained | Scenario::Backpressure | Scenario::Mixed
            ) {
                needed.push(server::PULSE_WORKFLOW);
            }
            if matches!(settings.scenario, Scenario::Devtools | Scenario::Mixed) {
                needed.push(server::CHURN_WORKFLOW);
            }
            server.check_workflows(&needed)?;
            server
        }
        (Kind::Gateway, None) => Server::start_gateway(options)?,
        (Kind::Baseline, _) => Server::start_baseline(options)?,
    };
    let result = scenarios::run(settings, &server);
    let alive = server.alive();
    let log = server.log_tail();
    server.stop()?;
    match result {
        Ok(outcome) => Ok(outcome),
        Err(error) if !alive => bail!("{error:#}; the server died, its log ends with:\n{log}"),
        Err(error) => Err(error),
    }
}
