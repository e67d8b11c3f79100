//! `rmm plan [--refresh] [--json]` (issue 11): what `rmm up` (or `up
//! --resume`) would do with the same `rmm.toml` and flags, compared with
//! the cluster as the log leaves it — without touching anything: the log
//! is read from a private copy (as `status` and `log` read it), nothing is
//! written in the state dir, no step runs.
//!
//! * a new run: every machine it would make;
//! * an unfinished run: the step each actor resumes at, and the intents
//!   in doubt (recorded, no outcome) it would first check in the world;
//! * a completed run and other counts: the nodes a scale adds and removes;
//! * `--refresh`: drift between the log and the driver's world — machines
//!   the log has that the driver does not list (missing), and machines of
//!   the cluster the log does not know (orphans).
//!
//! Exit 0 when there is nothing to do, 2 when there are changes (as
//! `terraform plan -detailed-exitcode`); a refusal `up` would give is
//! given here too, with `up`'s exit code.

use std::collections::BTreeSet;

use rmm_actors::decide::{next_step, plan_steps, Next, SCALE_DOWN_STEPS};
use rmm_events::{History, Role, RunKind, RunState, RunStatus, Step, StepState};
use serde_json::{json, Value};

use crate::cli::up::{check_ssh_hosts, scale_target, ssh_scale_settings, ConfigFileSource, Given, UpArgs};
use crate::engine;
use crate::error::{Error, Result};
use crate::state_dir::{fold_latest, StateDir};

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// Also ask the driver what exists: machines the log has that are
    /// missing, and machines of the cluster the log does not know.
    #[arg(long)]
    pub refresh: bool,
    /// One JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// The flags `rmm up` would get.
    #[command(flatten)]
    pub up: UpArgs,
}

#[derive(Debug, Default)]
struct Plan {
    /// `none`, `create`, `scale` or `resume`.
    action: &'static str,
    cluster: String,
    run: Option<String>,
    add: Vec<(String, Role)>,
    remove: Vec<(String, Role)>,
    /// (actor, step, try)
    resume: Vec<(String, Step, u32)>,
    /// (actor, step, try): intents recorded without an outcome.
    in_doubt: Vec<(String, Step, u32)>,
    missing: Vec<String>,
    /// Of `missing`: those whose agent ran (Rancher knows the node):
    /// `up` stops at them rather than make them again.
    missing_registered: BTreeSet<String>,
    orphans: Vec<String>,
    note: Option<String>,
    /// `--refresh`: the driver was asked (drift is known, not assumed).
    refreshed: bool,
}

impl Plan {
    fn changes(&self) -> bool {
        !(self.add.is_empty()
            && self.remove.is_empty()
            && self.resume.is_empty()
            && self.in_doubt.is_empty()
            && self.missing.is_empty()
            && self.orphans.is_empty())
    }
}

pub fn run(args: PlanArgs, dir: &StateDir, config: &ConfigFileSource) -> Result<()> {
    let file = config.load()?;
    let given = Given::of(&args.up, &file);
    let ssh = file.ssh.clone();
    let asked = file.plan(&args.up.overrides())?;
    let history = if dir.exists() {
        let log = dir.open_store_for_reading()?;
        fold_latest(&log, None)?
    } else {
        dir.check_log_not_lost(" (`rmm status --refresh` lists the machines the driver still has)")?;
        History::default()
    };
    let mut p = Plan { action: "none", cluster: asked.cluster_name.clone(), ..Plan::default() };
    let latest = history.latest();
    match latest {
        Some(r) if r.kind == RunKind::Down && r.status != RunStatus::Completed => {
            return Err(Error::Refused(format!(
                "an unfinished `rmm down` ({}) exists: `rmm up` would refuse; run `rmm down` again to finish it first",
                r.id
            )))
        }
        Some(r) if r.kind == RunKind::Up && r.status != RunStatus::Completed => {
            p.cluster = r.plan.cluster_name.clone();
            p.run = Some(r.id.to_string());
            p.action = "resume";
            resume(&mut p, r);
            if !args.up.resume {
                p.note = Some(format!("run {} is unfinished ({}): `rmm up --resume` does this; `rmm up` would refuse", r.id, r.status.as_str()));
            }
        }
        Some(r) if r.kind == RunKind::Up && args.up.resume => {
            p.cluster = r.plan.cluster_name.clone();
            p.run = Some(r.id.to_string());
            p.note = Some(format!("nothing to resume: run {} completed", r.id));
        }
        Some(r) if r.kind == RunKind::Up => {
            p.cluster = r.plan.cluster_name.clone();
            p.run = Some(r.id.to_string());
            let target = scale_target(&given, &asked, &r.plan)?;
            // ssh: `up`'s refusals (hosts that are not the plan's machines,
            // a kept machine moved), without writing the merged settings.
            match &target {
                Some(t) if t.driver == "ssh" => {
                    ssh_scale_settings(dir, &ssh, t, r)?;
                }
                None if r.plan.driver == "ssh" && !ssh.hosts.is_empty() => {
                    check_ssh_hosts(&ssh, &r.plan)?;
                }
                _ => {}
            }
            if let Some(target) = target {
                p.action = "scale";
                let mut after = r.clone();
                after.plan = target.clone();
                p.remove = after.removals();
                p.add = target
                    .node_names()
                    .into_iter()
                    .filter(|(n, _)| r.actor(n).is_none_or(|a| a.step(Step::CreateMachine).is_none() || a.done(Step::RemoveMachine)))
                    .collect();
            }
        }
        _ if args.up.resume => p.note = Some("nothing to resume: there is no unfinished run (`rmm up` starts one)".into()),
        _ => {
            p.action = "create";
            p.add = asked.machine_names().into_iter().filter(|(n, _)| !(asked.existing_rancher() && n == "rancher")).collect();
        }
    }
    if args.refresh {
        drift(&mut p, history.latest_up().filter(|_| latest.is_some_and(|l| l.kind == RunKind::Up)), &asked, dir)?;
    }
    if args.json {
        crate::outln!("{}", to_json(&p));
    } else {
        crate::outln!("{}", text(&p).trim_end());
    }
    if p.changes() {
        return Err(Error::PlanChanges);
    }
    Ok(())
}

/// What `up --resume` does for each actor: the step it goes on with, or
/// the intent it checks first.
fn resume(p: &mut Plan, r: &RunState) {
    let planned: BTreeSet<String> = r.plan.machine_names().into_iter().map(|(n, _)| n).collect();
    let attempt = r.attempts + 1;
    for (name, role) in r.attempt_actors() {
        let mut state = r.actor(&name).cloned().unwrap_or_default();
        state.new_attempt();
        let order = if planned.contains(&name) { plan_steps(role, false, &r.plan) } else { SCALE_DOWN_STEPS };
        // Gates (the node command, a master's turn) are the coordinator's:
        // they open in time, so every step counts as open here.
        match next_step(order, |_| true, &state, attempt, &r.plan.retry) {
            Next::Reconcile { step, try_no } => p.in_doubt.push((name, step, try_no)),
            Next::Run { step, try_no, .. } => p.resume.push((name, step, try_no)),
            Next::Wait | Next::Done | Next::GiveUp { .. } => {
                // In flight in an attempt not yet counted (a crash): in doubt.
                if let Some((step, try_no)) = state.steps.iter().find_map(|(s, st)| match st {
                    StepState::InFlight { try_no, .. } => Some((*s, *try_no)),
                    _ => None,
                }) {
                    p.in_doubt.push((name, step, try_no));
                }
            }
        }
    }
}

/// `--refresh`: the driver's machines of the cluster against the log's.
fn drift(p: &mut Plan, up: Option<&RunState>, asked: &rmm_events::Plan, dir: &StateDir) -> Result<()> {
    let plan = up.map(|r| r.plan.clone()).unwrap_or_else(|| asked.clone());
    let driver = engine::driver(&plan, dir)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| Error::Other(e.to_string()))?;
    let listed = rt
        .block_on(driver.list(&plan.cluster_name))
        .map_err(|e| Error::Other(format!("driver {}: cannot list machines: {e}", plan.driver)))?;
    let listed: BTreeSet<String> = listed.into_iter().map(|m| m.name).collect();
    let mut known = BTreeSet::new();
    let mut made = BTreeSet::new();
    if let Some(r) = up {
        for (name, a) in &r.actors {
            if a.step(Step::CreateMachine).is_some() && !a.done(Step::RemoveMachine) {
                known.insert(name.clone());
                if a.done(Step::CreateMachine) {
                    made.insert(name.clone());
                }
            }
        }
    }
    p.missing = made.difference(&listed).cloned().collect();
    // As `check_machine` decides (rmm_actors::steps): a machine gone after
    // its agent ran is not made again, and `up` fails there.
    if let Some(r) = up {
        p.missing_registered =
            p.missing.iter().filter(|n| r.actor(n).is_some_and(|a| a.step(Step::RunAgent).is_some())).cloned().collect();
    }
    p.orphans = listed.difference(&known).cloned().collect();
    p.refreshed = true;
    Ok(())
}

fn roles(list: &[(String, Role)]) -> Value {
    json!(list.iter().map(|(n, r)| json!({"name": n, "role": r.as_str()})).collect::<Vec<_>>())
}

fn steps(list: &[(String, Step, u32)]) -> Value {
    json!(list.iter().map(|(a, s, t)| json!({"actor": a, "step": s.as_str(), "try": t})).collect::<Vec<_>>())
}

fn to_json(p: &Plan) -> Value {
    json!({
        "action": p.action,
        "cluster": p.cluster,
        "run": p.run,
        "changes": p.changes(),
        "add": roles(&p.add),
        "remove": roles(&p.remove),
        "resume": steps(&p.resume),
        "in_doubt": steps(&p.in_doubt),
        "drift": {"missing": p.missing, "orphans": p.orphans, "missing_registered": p.missing_registered},
        "note": p.note,
    })
}

fn text(p: &Plan) -> String {
    let mut out = String::new();
    let run = p.run.as_deref().map(|r| format!(" (run {r})")).unwrap_or_default();
    out.push_str(&format!("Plan for cluster {}{run}:\n", p.cluster));
    if let Some(note) = &p.note {
        out.push_str(&format!("  note: {note}\n"));
    }
    for (n, r) in &p.add {
        out.push_str(&format!("  + {n} ({}): create the machine{}\n", r.as_str(), if *r == Role::Rancher { ", start Rancher" } else { " and join" }));
    }
    for (n, r) in &p.remove {
        out.push_str(&format!("  - {n} ({}): delete it in Rancher, then remove the machine\n", r.as_str()));
    }
    for (a, s, t) in &p.in_doubt {
        out.push_str(&format!("  ? {a}: {} (try {t}) was started and has no outcome: checked in the world first\n", s.as_str()));
    }
    for (a, s, t) in &p.resume {
        out.push_str(&format!("  ~ {a}: resumes at {} (try {t})\n", s.as_str()));
    }
    for m in &p.missing {
        out.push_str(&format!("  ! {m}: in the log, but the driver does not list it (missing)\n"));
        if p.missing_registered.contains(m) {
            out.push_str(&format!(
                "    `rmm up` would stop at {m}: Rancher registered it, and rmm does not make it again (that would register the node twice); `rmm down`, then `rmm up`\n"
            ));
        }
    }
    for m in &p.orphans {
        out.push_str(&format!("  ! {m}: the driver lists it for this cluster, the log does not know it (orphan)\n"));
    }
    if p.changes() {
        out.push_str(&format!(
            "{} to add, {} to remove, {} to resume, {} in doubt, {} missing, {} orphans.\n",
            p.add.len(),
            p.remove.len(),
            p.resume.len(),
            p.in_doubt.len(),
            p.missing.len(),
            p.orphans.len()
        ));
    } else if p.refreshed {
        out.push_str("No changes. (The driver was asked: no machine missing, no orphan.)\n");
    } else {
        out.push_str("No changes.\n");
    }
    out
}
