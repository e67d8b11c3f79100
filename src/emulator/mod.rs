//! The Rancher API emulator (being written).

/// `rmm emulator …`
#[derive(Debug, clap::Args)]
pub struct EmulatorArgs {
    #[command(subcommand)]
    pub command: EmulatorCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum EmulatorCommand {
    /// Serve the Rancher v3 API over HTTPS until killed.
    Serve {
        /// Where the emulator keeps its state (survives restarts).
        #[arg(long)]
        data_dir: std::path::PathBuf,
        /// IP:PORT to listen on.
        #[arg(long)]
        listen: std::net::SocketAddr,
    },
}

pub fn run(_args: EmulatorArgs) -> anyhow::Result<()> {
    anyhow::bail!("emulator not written yet")
}
