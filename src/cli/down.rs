//! `rmm down`: remove every machine of the cluster the log knows, recorded
//! as a run of its own, resumable like `up`. A second `down` is a no-op.
//! A machine the driver lists with the cluster's label but the log does
//! not know (an orphan: someone else labelled it) is named and left alone,
//! unless `--orphans` is given.
//!
//! Without a run in the log (never made here, or the log was lost), `down
//! --cluster NAME` removes what the driver has for that cluster, after a
//! confirmation (a prompt on a terminal; `--yes` for scripts).
//!
//! A run on an existing Rancher (`--rancher-url`) has a `rancher` actor
//! but no rancher machine: it deletes the cluster in Rancher (with the
//! credentials and the CA trust the `up` run recorded, see
//! [`rmm_actors::context::Undo`]) and waits until it is gone; only then
//! are the node machines removed. The server is never stopped or removed.

use std::collections::BTreeSet;
use std::io::{BufRead, IsTerminal, Write};

use rmm_actors::RunEnd;
use rmm_events::{History, Role, RunKind, RunStatus, SledLog, Step};

use crate::cli::up::ConfigFileSource;
use crate::config::Overrides;
use crate::engine;
use crate::error::{Error, Result};
use crate::state_dir::{fold_latest, Lock, StateDir};

#[derive(Debug, clap::Args)]
pub struct DownArgs {
    /// The cluster whose machines to remove. Needed when the log has no run
    /// (lost, or never made here): the driver's machines of that cluster
    /// are removed after a confirmation. [default: the log's cluster]
    #[arg(long)]
    pub cluster: Option<String>,
    /// Do not ask for confirmation (for scripts).
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Also remove the machines the driver lists with the cluster's label
    /// that the log does not know (orphans).
    #[arg(long)]
    pub orphans: bool,
}

pub fn run(args: DownArgs, dir: &StateDir, config: &ConfigFileSource) -> Result<()> {
    if !dir.root.exists() {
        return without_log(args, dir, config, None);
    }
    // Take the lock before looking: an `up` may be creating the store.
    let lock = dir.lock()?;
    if !dir.exists() {
        return without_log(args, dir, config, Some((lock, None)));
    }
    // Refuse a planted secrets file before anything is recorded; a missing
    // one is fine: removing machines needs no secret.
    crate::secrets::FileSecrets::open(dir.secrets())
        .map_err(|e| Error::StateDir(format!("cannot read secrets file: {e}")))?;
    let mut log = dir.open_store()?;
    let mut history = fold_latest(&log, None)?;
    let Some(latest) = history.latest().cloned() else {
        return without_log(args, dir, config, Some((lock, Some((log, history)))));
    };
    let plan = latest.plan.clone();
    if let Some(named) = args.cluster.as_deref().filter(|c| *c != plan.cluster_name) {
        return Err(Error::Refused(format!(
            "the log's run is for cluster {}, not {named}: run `rmm down` for it, or use another --state-dir",
            plan.cluster_name
        )));
    }
    let driver = engine::driver_for(&plan, dir, &history)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Other(e.to_string()))?;
    let listed = rt
        .block_on(driver.list(&plan.cluster_name))
        .map_err(|e| Error::Other(format!("driver {}: cannot list machines: {e}", plan.driver)))?;
    drop(rt);

    let unfinished_down = latest.kind == RunKind::Down && latest.status != RunStatus::Completed;
    let mut names: BTreeSet<String> = BTreeSet::new();
    if let Some(up) = history.latest_up() {
        for (name, actor) in &up.actors {
            // A node a scale removed is gone already.
            if actor.step(Step::CreateMachine).is_some() && !actor.done(Step::RemoveMachine) {
                names.insert(name.clone());
            }
        }
    }
    if unfinished_down {
        names.extend(latest.actors.keys().filter(|n| *n != "coordinator").cloned());
    }
    let orphans: Vec<String> = listed.iter().map(|m| m.name.clone()).filter(|n| !names.contains(n)).collect();
    if args.orphans {
        names.extend(orphans.iter().cloned());
    } else if !orphans.is_empty() {
        crate::errln!(
            "rmm: leaving {} machine{} labelled with cluster {} that the log does not know (orphans): {}; `rmm down --orphans` removes them",
            orphans.len(),
            if orphans.len() == 1 { "" } else { "s" },
            plan.cluster_name,
            orphans.join(", ")
        );
    }
    let known_listed = listed.iter().any(|m| names.contains(&m.name));
    if latest.kind == RunKind::Down && !unfinished_down && !known_listed {
        crate::outln!("Nothing to remove: cluster {} has no machines (already down).", plan.cluster_name);
        return Ok(());
    }
    // An existing Rancher (`--rancher-url`): the cluster is deleted in
    // Rancher first, when the `up` run made anything there (or an
    // unfinished `down` began to); the server itself is never touched.
    let undo = history.latest_up().filter(|_| plan.existing_rancher()).map(|up| {
        let rancher = up.actor("rancher");
        let management_id = match rancher.and_then(|a| a.outcome(Step::WaitClusterName)) {
            Some(rmm_events::Outcome::ClusterNamed { management_id }) => Some(management_id.clone()),
            _ => None,
        };
        let made = rancher.is_some_and(|a| a.step(Step::CreateCluster).is_some());
        (rmm_actors::context::Undo { run: up.id, ca_trust: up.ca_trust().map(str::to_string), management_id }, made)
    });
    let in_rancher = match &undo {
        Some((_, made)) => *made || (unfinished_down && latest.actor("rancher").is_some()),
        None => false,
    };
    if plan.existing_rancher() {
        // Not a machine of ours: the actor of that name deletes the cluster.
        names.remove("rancher");
    }
    let mut machines: Vec<(String, Role)> = names.into_iter().map(|n| {
        let role = crate::view::role_of(&n);
        (n, role)
    }).collect();
    let count = machines.len();
    if in_rancher {
        machines.insert(0, ("rancher".to_string(), Role::Rancher));
    }
    // Real machines (any driver but `local`): asked first, naming them.
    if plan.driver != "local" && !args.yes {
        let mut parts = Vec::new();
        if in_rancher {
            parts.push(format!("cluster {} in Rancher at {url}", plan.cluster_name, url = plan.rancher_url.as_deref().unwrap_or("?")));
        }
        let listed_names: BTreeSet<&str> = listed.iter().map(|m| m.name.as_str()).collect();
        let gone: Vec<&str> = machines.iter().map(|(n, _)| n.as_str()).filter(|n| listed_names.contains(n)).collect();
        if !gone.is_empty() {
            parts.push(format!(
                "{} {} machine{} of cluster {} ({})",
                gone.len(),
                plan.driver,
                if gone.len() == 1 { "" } else { "s" },
                plan.cluster_name,
                gone.join(", ")
            ));
        }
        let what = if parts.is_empty() { format!("what is left of cluster {}", plan.cluster_name) } else { parts.join(" and ") };
        if !confirm(&what, "")? {
            crate::outln!("Nothing removed.");
            return Ok(());
        }
    }
    let resume = unfinished_down.then_some(latest.id);
    let state = engine::begin(dir, &mut log, &mut history, resume, RunKind::Down, &plan)?;
    crate::registry::note_run(dir, &state, history.latest_up().and_then(|r| r.rancher_url()));
    let url = plan.rancher_url.clone().unwrap_or_default();
    if in_rancher {
        crate::errln!(
            "deleting cluster {} in Rancher at {url} (the server is left as it is), then removing {} machine{} (run {}, attempt {})",
            plan.cluster_name,
            count,
            if count == 1 { "" } else { "s" },
            state.id,
            state.attempts
        );
    } else {
        crate::errln!(
            "removing {} machine{} of cluster {} (run {}, attempt {})",
            count,
            if count == 1 { "" } else { "s" },
            plan.cluster_name,
            state.id,
            state.attempts
        );
    }
    let end = engine::run_attempt(dir, log, state, machines, driver, undo.map(|(u, _)| u))?;
    if !matches!(end, RunEnd::Fatal(_)) {
        crate::registry::note(dir);
    }
    if in_rancher && end == RunEnd::Completed {
        crate::outln!("Deleted cluster {} in Rancher at {url}.", plan.cluster_name);
    }
    finish(end, count, &plan.cluster_name)
}

fn finish(end: RunEnd, count: usize, cluster: &str) -> Result<()> {
    match end {
        RunEnd::Completed => {
            let _ = writeln!(crate::cli::stdout(), "Removed {count} machine{} of cluster {cluster}.", if count == 1 { "" } else { "s" });
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

/// No run in the log: find the cluster's machines through the driver.
fn without_log(
    args: DownArgs,
    dir: &StateDir,
    config: &ConfigFileSource,
    held: Option<(Lock, Option<(SledLog, History)>)>,
) -> Result<()> {
    let plan = config.load()?.plan(&Overrides { cluster_name: args.cluster.clone(), ..Default::default() })?;
    let driver = engine::driver(&plan, dir)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| Error::Other(e.to_string()))?;
    let listed = rt
        .block_on(driver.list(&plan.cluster_name))
        .map_err(|e| Error::Other(format!("driver {}: cannot list machines: {e}", plan.driver)))?;
    drop(rt);
    if listed.is_empty() {
        crate::outln!("Nothing to remove: the log has no run, and driver {} has no machine of cluster {}.", plan.driver, plan.cluster_name);
        // A cluster the registry remembers here, its state dir gone:
        // nothing of it is left, so it no longer shows as missing.
        if let Some(named) = args.cluster.as_deref() {
            crate::registry::mark_down(dir, named);
        }
        return Ok(());
    }
    let names: Vec<String> = listed.iter().map(|m| m.name.clone()).collect();
    let what = format!(
        "{} machine{} of cluster {} ({})",
        names.len(),
        if names.len() == 1 { "" } else { "s" },
        plan.cluster_name,
        names.join(", ")
    );
    let Some(cluster) = args.cluster.as_deref() else {
        return Err(Error::Refused(format!(
            "the log has no run, but driver {} has {what}; remove them with `rmm down --cluster {}`",
            plan.driver, plan.cluster_name
        )));
    };
    if !args.yes && !confirm(&what, "The log knows none of them. ")? {
        crate::outln!("Nothing removed.");
        return Ok(());
    }
    // Recorded like any `down`: a run of its own in the log.
    let (lock, store) = match held {
        Some(held) => held,
        None => {
            dir.create()?;
            (dir.lock()?, None)
        }
    };
    let (mut log, mut history) = match store {
        Some(store) => store,
        None => {
            let log = dir.open_store()?;
            let history = fold_latest(&log, None)?;
            (log, history)
        }
    };
    let machines: Vec<(String, Role)> = names.into_iter().map(|n| {
        let role = crate::view::role_of(&n);
        (n, role)
    }).collect();
    let state = engine::begin(dir, &mut log, &mut history, None, RunKind::Down, &plan)?;
    crate::errln!("removing {what} (run {}; the log had no run of it)", state.id);
    let count = machines.len();
    let end = engine::run_attempt(dir, log, state, machines, driver, None)?;
    drop(lock);
    if !matches!(end, RunEnd::Fatal(_)) {
        crate::registry::note(dir);
    }
    finish(end, count, cluster)
}

/// Asks on the terminal whether to remove `what` (`Ok(false)`: the answer
/// was no). Not on a terminal: refused (exit 2), naming `--yes`.
fn confirm(what: &str, before: &str) -> Result<bool> {
    if !std::io::stdin().is_terminal() {
        return Err(Error::Config(format!(
            "refusing to remove {what} without confirmation: stdin is not a terminal; pass --yes to remove them"
        )));
    }
    {
        let mut err = crate::cli::stderr();
        let _ = write!(err, "{before}Remove {what}? [y/N] ");
        let _ = err.flush();
    }
    let mut answer = String::new();
    let _ = std::io::stdin().lock().read_line(&mut answer);
    Ok(matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes"))
}
