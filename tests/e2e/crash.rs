//! The crash matrix: `rmm up` aborted at *every* append and between *every*
//! side effect and its outcome, then `rmm up --resume`; plus seeded chains
//! that crash the resumes too. After each, the run is complete and nothing
//! was created twice.
//!
//! Cost: a golden run teaches N (appends, ~80) and E (side effects, 20);
//! then N + E crash/resume pairs and the chains run two at a time, with no
//! world latency: about 1.5 s a pair in a debug build, ~90 s in all on 2 cores.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::sync::Mutex;

use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::support::*;
use crate::up::assert_intents_closed;

const EFFECT_STEPS: &[&str] = &[
    "create_machine",
    "start_server",
    "login",
    "change_password",
    "create_api_token",
    "set_server_url",
    "create_cluster",
    "create_registration_token",
    "run_agent",
];

/// A golden run: N appends, E side effects.
fn golden() -> (u64, u64) {
    let dir = TestDir::new();
    dir.up_ok(&[]);
    let events = dir.events();
    let effects = effect_intents(&events).values().sum();
    (events.len() as u64, effects)
}

/// Intents per (actor, effect step).
fn effect_intents(events: &[Value]) -> BTreeMap<(String, String), u64> {
    let mut n = BTreeMap::new();
    for e in events.iter().filter(|e| e["kind"] == "StepStarted") {
        let step = e["data"]["step"].as_str().unwrap();
        if EFFECT_STEPS.contains(&step) {
            *n.entry((e["actor"].as_str().unwrap().to_string(), step.to_string())).or_insert(0) += 1;
        }
    }
    n
}

/// `rmm up` (or `up --resume`) with a crash point; `true` if it aborted
/// there, `false` if it finished first.
fn crash_run(dir: &TestDir, resume: bool, var: &str, k: u64) -> bool {
    let args: &[&str] = if resume { &["up", "--resume"] } else { &["up"] };
    let out = dir.rmm(args).env(var, &k.to_string()).run();
    if out.status.success() {
        return false;
    }
    assert_eq!(out.status.signal(), Some(6), "{var}={k}: expected an abort at the crash point, got {}: {}", out.status, text(&out.stderr));
    assert!(text(&out.stderr).contains("crash point"), "{var}={k}: {}", text(&out.stderr));
    true
}

/// The end state every run must reach, however often it crashed.
pub fn check_completed_once(dir: &TestDir, what: &str, crashes: u64) {
    let status = dir.status_refresh();
    assert_eq!(status["run"]["state"], "completed", "{what}: {status}");
    assert_eq!(status["orphans"], Value::Array(vec![]), "{what}: orphans");
    let actors = status["actors"].as_array().unwrap();
    assert_eq!(actors.len(), 7, "{what}: seven machines");
    assert!(actors.iter().all(|a| a["observed"] == "running"), "{what}: {status}");
    dir.rmm(&["log"]).ok(); // reads and verifies the whole chain
    let events = dir.events();
    assert_intents_closed(&events);
    // Actors run in parallel, so one crash can leave several intents in
    // doubt (one per actor); each is reconciled and at most re-run once. So:
    // a step is tried at most once more per crash. Whether the *effect* ran
    // twice is checked against the world below (machines, tokens, cluster).
    for ((actor, step), n) in effect_intents(&events) {
        assert!(n <= 1 + crashes, "{what}: {actor} {step} tried {n} times after {crashes} crash(es)");
    }
    let run = status["run"]["id"].as_str().unwrap();
    let rancher = ask_rancher(dir);
    assert_eq!(rancher.clusters.len(), 1, "{what}: clusters");
    assert_eq!(rancher.clusters[0]["state"], "active", "{what}");
    assert_eq!(rancher.nodes.len(), 6, "{what}: nodes");
    assert!(rancher.nodes.iter().all(|n| n["state"] == "active"), "{what}");
    assert_eq!(rancher.nodes.iter().filter(|n| n["etcd"] == true && n["controlPlane"] == true && n["worker"] == false).count(), 3, "{what}");
    assert_eq!(rancher.nodes.iter().filter(|n| n["worker"] == true && n["etcd"] == false).count(), 3, "{what}");
    let ours = rancher.tokens.iter().filter(|t| t["description"] == format!("rmm run {run}")).count();
    assert_eq!(ours, 1, "{what}: API tokens of this run");
    assert_eq!(rancher.registration_tokens.len(), 1, "{what}: registration tokens");
    // The world's ledger of completed creates. (A create cut short by the
    // crash leaves a half-made machine, which the resume removes and makes
    // again, as DESIGN §4 says; it never completed, so it is not counted.)
    let created: Value = json(&std::fs::read(dir.state().join("world").join("created.json")).unwrap());
    let created = created.as_object().unwrap();
    assert_eq!(created.len(), 7, "{what}: {created:?}");
    for (name, n) in created {
        assert_eq!(n, 1, "{what}: machine {name} created {n} times");
    }
}

fn crash_then_resume(var: &str, k: u64) {
    let dir = TestDir::new();
    assert!(crash_run(&dir, false, var, k), "{var}={k}: the run finished without reaching its crash point");
    let status = dir.status();
    assert!(["interrupted", "completed"].contains(&status["run"]["state"].as_str().unwrap()), "{var}={k}: {status}");
    dir.rmm(&["up", "--resume"]).ok();
    check_completed_once(&dir, &format!("{var}={k}"), 1);
}

/// Runs `work` over `items`, two at a time.
pub fn two_at_a_time<T: Send>(items: Vec<T>, work: impl Fn(T) + Sync) {
    let items = Mutex::new(items);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let next = items.lock().unwrap().pop();
                match next {
                    Some(item) => work(item),
                    None => break,
                }
            });
        }
    });
}

#[test]
fn crash_matrix_every_append_and_every_effect_then_resume_completes_with_nothing_created_twice() {
    let (n, e) = golden();
    assert!(e >= 20, "3 masters + 3 workers have at least 20 side effects, got {e}");
    let mut points: Vec<(&str, u64)> = (1..=n).map(|k| ("RMM_CRASH_AFTER_APPEND", k)).collect();
    points.extend((1..=e).map(|k| ("RMM_CRASH_BEFORE_OUTCOME", k)));
    eprintln!("crash matrix: {n} appends, {e} side effects");
    two_at_a_time(points, |(var, k)| crash_then_resume(var, k));
}

/// Crashes the first run and then up to two resumes at random points, then
/// finishes. Print the seed; a failing seed becomes a named test below.
fn chain(seed: u64) {
    eprintln!("crash chain seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = TestDir::new();
    let crashes = rng.gen_range(2..=3);
    let mut crashed = 0;
    for i in 0..crashes {
        let (var, k) = if rng.gen_bool(0.5) {
            ("RMM_CRASH_AFTER_APPEND", rng.gen_range(1..=60))
        } else {
            ("RMM_CRASH_BEFORE_OUTCOME", rng.gen_range(1..=20))
        };
        if crash_run(&dir, i > 0, var, k) {
            crashed += 1;
        } else {
            break; // it finished before reaching the point
        }
    }
    dir.rmm(&["up", "--resume"]).ok();
    check_completed_once(&dir, &format!("seed {seed}"), crashed);
}

#[test]
fn seeded_crash_chains_crash_the_resumes_too_and_still_complete() {
    two_at_a_time(seeds("RMM_CRASH_SEED", &[1, 2, 3, 4, 5, 6]), chain);
}

/// A crash in the middle of writing a record leaves a torn last frame in
/// the write-ahead file: that is not tampering. The resume drops it and
/// continues from the last whole record.
#[test]
fn a_torn_last_record_is_dropped_and_the_resume_completes() {
    let dir = TestDir::new();
    assert!(crash_run(&dir, false, "RMM_CRASH_AFTER_APPEND", 29));
    // The crash comes *during* the 30th append: its write is torn, and its
    // head anchor (written only once an append is durable) still says 29.
    let anchor = std::fs::read(dir.state().join("events/head")).unwrap();
    assert!(crash_run(&dir, true, "RMM_CRASH_AFTER_APPEND", 1));
    std::fs::write(dir.state().join("events/head"), anchor).unwrap();
    let wal = dir.state().join("events").join("journal.wal");
    let len = std::fs::metadata(&wal).unwrap().len();
    assert!(len > 40, "the records since the last checkpoint are in the write-ahead file");
    std::fs::OpenOptions::new().write(true).open(&wal).unwrap().set_len(len - 17).unwrap();
    let events = dir.events();
    assert_eq!(events.len(), 29, "the torn 30th record is gone, the 29 before it verify");
    dir.rmm(&["up", "--resume"]).ok();
    check_completed_once(&dir, "torn tail", 1);
}
