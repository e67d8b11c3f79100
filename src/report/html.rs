//! `rmm report --html FILE`: one self-contained page. Inline CSS, SVG and
//! JS only, and a Content-Security-Policy that forbids every fetch, so the
//! page works offline and cannot leak anything when opened. Every string
//! from the log goes through [`esc`] (text and attribute values alike); no
//! log data is put inside the script: it reads what it needs from the DOM.
//!
//! When its script has run to the end it appends `<div id="rmm-rendered">`
//! with the counts it saw; a script error leaves the marker out and writes
//! the message into `#js-errors` (the browser test relies on both).

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;

use rmm_events::{rfc3339_ms, Envelope};

use super::axis::{fmt_dur, fmt_tick, tick_step, Axis};
use super::model::{AttemptEnd, Bar, BarEnd, MarkKind, Run};

/// Escapes text for HTML text and (quoted) attribute values. C0 control
/// characters other than tab and newline become U+FFFD.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\t' | '\n' => out.push(c),
            c if c.is_control() => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

const CSS: &str = r#"
:root { --ok: #4a90c2; --crit: #e0a100; --failed: #d0343a; --open: #a347ba; --adopted: #3a9d5d; --wait: #c9ced6; --ink: #1d2330; --muted: #69707d; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink); margin: 0; padding: 16px 24px 48px; background: #fafbfc; }
h1 { font-size: 20px; margin: 0 0 4px; }
h2 { font-size: 16px; margin: 24px 0 6px; }
.muted, .meta { color: var(--muted); }
code, .mono, td.mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12.5px; }
section.run { background: #fff; border: 1px solid #e3e6ea; border-radius: 6px; padding: 8px 16px 12px; margin: 16px 0; }
svg.timeline { width: 100%; height: auto; display: block; margin: 8px 0; }
svg .label { font: 12px ui-monospace, Menlo, Consolas, monospace; fill: var(--ink); }
svg .row { cursor: pointer; }
svg .row:hover .lane, svg .row.selected .lane { fill: #eef3fb; }
svg .lane { fill: transparent; }
svg .wait { stroke: var(--wait); stroke-width: 2; stroke-dasharray: 2 3; }
svg .bar { fill: var(--ok); }
svg .bar.crit { fill: var(--crit); }
svg .bar.adopted { fill: var(--adopted); }
svg .bar.open { fill: var(--open); }
svg .bar.failed { fill: var(--failed); }
svg .bar.interrupted { fill: #d4a017; }
svg .bar.crit.failed, svg .bar.crit.open { stroke: var(--crit); stroke-width: 2; }
svg .barlabel { font: 10.5px system-ui, sans-serif; fill: #fff; pointer-events: none; }
svg .bar.crit + .barlabel { fill: #1d2330; }
svg .mark { fill: var(--ink); }
svg .mark.failed { fill: var(--failed); }
svg .mark.completed { fill: var(--adopted); }
svg .sep { stroke: var(--muted); stroke-dasharray: 4 3; }
svg .axis { stroke: #b5bbc4; }
svg .tick { font: 10.5px system-ui, sans-serif; fill: var(--muted); }
svg .heading { font: 11.5px system-ui, sans-serif; fill: var(--muted); }
svg .total { font: 11.5px ui-monospace, Menlo, Consolas, monospace; fill: var(--muted); }
.legend span { display: inline-block; margin-right: 14px; color: var(--muted); font-size: 12.5px; }
.legend i { display: inline-block; width: 14px; height: 10px; margin-right: 5px; vertical-align: baseline; border-radius: 2px; }
.legend i.ok { background: var(--ok); } .legend i.crit { background: var(--crit); } .legend i.failed { background: var(--failed); }
.legend i.interrupted { background: #d4a017; } .legend i.open { background: var(--open); } .legend i.adopted { background: var(--adopted); } .legend i.wait { border-top: 2px dashed var(--wait); height: 0; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 3px 8px; border-bottom: 1px solid #eceef1; vertical-align: top; }
th { font-weight: 600; background: #f3f5f7; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.crit td:first-child { box-shadow: inset 3px 0 var(--crit); }
tr.failed td, td.failed { color: var(--failed); }
tr.kind-RunFailed td, tr.kind-StepFailed td { color: var(--failed); }
tr.kind-RunCompleted td { color: var(--adopted); font-weight: 600; }
tr:target td { background: #fff6d5; }
#filters { display: flex; gap: 14px; align-items: center; flex-wrap: wrap; margin: 8px 0; }
#filters input { width: 240px; }
#js-errors { color: var(--failed); white-space: pre-wrap; border: 1px solid var(--failed); padding: 6px; }
details { margin-top: 8px; }
time, td.time { white-space: nowrap; }
.card { background: #fff; border: 1px solid #e3e6ea; border-radius: 6px; padding: 8px 16px 12px; margin: 12px 0; }
.card dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: 4px 0 8px; }
.card dt { color: var(--muted); } .card dd { margin: 0; overflow-wrap: anywhere; }
.card table { width: auto; min-width: 50%; }
td.state-failed { color: var(--failed); font-weight: 600; } td.state-interrupted, td.state-in_doubt { color: #a07800; font-weight: 600; }
td.state-done, td.state-removed { color: var(--adopted); }
.scroll { overflow-x: auto; max-width: 100%; }
#events td:nth-last-child(2) { overflow-wrap: anywhere; }
@media (max-width: 900px) {
  body { padding: 8px 10px 32px; }
  #filters input { width: 140px; }
  th, td { padding: 2px 4px; }
  code, .mono, td.mono { font-size: 11.5px; }
}
summary { cursor: pointer; color: var(--muted); }
"#;

const JS: &str = r#"
(function () {
  'use strict';
  var errors = document.getElementById('js-errors');
  window.addEventListener('error', function (e) {
    errors.hidden = false;
    errors.textContent += 'script error: ' + e.message + '\n';
  });
  var rows = Array.prototype.slice.call(document.querySelectorAll('#events tbody tr'));
  var texts = rows.map(function (r) { return r.textContent.toLowerCase(); });
  var lanes = Array.prototype.slice.call(document.querySelectorAll('svg.timeline g.row'));
  var fRun = document.getElementById('f-run');
  var fActor = document.getElementById('f-actor');
  var fKind = document.getElementById('f-kind');
  var fText = document.getElementById('f-text');
  var count = document.getElementById('f-count');
  function apply() {
    var run = fRun ? fRun.value : '', actor = fActor.value, kind = fKind.value;
    var text = fText.value.trim().toLowerCase();
    var shown = 0;
    for (var i = 0; i < rows.length; i++) {
      var r = rows[i];
      var show = (!run || !fRun || r.getAttribute('data-run') === run) &&
        (!actor || r.getAttribute('data-actor') === actor) &&
        (!kind || r.getAttribute('data-kind') === kind) &&
        (!text || texts[i].indexOf(text) !== -1);
      r.hidden = !show;
      if (show) { shown++; }
    }
    count.textContent = shown + ' of ' + rows.length + ' events';
    lanes.forEach(function (g) {
      g.classList.toggle('selected', !!actor && g.getAttribute('data-actor') === actor);
    });
    return shown;
  }
  // Filters can come in the address: report.html#actor=master01&kind=StepFailed&q=timeout
  function pick(select, value) {
    for (var i = 0; i < select.options.length; i++) {
      if (select.options[i].value === value) { select.value = value; return; }
    }
  }
  function fromHash() {
    var parts = location.hash.replace(/^#/, '').split('&');
    for (var i = 0; i < parts.length; i++) {
      var eq = parts[i].indexOf('=');
      if (eq < 0) { continue; }
      var key, value;
      try {
        key = decodeURIComponent(parts[i].slice(0, eq));
        value = decodeURIComponent(parts[i].slice(eq + 1).replace(/\+/g, ' '));
      } catch (err) { continue; }
      if (key === 'run') { if (fRun) { pick(fRun, value); } }
      else if (key === 'actor') { pick(fActor, value); }
      else if (key === 'kind') { pick(fKind, value); }
      else if (key === 'q') { fText.value = value; }
    }
  }
  window.addEventListener('hashchange', function () { fromHash(); apply(); });
  [fRun, fActor, fKind].forEach(function (el) { if (el) { el.addEventListener('change', apply); } });
  // Times are written in UTC; the toggle shows them in the viewer's own zone.
  var times = Array.prototype.slice.call(document.querySelectorAll('time[datetime]'));
  var local = document.getElementById('f-local');
  function pad(n, w) { n = String(n); while (n.length < w) { n = '0' + n; } return n; }
  function showTimes() {
    times.forEach(function (t) {
      var iso = t.getAttribute('datetime');
      if (!local.checked) { t.textContent = t.getAttribute('data-utc'); return; }
      var d = new Date(iso);
      var off = -d.getTimezoneOffset();
      var zone = (off >= 0 ? '+' : '-') + pad(Math.floor(Math.abs(off) / 60), 2) + ':' + pad(Math.abs(off) % 60, 2);
      t.textContent = d.getFullYear() + '-' + pad(d.getMonth() + 1, 2) + '-' + pad(d.getDate(), 2) + ' ' +
        pad(d.getHours(), 2) + ':' + pad(d.getMinutes(), 2) + ':' + pad(d.getSeconds(), 2) + '.' +
        pad(d.getMilliseconds(), 3) + ' ' + zone;
    });
  }
  local.addEventListener('change', showTimes);
  if (/(^|[#&])tz=local($|&)/.test(location.hash)) { local.checked = true; }
  showTimes();
  fText.addEventListener('input', apply);
  lanes.forEach(function (g) {
    g.addEventListener('click', function () {
      var a = g.getAttribute('data-actor');
      fActor.value = fActor.value === a ? '' : a;
      apply();
      document.getElementById('events').scrollIntoView({ block: 'start' });
    });
  });
  fromHash();
  var shown = apply();
  var done = document.createElement('div');
  done.id = 'rmm-' + 'rendered';
  done.hidden = true;
  done.setAttribute('data-lanes', String(lanes.length));
  done.setAttribute('data-events', String(rows.length));
  done.setAttribute('data-shown', String(shown));
  done.setAttribute('data-scroll-width', String(document.documentElement.scrollWidth));
  done.setAttribute('data-client-width', String(document.documentElement.clientWidth));
  done.setAttribute('data-local-times', String(local.checked ? times.length : 0));
  if (times.length) { done.setAttribute('data-first-time', times[0].textContent); }
  document.body.appendChild(done);
})();
"#;

pub fn render(events: &[Envelope], runs: &[Run]) -> String {
    let mut out = String::with_capacity(16 * 1024 + events.len() * 300);
    out.push_str("<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    // Nothing may be fetched: no network, no other file.
    out.push_str(
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">\n",
    );
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>rmm report</title>\n");
    let _ = write!(out, "<style>{CSS}</style>\n</head>\n<body>\n");
    out.push_str("<div id=\"js-errors\" hidden></div>\n");
    out.push_str("<header><h1>rmm report</h1>");
    let (first, last) = (events.first(), events.last());
    match (first, last) {
        (Some(f), Some(l)) => {
            let _ = write!(
                out,
                "<p class=\"meta\">{} event{} (seq {}–{}), {} run{}, from {} to {}. Generated by rmm {}.</p>",
                events.len(),
                if events.len() == 1 { "" } else { "s" },
                f.seq,
                l.seq,
                runs.len(),
                if runs.len() == 1 { "" } else { "s" },
                esc(&f.at_rfc3339()),
                esc(&l.at_rfc3339()),
                esc(env!("CARGO_PKG_VERSION"))
            );
        }
        _ => out.push_str("<p class=\"meta\">The log has no events.</p>"),
    }
    out.push_str("</header>\n");
    summary_card(&mut out, events);

    for run in runs {
        run_section(&mut out, run);
    }
    events_section(&mut out, events);
    let _ = write!(out, "<script>{JS}</script>\n</body>\n</html>\n");
    out
}

fn run_section(out: &mut String, run: &Run) {
    let id = run.id.to_string();
    let _ = writeln!(out, "<section class=\"run\" data-run=\"{}\">", esc(&id));
    let mut title = format!("Run {} · {} · {} · {}", &id[..8.min(id.len())], run.title(), run.final_end().word(), fmt_dur(run.busy_ms()));
    if run.attempts.len() > 1 {
        let _ = write!(title, " in {} attempts ({} wall clock)", run.attempts.len(), fmt_dur(run.end_ms() - run.start_ms()));
    }
    let _ = writeln!(out, "<h2 title=\"{}\">{}</h2>", esc(&id), esc(&title));
    out.push_str("<ul class=\"attempts\">");
    let mut prev_end = None;
    for att in &run.attempts {
        let mut text = format!("attempt {} · {} · {} · {}", att.no, rfc3339_ms(att.start_ms), fmt_dur(att.duration_ms()), att.end.word());
        if let AttemptEnd::Failed(why) | AttemptEnd::Interrupted(why) = &att.end {
            let _ = write!(text, ": {why}");
        }
        if let Some(p) = prev_end {
            let _ = write!(text, " · {}", att.followed(p));
        }
        if !att.started_by.is_empty() {
            let _ = write!(text, " · {}", att.started_by);
        }
        let _ = write!(out, "<li>{}</li>", esc(&text));
        prev_end = Some(att.end_ms);
    }
    out.push_str("</ul>\n");
    svg(out, run);
    out.push_str(concat!(
        "<p class=\"legend\"><span><i class=\"crit\"></i>critical path</span><span><i class=\"ok\"></i>step</span>",
        "<span><i class=\"failed\"></i>failed try</span><span><i class=\"interrupted\"></i>interrupted (Ctrl-C)</span><span><i class=\"open\"></i>no outcome (in flight, or cut by a crash)</span>",
        "<span><i class=\"adopted\"></i>adopted on resume</span><span><i class=\"wait\"></i>waiting</span>",
        "<span>◆ coordinator: attempt started, join granted, run ended</span>",
        "<span>time from each attempt's start; the time between attempts is cut out</span></p>\n"
    ));
    for (k, chain) in run.critical.iter().enumerate() {
        let Some((length, between)) = run.critical_summary(k) else { continue };
        let mut last_actor = None;
        let steps: Vec<String> = chain
            .iter()
            .map(|&i| {
                let b = &run.bars[i];
                let mut s = String::new();
                if last_actor != Some(b.actor) {
                    let _ = write!(s, "{} ", run.actors[b.actor].name);
                    last_actor = Some(b.actor);
                }
                s.push_str(b.step.as_str());
                if b.try_no > 1 || matches!(b.end, BarEnd::Failed { .. }) {
                    let _ = write!(s, " (try {})", b.try_no);
                }
                s
            })
            .collect();
        let label = if run.attempts.len() > 1 { format!(" (attempt {})", run.attempts[k].no) } else { String::new() };
        let _ = writeln!(
            out,
            "<p class=\"critical\"><b>Critical path{}</b> {} ({} between steps): {}</p>",
            esc(&label),
            esc(&fmt_dur(length)),
            esc(&fmt_dur(between)),
            esc(&steps.join(" → "))
        );
    }
    let _ = write!(out, "<details open><summary>Steps ({})</summary>\n<table class=\"steps\"><thead><tr>", run.bars.len());
    out.push_str("<th>actor</th><th>step</th><th>attempt</th><th>try</th><th>start</th><th>took</th><th>result</th><th>detail</th></tr></thead><tbody>\n");
    for actor in &run.actors {
        for &bi in &actor.bars {
            let b = &run.bars[bi];
            let start = run.attempt(b.attempt).map_or(0, |a| b.start_ms - a.start_ms);
            let mut class = Vec::new();
            if b.critical {
                class.push("crit");
            }
            if matches!(b.end, BarEnd::Failed { .. }) {
                class.push("failed");
            }
            let _ = writeln!(
                out,
                "<tr class=\"{}\"><td class=\"mono\">{}</td><td class=\"mono\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">+{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>",
                class.join(" "),
                esc(&actor.name),
                esc(b.step.as_str()),
                b.attempt,
                b.try_no,
                esc(&fmt_dur(start)),
                esc(&fmt_dur(b.duration_ms())),
                esc(&result_text(run, b)),
                esc(&b.detail)
            );
        }
    }
    out.push_str("</tbody></table></details>\n</section>\n");
}

fn result_text(run: &Run, b: &Bar) -> String {
    let mut s = match &b.end {
        BarEnd::Ok { adopted: true } => "ok (adopted: found in the world)".to_string(),
        BarEnd::Ok { .. } if b.reconcile => "ok (found in the world)".to_string(),
        BarEnd::Ok { .. } => "ok".to_string(),
        BarEnd::Failed { retryable: true, error } => format!("failed, retryable: {error}"),
        BarEnd::Failed { retryable: false, error } => format!("failed: {error}"),
        BarEnd::Interrupted { reason } => format!("interrupted (not a failed try): {reason}"),
        BarEnd::Open => match run.attempt(b.attempt).map(|a| &a.end) {
            Some(AttemptEnd::Open) => "no outcome yet (in flight, or crashed)".into(),
            Some(e) => format!("no outcome (attempt {})", e.word()),
            None => "no outcome".into(),
        },
    };
    if b.critical {
        s.push_str(" · critical");
    }
    s
}

// SVG geometry (user units; the SVG scales to the page width).
const W: f64 = 1200.0;
const LABEL_W: f64 = 110.0;
const TOTAL_W: f64 = 64.0;
const ROW_H: f64 = 24.0;
const BAR_H: f64 = 16.0;
const HEAD_H: f64 = 22.0;
const AXIS_H: f64 = 30.0;
const SEP_W: f64 = 24.0;

fn svg(out: &mut String, run: &Run) {
    let chart_w = W - LABEL_W - TOTAL_W - 10.0;
    let axis = Axis::new(run, chart_w, SEP_W, 40.0);
    let rows = run.actors.len() as f64;
    let height = HEAD_H + rows * ROW_H + AXIS_H;
    let x_of = |attempt: u32, t: i64| LABEL_W + axis.x(attempt, t);
    let _ = writeln!(
        out,
        "<svg class=\"timeline\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {W} {height}\" width=\"{W}\" height=\"{height}\" role=\"img\" aria-label=\"timeline\">"
    );
    // Attempt headings and separators.
    for (k, seg) in axis.segments.iter().enumerate() {
        let att = &run.attempts[k];
        let mut text = format!("attempt {} · {}", seg.attempt, att.end.word());
        if let Some(gap) = seg.gap_before_ms.filter(|_| axis.sep > 0.0) {
            let _ = write!(text, " · resumed {} later", fmt_dur(gap));
            let sx = LABEL_W + seg.x0 - axis.sep / 2.0;
            let _ = writeln!(
                out,
                "<line class=\"sep\" x1=\"{sx:.1}\" y1=\"2\" x2=\"{sx:.1}\" y2=\"{:.1}\"><title>{}</title></line>",
                height - 4.0,
                esc(&format!("{} between attempts, cut out", fmt_dur(gap)))
            );
        }
        // Headings need room: with many attempts only the wide ones get one.
        if seg.width >= text.chars().count() as f64 * 6.0 || axis.segments.len() == 1 {
            let _ = writeln!(out, "<text class=\"heading\" x=\"{:.1}\" y=\"14\">{}</text>", LABEL_W + seg.x0 + 2.0, esc(&text));
        } else if seg.width >= 30.0 {
            let _ = writeln!(out, "<text class=\"heading\" x=\"{:.1}\" y=\"14\">a{}</text>", LABEL_W + seg.x0 + 2.0, seg.attempt);
        }
    }
    for (ai, actor) in run.actors.iter().enumerate() {
        let y = HEAD_H + ai as f64 * ROW_H;
        let by = y + (ROW_H - BAR_H) / 2.0;
        let _ = writeln!(out, "<g class=\"row\" data-actor=\"{}\">", esc(&actor.name));
        let _ = writeln!(out, "<rect class=\"lane\" x=\"0\" y=\"{y:.1}\" width=\"{W}\" height=\"{ROW_H}\"></rect>");
        let _ = writeln!(out, "<text class=\"label\" x=\"4\" y=\"{:.1}\">{}</text>", y + 16.0, esc(&actor.name));
        // Waiting between its first and last step, per attempt.
        for seg in &axis.segments {
            let bars: Vec<&Bar> = actor.bars.iter().map(|&i| &run.bars[i]).filter(|b| b.attempt == seg.attempt).collect();
            if let (Some(a), Some(b)) = (bars.iter().map(|b| b.start_ms).min(), bars.iter().map(|b| b.end_ms).max()) {
                let _ = writeln!(
                    out,
                    "<line class=\"wait\" x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\"></line>",
                    x_of(seg.attempt, a),
                    y + ROW_H / 2.0,
                    x_of(seg.attempt, b),
                    y + ROW_H / 2.0
                );
            }
        }
        for &bi in &actor.bars {
            let b = &run.bars[bi];
            let x0 = x_of(b.attempt, b.start_ms);
            let w = x_of(b.attempt, b.end_ms) - x0;
            // A hair of space between two bars that touch; never thinner than 2.
            let w = if w > 4.0 { w - 1.0 } else { w.max(2.0) };
            let mut class = vec!["bar"];
            match &b.end {
                BarEnd::Ok { adopted: true } => class.push("adopted"),
                BarEnd::Ok { .. } if b.reconcile => class.push("adopted"),
                BarEnd::Ok { .. } => {}
                BarEnd::Failed { .. } => class.push("failed"),
                BarEnd::Open => class.push("open"),
                BarEnd::Interrupted { .. } => class.push("interrupted"),
            }
            if b.critical {
                class.push("crit");
            }
            let tip = format!(
                "{} {} · attempt {} try {} · {} · {}",
                actor.name,
                b.step.as_str(),
                b.attempt,
                b.try_no,
                fmt_dur(b.duration_ms()),
                result_text(run, b)
            );
            let _ = writeln!(
                out,
                "<rect class=\"{}\" data-step=\"{}\" x=\"{x0:.1}\" y=\"{by:.1}\" width=\"{w:.1}\" height=\"{BAR_H}\" rx=\"2\"><title>{}</title></rect>",
                class.join(" "),
                esc(b.step.as_str()),
                esc(&tip)
            );
            let label = b.short();
            if w >= label.len() as f64 * 6.5 + 8.0 {
                let _ = writeln!(out, "<text class=\"barlabel\" x=\"{:.1}\" y=\"{:.1}\">{}</text>", x0 + 4.0, by + 12.0, esc(label));
            }
        }
        if actor.is_coordinator() {
            for m in &run.marks {
                let x = x_of(m.attempt, m.at_ms);
                let cy = y + ROW_H / 2.0;
                let class = match m.kind {
                    MarkKind::Failed | MarkKind::Interrupted => "mark failed",
                    MarkKind::Completed => "mark completed",
                    _ => "mark",
                };
                let _ = writeln!(
                    out,
                    "<path class=\"{class}\" d=\"M{:.1} {:.1} l5 6 l-5 6 l-5 -6 z\"><title>{}</title></path>",
                    x,
                    cy - 6.0,
                    esc(&format!("{} · {}", rfc3339_ms(m.at_ms), m.text))
                );
            }
        } else {
            let _ = writeln!(
                out,
                "<text class=\"total\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                W - 4.0,
                y + 16.0,
                esc(&fmt_dur(run.actor_times(ai).0))
            );
        }
        out.push_str("</g>\n");
    }
    // The axis.
    let ay = HEAD_H + rows * ROW_H + 4.0;
    for seg in &axis.segments {
        let x0 = LABEL_W + seg.x0;
        let _ = writeln!(out, "<line class=\"axis\" x1=\"{x0:.1}\" y1=\"{ay:.1}\" x2=\"{:.1}\" y2=\"{ay:.1}\"></line>", x0 + seg.width);
        let dur = seg.end_ms - seg.start_ms;
        let step = tick_step(dur as f64 / seg.width, 70.0);
        let mut t = 0;
        while t <= dur && seg.width >= 40.0 {
            let x = x_of(seg.attempt, seg.start_ms + t);
            let _ = writeln!(
                out,
                "<line class=\"axis\" x1=\"{x:.1}\" y1=\"{ay:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\"></line><text class=\"tick\" x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                ay + 5.0,
                ay + 18.0,
                esc(&fmt_tick(t))
            );
            t += step;
        }
    }
    out.push_str("</svg>\n");
}

fn events_section(out: &mut String, events: &[Envelope]) {
    let seq_of: HashMap<uuid::Uuid, u64> = events.iter().map(|e| (e.id, e.seq)).collect();
    let runs: Vec<uuid::Uuid> = {
        let mut seen = Vec::new();
        for e in events {
            if !seen.contains(&e.run) {
                seen.push(e.run);
            }
        }
        seen
    };
    let actors: BTreeSet<&str> = events.iter().map(|e| e.actor.as_str()).collect();
    let kinds: BTreeSet<&str> = events.iter().map(|e| e.event.kind()).collect();
    out.push_str("<section id=\"events-section\">\n<h2>Events</h2>\n<form id=\"filters\" onsubmit=\"return false\">\n");
    let several = runs.len() > 1;
    if several {
        out.push_str("<label>Run <select id=\"f-run\"><option value=\"\">all</option>");
        for r in &runs {
            let s = r.to_string();
            let _ = write!(out, "<option value=\"{}\">{}</option>", esc(&s), esc(&s[..8]));
        }
        out.push_str("</select></label>\n");
    }
    out.push_str("<label>Actor <select id=\"f-actor\"><option value=\"\">all</option>");
    for a in &actors {
        let _ = write!(out, "<option value=\"{}\">{}</option>", esc(a), esc(a));
    }
    out.push_str("</select></label>\n<label>Kind <select id=\"f-kind\"><option value=\"\">all</option>");
    for k in &kinds {
        let _ = write!(out, "<option value=\"{}\">{}</option>", esc(k), esc(k));
    }
    out.push_str("</select></label>\n<label>Text <input id=\"f-text\" type=\"search\" placeholder=\"filter\"></label>\n<label><input id=\"f-local\" type=\"checkbox\"> local time</label>\n<span id=\"f-count\" class=\"muted\"></span>\n</form>\n");
    out.push_str(if several {
        "<div class=\"scroll\"><table id=\"events\"><thead><tr><th>seq</th><th>time (UTC)</th><th>run</th><th>att</th><th>actor</th><th>kind</th><th>event</th><th>cause</th></tr></thead>\n<tbody>\n"
    } else {
        "<div class=\"scroll\"><table id=\"events\"><thead><tr><th>seq</th><th>time (UTC)</th><th>att</th><th>actor</th><th>kind</th><th>event</th><th>cause</th></tr></thead>\n<tbody>\n"
    });
    for e in events {
        let kind = e.event.kind();
        let run = e.run.to_string();
        let cause = match e.cause {
            Some(c) => match seq_of.get(&c) {
                Some(seq) => format!("<a href=\"#e{seq}\">{seq}</a>"),
                None => format!("<span class=\"mono\" title=\"{}\">{}</span>", esc(&c.to_string()), esc(&c.to_string()[..8])),
            },
            None => String::new(),
        };
        let run_cell =
            if several { format!("<td class=\"mono\" title=\"{}\">{}</td>", esc(&run), esc(&run[..8])) } else { String::new() };
        let _ = writeln!(
            out,
            "<tr id=\"e{}\" class=\"kind-{}\" data-run=\"{}\" data-actor=\"{}\" data-kind=\"{}\"><td class=\"num\">{}</td><td class=\"mono time\">{}</td>{}<td class=\"num\">{}</td><td class=\"mono\">{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td></tr>",
            e.seq,
            esc(kind),
            esc(&run),
            esc(&e.actor),
            esc(kind),
            e.seq,
            time_el(e.at_ms),
            run_cell,
            e.attempt,
            esc(&e.actor),
            esc(kind),
            esc(&e.event.summary()),
            cause
        );
    }
    out.push_str("</tbody></table></div>\n</section>\n");
}

/// A timestamp: UTC as written, switchable to local time by the page's toggle.
fn time_el(at_ms: i64) -> String {
    let iso = rfc3339_ms(at_ms);
    let utc = iso.replacen('T', " ", 1).trim_end_matches('Z').to_string();
    format!("<time datetime=\"{}\" data-utc=\"{}\">{}</time>", esc(&iso), esc(&utc), esc(&utc))
}

/// The card on top: where the cluster is and how each node ended, from
/// the latest `up` run of the report (and a later `down`, if any).
fn summary_card(out: &mut String, events: &[Envelope]) {
    let mut history = rmm_events::History::default();
    for e in events {
        history.apply(e);
    }
    let Some(up) = history.latest_up() else { return };
    let latest = history.latest();
    let v = crate::view::status_json(&history, latest, false);
    let plan = &up.plan;
    out.push_str("<section class=\"card\" id=\"summary\">\n<h2>Summary</h2>\n<dl>");
    let dd = |out: &mut String, k: &str, v: &str| {
        let _ = write!(out, "<dt>{}</dt><dd>{}</dd>", esc(k), esc(v));
    };
    dd(out, "Rancher URL", up.rancher_url().unwrap_or("-"));
    dd(out, "cluster", &format!("{} ({})", plan.cluster_name, up.cluster_id().unwrap_or("no id yet")));
    let version = match plan.kubernetes_version.as_deref() {
        Some(v) => v.to_string(),
        None => up
            .actor("rancher")
            .and_then(|a| a.outcome(rmm_events::Step::ChooseKubernetesVersion))
            .and_then(|o| match o {
                rmm_events::Outcome::KubernetesVersionChosen { version, .. } => Some(version.clone()),
                _ => None,
            })
            .unwrap_or_else(|| "the server's default".into()),
    };
    dd(out, "distribution", &format!("{} {version}", plan.distribution.as_str()));
    dd(out, "Rancher image", if plan.existing_rancher() { "existing Rancher" } else { &plan.rancher_image });
    dd(out, "driver", &plan.driver);
    dd(
        out,
        "run",
        &format!(
            "{} ({}, {})",
            v["run"]["id"].as_str().unwrap_or("-"),
            v["run"]["kind"].as_str().unwrap_or("-"),
            v["run"]["state"].as_str().unwrap_or("-")
        ),
    );
    out.push_str("</dl>\n<table class=\"nodes\"><thead><tr><th>node</th><th>role</th><th>address</th><th>state</th></tr></thead><tbody>\n");
    for a in v["actors"].as_array().into_iter().flatten() {
        let state = a["state"].as_str().unwrap_or("-");
        let _ = writeln!(
            out,
            "<tr><td class=\"mono\">{}</td><td>{}</td><td class=\"mono\">{}</td><td class=\"state-{}\">{}</td></tr>",
            esc(a["name"].as_str().unwrap_or("")),
            esc(a["role"].as_str().unwrap_or("")),
            esc(a["ip"].as_str().unwrap_or("-")),
            esc(state),
            esc(state)
        );
    }
    out.push_str("</tbody></table>\n</section>\n");
}
