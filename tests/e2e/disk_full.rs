//! A failed append ends the run, never spins (issue 7, item 1).
//!
//! An `LD_PRELOAD` shim, built here with `cc`, makes the k-th `write` (or
//! `fdatasync`) of `journal.wal` fail with `ENOSPC` (or `EIO`): the real
//! syscall path rust std takes (`File::write_all` is libc `write`,
//! `File::sync_data` is libc `fdatasync`; `pwrite64`/`writev` are wrapped
//! too, in case a later std or store uses them). The sweep fails every
//! write index of a golden run; each process must exit 2 with one `rmm:`
//! line naming the file and the free space, and the way on it names must
//! complete the run, with every machine made once.
//!
//! The sweep runs on rke2 and on rke1, as separate tests. On rke2 it once
//! hung: a failed append ended rmm while installers ran, one cut short
//! after its registration call, and the resume adopted the listed machine
//! whose agent would never check in, then waited `active_s` (30 min) for it
//! to be `Running`. `run_agent` now adopts only a machine whose node has
//! the agent's unit (crash.rs has a test for each cut), and every resume
//! here is bounded, so a hang fails the test instead.
//!
//! Cost: a golden run teaches W (writes of `journal.wal`: ~65-85 on rke2,
//! ~70 on rke1); then W fail/resume pairs, two at a time (in a full suite
//! run on the shared, loaded 2-core machine: 191 s on rke2, 188 s on rke1).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::crash::{check_completed_once, two_at_a_time, with_env, QUICK_CONTROLLERS};
use crate::shim::shim;
use crate::support::*;

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// One shim log line: `kind k ok|failed ms`.
struct Call {
    kind: String,
    failed: bool,
    at_ms: i64,
}

fn calls(log: &Path) -> Vec<Call> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .map(|l| {
            let w: Vec<&str> = l.split(' ').collect();
            Call { kind: w[0].to_string(), failed: w[2] == "failed", at_ms: w[3].parse().unwrap() }
        })
        .collect()
}

/// `rmm ARGS` under the shim, failing call `k` of `kind` with `errno`;
/// killed (and the test failed) if it has not ended within `bound`.
fn run_with_fault(dir: &TestDir, args: &[&str], kind: &str, k: u64, errno: i32, bound: Duration) -> (Output, Vec<Call>, i64) {
    let log = dir.tmp.path().join(format!("shim-{kind}-{k}.log"));
    let mut cmd = with_env(dir.rmm(args), QUICK_CONTROLLERS)
        .env("LD_PRELOAD", shim().unwrap().to_str().unwrap())
        .env("RMM_SHIM_LOG", log.to_str().unwrap())
        .env("RMM_SHIM_FAIL_CALL", kind)
        .env("RMM_SHIM_FAIL_AT", &k.to_string())
        .env("RMM_SHIM_ERRNO", &errno.to_string())
        .cmd;
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > bound {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("{kind} {k}: rmm did not end within {bound:?} of its start (a spin?): {}", text(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let ended = now_ms();
    let out = child.wait_with_output().unwrap();
    (out, calls(&log), ended)
}

/// Checks a run whose append failed, and returns how long after the
/// failed call the process ended (ms), or `None` if the k-th call never came.
fn check_failed_run(what: &str, out: &Output, calls: &[Call], ended_ms: i64, reason: &str) -> Option<i64> {
    let stderr = text(&out.stderr);
    let Some(failed) = calls.iter().find(|c| c.failed) else {
        assert!(out.status.success(), "{what}: no fault injected, yet: {stderr}");
        return None;
    };
    assert_eq!(out.status.code(), Some(2), "{what}: exit 2 for a failed append: {stderr}");
    assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("rmm: ")).collect();
    assert_eq!(errors.len(), 1, "{what}: one rmm: line: {stderr}");
    assert_eq!(stderr.lines().last(), Some(errors[0]), "{what}: the rmm: line comes last");
    let line = errors[0];
    assert!(line.contains("/events/journal.wal: ") && line.contains(reason), "{what}: {line}");
    assert!(line.contains("happened unrecorded"), "{what}: {line}");
    // After the failed call nothing more is written to the log.
    let after = calls.iter().skip_while(|c| !c.failed).skip(1).filter(|c| c.kind == "write").count();
    assert_eq!(after, 0, "{what}: {after} writes after the failed one");
    Some(ended_ms - failed.at_ms)
}

/// Follows the way on the `rmm:` line names, without the fault, and checks
/// the run completed with every machine made once and a log that verifies.
fn recover(dir: &TestDir, what: &str, out: &Output) {
    let stderr = text(&out.stderr);
    assert!(stderr.contains("then `rmm up --resume`"), "{what}: {stderr}");
    let resumed = with_env(dir.rmm(&["up", "--resume"]), QUICK_CONTROLLERS).run_within(RESUME_BOUND);
    if resumed.status.code() == Some(3) && text(&resumed.stderr).contains("nothing to resume") {
        // The run's first records never reached the disk: it starts again.
        let again = with_env(dir.rmm(&["up"]), QUICK_CONTROLLERS).run_within(RESUME_BOUND);
        assert!(again.status.success(), "{what}: the new run: {}", text(&again.stderr));
    } else {
        assert!(resumed.status.success(), "{what}: the resume: {}", text(&resumed.stderr));
    }
    check_completed_once(dir, what, 1);
}

/// How long a resume after a failed append may take (a whole run takes a
/// few seconds): past it, the test fails instead of hanging.
const RESUME_BOUND: Duration = Duration::from_secs(60);

/// Writes to `journal.wal` in a golden run (and checks the shim sees them).
fn golden_writes(kind: Kind) -> u64 {
    let dir = TestDir::on(kind);
    let (out, calls, _) = run_with_fault(&dir, &["up"], "none", 0, 28, Duration::from_secs(120));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let writes = calls.iter().filter(|c| c.kind == "write").count() as u64;
    let syncs = calls.iter().filter(|c| c.kind == "fdatasync").count() as u64;
    assert!(writes >= 20 && syncs >= writes, "the shim sees every append: {writes} writes, {syncs} fdatasyncs");
    writes
}

/// Fails every write of `journal.wal` of a run of `kind` in turn (ENOSPC),
/// two at a time.
fn disk_full_sweep(kind: Kind) {
    if shim().is_none() {
        return;
    }
    let started = Instant::now();
    let w = golden_writes(kind);
    eprintln!("disk-full sweep on {kind:?}: {w} writes of journal.wal");
    let latencies = std::sync::Mutex::new(Vec::new());
    let missed = std::sync::Mutex::new(Vec::new());
    two_at_a_time((1..=w).collect(), |k| {
        let dir = TestDir::on(kind);
        let what = format!("{kind:?}: ENOSPC at write {k}");
        let (out, calls, ended) = run_with_fault(&dir, &["up"], "write", k, 28, Duration::from_secs(30));
        match check_failed_run(&what, &out, &calls, ended, "No space left on device (") {
            Some(ms) => {
                assert!(text(&out.stderr).contains(" free); nothing after seq "), "{what}: {}", text(&out.stderr));
                latencies.lock().unwrap().push(ms);
                recover(&dir, &what, &out);
            }
            None => {
                // The run ended before its k-th write: it made fewer, and
                // it completed unharmed.
                let writes = calls.iter().filter(|c| c.kind == "write").count() as u64;
                assert!(writes < k, "{what}: not failed, yet the run made {writes} writes");
                check_completed_once(&dir, &what, 0);
                missed.lock().unwrap().push(k);
            }
        }
    });
    let mut l = latencies.into_inner().unwrap();
    l.sort();
    let missed = missed.into_inner().unwrap();
    eprintln!("failed write -> exit: median {} ms, max {} ms; not reached: {missed:?}", l[l.len() / 2], l[l.len() - 1]);
    // The number of writes varies between runs: actors' events that arrive
    // together share one write (group commit; seen: 74 in the golden run,
    // 67 in another), and on the v1 path the planner's progress messages
    // are recorded as the polls see them (seen: 87 and 75). An index past
    // a run's own end was checked above: that run made fewer writes and
    // completed unharmed. Most indices must have been reached.
    assert!(missed.len() as u64 <= w / 4, "write indices not reached: {missed:?} of {w}");
    // "Within a second" is the aim; 10 s only tells a slow machine from a hang.
    assert!(l[l.len() - 1] < 10_000, "a failed append must end the process promptly: {l:?}");
    eprintln!("disk-full sweep on {kind:?}: {w} fail/resume pairs in {:.0?}", started.elapsed());
}

#[test]
fn disk_full_at_every_append_on_rke2_ends_the_run_with_one_line_and_the_resume_completes() {
    disk_full_sweep(Kind::Rke2);
}

#[test]
fn disk_full_at_every_append_on_rke1_ends_the_run_with_one_line_and_the_resume_completes() {
    disk_full_sweep(Kind::Rke1);
}

/// `fdatasync` failing (EIO: the page cache lost the write) at the first,
/// the fifth (where the spin was reproduced before the fix) and a late
/// sync: exit 2 naming the OS reason, then the resume.
#[test]
fn an_io_error_on_sync_ends_the_run_naming_it_and_the_resume_completes() {
    if shim().is_none() {
        return;
    }
    two_at_a_time(vec![1u64, 5, 40], |k| {
        let dir = TestDir::new();
        let what = format!("EIO at fdatasync {k}");
        let (out, calls, ended) = run_with_fault(&dir, &["up"], "fdatasync", k, 5, Duration::from_secs(30));
        let ms = check_failed_run(&what, &out, &calls, ended, "Input/output error; nothing after seq ");
        assert!(ms.is_some(), "{what}: the sync was reached");
        assert!(text(&out.stderr).contains("Fix the cause"), "{what}");
        recover(&dir, &what, &out);
    });
}

/// A real full disk: the store's directory on a small tmpfs, filled up to
/// a few KB. Needs `mount` (root); skipped with the reason otherwise.
#[test]
fn a_real_full_tmpfs_ends_the_run_with_exit_2_and_after_freeing_space_the_resume_completes() {
    let dir = TestDir::new();
    let events = dir.state().join("events");
    std::fs::create_dir_all(&events).unwrap();
    let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs"]).arg(&events).output();
    match mounted {
        Ok(out) if out.status.success() => {}
        other => {
            let why = match other {
                Ok(out) => text(&out.stderr).trim().to_string(),
                Err(e) => e.to_string(),
            };
            eprintln!("SKIPPED: cannot mount a tmpfs here ({why}) — run the tests as root to include it");
            return;
        }
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(events.clone());
    // A slow world, so the disk fills while the run is under way.
    let mut child = dir
        .rmm(&["up"])
        .env("RMM_LOCAL_CREATE_MS", "300")
        .env("RMM_LOCAL_RANCHER_BOOT_MS", "400")
        .env("RMM_LOCAL_NODE_READY_MS", "150")
        .cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dir.events_while_running().iter().any(|e| e["kind"] == "StepSucceeded") {
        assert!(Instant::now() < deadline, "the run never got going");
        std::thread::sleep(Duration::from_millis(10));
    }
    let filler = events.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    drop(f);
    let free = nix::sys::statvfs::statvfs(&events).unwrap();
    eprintln!("tmpfs full: {} bytes free", free.blocks_available() as u64 * free.fragment_size() as u64);
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("rmm did not end on a full disk (a spin?)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("rmm: ")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("No space left on device") && errors[0].contains(" free)"), "{stderr}");
    std::fs::remove_file(&filler).unwrap();
    recover(&dir, "full tmpfs", &out);
}

/// The secrets file cannot be written (a full disk at any of its writes,
/// the first one before the bootstrap password's intent included): one
/// `rmm:` line naming the file and the free space, exit 2 (a state dir
/// disk failure, not a failed run), promptly; once space is back the
/// resume completes with every machine made once.
#[test]
fn a_full_disk_at_each_write_of_the_secrets_file_ends_the_run_with_exit_2_and_the_resume_completes() {
    if shim().is_none() {
        eprintln!("SKIPPED: no C compiler to build the LD_PRELOAD shim — apt-get install -y gcc");
        return;
    }
    for k in 1..=4u64 {
        let dir = TestDir::new();
        let log = dir.tmp.path().join("shim.log");
        let mut child = dir
            .rmm(&["up"])
            .env("LD_PRELOAD", shim().unwrap().to_str().unwrap())
            .env("RMM_SHIM_LOG", log.to_str().unwrap())
            .env("RMM_SHIM_PATH_HAS", "/secrets.json.tmp")
            .env("RMM_SHIM_FAIL_CALL", "write")
            .env("RMM_SHIM_FAIL_AT", &k.to_string())
            .env("RMM_SHIM_ERRNO", "28")
            .cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if start.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                panic!("write {k} of secrets.json failed: rmm did not end");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        let stderr = text(&out.stderr);
        let failed = calls(&log).iter().any(|c| c.failed);
        assert!(failed, "write {k}: the shim never failed a write of the secrets file: {stderr}");
        assert_eq!(out.status.code(), Some(2), "write {k}: {stderr}");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("rmm: ")).collect();
        assert_eq!(errors.len(), 1, "write {k}: {stderr}");
        assert!(
            errors[0].contains("secrets.json") && errors[0].contains("No space left on device") && errors[0].contains(" free)"),
            "write {k}: {stderr}"
        );
        recover(&dir, &format!("secrets write {k}"), &out);
    }
}

/// sled writes while it opens the store (it zeroes a torn segment, writes a
/// snapshot): a full disk there is one line naming the store and the free
/// space (it said only "event store: IO error: …"), exit 2, and the log
/// stays readable, so the same command completes once space is back.
#[test]
fn a_full_disk_while_down_opens_the_store_names_it_and_down_then_completes() {
    if shim().is_none() {
        eprintln!("SKIPPED: no C compiler to build the LD_PRELOAD shim — apt-get install -y gcc");
        return;
    }
    for k in 1..=3u64 {
        let dir = TestDir::new();
        dir.up_ok(&["--masters", "1", "--workers", "1"]);
        let events = format!("{}/", dir.state().join("events").display());
        let out = dir
            .rmm(&["down", "--yes"])
            .env("LD_PRELOAD", shim().unwrap().to_str().unwrap())
            .env("RMM_SHIM_PATH_HAS", &events)
            .env("RMM_SHIM_FAIL_CALL", "write")
            .env("RMM_SHIM_FAIL_AT", &k.to_string())
            .run();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "write {k}: {stderr}");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("rmm: ")).collect();
        assert_eq!(errors.len(), 1, "write {k}: {stderr}");
        assert!(errors[0].contains("/events") && errors[0].contains(" free)"), "write {k}: {stderr}");
        dir.rmm(&["log", "--verify"]).ok();
        dir.rmm(&["down", "--yes"]).ok();
    }
}
