//! `rmm log --verify`, `--export FILE` and `--verify --from FILE`.
//!
//! # The export format, and why
//! JSON Lines, three kinds of line:
//!
//! ```text
//! {"rmm_export":1,"rmm_version":"0.1.0","exported_at":"…","from_seq":1,"prev_hash":"00…00"}
//! {"actor":…,"at":…,…,"hash":"…","record":"<base64>",…,"seq":1}     one per event
//! {"end":true,"events":N,"last_seq":N,"head":"…"}
//! ```
//!
//! Each event line is the `rmm log --json` object plus `record`: the
//! record's stored bytes (format version + bincode, see `rmm_events::codec`).
//! The chain is the store's own — `hash = sha256(prev hash ‖ record)` — so:
//!
//! * the export verifies on its own: the checker recomputes every hash from
//!   the bytes, decodes each record with the codec (any later rmm decodes
//!   every older format version), and requires the readable fields to be
//!   exactly what the record says, so neither can be altered without the
//!   other failing;
//! * its head hash is the head hash `rmm log --verify` prints for the store,
//!   so an export can be matched against the live log, or against a head
//!   hash written down at any time — which is what proves an export *whole*
//!   at the end: a chain shows what was removed or altered before its last
//!   record, never what was cut after it. The end line catches a cut made
//!   by accident; `--head HEX` catches one made on purpose.
//!
//! A chain over canonical JSON would need no codec, but it would be a second
//! chain whose hashes match nothing the store shows, and JSON has no single
//! canonical form to hash without a spec of our own. Records are redacted at
//! write time (secrets only by name and fingerprint), so their bytes are as
//! safe to hand out as the JSON.

use std::io::{BufRead, Write};
use std::path::Path;

use base64::Engine;
use rmm_events::{chain_hash, codec, Hash, SledLog, GENESIS};
use serde_json::{json, Value};

use super::filter::{Filter, Runs};
use crate::error::{Error, Result};
use crate::state_dir::StateDir;
use crate::view;

/// The format version of an export file.
const EXPORT_FORMAT: u64 = 1;

/// Checks the whole store: every record decodes, seqs are contiguous from
/// 1, the chain holds, and it ends at the store's last record.
pub fn verify(dir: &StateDir, want_head: Option<&str>) -> Result<()> {
    let log = dir.open_store_for_reading()?;
    let (mut events, mut runs, mut head) = (0u64, 0u64, GENESIS);
    for record in log.scan_read_ahead(1) {
        let record = record?;
        events += 1;
        runs += u64::from(matches!(record.envelope.event, rmm_events::Event::RunStarted { .. }));
        head = record.hash;
    }
    if events != log.last_seq() {
        return Err(Error::Log(format!(
            "the event log does not verify: seq {}: record missing (the chain ends at seq {events})",
            events + 1
        )));
    }
    check_head(want_head, &head)?;
    // The store checked its head anchor when it opened: the log does not
    // end before it, and the anchored record is the one anchored.
    let anchor = match log.anchored()? {
        Some((seq, _)) if seq == events => "the head anchor agrees".to_string(),
        Some((seq, _)) => format!("anchored up to seq {seq}"),
        None => "no head anchor (a log from an older rmm)".to_string(),
    };
    crate::outln!(
        "ok: {events} event{} in {runs} run{} verify (seq 1..{events}); head {}; {anchor}",
        if events == 1 { "" } else { "s" },
        if runs == 1 { "" } else { "s" },
        hex::encode(head)
    );
    if let Some(bytes) = log.torn_tail() {
        crate::outln!(
            "note: {} ends in a torn write of {bytes} bytes (a crash while it was being written): not part of the log; left as it is, the next `rmm up --resume` drops it",
            dir.events().join("journal.wal").display()
        );
    }
    Ok(())
}

/// Writes the selected contiguous part of the log (all of it by default)
/// to `file`, atomically (a temp file renamed into place).
pub fn export(log: &SledLog, filter: &Filter, run_given: bool, file: &Path) -> Result<()> {
    if !filter.is_contiguous() {
        return Err(Error::Config(
            "--export takes whole runs or a --seq range (the chain needs contiguous records): drop --attempt, --actor, --kind, --since, --until and --grep".into(),
        ));
    }
    // The whole history unless a run or a range was asked for.
    let runs = if run_given { filter.runs.clone() } else { Runs::All };
    let to_stdout = file == Path::new("-");
    let tmp = file.with_extension("rmm-export-tmp");
    let sink: Box<dyn Write> = if to_stdout {
        Box::new(crate::cli::stdout())
    } else {
        Box::new(std::fs::File::create(&tmp).map_err(|e| Error::Other(format!("cannot write {}: {e}", tmp.display())))?)
    };
    let mut out = std::io::BufWriter::with_capacity(1 << 16, sink);
    let werr = |e: std::io::Error| Error::Other(format!("cannot write {}: {e}", file.display()));
    let (mut prev, mut first, mut last, mut count) = (GENESIS, None::<u64>, 0u64, 0u64);
    let mut line = Vec::with_capacity(1024);
    for record in log.scan_read_ahead(1) {
        let record = record?;
        let e = &record.envelope;
        let selected = e.seq >= filter.seq_from
            && e.seq <= filter.seq_to
            && match runs {
                Runs::All => true,
                Runs::One(id) => e.run == id,
                Runs::FirstToCome => false,
            };
        if !selected {
            if first.is_some() && e.seq > filter.seq_to {
                break;
            }
            if first.is_none() {
                prev = record.hash;
            }
            continue;
        }
        if first.is_none() {
            first = Some(e.seq);
            let header = json!({
                "rmm_export": EXPORT_FORMAT,
                "rmm_version": env!("CARGO_PKG_VERSION"),
                "exported_at": rmm_events::rfc3339_ms(rmm_events::now_ms()),
                "from_seq": e.seq,
                "prev_hash": hex::encode(prev),
            });
            writeln!(out, "{header}").map_err(werr)?;
        } else if e.seq != last + 1 {
            // A run's records are contiguous; a run resumed after another began is not.
            return Err(Error::Config(format!(
                "--export: the selected events are not contiguous (seq {} follows {last}); export the whole log or a --seq range",
                e.seq
            )));
        }
        let raw = log.raw(e.seq)?.ok_or_else(|| Error::Log(format!("seq {}: record missing", e.seq)))?;
        let body = &raw[..raw.len() - 32];
        line.clear();
        view::write_event_json(&mut line, e, &record.hash);
        line.pop(); // the closing brace: `record` goes last
        line.extend_from_slice(b",\"record\":\"");
        let mut b64 = String::with_capacity(body.len() * 4 / 3 + 4);
        base64::engine::general_purpose::STANDARD.encode_string(body, &mut b64);
        line.extend_from_slice(b64.as_bytes());
        line.extend_from_slice(b"\"}\n");
        out.write_all(&line).map_err(werr)?;
        last = e.seq;
        prev = record.hash;
        count += 1;
    }
    if first.is_none() {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::Config("--export: no events selected".into()));
    }
    let end = json!({"end": true, "events": count, "last_seq": last, "head": hex::encode(prev)});
    writeln!(out, "{end}").map_err(werr)?;
    let sink = out.into_inner().map_err(|e| werr(e.into_error()))?;
    drop(sink);
    if !to_stdout {
        std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(werr)?;
        std::fs::rename(&tmp, file).map_err(werr)?;
        crate::errln!("exported {count} events (seq {}..{last}) to {}; head {}", first.unwrap_or(1), file.display(), hex::encode(prev));
    }
    Ok(())
}

/// Checks an export file without the store: whole (header, every line, end
/// line, nothing after) and unaltered (every hash, every record's decoding,
/// every readable field against its record).
pub fn verify_export(file: &Path, want_head: Option<&str>) -> Result<()> {
    let reader: Box<dyn BufRead> = if file == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::with_capacity(
            1 << 16,
            std::fs::File::open(file).map_err(|e| Error::Config(format!("cannot read {}: {e}", file.display())))?,
        ))
    };
    let name = file.display().to_string();
    let bad = |line: usize, what: String| Error::Log(format!("{name}: line {line}: {what}"));
    let mut lines = reader.lines().enumerate().map(|(i, l)| (i + 1, l));
    let (n, header) = lines.next().ok_or_else(|| bad(1, "empty file: not an rmm export".into()))?;
    let header: Value = header
        .map_err(|e| bad(n, e.to_string()))
        .and_then(|l| serde_json::from_str(&l).map_err(|e| bad(n, format!("not an rmm export header: {e}"))))?;
    match header["rmm_export"].as_u64() {
        Some(EXPORT_FORMAT) => {}
        Some(v) => return Err(bad(n, format!("export format {v} is newer than this rmm reads ({EXPORT_FORMAT}); upgrade rmm"))),
        None => return Err(bad(n, "not an rmm export header (no rmm_export)".into())),
    }
    let from_seq = header["from_seq"].as_u64().ok_or_else(|| bad(n, "header has no from_seq".into()))?;
    let mut prev = parse_hash(&header["prev_hash"]).ok_or_else(|| bad(n, "header has no prev_hash".into()))?;
    let anchor = prev;
    let (mut expect, mut count) = (from_seq, 0u64);
    let mut end: Option<(usize, Value)> = None;
    for (n, line) in lines {
        let line = line.map_err(|e| bad(n, e.to_string()))?;
        if let Some((end_line, _)) = end {
            return Err(bad(n, format!("text after the end line (line {end_line}): not the export rmm wrote")));
        }
        let mut v: Value = serde_json::from_str(&line).map_err(|e| bad(n, format!("not JSON: {e}")))?;
        if v.get("end").is_some() {
            end = Some((n, v));
            continue;
        }
        let at = format!("seq {expect}");
        let record = v
            .as_object_mut()
            .and_then(|o| o.remove("record"))
            .and_then(|r| r.as_str().map(String::from))
            .ok_or_else(|| bad(n, format!("{at}: no record bytes")))?;
        let body = base64::engine::general_purpose::STANDARD
            .decode(record)
            .map_err(|e| bad(n, format!("{at}: record is not base64: {e}")))?;
        let hash = parse_hash(&v["hash"]).ok_or_else(|| bad(n, format!("{at}: no hash")))?;
        if chain_hash(&prev, &body) != hash {
            return Err(bad(
                n,
                format!("{at}: hash chain broken: this record or one before it was altered, removed or reordered"),
            ));
        }
        let envelope = codec::decode(&body).map_err(|e| bad(n, format!("{at}: {e}")))?;
        if envelope.seq != expect {
            return Err(bad(n, format!("{at}: the record says seq {}", envelope.seq)));
        }
        let expected = view::event_json(&envelope, &hash);
        if v != expected {
            let field = expected
                .as_object()
                .and_then(|o| o.iter().find(|(k, val)| v.get(k.as_str()) != Some(val)).map(|(k, _)| k.clone()))
                .unwrap_or_else(|| "an extra field".into());
            return Err(bad(n, format!("{at}: `{field}` differs from what the record says: the readable fields were altered")));
        }
        prev = hash;
        expect += 1;
        count += 1;
    }
    let last = expect - 1;
    let Some((n, end)) = end else {
        return Err(Error::Log(format!(
            "{name}: not whole: it ends after seq {last} without its end line (cut short?)"
        )));
    };
    if end["events"].as_u64() != Some(count) || end["last_seq"].as_u64() != Some(last) || parse_hash(&end["head"]) != Some(prev) {
        return Err(bad(
            n,
            format!("not whole: the end line says {} events up to seq {} with head {}, the file holds {count} up to seq {last} with head {}",
                end["events"], end["last_seq"], end["head"], hex::encode(prev)),
        ));
    }
    check_head(want_head, &prev)?;
    let from = if from_seq == 1 && anchor == GENESIS {
        "from the first record".to_string()
    } else {
        format!("a part of a longer log, chained from the hash of seq {}: {}", from_seq - 1, hex::encode(anchor))
    };
    crate::outln!(
        "ok: {name} is whole and unaltered: {count} events, seq {from_seq}..{last} ({from}); head {}",
        hex::encode(prev)
    );
    Ok(())
}

/// `--head HEX`: the chain must end at this hash (one written down
/// earlier, or printed by `rmm log --verify` where the log lives).
fn check_head(want: Option<&str>, head: &Hash) -> Result<()> {
    match want {
        Some(want) if !want.eq_ignore_ascii_case(&hex::encode(head)) => Err(Error::Log(format!(
            "the chain ends at head {}, not at the expected {want}: records were cut, added or rewritten",
            hex::encode(head)
        ))),
        _ => Ok(()),
    }
}

fn parse_hash(v: &Value) -> Option<Hash> {
    let mut h = [0u8; 32];
    hex::decode_to_slice(v.as_str()?, &mut h).ok()?;
    Some(h)
}
