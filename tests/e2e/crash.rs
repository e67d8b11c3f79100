//! The crash matrix: `rmm up` aborted at *every* append and between *every*
//! side effect and its outcome, then `rmm up --resume`; plus seeded chains
//! that crash the resumes too. After each, the run is complete and nothing
//! was created twice.
//!
//! Each runs on rke2 (Rancher 2.15, the v1 API) and on rke1 (Rancher 2.11,
//! the v3 API), as separate tests so nextest runs them side by side; the
//! end state is checked through the API of the run's distribution.
//!
//! Cost: a golden run teaches N (appends: ~95 on rke2, ~85 on rke1) and E
//! (side effects, 20/21); then N + E crash/resume pairs two at a time, with
//! no world latency and the emulator's controllers on a quicker clock.
//! Measured in a full `cargo nextest run --workspace` on the shared 2-core
//! machine (load average ~10 from other builds, so read them as upper
//! bounds): the rke2 matrix 223 s, the rke1 matrix 159 s, the seeded
//! chains 20 s (rke2) and 16 s (rke1).

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::sync::Mutex;

use rand::{Rng, SeedableRng};
use serde_json::Value;

use rmm_actors::decide::steps_for;
use rmm_events::{Distribution, Role};

use crate::support::*;
use crate::up::assert_intents_closed;

/// The steps that change the world in a run of `distribution`, as the
/// actors run them (`decide::steps_for`) and as the crash point
/// `RMM_CRASH_BEFORE_OUTCOME` counts them (`Step::is_effect`): on rke2/k3s
/// the v1 steps (login, token, `server-url`, the v1 cluster, the
/// system-agent installer), on rke1 the v3 ones (with the registration token).
fn effect_steps(distribution: Distribution) -> Vec<&'static str> {
    let mut steps = Vec::new();
    for role in [Role::Rancher, Role::Master, Role::Worker] {
        for step in steps_for(role, false, distribution) {
            if step.is_effect() && !steps.contains(&step.as_str()) {
                steps.push(step.as_str());
            }
        }
    }
    steps
}

/// The distribution a run was made with (its plan, in `RunStarted`).
pub fn distribution_of(events: &[Value]) -> Distribution {
    let plan = &events.iter().find(|e| e["kind"] == "RunStarted" && e["data"]["kind"] == "up").expect("an up run")["data"]["plan"];
    Distribution::parse(plan["distribution"].as_str().expect("a distribution in the plan")).unwrap()
}

/// The emulator's controllers on a quicker clock (default: 300 ms to
/// `clusterName`, 300 ms to `default-token`, 150 ms a planner step), for
/// the exhaustive sweeps (the crash matrix, the disk-full sweep): every
/// phase and message still comes, in the same order, and a sweep of ~130
/// runs does not spend most of its time waiting on them. The seeded crash
/// chains and the SIGKILL chains keep the default clock.
pub const QUICK_CONTROLLERS: &[(&str, &str)] =
    &[("RMM_LOCAL_CLUSTER_NAME_MS", "60"), ("RMM_LOCAL_DEFAULT_TOKEN_MS", "60"), ("RMM_LOCAL_PLANNER_MS", "30")];

/// `cmd` with `env` set.
pub fn with_env(mut cmd: RmmCmd, env: &[(&str, &str)]) -> RmmCmd {
    for (k, v) in env {
        cmd = cmd.env(k, v);
    }
    cmd
}

/// A golden run: N appends, E side effects.
fn golden(kind: Kind) -> (u64, u64) {
    let dir = TestDir::on(kind);
    with_env(dir.rmm(&["up"]), QUICK_CONTROLLERS).ok();
    let events = dir.events();
    let effects = effect_intents(&events).values().sum();
    (events.len() as u64, effects)
}

/// Intents per (actor, effect step).
fn effect_intents(events: &[Value]) -> BTreeMap<(String, String), u64> {
    let effects = effect_steps(distribution_of(events));
    let mut n = BTreeMap::new();
    for e in events.iter().filter(|e| e["kind"] == "StepStarted") {
        let step = e["data"]["step"].as_str().unwrap();
        if effects.contains(&step) {
            *n.entry((e["actor"].as_str().unwrap().to_string(), step.to_string())).or_insert(0) += 1;
        }
    }
    n
}

/// Failed tries per (actor, step) whose error says the connection to
/// Rancher was refused: the request never reached a server.
fn never_reached(events: &[Value]) -> BTreeMap<(String, String), u64> {
    let mut n = BTreeMap::new();
    for e in events.iter().filter(|e| e["kind"] == "StepFailed") {
        let error = e["data"]["error"].as_str().unwrap_or_default().to_lowercase();
        if error.contains("connection refused") {
            let key = (e["actor"].as_str().unwrap().to_string(), e["data"]["step"].as_str().unwrap().to_string());
            *n.entry(key).or_insert(0) += 1;
        }
    }
    n
}

/// `rmm up` (or `up --resume`) with a crash point; `true` if it aborted
/// there, `false` if it finished first.
fn crash_run(dir: &TestDir, resume: bool, var: &str, k: u64, env: &[(&str, &str)]) -> bool {
    let args: &[&str] = if resume { &["up", "--resume"] } else { &["up"] };
    crash_command(dir, args, var, k, env)
}

/// `rmm ARGS` with a crash point; `true` if it aborted there, `false` if
/// it finished first (also used by the scale matrix, `scale.rs`).
pub fn crash_command(dir: &TestDir, args: &[&str], var: &str, k: u64, env: &[(&str, &str)]) -> bool {
    let out = with_env(dir.rmm(args), env).env(var, &k.to_string()).run();
    if out.status.success() {
        return false;
    }
    assert_eq!(out.status.signal(), Some(6), "{var}={k}: expected an abort at the crash point, got {}: {}", out.status, text(&out.stderr));
    assert!(text(&out.stderr).contains("crash point"), "{var}={k}: {}", text(&out.stderr));
    true
}

/// The end state every run must reach, however often it crashed: the run
/// completed, every step tried at most once more per crash, and the world
/// (asked through the API its distribution uses, and the local world's
/// ledgers) holds everything exactly once.
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
    // twice is checked against the world below (machines, tokens, cluster,
    // registrations).
    // A try that failed because Rancher refused the connection (it was
    // restarting) never reached it: it made nothing, and its retry is not
    // a second effect.
    let refused = never_reached(&events);
    for ((actor, step), n) in effect_intents(&events) {
        let k = refused.get(&(actor.clone(), step.clone())).copied().unwrap_or(0);
        assert!(n - k <= 1 + crashes, "{what}: {actor} {step} tried {n} times ({k} refused a connection) after {crashes} crash(es)");
    }
    let run = status["run"]["id"].as_str().unwrap();
    let description = format!("rmm run {run}");
    if distribution_of(&events).is_v1() {
        check_v1_cluster(dir, what, &description);
    } else {
        check_v3_cluster(dir, what, &description);
    }
    // Each node registered exactly once (one node or machine made for
    // it, none made and removed since). Its agent or installer ran again
    // at most once per crash: only when a crash cut it short after its
    // registration call (then with the node's kept id: the same machine).
    let registrations = registrations(dir);
    assert_eq!(registrations.made.len(), 6, "{what}: nodes in the registration ledger: {:?}", registrations.made);
    for (node, n) in &registrations.made {
        assert_eq!(*n, 1, "{what}: node {node} registered {n} times");
    }
    for (node, n) in &registrations.calls {
        assert!(*n <= 1 + crashes, "{what}: node {node} made {n} registration calls after {crashes} crash(es)");
    }
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

/// RKE1 through the v3 API: one active cluster, six active nodes with
/// their roles, one API token of this run, one registration token.
fn check_v3_cluster(dir: &TestDir, what: &str, description: &str) {
    let rancher = ask_rancher(dir);
    assert_eq!(rancher.clusters.len(), 1, "{what}: clusters");
    assert_eq!(rancher.clusters[0]["state"], "active", "{what}");
    assert_eq!(rancher.nodes.len(), 6, "{what}: nodes");
    assert!(rancher.nodes.iter().all(|n| n["state"] == "active"), "{what}");
    assert_eq!(rancher.nodes.iter().filter(|n| n["etcd"] == true && n["controlPlane"] == true && n["worker"] == false).count(), 3, "{what}");
    assert_eq!(rancher.nodes.iter().filter(|n| n["worker"] == true && n["etcd"] == false).count(), 3, "{what}");
    let ours = rancher.tokens.iter().filter(|t| t["description"] == description).count();
    assert_eq!(ours, 1, "{what}: API tokens of this run");
    assert_eq!(rancher.registration_tokens.len(), 1, "{what}: registration tokens");
}

/// The status condition `ty` of a v1 object.
fn condition<'a>(object: &'a Value, ty: &str) -> Option<&'a Value> {
    object["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == ty)
}

/// RKE2/K3s through the v1 API (issue 8): exactly one provisioning
/// cluster, ready as Rancher's own tests define it (`status.ready`,
/// `observedGeneration == generation`, `Ready=True`, `Provisioned=True`,
/// the management cluster `Ready`); six CAPI machines `Running` with a
/// `nodeRef`, three etcd + control plane and three workers, each for the
/// node it is named after; one API token of this run.
fn check_v1_cluster(dir: &TestDir, what: &str, description: &str) {
    let rancher = ask_rancher_v1(dir);
    assert_eq!(rancher.clusters.len(), 1, "{what}: provisioning clusters: {:?}", rancher.clusters);
    let cluster = &rancher.clusters[0];
    assert_eq!(cluster["metadata"]["name"], "tinysetup", "{what}");
    assert_eq!(cluster["status"]["ready"], true, "{what}: status.ready: {cluster}");
    assert!(cluster["metadata"]["generation"].is_u64(), "{what}: {cluster}");
    assert_eq!(cluster["status"]["observedGeneration"], cluster["metadata"]["generation"], "{what}: {cluster}");
    for ty in ["Ready", "Provisioned"] {
        assert_eq!(condition(cluster, ty).map(|c| &c["status"]), Some(&Value::from("True")), "{what}: {ty}: {cluster}");
    }
    let mgmt_id = cluster["status"]["clusterName"].as_str().expect("status.clusterName");
    assert_eq!(rancher.management.len(), 1, "{what}: management clusters");
    let mgmt = &rancher.management[0];
    assert_eq!(mgmt["id"], mgmt_id, "{what}");
    assert_eq!(condition(mgmt, "Ready").map(|c| &c["status"]), Some(&Value::from("True")), "{what}: {mgmt}");
    assert_eq!(rancher.machines.len(), 6, "{what}: machines: {:?}", rancher.machines);
    let label = |m: &Value, l: &str| m["metadata"]["labels"][l] == "true";
    let mut nodes = Vec::new();
    for m in &rancher.machines {
        assert_eq!(m["status"]["phase"], "Running", "{what}: {m}");
        let node = m["status"]["nodeRef"]["name"].as_str().unwrap_or_else(|| panic!("{what}: a nodeRef: {m}"));
        let (etcd, cp, worker) = (label(m, "rke.cattle.io/etcd-role"), label(m, "rke.cattle.io/control-plane-role"), label(m, "rke.cattle.io/worker-role"));
        match node {
            "master01" | "master02" | "master03" => assert!(etcd && cp && !worker, "{what}: {node} is etcd + control plane: {m}"),
            "worker01" | "worker02" | "worker03" => assert!(worker && !etcd && !cp, "{what}: {node} is a worker: {m}"),
            other => panic!("{what}: a machine of an unknown node {other}: {m}"),
        }
        nodes.push(node);
    }
    nodes.sort();
    nodes.dedup();
    assert_eq!(nodes.len(), 6, "{what}: one machine per node");
    let ours = rancher.tokens.iter().filter(|t| t["description"] == description).count();
    assert_eq!(ours, 1, "{what}: API tokens of this run");
}

/// Crashes at `var=k`, then resumes and checks; `false` if the run
/// finished before it reached `k` (then it is checked as it is).
fn crash_then_resume(kind: Kind, var: &str, k: u64) -> bool {
    let dir = TestDir::on(kind);
    if !crash_run(&dir, false, var, k, QUICK_CONTROLLERS) {
        check_completed_once(&dir, &format!("{kind:?} {var}={k} (not reached)"), 0);
        return false;
    }
    let status = dir.status();
    assert!(["interrupted", "completed"].contains(&status["run"]["state"].as_str().unwrap()), "{kind:?} {var}={k}: {status}");
    with_env(dir.rmm(&["up", "--resume"]), QUICK_CONTROLLERS).ok();
    check_completed_once(&dir, &format!("{kind:?} {var}={k}"), 1);
    true
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

/// Every append and every side effect of a golden run of `kind`, each a
/// crash then a resume, two at a time.
///
/// The number of appends is not quite fixed: actors' events that arrive
/// together share one write, and on the v1 path the planner's progress
/// messages are recorded as the polls see them. So the last few append
/// indices may lie past a run's own end (such a run is checked complete as
/// it is); every side effect is reached.
fn crash_matrix(kind: Kind) {
    let started = std::time::Instant::now();
    let (n, e) = golden(kind);
    assert!(e >= 20, "3 masters + 3 workers have at least 20 side effects, got {e}");
    let mut points: Vec<(&str, u64)> = (1..=n).map(|k| ("RMM_CRASH_AFTER_APPEND", k)).collect();
    points.extend((1..=e).map(|k| ("RMM_CRASH_BEFORE_OUTCOME", k)));
    eprintln!("crash matrix on {kind:?}: {n} appends, {e} side effects");
    let missed = Mutex::new(Vec::new());
    two_at_a_time(points, |(var, k)| {
        if !crash_then_resume(kind, var, k) {
            missed.lock().unwrap().push((var, k));
        }
    });
    let missed = missed.into_inner().unwrap();
    let slack = (n / 8).max(5);
    assert!(
        missed.iter().all(|(var, k)| *var == "RMM_CRASH_AFTER_APPEND" && k + slack > n),
        "crash points not reached: {missed:?} (of {n} appends, {e} effects)"
    );
    eprintln!("crash matrix on {kind:?}: {} crash/resume pairs in {:.0?}", n + e, started.elapsed());
}

#[test]
fn crash_matrix_on_rke2_every_append_and_every_effect_then_resume_completes_with_nothing_created_twice() {
    crash_matrix(Kind::Rke2);
}

#[test]
fn crash_matrix_on_rke1_every_append_and_every_effect_then_resume_completes_with_nothing_created_twice() {
    crash_matrix(Kind::Rke1);
}

/// Crashes the first run and then up to two resumes at random points, then
/// finishes. Print the seed; a failing seed becomes a named test below.
fn chain(kind: Kind, seed: u64) {
    eprintln!("crash chain on {kind:?}, seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = TestDir::on(kind);
    let crashes = rng.gen_range(2..=3);
    let mut crashed = 0;
    for i in 0..crashes {
        let (var, k) = if rng.gen_bool(0.5) {
            ("RMM_CRASH_AFTER_APPEND", rng.gen_range(1..=60))
        } else {
            ("RMM_CRASH_BEFORE_OUTCOME", rng.gen_range(1..=20))
        };
        if crash_run(&dir, i > 0, var, k, &[]) {
            crashed += 1;
        } else {
            break; // it finished before reaching the point
        }
    }
    dir.rmm(&["up", "--resume"]).ok();
    check_completed_once(&dir, &format!("{kind:?} seed {seed}"), crashed);
}

fn seeded_chains(kind: Kind) {
    let started = std::time::Instant::now();
    two_at_a_time(seeds("RMM_CRASH_SEED", &[1, 2, 3, 4, 5, 6]), |seed| chain(kind, seed));
    eprintln!("seeded crash chains on {kind:?} in {:.0?}", started.elapsed());
}

#[test]
fn seeded_crash_chains_on_rke2_crash_the_resumes_too_and_still_complete() {
    seeded_chains(Kind::Rke2);
}

#[test]
fn seeded_crash_chains_on_rke1_crash_the_resumes_too_and_still_complete() {
    seeded_chains(Kind::Rke1);
}

/// A crash in the middle of writing a record leaves a torn last frame in
/// the write-ahead file: that is not tampering. The resume drops it and
/// continues from the last whole record.
#[test]
fn a_torn_last_record_is_dropped_and_the_resume_completes() {
    let dir = TestDir::new();
    assert!(crash_run(&dir, false, "RMM_CRASH_AFTER_APPEND", 29, &[]));
    // The crash comes *during* the 30th append: its write is torn, and its
    // head anchor (written only once an append is durable) still says 29.
    let anchor = std::fs::read(dir.state().join("events/head")).unwrap();
    assert!(crash_run(&dir, true, "RMM_CRASH_AFTER_APPEND", 1, &[]));
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

/// rmm killed while the installer runs on a node, after Rancher answered
/// its registration call and before the agent's unit exists: Rancher lists
/// the machine, but no service on the node will ever check in. The resume
/// runs the installer again (with the node's kept id: the same machine)
/// instead of adopting the registration and then waiting out `active_s`
/// (30 min) for a machine that never gets to `Running`.
#[test]
fn an_installer_cut_short_after_its_registration_runs_again_on_resume_and_the_run_completes() {
    let dir = TestDir::on(Kind::Rke2);
    let out = dir.rmm(&["up"]).env("RMM_LOCAL_CRASH_AFTER_REGISTER", "worker02").run();
    assert_eq!(out.status.signal(), Some(6), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("RMM_LOCAL_CRASH_AFTER_REGISTER=worker02"), "{}", text(&out.stderr));
    let before = registrations(&dir);
    assert_eq!(before.made.get("tinysetup/worker02"), Some(&1), "registered before the crash: {:?}", before.made);
    let resumed = dir.rmm(&["up", "--resume"]).run_within(std::time::Duration::from_secs(60));
    assert!(resumed.status.success(), "{}", text(&resumed.stderr));
    check_completed_once(&dir, "installer cut short after its registration", 1);
    let after = registrations(&dir);
    assert_eq!(after.calls.get("tinysetup/worker02"), Some(&2), "the installer ran again: {:?}", after.calls);
    assert_eq!(after.made.get("tinysetup/worker02"), Some(&1), "the same machine");
}

/// rmm killed right after the installer made the agent's unit, before its
/// service checked in: the registration is complete on both sides, so the
/// resume adopts it without running the installer again, and the service
/// (started on the node without rmm, as systemd does) checks in.
#[test]
fn an_installer_cut_short_after_its_unit_is_adopted_on_resume_and_the_run_completes() {
    let dir = TestDir::on(Kind::Rke2);
    let out = dir.rmm(&["up"]).env("RMM_LOCAL_CRASH_BEFORE_CHECK_IN", "master02").run();
    assert_eq!(out.status.signal(), Some(6), "{}", text(&out.stderr));
    let resumed = dir.rmm(&["up", "--resume"]).run_within(std::time::Duration::from_secs(60));
    assert!(resumed.status.success(), "{}", text(&resumed.stderr));
    check_completed_once(&dir, "installer cut short after its unit", 1);
    assert_eq!(registrations(&dir).calls.get("tinysetup/master02"), Some(&1), "not run again");
    let adopted = dir.events().iter().any(|e| e["actor"] == "master02" && e["kind"] == "StepSucceeded" && e["data"]["step"] == "run_agent" && e["data"]["via"] != "done");
    assert!(adopted, "master02's run_agent was adopted");
}
