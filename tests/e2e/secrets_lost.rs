//! `secrets.json` lost mid-run (issue 7, item 8): the resume says exactly
//! what is lost and what the user can do, before it records or does
//! anything; `rmm down` works without the file.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::*;

/// A run SIGKILLed once its API token exists (nodes never show up in
/// Rancher on rke1, never get to `Running` on rke2, so the run waits
/// there): the admin password, the CA, the API token and the node command
/// are all in `secrets.json` by then.
fn run_killed_after_the_api_token(dir: &TestDir) {
    let mut child = dir
        .rmm(&["up", "--masters", "1", "--workers", "1"])
        .env("RMM_LOCAL_NODE_READY_MS", "600000")
        .env("RMM_LOCAL_PLANNER_MS", "600000")
        .cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let events = dir.events_while_running();
        let has = |step: &str| events.iter().any(|e| e["kind"] == "StepSucceeded" && e["data"]["step"] == step);
        if has("create_api_token") && has("wait_node_command") {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "the run ended before its API token existed");
        assert!(Instant::now() < deadline, "no API token within 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// What a resume of `kind` cannot do without: on rke1 the API token and
/// the node command as well (rke2 makes a new token after a new login and
/// reads the command fresh from Rancher before each node).
fn a_resume_without_secrets_json_names_what_is_lost_changes_nothing_and_down_still_works(kind: Kind) {
    let dir = TestDir::on(kind);
    run_killed_after_the_api_token(&dir);
    let run = dir.status()["run"]["id"].as_str().unwrap().to_string();
    let secrets = dir.state().join("secrets.json");
    std::fs::remove_file(&secrets).unwrap();
    let before = dir.events().len();

    let out = dir.rmm(&["up", "--resume"]).code(2);
    let line = single_stderr_line(&out);
    assert_eq!(
        line,
        format!(
            "rmm: {} of run {run} are lost \
             ({} is missing): Rancher cannot give them back, so this run cannot continue; \
             `rmm down` removes its machines (it needs no secret), then `rmm up` starts a new run",
            match kind {
                Kind::Rke1 => "the admin password, the pinned CA, the API token and the node command",
                Kind::Rke2 => "the admin password and the pinned CA",
            },
            secrets.display()
        )
    );
    assert_eq!(dir.events().len(), before, "a refused resume records nothing");
    assert!(!secrets.exists(), "and writes no new secrets");
    // `credentials` says the same, not "Rancher has not been started".
    let line = single_stderr_line(&dir.rmm(&["credentials"]).code(2));
    assert!(line.starts_with(&format!("rmm: the admin password of run {run} is lost")) && line.contains("rmm down"), "{line}");

    // `rmm down` needs no secret.
    let out = dir.rmm(&["down"]).ok();
    assert!(text(&out.stdout).contains("Removed 3 machines"), "{}", text(&out.stdout));
    let status = dir.status_refresh();
    assert_eq!(status["run"]["state"], "completed");
    assert!(status["actors"].as_array().unwrap().iter().all(|a| a["observed"] == "absent"), "{status}");
    // And a new run starts.
    dir.up_ok(&["--masters", "1", "--workers", "1"]);
}

#[test]
fn a_resume_on_rke2_without_secrets_json_names_what_is_lost_changes_nothing_and_down_still_works() {
    a_resume_without_secrets_json_names_what_is_lost_changes_nothing_and_down_still_works(Kind::Rke2);
}

#[test]
fn a_resume_on_rke1_without_secrets_json_names_what_is_lost_changes_nothing_and_down_still_works() {
    a_resume_without_secrets_json_names_what_is_lost_changes_nothing_and_down_still_works(Kind::Rke1);
}

/// RKE1: there the API token is needed from the store, so a stale one is
/// named (rke2 makes a new one).
#[test]
fn a_resume_on_rke1_with_secrets_json_holding_other_values_is_refused_too() {
    let dir = TestDir::on(Kind::Rke1);
    run_killed_after_the_api_token(&dir);
    let run = dir.status()["run"]["id"].as_str().unwrap().to_string();
    let secrets = dir.state().join("secrets.json");
    // An older copy: the same names, other values (the bootstrap password
    // is no longer needed once the admin password changed).
    let mut map: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&std::fs::read(&secrets).unwrap()).unwrap();
    for key in ["admin-password", "api-token"] {
        map.insert(format!("{run}/{key}"), "stale-value".into());
    }
    std::fs::write(&secrets, serde_json::to_vec(&map).unwrap()).unwrap();
    let line = single_stderr_line(&dir.rmm(&["up", "--resume"]).code(2));
    assert!(
        line.starts_with(&format!("rmm: the admin password and the API token of run {run} are lost ({} does not hold them as the log records them)", secrets.display())),
        "{line}"
    );
    dir.rmm(&["down"]).ok();
}

/// Lost before the password change: the bootstrap password the server
/// started with is what is gone.
#[test]
fn a_resume_that_lost_the_bootstrap_password_names_it() {
    let dir = TestDir::new();
    let mut child = dir
        .rmm(&["up", "--masters", "1", "--workers", "1"])
        .env("RMM_LOCAL_RANCHER_BOOT_MS", "600000")
        .cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !dir.events_while_running().iter().any(|e| e["kind"] == "StepSucceeded" && e["data"]["step"] == "start_server") {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before the server started");
        assert!(Instant::now() < deadline, "no server within 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let run = dir.status()["run"]["id"].as_str().unwrap().to_string();
    std::fs::remove_file(dir.state().join("secrets.json")).unwrap();
    let line = single_stderr_line(&dir.rmm(&["up", "--resume"]).code(2));
    assert!(line.starts_with(&format!("rmm: the bootstrap password of run {run} is lost (")), "{line}");
    dir.rmm(&["down"]).ok();
}
