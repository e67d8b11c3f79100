use crate::support::*;

/// The whole job: Rancher + 3 masters + 3 workers, as the emulator sees it.
#[test]
fn fresh_up_builds_an_active_cluster_of_three_masters_and_three_workers() {
    let dir = TestDir::new();
    let out = dir.up_ok(&[]);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("Rancher: https://"), "{stdout}");
    assert!(stdout.contains("rmm credentials"), "the password is not printed, its command is: {stdout}");

    let status = dir.status();
    assert_eq!(status["run"]["state"], "completed");
    assert_eq!(status["rancher"]["cluster_state"], "active");
    assert_eq!(status["actors"].as_array().unwrap().len(), 7);
    assert!(status["actors"].as_array().unwrap().iter().all(|a| a["state"] == "done"), "{status}");

    let rancher = ask_rancher(&dir);
    assert_eq!(rancher.clusters.len(), 1);
    assert_eq!(rancher.clusters[0]["state"], "active");
    assert_eq!(rancher.clusters[0]["name"], "tinysetup");
    assert_eq!(rancher.nodes.len(), 6);
    assert!(rancher.nodes.iter().all(|n| n["state"] == "active"), "{:?}", rancher.nodes);
    let masters: Vec<_> = rancher.nodes.iter().filter(|n| n["etcd"] == true && n["controlPlane"] == true && n["worker"] == false).collect();
    let workers: Vec<_> = rancher.nodes.iter().filter(|n| n["etcd"] == false && n["controlPlane"] == false && n["worker"] == true).collect();
    assert_eq!((masters.len(), workers.len()), (3, 3));

    // A second `up` says the run completed and changes nothing.
    let again = dir.rmm(&["up"]).ok();
    assert!(text(&again.stdout).contains("completed"));
}

/// RKE1's rule (README): one master at a time, workers after them. On
/// rke2/k3s every node registers as soon as the command is ready.
#[test]
fn on_rke1_masters_join_one_at_a_time_and_workers_after_them() {
    let dir = TestDir::on(Kind::Rke1);
    dir.up_ok(&[]);
    let events = dir.events();
    let seq_of = |actor: &str, kind: &str, step: &str| {
        events
            .iter()
            .find(|e| e["actor"] == actor && e["kind"] == kind && e["data"]["step"] == step)
            .map(|e| e["seq"].as_u64().unwrap())
            .unwrap_or_else(|| panic!("{actor} {kind} {step}"))
    };
    for (prev, next) in [("master01", "master02"), ("master02", "master03")] {
        assert!(seq_of(prev, "StepSucceeded", "wait_node_listed") < seq_of(next, "StepStarted", "run_agent"));
    }
    for w in ["worker01", "worker02", "worker03"] {
        assert!(seq_of("master03", "StepSucceeded", "wait_node_listed") < seq_of(w, "StepStarted", "run_agent"));
    }
}

#[test]
fn secrets_stay_out_of_the_log_status_and_errors() {
    let dir = TestDir::new();
    dir.up_ok(&["--masters", "1", "--workers", "1"]);
    let creds = dir.credentials();
    let password = creds["password"].as_str().unwrap().to_string();
    assert!(password.len() >= 16);
    let secrets: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.state().join("secrets.json")).unwrap()).unwrap();
    let log = text(&dir.rmm(&["log", "--json"]).ok().stdout) + &text(&dir.rmm(&["log"]).ok().stdout);
    let status = text(&dir.rmm(&["status", "--json"]).ok().stdout);
    for (name, value) in secrets.as_object().unwrap() {
        let value = value.as_str().unwrap();
        if name.ends_with("rancher-ca") {
            continue;
        }
        // The node command's secret is the registration token after `--token`.
        let secret = if name.ends_with("node-command") {
            let words: Vec<&str> = value.split_whitespace().collect();
            let i = words.iter().position(|w| *w == "--token").expect("a --token in the node command");
            words[i + 1]
        } else {
            value
        };
        assert!(secret.len() >= 12, "{name} is a real secret");
        assert!(!log.contains(secret), "{name} leaks into rmm log");
        assert!(!status.contains(secret), "{name} leaks into rmm status");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.state().join("secrets.json")).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "secrets file is owner-only");
}

#[test]
fn every_intent_has_exactly_one_outcome_and_every_event_names_its_cause() {
    let dir = TestDir::new();
    dir.up_ok(&["--masters", "1", "--workers", "1"]);
    let events = dir.events();
    assert_intents_closed(&events);
    let ids: std::collections::HashSet<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    for e in &events[1..] {
        let cause = e["cause"].as_str().unwrap_or_else(|| panic!("no cause: {e}"));
        assert!(ids.contains(cause), "cause of seq {} is not in the log", e["seq"]);
    }
    let fields = ["seq", "id", "run", "attempt", "actor", "kind", "cause", "at", "data", "hash"];
    for e in &events {
        let keys: Vec<&str> = e.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        assert_eq!(keys.len(), fields.len(), "{e}");
        assert!(fields.iter().all(|f| keys.contains(f)));
    }
}

/// Every `StepStarted` is followed by exactly one outcome of that actor's step.
pub fn assert_intents_closed(events: &[serde_json::Value]) {
    let mut open: std::collections::HashMap<(String, String), u64> = Default::default();
    for e in events {
        let key = (e["actor"].as_str().unwrap().to_string(), e["data"]["step"].as_str().unwrap_or("").to_string());
        match e["kind"].as_str().unwrap() {
            "StepStarted" => {
                assert!(open.insert(key.clone(), e["seq"].as_u64().unwrap()).is_none(), "two intents without outcome: {key:?}");
            }
            "StepSucceeded" | "StepFailed" | "StepInterrupted" => {
                assert!(open.remove(&key).is_some(), "outcome without intent at seq {}", e["seq"]);
            }
            _ => {}
        }
    }
    assert!(open.is_empty(), "intents without outcome: {open:?}");
}

#[test]
fn replay_to_a_seq_shows_the_state_at_that_event() {
    let dir = TestDir::new();
    dir.up_ok(&["--masters", "1", "--workers", "1"]);
    let events = dir.events();
    let created = events
        .iter()
        .find(|e| e["actor"] == "rancher" && e["kind"] == "StepSucceeded" && e["data"]["step"] == "create_cluster")
        .unwrap()["seq"]
        .as_u64()
        .unwrap();
    let then = json(&dir.rmm(&["replay", "--to", &created.to_string(), "--json"]).ok().stdout);
    assert_eq!(then["rancher"]["cluster_state"], "provisioning");
    assert_eq!(then["run"]["last_seq"], created);
    let master = then["actors"].as_array().unwrap().iter().find(|a| a["name"] == "master01").unwrap().clone();
    assert_ne!(master["state"], "done");
    let end = json(&dir.rmm(&["replay", "--json"]).ok().stdout);
    assert_eq!(end["rancher"]["cluster_state"], "active");
    dir.rmm(&["replay", "--to", "100000"]).code(2);
}
