//! Create steps find what exists even with no intent on record (issue 7,
//! item 6b): the intent of `create_api_token` never reaches the log (the
//! process is killed while the shim holds its write), a token of the run
//! exists in Rancher anyway (made through the API, as the lost try would
//! have), and the resume ends with exactly one token of the run.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::shim::shim;
use crate::support::*;

/// Makes an API token described `description` through Rancher's API, as
/// the admin `rmm credentials` names.
fn make_token(dir: &TestDir, description: &str) {
    let creds = dir.credentials();
    // server-url is not set yet: the address the emulator listens on.
    let url = format!("https://{}", crate::outage::Emulator::find(dir).listen());
    let password = creds["password"].as_str().expect("password").to_string();
    let description = description.to_string();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let client = reqwest::Client::builder().danger_accept_invalid_certs(true).no_proxy().build().unwrap();
        let login: Value = client
            .post(format!("{url}/v3-public/localProviders/local?action=login"))
            .json(&serde_json::json!({"username": "admin", "password": password}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = login["token"].as_str().expect("a login token").to_string();
        let made = client
            .post(format!("{url}/v3/token"))
            .bearer_auth(token)
            .json(&serde_json::json!({"type": "token", "description": description, "ttl": 0}))
            .send()
            .await
            .unwrap();
        assert!(made.status().is_success(), "POST /v3/token: {}", made.status());
    });
}

#[test]
fn a_token_made_by_a_try_whose_intent_was_lost_is_found_and_the_run_has_exactly_one() {
    if shim().is_none() {
        return;
    }
    let dir = TestDir::new();
    let pause = dir.tmp.path().join("pause");
    let mut child = dir
        .rmm(&["up", "--masters", "1", "--workers", "1"])
        .env("LD_PRELOAD", shim().unwrap().to_str().unwrap())
        .env("RMM_SHIM_PAUSE_ON", "description \"rmm run ")
        .env("RMM_SHIM_PAUSE_FILE", pause.to_str().unwrap())
        .cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pause.exists() {
        assert!(Instant::now() < deadline, "the run never reached create_api_token");
        assert!(child.try_wait().unwrap().is_none(), "rmm ended before create_api_token");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Killed while its intent is being written: the log ends before it.
    child.kill().unwrap();
    child.wait().unwrap();
    let events = dir.events();
    assert!(
        !events.iter().any(|e| e["kind"] == "StepStarted" && e["data"]["step"] == "create_api_token"),
        "no intent of create_api_token on record"
    );
    let run = dir.status()["run"]["id"].as_str().unwrap().to_string();
    let description = format!("rmm run {run}");
    make_token(&dir, &description);

    dir.up_ok(&["--resume"]);
    let status = dir.status();
    assert_eq!(status["run"]["state"], "completed");
    let rancher = ask_rancher(&dir);
    let ours = rancher.tokens.iter().filter(|t| t["description"] == description.as_str()).count();
    assert_eq!(ours, 1, "exactly one API token of the run: {:?}", rancher.tokens);
    let events = dir.events();
    let tries = events.iter().filter(|e| e["kind"] == "StepStarted" && e["data"]["step"] == "create_api_token").count();
    assert_eq!(tries, 1, "one try, on the resume");
}
