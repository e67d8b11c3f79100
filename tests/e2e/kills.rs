//! Kills from outside: SIGKILL at seeded random moments of runs with world
//! latency (and of their resumes), SIGTERM, and the emulator itself killed
//! and restarted mid-run.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use crate::crash::check_completed_once;
use crate::support::*;

/// A world slow enough that a kill lands inside steps: a run takes ~2 s.
fn slow(cmd: RmmCmd) -> RmmCmd {
    cmd.env("RMM_LOCAL_CREATE_MS", "300").env("RMM_LOCAL_RANCHER_BOOT_MS", "400").env("RMM_LOCAL_NODE_READY_MS", "150")
}

fn spawn(dir: &TestDir, args: &[&str]) -> Child {
    let mut cmd = slow(dir.rmm(args)).cmd;
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    cmd.spawn().expect("spawn rmm")
}

/// SIGKILLs `child` after `after`, unless it ends first; `true` if killed.
fn kill_after(mut child: Child, after: Duration) -> bool {
    let deadline = Instant::now() + after;
    loop {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if Instant::now() >= deadline {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn sigkill_chain(seed: u64) {
    eprintln!("sigkill chain seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = TestDir::new();
    let mut kills = 0;
    for i in 0..rng.gen_range(2..=3) {
        let args: &[&str] = if i == 0 { &["up"] } else { &["up", "--resume"] };
        let child = spawn(&dir, args);
        if kill_after(child, Duration::from_millis(rng.gen_range(30..1800))) {
            kills += 1;
        } else {
            break;
        }
    }
    slow(dir.rmm(&["up", "--resume"])).ok();
    check_completed_once(&dir, &format!("sigkill seed {seed}"), kills);
}

#[test]
fn sigkill_at_random_moments_of_runs_and_resumes_then_resume_completes() {
    for seed in seeds("RMM_KILL_SEED", &[11, 12, 13, 14]) {
        sigkill_chain(seed);
    }
}

#[test]
fn sigterm_stops_cleanly_with_130_and_resume_completes() {
    let dir = TestDir::new();
    let child = spawn(&dir, &["up"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !dir.events_while_running().iter().any(|e| e["kind"] == "StepStarted") {
        assert!(Instant::now() < deadline, "the run never started a step");
        std::thread::sleep(Duration::from_millis(10));
    }
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    let events = dir.events();
    assert_eq!(events.last().unwrap()["kind"], "AttemptInterrupted");
    crate::up::assert_intents_closed(&events);
    slow(dir.rmm(&["up", "--resume"])).ok();
    check_completed_once(&dir, "sigterm", 0);
}

/// The emulator's pid and how it was started (command line, environment).
fn emulator_process(dir: &TestDir) -> Option<(i32, Vec<String>, Vec<(String, String)>)> {
    let needle = dir.state().to_string_lossy().to_string();
    for p in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else { continue };
        let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).to_string()).collect();
        if args.iter().any(|a| a == "emulator") && args.iter().any(|a| a.contains(&needle)) {
            let environ = std::fs::read(p.path().join("environ")).unwrap_or_default();
            let env = environ
                .split(|b| *b == 0)
                .filter_map(|kv| String::from_utf8_lossy(kv).split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
                .collect();
            return Some((pid, args, env));
        }
    }
    None
}

#[test]
fn the_emulator_killed_and_restarted_mid_run_does_not_fail_the_run() {
    let dir = TestDir::new();
    let mut run = slow(dir.rmm(&["up"])).env("RMM_LOCAL_NODE_READY_MS", "600").cmd;
    let child = run.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    // Wait until the first master's agent has run: Rancher is in full use.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dir.events_while_running().iter().any(|e| e["actor"] == "master01" && e["kind"] == "StepSucceeded" && e["data"]["step"] == "run_agent") {
        assert!(Instant::now() < deadline, "master01 never ran its agent");
        std::thread::sleep(Duration::from_millis(10));
    }
    let (pid, args, env) = emulator_process(&dir).expect("the emulator runs");
    Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    // Restarted like a container with a restart policy: same command, same environment.
    let mut restart = Command::new(&args[0]);
    restart.args(&args[1..]).env_clear().envs(env).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    std::os::unix::process::CommandExt::process_group(&mut restart, 0);
    let mut emulator = restart.spawn().unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the run survives the emulator's restart: {}", text(&out.stderr));
    check_completed_once(&dir, "emulator restart", 0);
    let _ = emulator.kill();
    let _ = emulator.wait();
}
