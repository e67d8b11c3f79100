//! Which events `rmm log` shows: every filter of `LogArgs`, parsed once and
//! checked per event, cheapest first (`--grep` renders the data, so it goes
//! last).

use rmm_events::{Envelope, SledLog};
use uuid::Uuid;

use super::LogArgs;
use crate::error::{Error, Result};

/// Every kind `rmm log` knows (`Event::kind`). `tests::every_fixture_kind_is_known`
/// fails when a new kind arrives with its fixtures and is not listed here.
pub const KINDS: &[&str] = &[
    "RunStarted",
    "AttemptStarted",
    "StepStarted",
    "StepSucceeded",
    "StepFailed",
    "JoinGranted",
    "RunCompleted",
    "RunFailed",
    "AttemptInterrupted",
    "Progress",
    "PlanChanged",
    "StepInterrupted",
];

/// The runs shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Runs {
    All,
    One(Uuid),
    /// The latest run of an empty log: the first run that appears.
    FirstToCome,
}

#[derive(Debug)]
pub struct Filter {
    pub runs: Runs,
    attempt: Option<u32>,
    actors: Vec<String>,
    kinds: Vec<&'static str>,
    since_ms: Option<i64>,
    until_ms: Option<i64>,
    pub seq_from: u64,
    pub seq_to: u64,
    pub grep: Option<String>,
}

impl Filter {
    /// Parses the filters of `args`; `--run` (a full id or a prefix) and the
    /// default run (the latest: the run of the last record) are resolved
    /// against `log`.
    pub fn new(args: &LogArgs, log: &SledLog) -> Result<Filter> {
        let (seq_from, seq_to) = match &args.seq {
            Some(s) => parse_seq_range(s)?,
            None => (1, u64::MAX),
        };
        let runs = if args.all_runs {
            Runs::All
        } else if let Some(id) = &args.run {
            Runs::One(resolve_run(id, log)?)
        } else {
            match latest_run(log)? {
                Some(id) => Runs::One(id),
                None => Runs::FirstToCome,
            }
        };
        let mut kinds = Vec::new();
        for k in args.kind.iter().flat_map(|k| k.split(',')).filter(|k| !k.is_empty()) {
            let known = KINDS.iter().find(|known| known.eq_ignore_ascii_case(k.trim())).ok_or_else(|| {
                Error::Config(format!("--kind {k}: no such kind (one of {})", KINDS.join(", ")))
            })?;
            kinds.push(*known);
        }
        let now = rmm_events::now_ms();
        Ok(Filter {
            runs,
            attempt: args.attempt,
            actors: args.actor.iter().flat_map(|a| a.split(',')).filter(|a| !a.is_empty()).map(String::from).collect(),
            kinds,
            since_ms: args.since.as_deref().map(|t| parse_time("--since", t, now)).transpose()?,
            until_ms: args.until.as_deref().map(|t| parse_time("--until", t, now)).transpose()?,
            seq_from,
            seq_to,
            grep: args.grep.clone(),
        })
    }

    /// Whether `e` passes every filter but `--grep` (see [`Filter::grep_matches`]).
    pub fn matches(&self, e: &Envelope) -> bool {
        let run_ok = match self.runs {
            Runs::All => true,
            Runs::One(id) => e.run == id,
            Runs::FirstToCome => false,
        };
        run_ok
            && e.seq >= self.seq_from
            && e.seq <= self.seq_to
            && self.attempt.is_none_or(|a| e.attempt == a)
            && (self.kinds.is_empty() || self.kinds.contains(&e.event.kind()))
            && (self.actors.is_empty() || self.actors.iter().any(|p| glob(p.as_bytes(), e.actor.as_bytes())))
            && self.since_ms.is_none_or(|t| e.at_ms >= t)
            && self.until_ms.is_none_or(|t| e.at_ms <= t)
    }

    /// The frame of a timeline: the run's and its attempts' start and end
    /// (coordinator events), kept by `--timeline` whatever `--actor`,
    /// `--kind` or `--grep` select, so that a filtered timeline of a
    /// completed run still shows that run's end.
    pub fn frames(&self, e: &Envelope) -> bool {
        use rmm_events::Event;
        let run_ok = match self.runs {
            Runs::All => true,
            Runs::One(id) => e.run == id,
            Runs::FirstToCome => false,
        };
        run_ok
            && matches!(
                e.event,
                Event::RunStarted { .. }
                    | Event::AttemptStarted { .. }
                    | Event::RunCompleted
                    | Event::RunFailed { .. }
                    | Event::AttemptInterrupted { .. }
            )
            && e.seq >= self.seq_from
            && e.seq <= self.seq_to
            && self.attempt.is_none_or(|a| e.attempt == a)
    }

    /// `--grep TEXT`: whether the event's data, as `--json` prints it
    /// (secrets only as name and fingerprint), contains TEXT.
    pub fn grep_matches(&self, data_json: &[u8]) -> bool {
        match &self.grep {
            None => true,
            Some(text) => memchr::memmem::find(data_json, text.as_bytes()).is_some(),
        }
    }

    /// Whether only runs are filtered (and a contiguous seq range): what an
    /// export can hold and still be checked on its own.
    pub fn is_contiguous(&self) -> bool {
        self.attempt.is_none()
            && self.actors.is_empty()
            && self.kinds.is_empty()
            && self.since_ms.is_none()
            && self.until_ms.is_none()
            && self.grep.is_none()
    }
}

/// The run of the last record: the latest run.
pub fn latest_run(log: &SledLog) -> Result<Option<Uuid>> {
    let last = log.last_seq();
    if last == 0 {
        return Ok(None);
    }
    let raw = log.raw(last)?.ok_or_else(|| Error::Log(format!("the event log does not verify: seq {last}: record missing")))?;
    let (body, _) = raw.split_at(raw.len().saturating_sub(32));
    Ok(Some(rmm_events::codec::decode(body)?.run))
}

/// A full run id, or a prefix of one that names exactly one run.
fn resolve_run(text: &str, log: &SledLog) -> Result<Uuid> {
    if let Ok(id) = Uuid::parse_str(text) {
        return Ok(id);
    }
    let prefix = text.to_ascii_lowercase();
    if prefix.len() < 4 || !prefix.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        return Err(Error::Config(format!("--run {text}: not a run id (a UUID, or at least its first 4 hex digits)")));
    }
    let mut found: Vec<Uuid> = Vec::new();
    for record in log.scan_read_ahead(1) {
        let e = record?.envelope;
        if let rmm_events::Event::RunStarted { .. } = e.event {
            if e.run.hyphenated().to_string().starts_with(&prefix) {
                found.push(e.run);
            }
        }
    }
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(Error::Config(format!("--run {text}: no run with that id in the log"))),
        many => Err(Error::Config(format!(
            "--run {text}: {} runs start so ({}); give more of the id",
            many.len(),
            many.iter().map(|u| u.to_string()).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// `N`, `A..B`, `A..=B` (both ends included), `A..` or `..B`.
pub fn parse_seq_range(text: &str) -> Result<(u64, u64)> {
    let bad = || Error::Config(format!("--seq {text}: expected N, A..B (both included), A.. or ..B"));
    let num = |s: &str| s.trim().parse::<u64>().map_err(|_| bad());
    let (from, to) = match text.split_once("..") {
        None => {
            let n = num(text)?;
            (n, n)
        }
        Some((a, b)) => {
            let b = b.strip_prefix('=').unwrap_or(b);
            (if a.is_empty() { 1 } else { num(a)? }, if b.is_empty() { u64::MAX } else { num(b)? })
        }
    };
    if from > to {
        return Err(bad());
    }
    Ok((from, to))
}

/// RFC 3339 (`2026-11-24T13:00:00Z`, or without the `Z`/seconds), or a
/// duration ago (`10m`, `2h 30m`, `1day`).
fn parse_time(flag: &str, text: &str, now_ms: i64) -> Result<i64> {
    let since_epoch = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
    };
    if let Ok(t) = humantime::parse_rfc3339_weak(text.trim_end_matches('Z')) {
        return Ok(since_epoch(t));
    }
    if let Ok(t) = humantime::parse_rfc3339_weak(&format!("{}:00", text.trim_end_matches('Z'))) {
        return Ok(since_epoch(t));
    }
    match humantime::parse_duration(text) {
        Ok(d) => Ok(now_ms - d.as_millis() as i64),
        Err(_) => Err(Error::Config(format!(
            "{flag} {text}: expected a time (RFC 3339, e.g. 2026-11-24T13:00:00Z) or a duration ago (e.g. 10m, 2h)"
        ))),
    }
}

/// Refuses an `--actor` pattern this glob does not understand (`[a-z]`,
/// `{a,b}`, `\*`…), which would otherwise match nothing, silently.
pub fn check_glob(pattern: &str) -> Result<()> {
    match pattern.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '*' | '?'))) {
        None => Ok(()),
        Some(c) => Err(Error::Config(format!(
            "--actor {pattern}: `{c}` is not allowed in an actor pattern: use letters, digits, `-`, `_`, `.` and the wildcards `*` and `?` (e.g. `master*`, `worker0?`)"
        ))),
    }
}

/// Shell-style glob: `*` any run of characters, `?` one character.
pub fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        for (p, t, ok) in [
            ("master*", "master01", true),
            ("master*", "worker01", false),
            ("*01", "worker01", true),
            ("w?rker0?", "worker03", true),
            ("*", "", true),
            ("rancher", "rancher", true),
            ("rancher", "rancher2", false),
            ("*a*b*", "xxaxxbxx", true),
            ("*a*b", "xxaxxbxxc", false),
        ] {
            assert_eq!(glob(p.as_bytes(), t.as_bytes()), ok, "{p} {t}");
        }
    }

    #[test]
    fn seq_ranges() {
        assert_eq!(parse_seq_range("5").unwrap(), (5, 5));
        assert_eq!(parse_seq_range("5..9").unwrap(), (5, 9));
        assert_eq!(parse_seq_range("5..=9").unwrap(), (5, 9));
        assert_eq!(parse_seq_range("5..").unwrap(), (5, u64::MAX));
        assert_eq!(parse_seq_range("..9").unwrap(), (1, 9));
        assert!(parse_seq_range("9..5").is_err());
        assert!(parse_seq_range("x").is_err());
    }

    #[test]
    fn times() {
        let now = 1_764_000_000_000;
        assert_eq!(parse_time("--since", "10m", now).unwrap(), now - 600_000);
        assert_eq!(parse_time("--since", "2025-11-24T16:00:00Z", now).unwrap(), 1_764_000_000_000);
        assert_eq!(parse_time("--since", "2025-11-24T16:00", now).unwrap(), 1_764_000_000_000);
        assert!(parse_time("--since", "yesterday-ish", now).is_err());
    }

    #[test]
    fn every_fixture_kind_is_known() {
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("events/tests/fixtures");
        for version in std::fs::read_dir(&fixtures).unwrap().flatten() {
            for file in std::fs::read_dir(version.path()).unwrap().flatten() {
                if let Ok(e) = rmm_events::codec::decode(&std::fs::read(file.path()).unwrap()) {
                    assert!(KINDS.contains(&e.event.kind()), "{} is not in filter::KINDS", e.event.kind());
                }
            }
        }
    }
}
