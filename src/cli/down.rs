//! `rmm down`: remove every machine of the cluster — the ones the log knows
//! and any other the driver lists for the cluster — recorded as a run of
//! its own, resumable like `up`. A second `down` is a no-op.

use std::collections::BTreeSet;
use std::io::Write;

use rmm_actors::RunEnd;
use rmm_events::{Role, RunKind, RunStatus, Step};

use crate::engine;
use crate::error::{Error, Result};
use crate::state_dir::{fold_latest, StateDir};

#[derive(Debug, clap::Args)]
pub struct DownArgs {}

pub fn run(_args: DownArgs, dir: &StateDir) -> Result<()> {
    if !dir.root.exists() {
        crate::outln!("Nothing to remove: no rmm state in {}.", dir.root.display());
        return Ok(());
    }
    // Take the lock before looking: an `up` may be creating the store.
    let _lock = dir.lock()?;
    if !dir.exists() {
        crate::outln!("Nothing to remove: no rmm state in {}.", dir.root.display());
        return Ok(());
    }
    // Refuse a planted secrets file before anything is recorded; a missing
    // one is fine: removing machines needs no secret.
    crate::secrets::FileSecrets::open(dir.secrets())
        .map_err(|e| Error::StateDir(format!("cannot read secrets file: {e}")))?;
    let mut log = dir.open_store()?;
    let mut history = fold_latest(&log, None)?;
    let Some(latest) = history.latest().cloned() else {
        crate::outln!("Nothing to remove: the log has no run.");
        return Ok(());
    };
    let plan = latest.plan.clone();
    let driver = engine::driver(&plan, dir)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Other(e.to_string()))?;
    let listed = rt
        .block_on(driver.list(&plan.cluster_name))
        .map_err(|e| Error::Other(format!("driver {}: cannot list machines: {e}", plan.driver)))?;
    drop(rt);

    let unfinished_down = latest.kind == RunKind::Down && latest.status != RunStatus::Completed;
    if latest.kind == RunKind::Down && !unfinished_down && listed.is_empty() {
        crate::outln!("Nothing to remove: cluster {} has no machines (already down).", plan.cluster_name);
        return Ok(());
    }
    let mut names: BTreeSet<String> = listed.iter().map(|m| m.name.clone()).collect();
    if let Some(up) = history.latest_up() {
        for (name, actor) in &up.actors {
            if actor.step(Step::CreateMachine).is_some() {
                names.insert(name.clone());
            }
        }
    }
    if unfinished_down {
        names.extend(latest.actors.keys().filter(|n| *n != "coordinator").cloned());
    }
    let machines: Vec<(String, Role)> = names.into_iter().map(|n| {
        let role = if n == "rancher" { Role::Rancher } else if n.starts_with("master") { Role::Master } else { Role::Worker };
        (n, role)
    }).collect();
    let resume = unfinished_down.then_some(latest.id);
    let state = engine::begin(&mut log, &mut history, resume, RunKind::Down, &plan)?;
    crate::errln!(
        "removing {} machine{} of cluster {} (run {}, attempt {})",
        machines.len(),
        if machines.len() == 1 { "" } else { "s" },
        plan.cluster_name,
        state.id,
        state.attempts
    );
    let count = machines.len();
    match engine::run_attempt(dir, log, state, machines, driver)? {
        RunEnd::Completed => {
            let _ = writeln!(crate::cli::stdout(), "Removed {count} machine{} of cluster {}.", if count == 1 { "" } else { "s" }, plan.cluster_name);
            Ok(())
        }
        RunEnd::Failed { actor, step, reason } => Err(Error::RunFailed(format!(
            "down failed: {actor} {}: {reason} (run `rmm down` again to retry)",
            step.as_str()
        ))),
        RunEnd::Interrupted => Err(Error::Interrupted("interrupted; run `rmm down` again to finish".into())),
        RunEnd::Fatal(e) => Err(Error::StateDir(format!("cannot write the event log: {e}"))),
    }
}
