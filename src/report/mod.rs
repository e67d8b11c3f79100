//! Timeline and HTML report of the log.
//!
//! * [`timeline_text`] — `rmm log --timeline`: a Gantt chart for a terminal,
//!   one row per actor, one bar per try of a step (intent → outcome),
//!   failures, open intents and the critical path marked, attempts
//!   separated, then the critical path and a table of every step with its
//!   duration.
//! * [`html_report`] — `rmm report --html FILE`: one self-contained page
//!   (inline CSS, SVG and JS; nothing fetched) with the same timeline as SVG
//!   and the event table with filters.
//!
//! Both draw the same [`model`]: see there how bars, attempts and the
//! critical path are derived from the events.

mod axis;
mod html;
pub mod model;
mod text;

#[cfg(test)]
mod tests;

use rmm_events::Envelope;

pub use text::strip_ansi;

/// How `rmm log --timeline` draws.
#[derive(Debug, Clone)]
pub struct TimelineOptions {
    /// Terminal width in columns (at least 80 is assumed to be available).
    pub width: usize,
    /// ANSI colour (off for `NO_COLOR` or when stdout is not a terminal).
    /// Without colour only printable ASCII is written.
    pub color: bool,
}

impl Default for TimelineOptions {
    fn default() -> Self {
        TimelineOptions { width: 80, color: false }
    }
}

/// The timeline of `events` (one or more runs, in log order) as text: every
/// line at most `max(opts.width, 80)` columns.
pub fn timeline_text(events: &[Envelope], opts: &TimelineOptions) -> String {
    text::render(&model::build(events), opts)
}

/// A self-contained HTML report of `events` (one or more runs, in log order).
pub fn html_report(events: &[Envelope]) -> String {
    html::render(events, &model::build(events))
}
