//! `rmm up [--resume]`: start a new run, or continue the last unfinished one.

use std::io::Write;

use rmm_actors::RunEnd;
use rmm_events::{RunKind, RunStatus};

use crate::config::{ConfigFile, Overrides};
use crate::engine;
use crate::error::{Error, Result};
use crate::secrets::{lost_secrets, FileSecrets};
use crate::state_dir::{fold_latest, StateDir};

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Continue the last unfinished run from its log (the plan flags are
    /// then ignored: the run keeps its recorded plan).
    #[arg(long)]
    pub resume: bool,
    /// Masters (etcd + control plane). Odd, for etcd quorum.
    /// [default: 3, or `masters` in rmm.toml]
    #[arg(long, value_name = "N")]
    pub masters: Option<u32>,
    /// Worker nodes. [default: 3, or `workers` in rmm.toml]
    #[arg(long, value_name = "N")]
    pub workers: Option<u32>,
    /// Machine driver (`local`: machines under the state dir, Rancher
    /// emulated; `docker`: Rancher and the nodes as containers on a Docker
    /// Engine, `[docker]` in rmm.toml; `docker-machine`; `ssh`: hosts you
    /// have, `[ssh]` in rmm.toml).
    /// [possible values: local, docker, docker-machine, ssh]
    /// [default: local, or `driver` in rmm.toml]
    #[arg(long, value_name = "DRIVER")]
    pub driver: Option<String>,
    /// Rancher cluster name. [default: tinysetup, or `cluster_name` in rmm.toml]
    #[arg(long, value_name = "NAME")]
    pub cluster_name: Option<String>,
    /// At most this many machine creations at once.
    /// [default: 8, or `parallel` in rmm.toml]
    #[arg(long, value_name = "N")]
    pub parallel: Option<u32>,
    /// Pin Rancher's CA up front: hex sha256 of the CA PEM plus a newline.
    /// [default: none: the CA is pinned on first contact]
    #[arg(long, value_name = "HEX")]
    pub ca_checksum: Option<String>,
    /// Accept an even number of masters (etcd quorum needs an odd count).
    #[arg(long)]
    pub allow_even_masters: bool,
    /// Kubernetes distribution: rke2, k3s (Rancher 2.6+) or rke1 (Rancher 2.6-2.11).
    /// [possible values: rke2, k3s, rke1]
    /// [default: rke2, or `distribution` in rmm.toml]
    #[arg(long, value_name = "DISTRIBUTION")]
    pub distribution: Option<String>,
    /// Kubernetes version (e.g. v1.35.1+rke2r1).
    /// [default: the server's own default]
    #[arg(long, value_name = "VERSION")]
    pub kubernetes_version: Option<String>,
    /// An existing Rancher (https://host[:port]) to provision the nodes
    /// into: no rancher machine is made, and the server is never touched.
    /// Its password (bootstrap or admin) comes from RMM_RANCHER_PASSWORD or
    /// --rancher-password-file, never from a flag.
    /// [default: none: rmm makes a rancher machine]
    #[arg(long, value_name = "URL")]
    pub rancher_url: Option<String>,
    /// A file holding the existing Rancher's password (see --rancher-url).
    /// [default: none: RMM_RANCHER_PASSWORD]
    #[arg(long, value_name = "FILE")]
    pub rancher_password_file: Option<std::path::PathBuf>,
}

impl UpArgs {
    pub(crate) fn overrides(&self) -> Overrides {
        Overrides {
            masters: self.masters,
            workers: self.workers,
            driver: self.driver.clone(),
            cluster_name: self.cluster_name.clone(),
            parallel: self.parallel,
            ca_checksum: self.ca_checksum.clone(),
            allow_even_masters: self.allow_even_masters,
            distribution: self.distribution.clone(),
            kubernetes_version: self.kubernetes_version.clone(),
            rancher_url: self.rancher_url.clone(),
            rancher_password_file: self.rancher_password_file.clone(),
        }
    }
    fn changes_plan(&self) -> bool {
        self.masters.is_some()
            || self.workers.is_some()
            || self.driver.is_some()
            || self.cluster_name.is_some()
            || self.parallel.is_some()
            || self.ca_checksum.is_some()
            || self.distribution.is_some()
            || self.kubernetes_version.is_some()
            || self.rancher_url.is_some()
    }
}

pub fn run(args: UpArgs, dir: &StateDir, config: &ConfigFileSource) -> Result<()> {
    // Validate everything the user typed before touching the state dir.
    let file = config.load()?;
    let docker = file.docker.clone();
    let ssh = file.ssh.clone();
    let docker_machine = file.docker_machine.clone();
    let password_file = args.rancher_password_file.clone().or_else(|| file.rancher_password_file.clone());
    let given = Given::of(&args, &file);
    let plan = file.plan(&args.overrides())?;
    docker.resolve().map_err(Error::Config)?;
    docker_machine.resolve().map_err(Error::Config)?;
    // An existing Rancher's password: read (and refused when missing)
    // before anything is created; stored in the secrets file once the run
    // has an id. Never from a flag (see `config::rancher_password`).
    let password = crate::config::rancher_password(password_file.as_deref())?;
    // Read once; no process rmm starts (drivers, agents, `docker`) inherits
    // it. (Still single-threaded here: nothing reads the environment
    // concurrently.)
    std::env::remove_var(rmm_actors::context::secret::PASSWORD_ENV);
    // Refused at once where there is no log yet; where there is one, a
    // scale of a completed run takes the password stored by its first
    // `up` (checked below, once the run is known).
    // No log here yet: read once, before anything is created.
    let fresh = !dir.events().join("db").exists();
    if plan.existing_rancher() && password.is_none() && !args.resume && fresh {
        return Err(Error::Config(missing_password(&plan)));
    }
    // The hosts match the plan, checked before anything is made where
    // there is no run yet; with a log, once the plan `up` goes on with is
    // known (a scale's, below).
    if plan.driver == "ssh" && fresh && !args.resume {
        check_ssh_hosts(&ssh, &plan)?;
    }
    // A log deleted beside a live world is not a fresh start: a new log
    // would fail on every machine and bury the evidence.
    dir.check_log_not_lost(&format!(
        ", or remove what it made (`rmm status --refresh` lists it; `rmm down --cluster {}`) and start again",
        plan.cluster_name
    ))?;
    // A cluster brought up here whose state dir is gone (deleted or moved):
    // a new run would make a second cluster and forget the first one's
    // machines, which may still exist. Refused before anything is made.
    if !args.resume && fresh {
        if let Some(e) = crate::registry::known_in(dir) {
            return Err(Error::Refused(format!(
                "the cluster registry (`rmm list`) has cluster {} (driver {}, {}) in {}, but its state is gone (deleted or moved): its machines may still exist; `rmm down --cluster {}` removes them (`rmm status --refresh --cluster {}` lists them), then `rmm up` starts anew",
                e.name, e.driver, e.state, dir.shown(), e.name, e.name
            )));
        }
    }
    // Nothing to resume where there is no log: refused before anything
    // (the state dir, its lock, a store) is created.
    if args.resume && fresh {
        // A state dir that is there is checked first, as for any command.
        if dir.root.exists() {
            dir.check_private()?;
        }
        return Err(Error::Refused(format!(
            "nothing to resume: there is no run in {} (nothing was created; start one with `rmm up`)",
            dir.shown()
        )));
    }
    dir.create()?;
    let _lock = dir.lock()?;
    let mut log = dir.open_store()?;
    let mut history = fold_latest(&log, None)?;
    let latest = history.latest().cloned();

    // A completed run asked for other counts: a scale (issue 11).
    let scale = match &latest {
        Some(r) if !args.resume && r.kind == RunKind::Up && r.status == RunStatus::Completed => scale_target(&given, &plan, &r.plan)?,
        _ => None,
    };
    let run = match (&latest, args.resume) {
        (Some(r), false) if scale.is_some() => Some(r.id),
        (Some(r), false) if r.kind == RunKind::Up && r.status == RunStatus::Completed => {
            if r.plan.driver == "ssh" && !ssh.hosts.is_empty() {
                // Hosts added or dropped without the counts: not "nothing to do".
                check_ssh_hosts(&ssh, &r.plan)?;
            }
            let mut out = crate::cli::stdout();
            let _ = writeln!(
                out,
                "The last run ({}) completed: cluster {} is up{}. Nothing to do (`rmm status`, `rmm down`).",
                r.id,
                r.plan.cluster_name,
                r.rancher_url().map(|u| format!(" at {u}")).unwrap_or_default()
            );
            return Ok(());
        }
        (Some(r), false) if r.kind == RunKind::Up => {
            return Err(Error::Refused(format!(
                "an unfinished run {} exists ({}): continue it with `rmm up --resume`, or remove its machines with `rmm down`",
                r.id,
                describe(r.status)
            )))
        }
        (Some(r), _) if r.kind == RunKind::Down && r.status != RunStatus::Completed => {
            return Err(Error::Refused(format!(
                "an unfinished `rmm down` ({}) exists: run `rmm down` again to finish it first",
                r.id
            )))
        }
        (Some(r), true) if r.kind == RunKind::Up && r.status != RunStatus::Completed => {
            if args.changes_plan() {
                crate::errln!("rmm: --resume continues the recorded plan; the plan flags are ignored");
            }
            Some(r.id)
        }
        (Some(r), true) if r.kind == RunKind::Up => {
            // Resuming a finished run is a no-op, so a script (or a crash
            // drill) can always end with `up --resume`.
            let mut out = crate::cli::stdout();
            let _ = writeln!(out, "Nothing to resume: the last run ({}) completed.", r.id);
            return Ok(());
        }
        (_, true) => {
            return Err(Error::Refused("nothing to resume: there is no unfinished run (start one with `rmm up`)".into()))
        }
        (_, false) => None,
    };
    if run.is_none() && plan.existing_rancher() && password.is_none() {
        return Err(Error::Config(missing_password(&plan)));
    }
    let plan = match (run, &scale) {
        (_, Some(target)) => target.clone(),
        (Some(id), None) => history.runs.iter().find(|r| r.id == id).expect("run in history").plan.clone(),
        (None, None) => plan,
    };
    // ssh: rmm.toml's hosts are the new plan's machines; a scale goes on
    // with the recorded hosts merged with rmm.toml's (refused, before
    // anything is written, when a kept machine moved).
    let ssh_scale = match (&scale, &latest) {
        (Some(target), Some(r)) if target.driver == "ssh" => Some(ssh_scale_settings(dir, &ssh, target, r)?),
        _ => None,
    };
    if plan.driver == "ssh" && !args.resume && !fresh && ssh_scale.is_none() {
        check_ssh_hosts(&ssh, &plan)?;
    }
    if let (Some(id), true) = (run, plan.existing_rancher()) {
        keep_password(dir, id, password.as_ref(), &plan)?;
    }
    check_secrets(dir, &history, run)?;
    if plan.driver == "docker" {
        if run.is_none() {
            // A new run takes rmm.toml's settings, not an earlier run's.
            let _ = std::fs::remove_file(dir.root().join(crate::drivers::docker::SETTINGS_FILE));
        }
        // The settings of the run: recorded by its first `up` (a free
        // port for `publish_port = 0`), read by every later command.
        crate::drivers::docker::settings(dir.root(), Some(&docker), true).map_err(Error::Config)?;
    }
    if plan.driver == "docker-machine" {
        if run.is_none() {
            let _ = std::fs::remove_file(dir.root().join(crate::drivers::docker_machine::SETTINGS_FILE));
        }
        crate::drivers::docker_machine::settings(dir.root(), Some(&docker_machine), true).map_err(Error::Config)?;
    }
    if plan.driver == "ssh" && run.is_none() {
        // A new run takes rmm.toml's hosts; a resume keeps its run's.
        crate::drivers::ssh::settings(dir.root(), Some(&ssh), true).map_err(Error::Config)?;
    }
    if let Some(merged) = &ssh_scale {
        // Recorded before the scale's attempt begins: its resume (which
        // reads only the recorded settings) still reaches the hosts it
        // removes, which rmm.toml no longer names.
        crate::drivers::ssh::record_settings(dir.root(), merged).map_err(Error::Config)?;
    }
    let driver = engine::driver_for(&plan, dir, &history)?;
    let before = scale.as_ref().and_then(|_| latest.clone());
    let state = engine::begin_with(dir, &mut log, &mut history, run, RunKind::Up, &plan, scale.is_some())?;
    crate::registry::note_run(dir, &state, state.rancher_url());
    if run.is_none() && plan.existing_rancher() {
        keep_password(dir, state.id, password.as_ref(), &plan)?;
    }
    // The plan's machines, and the nodes a scale drops (a crashed scale
    // resumed goes on removing them).
    let machines = state.attempt_actors();
    let run_id = state.id;
    let attempt = state.attempts;
    let started = std::time::Instant::now();
    if let Some(before) = &before {
        let removing: Vec<String> = state.removals().into_iter().map(|(n, _)| n).collect();
        let adding: Vec<String> = plan
            .node_names()
            .into_iter()
            .map(|(n, _)| n)
            // New, or removed by an earlier scale and back now.
            .filter(|n| {
                state.actor(n).is_none_or(|a| a.step(rmm_events::Step::CreateMachine).is_none() || a.done(rmm_events::Step::RemoveMachine))
            })
            .collect();
        let mut what = Vec::new();
        if !adding.is_empty() {
            what.push(format!("adding {}", adding.join(", ")));
        }
        if !removing.is_empty() {
            what.push(format!("removing {}", removing.join(", ")));
        }
        crate::errln!(
            "scaling run {run_id} (attempt {attempt}): cluster {} from {}, {} to {}, {}: {}",
            plan.cluster_name,
            plural(before.plan.masters, "master"),
            plural(before.plan.workers, "worker"),
            plural(plan.masters, "master"),
            plural(plan.workers, "worker"),
            what.join("; ")
        );
    } else {
        crate::errln!(
            "{} run {run_id} (attempt {attempt}): cluster {}, {}, {}, driver {}",
            if attempt == 1 { "starting" } else { "resuming" },
            plan.cluster_name,
            plural(plan.masters, "master"),
            plural(plan.workers, "worker"),
            plan.driver
        );
    }
    let end = engine::run_attempt(dir, log, state, machines, driver, None)?;
    if !matches!(end, RunEnd::Fatal(_)) {
        crate::registry::note(dir);
    }
    // Re-read the outcome from the log: what we print is what is recorded.
    match end {
        RunEnd::Completed => {
            let log = dir.open_store_for_reading()?;
            let history = fold_latest(&log, None)?;
            let r = history.latest().expect("a run");
            let took = r.ended_ms.unwrap_or(r.started_ms) - r.started_ms;
            let mut out = crate::cli::stdout();
            // A resume says what this attempt took: the run's span counts
            // the time between its attempts too.
            let took = match before {
                Some(_) => format!(": scaled in {:.1}s", started.elapsed().as_secs_f64()),
                None if attempt > 1 => format!(
                    ": resumed and done in {:.1}s (attempt {attempt}; the run began {:.1}s ago)",
                    started.elapsed().as_secs_f64(),
                    took as f64 / 1000.0
                ),
                None => format!(" after {:.1}s", took as f64 / 1000.0),
            };
            let _ = writeln!(
                out,
                "Cluster {} is active ({}, {}){took}.",
                r.plan.cluster_name,
                plural(r.plan.masters, "master"),
                plural(r.plan.workers, "worker"),
            );
            // Where you reach it (the docker driver publishes the server
            // elsewhere), as `rmm credentials` says; the `server-url` the
            // nodes use beside it when that differs.
            let server_url = r.rancher_url().unwrap_or("?");
            let reach = crate::engine::driver(&r.plan, dir).map(|d| d.api_url(server_url)).unwrap_or_else(|_| server_url.to_string());
            if reach == server_url {
                let _ = writeln!(out, "Rancher: {server_url}");
            } else {
                let _ = writeln!(out, "Rancher: {reach} (server-url {server_url}: what the nodes use)");
            }
            let _ = writeln!(out, "User:    admin");
            let _ = writeln!(out, "Password: not shown; run `rmm credentials` to print it.");
            let _ = writeln!(out, "Kubeconfig: `rmm kubeconfig -o kubeconfig.yaml` (written mode 0600).");
            Ok(())
        }
        // A failed write of the secrets file is a state-dir error (exit 2)
        // whichever way it ended the run.
        RunEnd::Failed { actor, step, reason } => Err(crate::engine::secrets_write_error(
            dir,
            &format!("{actor} {}", step.as_str()),
            &reason,
        )
        .unwrap_or_else(|| failed(&actor, step, &reason))),
        RunEnd::Interrupted => Err(Error::Interrupted("interrupted; `rmm up --resume` continues from the log".into())),
        RunEnd::Fatal(e) => Err(crate::engine::secrets_write_error(dir, e.split(": ").next().unwrap_or("a step"), &e)
            .unwrap_or_else(|| {
                Error::StateDir(format!(
                    "cannot write the event log ({e}); nothing after the last durable event happened unrecorded. Fix the disk, then `rmm up --resume`"
                ))
            })),
    }
}

/// Which settings the user gave (a flag or `rmm.toml`), as opposed to
/// defaults: only those can change, or refuse to change, a cluster.
#[derive(Debug, Clone, Copy, Default)]
pub struct Given {
    pub cluster_name: bool,
    pub driver: bool,
    pub distribution: bool,
    pub rancher_url: bool,
    pub masters: bool,
    pub workers: bool,
}

impl Given {
    pub fn of(args: &UpArgs, file: &ConfigFile) -> Given {
        Given {
            cluster_name: args.cluster_name.is_some() || file.cluster_name.is_some(),
            driver: args.driver.is_some() || file.driver.is_some(),
            distribution: args.distribution.is_some() || file.distribution.is_some(),
            rancher_url: args.rancher_url.is_some() || file.rancher_url.is_some(),
            masters: args.masters.is_some() || file.masters.is_some(),
            workers: args.workers.is_some() || file.workers.is_some(),
        }
    }
}

/// What `rmm up` on a completed run asks for: `None` when the topology
/// is the one the run has (nothing to do), else the run's recorded plan
/// with the new counts (issue 11). Masters and workers come from the flags,
/// else `rmm.toml`, else the recorded plan: a bare `rmm up` never scales.
/// Refused (exit 2, one line): a change no `up` can make (another cluster
/// name, driver, distribution or Rancher), an even master count, and
/// fewer masters than etcd can lose one at a time without losing quorum.
pub fn scale_target(
    given: &Given,
    asked: &rmm_events::Plan,
    recorded: &rmm_events::Plan,
) -> Result<Option<rmm_events::Plan>> {
    let fixed: [(&str, bool, String, String); 4] = [
        ("cluster name", given.cluster_name, asked.cluster_name.clone(), recorded.cluster_name.clone()),
        ("driver", given.driver, asked.driver.clone(), recorded.driver.clone()),
        (
            "distribution",
            given.distribution,
            asked.distribution.as_str().to_string(),
            recorded.distribution.as_str().to_string(),
        ),
        (
            "Rancher",
            given.rancher_url,
            asked.rancher_url.clone().unwrap_or_else(|| "of its own".into()),
            recorded.rancher_url.clone().unwrap_or_else(|| "of its own".into()),
        ),
    ];
    for (what, given, new, old) in fixed {
        if given && new != old {
            return Err(Error::Config(format!(
                "cluster {} was made with {what} {old}; `rmm up` cannot change it to {new}: remove the cluster with `rmm down`, then `rmm up` makes it anew",
                recorded.cluster_name
            )));
        }
    }
    let masters = if given.masters { asked.masters } else { recorded.masters };
    let workers = if given.workers { asked.workers } else { recorded.workers };
    if masters == recorded.masters && workers == recorded.workers {
        return Ok(None);
    }
    if masters != recorded.masters {
        check_masters(recorded.masters, masters).map_err(Error::Config)?;
    }
    Ok(Some(rmm_events::Plan { masters, workers, ..recorded.clone() }))
}

/// The machines of `plan` on the ssh driver: masters + workers + the
/// rancher host, which an existing Rancher (`rancher_url`) does not need.
fn ssh_machines(plan: &rmm_events::Plan) -> Vec<String> {
    let machines = if plan.existing_rancher() { plan.node_names() } else { plan.machine_names() };
    machines.into_iter().map(|(n, _)| n).collect()
}

/// Refuses (exit 2, one line) rmm.toml's `[[ssh.hosts]]` when they are not
/// exactly `plan`'s machines; else they, resolved.
pub(crate) fn check_ssh_hosts(ssh: &crate::drivers::ssh::SshFile, plan: &rmm_events::Plan) -> Result<crate::drivers::ssh::SshConfig> {
    let cfg = ssh.resolve().map_err(Error::Config)?;
    crate::drivers::ssh::check_hosts(&cfg, &ssh_machines(plan), plan.existing_rancher()).map_err(Error::Config)?;
    Ok(cfg)
}

/// The machines run `r` holds: its create step recorded (a claim made or
/// in doubt), its removal not.
pub(crate) fn held_machines(r: &rmm_events::RunState) -> Vec<String> {
    r.actors
        .iter()
        .filter(|(_, a)| a.step(rmm_events::Step::CreateMachine).is_some() && !a.done(rmm_events::Step::RemoveMachine))
        .map(|(n, _)| n.clone())
        .collect()
}

/// The ssh settings a scale of the completed run `r` to `target` goes on
/// with ([`crate::drivers::ssh::merge_for_scale`]): rmm.toml's hosts must
/// be `target`'s machines, and a machine the run keeps must not have moved.
/// Nothing is written.
pub(crate) fn ssh_scale_settings(
    dir: &StateDir,
    ssh: &crate::drivers::ssh::SshFile,
    target: &rmm_events::Plan,
    r: &rmm_events::RunState,
) -> Result<crate::drivers::ssh::SshConfig> {
    let file = check_ssh_hosts(ssh, target)?;
    let recorded = crate::drivers::ssh::settings(dir.root(), None, false).map_err(Error::Config)?;
    crate::drivers::ssh::merge_for_scale(&recorded, &file, &ssh_machines(target), &held_machines(r)).map_err(Error::Config)
}

/// Masters change only to odd counts, and leave one at a time; rmm never
/// removes an etcd member while that would leave etcd without quorum (a
/// majority of its members: ⌊n/2⌋+1 of n). Going down to `to`, the last
/// removal goes from `to + 1` members to `to`: it keeps quorum only when
/// `to ≥ ⌊(to+1)/2⌋+1`, that is from 3 masters on.
pub fn check_masters(from: u32, to: u32) -> std::result::Result<(), String> {
    if to.is_multiple_of(2) {
        return Err(format!(
            "masters can change only to an odd count (etcd quorum): {from} → {to} is even; use {} or {}",
            to.saturating_sub(1).max(1),
            to + 1
        ));
    }
    if to < from {
        let members = to + 1;
        let quorum = members / 2 + 1;
        if to < quorum {
            return Err(format!(
                "cannot go from {from} masters to {to}: masters leave one at a time, and the last removal would leave {to} of {members} etcd members, below quorum ({quorum} of {members}); rmm never removes an etcd member while that would leave etcd without quorum"
            ));
        }
    }
    Ok(())
}

/// The error of a failed run. The server cannot do what the plan asks
/// (rke1 on 2.12+, a Kubernetes version it does not offer): that was
/// refused before anything was made in Rancher, and is a configuration
/// error (exit 2) that says what to use instead.
fn failed(actor: &str, step: rmm_events::Step, reason: &str) -> Error {
    use rmm_events::Step;
    let refusal = rmm_actors::steps::REFUSAL;
    if matches!(step, Step::CheckRancherVersion | Step::ChooseKubernetesVersion) && reason.starts_with(refusal) {
        return Error::Config(reason[refusal.len()..].to_string());
    }
    // A reason that names its own way on (`rmm down` …) is not told to
    // resume as well.
    let way_on = if reason.contains("rmm down") {
        "`rmm log` has the details"
    } else {
        "fix the cause, then `rmm up --resume`; `rmm log` has the details"
    };
    Error::RunFailed(format!("run failed: {actor} {}: {reason} ({way_on})", step.as_str()))
}

/// Reads the secrets file before anything is recorded (a planted or
/// group-readable one is refused here), and, for a resume, refuses with
/// one line when a secret the log says was stored is gone: the admin
/// password (or the bootstrap password, the API token, the node command,
/// the pinned CA) cannot be recovered from Rancher, so no resume could
/// finish the run. Exit 2, like any damage to the state dir; `rmm down`
/// needs no secret and removes the machines.
fn check_secrets(dir: &StateDir, history: &rmm_events::History, run: Option<uuid::Uuid>) -> Result<()> {
    let secrets = FileSecrets::open(dir.secrets()).map_err(|e| Error::StateDir(format!("cannot read secrets file: {e}")))?;
    let Some(id) = run else { return Ok(()) };
    let Some(state) = history.runs.iter().find(|r| r.id == id) else { return Ok(()) };
    let lost = lost_secrets(state, &secrets);
    if lost.is_empty() {
        return Ok(());
    }
    let (them, are) = if lost.len() == 1 { ("it", "is") } else { ("them", "are") };
    let why = if secrets.file_exists() {
        format!("{} does not hold {them} as the log records {them}", dir.secrets().display())
    } else {
        format!("{} is missing", dir.secrets().display())
    };
    Err(Error::StateDir(format!(
        "{} of run {id} {are} lost ({why}): Rancher cannot give {them} back, so this run cannot continue; \
         `rmm down` removes its machines (it needs no secret), then `rmm up` starts a new run",
        join_words(&lost)
    )))
}

/// The one line for an existing Rancher without its password.
fn missing_password(plan: &rmm_events::Plan) -> String {
    format!(
        "--rancher-url {} needs the server's password (its bootstrap password, or the admin password once its first login is done): set {} or pass --rancher-password-file FILE (never a flag: a flag's value is on the command line)",
        plan.rancher_url.as_deref().unwrap_or("?"),
        rmm_actors::context::secret::PASSWORD_ENV
    )
}

/// Stores the existing Rancher's password for run `id` (as the password
/// rmm logs in with first), replacing an older one: a resume may bring the
/// right one after a refused login. A resume without one keeps the stored
/// one; with none stored either, it is refused (exit 2).
fn keep_password(dir: &StateDir, id: uuid::Uuid, given: Option<&rmm_actors::ports::Secret>, plan: &rmm_events::Plan) -> Result<()> {
    use rmm_actors::ports::SecretStore;
    let secrets = FileSecrets::open(dir.secrets()).map_err(|e| Error::StateDir(format!("cannot read secrets file: {e}")))?;
    let key = format!("{id}/{}", rmm_actors::context::secret::BOOTSTRAP_PASSWORD);
    match given {
        Some(p) if secrets.get(&key).as_ref().map(|s| s.expose()) != Some(p.expose()) => {
            secrets.put(&key, p).map_err(Error::StateDir)
        }
        Some(_) => Ok(()),
        None if secrets.get(&key).is_some() => Ok(()),
        None => Err(Error::Config(missing_password(plan))),
    }
}

/// "a", "a and b", "a, b and c".
fn join_words(words: &[&str]) -> String {
    match words {
        [] => String::new(),
        [one] => one.to_string(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

fn plural(n: u32, word: &str) -> String {
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}

fn describe(status: RunStatus) -> &'static str {
    match status {
        RunStatus::Running => "it stopped without recording an end: a crash",
        RunStatus::Failed => "failed",
        RunStatus::Interrupted => "interrupted",
        RunStatus::Completed => "completed",
    }
}

/// Where the configuration comes from: `--config FILE` (must exist) or
/// `rmm.toml` in the current directory (read when present).
pub struct ConfigFileSource {
    pub path: std::path::PathBuf,
    pub required: bool,
}

impl ConfigFileSource {
    pub fn load(&self) -> Result<ConfigFile> {
        ConfigFile::load(&self.path, self.required)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmm_events::Step;

    #[test]
    fn masters_change_to_odd_counts_and_never_below_quorum() {
        assert_eq!(check_masters(3, 5), Ok(()));
        assert_eq!(check_masters(5, 3), Ok(()), "5 → 4 keeps 4 of 5 (quorum 3), 4 → 3 keeps 3 of 4 (quorum 3)");
        assert_eq!(check_masters(7, 3), Ok(()));
        assert_eq!(check_masters(1, 3), Ok(()));
        let e = check_masters(3, 1).unwrap_err();
        assert!(e.contains("would leave 1 of 2 etcd members, below quorum (2 of 2)"), "{e}");
        assert!(check_masters(5, 1).is_err());
        let e = check_masters(3, 4).unwrap_err();
        assert!(e.contains("only to an odd count") && e.contains("use 3 or 5"), "{e}");
        assert!(check_masters(3, 2).is_err());
    }

    #[test]
    fn a_bare_up_never_scales_and_identity_changes_are_refused() {
        let recorded = rmm_events::Plan { masters: 1, workers: 1, ..Default::default() };
        // Defaults (3+3) not given by the user: the run's counts stay.
        let asked = rmm_events::Plan::default();
        assert_eq!(scale_target(&Given::default(), &asked, &recorded).unwrap(), None);
        let given = Given { workers: true, ..Given::default() };
        let target = scale_target(&given, &asked, &recorded).unwrap().expect("a scale");
        assert_eq!((target.masters, target.workers), (1, 3));
        let other = rmm_events::Plan { driver: "docker".into(), ..asked.clone() };
        let e = scale_target(&Given { driver: true, ..given }, &other, &recorded).unwrap_err();
        assert_eq!(e.exit_code(), std::process::ExitCode::from(2));
        assert!(e.to_string().contains("was made with driver local; `rmm up` cannot change it to docker") && e.to_string().contains("`rmm down`"), "{e}");
    }

    #[test]
    fn a_refusal_by_the_server_is_exit_2_with_one_line_saying_what_to_use() {
        let reason = format!(
            "{}Rancher v2.15.1 cannot make an rke1 cluster (Rancher 2.12 removed RKE1): use --distribution rke2 (or k3s), or a Rancher image of 2.11 or older for rke1",
            rmm_actors::steps::REFUSAL
        );
        let e = failed("rancher", Step::CheckRancherVersion, &reason);
        assert_eq!(e.exit_code(), std::process::ExitCode::from(2));
        let text = e.to_string();
        assert!(text.starts_with("Rancher v2.15.1 cannot make an rke1 cluster") && text.contains("--distribution rke2"), "{text}");
        assert!(!text.contains('\n'));
        let reason = format!("{}kubernetes_version v1.20.0+rke2r1 is not offered by this Rancher; it offers: v1.35.1+rke2r1", rmm_actors::steps::REFUSAL);
        assert_eq!(failed("rancher", Step::ChooseKubernetesVersion, &reason).exit_code(), std::process::ExitCode::from(2));
        // Anything else that fails is a failed run (exit 1).
        let e = failed("rancher", Step::CheckRancherVersion, "Rancher unavailable: GET /rancherversion: timed out");
        assert_eq!(e.exit_code(), std::process::ExitCode::from(1));
        assert_eq!(failed("worker01", Step::RunAgent, &reason).exit_code(), std::process::ExitCode::from(1));
    }
}
