//! `rmm credentials [--json]`: the only place the admin password is shown.

use std::io::Write;

use rmm_actors::context::secret;
use rmm_actors::ports::SecretStore;
use rmm_events::{RunKind, RunStatus, Step};
use serde_json::json;

use crate::error::{Error, Result};
use crate::secrets::FileSecrets;
use crate::state_dir::{fold_latest, StateDir};

#[derive(Debug, clap::Args)]
pub struct CredentialsArgs {
    /// Print `{url, username, password, ca_checksum}` as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: CredentialsArgs, dir: &StateDir) -> Result<()> {
    let log = dir.open_store_for_reading()?;
    let history = fold_latest(&log, None)?;
    let run = history
        .latest_up()
        .ok_or_else(|| dir.no_run())?;
    // After a completed `rmm down`, the server rmm made is gone (an
    // existing Rancher is left alone by `down`: its credentials still hold).
    if let Some(down) = history.latest().filter(|r| r.kind == RunKind::Down && r.id != run.id) {
        if down.status == RunStatus::Completed && !run.plan.existing_rancher() {
            return Err(Error::Refused(format!(
                "the Rancher server of run {} is gone: `rmm down` (run {}) removed it; `rmm up` builds a new one",
                run.id, down.id
            )));
        }
    }
    // The password is read only from a dir no one else can write into.
    dir.check_private()?;
    let secrets = FileSecrets::open(dir.secrets()).map_err(|e| Error::StateDir(format!("cannot read secrets: {e}")))?;
    let rancher = run.actor("rancher");
    // On an existing Rancher whose password was the admin one already, it
    // was kept: that given password is the admin password.
    let kept = matches!(rancher.and_then(|a| a.outcome(Step::ChangePassword)), Some(rmm_events::Outcome::PasswordKept));
    let changed = !kept && rancher.is_some_and(|a| a.done(Step::ChangePassword));
    // The new password is stored before the call that sets it: if that call
    // was in flight when the run stopped, the new one is most likely in force.
    let in_doubt = !kept && !changed && rancher.is_some_and(|a| a.step(Step::ChangePassword).is_some());
    let name = if changed || in_doubt { secret::ADMIN_PASSWORD } else { secret::BOOTSTRAP_PASSWORD };
    if in_doubt {
        crate::errln!("note: the password change was in flight when the run stopped; `rmm up --resume` confirms it");
    }
    let started = rancher.is_some_and(|a| a.step(Step::StartServer).is_some());
    let password = secrets.get(&format!("{}/{name}", run.id)).ok_or_else(|| {
        if started {
            // Stored before the server started, so it was there: lost since.
            Error::StateDir(format!(
                "the admin password of run {} is lost ({} {}): it cannot be recovered; `rmm down` removes the machines",
                run.id,
                dir.secrets().display(),
                if secrets.file_exists() { "does not hold it" } else { "is missing" }
            ))
        } else {
            Error::Refused("no admin password yet: Rancher has not been started by this run".into())
        }
    })?;
    // `url`: where you (and rmm) reach Rancher; `server_url`: the address
    // Rancher gives its agents (the same, unless the driver publishes the
    // server elsewhere: the docker driver's published port).
    let server_url = run.rancher_url();
    let url = match server_url {
        Some(u) => Some(crate::engine::driver(&run.plan, dir)?.api_url(u)),
        None => None,
    };
    let mut out = crate::cli::stdout();
    if args.json {
        let v = json!({"url": url, "server_url": server_url, "username": "admin", "password": password.expose(), "ca_checksum": run.ca_checksum()});
        let _ = writeln!(out, "{v}");
    } else {
        let _ = writeln!(out, "url:         {}", url.as_deref().unwrap_or("(not set yet)"));
        if server_url != url.as_deref() {
            let _ = writeln!(out, "server-url:  {} (what the nodes use)", server_url.unwrap_or(""));
        }
        let _ = writeln!(out, "username:    admin");
        let _ = writeln!(out, "password:    {}", password.expose());
        let _ = writeln!(out, "ca_checksum: {}", run.ca_checksum().unwrap_or("(not pinned yet)"));
    }
    Ok(())
}
