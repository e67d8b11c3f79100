//! The live view of `up` and `down`: on a terminal, one line per actor with
//! its current step and how long it has been running; otherwise (CI, a
//! pipe) one timestamped line per event. Both go to stderr: stdout keeps
//! the result.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use rmm_events::{Event, Record, Step};
use tokio::sync::mpsc;

/// Renders records as they become durable. Runs until the sender side is
/// dropped.
pub async fn render(mut rx: mpsc::UnboundedReceiver<Record>, actors: Vec<String>) {
    if std::io::stderr().is_terminal() && std::env::var_os("RMM_PLAIN").is_none() {
        live(&mut rx, actors).await
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

async fn live(rx: &mut mpsc::UnboundedReceiver<Record>, actors: Vec<String>) {
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("{spinner:.cyan} {prefix:<11.bold} {elapsed:>4} {wide_msg}")
        .expect("valid template")
        .tick_chars("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏✓");
    let mut bars: BTreeMap<String, ProgressBar> = BTreeMap::new();
    let mut first: BTreeMap<String, i64> = BTreeMap::new();
    for name in actors.iter().chain(std::iter::once(&"coordinator".to_string())) {
        let bar = multi.add(ProgressBar::new_spinner().with_style(style.clone()));
        bar.set_prefix(name.clone());
        bar.set_message("waiting");
        bar.enable_steady_tick(Duration::from_millis(120));
        bars.insert(name.clone(), bar);
    }
    while let Some(r) = rx.recv().await {
        let e = &r.envelope;
        let bar = bars.entry(e.actor.clone()).or_insert_with(|| {
            let b = multi.add(ProgressBar::new_spinner().with_style(style.clone()));
            b.set_prefix(e.actor.clone());
            b.enable_steady_tick(Duration::from_millis(120));
            b
        });
        let since = *first.entry(e.actor.clone()).or_insert(e.at_ms);
        let total = format!("{:.1}s", (e.at_ms - since) as f64 / 1000.0);
        match &e.event {
            Event::StepStarted { .. } => {
                bar.reset_elapsed();
                bar.set_message(e.event.summary());
            }
            Event::StepSucceeded { step, .. } if LAST_STEPS.contains(step) => {
                bar.finish_with_message(format!("done in {total} ({})", e.event.summary()));
            }
            Event::RunCompleted | Event::RunFailed { .. } | Event::AttemptInterrupted { .. } => {
                bar.finish_with_message(e.event.summary());
            }
            _ => bar.set_message(e.event.summary()),
        }
    }
    for bar in bars.values() {
        if !bar.is_finished() {
            bar.abandon();
        }
    }
    drop(multi);
    // Leave the cursor below the bars, before the result on stdout.
    crate::errln!();
}

/// The step that ends each kind of actor.
const LAST_STEPS: &[Step] =
    &[Step::WaitNodeActive, Step::WaitClusterActive, Step::RemoveMachine, Step::WaitMachineRunning, Step::WaitClusterReady];
