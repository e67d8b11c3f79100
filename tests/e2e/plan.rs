//! `rmm plan` (issue 11): what `up` (or `up --resume`) would do, through
//! the real binary, without touching anything; exit 0 for no changes and
//! 2 for changes (`terraform plan -detailed-exitcode`).

use std::process::Command;

use serde_json::Value;

use crate::readers::{assert_same, fingerprint};
use crate::support::*;

fn plan(dir: &TestDir, args: &[&str], code: i32) -> Value {
    let mut all = vec!["plan", "--json"];
    all.extend_from_slice(args);
    json(&dir.rmm(&all).code(code).stdout)
}

fn names(v: &Value, key: &str) -> Vec<String> {
    v[key].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap().to_string()).collect()
}

#[test]
fn plan_says_what_up_would_make_and_remove_and_up_then_does_exactly_that() {
    let dir = TestDir::new();
    // Nothing yet: a new run would make every machine; nothing is made by asking.
    let p = plan(&dir, &["--masters", "1", "--workers", "1"], 2);
    assert_eq!(p["action"], "create");
    assert_eq!(names(&p, "add"), ["rancher", "master01", "worker01"]);
    assert!(!dir.state().exists(), "plan created the state dir");
    dir.rmm(&["up", "--masters", "1", "--workers", "1"]).ok();
    let p = plan(&dir, &[], 0);
    assert_eq!((p["action"].as_str(), p["changes"].as_bool()), (Some("none"), Some(false)), "{p}");
    let out = dir.rmm(&["plan"]).ok();
    assert!(text(&out.stdout).contains("No changes."), "{}", text(&out.stdout));
    let out = dir.rmm(&["plan", "--refresh"]).ok();
    assert!(text(&out.stdout).contains("No changes. (The driver was asked: no machine missing, no orphan.)"), "{}", text(&out.stdout));
    // A scale: the plan's adds are what `up` then makes.
    let p = plan(&dir, &["--workers", "3"], 2);
    assert_eq!(p["action"], "scale");
    assert_eq!(names(&p, "add"), ["worker02", "worker03"]);
    let before = fingerprint(&dir.state().join("events"));
    dir.rmm(&["plan", "--workers", "3", "--refresh"]).code(2);
    assert_same("rmm plan --refresh", &before, &fingerprint(&dir.state().join("events")));
    dir.rmm(&["up", "--workers", "3"]).ok();
    let made: Vec<String> = dir
        .events()
        .iter()
        .filter(|e| e["kind"] == "StepSucceeded" && e["data"]["step"] == "create_machine" && e["attempt"] == 2)
        .map(|e| e["actor"].as_str().unwrap().to_string())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(made, ["worker02", "worker03"]);
    // Removals in the order they go.
    let p = plan(&dir, &["--workers", "1"], 2);
    assert_eq!(names(&p, "remove"), ["worker03", "worker02"]);
    // A refusal `up` would give is given here, one line, exit 1 (its 2
    // means changes: a script tells them apart, as with terraform's
    // -detailed-exitcode); `up` refuses the same with exit 2.
    let out = dir.rmm(&["plan", "--masters", "5", "--cluster-name", "x"]).code(1);
    assert!(single_stderr_line(&out).contains("`rmm up` cannot change it to x"), "{}", text(&out.stderr));
    // --refresh: a machine gone behind rmm's back is drift.
    std::fs::remove_dir_all(dir.state().join("world/machines/worker03")).unwrap();
    let p = plan(&dir, &["--refresh"], 2);
    assert_eq!(p["drift"]["missing"], serde_json::json!(["worker03"]), "{p}");
    // …and a machine of the cluster the log does not know is an orphan.
    let machines = dir.state().join("world/machines");
    let copied = Command::new("cp").arg("-a").arg(machines.join("worker01")).arg(machines.join("worker09")).status().unwrap();
    assert!(copied.success());
    let record = machines.join("worker09/machine.json");
    let mut m: Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    m["name"] = "worker09".into();
    std::fs::write(&record, serde_json::to_vec(&m).unwrap()).unwrap();
    let p = plan(&dir, &["--refresh"], 2);
    assert_eq!(p["drift"]["orphans"], serde_json::json!(["worker09"]), "{p}");
    assert_eq!(p["drift"]["missing"], serde_json::json!(["worker03"]), "{p}");
    let out = dir.rmm(&["plan", "--refresh"]).code(2);
    assert!(text(&out.stdout).contains("worker09: the driver lists it for this cluster, the log does not know it (orphan)"), "{}", text(&out.stdout));
    // Without --refresh the world is not asked: no drift.
    let p = plan(&dir, &[], 0);
    assert_eq!(p["drift"]["orphans"], serde_json::json!([]), "{p}");
    std::fs::remove_dir_all(machines.join("worker09")).unwrap();
    let p = plan(&dir, &["--refresh"], 2);
    // Rancher registered it: `up` stops there rather than make it again,
    // and the plan says so instead of promising a plain run.
    assert_eq!(p["drift"]["missing_registered"], serde_json::json!(["worker03"]), "{p}");
    let shown = text(&dir.rmm(&["plan", "--refresh", "--workers", "4"]).code(2).stdout);
    assert!(shown.contains("`rmm up` would stop at worker03") && shown.contains("`rmm down`, then `rmm up`"), "{shown}");
    let up = dir.rmm(&["up", "--workers", "4"]).code(1);
    assert!(text(&up.stderr).contains("machine worker03 is gone"), "{}", text(&up.stderr));
    // It names one way on (down, then up), not a resume as well.
    let last = text(&up.stderr).lines().last().unwrap_or_default().to_string();
    assert!(last.contains("rmm down, then rmm up") && !last.contains("--resume"), "{last}");
    dir.rmm(&["down"]).ok();
}

#[test]
fn plan_after_a_crash_names_the_steps_to_resume_and_the_intents_in_doubt_and_writes_nothing() {
    let dir = TestDir::new();
    // A crash between an effect and its outcome: that intent is in doubt.
    let out = dir.rmm(&["up", "--masters", "1", "--workers", "1"]).env("RMM_CRASH_BEFORE_OUTCOME", "4").run();
    assert!(!out.status.success());
    // The log (the local world's emulator lives on beside it, and writes its own state).
    let before = fingerprint(&dir.state().join("events"));
    let p = plan(&dir, &["--resume"], 2);
    assert_eq!(p["action"], "resume", "{p}");
    assert!(!p["in_doubt"].as_array().unwrap().is_empty(), "{p}");
    assert!(!p["resume"].as_array().unwrap().is_empty(), "{p}");
    // Each in-doubt intent is one the log has without an outcome.
    let events = dir.events();
    for d in p["in_doubt"].as_array().unwrap() {
        let (actor, step) = (d["actor"].as_str().unwrap(), d["step"].as_str().unwrap());
        let last = events.iter().rev().find(|e| e["actor"] == actor && e["data"]["step"] == step).unwrap();
        assert_eq!(last["kind"], "StepStarted", "{actor} {step}: {last}");
    }
    let out = dir.rmm(&["plan"]).code(2);
    assert!(text(&out.stdout).contains("`rmm up --resume` does this"), "{}", text(&out.stdout));
    assert_same("rmm plan", &before, &fingerprint(&dir.state().join("events")));
    // On a read-only mount too (as `read_commands_work_on_a_read_only_mount`).
    if Command::new("unshare").args(["-m", "true"]).status().is_ok_and(|s| s.success()) {
        let state = dir.state().to_string_lossy().to_string();
        let script = r#"s="$1"; shift; mount --bind "$s" "$s" && mount -o remount,ro,bind "$s" "$s" && touch "$s/.probe" 2>/dev/null && { echo "rmm-test: still writable" >&2; exit 99; }; exec "$@""#;
        let out = Command::new("unshare")
            .args(["-m", "sh", "-c", script, "sh", &state, env!("CARGO_BIN_EXE_rmm"), "--state-dir", &state, "plan", "--json", "--resume"])
            .current_dir(dir.tmp.path())
            .env("RMM_PLAIN", "1")
            .env("XDG_STATE_HOME", dir.xdg())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "plan on a read-only mount: {}{}", text(&out.stdout), text(&out.stderr));
        assert_eq!(json(&out.stdout), p);
    } else {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "the read-only mount check needs `unshare -m`");
        eprintln!("SKIPPED (read-only mount part): needs `unshare -m`");
    }
    dir.rmm(&["up", "--resume"]).ok();
    plan(&dir, &[], 0);
}
