//! Runs one attempt of a run: starts the journal and the actix System, the
//! Coordinator and its actors, the progress view and the signal handlers,
//! and waits for the attempt to end.

use std::sync::Arc;

use rmm_actors::ports::{MachineDriver, RancherConnector};
use rmm_actors::{AppendFailure, Coordinator, Interrupt, Journal, RunCtx, RunEnd};
use rmm_events::{now_ms, Envelope, Event, History, Plan, Role, RunKind, RunState, SledLog};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::secrets::FileSecrets;
use crate::state_dir::StateDir;

/// The driver named in the plan.
pub fn driver(plan: &Plan, dir: &StateDir) -> Result<Arc<dyn MachineDriver>> {
    match plan.driver.as_str() {
        "local" => {
            let exe = std::env::current_exe().map_err(|e| Error::Other(format!("cannot find the rmm binary: {e}")))?;
            Ok(Arc::new(crate::drivers::local::LocalDriver::new(dir.world(), exe)))
        }
        "docker" => {
            let cfg = crate::drivers::docker::settings(dir.root(), None, false).map_err(Error::Config)?;
            Ok(Arc::new(crate::drivers::docker::DockerDriver::new(&plan.cluster_name, cfg, dir.root())))
        }
        "docker-machine" => {
            let cfg = crate::drivers::docker_machine::settings(dir.root(), None, false).map_err(Error::Config)?;
            Ok(Arc::new(crate::drivers::docker_machine::DockerMachineDriver::new(&plan.cluster_name, cfg)))
        }
        "ssh" => {
            let cfg = crate::drivers::ssh::settings(dir.root(), None, false).map_err(Error::Config)?;
            Ok(Arc::new(crate::drivers::ssh::SshDriver::new(cfg, plan.distribution, dir.root())))
        }
        other => Err(Error::Config(format!("unknown driver {other:?}"))),
    }
}

/// The driver named in the plan, told what the log recorded about its
/// machines (the host keys pinned on first contact).
pub fn driver_for(plan: &Plan, dir: &StateDir, history: &History) -> Result<Arc<dyn MachineDriver>> {
    let driver = driver(plan, dir)?;
    driver.pin_host_keys(&recorded_host_keys(history));
    Ok(driver)
}

/// The host keys the log recorded on first contact (`HostClaimed`, the ssh
/// driver's), machine → fingerprint; a later run's win.
pub fn recorded_host_keys(history: &History) -> std::collections::BTreeMap<String, String> {
    let mut keys = std::collections::BTreeMap::new();
    for run in &history.runs {
        for (name, actor) in &run.actors {
            if let Some(rmm_events::Outcome::HostClaimed { host_key, .. }) = actor.outcome(rmm_events::Step::CreateMachine) {
                keys.insert(name.clone(), host_key.clone());
            }
        }
    }
    keys
}

/// Appends the first events of a new run (`RunStarted`) or of a new attempt.
/// A failed append names the event log's file and the free space.
pub fn begin(
    dir: &StateDir,
    log: &mut SledLog,
    history: &mut History,
    run: Option<Uuid>,
    kind: RunKind,
    plan: &Plan,
) -> Result<RunState> {
    begin_with(dir, log, history, run, kind, plan, false)
}

/// [`begin`]; with `scale`, the completed `up` run `run` goes on under
/// `plan`: `PlanChanged` and the new attempt's `AttemptStarted` are
/// appended together (issue 11).
pub fn begin_with(
    dir: &StateDir,
    log: &mut SledLog,
    history: &mut History,
    run: Option<Uuid>,
    kind: RunKind,
    plan: &Plan,
    scale: bool,
) -> Result<RunState> {
    let command: Vec<String> = std::env::args().collect();
    let mut events = Vec::new();
    let (run, attempt, cause) = match run {
        Some(id) => {
            let state = history.runs.iter().rev().find(|r| r.id == id).expect("the run to resume is in the log");
            let mut cause = state.actor("coordinator").and_then(|a| a.last_event);
            if scale {
                let changed = envelope(id, state.attempts + 1, cause, Event::PlanChanged { plan: plan.clone() });
                cause = Some(changed.id);
                events.push(changed);
            }
            (id, state.attempts + 1, cause)
        }
        None => {
            let id = Uuid::now_v7();
            let started = envelope(id, 1, None, Event::RunStarted { kind, plan: plan.clone() });
            let cause = Some(started.id);
            events.push(started);
            (id, 1, cause)
        }
    };
    events.push(envelope(
        run,
        attempt,
        cause,
        Event::AttemptStarted {
            attempt,
            command: redact_args(&command).join(" "),
            pid: std::process::id(),
            rmm_version: env!("CARGO_PKG_VERSION").to_string(),
            user: std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_default(),
            host: nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default(),
        },
    ));
    let last_seq = log.last_seq();
    let records = match log.append_batch(events) {
        Ok(records) => records,
        Err(e @ rmm_events::Error::Store(_)) => {
            // A new run whose first records may not have reached the disk:
            // the resume then says there is nothing to resume, and how to start.
            let then = if kind == RunKind::Down { "run `rmm down` again" } else { "`rmm up --resume`" };
            return Err(log_write_error(dir, &AppendFailure::new(&e, last_seq), then))
        }
        Err(e) => return Err(e.into()),
    };
    for record in records {
        rmm_actors::crashpoint::appended(1);
        history.apply(&record.envelope);
    }
    Ok(history.runs.iter().rev().find(|r| r.id == run).expect("just appended").clone())
}

fn envelope(run: Uuid, attempt: u32, cause: Option<Uuid>, event: Event) -> Envelope {
    Envelope { seq: 0, id: Uuid::now_v7(), run, attempt, actor: "coordinator".into(), cause, at_ms: now_ms(), event }
}

/// The command line as recorded: nothing here is secret today, but a flag
/// value that looks like a checksum or token is kept short.
fn redact_args(args: &[String]) -> Vec<String> {
    args.iter()
        .enumerate()
        .map(|(i, a)| if i == 0 { "rmm".to_string() } else { a.clone() })
        .collect()
}

/// Runs the attempt whose `AttemptStarted` is the last event of `state`.
pub fn run_attempt(
    dir: &StateDir,
    log: SledLog,
    state: RunState,
    machines: Vec<(String, Role)>,
    driver: Arc<dyn MachineDriver>,
    undo: Option<rmm_actors::context::Undo>,
) -> Result<RunEnd> {
    let secrets = FileSecrets::open(dir.secrets())
        .map_err(|e| Error::StateDir(format!("cannot read secrets file: {e}")))?;
    let connector: Arc<dyn RancherConnector> = Arc::new(crate::rancher::HttpConnector::new());
    let (journal, _writer) = Journal::start(log);
    let journal_handle = journal.clone();
    let (stop_tx, stop_rx) = watch::channel(false);
    let ctx = Arc::new(RunCtx {
        run: state.id,
        attempt: state.attempts,
        plan: state.plan.clone(),
        journal,
        driver,
        connector,
        secrets: Arc::new(secrets),
        create_slots: Arc::new(Semaphore::new(state.plan.parallel as usize)),
        stop: stop_rx,
        undo,
    });
    let down = state.kind == RunKind::Down;
    let names: Vec<String> = machines.iter().map(|(n, _)| n.clone()).collect();
    let view_state = state.clone();
    let system = actix::System::new();
    let end = system.block_on(async move {
        let (sink, rx) = mpsc::unbounded_channel();
        let view = tokio::spawn(crate::progress::render(rx, names, view_state));
        let (end_tx, mut end_rx) = oneshot::channel();
        let addr = actix::Actor::start(Coordinator::new(ctx, state, machines, down, stop_tx, Some(sink), end_tx));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let mut interrupted = false;
        let end = loop {
            tokio::select! {
                end = &mut end_rx => break end.unwrap_or(RunEnd::Fatal("the coordinator stopped unexpectedly".into())),
                _ = tokio::signal::ctrl_c(), if !interrupted => {
                    interrupted = true;
                    crate::progress::note("rmm: interrupted; letting steps in flight finish (Ctrl-C again to abort)");
                    addr.do_send(Interrupt);
                }
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } }, if !interrupted => {
                    interrupted = true;
                    addr.do_send(Interrupt);
                }
                _ = tokio::signal::ctrl_c(), if interrupted => {
                    crate::progress::clear();
                    crate::errln!("rmm: aborted; `rmm up --resume` continues from the log");
                    std::process::exit(130);
                }
            }
        };
        drop(addr);
        let _ = tokio::time::timeout(std::time::Duration::from_millis(500), view).await;
        end
    });
    // The log could not be written: the process ends now, naming why. (A
    // step still in flight is abandoned; its intent is durable, so the
    // resume reconciles it.)
    if let RunEnd::Fatal(_) = &end {
        // Steps may still be in flight (an HTTP request, a wait). Dropping
        // the runtime under them would run their destructors outside it (a
        // pooled connection then panics); the process ends in a moment
        // anyway, so the runtime is left to it.
        std::mem::forget(system);
    }
    if let (RunEnd::Fatal(_), Some(failure)) = (&end, journal_handle.failure()) {
        let then = if down { "run `rmm down` again" } else { "`rmm up --resume`" };
        return Err(log_write_error(dir, &failure, then));
    }
    Ok(end)
}

/// One line for a failed append: the file, the OS's reason, the free space
/// when the disk is full, the last durable record, and the way on (`then`,
/// e.g. "`rmm up --resume`"). Exit 2.
pub fn log_write_error(dir: &StateDir, failure: &AppendFailure, then: &str) -> Error {
    let events = dir.events();
    let path = if failure.in_wal() { events.join(rmm_actors::journal::WAL_FILE) } else { events.clone() };
    let (reason, fix) = if failure.disk_full() {
        let free = free_bytes(&events).map(|b| format!(" ({} free)", human_bytes(b))).unwrap_or_default();
        (format!("{}{free}", failure.os_reason()), "Free space")
    } else {
        (failure.os_reason(), "Fix the cause")
    };
    Error::StateDir(format!(
        "cannot write the event log {}: {reason}; nothing after seq {} happened unrecorded. {fix}, then {then}",
        path.display(),
        failure.last_seq
    ))
}

/// A run that ended because the secrets file could not be written (a full
/// disk, EIO) is a state dir failure, not a failed run: one line naming the
/// file, the OS's reason, the free space when the disk is full, where the
/// run stopped, and the way on. Exit 2. `None` for any other reason.
pub fn secrets_write_error(dir: &StateDir, where_: &str, reason: &str) -> Option<Error> {
    let at = reason.find(crate::secrets::WRITE_FAILED)?;
    let what = reason[at..].trim_end();
    let full = what.contains("No space left on device") || what.contains("os error 28");
    let (free, fix) = if full {
        let free = free_bytes(&dir.secrets().parent().map(|p| p.to_path_buf()).unwrap_or_else(|| dir.events())).map(|b| format!(" ({} free)", human_bytes(b))).unwrap_or_default();
        (free, "Free space")
    } else {
        (String::new(), "Fix the cause")
    };
    Some(Error::StateDir(format!("{what}{free}; the run stopped at {where_}. {fix}, then `rmm up --resume`")))
}

/// Bytes an unprivileged writer may still use on the file system of `path`.
pub(crate) fn free_bytes(path: &std::path::Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    Some((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
}

/// `812 B`, `12 KB`, `3.4 MB`, `1.2 GB` (powers of 1024).
pub(crate) fn human_bytes(n: u64) -> String {
    const K: u64 = 1024;
    match n {
        n if n < K => format!("{n} B"),
        n if n < K * K => format!("{} KB", n / K),
        n if n < K * K * K => format!("{:.1} MB", n as f64 / (K * K) as f64),
        n => format!("{:.1} GB", n as f64 / (K * K * K) as f64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_df() {
        assert_eq!(human_bytes(812), "812 B");
        assert_eq!(human_bytes(12 * 1024 + 5), "12 KB");
        assert_eq!(human_bytes(3 * 1024 * 1024 + 400 * 1024), "3.4 MB");
        assert_eq!(human_bytes(5 << 30), "5.0 GB");
    }

    #[test]
    fn a_full_disk_names_the_file_the_free_space_and_the_last_durable_seq() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path().to_path_buf());
        std::fs::create_dir_all(dir.events()).unwrap();
        let io = std::io::Error::from_raw_os_error(28);
        let failure = AppendFailure::new(&rmm_events::Error::Store(format!("write journal.wal: {io}")), 17);
        let e = log_write_error(&dir, &failure, "`rmm up --resume`");
        let line = e.to_string();
        assert_eq!(e.exit_code(), std::process::ExitCode::from(2));
        let wal = dir.events().join("journal.wal");
        assert!(line.starts_with(&format!("cannot write the event log {}: No space left on device (", wal.display())), "{line}");
        assert!(line.contains(" free); nothing after seq 17 happened unrecorded. Free space, then `rmm up --resume`"), "{line}");
        let eio = std::io::Error::from_raw_os_error(5);
        let failure = AppendFailure::new(&rmm_events::Error::Store(format!("fdatasync journal.wal: {eio}")), 3);
        let line = log_write_error(&dir, &failure, "run `rmm down` again").to_string();
        assert!(line.contains(": Input/output error; nothing after seq 3") && line.ends_with("run `rmm down` again"), "{line}");
    }
}
