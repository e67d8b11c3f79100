//! Scale (issue 11): a completed cluster changed to another topology by
//! `rmm up --workers N` / `--masters N`, through the real binary on the
//! local world. 3+3 → 3+5 → 3+2 → 5+2 → 3+2: after each step the emulator,
//! asked through its API, lists exactly the nodes of the plan, the local
//! world holds exactly their machines, and nothing was created twice.
//! Each scale step also runs through the crash matrix (a crash at every
//! append and between every side effect and its outcome of the scale run,
//! then `up --resume`), sharing the crash harness of `crash.rs`; one test
//! per (step, crash point kind) so nextest runs them side by side.
//!
//! Cost: each crash case builds its starting cluster afresh (a 3+3 `up`
//! and the steps before, on the quick controller clock), two cases at a
//! time. The six matrix tests alone (`-E 'test(scale_crash_matrix)'`) took
//! 160 s of wall time on the shared 2-core machine with other helpers'
//! builds running (longest: the 3+2 appends, 76 s; the effects ones 15-38 s).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::crash::{crash_command, two_at_a_time, with_env, QUICK_CONTROLLERS};
use crate::support::*;
use crate::up::assert_intents_closed;

/// The scale steps of the sequence: (flags, masters, workers).
const STEPS: &[(&[&str], u32, u32)] = &[
    (&["--workers", "5"], 3, 5),
    (&["--workers", "2"], 3, 2),
    (&["--masters", "5", "--workers", "2"], 5, 2),
];

fn names(masters: u32, workers: u32) -> BTreeSet<String> {
    (1..=masters).map(|i| format!("master{i:02}")).chain((1..=workers).map(|i| format!("worker{i:02}"))).collect()
}

/// Nodes whose machine was ever made in this sequence up to `masters` +
/// `workers` at their peak: each registered and was created exactly once.
fn check_scaled(dir: &TestDir, what: &str, masters: u32, workers: u32, crashes: u64, scale_from_attempt: u32) {
    let status = dir.status_refresh();
    assert_eq!(status["run"]["state"], "completed", "{what}: {status}");
    assert_eq!(status["orphans"], Value::Array(vec![]), "{what}: orphans");
    dir.rmm(&["log"]).ok(); // reads and verifies the whole chain
    let events = dir.events();
    assert_intents_closed(&events);
    let want = names(masters, workers);
    // Rancher, asked through its v1 API: exactly the plan's nodes, each one
    // CAPI machine, Running, none left Deleting.
    let rancher = ask_rancher_v1(dir);
    let mut listed = BTreeSet::new();
    for m in &rancher.machines {
        assert_eq!(m["status"]["phase"], "Running", "{what}: {m}");
        let node = m["status"]["nodeRef"]["name"].as_str().unwrap_or_else(|| panic!("{what}: a nodeRef: {m}")).to_string();
        assert!(listed.insert(node.clone()), "{what}: two machines for {node}");
    }
    assert_eq!(listed, want, "{what}: the nodes Rancher lists");
    assert_eq!(rancher.clusters.len(), 1, "{what}: clusters");
    assert_eq!(rancher.clusters[0]["status"]["ready"], true, "{what}: {}", rancher.clusters[0]);
    // The local world: exactly the plan's machines (and rancher).
    let mut world: BTreeSet<String> = std::fs::read_dir(dir.state().join("world/machines"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(world.remove("rancher"), "{what}: the rancher machine");
    assert_eq!(world, want, "{what}: the machines of the local world");
    // Nothing created twice: every machine ever made was made once, and
    // each node registered once (no node of this sequence comes back).
    let created: BTreeMap<String, u64> = serde_json::from_value(json(&std::fs::read(dir.state().join("world/created.json")).unwrap())).unwrap();
    for (name, n) in &created {
        assert_eq!(*n, 1, "{what}: machine {name} created {n} times");
    }
    for node in &want {
        assert_eq!(created.get(node), Some(&1), "{what}: {node} in the creation ledger {created:?}");
    }
    let registrations = registrations(dir);
    for (node, n) in &registrations.made {
        assert_eq!(*n, 1, "{what}: node {node} registered {n} times");
    }
    // Each effect of the scale tried at most once more per crash (the
    // once-per-attempt server check aside).
    let mut tries: BTreeMap<(String, String), u64> = BTreeMap::new();
    for e in events.iter().filter(|e| e["kind"] == "StepStarted" && e["attempt"].as_u64().unwrap() >= u64::from(scale_from_attempt)) {
        let step = e["data"]["step"].as_str().unwrap();
        if step != "check_server" && !step.starts_with("wait_") {
            *tries.entry((e["actor"].as_str().unwrap().to_string(), step.to_string())).or_insert(0) += 1;
        }
    }
    for ((actor, step), n) in tries {
        assert!(n <= 1 + crashes, "{what}: {actor} {step} tried {n} times after {crashes} crash(es)");
    }
}

/// The attempt the next `up` will be.
fn next_attempt(dir: &TestDir) -> u32 {
    dir.status()["run"]["attempts"].as_u64().expect("attempts in status") as u32 + 1
}

/// A fresh dir brought to the state before scale step `step`.
fn before_step(step: usize) -> TestDir {
    let dir = TestDir::on(Kind::Rke2);
    with_env(dir.rmm(&["up"]), QUICK_CONTROLLERS).ok();
    for (flags, _, _) in &STEPS[..step] {
        let mut args = vec!["up"];
        args.extend_from_slice(flags);
        with_env(dir.rmm(&args), QUICK_CONTROLLERS).ok();
    }
    dir
}

#[test]
fn scale_3_3_to_3_5_to_3_2_to_5_2_makes_and_removes_exactly_the_nodes_asked() {
    let dir = TestDir::on(Kind::Rke2);
    dir.up_ok(&[]);
    check_scaled(&dir, "3+3", 3, 3, 0, 1);
    for (flags, masters, workers) in STEPS {
        let from = next_attempt(&dir);
        let mut args = vec!["up"];
        args.extend_from_slice(flags);
        let out = dir.rmm(&args).ok();
        let said = text(&out.stdout);
        assert!(said.contains(&format!("({masters} masters, {workers} workers): scaled in")), "{said}");
        check_scaled(&dir, &format!("{masters}+{workers}"), *masters, *workers, 0, from);
    }
    // Masters back from 5 to 3: one etcd member at a time (5 → 4 keeps 4
    // of 5 above quorum 3, 4 → 3 keeps 3 of 4 at quorum 3).
    let from = next_attempt(&dir);
    let out = dir.rmm(&["up", "--masters", "3"]).ok();
    assert!(text(&out.stdout).contains("(3 masters, 2 workers): scaled in"), "{}", text(&out.stdout));
    check_scaled(&dir, "5+2 → 3+2", 3, 2, 0, from);
    // Workers (then masters) went highest-numbered first, one at a time,
    // each deleted in Rancher (its CAPI machine gone) before its machine
    // was removed.
    let events = dir.events();
    let order: Vec<(String, String)> = events
        .iter()
        .filter(|e| e["kind"] == "StepSucceeded" && ["delete_node", "remove_machine"].contains(&e["data"]["step"].as_str().unwrap()))
        .map(|e| (e["actor"].as_str().unwrap().to_string(), e["data"]["step"].as_str().unwrap().to_string()))
        .collect();
    let expect: Vec<(String, String)> = ["worker05", "worker04", "worker03", "master05", "master04"]
        .iter()
        .flat_map(|w| [(w.to_string(), "delete_node".to_string()), (w.to_string(), "remove_machine".to_string())])
        .collect();
    assert_eq!(order, expect);
    // Each scale ended with Rancher asked about the cluster again, after
    // every node step of its attempt (it is reconfigured when nodes join).
    for attempt in 2..=4u64 {
        let of: Vec<&Value> = events.iter().filter(|e| e["attempt"] == attempt && e["kind"] == "StepSucceeded").collect();
        let ready = of.iter().rposition(|e| e["actor"] == "rancher" && e["data"]["step"] == "wait_cluster_ready");
        let last_node = of.iter().rposition(|e| e["actor"] != "rancher");
        assert!(ready.is_some() && ready > last_node, "attempt {attempt}: the cluster wait after the nodes: {ready:?} {last_node:?}");
    }
    // The timeline and the HTML report name each scale's attempt as one.
    let timeline = text(&dir.rmm(&["log", "--timeline"]).env("COLUMNS", "160").ok().stdout);
    assert!(timeline.contains("(a scale, masters+workers 3+3 → 3+5, "), "{timeline}");
    let html = text(&dir.rmm(&["report", "--html", "-"]).ok().stdout);
    assert!(html.contains("a scale, masters+workers 5+2 → 3+2, "), "the report names the scale");
    // The same run all along: one RunStarted, a PlanChanged per step.
    assert_eq!(events.iter().filter(|e| e["kind"] == "RunStarted").count(), 1);
    assert_eq!(events.iter().filter(|e| e["kind"] == "PlanChanged").count(), 4);
    // master05 left etcd before master04 started to: never two at once.
    let at = |actor: &str, kind: &str, step: &str| {
        events.iter().position(|e| e["actor"] == actor && e["kind"] == kind && e["data"]["step"] == step).unwrap()
    };
    assert!(at("master05", "StepSucceeded", "remove_machine") < at("master04", "StepStarted", "delete_node"));
    // A worker removed earlier and asked for again is added again, and
    // the scale's line says so.
    let out = dir.rmm(&["up", "--workers", "3"]).ok();
    assert!(text(&out.stderr).contains("adding worker03"), "{}", text(&out.stderr));
    assert_eq!(ask_rancher_v1(&dir).machines.len(), 6);
    // The same topology again: nothing to do, nothing appended.
    let before = dir.events().len();
    let out = dir.rmm(&["up", "--masters", "3", "--workers", "3"]).ok();
    assert!(text(&out.stdout).contains("Nothing to do"), "{}", text(&out.stdout));
    assert_eq!(dir.events().len(), before);
    // `down` removes what is there now (rancher, 3 masters, 3 workers), not the removed ones again.
    let out = dir.rmm(&["down"]).ok();
    assert!(text(&out.stdout).contains("Removed 7 machines"), "{}", text(&out.stdout));
    assert_eq!(std::fs::read_dir(dir.state().join("world/machines")).map(|d| d.count()).unwrap_or(0), 0);
}

/// rke1 (Rancher 2.11, the v3 API): a worker removed is its v3 node
/// deleted (and gone) before its machine is removed; one added registers.
#[test]
fn scale_on_rke1_deletes_the_v3_node_then_the_machine() {
    let dir = TestDir::on(Kind::Rke1);
    dir.rmm(&["up", "--masters", "1", "--workers", "2"]).ok();
    dir.rmm(&["up", "--workers", "1"]).ok();
    let nodes = |dir: &TestDir| {
        let mut n: Vec<String> = ask_rancher(dir).nodes.iter().map(|n| n["requestedHostname"].as_str().unwrap().to_string()).collect();
        n.sort();
        n
    };
    assert_eq!(nodes(&dir), ["master01", "worker01"]);
    let world: BTreeSet<String> = std::fs::read_dir(dir.state().join("world/machines")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(world, ["master01", "rancher", "worker01"].map(String::from).into_iter().collect());
    let events = dir.events();
    let worker02: Vec<String> = events
        .iter()
        .filter(|e| e["actor"] == "worker02" && e["kind"] == "StepSucceeded" && e["attempt"] == 2)
        .map(|e| e["data"]["step"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(worker02, ["delete_node", "remove_machine"]);
    dir.rmm(&["up", "--workers", "3"]).ok();
    assert_eq!(nodes(&dir), ["master01", "worker01", "worker02", "worker03"]);
    assert!(ask_rancher(&dir).nodes.iter().all(|n| n["state"] == "active"));
    dir.rmm(&["down"]).ok();
}

#[test]
fn scale_refusals_are_one_line_exit_2_and_change_nothing() {
    let dir = TestDir::on(Kind::Rke2);
    dir.rmm(&["up", "--workers", "1"]).ok();
    let before = dir.events().len();
    let cases: &[(&[&str], &str)] = &[
        (&["up", "--masters", "1"], "cannot go from 3 masters to 1: masters leave one at a time, and the last removal would leave 1 of 2 etcd members, below quorum (2 of 2)"),
        (&["up", "--masters", "4", "--allow-even-masters"], "masters can change only to an odd count"),
        (&["up", "--cluster-name", "other"], "cannot change it to other: remove the cluster with `rmm down`"),
        (&["up", "--distribution", "k3s"], "was made with distribution rke2; `rmm up` cannot change it to k3s: remove the cluster with `rmm down`"),
    ];
    for (args, says) in cases {
        let out = dir.rmm(args).code(2);
        let line = single_stderr_line(&out);
        assert!(line.starts_with("rmm: ") && line.contains(says), "{args:?}: {line}");
    }
    assert_eq!(dir.events().len(), before, "a refusal records nothing");
}

/// The crash matrix of scale step `step` for crash point `var`: a golden
/// scale learns how many appends (or effects) it makes, then every one of
/// them is crashed at, resumed, and checked.
fn scale_matrix(step: usize, var: &str) {
    let (flags, masters, workers) = STEPS[step];
    scale_matrix_from(&|| before_step(step), flags, masters, workers, var);
}

/// The crash matrix of the scale `flags` (to `masters` + `workers`) from
/// the cluster `start` makes.
fn scale_matrix_from(start: &(dyn Fn() -> TestDir + Sync), flags: &[&str], masters: u32, workers: u32, var: &str) {
    let mut args = vec!["up"];
    args.extend_from_slice(flags);
    let golden = start();
    let from = next_attempt(&golden);
    let seq_before = golden.events().len();
    with_env(golden.rmm(&args), QUICK_CONTROLLERS).ok();
    let events = golden.events();
    let points = match var {
        "RMM_CRASH_AFTER_APPEND" => (events.len() - seq_before) as u64,
        _ => events[seq_before..]
            .iter()
            .filter(|e| e["kind"] == "StepStarted" && !e["data"]["step"].as_str().unwrap().starts_with("wait_"))
            .count() as u64,
    };
    assert!(points >= 3, "a scale makes appends and effects: {points}");
    drop(golden);
    two_at_a_time((1..=points).collect(), |k| {
        let dir = start();
        let what = format!("{masters}+{workers} {var}={k}");
        let crashed = crash_command(&dir, &args, var, k, QUICK_CONTROLLERS);
        if crashed {
            with_env(dir.rmm(&["up", "--resume"]), QUICK_CONTROLLERS).ok();
        }
        check_scaled(&dir, &what, masters, workers, u64::from(crashed), from);
    });
}

#[test]
fn scale_crash_matrix_3_5_appends() {
    scale_matrix(0, "RMM_CRASH_AFTER_APPEND");
}

#[test]
fn scale_crash_matrix_3_5_effects() {
    scale_matrix(0, "RMM_CRASH_BEFORE_OUTCOME");
}

#[test]
fn scale_crash_matrix_3_2_appends() {
    scale_matrix(1, "RMM_CRASH_AFTER_APPEND");
}

#[test]
fn scale_crash_matrix_3_2_effects() {
    scale_matrix(1, "RMM_CRASH_BEFORE_OUTCOME");
}

#[test]
fn scale_crash_matrix_5_2_appends() {
    scale_matrix(2, "RMM_CRASH_AFTER_APPEND");
}

#[test]
fn scale_crash_matrix_5_2_effects() {
    scale_matrix(2, "RMM_CRASH_BEFORE_OUTCOME");
}

/// Masters 5 → 3 (two etcd members leave, one at a time), crashed at every
/// append and every effect. It starts from a fresh 5+2 (what the scales
/// before it leave, made in one `up`, to keep the matrix affordable).
fn five_two() -> TestDir {
    let dir = TestDir::on(Kind::Rke2);
    with_env(dir.rmm(&["up", "--masters", "5", "--workers", "2"]), QUICK_CONTROLLERS).ok();
    dir
}

#[test]
fn scale_crash_matrix_masters_5_to_3_appends() {
    scale_matrix_from(&five_two, &["--masters", "3"], 3, 2, "RMM_CRASH_AFTER_APPEND");
}

#[test]
fn scale_crash_matrix_masters_5_to_3_effects() {
    scale_matrix_from(&five_two, &["--masters", "3"], 3, 2, "RMM_CRASH_BEFORE_OUTCOME");
}
