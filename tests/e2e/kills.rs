//! Kills from outside: SIGKILL at seeded random moments of runs with world
//! latency (and of their resumes), SIGTERM, and the emulator itself killed
//! and restarted mid-run.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use crate::crash::{check_completed_once, check_completed_once_on};
use crate::support::*;
use crate::worlds::{On, World};

/// A world slow enough that a kill lands inside steps: a run takes ~2 s.
const SLOW: &[(&str, &str)] =
    &[("RMM_LOCAL_CREATE_MS", "300"), ("RMM_LOCAL_RANCHER_BOOT_MS", "400"), ("RMM_LOCAL_NODE_READY_MS", "150")];

fn slow(mut cmd: RmmCmd) -> RmmCmd {
    for (k, v) in SLOW {
        cmd = cmd.env(k, v);
    }
    cmd
}

/// `rmm ARGS` on `w` (slowed down by its knobs), in the background.
fn spawn_on(w: &World, args: &[&str]) -> Child {
    let mut cmd = w.rmm(args).cmd;
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    cmd.spawn().expect("spawn rmm")
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

/// The span the kills are spread over: about a whole run on `on` in the
/// slow world in a debug build (rke1 ~2 s; rke2 ~3.5 s, its controllers
/// and planner on their own clock; 1 + 1 nodes on rke2: the
/// docker-machine double ~3 s, the ssh hosts ~5 s, one ssh connection a
/// command). Fixed, so a seed replays the same moments.
fn kill_span(on: On) -> Duration {
    match on {
        On::Local(Kind::Rke1) => Duration::from_millis(1800),
        On::Local(Kind::Rke2) | On::DockerMachine => Duration::from_millis(3500),
        On::Ssh => Duration::from_millis(5000),
    }
}

fn sigkill_chain(on: On, span: Duration, seed: u64) {
    eprintln!("sigkill chain on {on:?}, seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let Some(mut w) = World::new(on) else { return };
    w.set_env(SLOW);
    let dir = &w.dir;
    let mut kills = 0;
    let span_ms = span.as_millis().max(200) as u64;
    for i in 0..rng.gen_range(2..=3) {
        let args: &[&str] = if i == 0 { &["up"] } else { &["up", "--resume"] };
        let child = spawn_on(&w, args);
        let at = rng.gen_range(30..span_ms);
        if kill_after(child, Duration::from_millis(at)) {
            eprintln!("seed {seed}: killed {args:?} after {at} ms");
            kills += 1;
        } else {
            break;
        }
    }
    let resumed = w.rmm(&["up", "--resume"]).run();
    if resumed.status.code() == Some(3) && text(&resumed.stderr).contains("nothing to resume") {
        // Killed before the run's first record was durable: nothing was
        // done (an effect starts only once its intent is), so it starts again.
        assert!(dir.events_while_running().is_empty(), "seed {seed}: {}", text(&resumed.stderr));
        w.rmm(&["up"]).ok();
    } else {
        assert!(resumed.status.success(), "seed {seed}: the resume: {}", text(&resumed.stderr));
    }
    check_completed_once_on(dir, on, &format!("{on:?} sigkill seed {seed}"), kills);
}

/// SIGKILLs at seeded moments spread over a whole run on `on` (and of its
/// resumes), two chains at a time.
fn sigkill_chains(on: On, pinned: &[u64]) {
    let started = Instant::now();
    let span = kill_span(on);
    crate::crash::two_at_a_time(seeds("RMM_KILL_SEED", pinned), |seed| sigkill_chain(on, span, seed));
    eprintln!("sigkill chains on {on:?} in {:.0?}", started.elapsed());
}

#[test]
fn sigkill_on_rke2_at_random_moments_of_runs_and_resumes_then_resume_completes() {
    sigkill_chains(On::Local(Kind::Rke2), &[11, 12, 13, 14]);
}

#[test]
fn sigkill_on_rke1_at_random_moments_of_runs_and_resumes_then_resume_completes() {
    sigkill_chains(On::Local(Kind::Rke1), &[11, 12, 13, 14]);
}

#[test]
fn sigkill_on_docker_machine_at_random_moments_of_runs_and_resumes_then_resume_completes() {
    sigkill_chains(On::DockerMachine, &[11, 12]);
}

#[test]
fn sigkill_on_ssh_at_random_moments_of_runs_and_resumes_then_resume_completes() {
    sigkill_chains(On::Ssh, &[11, 12]);
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

/// The emulator's pid (`rmm emulator serve`, the child of the container's
/// supervisor).
fn emulator_pid(dir: &TestDir) -> Option<i32> {
    let needle = dir.state().to_string_lossy().to_string();
    for p in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else { continue };
        let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).to_string()).collect();
        if args.iter().any(|a| a == "serve") && args.iter().any(|a| a.contains(&needle)) {
            return Some(pid);
        }
    }
    None
}

#[test]
fn the_emulator_killed_mid_run_is_restarted_by_its_policy_and_the_run_does_not_fail() {
    let dir = TestDir::new();
    // Each planner step of the v1 emulator takes 1 s (a node's plan is
    // several steps): the run is surely still going when the emulator is
    // killed right after master01's agent ran.
    let mut run = slow(dir.rmm(&["up"])).env("RMM_LOCAL_PLANNER_MS", "1000").cmd;
    let child = run.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    // Wait until the first master's agent has run: Rancher is in full use.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dir.events_while_running().iter().any(|e| e["actor"] == "master01" && e["kind"] == "StepSucceeded" && e["data"]["step"] == "run_agent") {
        assert!(Instant::now() < deadline, "master01 never ran its agent");
        std::thread::sleep(Duration::from_millis(10));
    }
    let pid = emulator_pid(&dir).expect("the emulator runs");
    Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    // The kill must land mid-run: no node can be ready yet.
    assert!(
        !dir.events_while_running().iter().any(|e| e["kind"] == "RunCompleted"),
        "the run ended before the emulator was killed: the test proves nothing"
    );
    // Nobody restarts it by hand: the container's restart policy
    // (--restart=unless-stopped) does, as a Docker engine would.
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the run survives the emulator's restart: {}", text(&out.stderr));
    // The policy restarts it after 100 ms (doubling); on a loaded machine
    // the run can end before the new process shows in /proc: look until
    // a deadline, not once.
    let deadline = Instant::now() + Duration::from_secs(20);
    let now = loop {
        match emulator_pid(&dir) {
            Some(now) if now != pid => break now,
            _ => {
                assert!(Instant::now() < deadline, "the emulator runs again");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    assert_ne!(now, pid, "a new emulator process");
    check_completed_once(&dir, "emulator restart", 0);
}
