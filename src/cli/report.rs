//! `rmm report --html FILE`: the timeline and the event table of the log as
//! one self-contained HTML page (nothing is fetched when it is opened).

use std::io::Write;
use std::path::PathBuf;

use rmm_events::{Envelope, Event};

use crate::error::{Error, Result};
use crate::state_dir::StateDir;

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// Write the HTML report to FILE (`-` for stdout). [required]
    #[arg(long, value_name = "FILE")]
    pub html: PathBuf,
    /// The run to report (its id, or a unique prefix of it). [default: the latest run]
    #[arg(long, value_name = "ID", conflicts_with = "all_runs")]
    pub run: Option<String>,
    /// Every run of the log.
    #[arg(long)]
    pub all_runs: bool,
}

pub fn run(args: ReportArgs, dir: &StateDir) -> Result<()> {
    let log = dir.open_store_for_reading()?;
    if log.last_seq() == 0 {
        return Err(dir.no_run());
    }
    let events = select(log.scan(1).map(|r| r.map(|r| r.envelope)), args.run.as_deref(), args.all_runs)?;
    let html = crate::report::html_report(&events);
    let runs = {
        let mut ids: Vec<_> = events.iter().map(|e| e.run).collect();
        ids.dedup();
        ids.len()
    };
    if args.html.as_os_str() == "-" {
        let mut out = crate::cli::stdout();
        return match out.write_all(html.as_bytes()).and_then(|_| out.flush()) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Error::Other(format!("cannot write: {e}"))),
            _ => Ok(()),
        };
    }
    write_atomically(&args.html, html.as_bytes())
        .map_err(|e| Error::Other(format!("cannot write {}: {e}", args.html.display())))?;
    crate::outln!(
        "wrote {} ({} event{}, {} run{})",
        args.html.display(),
        events.len(),
        if events.len() == 1 { "" } else { "s" },
        runs,
        if runs == 1 { "" } else { "s" }
    );
    Ok(())
}

/// The events of the chosen run(s), in log order. Streams: only the
/// chosen run's events are kept (the latest run's: those after the last
/// `RunStarted`).
fn select(
    records: impl Iterator<Item = rmm_events::Result<Envelope>>,
    run: Option<&str>,
    all: bool,
) -> Result<Vec<Envelope>> {
    let want = run.map(|r| r.to_ascii_lowercase());
    let mut events = Vec::new();
    let mut runs = 0usize;
    let mut current = None;
    let mut matching: Vec<uuid::Uuid> = Vec::new();
    for e in records {
        let e = e?;
        if matches!(e.event, Event::RunStarted { .. }) {
            runs += 1;
            current = Some(e.run);
            match &want {
                None if !all => events.clear(),
                Some(w) if e.run.to_string().starts_with(w.as_str()) && !matching.contains(&e.run) => matching.push(e.run),
                _ => {}
            }
        }
        let keep = match &want {
            _ if all => true,
            None => Some(e.run) == current,
            Some(_) => matching.contains(&e.run),
        };
        if keep {
            events.push(e);
        }
    }
    if let Some(w) = &want {
        match matching.len() {
            1 => {}
            0 => return Err(Error::Config(format!("--run {w}: no such run in the log ({runs} runs)"))),
            n => return Err(Error::Config(format!("--run {w}: {n} runs start with it; give more of the id"))),
        }
    }
    Ok(events)
}

/// Writes `bytes` to a temporary file beside `path`, then renames it over
/// `path`: a reader never sees half a report.
fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| std::io::Error::other("not a file name"))?;
    let tmp = dir.join(format!(".{}.tmp{}", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
