//! `rmm log --timeline`: the Gantt chart for a terminal.
//!
//! ```text
//! run 01a20da7  up tinysetup (1 master, 1 worker)  completed  1.46s
//!             a1 completed
//! rancher     ######################## ready #######=####### active ###   1.46s
//! master01    ===create====.....................####agent#####=listed#=   1.45s
//! coordinator A                                   j                    C
//!             +---------+---------+---------+---------+---------+------
//!             0s       200ms     400ms ...
//! ```
//!
//! Every line fits `width` columns (at least 80). Without colour only
//! printable ASCII is written; with colour bars are coloured cells (and a few
//! UTF-8 glyphs). Strings from the log are stripped of control characters
//! either way, so a log cannot inject escape sequences into a terminal.

use std::fmt::Write as _;

use super::axis::{fmt_dur, fmt_tick, tick_step, Axis};
use super::model::{AttemptEnd, Bar, BarEnd, Run};
use super::TimelineOptions;

/// What a chart cell shows. Ordered by priority: a later kind wins a cell
/// that two bars share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Empty,
    Wait,
    Step,
    /// The same as the kind before it, in another shade (colour mode), so
    /// that two bars that touch stay two bars.
    StepAlt,
    Adopted,
    Crit,
    CritAlt,
    Open,
    /// A try stopped by Ctrl-C / SIGTERM (not a failure).
    Interrupted,
    Failed,
    Mark,
    Sep,
    Axis,
}

#[derive(Debug, Clone, Copy)]
struct Cell {
    ch: char,
    kind: Kind,
    owner: Option<usize>,
}

const EMPTY: Cell = Cell { ch: ' ', kind: Kind::Empty, owner: None };

struct Pen {
    color: bool,
}

impl Pen {
    fn glyph(&self, kind: Kind) -> char {
        match (kind, self.color) {
            (Kind::Empty, _) => ' ',
            (Kind::Wait, _) => '.',
            (Kind::Step | Kind::StepAlt, false) => '=',
            (Kind::Crit | Kind::CritAlt, false) => '#',
            (Kind::Step | Kind::StepAlt | Kind::Crit | Kind::CritAlt, true) => ' ',
            (Kind::Adopted, _) => '@',
            (Kind::Open, _) => '?',
            (Kind::Interrupted, _) => '!',
            (Kind::Failed, _) => 'x',
            (Kind::Mark, _) => '*',
            (Kind::Sep, false) => '|',
            (Kind::Sep, true) => '┊',
            (Kind::Axis, _) => '-',
        }
    }

    /// SGR parameters of a cell kind (colour mode only).
    fn sgr(&self, kind: Kind) -> &'static str {
        match kind {
            Kind::Empty => "",
            Kind::Wait | Kind::Sep | Kind::Axis => "2",
            Kind::Step => "30;46",
            Kind::StepAlt => "97;44",
            Kind::Crit => "1;30;43",
            Kind::CritAlt => "30;103",
            Kind::Adopted => "30;42",
            Kind::Open => "1;37;45",
            Kind::Interrupted => "1;30;43",
            Kind::Failed => "1;37;41",
            Kind::Mark => "1",
        }
    }

    fn paint(&self, kind: Kind, text: &str) -> String {
        let sgr = self.sgr(kind);
        if !self.color || sgr.is_empty() {
            text.to_string()
        } else {
            format!("\x1b[{sgr}m{text}\x1b[0m")
        }
    }

    fn cells(&self, cells: &[Cell]) -> String {
        let mut out = String::new();
        let mut i = 0;
        while i < cells.len() {
            let kind = cells[i].kind;
            let mut run = String::new();
            while i < cells.len() && cells[i].kind == kind {
                run.push(cells[i].ch);
                i += 1;
            }
            out.push_str(&self.paint(kind, &run));
        }
        out
    }

    fn arrow(&self) -> &'static str {
        if self.color {
            " → "
        } else {
            " -> "
        }
    }

    /// A string from the log, safe for this terminal: no control characters
    /// (no escape sequences), and plain ASCII without colour.
    fn clean(&self, s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        for c in s.chars() {
            match c {
                c if c.is_control() => out.push(' '),
                c if c.is_ascii() || self.color => out.push(c),
                '…' => out.push_str("..."),
                '—' | '–' => out.push('-'),
                '→' => out.push_str("->"),
                '‘' | '’' => out.push('\''),
                '“' | '”' => out.push('"'),
                _ => out.push('?'),
            }
        }
        out
    }

    /// `s` cut to `w` columns.
    fn fit(&self, s: &str, w: usize) -> String {
        let n = s.chars().count();
        if n <= w {
            return s.to_string();
        }
        let (keep, tail) = if self.color { (w.saturating_sub(1), "…") } else { (w.saturating_sub(3), "...") };
        let mut out: String = s.chars().take(keep).collect();
        out.push_str(tail);
        out
    }
}

/// Greedy word wrap of `text` into lines of at most `width` columns; lines
/// after the first are indented by `indent`.
fn wrap(text: &str, width: usize, indent: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let lead = text.len() - text.trim_start_matches(' ').len();
    let mut line = " ".repeat(lead);
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        let len = line.chars().count();
        let wlen = word.chars().count();
        if len > 0 && len + 1 + wlen > width {
            lines.push(std::mem::take(&mut line));
            line = " ".repeat(indent);
        }
        if !line.is_empty() && !line.ends_with(' ') {
            line.push(' ');
        }
        if line.chars().count() + wlen > width {
            // A word longer than a line: cut it.
            let room = width.saturating_sub(line.chars().count());
            line.extend(word.chars().take(room));
        } else {
            line.push_str(word);
        }
    }
    if !line.trim().is_empty() {
        lines.push(line);
    }
    lines
}

pub fn render(runs: &[Run], opts: &TimelineOptions) -> String {
    let width = opts.width.max(80);
    let pen = Pen { color: opts.color };
    if runs.is_empty() {
        return "no events to draw\n".into();
    }
    let mut out = String::new();
    for (i, run) in runs.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        render_run(&mut out, run, width, &pen);
    }
    out
}

fn render_run(out: &mut String, run: &Run, width: usize, pen: &Pen) {
    let short_id: String = run.id.to_string().chars().take(8).collect();
    let attempts = run.attempts.len();
    let end = run.final_end();
    let wall = run.end_ms() - run.start_ms();
    let head = format!("run {short_id}  {}", pen.clean(&run.title()));
    let _ = writeln!(out, "{}", pen.fit(&head, width));
    let mut head = format!("{} in {}", end.word(), fmt_dur(run.busy_ms()));
    if attempts > 1 {
        let _ = write!(head, " over {attempts} attempts ({} wall clock)", fmt_dur(wall));
    }
    let _ = writeln!(out, "{}", pen.fit(&head, width));

    // Label column, chart, total column.
    let label_w = run.actors.iter().map(|a| a.name.chars().count()).max().unwrap_or(7).clamp(7, 12);
    let total_w = 7;
    let chart_w = width - label_w - 1 - 1 - total_w;
    let axis = Axis::new(run, chart_w as f64, 1.0, 6.0);
    let seg_cols: Vec<(usize, usize)> = axis
        .segments
        .iter()
        .map(|s| {
            let c0 = (s.x0.round() as usize).min(chart_w - 1);
            let c1 = ((s.x0 + s.width).round() as usize).clamp(c0 + 1, chart_w);
            (c0, c1)
        })
        .collect();
    let sep_cols: Vec<usize> = if axis.sep > 0.0 {
        seg_cols.iter().skip(1).map(|(c0, _)| c0.saturating_sub(1)).collect()
    } else {
        Vec::new()
    };
    let blank_row = || {
        let mut row = vec![EMPTY; chart_w];
        for &c in &sep_cols {
            if c < chart_w {
                row[c] = Cell { ch: pen.glyph(Kind::Sep), kind: Kind::Sep, owner: None };
            }
        }
        row
    };

    // The attempts' heading.
    let mut heading = blank_row();
    for (k, (seg, &(c0, c1))) in axis.segments.iter().zip(&seg_cols).enumerate() {
        let att = &run.attempts[k];
        let mut text = format!("a{}", seg.attempt);
        if let Some(gap) = seg.gap_before_ms {
            let _ = write!(text, " +{}", fmt_dur(gap));
        }
        let _ = write!(text, " {}", att.end.word());
        for (j, ch) in text.chars().take(c1 - c0).enumerate() {
            heading[c0 + j] = Cell { ch, kind: Kind::Empty, owner: None };
        }
    }
    let pad = |s: &str, w: usize| format!("{:<w$}", s, w = w);
    let _ = writeln!(out, "{} {}", pad("", label_w), pen.cells(&heading).trim_end());

    // One row per actor.
    let col_range = |bar: &Bar| -> (usize, usize) {
        let k = axis.segments.iter().position(|s| s.attempt == bar.attempt).unwrap_or(0);
        let (s0, s1) = seg_cols[k];
        let x0 = axis.x(bar.attempt, bar.start_ms);
        let x1 = axis.x(bar.attempt, bar.end_ms);
        let c0 = (x0.floor() as usize).clamp(s0, s1 - 1);
        let c1 = (x1.ceil() as usize).clamp(c0 + 1, s1);
        (c0, c1)
    };
    for (ai, actor) in run.actors.iter().enumerate() {
        let mut row = blank_row();
        if actor.is_coordinator() {
            for m in &run.marks {
                let k = axis.segments.iter().position(|s| s.attempt == m.attempt).unwrap_or(0);
                let (s0, s1) = seg_cols[k];
                let c = (axis.x(m.attempt, m.at_ms).floor() as usize).clamp(s0, s1 - 1);
                let cur = row[c];
                let wins = match cur.owner {
                    Some(p) if cur.kind == Kind::Mark => m.kind.priority() as usize > p,
                    _ => true,
                };
                if wins {
                    row[c] = Cell { ch: m.kind.glyph(), kind: Kind::Mark, owner: Some(m.kind.priority() as usize) };
                }
            }
        }
        // Waiting between this actor's first and last step, per attempt.
        for seg in &axis.segments {
            let bars: Vec<&Bar> = actor.bars.iter().map(|&i| &run.bars[i]).filter(|b| b.attempt == seg.attempt).collect();
            if let (Some(first), Some(last)) =
                (bars.iter().map(|b| col_range(b).0).min(), bars.iter().map(|b| col_range(b).1).max())
            {
                for cell in row.iter_mut().take(last).skip(first) {
                    if cell.kind == Kind::Empty {
                        *cell = Cell { ch: pen.glyph(Kind::Wait), kind: Kind::Wait, owner: None };
                    }
                }
            }
        }
        for (nth, &bi) in actor.bars.iter().enumerate() {
            let bar = &run.bars[bi];
            let kind = match bar_kind(bar) {
                Kind::Step if nth % 2 == 1 => Kind::StepAlt,
                Kind::Crit if nth % 2 == 1 => Kind::CritAlt,
                k => k,
            };
            let (c0, c1) = col_range(bar);
            for cell in row.iter_mut().take(c1).skip(c0) {
                if cell.kind <= kind && cell.kind != Kind::Sep {
                    *cell = Cell { ch: pen.glyph(kind), kind, owner: Some(bi) };
                }
            }
        }
        // Names inside the bars wide enough to hold them.
        for &bi in &actor.bars {
            let label = run.bars[bi].short();
            let need = label.len() + 2;
            let mut c = 0;
            while c < chart_w {
                if row[c].owner != Some(bi) || row[c].kind == Kind::Mark {
                    c += 1;
                    continue;
                }
                let start = c;
                while c < chart_w && row[c].owner == Some(bi) {
                    c += 1;
                }
                let labelled = matches!(row[start].kind, Kind::Step | Kind::StepAlt | Kind::Crit | Kind::CritAlt | Kind::Adopted);
                if c - start >= need && labelled {
                    let at = start + (c - start - label.len()) / 2;
                    for (j, ch) in label.chars().enumerate() {
                        row[at + j].ch = ch;
                    }
                    break;
                }
            }
        }
        let total = if actor.is_coordinator() { String::new() } else { fmt_dur(run.actor_times(ai).0) };
        let line = format!(
            "{} {} {:>total_w$}",
            pad(&pen.fit(&pen.clean(&actor.name), label_w), label_w),
            pen.cells(&row),
            total,
            total_w = total_w
        );
        let _ = writeln!(out, "{}", line.trim_end());
    }

    // The time axis: ticks, and their offsets from each attempt's start.
    let mut ticks = blank_row();
    let mut labels = blank_row();
    for (seg, &(c0, c1)) in axis.segments.iter().zip(&seg_cols) {
        for cell in ticks.iter_mut().take(c1).skip(c0) {
            *cell = Cell { ch: pen.glyph(Kind::Axis), kind: Kind::Axis, owner: None };
        }
        let dur = seg.end_ms - seg.start_ms;
        let ms_per_col = dur as f64 / (c1 - c0) as f64;
        let step = tick_step(ms_per_col, 10.0);
        let mut free = c0;
        let mut t = 0;
        while t <= dur {
            let c = (axis.x(seg.attempt, seg.start_ms + t).floor() as usize).clamp(c0, c1 - 1);
            ticks[c] = Cell { ch: '+', kind: Kind::Axis, owner: None };
            let text = fmt_tick(t);
            // Under its tick, or ending at the segment's end if it would overflow it.
            let at = c.min(c1.saturating_sub(text.len()));
            if at >= free && at + text.len() <= c1 {
                for (j, ch) in text.chars().enumerate() {
                    labels[at + j] = Cell { ch, kind: Kind::Empty, owner: None };
                }
                free = at + text.len() + 1;
            }
            t += step;
        }
    }
    let _ = writeln!(out, "{} {}", pad("", label_w), pen.cells(&ticks));
    let _ = writeln!(out, "{} {}", pad("time", label_w), pen.cells(&labels).trim_end());

    // Legend.
    let sample = |kind: Kind, ch: char| pen.paint(kind, &ch.to_string());
    let mut legend = vec![
        format!("{} critical path", sample(Kind::Crit, pen.glyph(Kind::Crit))),
        format!("{} step", sample(Kind::Step, pen.glyph(Kind::Step))),
        format!("{} failed try", sample(Kind::Failed, 'x')),
        format!("{} no outcome (in flight, or cut by a crash)", sample(Kind::Open, '?')),
        format!("{} interrupted (Ctrl-C; runs again on resume)", sample(Kind::Interrupted, '!')),
        format!("{} adopted on resume", sample(Kind::Adopted, '@')),
        format!("{} waiting", sample(Kind::Wait, '.')),
    ];
    if attempts > 1 {
        legend.push(format!("{} next attempt (time between attempts cut out)", sample(Kind::Sep, pen.glyph(Kind::Sep))));
    }
    if run.actors.iter().any(|a| a.is_coordinator()) {
        for item in ["A attempt started", "j join granted", "C completed", "F run failed", "I interrupted"] {
            legend.push(item.into());
        }
    }
    legend.push("time: from each attempt's start".into());
    // Wrap by visible width (escape codes take no column).
    let mut line = String::new();
    let mut line_w = 0;
    for item in legend {
        let w = visible_width(&item);
        if line_w > 0 && line_w + 2 + w > width {
            let _ = writeln!(out, "{line}");
            line.clear();
            line_w = 0;
        }
        if line_w > 0 {
            line.push_str("  ");
            line_w += 2;
        }
        line.push_str(&item);
        line_w += w;
    }
    if line_w > 0 {
        let _ = writeln!(out, "{line}");
    }

    // Attempts.
    if attempts > 1 || !matches!(end, AttemptEnd::Completed) {
        out.push('\n');
        let mut prev_end: Option<i64> = None;
        for att in &run.attempts {
            let mut text = format!(
                "attempt {}  {}  {}  {}",
                att.no,
                rmm_events::rfc3339_ms(att.start_ms),
                fmt_dur(att.duration_ms()),
                att.end.word()
            );
            match &att.end {
                AttemptEnd::Failed(why) | AttemptEnd::Interrupted(why) => {
                    let _ = write!(text, ": {}", pen.clean(why));
                }
                _ => {}
            }
            if let Some(p) = prev_end {
                let _ = write!(text, " ({})", att.followed(p));
            }
            for l in wrap(&text, width, 4).into_iter().map(|l| {
            let l = l.replace(" -> ", pen.arrow());
            match l.strip_suffix(" ->") {
                Some(head) => format!("{head}{}", pen.arrow().trim_end()),
                None => l,
            }
        }) {
                let _ = writeln!(out, "{l}");
            }
            prev_end = Some(att.end_ms);
        }
    }

    // Critical path, per attempt.
    out.push('\n');
    for (k, chain) in run.critical.iter().enumerate() {
        let Some((length, between)) = run.critical_summary(k) else { continue };
        let mut text = format!("critical path{} {}", if attempts > 1 { format!(" a{}", run.attempts[k].no) } else { String::new() }, fmt_dur(length));
        let _ = write!(text, " ({} between steps):", fmt_dur(between));
        let mut last_actor = None;
        for (j, &bi) in chain.iter().enumerate() {
            let bar = &run.bars[bi];
            if j > 0 {
                // Wrapped as the plain arrow, drawn after: both modes
                // break the path at the same places.
                text.push_str(" -> ");
            } else {
                text.push(' ');
            }
            if last_actor != Some(bar.actor) {
                let _ = write!(text, "{} ", pen.clean(&run.actors[bar.actor].name));
                last_actor = Some(bar.actor);
            }
            text.push_str(bar.step.as_str());
            match bar.end {
                BarEnd::Failed { .. } => {
                    let _ = write!(text, " (try {} failed)", bar.try_no);
                }
                _ if bar.try_no > 1 => {
                    let _ = write!(text, " (try {})", bar.try_no);
                }
                _ => {}
            }
        }
        for l in wrap(&text, width, 4) {
            let _ = writeln!(out, "{l}");
        }
    }

    // Steps: per attempt, per actor, in start order.
    out.push('\n');
    let actor_w = run
        .actors
        .iter()
        .filter(|a| !a.bars.is_empty())
        .map(|a| a.name.chars().count())
        .max()
        .unwrap_or(5)
        .clamp(5, 12);
    let step_w = run.bars.iter().map(|b| b.step.as_str().len()).max().unwrap_or(4).max(4);
    let head = format!("  {:<actor_w$} {:<step_w$} try   start    took  result", "actor", "step");
    let _ = writeln!(out, "{}", pen.fit(&head, width));
    let mut failures = Vec::new();
    for att in &run.attempts {
        if attempts > 1 {
            let _ = writeln!(out, "{}", pen.fit(&format!("  attempt {} ({})", att.no, att.end.word()), width));
        }
        for actor in &run.actors {
            for &bi in actor.bars.iter().filter(|&&bi| run.bars[bi].attempt == att.no) {
                let bar = &run.bars[bi];
                let mark = if bar.critical { pen.paint(Kind::Crit, if pen.color { "*" } else { "#" }) } else { " ".into() };
                let start = bar.start_ms - att.start_ms;
                let result = match &bar.end {
                    BarEnd::Ok { adopted: false } if bar.reconcile => "ok (checked on resume)".to_string(),
                    BarEnd::Ok { adopted: false } => "ok".to_string(),
                    BarEnd::Ok { adopted: true } => "ok (adopted)".to_string(),
                    BarEnd::Failed { retryable, .. } => {
                        failures.push(bi);
                        let retried = actor.bars.iter().any(|&j| run.bars[j].step == bar.step && run.bars[j].start_seq > bar.start_seq);
                        match (retryable, retried) {
                            (_, true) => "failed, tried again".into(),
                            (true, false) => "failed".into(),
                            (false, false) => "failed (gave up)".into(),
                        }
                    }
                    BarEnd::Interrupted { .. } => "interrupted".into(),
                    BarEnd::Open => match &att.end {
                        AttemptEnd::Open => "in flight (or crashed)".into(),
                        AttemptEnd::Crashed => "no outcome (crashed)".into(),
                        AttemptEnd::Interrupted(_) => "stopped (interrupted)".into(),
                        AttemptEnd::Failed(_) => "stopped (run failed)".into(),
                        AttemptEnd::Completed => "no outcome".into(),
                    },
                };
                let line = format!(
                    "{:<actor_w$} {:<step_w$} {:>3} {:>7} {:>7}  {}",
                    pen.fit(&pen.clean(&actor.name), actor_w),
                    bar.step.as_str(),
                    bar.try_no,
                    format!("+{}", fmt_dur(start)),
                    fmt_dur(bar.duration_ms()),
                    result
                );
                let _ = writeln!(out, "{} {}", mark, pen.fit(&line, width - 2));
            }
        }
    }
    let steps: std::collections::BTreeSet<(usize, rmm_events::Step)> = run.bars.iter().map(|b| (b.actor, b.step)).collect();
    let plural = |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    let total = format!(
        "{} ({}), {} failed; {} in {}",
        plural(steps.len(), "step", "steps"),
        plural(run.bars.len(), "try", "tries"),
        failures.len(),
        fmt_dur(run.busy_ms()),
        plural(attempts, "attempt", "attempts")
    );
    let _ = writeln!(out, "{}", pen.fit(&format!("  {total}"), width));
    if !failures.is_empty() {
        out.push('\n');
        let _ = writeln!(out, "failures:");
        for bi in failures {
            let bar = &run.bars[bi];
            if let BarEnd::Failed { retryable, error } = &bar.end {
                let actor = &run.actors[bar.actor];
                let retried = actor.bars.iter().any(|&j| run.bars[j].step == bar.step && run.bars[j].start_seq > bar.start_seq);
                let text = format!(
                    "  {} {} try {} (attempt {}, {}): {}",
                    pen.clean(&actor.name),
                    bar.step.as_str(),
                    bar.try_no,
                    bar.attempt,
                    match (retryable, retried) {
                        (_, true) => "tried again",
                        (true, false) => "not tried again: the attempt ended",
                        (false, false) => "gave up",
                    },
                    pen.clean(error)
                );
                for l in wrap(&text, width, 6) {
                    let _ = writeln!(out, "{l}");
                }
            }
        }
    }
}

fn bar_kind(bar: &Bar) -> Kind {
    match &bar.end {
        BarEnd::Failed { .. } => Kind::Failed,
        BarEnd::Open => Kind::Open,
        BarEnd::Interrupted { .. } => Kind::Interrupted,
        BarEnd::Ok { .. } if bar.critical => Kind::Crit,
        BarEnd::Ok { adopted: true } => Kind::Adopted,
        BarEnd::Ok { .. } if bar.reconcile => Kind::Adopted,
        BarEnd::Ok { .. } => Kind::Step,
    }
}

/// Columns a string takes on a terminal: escape sequences take none.
pub fn visible_width(s: &str) -> usize {
    strip_ansi(s).chars().count()
}

/// `s` without ANSI CSI sequences.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' && chars.peek() == Some(&'[') {
            chars.next();
            for d in chars.by_ref() {
                if ('@'..='~').contains(&d) {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
