//! `rmm kubeconfig [-o FILE]`: the downstream cluster's kubeconfig, asked of
//! Rancher (`generateKubeconfig`, reference/rancher-current.md §2.10) with
//! the run's API token over the pinned CA. It holds a token of its own, so
//! it is never recorded: it goes to stdout, or to FILE created mode 0600.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rmm_actors::context::secret;
use rmm_actors::ports::{ca_checksum, CaTrust, SecretStore};
use rmm_events::{Outcome, RunKind, RunStatus, Step};

use crate::error::{Error, Result};
use crate::secrets::FileSecrets;
use crate::state_dir::{fold_latest, StateDir};

#[derive(Debug, clap::Args)]
pub struct KubeconfigArgs {
    /// Write it to FILE (mode 0600, replaced atomically) instead of stdout.
    /// [default: stdout]
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

pub fn run(args: KubeconfigArgs, dir: &StateDir) -> Result<()> {
    let log = dir.open_store_for_reading()?;
    let history = fold_latest(&log, None)?;
    let run = history.latest_up().ok_or_else(|| dir.no_run())?;
    // After a completed `rmm down` the cluster is gone (and the server
    // too, unless it was an existing Rancher): say so, as `credentials`
    // does, rather than ask a server that is not there.
    if let Some(down) = history.latest().filter(|r| r.kind == RunKind::Down && r.id != run.id) {
        if down.status == RunStatus::Completed {
            return Err(Error::Refused(format!(
                "the cluster of run {} is gone: `rmm down` (run {}) removed it; `rmm up` builds a new one",
                run.id, down.id
            )));
        }
    }
    if run.status != RunStatus::Completed {
        return Err(Error::Refused(format!(
            "the cluster of run {} is not up yet (the run is {}): `rmm up --resume` first",
            run.id,
            run.status.as_str()
        )));
    }
    let (Some(url), Some(cluster)) = (run.rancher_url(), run.cluster_id()) else {
        return Err(Error::Refused("the log names no Rancher URL or cluster".into()));
    };
    // Secrets are read only from a dir no one else can write into.
    dir.check_private()?;
    let secrets = FileSecrets::open(dir.secrets()).map_err(|e| Error::StateDir(format!("cannot read secrets: {e}")))?;
    let lost = |what: &str| {
        Error::StateDir(format!("the {what} of run {} is missing from {}", run.id, dir.secrets().display()))
    };
    let token = secrets.get(&format!("{}/{}", run.id, secret::API_TOKEN)).ok_or_else(|| lost("API token"))?;
    let trust = match run.actor("rancher").and_then(|a| a.outcome(Step::PinCa)) {
        Some(Outcome::CaSystemRoots) => CaTrust::SystemRoots,
        _ => {
            let pem = secrets.get(&format!("{}/{}", run.id, secret::RANCHER_CA)).ok_or_else(|| lost("pinned Rancher CA"))?;
            if Some(ca_checksum(pem.expose()).as_str()) != run.ca_checksum() {
                return Err(Error::StateDir("the stored Rancher CA does not match the checksum in the log".into()));
            }
            CaTrust::Pinned(pem.expose().to_string())
        }
    };
    // Reached where the driver publishes it (the docker driver: the
    // published port, not the address on the cluster network).
    let reach = crate::engine::driver(&run.plan, dir)?.api_url(url);
    let api = crate::rancher::HttpRancher::new(&reach, trust).map_err(|e| Error::Other(e.to_string()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Other(format!("cannot start the runtime: {e}")))?;
    let config = rt.block_on(api.generate_kubeconfig(&token, cluster)).map_err(|e| {
        if e.status() == Some(401) {
            Error::RunFailed(format!(
                "Rancher refused the run's API token (expired or revoked): log in at {url} with `rmm credentials` and download the kubeconfig there"
            ))
        } else {
            Error::RunFailed(format!("Rancher could not give the kubeconfig of cluster {cluster}: {e}"))
        }
    })?;
    match args.output {
        None => {
            let _ = crate::cli::stdout().write_all(config.expose().as_bytes());
            Ok(())
        }
        Some(path) => {
            write_private(&path, config.expose().as_bytes())
                .map_err(|e| Error::StateDir(format!("cannot write {}: {e}", path.display())))?;
            crate::errln!("wrote the kubeconfig of cluster {} to {} (mode 0600)", run.plan.cluster_name, path.display());
            Ok(())
        }
    }
}

/// Writes `bytes` to `path` as a new owner-only file (a temp name of its
/// own, `O_EXCL|O_NOFOLLOW`, then renamed over `path`): never through a
/// symlink, never readable by others, never half written.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path.file_name().ok_or_else(|| std::io::Error::other("not a file name"))?;
    let tmp = path.with_file_name(format!(".{}.tmp.{}", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
