use crate::support::*;

#[test]
fn a_machine_whose_create_fails_twice_is_retried_and_the_run_completes() {
    let dir = TestDir::new();
    dir.rmm(&["up", "--masters", "1", "--workers", "2"]).env("RMM_LOCAL_FAIL_CREATE", "worker02:2").ok();
    assert_eq!(dir.status()["run"]["state"], "completed");
    let events = dir.events();
    let failures: Vec<_> = events
        .iter()
        .filter(|e| e["actor"] == "worker02" && e["kind"] == "StepFailed" && e["data"]["step"] == "create_machine")
        .collect();
    assert_eq!(failures.len(), 2, "each failed try is an event");
    assert!(failures.iter().all(|f| f["data"]["retryable"] == true));
}

#[test]
fn a_permanent_create_failure_fails_the_run_with_its_cause_and_a_resume_after_the_fault_clears_completes() {
    let dir = TestDir::new();
    let out = dir.rmm(&["up", "--masters", "1", "--workers", "1"]).env("RMM_LOCAL_FAIL_CREATE", "worker01:1000").code(1);
    let stderr = text(&out.stderr);
    // Progress lines go to stderr too; the failure is the one `rmm:` line, last.
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("rmm: ")).collect();
    assert_eq!(errors.len(), 1, "one clear line: {stderr}");
    assert_eq!(stderr.lines().last(), Some(errors[0]));
    assert!(errors[0].contains("worker01") && errors[0].contains("up --resume"), "{stderr}");
    let status = dir.status();
    assert_eq!(status["run"]["state"], "failed");
    assert!(status["run"]["failure"].as_str().unwrap().contains("RMM_LOCAL_FAIL_CREATE"), "the cause is recorded: {status}");
    let worker = status["actors"].as_array().unwrap().iter().find(|a| a["name"] == "worker01").unwrap().clone();
    assert_eq!(worker["state"], "failed");
    // The last try (of four) is recorded and shown as the last: never "will retry".
    let events = dir.events();
    let failures: Vec<_> = events.iter().filter(|e| e["actor"] == "worker01" && e["kind"] == "StepFailed").collect();
    assert_eq!(failures.len(), 4, "{failures:?}");
    assert!(failures[..3].iter().all(|f| f["data"]["retryable"] == true));
    assert_eq!(failures[3]["data"]["retryable"], false);
    assert!(failures[3]["data"]["error"].as_str().unwrap().ends_with("(gave up after 4 tries)"), "{}", failures[3]);
    let shown: Vec<&str> = stderr.lines().filter(|l| l.contains("worker01") && l.contains("create_machine failed")).collect();
    assert_eq!(shown.len(), 4, "{stderr}");
    for (i, l) in shown.iter().enumerate() {
        assert!(l.contains(&format!("failed (try {}", i + 1)) && !l.contains("will retry"), "{stderr}");
    }
    assert!(shown[..3].iter().all(|l| !l.contains("gave up")), "{stderr}");
    assert!(shown[3].contains("gave up"), "{stderr}");
    // The timeline's failures say what came of each try.
    let timeline = text(&dir.rmm(&["log", "--timeline", "--actor", "worker01"]).ok().stdout);
    let ends: Vec<&str> = timeline.lines().filter(|l| l.contains("create_machine try")).collect();
    assert_eq!(ends.len(), 4, "{timeline}");
    assert!(ends[..3].iter().all(|l| l.contains("tried again")), "{timeline}");
    assert!(ends[3].contains("gave up"), "{timeline}");

    // A plain `up` refuses and names the way on.
    let refused = dir.rmm(&["up"]).code(3);
    assert!(text(&refused.stderr).contains("--resume"));

    dir.rmm(&["up", "--resume"]).ok();
    let status = dir.status();
    assert_eq!(status["run"]["state"], "completed");
    assert_eq!(status["run"]["attempts"], 2);
    let rancher = ask_rancher(&dir);
    assert_eq!(rancher.nodes.len(), 2);
}

/// A try that fails while another node ends the run is not tried again,
/// and nothing says it will be: not the live view's lines, not `rmm log`,
/// not the timeline (issue 11).
#[test]
fn a_try_cut_off_by_another_nodes_failure_never_says_it_will_be_retried() {
    let dir = TestDir::new();
    // worker01's create fails at once and waits 20 s before its next try;
    // the rancher chain fails for good (a wrong CA pin) long before that.
    std::fs::write(dir.tmp.path().join("rmm.toml"), "[retry]\nbackoff_ms = 20000\n").unwrap();
    let wrong = "0".repeat(64);
    let out = dir
        .rmm(&["up", "--masters", "1", "--workers", "1", "--ca-checksum", &wrong])
        .env("RMM_LOCAL_FAIL_CREATE", "worker01:1000")
        .code(1);
    let stderr = text(&out.stderr);
    let events = dir.events();
    let w: Vec<_> = events.iter().filter(|e| e["actor"] == "worker01").collect();
    let last = w.iter().rposition(|e| e["kind"] == "StepFailed").expect("worker01 failed a try");
    assert_eq!(w[last]["data"]["retryable"], true, "{:?}", w[last]);
    assert!(!w[last..].iter().any(|e| e["kind"] == "StepStarted"), "it was cut off, not tried again: {w:?}");
    let log = text(&dir.rmm(&["log"]).ok().stdout);
    let timeline = text(&dir.rmm(&["log", "--timeline"]).ok().stdout);
    for said in [&stderr, &log, &timeline] {
        assert!(!said.contains("will retry"), "{said}");
    }
    let end = timeline.lines().find(|l| l.contains("worker01 create_machine try")).expect(&timeline);
    assert!(end.contains("not tried again: the attempt ended"), "{timeline}");
}

#[test]
fn a_ca_checksum_pinned_up_front_that_does_not_match_fails_before_any_credential_is_sent() {
    let dir = TestDir::new();
    let wrong = "0".repeat(64);
    let out = dir.rmm(&["up", "--masters", "1", "--workers", "1", "--ca-checksum", &wrong]).code(1);
    let stderr = text(&out.stderr);
    assert!(stderr.contains("does not match the pinned --ca-checksum"), "{stderr}");
    let events = dir.events();
    let rancher_steps: Vec<&str> = events
        .iter()
        .filter(|e| e["actor"] == "rancher" && e["kind"] == "StepStarted")
        .map(|e| e["data"]["step"].as_str().unwrap())
        .collect();
    assert!(!rancher_steps.contains(&"login"), "no login after a CA mismatch: {rancher_steps:?}");
    assert_eq!(dir.status()["run"]["state"], "failed");
}

#[test]
fn ctrl_c_lets_steps_in_flight_finish_records_the_interruption_and_resume_completes() {
    let dir = TestDir::new();
    let child = dir
        .rmm(&["up", "--masters", "1", "--workers", "1"])
        .env("RMM_LOCAL_CREATE_MS", "1500")
        .cmd
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    // Wait until the machines are being created (their intents are durable).
    while !dir.events_while_running().iter().any(|e| e["kind"] == "StepStarted") {
        assert!(std::time::Instant::now() < deadline, "the run never started a step");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    let events = dir.events();
    assert_eq!(events.last().unwrap()["kind"], "AttemptInterrupted");
    crate::up::assert_intents_closed(&events);
    assert_eq!(dir.status()["run"]["state"], "interrupted");
    dir.rmm(&["up", "--resume"]).ok();
    assert_eq!(dir.status()["run"]["state"], "completed");
}
