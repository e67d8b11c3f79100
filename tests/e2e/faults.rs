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
