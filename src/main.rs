//! The `tessera` binary: parses the command line (and the config file it
//! names) and runs the server.

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser};
use tessera::api::{App, McpServer};
use tessera::config::{CommandToolConfig, FileDirConfig, PromptFileConfig, ServerConfig};

mod cli;
mod config_file;
mod fixtures;

use cli::{Cli, ClusterCommand, Command, FixtureSet, ServeArgs, StoreCommand};
use config_file::ConfigFile;

fn main() -> ExitCode {
    // Without RUST_LOG the logger lets everything through and the level is
    // the global cap (info, or --log-level), which a reload can raise or
    // lower; with RUST_LOG its per-module filter applies as well.
    let rust_log = std::env::var_os("RUST_LOG").is_some();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("trace"))
        .target(env_logger::Target::Stderr)
        .format(log_line)
        .init();
    if !rust_log {
        log::set_max_level(log::LevelFilter::Info);
    }
    tessera::install_panic_hook();
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match cli.command {
        Command::Serve(args) => {
            let serve_matches = matches
                .subcommand_matches("serve")
                .expect("serve was matched");
            // What followed `serve` on the command line (tessera has no
            // options before the subcommand).
            let cli_args: Vec<OsString> = std::env::args_os().skip(2).collect();
            let (args, config, declared) = match resolve(*args, serve_matches, &cli_args) {
                Ok(r) => r,
                Err(code) => return code,
            };
            let app = match app(&args, &config, &declared) {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("tessera: {e}");
                    return ExitCode::from(2);
                }
            };
            // SIGHUP: the same command line and config file, read again.
            let reload: tessera::Reload = Box::new(move || {
                let mut argv: Vec<OsString> = vec!["tessera".into(), "serve".into()];
                argv.extend(cli_args.iter().cloned());
                let matches = Cli::command()
                    .try_get_matches_from(argv)
                    .map_err(|e| e.to_string())?;
                let serve_matches = matches
                    .subcommand_matches("serve")
                    .expect("the argv names serve");
                let args = ServeArgs::from_arg_matches(serve_matches).map_err(|e| e.to_string())?;
                let (args, config, declared) = resolve(args, serve_matches, &cli_args)
                    .map_err(|_| "the configuration has errors (reported above)".to_string())?;
                let reloaded = self::app(&args, &config, &declared)?;
                Ok((config, reloaded))
            });
            match tessera::serve_reloadable(config, app, Some(reload)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("tessera: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Reload { upgrade_socket } => {
            match tessera::control_socket::ask(&upgrade_socket, "reload") {
                Ok(done) => {
                    println!("{done}");
                    ExitCode::SUCCESS
                }
                Err(why) => {
                    eprintln!("tessera: {why}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Cluster(ClusterCommand::Status {
            cluster,
            cluster_password_file,
            cluster_tls_ca_file,
            cluster_key_prefix,
            json,
        }) => cluster_status(
            cluster,
            cluster_password_file,
            cluster_tls_ca_file,
            cluster_key_prefix,
            json,
        ),
        Command::Backup {
            to,
            keep,
            upgrade_socket,
            data_dir,
        } => {
            let done = match (upgrade_socket, data_dir) {
                (Some(socket), _) => {
                    let keep = keep.map_or("-".to_string(), |k| k.to_string());
                    let dest = std::path::absolute(&to).unwrap_or(to);
                    tessera::control_socket::ask(
                        &socket,
                        &format!("backup {keep} {}", dest.display()),
                    )
                }
                (None, Some(dir)) => {
                    tessera::config::backup_offline(&dir, &to, keep.map(|k| k as usize))
                        .map(|(d, m)| tessera::config::describe_backup(&d, &m))
                }
                (None, None) => unreachable!("clap requires one"),
            };
            match done {
                Ok(line) => {
                    println!("{line}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("tessera: backup: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Restore {
            from,
            data_dir,
            shards,
        } => match tessera::config::restore(&from, &data_dir, shards) {
            Ok(m) => {
                println!(
                    "restored {} into {}",
                    tessera::config::describe_backup(&from, &m),
                    data_dir.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("tessera: restore: {e}");
                ExitCode::FAILURE
            }
        },
        Command::GenKey => {
            println!("{}", tessera::config::gen_key());
            ExitCode::SUCCESS
        }
        Command::Store(StoreCommand::Rekey {
            upgrade_socket: Some(socket),
            ..
        }) => match tessera::control_socket::ask(&socket, "store-rekey") {
            Ok(line) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("tessera: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Store(StoreCommand::Rekey {
            upgrade_socket: None,
            data_dir,
            store_key_file,
        }) => {
            let (Some(data_dir), Some(store_key_file)) = (data_dir, store_key_file) else {
                unreachable!(
                    "clap requires --data-dir and --store-key-file without --upgrade-socket"
                )
            };
            let keys = match tessera::config::StoreKeys::from_file(&store_key_file) {
                Ok(k) => k,
                Err(e) => {
                    eprintln!("tessera: --store-key-file {e}");
                    return ExitCode::from(2);
                }
            };
            match tessera::config::rekey(&data_dir, &keys) {
                Ok(r) => {
                    println!(
                        "rekeyed {} file(s) under key {}: {} record(s) rewritten, {} already current, {} unreadable (left; never served)",
                        r.files,
                        keys.sealing_id(),
                        r.resealed,
                        r.current,
                        r.unreadable
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("tessera: store rekey: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::HashToken { principal, roles } => {
            if principal.is_empty() || principal.chars().any(char::is_whitespace) {
                eprintln!("tessera: --principal must be one word");
                return ExitCode::from(2);
            }
            let mut token = String::new();
            if std::io::stdin().read_line(&mut token).is_err() || token.trim().is_empty() {
                eprintln!("tessera: give the token on stdin (e.g. `printf %s \"$TOKEN\" | tessera hash-token --principal alice`)");
                return ExitCode::from(2);
            }
            println!(
                "{}",
                tessera::config::hash_line(token.trim(), &principal, &roles)
            );
            ExitCode::SUCCESS
        }
        Command::CheckConfig { file } => {
            let empty = Cli::command()
                .try_get_matches_from(["tessera", "serve"])
                .expect("serve without flags parses");
            let args = ServeArgs::parse_from_serve(&[]);
            let serve_matches = empty.subcommand_matches("serve").expect("serve");
            let args = ServeArgs {
                config: Some(file.clone()),
                ..args
            };
            match resolve(args, serve_matches, &[]) {
                Ok((args, config, declared)) => {
                    // The registry as the server would build it (duplicate
                    // tool names, bad schemas, unreadable directories).
                    if let Err(e) = app(&args, &config, &declared)
                        .and_then(|a| a.validate().map_err(|e| e.to_string()))
                    {
                        eprintln!("tessera: {}: {e}", file.display());
                        return ExitCode::from(2);
                    }
                    println!(
                        "{}: ok ({} shard(s) on cores {:?}, {} command tool(s), {} resource dir(s), {} prompt template(s))",
                        file.display(),
                        config.cores.len(),
                        config.cores,
                        declared.tools.len(),
                        declared.dirs.len(),
                        declared.prompts.len()
                    );
                    ExitCode::SUCCESS
                }
                Err(code) => code,
            }
        }
    }
}

/// `[time LEVEL thread target] message`: the thread names the shard
/// (`tessera-shard-N`), `main` or `tessera-admin`, so every line says where it
/// came from without each call site repeating it.
fn log_line(f: &mut env_logger::fmt::Formatter, r: &log::Record<'_>) -> std::io::Result<()> {
    use std::io::Write as _;
    let thread = std::thread::current();
    // The session whose request this thread is serving, when there is one.
    let session = tessera::log_session();
    let session = session.as_deref().map(|s| format!(" session={s}"));
    writeln!(
        f,
        "[{} {:<5} {}{} {}] {}",
        f.timestamp_millis(),
        r.level(),
        thread.name().unwrap_or("?"),
        session.unwrap_or_default(),
        r.target(),
        r.args()
    )
}

/// The tools, resources and prompts to serve.
fn app(args: &ServeArgs, config: &ServerConfig, declared: &Declared) -> Result<App, String> {
    match args.fixtures {
        None => {
            let mut server = McpServer::new().with_builtins();
            let max_children = config.limits.max_command_children_per_shard;
            for t in &declared.tools {
                server = server.command_tool(t.clone(), max_children);
            }
            for d in &declared.dirs {
                server = server.file_dir(d.clone()).map_err(|e| e.to_string())?;
            }
            for p in &declared.prompts {
                server = server.prompt_file(p).map_err(|e| e.to_string())?;
            }
            Ok(server.build())
        }
        Some(FixtureSet::Conformance) => Ok(fixtures::conformance()),
    }
}

/// What the config file declares besides flags.
#[derive(Default)]
struct Declared {
    tools: Vec<CommandToolConfig>,
    dirs: Vec<FileDirConfig>,
    prompts: Vec<PromptFileConfig>,
}

/// Applies `--config` (the file's keys under the command line's flags) and
/// checks the result. Errors are printed, naming the file line and key
/// where there is one; the exit code is 2.
fn resolve(
    args: ServeArgs,
    serve_matches: &clap::ArgMatches,
    cli_args: &[OsString],
) -> Result<(ServeArgs, ServerConfig, Declared), ExitCode> {
    let (args, file) = match &args.config {
        None => (args, None),
        Some(path) => {
            let file = ConfigFile::load(path).map_err(|errors| {
                for e in &errors {
                    eprintln!("tessera: {e}");
                }
                ExitCode::from(2)
            })?;
            let argv = file.merged_argv(serve_matches, cli_args);
            let merged = match Cli::try_parse_from(argv) {
                Ok(Cli {
                    command: Command::Serve(a),
                }) => *a,
                Ok(_) => unreachable!("the merged argv starts with serve"),
                Err(e) => {
                    eprintln!(
                        "tessera: {}: {}",
                        path.display(),
                        e.to_string().lines().next().unwrap_or("")
                    );
                    return Err(ExitCode::from(2));
                }
            };
            let overridden = file
                .entries
                .iter()
                .filter(|e| {
                    serve_matches.value_source(&e.key)
                        == Some(clap::parser::ValueSource::CommandLine)
                })
                .count();
            log::info!(
                "configuration from {} ({} key(s), {overridden} overridden on the command line)",
                path.display(),
                file.entries.len()
            );
            (merged, Some(file))
        }
    };
    match args.to_config() {
        Ok(mut config) => {
            let (declared, roles) = file
                .map(|f| {
                    (
                        Declared {
                            tools: f.tools,
                            dirs: f.dirs,
                            prompts: f.prompts,
                        },
                        f.roles,
                    )
                })
                .unwrap_or_default();
            if !roles.is_empty() {
                let Some(auth) = config.auth.as_mut() else {
                    eprintln!("tessera: [[role]] needs --auth token or --auth jwt (roles restrict authenticated principals)");
                    return Err(ExitCode::from(2));
                };
                auth.roles = roles;
                let undefined = auth.undefined_roles();
                if !undefined.is_empty() {
                    eprintln!(
                        "tessera: the tokens file names roles no [[role]] defines: {}",
                        undefined.join(", ")
                    );
                    return Err(ExitCode::from(2));
                }
            }
            if !declared.tools.is_empty() {
                log::info!(
                    "{} command tool(s) from the config file",
                    declared.tools.len()
                );
            }
            for d in &declared.dirs {
                log::info!(
                    "serving {} as {} ({})",
                    d.root.display(),
                    d.uri_prefix,
                    if d.watch { "watched" } else { "not watched" }
                );
            }
            Ok((args, config, declared))
        }
        Err(e) => {
            match file
                .as_ref()
                .and_then(|f| f.locate(&e).map(|entry| (f, entry)))
            {
                Some((f, entry)) => eprintln!(
                    "tessera: {}:{}: key `{}`: {e}",
                    f.path.display(),
                    entry.line,
                    entry.key
                ),
                None => eprintln!("tessera: {e}"),
            }
            Err(ExitCode::from(2))
        }
    }
}

/// `tessera cluster status`: prints the nodes, exit 1 when Redis cannot be
/// read.
fn cluster_status(
    url: String,
    password_file: Option<std::path::PathBuf>,
    tls_ca_file: Option<std::path::PathBuf>,
    key_prefix: String,
    json: bool,
) -> ExitCode {
    // The status reader sends nothing node-to-node: no secret needed.
    let mut cfg = tessera::config::ClusterConfig::new(url, "status", vec![0; 16]);
    cfg.key_prefix = key_prefix;
    if let Some(f) = password_file {
        match tessera::config::read_secret_file(&f) {
            Ok(p) => cfg.password = Some(String::from_utf8_lossy(&p).into_owned()),
            Err(e) => {
                eprintln!("tessera: {e}");
                return ExitCode::from(2);
            }
        }
    }
    if let Some(f) = tls_ca_file {
        match std::fs::read(&f) {
            Ok(pem) => cfg.tls_ca_pem = Some(pem),
            Err(e) => {
                eprintln!("tessera: {}: {e}", f.display());
                return ExitCode::from(2);
            }
        }
    }
    if let Err(e) = cfg.check() {
        eprintln!("tessera: {e}");
        return ExitCode::from(2);
    }
    let nodes = match tessera::config::cluster_status(&cfg) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("tessera: {e}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        let doc = serde_json::json!({ "nodes": nodes });
        println!("{doc}");
        return ExitCode::SUCCESS;
    }
    println!(
        "{:<24} {:<5} {:<22} {:>6} {:>8} {:>10}",
        "NODE", "STATE", "ADVERTISE", "SHARDS", "SESSIONS", "HEARTBEAT"
    );
    for n in &nodes {
        println!(
            "{:<24} {:<5} {:<22} {:>6} {:>8} {:>8}ms",
            n.id,
            if n.live { "live" } else { "dead" },
            n.advertise,
            n.shards,
            n.sessions.values().sum::<u64>(),
            n.last_heartbeat_age_ms
        );
    }
    ExitCode::SUCCESS
}
