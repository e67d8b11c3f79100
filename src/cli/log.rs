//! `rmm log`: the events, filtered (run, attempt, actor, kind, time, seq,
//! text), as lines or JSON, followed live (`--follow`), verified
//! (`--verify`), exported and checked away from the store (`--export`,
//! `--verify --from`), one by one with their causes (`log show SEQ`).
//!
//! Every read streams: records are checked (chain, decoding) and printed
//! one at a time through one reused buffer, so memory does not grow with
//! the log (`BENCHMARKS.md` has the numbers on a million events).

mod audit;
mod filter;
mod follow;
mod show;

use std::io::Write;
use std::path::PathBuf;

use rmm_events::{Envelope, Hash};

use crate::error::{Error, Result};
use crate::state_dir::StateDir;
use crate::view;

pub use filter::Filter;

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct LogArgs {
    #[command(subcommand)]
    pub command: Option<LogCommand>,
    /// One JSON object per line: seq, id, run, attempt, actor, kind, cause, at, data, hash.
    #[arg(long)]
    pub json: bool,
    /// Only this run: its id, or a prefix of it. [default: the latest run]
    #[arg(long, value_name = "ID", conflicts_with = "all_runs")]
    pub run: Option<String>,
    /// Every run, oldest first.
    #[arg(long)]
    pub all_runs: bool,
    /// Only this attempt of the run (1 is the first `up`, +1 per resume).
    /// [default: every attempt]
    #[arg(long, value_name = "N")]
    pub attempt: Option<u32>,
    /// Only actors matching this glob (`master*`, `worker0?`); repeatable, or comma-separated.
    /// [default: every actor]
    #[arg(long, value_name = "PATTERN")]
    pub actor: Vec<String>,
    /// Only this kind of event (`StepFailed`…); repeatable, or comma-separated.
    /// [default: every kind]
    #[arg(long, value_name = "KIND")]
    pub kind: Vec<String>,
    /// Only events at or after this time: RFC 3339, or a duration ago (`10m`, `2h`).
    /// [default: from the first]
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only events at or before this time: RFC 3339, or a duration ago.
    /// [default: up to the last]
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Only these sequence numbers: `N`, `A..B` (both included), `A..`, `..B`.
    /// [default: all]
    #[arg(long, value_name = "RANGE")]
    pub seq: Option<String>,
    /// Only events whose data (as `--json` prints it: secrets appear only by
    /// name and fingerprint) contains this text. [default: any]
    #[arg(long, value_name = "TEXT")]
    pub grep: Option<String>,
    /// With `--seq N`: that one event in full, with its cause chain (as `rmm log show N`).
    #[arg(long, requires = "seq")]
    pub full: bool,
    /// Keep printing events as another `rmm` appends them, until the run ends (or Ctrl-C).
    #[arg(long, conflicts_with_all = ["verify", "export", "full", "timeline"])]
    pub follow: bool,
    /// Check the whole hash chain and every record's decoding; print the count and head hash.
    #[arg(long, conflicts_with_all = [
        "export", "full", "timeline", "run", "all_runs", "attempt", "actor", "kind", "since", "until", "seq", "grep",
    ])]
    pub verify: bool,
    /// With `--verify`: check an export file instead of the store.
    /// [default: the store]
    #[arg(long, value_name = "FILE", requires = "verify")]
    pub from: Option<PathBuf>,
    /// With `--verify`: the chain must end at this head hash (hex), e.g. one
    /// printed by `rmm log --verify` where the log lives. [default: any head]
    #[arg(long, value_name = "HEX", requires = "verify")]
    pub head: Option<String>,
    /// Write the history with its hashes to FILE (`-`: stdout), checkable with `--verify --from`.
    /// The whole log, or one run (`--run`) or a `--seq` range. [default: no export]
    #[arg(long, value_name = "FILE", conflicts_with_all = ["full", "timeline"])]
    pub export: Option<PathBuf>,
    /// A Gantt chart of the steps of the selected events.
    #[arg(long)]
    pub timeline: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum LogCommand {
    /// One event in full, with the chain of events that caused it, back to the command typed.
    #[command(after_help = "Examples:\n  rmm log show 42\n  rmm log show 42 --json")]
    Show(show::ShowArgs),
}

pub fn run(args: LogArgs, dir: &StateDir) -> Result<()> {
    check_usage(&args)?;
    if let Some(LogCommand::Show(show_args)) = &args.command {
        return show::run(show_args.seq, show_args.json, dir);
    }
    if args.verify {
        return match &args.from {
            Some(file) => audit::verify_export(file, args.head.as_deref()),
            None => audit::verify(dir, args.head.as_deref()),
        };
    }
    if args.follow {
        return follow::run(&args, dir);
    }
    let log = dir.open_store_for_reading()?;
    if log.last_seq() == 0 {
        return Err(dir.no_run());
    }
    let filter = Filter::new(&args, &log)?;
    if args.full {
        if filter.seq_from != filter.seq_to {
            return Err(Error::Config("--full shows one event: give --seq N".into()));
        }
        return show::run(filter.seq_from, args.json, dir);
    }
    if let Some(file) = &args.export {
        return audit::export(&log, &filter, args.run.is_some(), file);
    }
    if args.timeline {
        return timeline(&log, &filter);
    }
    let seq_to = filter.seq_to;
    let mut printer = Printer::new(args.json, filter);
    for record in log.scan_read_ahead(1) {
        let record = record?;
        if record.envelope.seq > seq_to {
            break;
        }
        if !printer.print(&record.envelope, &record.hash)? {
            return Ok(()); // the reader went away (`rmm log | head`)
        }
    }
    if printer.printed == 0 {
        nothing_matched(log.last_seq());
    }
    printer.finish()
}

/// Flag values that cannot mean anything, refused as usage errors (exit 2)
/// before the log is read: a `--head` that is no hash cannot tell anything
/// about the log, so it must not be reported as the log failing.
fn check_usage(args: &LogArgs) -> Result<()> {
    if let Some(head) = &args.head {
        if head.len() != 64 || !head.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::Config(format!(
                "--head {head}: not a head hash: give the 64 hex digits `rmm log --verify` prints after `head`"
            )));
        }
    }
    for pattern in args.actor.iter().flat_map(|a| a.split(',')) {
        filter::check_glob(pattern)?;
    }
    Ok(())
}

fn timeline(log: &rmm_events::SledLog, filter: &Filter) -> Result<()> {
    use std::io::IsTerminal;
    let mut events = Vec::new();
    let mut selected = 0usize;
    for record in log.scan_read_ahead(1) {
        let e = record?.envelope;
        if filter.matches(&e) && (filter.grep.is_none() || filter.grep_matches(&data_bytes(&e))) {
            selected += 1;
            events.push(e);
        } else if filter.frames(&e) {
            events.push(e);
        }
    }
    if selected == 0 {
        nothing_matched(log.last_seq());
        return Ok(());
    }
    let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let width = output_width();
    let text = crate::report::timeline_text(&events, &crate::report::TimelineOptions { width, color });
    write_out(text.as_bytes())
}

/// A filter that selected nothing says so (stderr; exit 0, as an empty
/// answer is an answer).
fn nothing_matched(events: u64) {
    crate::errln!("rmm: no event matches the filter (the log holds {events} event{})", if events == 1 { "" } else { "s" });
}

/// The width to draw for: `COLUMNS`, else the terminal's (stdout's, then
/// stderr's), else 80.
pub fn output_width() -> usize {
    if let Some(w) = std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok()) {
        return w;
    }
    terminal_size::terminal_size_of(std::io::stdout())
        .or_else(|| terminal_size::terminal_size_of(std::io::stderr()))
        .map_or(80, |(w, _)| usize::from(w.0))
}

fn data_bytes(e: &Envelope) -> Vec<u8> {
    let mut data = Vec::new();
    view::write_event_data(&mut data, &e.event);
    data
}

/// Prints selected events to stdout: one reused line buffer, a 64 kB
/// buffered writer, and (for text) a header line where the run changes.
pub struct Printer {
    json: bool,
    pub filter: Filter,
    out: std::io::BufWriter<crate::cli::Stdout>,
    line: Vec<u8>,
    data: Vec<u8>,
    run: Option<uuid::Uuid>,
    /// The UTC day of the last header: a new day gets a header of its own.
    day: [u8; 10],
    /// On a terminal: its width; lines longer are cut, ending in `…`.
    width: Option<usize>,
    /// Events printed so far.
    pub printed: u64,
}

impl Printer {
    pub fn new(json: bool, filter: Filter) -> Printer {
        Printer {
            json,
            filter,
            out: std::io::BufWriter::with_capacity(1 << 16, crate::cli::stdout()),
            line: Vec::with_capacity(1024),
            data: Vec::with_capacity(512),
            run: None,
            day: [0; 10],
            width: {
                use std::io::IsTerminal;
                std::io::stdout().is_terminal().then(output_width)
            },
            printed: 0,
        }
    }

    /// Prints `e` if the filter selects it. `Ok(false)`: stdout is closed.
    pub fn print(&mut self, e: &Envelope, hash: &Hash) -> Result<bool> {
        if !self.filter.matches(e) {
            return Ok(true);
        }
        if self.filter.grep.is_some() {
            self.data.clear();
            view::write_event_data(&mut self.data, &e.event);
            if !self.filter.grep_matches(&self.data) {
                return Ok(true);
            }
        }
        self.line.clear();
        self.printed += 1;
        if self.json {
            view::write_event_json(&mut self.line, e, hash);
        } else {
            let mut at = Vec::with_capacity(24);
            view::write_rfc3339_ms(&mut at, e.at_ms);
            if self.run != Some(e.run) || self.day[..] != at[..10] {
                let day = std::str::from_utf8(&at[..10]).expect("ASCII");
                // A new run gets its header; a new UTC day within a run
                // only a line with the date (the times are UTC).
                let head = if self.run == Some(e.run) {
                    format!("── {day} (times UTC) ──\n")
                } else {
                    format!("── run {} ── {day} (times UTC) ──\n", e.run)
                };
                self.line.extend_from_slice(head.as_bytes());
                self.run = Some(e.run);
                self.day.copy_from_slice(&at[..10]);
            }
            let start = self.line.len();
            short_line(&mut self.line, e, &at);
            if let Some(width) = self.width {
                let text = String::from_utf8_lossy(&self.line[start..]).into_owned();
                if text.chars().count() > width {
                    self.line.truncate(start);
                    self.line.extend_from_slice(crate::progress::cut(&text, width).as_bytes());
                }
            }
        }
        self.line.push(b'\n');
        ok_unless_closed(self.out.write_all(&self.line))
    }

    /// Flushes what is buffered. `Ok(false)`: stdout is closed.
    pub fn flush(&mut self) -> Result<bool> {
        ok_unless_closed(self.out.flush())
    }

    pub fn finish(mut self) -> Result<()> {
        self.flush().map(drop)
    }
}

/// `   seq time attempt actor kind summary`, as `rmm log` prints an event.
pub fn text_line(out: &mut Vec<u8>, e: &Envelope) {
    let mut at = Vec::with_capacity(24);
    view::write_rfc3339_ms(&mut at, e.at_ms);
    let at = std::str::from_utf8(&at).expect("ASCII");
    let _ = write!(out, "{:>6} {at} a{} {:<11} {:<18} {}", e.seq, e.attempt, e.actor, e.event.kind(), e.event.summary());
}

/// `   seq time(UTC) attempt actor kind summary`: a line of `rmm log`,
/// under its run's header, which has the day (`at` is the event's RFC 3339 time).
fn short_line(out: &mut Vec<u8>, e: &Envelope, at: &[u8]) {
    let time = std::str::from_utf8(&at[11..23]).expect("ASCII");
    let _ = write!(out, "{:>5} {time} a{} {:<11} {:<15} {}", e.seq, e.attempt, e.actor, e.event.kind(), e.event.summary());
}

/// A closed pipe (`rmm log | head`) ends the output quietly.
fn ok_unless_closed(r: std::io::Result<()>) -> Result<bool> {
    match r {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(Error::Other(format!("cannot write: {e}"))),
    }
}

fn write_out(bytes: &[u8]) -> Result<()> {
    let mut out = crate::cli::stdout();
    ok_unless_closed(out.write_all(bytes).and_then(|_| out.flush())).map(drop)
}
