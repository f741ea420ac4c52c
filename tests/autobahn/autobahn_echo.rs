//! Echo harness for Autobahn|Testsuite (tests/autobahn/run.sh). It runs the production worker,
//! HTTP parser, upgrade handshake, WebSocket codec and writer with one difference: upgraded
//! sockets echo every data message instead of speaking the gateway protocol.

use clap::Parser;
use smithers_gateway::auth::Authenticator;
use smithers_gateway::config::{AuthConfig, Config, DriverKind, GatewayConfig};
use smithers_gateway::runtime::{Server, Service};
use smithers_gateway::state::{GatewayState, Services};
use std::net::SocketAddr;

#[derive(Parser)]
#[command(about = "WebSocket echo server on the gateway's own codec, for Autobahn")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9001")]
    listen: SocketAddr,
    /// Largest message accepted; larger ones close with 1009.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    message_bytes_max: usize,
    #[arg(long, value_enum, default_value = "auto")]
    driver: DriverKind,
}

fn main() {
    let args = Args::parse();
    let gateway = GatewayConfig {
        message_bytes_max: args.message_bytes_max,
        outbound_bytes_max: 4 * args.message_bytes_max.max(1 << 20),
        auth: Some(AuthConfig::None {
            trust_any_host: false,
        }),
        ..GatewayConfig::default()
    };
    let config = Config {
        listen: args.listen,
        workers: 1,
        data_dir: std::env::temp_dir(),
        driver: args.driver,
        gateway: gateway.clone(),
    };
    let authenticator = Authenticator::new(
        AuthConfig::None {
            trust_any_host: false,
        },
        None,
    );
    let server = match Server::start_service(config, Service::Echo, move |port| {
        GatewayState::new(gateway, authenticator, Services::transport_only(1), port)
    }) {
        Ok(server) => server,
        Err(error) => {
            eprintln!("autobahn_echo: cannot start: {error}");
            std::process::exit(1);
        }
    };
    eprintln!(
        "autobahn_echo listening on ws://{}/ ({:?})",
        server.local_addr(),
        server.driver()
    );
    server.join();
}
