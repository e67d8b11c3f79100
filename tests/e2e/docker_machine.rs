//! `driver = "docker-machine"` through the real binary, with the test
//! double of the CLI (`tests/docker-machine-double/docker-machine`, both
//! flavours: the same script under the name `rancher-machine`), whose
//! machines are local: its `ssh` runs commands as the local world's
//! machine, so the rancher machine's `docker run rancher/rancher` starts
//! the emulator and the node command runs the local system-agent.
//!
//! The first tests check the double itself against the reference's facts
//! (reference/docker-machine.md, rancher-current.md §4.2).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::support::{text, TestDir};

pub(crate) const CLUSTER: &str = "dmc";

fn double(flavour: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/docker-machine-double").join(flavour)
}

pub(crate) fn store(dir: &TestDir) -> PathBuf {
    dir.tmp.path().join("store")
}

/// The double, run directly on this test's store.
fn dm(dir: &TestDir, flavour: &str, args: &[&str]) -> Output {
    dm_env(dir, flavour, args, &[])
}

fn dm_env(dir: &TestDir, flavour: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(double(flavour));
    c.arg("-s").arg(store(dir)).args(args).env("DM_DOUBLE_RMM", env!("CARGO_BIN_EXE_rmm")).stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run the docker-machine double")
}

fn machines(dir: &TestDir) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(store(dir).join("machines"))
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

pub(crate) fn write_config(dir: &TestDir, flavour: &str, extra: &str) {
    let toml = format!(
        "driver = \"docker-machine\"\ncluster_name = \"{CLUSTER}\"\nmasters = 1\nworkers = 1\n\
         rancher_image = \"rancher/rancher:v2.15.1\"\ndistribution = \"rke2\"\n\n\
         [docker_machine]\nbinary = \"{}\"\nstorage_path = \"{}\"\nhttps_port = 8443\n\
         create_args = [\"--virtualbox-memory\", \"4096\"]\n{extra}",
        double(flavour).display(),
        store(dir).display()
    );
    std::fs::write(dir.tmp.path().join("rmm.toml"), toml).unwrap();
}

fn up(dir: &TestDir, env: &[(&str, &str)]) -> Output {
    let mut cmd = dir.rmm(&["up"]).env("DM_DOUBLE_RMM", env!("CARGO_BIN_EXE_rmm"));
    for (k, v) in env {
        cmd = cmd.env(k, v);
    }
    cmd.run()
}

fn assert_ok(out: &Output) {
    assert!(out.status.success(), "failed: {}\nstdout:\n{}\nstderr:\n{}", out.status, text(&out.stdout), text(&out.stderr));
}

// ---------------------------------------------------------------- the double

#[test]
fn double_exit_codes_and_texts_follow_the_reference() {
    for flavour in ["docker-machine", "rancher-machine"] {
        let dir = TestDir::new();
        assert_ok(&dm(&dir, flavour, &["create", "-d", "virtualbox", "m1"]));
        // "already exists" (ref §2, v0.13.0+ text), exit 1.
        let again = dm(&dir, flavour, &["create", "m1"]);
        assert_eq!(again.status.code(), Some(1));
        assert_eq!(text(&again.stderr).trim(), "Docker machine \"m1\" already exists");
        // a failed pre-create check: exit 3, nothing made.
        let pre = dm_env(&dir, flavour, &["create", "m2"], &[("DM_DOUBLE_PRECREATE_FAIL", "VBoxManage not found")]);
        assert_eq!(pre.status.code(), Some(3), "{}", text(&pre.stderr));
        assert_eq!(text(&pre.stderr).trim(), "Error with pre-create check: \"VBoxManage not found\"");
        assert!(!store(&dir).join("machines/m2").exists());
        // status of a missing machine: 1, rancher-machine 4 (rc §4.2).
        let st = dm(&dir, flavour, &["status", "nope"]);
        assert_eq!(st.status.code(), Some(if flavour == "rancher-machine" { 4 } else { 1 }));
        assert!(text(&st.stderr).contains("does not exist. Use \"docker-machine ls\""));
        // rm of a missing host: an error for 0.16.2, nothing to do for rancher-machine.
        let rm = dm(&dir, flavour, &["rm", "-y", "nope"]);
        assert_eq!(rm.status.code(), Some(if flavour == "rancher-machine" { 0 } else { 1 }), "{}", text(&rm.stderr));
        // env without SHELL (ref §3 env).
        let mut env = Command::new(double(flavour));
        env.arg("-s").arg(store(&dir)).args(["env", "m1"]).env_remove("SHELL");
        let env = env.output().unwrap();
        assert_eq!(env.status.code(), Some(1));
        assert_eq!(text(&env.stderr).trim(), "Error: Unknown shell");
        assert!(text(&env.stdout).contains("with the --shell flag."));
        let with_shell = dm(&dir, flavour, &["env", "--shell", "bash", "m1"]);
        assert!(text(&with_shell.stdout).contains("export DOCKER_HOST=\"tcp://127."));
    }
}

#[test]
fn double_half_made_machine_prompting_rm_and_states() {
    let dir = TestDir::new();
    let fail = dm_env(&dir, "docker-machine", &["create", "h1"], &[("DM_DOUBLE_FAIL_CREATE", "h1")]);
    assert_eq!(fail.status.code(), Some(1));
    assert_eq!(
        text(&fail.stderr).trim(),
        "Error creating machine: Error in driver during machine creation: exit status 1"
    );
    // half-registered (ref §6): listed with STATE Error, status fails, create again fails.
    let ls = dm(&dir, "docker-machine", &["ls", "--format", "{{.Name}} {{.State}} {{.Error}}"]);
    assert_eq!(text(&ls.stdout).trim(), "h1 Error machine does not exist");
    let st = dm(&dir, "docker-machine", &["status", "h1"]);
    assert_eq!(text(&st.stderr).trim(), "error getting state for host h1: machine does not exist");
    assert_eq!(dm(&dir, "docker-machine", &["create", "h1"]).status.code(), Some(1));
    // rm without -y prompts, and EOF on stdin does nothing, exit 0.
    let rm = dm(&dir, "docker-machine", &["rm", "h1"]);
    assert_eq!(rm.status.code(), Some(0));
    assert!(text(&rm.stdout).ends_with("Are you sure? (y/n): "), "{}", text(&rm.stdout));
    assert_eq!(machines(&dir), vec!["h1"]);
    assert_ok(&dm(&dir, "docker-machine", &["rm", "-f", "-y", "h1"]));
    assert!(machines(&dir).is_empty());
    assert_ok(&dm(&dir, "docker-machine", &["create", "h1"]));
    // stop → Stopped, ip and ssh refuse; start → a new address, booting first.
    let ip1 = text(&dm(&dir, "docker-machine", &["ip", "h1"]).stdout).trim().to_string();
    assert_ok(&dm(&dir, "docker-machine", &["stop", "h1"]));
    assert_eq!(text(&dm(&dir, "docker-machine", &["status", "h1"]).stdout).trim(), "Stopped");
    assert_eq!(text(&dm(&dir, "docker-machine", &["ip", "h1"]).stderr).trim(), "Error getting IP address: Host is not running");
    let ssh = dm(&dir, "docker-machine", &["ssh", "h1", "true"]);
    assert_eq!(text(&ssh.stderr).trim(), "Error: Cannot run SSH command: Host \"h1\" is not running");
    assert_ok(&dm_env(&dir, "docker-machine", &["start", "h1"], &[("DM_DOUBLE_BOOT_POLLS", "1")]));
    assert_eq!(text(&dm(&dir, "docker-machine", &["ip", "h1"]).stderr).trim(), "Error getting IP address: Host is not running");
    let ip2 = text(&dm(&dir, "docker-machine", &["ip", "h1"]).stdout).trim().to_string();
    assert!(ip2.starts_with("127.") && ip2 != ip1, "{ip1} then {ip2}");
    // ssh: runs in the machine's own directory; a non-zero status is
    // `exit status N` and exit 1 (ref §3 ssh).
    let pwd = dm(&dir, "docker-machine", &["ssh", "h1", "--", "pwd"]);
    assert_eq!(text(&pwd.stdout).trim(), store(&dir).join("machines/h1/h1/home").display().to_string());
    let three = dm(&dir, "docker-machine", &["ssh", "h1", "exit 3"]);
    assert_eq!((three.status.code(), text(&three.stderr).trim().to_string()), (Some(1), "exit status 3".to_string()));
    let timeout = dm_env(&dir, "docker-machine", &["ls", "--format", "{{.Name}} {{.State}}"], &[("DM_DOUBLE_TIMEOUT", "h1")]);
    assert_eq!(text(&timeout.stdout).trim(), "h1 Timeout");
}

// ---------------------------------------------------------------- rmm

#[test]
fn up_and_down_with_both_flavours() {
    for flavour in ["docker-machine", "rancher-machine"] {
        let dir = TestDir::new();
        write_config(&dir, flavour, "");
        let argv_log = dir.tmp.path().join("argv.log");
        let out = up(&dir, &[("DM_DOUBLE_ARGV_LOG", argv_log.to_str().unwrap())]);
        assert_ok(&out);
        let want: Vec<String> =
            ["master01", "rancher", "worker01"].iter().map(|m| format!("{CLUSTER}-{m}")).collect();
        assert_eq!(machines(&dir), want);
        for m in &want {
            let rec = std::fs::read_to_string(store(&dir).join("machines").join(m).join("rmm-machine.json")).unwrap();
            assert!(rec.contains(&format!("\"cluster\": \"{CLUSTER}\"")), "{rec}");
        }
        // The env file is gone; the password is on no file of the rancher machine's home.
        let home = store(&dir).join(format!("machines/{CLUSTER}-rancher/{CLUSTER}-rancher/home"));
        assert!(home.is_dir() && !home.join(".rmm-rancher.env").exists());
        // The node names in Rancher stay the machine names.
        let view = crate::support::ask_rancher(&dir);
        let mut nodes: Vec<String> =
            view.nodes.iter().map(|n| n["nodeName"].as_str().or(n["hostname"].as_str()).unwrap_or("").to_string()).collect();
        nodes.sort();
        assert_eq!(nodes, vec!["master01", "worker01"], "{:?}", view.nodes);
        // The bootstrap password is in no file of the store but Rancher's
        // own data dir (the container's volume).
        let secrets: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.state().join("secrets.json")).unwrap()).unwrap();
        let password = secrets
            .as_object()
            .unwrap()
            .iter()
            .find(|(k, _)| k.ends_with("/bootstrap-password"))
            .map(|(_, v)| v.as_str().unwrap().to_string())
            .expect("a bootstrap password");
        // No secret on any command line of the CLI (what `ps` shows).
        let argv = std::fs::read_to_string(&argv_log).unwrap();
        assert!(argv.contains(&format!("ssh {CLUSTER}-master01 sh -s")), "{argv}");
        for (k, v) in secrets.as_object().unwrap() {
            if k.ends_with("/bootstrap-password") || k.ends_with("/node-command") || k.ends_with("/api-token") {
                let v = v.as_str().unwrap();
                // the node command's secret is its token
                let words: Vec<&str> = v.split_whitespace().collect();
                let probe = words.iter().position(|w| *w == "--token").map(|i| words[i + 1]).unwrap_or(v);
                assert!(probe.len() >= 16, "{k}: a probe long enough to mean something");
                assert!(!argv.contains(probe), "{k} is on a command line of the CLI:\n{argv}");
            }
        }
        for f in files_under(&store(&dir)) {
            if f.components().any(|c| c.as_os_str() == "rancher") && f.to_string_lossy().contains("-rancher/rancher/") {
                continue;
            }
            let bytes = std::fs::read(&f).unwrap_or_default();
            assert!(!String::from_utf8_lossy(&bytes).contains(&password), "the bootstrap password is in {}", f.display());
        }
        let down = dir.rmm(&["down", "--yes"]).env("DM_DOUBLE_RMM", env!("CARGO_BIN_EXE_rmm")).run();
        assert_ok(&down);
        assert!(machines(&dir).is_empty(), "{:?}", machines(&dir));
        // Nothing of the machines runs on (their processes die with the VM).
        let left = Command::new("pgrep").args(["-f", &store(&dir).display().to_string()]).output().unwrap();
        assert!(text(&left.stdout).trim().is_empty(), "left running: {}", text(&left.stdout));
    }
}

fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn a_failed_and_a_hung_create_are_removed_and_made_again() {
    let dir = TestDir::new();
    write_config(&dir, "docker-machine", "create_timeout_s = 5\n");
    let out = up(
        &dir,
        &[
            ("DM_DOUBLE_FAIL_CREATE", &format!("{CLUSTER}-master01:1")),
            ("DM_DOUBLE_HANG_CREATE", &format!("{CLUSTER}-worker01:1")),
        ],
    );
    assert_ok(&out);
    assert_eq!(std::fs::read_to_string(store(&dir).join(format!(".double/hits-fail-{CLUSTER}-master01"))).unwrap().trim(), "1");
    assert_eq!(std::fs::read_to_string(store(&dir).join(format!(".double/hits-hang-{CLUSTER}-worker01"))).unwrap().trim(), "1");
    assert_eq!(machines(&dir).len(), 3);
    // no hung create is left running
    let hung = Command::new("pgrep").args(["-f", &format!("create -d virtualbox --virtualbox-memory 4096 {CLUSTER}-worker01")]).output();
    if let Ok(h) = hung {
        assert!(text(&h.stdout).trim().is_empty(), "a hung create is still running: {}", text(&h.stdout));
    }
}

#[test]
fn a_failed_pre_create_check_fails_the_run_with_one_line_and_makes_nothing() {
    let dir = TestDir::new();
    write_config(&dir, "rancher-machine", "");
    let out = up(&dir, &[("DM_DOUBLE_PRECREATE_FAIL", "VBoxManage not found")]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    let line = err.lines().filter(|l| l.starts_with("rmm:")).collect::<Vec<_>>();
    assert_eq!(line.len(), 1, "{err}");
    assert!(line[0].contains("pre-create check"), "{err}");
    assert!(machines(&dir).is_empty(), "{:?}", machines(&dir));
}

#[test]
fn stopped_machines_are_started_again_on_resume_and_their_new_addresses_read() {
    let dir = TestDir::new();
    write_config(&dir, "rancher-machine", "");
    // Killed after the creates happened, before their outcomes were logged.
    let crashed = up(&dir, &[("RMM_CRASH_BEFORE_OUTCOME", "1")]);
    assert!(!crashed.status.success());
    let mut before = Vec::new();
    for m in ["rancher", "master01", "worker01"] {
        let full = format!("{CLUSTER}-{m}");
        // the creates that were in flight end on their own (not killed with rmm)
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let ip = loop {
            let ip = dm(&dir, "rancher-machine", &["ip", &full]);
            if ip.status.success() {
                break text(&ip.stdout).trim().to_string();
            }
            assert!(std::time::Instant::now() < deadline, "{full} never came up: {}", text(&ip.stderr));
            std::thread::sleep(std::time::Duration::from_millis(100));
        };
        before.push((m, ip));
        assert_ok(&dm(&dir, "rancher-machine", &["stop", &full]));
    }
    // The resume starts them again (booting a while: `ip` errors meanwhile).
    let out = dir.rmm(&["up", "--resume"]).env("DM_DOUBLE_RMM", env!("CARGO_BIN_EXE_rmm")).env("DM_DOUBLE_BOOT_POLLS", "2").run();
    assert_ok(&out);
    let status = dir.status();
    for (m, old) in before {
        let actor = status["actors"].as_array().unwrap().iter().find(|a| a["name"] == m).unwrap();
        let now = dm(&dir, "rancher-machine", &["ip", &format!("{CLUSTER}-{m}")]);
        let now = text(&now.stdout).trim().to_string();
        assert_eq!(actor["ip"].as_str(), Some(now.as_str()), "{m}: the log has the address read after the start");
        assert_ne!(now, old, "{m}: a started machine has a new address in the double");
    }
    // An orphan: a machine with the cluster's prefix unknown to the log.
    assert_ok(&dm(&dir, "rancher-machine", &["create", &format!("{CLUSTER}-worker09")]));
    let refreshed = dir.status_refresh();
    let orphans: Vec<&str> = refreshed["orphans"].as_array().unwrap().iter().filter_map(|o| o["name"].as_str()).collect();
    assert_eq!(orphans, ["worker09"], "{refreshed}");
    assert_ok(&dir.rmm(&["down", "--yes"]).env("DM_DOUBLE_RMM", env!("CARGO_BIN_EXE_rmm")).run());
    assert_eq!(machines(&dir), vec![format!("{CLUSTER}-worker09")], "down leaves the orphan");
    assert_ok(&dir.rmm(&["down", "--yes", "--orphans"]).env("DM_DOUBLE_RMM", env!("CARGO_BIN_EXE_rmm")).run());
    assert!(machines(&dir).is_empty(), "{:?}", machines(&dir));
}

#[test]
fn rke1_on_an_emulated_2_11_with_the_docker_machine_flavour() {
    let dir = TestDir::new();
    let toml = format!(
        "driver = \"docker-machine\"\ncluster_name = \"{CLUSTER}\"\nmasters = 1\nworkers = 1\n\
         rancher_image = \"rancher/rancher:v2.11.3\"\ndistribution = \"rke1\"\n\n\
         [docker_machine]\nbinary = \"{}\"\nstorage_path = \"{}\"\nhttps_port = 8443\n",
        double("docker-machine").display(),
        store(&dir).display()
    );
    std::fs::write(dir.tmp.path().join("rmm.toml"), toml).unwrap();
    assert_ok(&up(&dir, &[]));
    // The machines' hostnames are `dmc-master01` …; the nodes are named by --node-name.
    let view = crate::support::ask_rancher(&dir);
    let mut nodes: Vec<String> =
        view.nodes.iter().map(|n| n["nodeName"].as_str().or(n["hostname"].as_str()).unwrap_or("").to_string()).collect();
    nodes.sort();
    assert_eq!(nodes, vec!["master01", "worker01"], "{:?}", view.nodes);
    assert_ok(&dir.rmm(&["down", "--yes"]).env("DM_DOUBLE_RMM", env!("CARGO_BIN_EXE_rmm")).run());
    assert!(machines(&dir).is_empty());
}

/// Issue 10: a machine Stopped or Saved *after* its create step was
/// recorded is started again on resume and its new address read (`ip`
/// errors while it boots are waited out), then the run completes with the
/// node registered from that address.
///
/// The core's once-per-attempt node machine check (`check_machine`:
/// `MachineDriver::inspect`, then `restart`) meets the saved machine; the
/// driver's side is `src/drivers/docker_machine.rs`, tested state by state
/// there.
#[test]
fn a_machine_stopped_after_its_create_was_recorded_is_started_again_on_resume_at_its_new_address() {
    // Crashed once every create is in the log, before any agent ran: the
    // first append index where that holds, each tried in a fresh dir.
    let mut k = 8;
    let dir = loop {
        let d = TestDir::new();
        write_config(&d, "rancher-machine", "");
        let crashed = up(&d, &[("RMM_CRASH_AFTER_APPEND", &k.to_string())]);
        assert!(!crashed.status.success(), "the run ended before append {k}");
        let events = d.events();
        let created = events.iter().filter(|e| e["kind"] == "StepSucceeded" && e["data"]["step"] == "create_machine").count();
        let agents = events.iter().any(|e| e["data"]["step"] == "run_agent");
        if created == 3 && !agents {
            break d;
        }
        assert!(!agents && k < 40, "no append has every create recorded and no agent started");
        k += 1;
    };
    let full = format!("{CLUSTER}-worker01");
    let old = text(&dm(&dir, "rancher-machine", &["ip", &full]).stdout).trim().to_string();
    // Saved, as `VBoxManage controlvm … savestate` leaves it (the double's VM state).
    std::fs::write(store(&dir).join("machines").join(&full).join(&full).join("state"), "saved").unwrap();
    assert_eq!(text(&dm(&dir, "rancher-machine", &["status", &full]).stdout).trim(), "Saved");
    let out = dir.rmm(&["up", "--resume"]).env("DM_DOUBLE_BOOT_POLLS", "2").run();
    assert_ok(&out);
    let now = text(&dm(&dir, "rancher-machine", &["ip", &full]).stdout).trim().to_string();
    assert!(!now.is_empty() && now != old, "started again at a new address: {old} then {now}");
    let status = dir.status();
    let worker = status["actors"].as_array().unwrap().iter().find(|a| a["name"] == "worker01").unwrap();
    assert_eq!(worker["ip"].as_str(), Some(now.as_str()), "the log has the new address: {worker}");
    let machines = crate::support::ask_rancher_v1(&dir).machines;
    let w = machines.iter().find(|m| m["metadata"]["labels"]["rke.cattle.io/node-name"] == "worker01").expect("worker01 registered");
    assert!(w["status"]["addresses"].to_string().contains(&format!("\"{now}\"")), "registered from its new address: {w}");
}

/// Issue 11, "Safety on real machines": `rmm down` on a driver that makes
/// real machines asks first on a terminal, naming them; off a terminal it
/// refuses without `--yes` (exit 2) and removes nothing.
#[test]
fn down_on_real_machines_asks_first_and_refuses_off_a_terminal_without_yes() {
    let dir = TestDir::new();
    write_config(&dir, "rancher-machine", "");
    assert_ok(&up(&dir, &[]));
    let all = machines(&dir);
    assert_eq!(all.len(), 3, "{all:?}");

    let out = dir.rmm(&["down"]).env("DM_DOUBLE_RMM", env!("CARGO_BIN_EXE_rmm")).code(2);
    let line = crate::support::single_stderr_line(&out);
    assert!(line.starts_with("rmm: refusing to remove") && line.contains("--yes"), "{line}");
    assert!(line.contains("master01") && line.contains("worker01") && line.contains("rancher"), "names what it would remove: {line}");
    assert_eq!(machines(&dir), all, "nothing removed");

    // On a terminal: the question names the machines; "n" keeps them.
    let mut screen = crate::live_view::Screen::spawn_with_input(
        &dir,
        &["down"],
        &[("DM_DOUBLE_RMM", env!("CARGO_BIN_EXE_rmm"))],
        "n\n",
    );
    assert_eq!(screen.wait(std::time::Duration::from_secs(60)), Some(0), "{}", screen.text());
    let shown = screen.text();
    assert!(shown.contains("Remove 3 docker-machine machines of cluster "), "{shown}");
    assert!(shown.contains(" (master01, rancher, worker01)? [y/N]"), "{shown}");
    assert!(shown.contains("Nothing removed."), "{shown}");
    assert_eq!(machines(&dir), all, "nothing removed");

    assert_ok(&dir.rmm(&["down", "--yes"]).env("DM_DOUBLE_RMM", env!("CARGO_BIN_EXE_rmm")).run());
    assert!(machines(&dir).is_empty(), "{:?}", machines(&dir));
}

/// The double's `ls`: every machine with its state (`Running`, …).
fn ls(dir: &TestDir) -> Vec<(String, String)> {
    let out = dm(dir, "docker-machine", &["ls", "--format", "{{.Name}} {{.State}}"]);
    assert_ok(&out);
    let mut rows: Vec<(String, String)> = text(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (n, s) = l.split_once(' ').unwrap_or((l, ""));
            (n.to_string(), s.trim().to_string())
        })
        .collect();
    rows.sort();
    rows
}

/// After a scale step: the double lists exactly rancher and `nodes`, each
/// Running; Rancher (the emulator, through its /v1 API) exactly `nodes`,
/// each Running, registered once from its machine's address; `rmm
/// status` and `rmm list` say the same.
fn check_scaled(dir: &TestDir, what: &str, nodes: &[&str]) {
    let mut expect: Vec<String> = nodes.iter().map(|n| n.to_string()).chain(["rancher".to_string()]).collect();
    expect.sort();
    let listed = ls(dir);
    let names: Vec<String> = listed.iter().map(|(n, _)| n.strip_prefix(&format!("{CLUSTER}-")).unwrap_or(n).to_string()).collect();
    assert_eq!(names, expect, "{what}: the double's machines: {listed:?}");
    assert!(listed.iter().all(|(_, s)| s == "Running"), "{what}: {listed:?}");
    let ip = |m: &str| text(&dm(dir, "docker-machine", &["ip", &format!("{CLUSTER}-{m}")]).stdout).trim().to_string();

    let rancher = crate::support::ask_rancher_v1(dir);
    assert_eq!(rancher.clusters.len(), 1, "{what}: clusters");
    assert_eq!(rancher.clusters[0]["status"]["ready"], true, "{what}: {}", rancher.clusters[0]["status"]);
    let mut in_rancher: Vec<String> = Vec::new();
    for m in &rancher.machines {
        let node = m["metadata"]["labels"]["rke.cattle.io/node-name"].as_str().unwrap().to_string();
        assert_eq!(m["status"]["phase"], "Running", "{what}: {m}");
        assert!(m["status"]["nodeRef"].is_object(), "{what}: {m}");
        assert!(m["status"]["addresses"].to_string().contains(&format!("\"{}\"", ip(&node))), "{what}: {node} at its machine's address: {m}");
        in_rancher.push(node);
    }
    in_rancher.sort();
    let mut want: Vec<String> = nodes.iter().map(|n| n.to_string()).collect();
    want.sort();
    assert_eq!(in_rancher, want, "{what}: the nodes Rancher lists, each once");
    // The emulator's ledger, in its data dir on the rancher machine.
    let data = store(dir).join(format!("machines/{CLUSTER}-rancher/{CLUSTER}-rancher/rancher"));
    let made = crate::support::registrations_in(&data).made;
    for node in &want {
        assert_eq!(made.get(&format!("{CLUSTER}/{node}")), Some(&1), "{what}: {node} registered once: {made:?}");
    }
    assert!(made.values().all(|n| *n == 1), "{what}: {made:?}");

    let status = dir.status_refresh();
    assert_eq!(status["run"]["state"], "completed", "{what}: {status}");
    assert_eq!(status["orphans"], serde_json::Value::Array(vec![]), "{what}: orphans: {status}");
    let mut actors: Vec<String> = Vec::new();
    for a in status["actors"].as_array().unwrap() {
        let name = a["name"].as_str().unwrap().to_string();
        assert_eq!(a["state"], "done", "{what}: {a}");
        assert_eq!(a["observed"], "running", "{what}: {a}");
        assert_eq!(a["ip"], ip(&name).as_str(), "{what}: {a}");
        actors.push(name);
    }
    actors.sort();
    assert_eq!(actors, expect, "{what}: the actors of status");
    let list = crate::support::json(&dir.rmm(&["list", "--json"]).ok().stdout);
    let entry = &list.as_array().unwrap().iter().find(|e| e["name"] == CLUSTER).unwrap_or_else(|| panic!("{what}: {list}")).clone();
    assert_eq!(entry["state"], "completed", "{what}: {entry}");
    assert_eq!(entry["driver"], "docker-machine", "{what}: {entry}");
    assert_eq!(entry["url"], status["rancher"]["url"], "{what}: {entry}");
}

/// Issue 11 on the docker-machine driver: 1+1 → 1+2 → 1+1. The removed
/// worker is deleted in Rancher first, then `rm`'d: gone from the
/// double's `ls` and its store, nothing of it left running.
#[test]
fn scale_adds_a_machine_and_removes_it_deleted_in_rancher_first() {
    let dir = TestDir::new();
    write_config(&dir, "docker-machine", "");
    let up_with = |args: &[&str]| {
        let mut all = vec!["up"];
        all.extend_from_slice(args);
        dir.rmm(&all).ok()
    };
    up_with(&[]);
    check_scaled(&dir, "1+1", &["master01", "worker01"]);
    let out = up_with(&["--workers", "2"]);
    assert!(text(&out.stdout).contains("(1 master, 2 workers): scaled in"), "{}", text(&out.stdout));
    check_scaled(&dir, "1+2", &["master01", "worker01", "worker02"]);
    let events_before = dir.events().len();
    let out = up_with(&["--workers", "1"]);
    assert!(text(&out.stdout).contains("(1 master, 1 worker): scaled in"), "{}", text(&out.stdout));
    check_scaled(&dir, "1+2 → 1+1", &["master01", "worker01"]);
    let gone = store(&dir).join(format!("machines/{CLUSTER}-worker02"));
    assert!(!gone.exists(), "{} left in the store", gone.display());
    let left = Command::new("pgrep").args(["-f", &gone.display().to_string()]).output().unwrap();
    assert!(text(&left.stdout).trim().is_empty(), "worker02's processes left running: {}", text(&left.stdout));
    let events = dir.events();
    assert_eq!(crate::support::steps_done(&events[events_before..], "worker02"), ["delete_node", "remove_machine"]);
    assert_ok(&dir.rmm(&["down", "--yes"]).run());
    assert!(machines(&dir).is_empty(), "{:?}", machines(&dir));
}
