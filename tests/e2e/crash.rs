//! The crash matrix: `rmm up` aborted at *every* append and between *every*
//! side effect and its outcome, then `rmm up --resume`; plus seeded chains
//! that crash the resumes too. After each, the run is complete and nothing
//! was created twice.
//!
//! Each runs on rke2 (Rancher 2.15, the v1 API) and on rke1 (Rancher 2.11,
//! the v3 API), as separate tests so nextest runs them side by side; the
//! end state is checked through the API of the run's distribution.
//! The same code runs on each driver ([`On`]): the local world, the
//! docker-machine double and OpenSSH hosts (rke2, one master and one
//! worker; their matrices are split in two tests each, the appends and the
//! effects, so nextest runs the halves side by side).
//!
//! Cost: a golden run teaches N (appends: ~95 on rke2, ~85 on rke1) and E
//! (side effects, 26/27: the six node machines' check_machine among them);
//! then N + E crash/resume pairs two at a time, with
//! no world latency and the emulator's controllers on a quicker clock.
//! Measured in a full `cargo nextest run --workspace` on the shared 2-core
//! machine (load average ~10 from other builds, so read them as upper
//! bounds): the rke2 matrix 223 s, the rke1 matrix 159 s, the seeded
//! chains 20 s (rke2) and 16 s (rke1). On the other drivers (1 master + 1
//! worker: ~57 appends, 12 effects), measured alone on the same machine
//! under a load average of 13–20: docker-machine appends 341 s, effects
//! 59 s; ssh appends 859 s, effects 98 s (an ssh connection per command,
//! and sshd per host per pair); the seeded chains 15 s and 34–48 s.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::sync::Mutex;

use rand::{Rng, SeedableRng};
use serde_json::Value;

use rmm_actors::decide::steps_for;
use rmm_events::{Distribution, Role};

use crate::support::*;
use crate::up::assert_intents_closed;
use crate::worlds::{On, World};

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

/// A golden run: N appends, E side effects; `None` when the world cannot
/// be made here (a tool is missing: SKIPPED was printed).
fn golden(on: On) -> Option<(u64, u64)> {
    let mut w = World::new(on)?;
    w.set_env(QUICK_CONTROLLERS);
    let started = std::time::Instant::now();
    w.rmm(&["up"]).ok();
    eprintln!("golden run on {on:?} in {:.1?}", started.elapsed());
    let events = w.dir.events();
    let effects = effect_intents(&events).values().sum();
    Some((events.len() as u64, effects))
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
    crash_cmd(with_env(dir.rmm(args), env), var, k)
}

/// `rmm ARGS` with a crash point; `true` if it aborted there, `false` if
/// it finished first (also used by the scale matrix, `scale.rs`).
pub fn crash_command(dir: &TestDir, args: &[&str], var: &str, k: u64, env: &[(&str, &str)]) -> bool {
    crash_cmd(with_env(dir.rmm(args), env), var, k)
}

/// `crash_run` on a world (with its knobs).
fn crash_run_on(w: &World, resume: bool, var: &str, k: u64) -> bool {
    let args: &[&str] = if resume { &["up", "--resume"] } else { &["up"] };
    crash_cmd(w.rmm(args), var, k)
}

fn crash_cmd(cmd: RmmCmd, var: &str, k: u64) -> bool {
    let out = cmd.env(var, &k.to_string()).run();
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
    check_completed_once_on(dir, On::Local(Kind::Rke2), what, crashes);
}

/// [`check_completed_once`] on the world of driver `on` (its node count,
/// its ledgers).
pub fn check_completed_once_on(dir: &TestDir, on: On, what: &str, crashes: u64) {
    let (masters, workers) = World::nodes(on);
    let status = dir.status_refresh();
    assert_eq!(status["run"]["state"], "completed", "{what}: {status}");
    assert_eq!(status["orphans"], Value::Array(vec![]), "{what}: orphans");
    let actors = status["actors"].as_array().unwrap();
    assert_eq!(actors.len(), 1 + masters + workers, "{what}: every machine");
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
        let plan = &events.iter().find(|e| e["kind"] == "RunStarted").expect("a run")["data"]["plan"];
        let name = plan["cluster_name"].as_str().expect("a cluster name").to_string();
        check_v1_cluster(dir, &name, (masters, workers), what, &description);
    } else {
        check_v3_cluster(dir, (masters, workers), what, &description);
    }
    // Each node registered exactly once (one node or machine made for
    // it, none made and removed since). Its agent or installer ran again
    // at most once per crash: only when a crash cut it short after its
    // registration call (then with the node's kept id: the same machine).
    let registrations = registrations_in(&World::rancher_data(dir, on));
    assert_eq!(registrations.made.len(), masters + workers, "{what}: nodes in the registration ledger: {:?}", registrations.made);
    for (node, n) in &registrations.made {
        assert_eq!(*n, 1, "{what}: node {node} registered {n} times");
    }
    for (node, n) in &registrations.calls {
        assert!(*n <= 1 + crashes, "{what}: node {node} made {n} registration calls after {crashes} crash(es)");
    }
    // The world's ledger of completed creates. (A create cut short by the
    // crash leaves a half-made machine, which the resume removes and makes
    // again, as DESIGN §4 says; it never completed, so it is not counted.)
    // (ssh hosts are claimed, not created: every host's claim is what
    // `observed == running` above checked.)
    if let Some(created) = World::created(dir, on) {
        assert_eq!(created.len(), 1 + masters + workers, "{what}: {created:?}");
        for (name, n) in created {
            assert_eq!(n, 1, "{what}: machine {name} created {n} times");
        }
    }
}

/// RKE1 through the v3 API: one active cluster, six active nodes with
/// their roles, one API token of this run, one registration token.
fn check_v3_cluster(dir: &TestDir, (masters, workers): (usize, usize), what: &str, description: &str) {
    let rancher = ask_rancher(dir);
    assert_eq!(rancher.clusters.len(), 1, "{what}: clusters");
    assert_eq!(rancher.clusters[0]["state"], "active", "{what}");
    assert_eq!(rancher.nodes.len(), masters + workers, "{what}: nodes");
    assert!(rancher.nodes.iter().all(|n| n["state"] == "active"), "{what}");
    assert_eq!(rancher.nodes.iter().filter(|n| n["etcd"] == true && n["controlPlane"] == true && n["worker"] == false).count(), masters, "{what}");
    assert_eq!(rancher.nodes.iter().filter(|n| n["worker"] == true && n["etcd"] == false).count(), workers, "{what}");
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
fn check_v1_cluster(dir: &TestDir, name: &str, (masters, workers): (usize, usize), what: &str, description: &str) {
    let rancher = ask_rancher_v1(dir);
    assert_eq!(rancher.clusters.len(), 1, "{what}: provisioning clusters: {:?}", rancher.clusters);
    let cluster = &rancher.clusters[0];
    assert_eq!(cluster["metadata"]["name"], name, "{what}");
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
    assert_eq!(rancher.machines.len(), masters + workers, "{what}: machines: {:?}", rancher.machines);
    let label = |m: &Value, l: &str| m["metadata"]["labels"][l] == "true";
    let mut nodes = Vec::new();
    for m in &rancher.machines {
        assert_eq!(m["status"]["phase"], "Running", "{what}: {m}");
        let node = m["status"]["nodeRef"]["name"].as_str().unwrap_or_else(|| panic!("{what}: a nodeRef: {m}"));
        let (etcd, cp, worker) = (label(m, "rke.cattle.io/etcd-role"), label(m, "rke.cattle.io/control-plane-role"), label(m, "rke.cattle.io/worker-role"));
        let number = |prefix: &str, count: usize| {
            node.strip_prefix(prefix).and_then(|n| n.parse::<usize>().ok()).is_some_and(|n| (1..=count).contains(&n))
        };
        if number("master", masters) {
            assert!(etcd && cp && !worker, "{what}: {node} is etcd + control plane: {m}");
        } else if number("worker", workers) {
            assert!(worker && !etcd && !cp, "{what}: {node} is a worker: {m}");
        } else {
            panic!("{what}: a machine of an unknown node {node}: {m}");
        }
        nodes.push(node);
    }
    nodes.sort();
    nodes.dedup();
    assert_eq!(nodes.len(), masters + workers, "{what}: one machine per node");
    let ours = rancher.tokens.iter().filter(|t| t["description"] == description).count();
    assert_eq!(ours, 1, "{what}: API tokens of this run");
}

/// Crashes at `var=k`, then resumes and checks; `false` if the run
/// finished before it reached `k` (then it is checked as it is).
fn crash_then_resume(on: On, var: &str, k: u64) -> bool {
    let mut w = World::new(on).expect("the golden run made this world");
    w.set_env(QUICK_CONTROLLERS);
    if !crash_run_on(&w, false, var, k) {
        check_completed_once_on(&w.dir, on, &format!("{on:?} {var}={k} (not reached)"), 0);
        return false;
    }
    let status = w.dir.status();
    assert!(["interrupted", "completed"].contains(&status["run"]["state"].as_str().unwrap()), "{on:?} {var}={k}: {status}");
    w.rmm(&["up", "--resume"]).ok();
    check_completed_once_on(&w.dir, on, &format!("{on:?} {var}={k}"), 1);
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

/// Which crash points of a golden run a matrix covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Points {
    All,
    /// `RMM_CRASH_AFTER_APPEND` at every append.
    Appends,
    /// `RMM_CRASH_BEFORE_OUTCOME` at every side effect.
    Effects,
}

/// Every append and every side effect of a golden run on `on` (or one of
/// the two halves), each a crash then a resume, two at a time.
///
/// The number of appends is not quite fixed: actors' events that arrive
/// together share one write, and on the v1 path the planner's progress
/// messages are recorded as the polls see them. So the last few append
/// indices may lie past a run's own end (such a run is checked complete as
/// it is); every side effect is reached.
fn crash_matrix(on: On, which: Points) {
    let started = std::time::Instant::now();
    let Some((n, e)) = golden(on) else { return };
    let (masters, workers) = World::nodes(on);
    // rancher: 5 or more (machine, server, login, token, server-url,
    // cluster …); a node: its machine and its agent.
    let least = 5 + 2 * (masters + workers) as u64;
    assert!(e >= least, "{masters} masters + {workers} workers have at least {least} side effects, got {e}");
    let mut points: Vec<(&str, u64)> = Vec::new();
    if which != Points::Effects {
        points.extend((1..=n).map(|k| ("RMM_CRASH_AFTER_APPEND", k)));
    }
    if which != Points::Appends {
        points.extend((1..=e).map(|k| ("RMM_CRASH_BEFORE_OUTCOME", k)));
    }
    let pairs = points.len();
    eprintln!("crash matrix on {on:?} ({which:?}): {n} appends, {e} side effects");
    let missed = Mutex::new(Vec::new());
    two_at_a_time(points, |(var, k)| {
        if !crash_then_resume(on, var, k) {
            missed.lock().unwrap().push((var, k));
        }
    });
    let missed = missed.into_inner().unwrap();
    let slack = (n / 8).max(5);
    assert!(
        missed.iter().all(|(var, k)| *var == "RMM_CRASH_AFTER_APPEND" && k + slack > n),
        "crash points not reached: {missed:?} (of {n} appends, {e} effects)"
    );
    eprintln!("crash matrix on {on:?} ({which:?}): {pairs} crash/resume pairs in {:.0?}", started.elapsed());
}

#[test]
fn crash_matrix_on_rke2_every_append_and_every_effect_then_resume_completes_with_nothing_created_twice() {
    crash_matrix(On::Local(Kind::Rke2), Points::All);
}

#[test]
fn crash_matrix_on_rke1_every_append_and_every_effect_then_resume_completes_with_nothing_created_twice() {
    crash_matrix(On::Local(Kind::Rke1), Points::All);
}

#[test]
fn crash_matrix_on_docker_machine_every_append_then_resume_completes_with_nothing_created_twice() {
    crash_matrix(On::DockerMachine, Points::Appends);
}

#[test]
fn crash_matrix_on_docker_machine_every_effect_then_resume_completes_with_nothing_created_twice() {
    crash_matrix(On::DockerMachine, Points::Effects);
}

#[test]
fn crash_matrix_on_ssh_every_append_then_resume_completes_with_nothing_claimed_or_registered_twice() {
    crash_matrix(On::Ssh, Points::Appends);
}

#[test]
fn crash_matrix_on_ssh_every_effect_then_resume_completes_with_nothing_claimed_or_registered_twice() {
    crash_matrix(On::Ssh, Points::Effects);
}

/// Crashes the first run and then up to two resumes at random points, then
/// finishes. Print the seed; a failing seed becomes a named test below.
fn chain(on: On, seed: u64) {
    eprintln!("crash chain on {on:?}, seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let Some(w) = World::new(on) else { return };
    // The points span about a run of the world (fewer on 1 + 1 nodes).
    let (appends, effects) = if World::nodes(on) == (3, 3) { (60, 20) } else { (40, 10) };
    let crashes = rng.gen_range(2..=3);
    let mut crashed = 0;
    for i in 0..crashes {
        let (var, k) = if rng.gen_bool(0.5) {
            ("RMM_CRASH_AFTER_APPEND", rng.gen_range(1..=appends))
        } else {
            ("RMM_CRASH_BEFORE_OUTCOME", rng.gen_range(1..=effects))
        };
        if crash_run_on(&w, i > 0, var, k) {
            crashed += 1;
        } else {
            break; // it finished before reaching the point
        }
    }
    w.rmm(&["up", "--resume"]).ok();
    check_completed_once_on(&w.dir, on, &format!("{on:?} seed {seed}"), crashed);
}

fn seeded_chains(on: On, pinned: &[u64]) {
    let started = std::time::Instant::now();
    two_at_a_time(seeds("RMM_CRASH_SEED", pinned), |seed| chain(on, seed));
    eprintln!("seeded crash chains on {on:?} in {:.0?}", started.elapsed());
}

#[test]
fn seeded_crash_chains_on_rke2_crash_the_resumes_too_and_still_complete() {
    seeded_chains(On::Local(Kind::Rke2), &[1, 2, 3, 4, 5, 6]);
}

#[test]
fn seeded_crash_chains_on_rke1_crash_the_resumes_too_and_still_complete() {
    seeded_chains(On::Local(Kind::Rke1), &[1, 2, 3, 4, 5, 6]);
}

#[test]
fn seeded_crash_chains_on_docker_machine_crash_the_resumes_too_and_still_complete() {
    seeded_chains(On::DockerMachine, &[1, 2, 3]);
}

#[test]
fn seeded_crash_chains_on_ssh_crash_the_resumes_too_and_still_complete() {
    seeded_chains(On::Ssh, &[1, 2, 3]);
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
