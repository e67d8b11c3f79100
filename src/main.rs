//! `rmm`: parse, set up diagnostics, run, map the result to an exit code.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = match rmm::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return rmm::cli::parse_failed(e),
    };
    init_tracing(cli.verbose);
    // Write errors on stdout and stderr are settled here (`cli::finish`).
    rmm::cli::finish(rmm::run(cli))
}

/// Diagnostics go to stderr; `RUST_LOG` wins over `-v`. Without `-v`,
/// the store engine's own log lines are left out: a damaged store is
/// reported once, as the `rmm:` line naming its file (sled also logs an
/// `ERROR sled::pagecache::snapshot: unexpected corruption …` line for
/// some damaged bytes, which made two lines of one failure).
fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn,sled=off",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    // A failed write is remembered by `cli::stderr` (exit 2); the
    // subscriber's own report of it would be an `eprintln!`, which panics.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(rmm::cli::stderr)
        .log_internal_errors(false)
        .init();
}
