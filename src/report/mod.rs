//! Timeline and HTML report of the log (being written: this first version
//! lists steps with their durations; the Gantt chart replaces it).

use rmm_events::{Envelope, Event};

/// How `rmm log --timeline` draws.
#[derive(Debug, Clone)]
pub struct TimelineOptions {
    /// Terminal width in columns (at least 80 is assumed to be available).
    pub width: usize,
    /// ANSI colour (off for `NO_COLOR` or when stdout is not a terminal).
    pub color: bool,
}

/// The timeline of `events` (one or more runs, in log order) as text.
pub fn timeline_text(events: &[Envelope], _opts: &TimelineOptions) -> String {
    let mut out = String::new();
    for e in events {
        if let Event::StepSucceeded { .. } | Event::StepFailed { .. } = e.event {
            out.push_str(&format!("{:<11} {}\n", e.actor, e.event.summary()));
        }
    }
    out
}

/// A self-contained HTML report of `events`.
pub fn html_report(events: &[Envelope]) -> String {
    let mut out = String::from("<!doctype html><meta charset=utf-8><title>rmm report</title><table>");
    for e in events {
        out.push_str(&format!("<tr><td>{}</td><td>{}</td></tr>", e.seq, e.event.kind()));
    }
    out.push_str("</table>");
    out
}
