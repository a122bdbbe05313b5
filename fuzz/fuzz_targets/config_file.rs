//! `tessera serve --config FILE` and `tessera check-config`: the binary's
//! own TOML reader and its translation into `serve` flags. Oracles: no
//! panic; every error names the file; a file that parses yields an
//! argument vector clap either accepts or refuses with an error.
#![no_main]

use std::path::Path;

use clap::{ArgMatches, Command, CommandFactory, FromArgMatches};
use libfuzzer_sys::fuzz_target;
use tessera_fuzz::cli::Cli;
use tessera_fuzz::config_file::ConfigFile;

thread_local! {
    /// The flag definitions and the matches of a bare `tessera serve`, built
    /// once: building clap's command is most of an input's cost otherwise.
    static CLI: (Command, ArgMatches) = {
        let command = Cli::command();
        let empty = command
            .clone()
            .try_get_matches_from(["tessera", "serve"])
            .expect("serve without flags parses");
        (command, empty)
    };
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let path = Path::new("fuzz.toml");
    match ConfigFile::parse(path, &text) {
        Err(errors) => {
            assert!(!errors.is_empty(), "a refused file with no error");
            for e in errors {
                assert!(e.to_string().starts_with("fuzz.toml"), "{e}");
            }
        }
        Ok(file) => CLI.with(|(command, empty)| {
            let serve = empty.subcommand_matches("serve").expect("serve");
            let argv = file.merged_argv(serve, &[]);
            let parsed = command
                .clone()
                .try_get_matches_from(argv)
                .and_then(|m| Cli::from_arg_matches(&m));
            if let Err(e) = parsed {
                let _ = file.locate(&e.to_string());
            }
        }),
    }
});
