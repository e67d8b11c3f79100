//! rmm stands up a Rancher management server and a highly available
//! Kubernetes cluster under it, on machines it creates through drivers, and
//! records every step in a durable, hash-chained event log, so that a run
//! that crashes anywhere is resumed with `rmm up --resume` without creating
//! anything twice.
//!
//! # Layout
//! * `cli`        — clap commands, one file per subcommand.
//! * `config`     — `rmm.toml` + flags → a validated `Plan`.
//! * `engine`     — runs one attempt: journal, actix System, Coordinator, signals.
//! * `state_dir`  — the lock (names its holder), the store, the secrets file.
//! * `secrets`    — `FileSecrets`, the owner-only `SecretStore`.
//! * `view`       — the JSON and text shapes of `status`, `replay`, `log`.
//! * `progress`   — the live view while `up` runs.
//! * `drivers`    — machine drivers (`local`: the embedded world).
//! * `rancher`    — the reqwest client of Rancher's v3 API.
//! * `emulator`   — the Rancher API emulator the local world runs.
//! * `error`      — `Error` and the exit codes.
//!
//! The pure core is in the `rmm-events` crate; the actors and the ports in
//! `rmm-actors`.

pub mod cli;
pub mod config;
pub mod drivers;
pub mod emulator;
pub mod engine;
pub mod error;
pub mod progress;
pub mod rancher;
pub mod registry;
pub mod report;
pub mod secrets;
pub mod state_dir;
pub mod view;

use cli::{Cli, Command};
use error::Result;
use state_dir::StateDir;

/// Runs one command line.
pub fn run(cli: Cli) -> Result<()> {
    let dir = StateDir::new(cli.state_dir.clone());
    let config = cli::up::ConfigFileSource {
        required: cli.config.is_some(),
        path: cli.config.clone().unwrap_or_else(|| "rmm.toml".into()),
    };
    match cli.command {
        Command::Up(args) => cli::up::run(args, &dir, &config),
        Command::Status(args) => cli::status::run(args, &dir, &config),
        // `rmm plan` keeps exit 2 for "there are changes" alone, as
        // `terraform plan -detailed-exitcode` (0 none, 1 error, 2 changes):
        // its own errors — a change `up` would refuse, a bad rmm.toml, a
        // state dir that is not ours — exit 1, so a script can tell them
        // apart. (clap's usage errors stay 2, as for every command.)
        Command::Plan(args) => cli::plan::run(args, &dir, &config).map_err(|e| match e {
            error::Error::Config(m) | error::Error::StateDir(m) => error::Error::Other(m),
            e => e,
        }),
        Command::Log(args) => cli::log::run(args, &dir),
        Command::Replay(args) => cli::replay::run(args, &dir),
        Command::Report(args) => cli::report::run(args, &dir),
        Command::Down(args) => cli::down::run(args, &dir, &config),
        Command::Credentials(args) => cli::credentials::run(args, &dir),
        Command::Kubeconfig(args) => cli::kubeconfig::run(args, &dir),
        Command::List(args) => cli::list::run(args),
        Command::Tamper(args) => cli::tamper(args, &dir),
        Command::Synth(args) => cli::synth::run(args, &dir),
        Command::Environment => {
            crate::outln!("{}", cli::ENVIRONMENT);
            Ok(())
        }
        Command::Completion(args) => cli::completion(args),
        Command::Emulator(args) => emulator::run(args).map_err(|e| error::Error::Other(format!("{e:#}"))),
    }
}
