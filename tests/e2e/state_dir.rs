//! The state dir is ours alone (issue 7, item 3): a dir someone else can
//! write into is refused before anything is written, and nothing planted
//! inside (a symlink at the lock, at `secrets.json`, at a temp name) is
//! ever followed. Plus two `up` started in the same instant (item 8).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::support::*;

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

fn entries(path: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(path).unwrap().flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect();
    v.sort();
    v
}

/// A state dir made beforehand, with `mode`.
fn premade(dir: &TestDir, mode: u32) {
    std::fs::create_dir(dir.state()).unwrap();
    std::fs::set_permissions(dir.state(), std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn a_state_dir_writable_by_others_or_its_group_is_refused_and_nothing_is_written_into_it() {
    for (m, who) in [(0o777, "others"), (0o770, "its group"), (0o1777, "others")] {
        let dir = TestDir::new();
        premade(&dir, m);
        let state = dir.state();
        let s = state.display();
        for cmd in [&["up", "--masters", "1", "--workers", "1"][..], &["down"][..], &["up", "--resume"][..]] {
            let out = dir.rmm(cmd).code(2);
            let line = single_stderr_line(&out);
            assert_eq!(
                line,
                format!("rmm: state dir {s} is writable by {who} (mode {:04o}): `chmod 700 {s}`", m),
                "{cmd:?}"
            );
            assert_eq!(entries(&state), Vec::<String>::new(), "{cmd:?}: nothing written into a refused dir");
            assert_eq!(mode(&state), m, "the dir is left as it was");
        }
        // Following the advice makes it usable.
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
        dir.up_ok(&["--masters", "1", "--workers", "1"]);
        // The password is not read from a dir that became open to others.
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(m)).unwrap();
        let line = single_stderr_line(&dir.rmm(&["credentials"]).code(2));
        assert!(line.ends_with(&format!("`chmod 700 {s}`")), "{line}");
        assert!(dir.rmm(&["credentials"]).run().stdout.is_empty());
    }
}

#[test]
fn a_state_dir_owned_by_another_user_is_refused() {
    if !nix::unistd::geteuid().is_root() {
        println!("SKIPPED: a dir owned by another user can only be made by root (this test runs as uid {})", nix::unistd::geteuid());
        return;
    }
    let dir = TestDir::new();
    premade(&dir, 0o700);
    let nobody = nix::unistd::Uid::from_raw(65534);
    nix::unistd::chown(&dir.state(), Some(nobody), None).unwrap();
    let out = dir.rmm(&["up", "--masters", "1", "--workers", "1"]).code(2);
    let line = single_stderr_line(&out);
    assert!(line.starts_with(&format!("rmm: state dir {} is owned by uid 65534, not by you (uid 0)", dir.state().display())), "{line}");
    assert_eq!(entries(&dir.state()), Vec::<String>::new());
    dir.rmm(&["down"]).code(2);
}

/// An outside file a planted symlink points to: must never change.
struct Target {
    path: std::path::PathBuf,
}

impl Target {
    fn new(dir: &TestDir) -> Target {
        let path = dir.tmp.path().join("precious");
        std::fs::write(&path, "precious\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        Target { path }
    }
    fn assert_unchanged(&self, what: &str) {
        assert_eq!(std::fs::read_to_string(&self.path).unwrap(), "precious\n", "{what}: the symlink's target was written through");
        assert_eq!(mode(&self.path), 0o644, "{what}: the target's mode changed");
    }
}

#[test]
fn a_symlink_planted_at_the_lock_is_refused_not_followed() {
    let dir = TestDir::new();
    premade(&dir, 0o700);
    let target = Target::new(&dir);
    std::os::unix::fs::symlink(&target.path, dir.state().join("lock")).unwrap();
    for cmd in [&["up", "--masters", "1", "--workers", "1"][..], &["down"][..]] {
        let line = single_stderr_line(&dir.rmm(cmd).code(2));
        assert!(line.contains("lock is a symlink") && line.contains("rm "), "{line}");
        target.assert_unchanged("lock");
    }
    // status only looks at the lock (and does not follow it either).
    dir.rmm(&["status"]).run();
    target.assert_unchanged("lock (status)");
}

#[test]
fn a_symlink_planted_at_secrets_json_is_refused_not_followed() {
    let dir = TestDir::new();
    premade(&dir, 0o700);
    let target = Target::new(&dir);
    std::os::unix::fs::symlink(&target.path, dir.state().join("secrets.json")).unwrap();
    let line = single_stderr_line(&dir.rmm(&["up", "--masters", "1", "--workers", "1"]).code(2));
    assert!(line.contains("secrets.json is a symlink"), "{line}");
    target.assert_unchanged("secrets.json");
    assert!(std::fs::symlink_metadata(dir.state().join("secrets.json")).unwrap().file_type().is_symlink());
}

#[test]
fn symlinks_planted_at_temp_names_are_never_written_through_and_secrets_are_owner_only() {
    let dir = TestDir::new();
    premade(&dir, 0o700);
    let target = Target::new(&dir);
    // The temp names rmm used, or might be guessed to use.
    for name in ["secrets.tmp", "secrets.json.tmp", ".probe", "lock.tmp"] {
        std::os::unix::fs::symlink(&target.path, dir.state().join(name)).unwrap();
    }
    dir.up_ok(&["--masters", "1", "--workers", "1"]);
    target.assert_unchanged("temp names");
    let secrets = dir.state().join("secrets.json");
    assert!(std::fs::symlink_metadata(&secrets).unwrap().file_type().is_file());
    assert_eq!(mode(&secrets), 0o600);
    assert_eq!(mode(&dir.state().join("lock")), 0o600);
    assert_eq!(mode(&dir.state()), 0o700);
    // No temp file of rmm's own is left behind.
    let left: Vec<String> = entries(&dir.state()).into_iter().filter(|n| n.contains(".tmp.") || n.starts_with(".probe.")).collect();
    assert_eq!(left, Vec::<String>::new());
}

#[test]
fn a_secrets_file_open_to_others_is_refused() {
    let dir = TestDir::new();
    dir.up_ok(&["--masters", "1", "--workers", "1"]);
    let secrets = dir.state().join("secrets.json");
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o644)).unwrap();
    let line = single_stderr_line(&dir.rmm(&["credentials"]).code(2));
    assert!(line.contains(&format!("`chmod 600 {}`", secrets.display())), "{line}");
}

/// Item 8: two `up` started in the same instant. The loser finds the lock
/// held and names the winner's pid (exit 4); neither fails on the other's
/// writability probe.
#[test]
fn two_ups_started_in_the_same_instant_the_loser_exits_4_naming_the_winner() {
    const PAIRS: usize = 20;
    for pair in 0..PAIRS {
        let dir = TestDir::new();
        let barrier = std::sync::Barrier::new(2);
        let children: Vec<std::process::Child> = std::thread::scope(|s| {
            let spawn = || {
                barrier.wait();
                dir.rmm(&["up", "--masters", "1", "--workers", "1"])
                    .env("RMM_LOCAL_CREATE_MS", "5000")
                    .cmd
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            };
            let a = s.spawn(spawn);
            let b = s.spawn(spawn);
            vec![a.join().unwrap(), b.join().unwrap()]
        });
        let pids: Vec<u32> = children.iter().map(|c| c.id()).collect();
        // Poll until one has exited (the loser); the winner keeps running
        // (5 s per machine creation).
        let mut children = children;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let loser = loop {
            if let Some(i) = (0..2).find(|&i| children[i].try_wait().unwrap().is_some()) {
                break i;
            }
            assert!(std::time::Instant::now() < deadline, "pair {pair}: neither exited");
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        let winner = 1 - loser;
        let out = children.remove(loser).wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(4), "pair {pair}: stderr: {}", text(&out.stderr));
        let line = single_stderr_line(&out);
        assert!(line.contains(&format!("pid {}", pids[winner])), "pair {pair}: {line}");
        assert!(children[0].try_wait().unwrap().is_none(), "pair {pair}: the winner is still running");
        let _ = children[0].kill();
        let _ = children[0].wait();
    }
}

#[test]
fn symlinks_planted_at_the_store_or_the_world_are_refused() {
    for sub in ["events", "world"] {
        let dir = TestDir::new();
        premade(&dir, 0o700);
        let outside = dir.tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, dir.state().join(sub)).unwrap();
        let line = single_stderr_line(&dir.rmm(&["up", "--masters", "1", "--workers", "1"]).code(2));
        assert!(line.contains(&format!("{sub} is a symlink")), "{line}");
        assert_eq!(entries(&outside), Vec::<String>::new(), "{sub}: nothing written through the symlink");
    }
}

/// Temp files of a process killed between creating and renaming them are
/// removed by the next lock holder; those of live processes are not.
#[test]
fn temp_files_of_dead_processes_are_swept_by_the_next_writer() {
    let dir = TestDir::new();
    dir.up_ok(&["--masters", "1", "--workers", "1"]);
    // A pid that is not running (the child of ours that has exited).
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    let dead = gone.id();
    let live = std::process::id();
    let names = [
        format!(".probe.{dead}.0123456789abcdef"),
        format!("secrets.json.tmp.{dead}.0123456789abcdef"),
        format!("secrets.json.tmp.{live}.0123456789abcdef"),
    ];
    for n in &names {
        std::fs::write(dir.state().join(n), "x").unwrap();
    }
    dir.rmm(&["down"]).ok();
    let left = entries(&dir.state());
    assert!(!left.contains(&names[0]) && !left.contains(&names[1]), "stale temps swept: {left:?}");
    assert!(left.contains(&names[2]), "a live process's temp is left alone: {left:?}");
}

/// The writer's lock is an `flock`: a child the writer was starting when
/// it died (forked, not yet at its `exec`) holds it a moment longer. A
/// holder whose pid in the lock file is dead is waited out (up to 2 s):
/// `status` right after a crash says `interrupted`, not `running`, and
/// `up --resume` takes the lock. (Seen in CI: the ssh crash matrix's
/// `status` said `running` right after the abort.)
#[test]
fn a_lock_held_a_moment_past_a_dead_writer_is_waited_out_by_status_and_resume() {
    let test = "the lock test (flock holds the lock as a straggler child would)";
    let Some(flock) = crate::support::require_tool(&["flock"], "RMM_TEST_FLOCK", test, "apt-get install -y util-linux") else { return };
    let dir = TestDir::new();
    let crashed = dir.rmm(&["up", "--masters", "1", "--workers", "1"]).env("RMM_CRASH_AFTER_APPEND", "4").run();
    assert!(!crashed.status.success(), "the run crashed at its 4th append");
    // A dead pid in the lock file, as the aborted writer left it.
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let dead = gone.id();
    gone.wait().unwrap();
    let lock = dir.state().join("lock");
    std::fs::write(&lock, dead.to_string()).unwrap();
    // The straggler: holds the lock for 600 ms, then lets it go.
    let hold = |ms: &str| {
        let c = std::process::Command::new(&flock).arg("-x").arg(&lock).args(["sleep", ms]).spawn().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        // Until the lock is taken (a shared `flock -n` fails).
        while std::process::Command::new(&flock).args(["-s", "-n"]).arg(&lock).arg("true").status().unwrap().success() {
            assert!(std::time::Instant::now() < deadline, "flock never took the lock");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        c
    };
    let mut straggler = hold("0.6");
    assert_eq!(dir.status()["run"]["state"], "interrupted", "status waited the straggler out");
    straggler.wait().unwrap();
    let mut straggler = hold("0.6");
    dir.rmm(&["up", "--resume"]).ok();
    straggler.wait().unwrap();
    assert_eq!(dir.status()["run"]["state"], "completed");
}
