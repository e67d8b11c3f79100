//! The rke2/k3s path (Rancher's v1 API) end to end, and rke1 beside it:
//! full runs as the emulator's `/v1` API sees them, each injected failure
//! ending its step in seconds with its reason, a token renewed mid-run,
//! the planner's messages in the log, and the refusals made before
//! anything is created. Every test names its distribution and Rancher
//! image (the defaults are not what these tests are about).

use std::collections::BTreeMap;

use serde_json::Value;

use crate::support::*;
use crate::up::assert_intents_closed;

const RKE2: &str = "distribution = \"rke2\"\nrancher_image = \"rancher/rancher:v2.15.1\"\n";
const K3S: &str = "distribution = \"k3s\"\nrancher_image = \"rancher/rancher:v2.15.1\"\n";
const RKE1: &str = "distribution = \"rke1\"\nrancher_image = \"rancher/rancher:v2.11.3\"\n";

/// The default timeouts, written out: a failure that shows must end its
/// wait long before any of them.
const LONG_TIMEOUTS: &str = "[timeouts]\nnode_command_s = 300\nnode_listed_s = 600\nactive_s = 1800\n";

fn dir_with(config: &str) -> TestDir {
    let t = TestDir::new();
    std::fs::write(t.tmp.path().join("rmm.toml"), config).unwrap();
    t
}

/// Milliseconds since the epoch of the log's `at` (`2026-12-01T15:40:43.969Z`).
fn at_ms(e: &Value) -> i64 {
    let at = e["at"].as_str().unwrap_or_else(|| panic!("no at: {e}"));
    let (date, time) = at.trim_end_matches('Z').split_once('T').unwrap();
    let d: Vec<i64> = date.split('-').map(|p| p.parse().unwrap()).collect();
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms.split(':').map(|p| p.parse().unwrap()).collect();
    // days from the civil date (Howard Hinnant's algorithm)
    let (y, m) = if d[1] <= 2 { (d[0] - 1, d[1] + 9) } else { (d[0], d[1] - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let days = era * 146097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719468;
    let ms: i64 = format!("{frac:0<3}")[..3].parse().unwrap();
    ((days * 24 + t[0]) * 60 + t[1]) * 60_000 + t[2] * 1000 + ms
}

fn cond(o: &Value, ty: &str) -> String {
    o["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == ty))
        .map(|c| c["status"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

/// A full `up`, and what the emulator's `/v1` API says of it: one ready
/// cluster as Rancher's own tests define ready, its management cluster
/// Ready, six Running machines with a nodeRef and the right roles.
fn full_v1_up(config: &str, version_marker: &str) {
    let t = dir_with(config);
    t.up_ok(&[]);
    let status = t.status();
    assert_eq!(status["run"]["state"], "completed", "{status}");
    assert_intents_closed(&t.events());

    let r = ask_rancher_v1(&t);
    assert_eq!(r.clusters.len(), 1, "one v1 cluster: {:?}", r.clusters);
    let c = &r.clusters[0];
    assert_eq!(c["metadata"]["name"], "tinysetup");
    assert_eq!(c["status"]["ready"], true, "{c}");
    assert_eq!(c["status"]["observedGeneration"], c["metadata"]["generation"], "{c}");
    assert_eq!((cond(c, "Ready"), cond(c, "Provisioned")), ("True".into(), "True".into()), "{c}");
    let version = c["spec"]["kubernetesVersion"].as_str().unwrap_or_default();
    assert!(version.starts_with("v1.") && version.contains(version_marker), "a {version_marker} version: {version}");
    let mgmt_id = c["status"]["clusterName"].as_str().expect("status.clusterName");
    assert!(mgmt_id.starts_with("c-m-"), "{mgmt_id}");
    let m = r.management.iter().find(|m| m["id"] == mgmt_id).unwrap_or_else(|| panic!("management cluster {mgmt_id}"));
    assert_eq!(cond(m, "Ready"), "True", "{m}");

    assert_eq!(r.machines.len(), 6, "{:?}", r.machines);
    let mut roles = BTreeMap::new();
    for m in &r.machines {
        assert_eq!(m["status"]["phase"], "Running", "{m}");
        assert_eq!(m["metadata"]["labels"]["cluster.x-k8s.io/cluster-name"], "tinysetup", "{m}");
        let node = m["status"]["nodeRef"]["name"].as_str().unwrap_or_else(|| panic!("a nodeRef: {m}")).to_string();
        let label = |l: &str| m["metadata"]["labels"][l] == "true";
        let r = (label("rke.cattle.io/etcd-role"), label("rke.cattle.io/control-plane-role"), label("rke.cattle.io/worker-role"));
        assert!(roles.insert(node, r).is_none(), "one machine per node");
    }
    let want: BTreeMap<String, (bool, bool, bool)> = ["master01", "master02", "master03"]
        .iter()
        .map(|n| (n.to_string(), (true, true, false)))
        .chain(["worker01", "worker02", "worker03"].iter().map(|n| (n.to_string(), (false, false, true))))
        .collect();
    assert_eq!(roles, want, "3 etcd+controlplane, 3 worker, by node name");
}

#[test]
fn rke2_on_rancher_2_15_makes_one_ready_cluster_of_six_running_machines() {
    full_v1_up(RKE2, "+rke2");
}

#[test]
fn k3s_on_rancher_2_15_makes_one_ready_k3s_cluster_of_six_running_machines() {
    full_v1_up(K3S, "+k3s");
}

#[test]
fn rke1_on_rancher_2_11_makes_an_active_cluster_of_six_active_nodes() {
    let t = dir_with(RKE1);
    t.up_ok(&[]);
    assert_eq!(t.status()["run"]["state"], "completed");
    let r = ask_rancher(&t);
    assert_eq!(r.clusters.len(), 1);
    assert_eq!(r.clusters[0]["state"], "active");
    assert_eq!(r.nodes.len(), 6);
    assert!(r.nodes.iter().all(|n| n["state"] == "active"), "{:?}", r.nodes);
    let masters = r.nodes.iter().filter(|n| n["etcd"] == true && n["controlPlane"] == true && n["worker"] == false).count();
    let workers = r.nodes.iter().filter(|n| n["etcd"] == false && n["controlPlane"] == false && n["worker"] == true).count();
    assert_eq!((masters, workers), (3, 3));
    // rke1 ran the v3 steps, never the v1 ones
    let steps: Vec<String> = t.events().iter().filter_map(|e| e["data"]["step"].as_str().map(String::from)).collect();
    assert!(steps.iter().any(|s| s == "create_registration_token") && !steps.iter().any(|s| s == "wait_cluster_ready"));
}

// ---------------------------------------------------------------- failures in seconds

/// `rmm up` with `env` fails (exit 1) with one `rmm:` line; the step that
/// failed, and how long its try took by the log, plus the whole log.
struct Failed {
    line: String,
    event: Value,
    took_ms: i64,
    run_ms: i64,
    events: Vec<Value>,
}

fn up_fails(t: &TestDir, env: &[(&str, &str)]) -> Failed {
    let mut cmd = t.rmm(&["up"]);
    for (k, v) in env {
        cmd = cmd.env(k, v);
    }
    let out = cmd.code(1);
    let stderr = text(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("rmm:")).collect();
    assert_eq!(lines.len(), 1, "one rmm: line: {stderr}");
    let events = t.events();
    assert_intents_closed(&events);
    let event = events
        .iter()
        .find(|e| e["kind"] == "StepFailed" && e["data"]["retryable"] == false)
        .unwrap_or_else(|| panic!("a step that gave up: {stderr}"))
        .clone();
    let started = events
        .iter()
        .rev()
        .find(|e| {
            e["kind"] == "StepStarted"
                && e["actor"] == event["actor"]
                && e["data"]["step"] == event["data"]["step"]
                && e["seq"].as_u64() < event["seq"].as_u64()
        })
        .unwrap();
    let run_start = events.iter().find(|e| e["kind"] == "RunStarted").unwrap();
    Failed {
        line: lines[0].to_string(),
        took_ms: at_ms(&event) - at_ms(started),
        run_ms: at_ms(events.last().unwrap()) - at_ms(run_start),
        event,
        events,
    }
}

/// The failure came in seconds: well under every wait's timeout (the
/// shortest one of the waits concerned is 300 s).
fn assert_fast(f: &Failed) {
    assert!(f.took_ms < 30_000, "the failing try took {} ms: {}", f.took_ms, f.event);
    assert!(f.run_ms < 60_000, "the run took {} ms to fail", f.run_ms);
}

#[test]
fn an_agent_that_dies_after_a_clean_installer_fails_its_node_in_seconds_with_the_nodes_evidence() {
    let t = dir_with(&format!("{RKE2}{LONG_TIMEOUTS}"));
    let f = up_fails(&t, &[("RMM_LOCAL_AGENT_FAIL", "worker02")]);
    assert_fast(&f);
    assert_eq!((f.event["actor"].as_str(), f.event["data"]["step"].as_str()), (Some("worker02"), Some("run_agent")), "{}", f.event);
    let error = f.event["data"]["error"].as_str().unwrap();
    for evidence in [
        "did not register",
        "the installer exited 0",
        // the installer's own output
        "Successfully downloaded Rancher connection information",
        // the service's status and its log tail
        "Active: failed",
        "[FATAL]",
        "status=1/FAILURE",
    ] {
        assert!(error.contains(evidence), "{evidence:?} missing from: {error}");
    }
    assert!(f.line.contains("worker02") && f.line.contains("did not register"), "{}", f.line);
    // secrets redacted: the registration token of the node command is in
    // the state dir, and nowhere in the log or on stderr
    let secrets: Value = serde_json::from_slice(&std::fs::read(t.state().join("secrets.json")).unwrap()).unwrap();
    let command = secrets.as_object().unwrap().iter().find(|(k, _)| k.ends_with("node-command")).unwrap().1.as_str().unwrap().to_string();
    let words: Vec<&str> = command.split_whitespace().collect();
    let token = words[words.iter().position(|w| *w == "--token").unwrap() + 1];
    assert!(token.len() >= 12);
    let log = text(&t.rmm(&["log", "--json", "--all-runs"]).ok().stdout);
    assert!(!log.contains(token) && !f.line.contains(token), "the registration token leaked");
    // the other nodes went on: only worker02 failed
    assert_eq!(f.events.iter().filter(|e| e["kind"] == "StepFailed" && e["data"]["retryable"] == false).count(), 1);
}

#[test]
fn a_cluster_error_ends_the_clusters_wait_in_seconds_with_its_message() {
    let t = dir_with(&format!("{RKE2}{LONG_TIMEOUTS}"));
    let f = up_fails(&t, &[("RMM_LOCAL_CLUSTER_ERROR", "etcd quorum lost on the init node")]);
    assert_fast(&f);
    assert_eq!((f.event["actor"].as_str(), f.event["data"]["step"].as_str()), (Some("rancher"), Some("wait_cluster_ready")), "{}", f.event);
    assert!(f.event["data"]["error"].as_str().unwrap().contains("etcd quorum lost on the init node"), "{}", f.event);
    assert!(f.line.contains("etcd quorum lost on the init node"), "{}", f.line);
}

#[test]
fn a_machine_error_ends_its_nodes_wait_in_seconds_with_its_message() {
    let t = dir_with(&format!("{K3S}{LONG_TIMEOUTS}"));
    let f = up_fails(&t, &[("RMM_LOCAL_MACHINE_ERROR", "worker01:no space left on device")]);
    assert_fast(&f);
    // the error shows once the planner starts: while the machine is being
    // listed or while it is awaited Running
    assert_eq!(f.event["actor"], "worker01", "{}", f.event);
    assert!(["wait_node_listed", "wait_machine_running"].contains(&f.event["data"]["step"].as_str().unwrap()), "{}", f.event);
    assert!(f.event["data"]["error"].as_str().unwrap().contains("no space left on device"), "{}", f.event);
    assert!(f.line.contains("worker01") && f.line.contains("no space left on device"), "{}", f.line);
}

// ---------------------------------------------------------------- credentials over time

#[test]
fn an_api_token_that_expires_mid_run_is_renewed_once_per_expiry_and_the_run_completes() {
    let t = dir_with(RKE2);
    t.rmm(&["up"]).env("RMM_LOCAL_TOKEN_TTL_MS", "1500").env("RMM_LOCAL_PLANNER_MS", "500").ok();
    assert_eq!(t.status()["run"]["state"], "completed");
    let events = t.events();
    let run = events[0]["run"].as_str().unwrap().to_string();
    let renewed: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "Progress" && e["data"]["message"].as_str().unwrap().contains("refused the run's API token"))
        .collect();
    let renewals: Vec<String> =
        renewed.iter().map(|e| e["data"]["message"].as_str().unwrap().rsplit(' ').next().unwrap().to_string()).collect();
    assert!(!renewals.is_empty(), "the token expired during a 4 s run and was renewed");
    // once per expiry: a token made lives its 1.5 s before the next 401
    // (each actor renewing on its own made six within milliseconds)
    for pair in renewed.windows(2) {
        let gap = at_ms(pair[1]) - at_ms(pair[0]);
        assert!(gap >= 1000, "two renewals {gap} ms apart: {renewals:?}");
    }
    // `rmm log` shows them
    let log = text(&t.rmm(&["log"]).ok().stdout);
    assert!(log.contains("logged in again and made API token"), "{log}");

    let r = ask_rancher_v1(&t);
    let ours: Vec<&Value> = r.tokens.iter().filter(|k| k["description"] == format!("rmm run {run}")).collect();
    // one token at the start and one per renewal: every actor met the same
    // 401, one renewed and the others used its token
    assert_eq!(ours.len(), 1 + renewals.len(), "renewals {renewals:?}, tokens {ours:?}");
    assert!(ours.iter().filter(|k| k["expired"] == false).count() <= 1, "at most one live token of the run: {ours:?}");
    // the state dir holds the last one
    let secrets: Value = serde_json::from_slice(&std::fs::read(t.state().join("secrets.json")).unwrap()).unwrap();
    let held = secrets.as_object().unwrap().iter().find(|(k, _)| k.ends_with("api-token")).unwrap().1.as_str().unwrap();
    assert!(held.starts_with(&format!("{}:", renewals.last().unwrap())), "the run holds the newest token");
}

// ---------------------------------------------------------------- the planner's messages

#[test]
fn a_slow_planners_messages_are_recorded_each_change_once_and_rmm_log_shows_them() {
    let t = dir_with(RKE2);
    t.rmm(&["up", "--masters", "1", "--workers", "1"])
        .env("RMM_LOCAL_PLANNER_MS", "300")
        .env("RMM_LOCAL_SLOW_CONTROLLER_MS", "200")
        .ok();
    let events = t.events();
    let progress: Vec<&Value> = events.iter().filter(|e| e["kind"] == "Progress").collect();
    let of = |actor: &str, step: &str| -> Vec<String> {
        progress
            .iter()
            .filter(|e| e["actor"] == actor && e["data"]["step"] == step)
            .map(|e| e["data"]["message"].as_str().unwrap().to_string())
            .collect()
    };
    let cluster = of("rancher", "wait_cluster_ready");
    let master = of("master01", "wait_machine_running");
    assert!(cluster.iter().any(|m| m.contains("waiting for at least one control plane, etcd, and worker node to be registered")), "{cluster:?}");
    assert!(cluster.iter().any(|m| m.contains("waiting for probes: ")), "{cluster:?}");
    assert!(master.iter().any(|m| m.contains("waiting for probes: ")), "{master:?}");
    // each change once: never the same message twice in a row of one wait
    for (actor, step) in [("rancher", "wait_cluster_ready"), ("master01", "wait_machine_running"), ("worker01", "wait_machine_running")] {
        let seen = of(actor, step);
        assert!(seen.windows(2).all(|w| w[0] != w[1]), "{actor} {step} repeats: {seen:?}");
    }
    // a 500 ms planner step polled every 50 ms: without "once" each would be there ~10 times
    assert!(cluster.len() < 12, "{cluster:?}");
    let log = text(&t.rmm(&["log"]).ok().stdout);
    let shown = log.lines().filter(|l| l.contains("Progress") && l.contains("waiting for probes")).count();
    assert!(shown >= 2, "rmm log shows the planner's messages:\n{log}");
}

// ---------------------------------------------------------------- refusals

#[test]
fn rke1_against_rancher_2_15_is_refused_before_any_machine_is_made() {
    let t = dir_with("distribution = \"rke1\"\nrancher_image = \"rancher/rancher:v2.15.1\"\n");
    let out = t.rmm(&["up"]).code(2);
    let line = single_stderr_line(&out);
    assert!(line.starts_with("rmm: ") && line.contains("2.12 removed RKE1"), "why: {line}");
    assert!(line.contains("--distribution rke2") && line.contains("2.11 or older"), "what instead: {line}");
    // nothing made: no machine (not even Rancher's: the tag says its version)
    let machines = t.state().join("world").join("machines");
    let made: Vec<_> = std::fs::read_dir(&machines).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(made.is_empty(), "machines made: {made:?}");
    assert!(!t.state().join("events").exists(), "no run recorded");
    // the flag too
    let out = t.rmm(&["up", "--distribution", "rke1"]).code(2);
    assert!(single_stderr_line(&out).contains("cannot make an rke1 cluster"));
}

#[test]
fn rke1_against_an_image_tag_that_names_no_version_is_refused_by_rancherversion_before_anything_is_made_in_rancher() {
    // `latest` says nothing: the server's /rancherversion (2.15 here) decides
    let t = dir_with("distribution = \"rke1\"\nrancher_image = \"rancher/rancher:latest\"\n");
    let out = t.rmm(&["up"]).code(2);
    let stderr = text(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("rmm:")).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("cannot make an rke1 cluster") && lines[0].contains("--distribution rke2"), "{}", lines[0]);
    let events = t.events();
    let steps: Vec<&str> = events.iter().filter(|e| e["kind"] == "StepStarted").filter_map(|e| e["data"]["step"].as_str()).collect();
    for made_in_rancher in ["login", "change_password", "create_api_token", "set_server_url", "create_cluster"] {
        assert!(!steps.contains(&made_in_rancher), "{made_in_rancher} ran: {steps:?}");
    }
}

#[test]
fn a_kubernetes_version_the_server_does_not_offer_is_refused_with_the_list_it_offers() {
    let t = dir_with(RKE2);
    let out = t.rmm(&["up", "--kubernetes-version", "v1.20.15+rke2r1"]).code(2);
    let stderr = text(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("rmm:")).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    let line = lines[0];
    assert!(line.contains("v1.20.15+rke2r1 is not offered"), "{line}");
    let offered: Vec<&str> = line.split("it offers: ").nth(1).unwrap_or_else(|| panic!("the list: {line}")).split(", ").collect();
    assert!(offered.len() >= 2 && offered.iter().all(|v| v.starts_with("v1.") && v.contains("+rke2r")), "{offered:?}");
    // the list is the server's own: its default is on it
    let events = t.events();
    assert!(!events.iter().any(|e| e["data"]["step"] == "create_cluster"), "no cluster asked for");
    // and a version on the list is taken
    let t2 = dir_with(RKE2);
    let pick = offered[0].to_string();
    t2.up_ok(&["--masters", "1", "--workers", "1", "--kubernetes-version", &pick]);
    let r = ask_rancher_v1(&t2);
    assert_eq!(r.clusters[0]["spec"]["kubernetesVersion"], pick.as_str());
}

// ---------------------------------------------------------------- exactly once on resume

/// `rmm up` aborted right after its `k`-th side effect, before its outcome
/// was recorded: the (actor, step) intents left open (the one whose effect
/// happened, and any in flight beside it), if it aborted.
fn crash_after_effect(t: &TestDir, k: u64) -> Option<Vec<(String, String)>> {
    let out = t.rmm(&["up"]).env("RMM_CRASH_BEFORE_OUTCOME", &k.to_string()).run();
    if out.status.success() {
        return None;
    }
    let mut open = std::collections::BTreeSet::new();
    for e in t.events() {
        let key = (e["actor"].as_str().unwrap().to_string(), e["data"]["step"].as_str().unwrap_or("").to_string());
        match e["kind"].as_str().unwrap() {
            "StepStarted" => {
                open.insert(key);
            }
            "StepSucceeded" | "StepFailed" => {
                open.remove(&key);
            }
            _ => {}
        }
    }
    Some(open.into_iter().collect())
}

fn node_of(m: &Value) -> String {
    m["metadata"]["labels"]["rke.cattle.io/node-name"].as_str().unwrap_or_default().to_string()
}

#[test]
fn a_v1_cluster_made_by_a_try_whose_outcome_was_lost_is_adopted_not_made_twice() {
    // effects before it: 7 machines, start_server, check_server, login,
    // change_password, create_api_token, set_server_url: it is about the
    // 14th; the crash point is searched near there
    let mut tried = Vec::new();
    let t = (13..=17)
        .find_map(|k| {
            let t = dir_with(RKE2);
            let open = crash_after_effect(&t, k);
            let lost = open.as_ref().is_some_and(|o| o.contains(&("rancher".into(), "create_cluster".into())));
            tried.push((k, open));
            lost.then_some(t)
        })
        .unwrap_or_else(|| panic!("no crash point lost create_cluster's outcome: {tried:?}"));
    // the cluster exists in Rancher; the log does not know it
    assert_eq!(ask_rancher_v1(&t).clusters.len(), 1, "the lost try made it");
    t.rmm(&["up", "--resume"]).ok();
    let r = ask_rancher_v1(&t);
    assert_eq!(r.clusters.len(), 1, "adopted, not made twice: {:?}", r.clusters);
    assert_eq!(r.machines.len(), 6);
    let events = t.events();
    assert_intents_closed(&events);
    let made = events.iter().filter(|e| e["kind"] == "StepSucceeded" && e["actor"] == "rancher" && e["data"]["step"] == "create_cluster");
    assert_eq!(made.count(), 1);
}

#[test]
fn a_node_rancher_already_lists_does_not_run_the_installer_again_on_resume() {
    // after create_cluster (about the 14th effect) come the six installers;
    // a crash there leaves run_agent intents open, some of whose machines
    // Rancher lists already
    let mut tried = Vec::new();
    let (t, listed) = (15..=22)
        .find_map(|k| {
            let t = dir_with(RKE2);
            let open = crash_after_effect(&t, k).unwrap_or_default();
            let agents: Vec<String> = open.iter().filter(|(_, s)| s == "run_agent").map(|(a, _)| a.clone()).collect();
            let listed: Vec<String> = if agents.is_empty() {
                Vec::new()
            } else {
                ask_rancher_v1(&t).machines.iter().map(node_of).filter(|n| agents.contains(n)).collect()
            };
            tried.push((k, open));
            (!listed.is_empty()).then_some((t, listed))
        })
        .unwrap_or_else(|| panic!("no crash point left a listed node's run_agent open: {tried:?}"));
    // the local agent logs each registration (`system-agent registered
    // machine=… node=… roles=…`) at info
    let resume = t.rmm(&["up", "--resume"]).env("RUST_LOG", "rmm=info").ok();
    let stderr = text(&resume.stderr);
    let events = t.events();
    for node in &listed {
        let resumed = events
            .iter()
            .find(|e| e["kind"] == "StepSucceeded" && e["actor"] == node.as_str() && e["data"]["step"] == "run_agent")
            .unwrap_or_else(|| panic!("{node}'s run_agent closed"));
        // Adopted by the resume's check; or, when the installer the crash
        // left running wrote its unit a moment after that check (seen in
        // CI under load), found installed by the step itself, which then
        // runs nothing (`v1::run_agent`): either way no second install.
        let via = resumed["data"]["via"].as_str().unwrap();
        assert!(via == "adopted" || via == "done", "{resumed}");
        if via == "done" {
            let checked = events.iter().any(|e| {
                e["kind"] == "StepFailed" && e["actor"] == node.as_str() && e["data"]["step"] == "run_agent"
                    && e["data"]["error"].as_str().is_some_and(|m| m.contains("not found in the world"))
            });
            assert!(checked, "{node}'s open intent was checked first: {resumed}");
        }
        let made: Vec<u64> = registrations(&t).made.iter().filter(|(k, _)| k.ends_with(&format!("/{node}"))).map(|(_, n)| *n).collect();
        assert_eq!(made, [1], "{node} registered once");
        assert!(
            !stderr.lines().any(|l| l.contains("system-agent registered") && l.contains(&format!("node={node} "))),
            "the installer ran again on {node}, which Rancher listed:\n{stderr}"
        );
    }
    let r = ask_rancher_v1(&t);
    assert_eq!(r.machines.len(), 6, "{:?}", r.machines);
    assert!(r.machines.iter().all(|m| m["status"]["phase"] == "Running"));
    assert_intents_closed(&events);
}

#[test]
fn an_agent_that_dies_after_it_registered_ends_its_machines_wait_in_seconds() {
    let t = dir_with(&format!("{RKE2}{LONG_TIMEOUTS}"));
    // a slow planner: the machines wait several seconds for Running
    let mut child = t.rmm(&["up", "--masters", "1", "--workers", "1"]).env("RMM_LOCAL_PLANNER_MS", "3000").cmd;
    let mut child = child.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let waiting = |t: &TestDir| {
        t.events_while_running()
            .iter()
            .any(|e| e["actor"] == "worker01" && e["kind"] == "StepStarted" && e["data"]["step"] == "wait_machine_running")
    };
    while !waiting(&t) {
        assert!(std::time::Instant::now() < deadline, "worker01 never waited for its machine");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // the agent's service dies on the node (what `systemctl` there reads)
    let agent = t.state().join("world/machines/worker01/rancher-system-agent");
    std::fs::write(agent.join("state"), "failed\n").unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1));
    let events = t.events();
    let failed = events
        .iter()
        .find(|e| e["kind"] == "StepFailed" && e["data"]["retryable"] == false)
        .unwrap_or_else(|| panic!("a step gave up"));
    assert_eq!((failed["actor"].as_str(), failed["data"]["step"].as_str()), (Some("worker01"), Some("wait_machine_running")), "{failed}");
    let error = failed["data"]["error"].as_str().unwrap();
    assert!(error.contains("agent stopped") && error.contains("Active: failed"), "{error}");
    let started = events
        .iter()
        .rev()
        .find(|e| e["kind"] == "StepStarted" && e["actor"] == "worker01" && e["data"]["step"] == "wait_machine_running")
        .unwrap();
    let took = at_ms(failed) - at_ms(started);
    assert!(took < 30_000, "seen {took} ms into a wait of up to 1800 s");
}
