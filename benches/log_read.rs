//! Benchmark: reading a 1,000,000-event log — `rmm log --json`,
//! `rmm log --verify`, `rmm status` — against what sled and the disk allow.
//!
//! Each measured command is the real binary, run as a child of a small
//! intermediate process (this bench binary again, `measure` mode) that
//! reports the child's wall time and peak resident memory
//! (`getrusage(RUSAGE_CHILDREN).ru_maxrss`: exact, read after the child
//! exits, unlike sampling `/proc`). The floors are measured the same way:
//!
//! * `disk`: `read` of sled's data file, 1 MiB at a time (the page cache is
//!   warm: the store was just written or read);
//! * `sled scan`: every key and value of the same tree, through sled with
//!   the page cache readers use, touching each byte (no decoding, no hash);
//! * `sled scan + sha256`: the same plus the chain hash of every record —
//!   the least any verifying read can do.
//!
//! `cargo bench --bench log_read`. `RMM_BENCH_EVENTS=N` (default 1000000);
//! `RMM_BENCH_STORE=DIR` reuses (or makes, once) a state dir there instead of
//! a fresh temp dir; `RMM_BENCH_RUNS=N` repetitions (default 3, median shown).
//! `CACHE=BYTES` sets the page cache of the raw scans (default: the readers'
//! `READER_CACHE_BYTES`), for the cache table in BENCHMARKS.md.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const RMM: &str = env!("CARGO_BIN_EXE_rmm");

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("measure") => return measure(&args[2..]),
        Some("raw-disk") => return raw_disk(Path::new(&args[2])),
        Some("raw-scan") => return raw_scan(Path::new(&args[2]), args.get(3).is_some_and(|a| a == "hash")),
        _ => {}
    }
    let events: u64 = env_num("RMM_BENCH_EVENTS", 1_000_000);
    let runs: usize = env_num("RMM_BENCH_RUNS", 3);
    let (_tmp, state) = match std::env::var("RMM_BENCH_STORE") {
        Ok(dir) => (None, PathBuf::from(dir)),
        Err(_) => {
            let tmp = tempfile::tempdir_in(".").expect("temp dir");
            let state = tmp.path().join("state");
            (Some(tmp), state)
        }
    };
    if !state.join("events").exists() {
        let t = Instant::now();
        let out = Command::new(RMM).arg("--state-dir").arg(&state).args(["synth", "--events", &events.to_string()]).output().unwrap();
        assert!(out.status.success(), "synth: {}", String::from_utf8_lossy(&out.stderr));
        println!("made the store in {:.1} s: {}", t.elapsed().as_secs_f64(), String::from_utf8_lossy(&out.stdout).trim());
    }
    let size = dir_size(&state.join("events"));
    println!("store: {} ({:.0} MB on disk), {events} events, median of {runs}", state.display(), size as f64 / 1e6);
    let me = std::env::current_exe().unwrap();
    let db = state.join("events");
    let sd = state.to_string_lossy().to_string();
    let rmm = |rest: &[&str]| -> Vec<String> {
        let mut v = vec![RMM.to_string(), "--state-dir".into(), sd.clone()];
        v.extend(rest.iter().map(|s| s.to_string()));
        v
    };
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("disk: read sled's file", vec![me.to_string_lossy().into(), "raw-disk".into(), db.join("db").to_string_lossy().into()]),
        ("sled scan (keys+values)", vec![me.to_string_lossy().into(), "raw-scan".into(), db.to_string_lossy().into()]),
        ("sled scan + sha256 chain", vec![me.to_string_lossy().into(), "raw-scan".into(), db.to_string_lossy().into(), "hash".into()]),
        ("rmm log --json --all-runs", rmm(&["log", "--json", "--all-runs"])),
        ("rmm log --all-runs (text)", rmm(&["log", "--all-runs"])),
        ("rmm log --json (latest run)", rmm(&["log", "--json"])),
        ("rmm log --verify", rmm(&["log", "--verify"])),
        ("rmm status", rmm(&["status"])),
    ];
    println!("{:<28} {:>9} {:>13} {:>10}", "what", "seconds", "events/s", "peak RSS");
    for (name, argv) in cases {
        let mut samples: Vec<(Duration, u64)> = (0..runs).map(|_| run_measured(&me, &argv)).collect();
        samples.sort();
        let (wall, _) = samples[samples.len() / 2];
        let peak = samples.iter().map(|s| s.1).max().unwrap();
        println!(
            "{name:<28} {:>9.3} {:>13.0} {:>7.1} MB",
            wall.as_secs_f64(),
            events as f64 / wall.as_secs_f64(),
            peak as f64 / 1024.0
        );
    }
}

/// Runs `argv` under `measure`; (wall time, peak RSS in KiB) of `argv` alone.
fn run_measured(me: &Path, argv: &[String]) -> (Duration, u64) {
    let out = Command::new(me).arg("measure").args(argv).output().unwrap();
    assert!(out.status.success(), "{argv:?}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.split_whitespace();
    let ns: u64 = it.next().unwrap().parse().unwrap();
    let kib: u64 = it.next().unwrap().parse().unwrap();
    (Duration::from_nanos(ns), kib)
}

/// `measure ARGV…`: runs ARGV (stdout to /dev/null), prints "nanos maxrss_kib".
fn measure(argv: &[String]) {
    let t = Instant::now();
    let status = Command::new(&argv[0])
        .args(&argv[1..])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    let wall = t.elapsed();
    assert!(status.success(), "{argv:?} failed: {status}");
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).unwrap();
    println!("{} {}", wall.as_nanos(), usage.max_rss());
}

fn raw_disk(file: &Path) {
    use std::io::Read;
    let mut f = std::fs::File::open(file).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    std::hint::black_box(total);
}

fn raw_scan(dir: &Path, hash: bool) {
    use sha2::Digest;
    let db = sled::Config::new()
        .path(dir)
        .cache_capacity(std::env::var("CACHE").ok().and_then(|c| c.parse().ok()).unwrap_or(rmm_events::READER_CACHE_BYTES))
        .flush_every_ms(None)
        .open()
        .unwrap();
    let tree = db.open_tree("events").unwrap();
    let (mut n, mut sum, mut prev) = (0u64, 0u64, [0u8; 32]);
    for item in tree.iter() {
        let (k, v) = item.unwrap();
        n += 1;
        sum += k.len() as u64 + v.iter().map(|&b| b as u64).sum::<u64>();
        if hash {
            let (body, _) = v.split_at(v.len() - 32);
            let mut h = sha2::Sha256::new();
            h.update(prev);
            h.update(body);
            prev = h.finalize().into();
        }
    }
    std::hint::black_box((n, sum, prev));
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| if e.path().is_dir() { dir_size(&e.path()) } else { e.metadata().map(|m| m.len()).unwrap_or(0) })
                .sum()
        })
        .unwrap_or(0)
}

fn env_num<T: std::str::FromStr>(var: &str, default: T) -> T {
    std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}
