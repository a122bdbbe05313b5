//! The `tessera` binary: parses the command line and runs the server.

use std::process::ExitCode;

use clap::Parser;
use tessera::cli::{Cli, Command, FixtureSet};
use tessera::server::api::McpServer;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .target(env_logger::Target::Stderr)
        .init();
    tessera::runtime::supervisor::install_panic_hook();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let config = match args.to_config() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("tessera: {e}");
                    return ExitCode::from(2);
                }
            };
            let app = match args.fixtures {
                None => McpServer::new().with_builtins().build(),
                Some(FixtureSet::Conformance) => tessera::server::fixtures::conformance(),
            };
            match tessera::runtime::serve(config, app) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("tessera: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
