use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    Emulator(rmm::emulator::EmulatorArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Emulator(args) => rmm::emulator::run(args),
    }
}
