//! The `tessera` binary: parses the command line and runs the server.

use std::process::ExitCode;

use clap::Parser;
use tessera::cli::{Cli, Command};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .target(env_logger::Target::Stderr)
        .init();
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
            match tessera::runtime::serve(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("tessera: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
