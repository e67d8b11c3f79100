//! Runs one attempt of a run: starts the journal and the actix System, the
//! Coordinator and its actors, the progress view and the signal handlers,
//! and waits for the attempt to end.

use std::sync::Arc;

use rmm_actors::ports::{MachineDriver, RancherConnector};
use rmm_actors::{Coordinator, Interrupt, Journal, RunCtx, RunEnd};
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
        other => Err(Error::Config(format!("unknown driver {other:?}"))),
    }
}

/// Appends the first events of a new run (`RunStarted`) or of a new attempt.
pub fn begin(log: &mut SledLog, history: &mut History, run: Option<Uuid>, kind: RunKind, plan: &Plan) -> Result<RunState> {
    let command: Vec<String> = std::env::args().collect();
    let mut events = Vec::new();
    let (run, attempt, cause) = match run {
        Some(id) => {
            let state = history.runs.iter().rev().find(|r| r.id == id).expect("the run to resume is in the log");
            (id, state.attempts + 1, state.actor("coordinator").and_then(|a| a.last_event))
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
    for record in log.append_batch(events)? {
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
) -> Result<RunEnd> {
    let secrets = FileSecrets::open(dir.secrets())
        .map_err(|e| Error::StateDir(format!("cannot read secrets file: {e}")))?;
    let connector: Arc<dyn RancherConnector> = Arc::new(crate::rancher::HttpConnector::new());
    let (journal, _writer) = Journal::start(log);
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
    });
    let down = state.kind == RunKind::Down;
    let names: Vec<String> = machines.iter().map(|(n, _)| n.clone()).collect();
    let system = actix::System::new();
    let end = system.block_on(async move {
        let (sink, rx) = mpsc::unbounded_channel();
        let view = tokio::spawn(crate::progress::render(rx, names));
        let (end_tx, mut end_rx) = oneshot::channel();
        let addr = actix::Actor::start(Coordinator::new(ctx, state, machines, down, stop_tx, Some(sink), end_tx));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let mut interrupted = false;
        let end = loop {
            tokio::select! {
                end = &mut end_rx => break end.unwrap_or(RunEnd::Fatal("the coordinator stopped unexpectedly".into())),
                _ = tokio::signal::ctrl_c(), if !interrupted => {
                    interrupted = true;
                    crate::errln!("rmm: interrupted; letting steps in flight finish (Ctrl-C again to abort)");
                    addr.do_send(Interrupt);
                }
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } }, if !interrupted => {
                    interrupted = true;
                    addr.do_send(Interrupt);
                }
                _ = tokio::signal::ctrl_c(), if interrupted => {
                    crate::errln!("rmm: aborted; `rmm up --resume` continues from the log");
                    std::process::exit(130);
                }
            }
        };
        drop(addr);
        let _ = tokio::time::timeout(std::time::Duration::from_millis(500), view).await;
        end
    });
    Ok(end)
}
