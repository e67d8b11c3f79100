//! Write errors on stdout and stderr (issue 7, item 8): a full device is
//! one `rmm:` line and exit 2 (silently when stderr itself is full), never
//! a panic (exit 101) or a success; a closed pipe stays silent.

use std::process::{Output, Stdio};

use crate::support::*;

fn full() -> Stdio {
    Stdio::from(std::fs::OpenOptions::new().write(true).open("/dev/full").expect("/dev/full"))
}

fn run_with(cmd: RmmCmd, stdout: Stdio, stderr: Stdio) -> Output {
    let mut cmd = cmd.cmd;
    cmd.stdout(stdout).stderr(stderr);
    let child = cmd.spawn().unwrap();
    child.wait_with_output().unwrap()
}

const ENOSPC_LINE: &str = "rmm: cannot write to stdout: No space left on device (os error 28)";

#[test]
fn every_command_with_stdout_on_a_full_device_says_so_in_one_line_and_exits_2() {
    let dir = TestDir::new();
    // Before any run: status prints "no run".
    let out = run_with(dir.rmm(&["status"]), full(), Stdio::piped());
    assert_eq!((out.status.code(), text(&out.stderr).trim_end()), (Some(2), ENOSPC_LINE), "status, no run");
    let out = run_with(dir.rmm(&["down"]), full(), Stdio::piped());
    assert_eq!((out.status.code(), text(&out.stderr).trim_end()), (Some(2), ENOSPC_LINE), "down, nothing to remove");

    // `up` itself: the run completes, its final lines cannot be written.
    let out = run_with(dir.rmm(&["up", "--masters", "1", "--workers", "1"]), full(), Stdio::piped());
    assert_eq!(out.status.code(), Some(2), "up: {}", text(&out.stderr));
    assert_eq!(text(&out.stderr).lines().last(), Some(ENOSPC_LINE));
    assert_eq!(dir.status()["run"]["state"], "completed");

    for args in [
        &["status"][..],
        &["status", "--json"],
        &["log"],
        &["log", "--json", "--all-runs"],
        &["log", "--verify"],
        &["log", "--timeline"],
        &["log", "show", "3"],
        &["log", "--export", "-"],
        &["replay"],
        &["credentials"],
        &["report", "--html", "-"],
        &["up"],
        &["--help"],
        &["--version"],
        &["log", "--help"],
    ] {
        let out = run_with(dir.rmm(args), full(), Stdio::piped());
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out.stderr));
        assert_eq!(text(&out.stderr).trim_end(), ENOSPC_LINE, "{args:?}");
    }
}

#[test]
fn stderr_on_a_full_device_is_exit_2_without_a_panic() {
    let dir = TestDir::new();
    // A run: progress lines on stderr all fail; the run still completes.
    let out = run_with(dir.rmm(&["up", "--masters", "1", "--workers", "1"]), Stdio::piped(), full());
    assert_eq!(out.status.code(), Some(2), "up 2>/dev/full (101 is a panic)");
    assert!(text(&out.stdout).contains("is active"), "{}", text(&out.stdout));
    assert_eq!(dir.status()["run"]["state"], "completed");
    // Diagnostics (-v) too.
    let out = run_with(dir.rmm(&["-vv", "status"]), Stdio::piped(), full());
    assert_eq!(out.status.code(), Some(2), "status -vv 2>/dev/full");
    // A failing command keeps its own exit code; its line is lost.
    let out = run_with(dir.rmm(&["up", "--masters", "2"]), Stdio::piped(), full());
    assert_eq!(out.status.code(), Some(2));
    let out = run_with(dir.rmm(&["up"]), Stdio::piped(), full());
    assert_eq!(out.status.code(), Some(0), "up on a completed run prints to stdout only");
    let out = run_with(dir.rmm(&["down"]), Stdio::piped(), full());
    assert_eq!(out.status.code(), Some(2), "down 2>/dev/full");
    assert!(text(&out.stdout).contains("Removed 3 machines"), "{}", text(&out.stdout));
}

/// The reader of stdout is gone before rmm writes (the read end closed):
/// every write is `EPIPE`. Silent, exit 0.
#[test]
fn a_closed_pipe_on_stdout_stays_silent_and_succeeds() {
    let dir = TestDir::new();
    let closed = || {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        Stdio::from(writer)
    };
    let out = run_with(dir.rmm(&["down"]), closed(), Stdio::piped());
    assert_eq!((out.status.code(), text(&out.stderr)), (Some(0), String::new()), "down, nothing to remove");
    dir.up_ok(&["--masters", "1", "--workers", "1"]);
    for args in [
        &["status"][..],
        &["log"],
        &["log", "--all-runs", "--json"],
        &["log", "--verify"],
        &["log", "show", "3"],
        &["replay"],
        &["credentials"],
        &["report", "--html", "-"],
        &["up"],
        &["--help"],
    ] {
        let out = run_with(dir.rmm(args), closed(), Stdio::piped());
        assert_eq!((out.status.code(), text(&out.stderr)), (Some(0), String::new()), "{args:?}");
    }
}

/// `rmm log | head -1`, as a shell runs it.
#[test]
fn log_piped_into_head_stays_silent_and_succeeds() {
    let dir = TestDir::new();
    dir.up_ok(&["--masters", "1", "--workers", "1"]);
    let rmm = env!("CARGO_BIN_EXE_rmm");
    let state = dir.state();
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!("set -o pipefail; for i in 1 2 3 4 5 6 7 8; do '{rmm}' --state-dir '{}' log --all-runs | head -1 >/dev/null || exit 1; done", state.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "");
}

/// A guard for what the tests above cannot reach: no code that runs in an
/// `rmm` command writes with `println!`/`eprintln!` (they panic when the
/// write fails) or around the checked writers (`rmm::cli::stdout()`,
/// `stderr()`, `outln!`, `errln!`), so a write error is always seen by
/// `cli::finish`. The emulator and the local world's container supervisor
/// are processes of their own (their output is a log file) and are left out.
#[test]
fn command_code_writes_only_through_the_checked_writers() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            let rel = path.strip_prefix(&root).unwrap().to_string_lossy().to_string();
            if path.is_dir() {
                if rel != "emulator" {
                    stack.push(path);
                }
                continue;
            }
            if !rel.ends_with(".rs") || rel.ends_with("tests.rs") || rel == "drivers/local/supervisor.rs" {
                continue;
            }
            let source = std::fs::read_to_string(&path).unwrap();
            let mut in_tests = false;
            for (i, line) in source.lines().enumerate() {
                let code = line.trim_start();
                if code.starts_with("#[cfg(test)]") {
                    in_tests = true; // unit tests at the end of a file
                }
                if in_tests || code.starts_with("//") || rel == "cli.rs" {
                    continue;
                }
                for bad in ["println!(", "print!(", "stdout().lock()", "stderr().lock()", "io::stdout(),", "io::stderr(),"] {
                    if code.contains(bad) && !code.contains("crate::outln!(") && !code.contains("crate::errln!(") {
                        found.push(format!("src/{rel}:{}: {}", i + 1, code));
                    }
                }
            }
        }
    }
    assert!(found.is_empty(), "write through rmm::cli::stdout()/stderr() or outln!/errln! instead:\n{}", found.join("\n"));
}
