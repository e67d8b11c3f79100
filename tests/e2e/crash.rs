//! Crash and resume: a sample of crash points (after an append; after a
//! side effect, before its outcome), at least one inside every actor's
//! steps. After `up --resume`, nothing was created twice. The exhaustive
//! matrix and real kills are the crash-recovery issue's.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::support::*;
use crate::up::assert_intents_closed;

/// Crashes `up` at `var=k`, resumes, and checks the invariants.
fn crash_then_resume(var: &str, k: u64) {
    let dir = TestDir::new();
    let out = dir.rmm(&["up"]).env(var, &k.to_string()).run();
    assert!(!out.status.success(), "{var}={k}: up should have aborted, but exited {}", out.status);
    assert!(text(&out.stderr).contains("crash point"), "{var}={k}: {}", text(&out.stderr));
    let status = dir.status();
    assert_eq!(status["run"]["state"], "interrupted", "{var}={k}: a crashed run shows as interrupted");
    dir.rmm(&["up", "--resume"]).ok();
    check_completed_once(&dir, &format!("{var}={k}"));
}

/// The end state every run must reach, crashed or not.
pub fn check_completed_once(dir: &TestDir, what: &str) {
    let status = dir.status_refresh();
    assert_eq!(status["run"]["state"], "completed", "{what}: {status}");
    assert_eq!(status["orphans"], Value::Array(vec![]), "{what}: orphans");
    for a in status["actors"].as_array().unwrap() {
        assert_eq!(a["observed"], "running", "{what}: {a}");
    }
    let events = dir.events();
    assert_intents_closed(&events);
    let run = status["run"]["id"].as_str().unwrap();
    let rancher = ask_rancher(dir);
    assert_eq!(rancher.clusters.len(), 1, "{what}: clusters");
    assert_eq!(rancher.clusters[0]["state"], "active", "{what}");
    assert_eq!(rancher.nodes.len(), 6, "{what}: nodes");
    assert_eq!(rancher.nodes.iter().filter(|n| n["etcd"] == true && n["controlPlane"] == true).count(), 3, "{what}");
    assert_eq!(rancher.nodes.iter().filter(|n| n["worker"] == true && n["etcd"] == false).count(), 3, "{what}");
    let ours = rancher.tokens.iter().filter(|t| t["description"] == format!("rmm run {run}")).count();
    assert_eq!(ours, 1, "{what}: API tokens of this run");
    assert_eq!(rancher.registration_tokens.len(), 1, "{what}: registration tokens");
    assert_eq!(machine_creations(dir), 7, "{what}: each of the 7 machines created exactly once");
}

/// How many machines the local world has created: it hands every create a
/// new address and never reuses one, so the next free host number counts
/// them.
fn machine_creations(dir: &TestDir) -> u64 {
    let world: Value = json(&std::fs::read(dir.state().join("world").join("world.json")).unwrap());
    world["next_host"].as_u64().unwrap() - 1
}

/// A golden run's log: which seqs are intents of which actor, and how many
/// side effects ran.
fn golden() -> (Vec<Value>, u64) {
    let dir = TestDir::new();
    dir.up_ok(&[]);
    let events = dir.events();
    let effects = events
        .iter()
        .filter(|e| e["kind"] == "StepStarted" && EFFECT_STEPS.contains(&e["data"]["step"].as_str().unwrap()))
        .count() as u64;
    (events, effects)
}

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
    "remove_machine",
];

fn parallel(points: Vec<(&'static str, u64)>) {
    let points = std::sync::Mutex::new(points);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let next = points.lock().unwrap().pop();
                match next {
                    Some((var, k)) => crash_then_resume(var, k),
                    None => break,
                }
            });
        }
    });
}

#[test]
fn resume_after_crashes_after_appends_in_every_actor_creates_nothing_twice() {
    let (events, _) = golden();
    // One intent per actor and step kind, sampled: the first and a middle
    // step of every actor, plus the run's first and last appends.
    let mut seqs = BTreeSet::new();
    seqs.insert(1);
    seqs.insert(2);
    let actors: BTreeSet<&str> = events.iter().map(|e| e["actor"].as_str().unwrap()).collect();
    for actor in actors {
        let intents: Vec<u64> = events
            .iter()
            .filter(|e| e["actor"] == actor && e["kind"] == "StepStarted")
            .map(|e| e["seq"].as_u64().unwrap())
            .collect();
        if let Some(first) = intents.first() {
            seqs.insert(*first);
        }
        if intents.len() > 2 {
            seqs.insert(intents[intents.len() / 2]);
        }
    }
    let last = events.len() as u64;
    seqs.insert(last - 1);
    parallel(seqs.into_iter().map(|k| ("RMM_CRASH_AFTER_APPEND", k)).collect());
}

#[test]
fn resume_after_crashes_between_effect_and_outcome_creates_nothing_twice() {
    let (_, effects) = golden();
    assert!(effects >= 20, "3 masters + 3 workers have at least 20 side effects, got {effects}");
    parallel((1..=effects).map(|k| ("RMM_CRASH_BEFORE_OUTCOME", k)).collect());
}
