//! The live view of `up` and `down`: on a terminal, one line per actor with
//! its current step and how long it has been running; otherwise (CI, a
//! pipe) one timestamped line per event. Both go to stderr: stdout keeps
//! the result.
//!
//! On a terminal every line ends with its own mark: `✓` done, `✗` failed
//! (red), `⚠` interrupted or stopped (yellow). A line is cut to the
//! terminal's width and then ends in `…`; an error is never cut: it is
//! printed whole on its own line above the bars. A node that may not go on
//! yet says what it waits for (`waiting: node command`, `waiting: master02
//! to register`), folded from the same records the coordinator decides on.
//! Notes printed while the view is up ([`note`]) go above the bars, so no
//! spinner line is left behind (Ctrl-C).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use rmm_events::{Event, Record, Role, RunState, Step};
use tokio::sync::mpsc;

/// The live view while it is drawn: [`note`] prints above it.
static ACTIVE: Mutex<Option<MultiProgress>> = Mutex::new(None);

/// One line on stderr: above the live view while it is drawn (so the bars
/// are redrawn below it, leaving no stale line), otherwise as is.
pub fn note(line: &str) {
    let active = ACTIVE.lock().unwrap_or_else(|p| p.into_inner()).clone();
    match active {
        Some(multi) => {
            let _ = multi.println(line);
        }
        None => crate::errln!("{line}"),
    }
}

/// Takes the live view off the screen (the process is about to exit on a
/// second Ctrl-C): no spinner line is left behind.
pub fn clear() {
    let active = ACTIVE.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(multi) = active {
        let _ = multi.clear();
        multi.set_draw_target(ProgressDrawTarget::hidden());
    }
}

/// Renders records as they become durable. Runs until the sender side is
/// dropped. `state` is the run as the log left it before this attempt.
pub async fn render(mut rx: mpsc::UnboundedReceiver<Record>, actors: Vec<String>, state: RunState) {
    if std::io::stderr().is_terminal() && std::env::var_os("RMM_PLAIN").is_none() {
        live(&mut rx, actors, state).await
    } else {
        plain(&mut rx).await
    }
}

async fn plain(rx: &mut mpsc::UnboundedReceiver<Record>) {
    while let Some(r) = rx.recv().await {
        let e = &r.envelope;
        let mut err = crate::cli::stderr();
        let _ = writeln!(err, "{} {:<11} {}", e.at_rfc3339(), e.actor, e.event.summary());
    }
}

/// How a line ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mark {
    Done,
    Failed,
    Interrupted,
}

struct Painter {
    color: bool,
    width: usize,
}

impl Painter {
    fn mark(&self, mark: Mark) -> String {
        let (glyph, sgr) = match mark {
            Mark::Done => ("✓", "32"),
            Mark::Failed => ("✗", "1;31"),
            Mark::Interrupted => ("⚠", "1;33"),
        };
        if self.color {
            format!("\x1b[{sgr}m{glyph}\x1b[0m")
        } else {
            glyph.to_string()
        }
    }

    /// The end line of an actor: mark, name, time, text, cut to the width.
    fn end_line(&self, mark: Mark, name: &str, total: &str, text: &str) -> String {
        // "✓ " + name (11) + " " + time (6) + " ".
        let room = self.width.saturating_sub(2 + 11 + 1 + 6 + 1);
        let name = if self.color { format!("\x1b[1m{name:<11}\x1b[0m") } else { format!("{name:<11}") };
        format!("{} {name} {total:>6} {}", self.mark(mark), cut(text, room))
    }

    /// A running line's message, cut so the whole line fits.
    fn running(&self, text: &str) -> String {
        // spinner + " " + name (11) + " " + elapsed (4, up to 6) + " ".
        cut(text, self.width.saturating_sub(2 + 11 + 1 + 6 + 1))
    }

    /// An error, whole, on its own line(s).
    fn error_line(&self, mark: Mark, name: &str, text: &str) -> String {
        format!("{} {name}: {text}", self.mark(mark))
    }
}

/// `text` cut to `room` characters, ending in `…` when cut.
pub fn cut(text: &str, room: usize) -> String {
    let n = text.chars().count();
    if n <= room {
        return text.to_string();
    }
    if room == 0 {
        return String::new();
    }
    let mut s: String = text.chars().take(room - 1).collect();
    s.push('…');
    s
}

/// The terminal's width (stderr's), or 80.
pub fn terminal_width() -> usize {
    terminal_size::terminal_size_of(std::io::stderr())
        .or_else(|| terminal_size::terminal_size_of(std::io::stdout()))
        .map_or(80, |(w, _)| usize::from(w.0))
}

/// What a node that may not go on yet waits for, as the coordinator's
/// grant rule has it (`rmm_actors::decide::grants`): the node command,
/// then (RKE1) the masters one at a time, workers after every master; a
/// scale's rancher actor, the nodes before its cluster wait.
fn waiting_for(state: &RunState, name: &str) -> Option<String> {
    // A scale's rancher actor: its cluster wait starts once the nodes are
    // in and out (`rmm_actors::decide::cluster_wait_grant`).
    if state.kind == rmm_events::RunKind::Up && name == "rancher" {
        let a = state.actor(name)?;
        let waits = a.rescaled && a.in_flight().is_none() && !a.done(Step::WaitClusterReady) && !a.done(Step::WaitClusterActive);
        return waits.then(|| "waiting: nodes to join and leave".into());
    }
    if state.kind != rmm_events::RunKind::Up || name == "rancher" || state.granted.contains(name) {
        return None;
    }
    let actor = state.actor(name)?;
    if actor.in_flight().is_some() || !actor.done(Step::CreateMachine) {
        return None;
    }
    if !state.actor("rancher").is_some_and(|a| a.done(Step::WaitNodeCommand)) {
        return Some("waiting: node command".into());
    }
    if state.plan.distribution.is_v1() {
        return Some("waiting: permission to join".into());
    }
    let listed = |n: &str| state.actor(n).is_some_and(|a| a.done(Step::WaitNodeListed));
    let masters: Vec<String> =
        state.plan.node_names().into_iter().filter(|(_, r)| *r == Role::Master).map(|(n, _)| n).collect();
    let before: Vec<&String> = if name.starts_with("master") {
        masters.iter().take_while(|m| m.as_str() != name).collect()
    } else {
        masters.iter().collect()
    };
    match before.iter().find(|m| !listed(m)) {
        Some(m) => Some(format!("waiting: {m} to register")),
        None => Some("waiting: permission to join".into()),
    }
}

struct Line {
    bar: ProgressBar,
    /// The message shown while running (to keep it when only the wait changes).
    message: String,
    waiting: Option<String>,
}

async fn live(rx: &mut mpsc::UnboundedReceiver<Record>, actors: Vec<String>, mut state: RunState) {
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    *ACTIVE.lock().unwrap_or_else(|p| p.into_inner()) = Some(multi.clone());
    let paint = Painter { color: std::env::var_os("NO_COLOR").is_none(), width: terminal_width() };
    let style = ProgressStyle::with_template("{spinner:.cyan} {prefix:<11.bold} {elapsed:>4} {msg}")
        .expect("valid template")
        .tick_chars("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏ ");
    let ended = ProgressStyle::with_template("{msg}").expect("valid template");
    let new_line = |name: &str| {
        let bar = multi.add(ProgressBar::new_spinner().with_style(style.clone()));
        bar.set_prefix(name.to_string());
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    };
    let mut lines: BTreeMap<String, Line> = BTreeMap::new();
    let mut first: BTreeMap<String, i64> = BTreeMap::new();
    for name in actors.iter().chain(std::iter::once(&"coordinator".to_string())) {
        let bar = new_line(name);
        let role = crate::view::role_of(name);
        let (word, _) = crate::view::actor_state(&state, name, state.actor(name), role, true);
        if matches!(word, "done" | "removed") && name != "coordinator" {
            bar.set_style(ended.clone());
            bar.finish_with_message(paint.end_line(Mark::Done, name, "", &format!("{word} (before this attempt)")));
        } else {
            bar.set_message("pending");
        }
        lines.insert(name.clone(), Line { bar, message: "pending".into(), waiting: None });
    }
    let finish = |line: &Line, mark: Mark, name: &str, total: &str, text: &str| {
        line.bar.set_style(ended.clone());
        line.bar.finish_with_message(paint.end_line(mark, name, total, text));
    };
    while let Some(r) = rx.recv().await {
        let e = &r.envelope;
        if e.run == state.id {
            state.apply(e);
        }
        let line = lines.entry(e.actor.clone()).or_insert_with(|| Line {
            bar: new_line(&e.actor),
            message: String::new(),
            waiting: None,
        });
        let since = *first.entry(e.actor.clone()).or_insert(e.at_ms);
        let total = format!("{:.1}s", (e.at_ms - since) as f64 / 1000.0);
        match &e.event {
            Event::StepStarted { .. } => {
                line.bar.reset_elapsed();
                line.waiting = None;
                line.message = e.event.summary();
                line.bar.set_message(paint.running(&line.message));
            }
            Event::StepSucceeded { step, .. } if LAST_STEPS.contains(step) => {
                finish(line, Mark::Done, &e.actor, &total, &format!("done ({})", e.event.summary()));
            }
            Event::StepFailed { step, try_no, error, retryable } => {
                // The line that stays promises nothing: the attempt may end
                // before another try (another node failed, Ctrl-C).
                let head = if *retryable {
                    format!("{} failed (try {try_no})", step.as_str())
                } else {
                    format!("{} failed (try {try_no}), gave up", step.as_str())
                };
                let _ = multi.println(paint.error_line(Mark::Failed, &e.actor, &format!("{head}: {error}")));
                if *retryable {
                    line.message = format!("{head}, waiting to try again");
                    line.bar.set_message(paint.running(&line.message));
                } else {
                    finish(line, Mark::Failed, &e.actor, &total, &head);
                }
            }
            Event::StepInterrupted { step, try_no, .. } => {
                finish(line, Mark::Interrupted, &e.actor, &total, &format!("{} interrupted (try {try_no})", step.as_str()));
            }
            Event::RunCompleted => finish(line, Mark::Done, &e.actor, &total, "run completed"),
            Event::RunFailed { actor, step, reason } => {
                let at = match step {
                    Some(s) => format!("{actor}/{}", s.as_str()),
                    None => actor.clone(),
                };
                let _ = multi.println(paint.error_line(Mark::Failed, "run failed", &format!("{at}: {reason}")));
                finish(line, Mark::Failed, &e.actor, &total, &format!("run failed at {at}"));
            }
            Event::AttemptInterrupted { reason } => {
                finish(line, Mark::Interrupted, &e.actor, &total, &format!("interrupted: {reason}"));
            }
            // The coordinator's line counts the joins it granted, rather
            // than spin on the last one as if that were still going on.
            Event::JoinGranted { node } => {
                line.message = format!(
                    "joins granted: {} of {} nodes (last: {node})",
                    state.granted.len(),
                    state.plan.node_names().len()
                );
                line.bar.set_message(paint.running(&line.message));
            }
            _ => {
                line.message = e.event.summary();
                line.bar.set_message(paint.running(&line.message));
            }
        }
        // Nodes that may not go on yet say what they wait for.
        for (name, line) in lines.iter_mut().filter(|(_, l)| !l.bar.is_finished()) {
            let waiting = waiting_for(&state, name);
            if waiting != line.waiting {
                match &waiting {
                    Some(w) => {
                        line.bar.reset_elapsed();
                        line.bar.set_message(paint.running(w));
                    }
                    None => line.bar.set_message(paint.running(&line.message)),
                }
                line.waiting = waiting;
            }
        }
    }
    // The attempt ended: a line still going was stopped with it.
    let why = match state.status {
        rmm_events::RunStatus::Failed => "stopped: the run failed",
        rmm_events::RunStatus::Interrupted => "interrupted",
        _ => "stopped",
    };
    for (name, line) in &lines {
        if !line.bar.is_finished() {
            let doing = line.waiting.as_deref().unwrap_or(&line.message);
            let text = if doing.is_empty() || doing == "pending" { why.to_string() } else { format!("{why} (was: {doing})") };
            finish(line, Mark::Interrupted, name, "", &text);
        }
    }
    *ACTIVE.lock().unwrap_or_else(|p| p.into_inner()) = None;
    drop(multi);
    // Leave the cursor below the bars, before the result on stdout.
    crate::errln!();
}

/// The step that ends each kind of actor.
const LAST_STEPS: &[Step] =
    &[Step::WaitNodeActive, Step::WaitClusterActive, Step::RemoveMachine, Step::WaitMachineRunning, Step::WaitClusterReady];

#[cfg(test)]
mod tests {
    use super::cut;

    #[test]
    fn a_cut_line_ends_in_an_ellipsis_and_fits() {
        assert_eq!(cut("wait_node_active (try 1)", 10), "wait_node…");
        assert_eq!(cut("short", 10), "short");
        assert_eq!(cut("abc", 0), "");
    }
}
