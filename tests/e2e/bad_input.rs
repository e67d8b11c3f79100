//! Every bad input: one line on stderr, a documented exit code, and nothing
//! written to the world or the log.

use crate::support::*;

fn one_line_error(out: &std::process::Output) -> String {
    let stderr = text(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one clear line on stderr, got: {stderr}");
    lines[0].to_string()
}

#[test]
fn zero_or_even_masters_are_refused_before_anything_is_written() {
    let dir = TestDir::new();
    let line = one_line_error(&dir.rmm(&["up", "--masters", "0"]).code(2));
    assert!(line.contains("masters"), "{line}");
    let line = one_line_error(&dir.rmm(&["up", "--masters", "2"]).code(2));
    assert!(line.contains("--allow-even-masters"), "{line}");
    assert!(!dir.state().exists(), "nothing written for bad input");
}

#[test]
fn unknown_and_invalid_config_keys_are_refused() {
    let dir = TestDir::new();
    std::fs::write(dir.tmp.path().join("rmm.toml"), "mastres = 3\n").unwrap();
    let line = one_line_error(&dir.rmm(&["up"]).code(2));
    assert!(line.contains("rmm.toml") && line.contains("mastres"), "{line}");
    std::fs::write(dir.tmp.path().join("rmm.toml"), "workers = \"three\"\n").unwrap();
    one_line_error(&dir.rmm(&["up"]).code(2));
    std::fs::write(dir.tmp.path().join("rmm.toml"), "[timeouts]\nactive_s = 0\n").unwrap();
    let line = one_line_error(&dir.rmm(&["up"]).code(2));
    assert!(line.contains("active_s"), "{line}");
    assert!(!dir.state().exists());
}

#[test]
fn an_unwritable_state_dir_is_refused() {
    let dir = TestDir::new();
    let blocker = dir.tmp.path().join("file");
    std::fs::write(&blocker, "").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rmm"))
        .current_dir(dir.tmp.path())
        .args(["--state-dir", blocker.join("state").to_str().unwrap(), "up"])
        .env("XDG_STATE_HOME", dir.xdg())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(one_line_error(&out).contains("state dir"));
}

#[test]
fn a_second_rmm_on_the_same_state_dir_is_refused_naming_the_pid_that_holds_it() {
    let dir = TestDir::new();
    let mut first = dir.rmm(&["up", "--masters", "1", "--workers", "1"]).env("RMM_LOCAL_CREATE_MS", "3000").cmd.spawn().unwrap();
    // Wait until the first holds the lock (its pid is in the lock file).
    let lock = dir.state().join("lock");
    let pid = first.id().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::fs::read_to_string(&lock).unwrap_or_default().trim() != pid {
        assert!(std::time::Instant::now() < deadline, "first rmm never took the lock");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    for cmd in [&["up"][..], &["down"][..]] {
        let out = dir.rmm(cmd).code(4);
        let line = one_line_error(&out);
        assert!(line.contains(&format!("pid {pid}")), "{line}");
    }
    // status works beside it, and shows the live run (once its first
    // events are durable).
    while dir.status()["run"]["state"] == "none" {
        assert!(std::time::Instant::now() < deadline, "the run never showed in status");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(dir.status()["run"]["state"], "running");
    assert!(first.wait().unwrap().success(), "the first run is unharmed");
    assert_eq!(dir.status()["run"]["state"], "completed");
}

/// What the local world holds: machine dirs and the ledgers.
fn world_snapshot(dir: &TestDir) -> Vec<(String, Vec<u8>)> {
    let world = dir.state().join("world");
    let mut out = Vec::new();
    for name in ["world.json", "created.json"] {
        out.push((name.to_string(), std::fs::read(world.join(name)).unwrap_or_default()));
    }
    let mut machines: Vec<String> = std::fs::read_dir(world.join("machines"))
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect())
        .unwrap_or_default();
    machines.sort();
    for m in machines {
        let json = std::fs::read(world.join("machines").join(&m).join("machine.json")).unwrap_or_default();
        out.push((m, json));
    }
    out
}

/// Tampers with a crashed run's log one way, then checks `up --resume`
/// refuses (exit 5) naming `bad_seq`, and the world did not change.
fn refused_after(tamper: &[&str], bad_seq: u64) {
    let dir = TestDir::new();
    let out = dir.rmm(&["up", "--masters", "1", "--workers", "1"]).env("RMM_CRASH_AFTER_APPEND", "12").run();
    assert!(!out.status.success());
    let before = world_snapshot(&dir);
    let mut args = vec!["tamper"];
    args.extend_from_slice(tamper);
    dir.rmm(&args).ok();
    let line = one_line_error(&dir.rmm(&["up", "--resume"]).code(5));
    assert!(line.contains(&format!("seq {bad_seq}")), "{tamper:?}: {line}");
    assert_eq!(world_snapshot(&dir), before, "{tamper:?}: a refused resume changes nothing in the world");
    one_line_error(&dir.rmm(&["log"]).code(5));
}

#[test]
fn a_flipped_byte_is_refused_by_resume_naming_its_seq() {
    refused_after(&["--seq", "5"], 5);
}

#[test]
fn a_deleted_record_is_refused_by_resume_naming_its_seq() {
    refused_after(&["--seq", "6", "--delete"], 6);
}

#[test]
fn swapped_records_are_refused_by_resume_naming_the_first() {
    refused_after(&["--seq", "4", "--swap-with", "7"], 4);
}

#[test]
fn a_record_rewritten_with_its_own_hash_recomputed_is_refused_at_the_next_seq() {
    refused_after(&["--seq", "5", "--rewrite"], 6);
}

/// `watch rmm status` in one terminal must not make `rmm up` in another
/// fail: readers that open the store while no writer runs are waited for.
#[test]
fn readers_in_a_loop_do_not_make_up_or_down_fail() {
    let dir = TestDir::new();
    dir.up_ok(&["--masters", "1", "--workers", "1"]);
    dir.rmm(&["down"]).ok();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                dir.rmm(&["status", "--json"]).run();
                dir.rmm(&["log"]).run();
            }
        });
        for _ in 0..3 {
            dir.up_ok(&["--masters", "1", "--workers", "1"]);
            dir.rmm(&["down"]).ok();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
}

#[test]
fn a_bad_distribution_or_kubernetes_version_is_refused_before_anything_is_written() {
    let dir = TestDir::new();
    let line = one_line_error(&dir.rmm(&["up", "--distribution", "rke3"]).code(2));
    assert!(line.starts_with("rmm: ") && line.contains("rke3") && line.contains("rke2, k3s, rke1"), "{line}");
    let line = one_line_error(&dir.rmm(&["up", "--distribution", "k3s", "--kubernetes-version", "v1.35.1+rke2r1"]).code(2));
    assert!(line.contains("not a k3s version"), "{line}");
    let line = one_line_error(&dir.rmm(&["up", "--distribution", "rke1", "--kubernetes-version", "v1.35.1+rke2r1"]).code(2));
    assert!(line.contains("rke1 uses the server's own default"), "{line}");
    std::fs::write(dir.tmp.path().join("rmm.toml"), "distribution = \"rke9\"\n").unwrap();
    one_line_error(&dir.rmm(&["up"]).code(2));
    assert!(!dir.state().exists(), "nothing written for bad input");
}
