//! `rmm`: parse, set up diagnostics, run, map the result to an exit code.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = rmm::cli::Cli::parse();
    init_tracing(cli.verbose);
    match rmm::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, whatever the cause's text holds.
            let line = e.to_string().split_whitespace().collect::<Vec<_>>().join(" ");
            eprintln!("rmm: {line}");
            e.exit_code()
        }
    }
}

/// Diagnostics go to stderr; `RUST_LOG` wins over `-v`.
fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init();
}
