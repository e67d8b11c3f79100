use crate::support::*;

#[test]
fn down_removes_every_machine_and_stops_the_emulator_and_a_second_down_is_a_no_op() {
    let dir = TestDir::new();
    dir.up_ok(&["--masters", "1", "--workers", "1"]);
    let url = dir.status()["rancher"]["url"].as_str().unwrap().to_string();
    let before = dir.events().len();

    let out = dir.rmm(&["down"]).ok();
    assert!(text(&out.stdout).contains("Removed 3 machines"), "{}", text(&out.stdout));
    let status = dir.status_refresh();
    assert_eq!(status["run"]["kind"], "down");
    assert_eq!(status["run"]["state"], "completed");
    assert_eq!(status["rancher"]["cluster_state"], "removed");
    assert!(status["actors"].as_array().unwrap().iter().all(|a| a["state"] == "removed" && a["observed"] == "absent"), "{status}");
    assert_eq!(status["orphans"], serde_json::json!([]));
    assert!(dir.events().len() > before, "down is recorded as events");

    // The emulator is gone: nothing answers at the Rancher URL.
    let addr = url.trim_start_matches("https://");
    assert!(std::net::TcpStream::connect(addr).is_err(), "the emulator still listens at {addr}");

    let events = dir.events().len();
    let again = dir.rmm(&["down"]).ok();
    assert!(text(&again.stdout).contains("Nothing to remove"), "{}", text(&again.stdout));
    assert_eq!(dir.events().len(), events, "a second down records nothing");

    // And a new cluster can be built after it.
    dir.up_ok(&["--masters", "1", "--workers", "1"]);
    assert_eq!(dir.status()["run"]["state"], "completed");
}
