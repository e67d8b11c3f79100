//! The local world as a real one would behave: the Rancher container's
//! restart policy and a resume that brings a dead server back (issue 7
//! item 2), trust from the machine rather than the first answer (item 4),
//! a world found without the log (item 7), and the small ones of item 8
//! (staging, the ledger, quoting, a detached emulator holding no caller's
//! descriptor).

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::crash::check_completed_once;
use crate::support::*;

/// Pids of this test's processes whose command line holds `word` (the
/// container's supervisor: `supervise`; the emulator: `serve`).
fn procs(dir: &TestDir, word: &str) -> Vec<i32> {
    let needle = dir.state().to_string_lossy().to_string();
    let mut pids = Vec::new();
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else { continue };
        let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).to_string()).collect();
        let stat = std::fs::read_to_string(p.path().join("stat")).unwrap_or_default();
        let zombie = stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
        if !zombie && args.iter().any(|a| a == word) && args.iter().any(|a| a.contains(&needle)) {
            pids.push(pid);
        }
    }
    pids
}

fn signal(pid: i32, sig: &str) {
    Command::new("kill").args([sig, &pid.to_string()]).status().unwrap();
}

/// Polls `cond` every 20 ms until it holds; fails naming `what` after `secs`.
fn wait_until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {secs}s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills the Rancher "container": its supervisor and the emulator.
fn kill_container(dir: &TestDir) {
    for pid in procs(dir, "supervise").into_iter().chain(procs(dir, "serve")) {
        signal(pid, "-9");
    }
    wait_until(10, "the container's processes to die", || procs(dir, "supervise").is_empty() && procs(dir, "serve").is_empty());
}

fn server_addr(dir: &TestDir) -> String {
    let status = dir.status();
    let ip = status["actors"].as_array().unwrap().iter().find(|a| a["name"] == "rancher").unwrap()["ip"].as_str().unwrap().to_string();
    format!("{ip}:8443")
}

fn answers(addr: &str) -> bool {
    std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_millis(200)).is_ok()
}

// ---------------------------------------------------------------- item 2

#[test]
fn a_resume_starts_a_dead_rancher_server_again_records_it_and_completes() {
    let dir = TestDir::new();
    // Crash well after start_server (it is done by the 18th append at the
    // latest: 2 run events, 7 creates, start_server) and long before the end.
    let out = dir.rmm(&["up"]).env("RMM_CRASH_AFTER_APPEND", "22").run();
    assert_eq!(out.status.signal(), Some(6), "{}", text(&out.stderr));
    assert!(!procs(&dir, "serve").is_empty(), "the emulator outlives rmm");
    kill_container(&dir);

    dir.rmm(&["up", "--resume"]).ok();
    let events = dir.events();
    let checks: Vec<&Value> = events
        .iter()
        .filter(|e| e["actor"] == "rancher" && e["kind"] == "StepSucceeded" && e["data"]["step"] == "check_server")
        .collect();
    let restarted = checks.iter().find(|e| e["attempt"] == 2).expect("the resume checked the server");
    assert_eq!(restarted["data"]["outcome"]["server_restarted"]["state"], "exited", "{restarted}");
    check_completed_once(&dir, "server killed between runs", 1);
    let status = dir.status_refresh();
    assert_eq!(status["rancher"]["server"]["container"], "running", "{status}");
    assert_eq!(status["rancher"]["server"]["answering"], true, "{status}");
}

/// A completed cluster whose server went down, then scaled: the scale's
/// attempt starts the server again and asks again whether the cluster is
/// ready before it says so (the readiness seen before the server went
/// says nothing about now).
#[test]
fn a_scale_after_the_server_died_starts_it_again_and_asks_again_whether_the_cluster_is_ready() {
    let dir = TestDir::new();
    dir.rmm(&["up", "--masters", "1", "--workers", "1"]).ok();
    kill_container(&dir);
    dir.rmm(&["up", "--workers", "2"]).ok();
    let events = dir.events();
    let attempt = events.iter().filter_map(|e| e["attempt"].as_u64()).max().unwrap();
    assert_eq!(attempt, 2);
    let in_scale = |step: &str| {
        events.iter().any(|e| e["attempt"] == 2 && e["actor"] == "rancher" && e["kind"] == "StepSucceeded" && e["data"]["step"] == step)
    };
    assert!(in_scale("check_server") && in_scale("wait_cluster_ready"), "the scale asked Rancher again");
    let restarted = events.iter().find(|e| e["attempt"] == 2 && e["data"]["step"] == "check_server" && e["kind"] == "StepSucceeded").unwrap();
    assert_eq!(restarted["data"]["outcome"]["server_restarted"]["state"], "exited", "{restarted}");
    let ready = events.iter().rposition(|e| e["data"]["step"] == "wait_cluster_ready" && e["kind"] == "StepSucceeded").unwrap();
    let check = events.iter().rposition(|e| e["data"]["step"] == "check_server" && e["kind"] == "StepSucceeded").unwrap();
    assert!(check < ready, "readiness asked after the server came back");
    assert_eq!(dir.status()["run"]["state"], "completed");
}

#[test]
fn a_server_that_cannot_bind_its_port_is_waited_for_and_the_resume_completes_once_it_is_free() {
    let dir = TestDir::new();
    let out = dir.rmm(&["up"]).env("RMM_CRASH_AFTER_APPEND", "22").run();
    assert_eq!(out.status.signal(), Some(6), "{}", text(&out.stderr));
    kill_container(&dir);
    // Something else holds the port: it accepts and hangs up (no TLS).
    let addr = server_addr(&dir);
    let blocker = std::net::TcpListener::bind(&addr).expect("take the server's port");
    blocker.set_nonblocking(true).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopper = stop.clone();
    let holder = std::thread::spawn(move || {
        while !stopper.load(std::sync::atomic::Ordering::SeqCst) {
            if let Ok((conn, _)) = blocker.accept() {
                drop(conn);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    let resume = dir.rmm(&["up", "--resume"]).cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let log_dir = dir.state().join("world/machines/rancher/containers");
    let container_log = || -> String {
        std::fs::read_dir(&log_dir)
            .map(|d| d.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "log")).map(|e| std::fs::read_to_string(e.path()).unwrap_or_default()).collect())
            .unwrap_or_default()
    };
    wait_until(30, "the restarted server to fail to bind and be restarted", || container_log().matches("restarting it in").count() >= 2);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    holder.join().unwrap();
    let out = resume.wait_with_output().unwrap();
    assert!(out.status.success(), "the resume completes once the port is free: {}", text(&out.stderr));
    assert!(container_log().contains("Address already in use"), "{}", container_log());
    let events = dir.events();
    assert!(
        events.iter().any(|e| e["attempt"] == 2 && e["data"]["step"] == "check_server" && e["data"]["outcome"]["server_restarted"]["state"] == "exited"),
        "the restart is recorded"
    );
    check_completed_once(&dir, "server could not bind", 1);
}

#[test]
fn the_restart_policy_brings_a_killed_emulator_back_without_rmm() {
    let dir = TestDir::new();
    dir.up_ok(&["--masters", "1", "--workers", "1"]);
    let addr = server_addr(&dir);
    let first = procs(&dir, "serve");
    assert_eq!(first.len(), 1, "one emulator: {first:?}");
    assert_eq!(procs(&dir, "supervise").len(), 1, "under one supervisor");
    signal(first[0], "-9");
    wait_until(20, "the emulator to be restarted by its supervisor", || {
        let now = procs(&dir, "serve");
        now.len() == 1 && now[0] != first[0] && answers(&addr)
    });
    let status = dir.status_refresh();
    assert_eq!(status["rancher"]["server"]["container"], "running", "{status}");
    assert_eq!(status["rancher"]["server"]["answering"], true, "{status}");
    assert_eq!(status["rancher"]["server"]["ca_matches"], true, "the same server, with its CA: {status}");
    let logs = std::fs::read_dir(dir.state().join("world/machines/rancher/containers")).unwrap();
    let log: String = logs.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "log")).map(|e| std::fs::read_to_string(e.path()).unwrap()).collect();
    assert!(log.contains("restarting it in 100 ms (restart policy unless-stopped)"), "{log}");
}

#[test]
fn status_refresh_shows_a_stopped_server_which_the_policy_leaves_stopped() {
    let dir = TestDir::new();
    dir.up_ok(&["--masters", "1", "--workers", "1"]);
    let addr = server_addr(&dir);
    // `docker stop`: SIGTERM to the container.
    let sup = procs(&dir, "supervise");
    assert_eq!(sup.len(), 1);
    signal(sup[0], "-TERM");
    wait_until(20, "the container to stop", || procs(&dir, "supervise").is_empty());
    assert!(procs(&dir, "serve").is_empty(), "a stopped container is not restarted");
    assert!(!answers(&addr));
    let status = dir.status_refresh();
    assert_eq!(status["rancher"]["server"]["container"], "exited", "{status}");
    assert_eq!(status["rancher"]["server"]["answering"], false, "{status}");
    let actors = status["actors"].as_array().unwrap();
    assert!(actors.iter().all(|a| a["observed"] == "running"), "the machines still run: {status}");
    let out = text(&dir.rmm(&["status", "--refresh"]).ok().stdout);
    assert!(out.contains("server: container exited, not answering"), "{out}");
}

// ---------------------------------------------------------------- item 4

/// What the squatter saw: (method, path, had a body or an Authorization).
type Seen = Arc<Mutex<Vec<(String, String, bool)>>>;

/// An HTTPS server with its own CA on `addr`, answering like a Rancher
/// (`/ping`, `cacerts`) and recording every request.
fn squatter(addr: std::net::SocketAddr, seen: Seen) -> tokio::runtime::Runtime {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let ip = addr.ip().to_string();
    rt.block_on(async move {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "dynamiclistener-ca");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![ip]).unwrap().signed_by(&key, &ca, &ca_key).unwrap();
        let ca_pem = ca.pem().trim().to_string();
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()))
            .unwrap();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let (seen, ca_pem) = (seen.clone(), ca_pem.clone());
            async move {
                let (parts, body) = req.into_parts();
                let body = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
                let credential = !body.is_empty() || parts.headers.contains_key("authorization");
                seen.lock().unwrap().push((parts.method.to_string(), parts.uri.path().to_string(), credential));
                match parts.uri.path() {
                    "/ping" => (axum::http::StatusCode::OK, "pong".to_string()),
                    "/v3/settings/cacerts" => (axum::http::StatusCode::OK, serde_json::json!({"value": ca_pem}).to_string()),
                    _ => (axum::http::StatusCode::UNAUTHORIZED, "{}".to_string()),
                }
            }
        });
        let listener = std::net::TcpListener::bind(addr).expect("the squatter takes the server's address");
        let server = axum_server::from_tcp_rustls(listener, axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(config)));
        tokio::spawn(server.serve(app.into_make_service()));
    });
    rt
}

#[test]
fn a_squatter_on_the_servers_address_after_a_crash_gets_no_credential() {
    let dir = TestDir::new();
    // A slow boot: the crash lands while rmm waits for /ping, before pin_ca.
    let mut child = dir
        .rmm(&["up", "--masters", "1", "--workers", "1"])
        .env("RMM_LOCAL_RANCHER_BOOT_MS", "4000")
        .cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(30, "rmm to wait for the server", || {
        dir.events_while_running().iter().any(|e| e["actor"] == "rancher" && e["kind"] == "StepStarted" && e["data"]["step"] == "wait_ready")
    });
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!dir.events().iter().any(|e| e["data"]["step"] == "pin_ca"), "crashed before pin_ca");
    kill_container(&dir);

    let addr = server_addr(&dir);
    let seen: Seen = Arc::default();
    let rt = squatter(addr.parse().unwrap(), seen.clone());
    let out = dir.rmm(&["up", "--resume"]).code(1);
    let err = text(&out.stderr);
    assert!(err.contains("CA mismatch") && err.contains("no credential was sent"), "{err}");
    let seen = seen.lock().unwrap().clone();
    assert!(seen.iter().any(|(_, p, _)| p == "/ping"), "the squatter was asked: {seen:?}");
    assert!(seen.iter().all(|(_, _, credential)| !credential), "a credential reached the squatter: {seen:?}");
    assert!(!dir.events().iter().any(|e| e["data"]["step"] == "login"), "no login was tried");
    drop(rt);
}

// ---------------------------------------------------------------- item 7

#[test]
fn a_live_cluster_is_found_and_removed_without_the_log() {
    let dir = TestDir::new();
    dir.up_ok(&["--masters", "1", "--workers", "1"]);
    let addr = server_addr(&dir);
    std::fs::remove_dir_all(dir.state().join("events")).unwrap();

    let status = dir.status_refresh();
    assert_eq!(status["run"]["state"], "none");
    assert_eq!(status["cluster"], "tinysetup");
    let orphans: Vec<&str> = status["orphans"].as_array().unwrap().iter().map(|o| o["name"].as_str().unwrap()).collect();
    assert_eq!(orphans, ["master01", "rancher", "worker01"], "{status}");
    let out = text(&dir.rmm(&["status", "--refresh"]).ok().stdout);
    assert!(out.contains("rmm down --cluster tinysetup"), "{out}");

    // A plain down does not say "Nothing to remove": it names the way.
    let out = dir.rmm(&["down"]).code(3);
    assert!(text(&out.stderr).contains("rmm down --cluster tinysetup"), "{}", text(&out.stderr));
    // No terminal and no --yes: refused, nothing removed.
    let mut no_tty = dir.rmm(&["down", "--cluster", "tinysetup"]);
    no_tty.cmd.stdin(Stdio::null());
    let out = no_tty.code(2);
    assert!(text(&out.stderr).starts_with("rmm: refusing to remove 3 machines"), "{}", text(&out.stderr));
    assert!(answers(&addr));

    let out = dir.rmm(&["down", "--cluster", "tinysetup", "--yes"]).ok();
    assert!(text(&out.stdout).contains("Removed 3 machines of cluster tinysetup"), "{}", text(&out.stdout));
    assert!(!answers(&addr), "the emulator is stopped");
    assert!(procs(&dir, "serve").is_empty() && procs(&dir, "supervise").is_empty());
    let status = dir.status_refresh();
    assert_eq!(status["run"]["kind"], "down", "the removal is recorded: {status}");
    assert_eq!(status["orphans"], serde_json::json!([]));
}

// ---------------------------------------------------------------- item 8

#[test]
fn a_kill_between_the_ledger_and_the_record_creates_nothing_twice() {
    let dir = TestDir::new();
    let out = dir.rmm(&["up"]).env("RMM_LOCAL_CRASH_AFTER_LEDGER", "master01").run();
    assert_eq!(out.status.signal(), Some(6), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("RMM_LOCAL_CRASH_AFTER_LEDGER"));
    dir.rmm(&["up", "--resume"]).ok();
    let adopted = dir.events().into_iter().any(|e| e["actor"] == "master01" && e["data"]["via"] == "adopted" && e["data"]["step"] == "create_machine");
    assert!(adopted, "the machine whose create the ledger counted is adopted");
    check_completed_once(&dir, "killed between ledger and record", 1);
}

#[test]
fn a_resume_says_a_machine_left_creating_is_half_made_not_absent() {
    let dir = TestDir::new();
    let mut child = dir.rmm(&["up"]).env("RMM_LOCAL_CREATE_MS", "5000").cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let record = dir.state().join("world/machines/master01/machine.json");
    wait_until(30, "master01 to be creating", || std::fs::read_to_string(&record).is_ok_and(|r| r.contains("\"creating\"")));
    child.kill().unwrap();
    child.wait().unwrap();
    dir.rmm(&["up", "--resume"]).ok();
    let events = dir.events();
    let why = events
        .iter()
        .find(|e| e["actor"] == "master01" && e["kind"] == "StepFailed" && e["attempt"] == 2)
        .map(|e| e["data"]["error"].as_str().unwrap().to_string())
        .expect("the in-doubt create was reconciled");
    assert!(why.contains("in state creating") && !why.contains("not found"), "{why}");
    check_completed_once(&dir, "killed while creating", 1);
}

#[test]
fn a_configured_image_reaches_docker_as_one_word_and_a_bad_one_is_refused() {
    let dir = TestDir::new();
    // Shell syntax in a configured value: a quote, `;`, `$(…)`.
    std::fs::write(dir.tmp.path().join("rmm.toml"), "rancher_image = \"rancher/rancher:v2.11.3';touch${IFS}PWNED;$(id)\"\n").unwrap();
    let out = dir.rmm(&["up", "--masters", "1", "--workers", "1"]).code(1);
    let err = text(&out.stderr);
    assert!(err.contains("invalid reference format"), "the value arrived whole and was refused as an image: {err}");
    assert!(!dir.tmp.path().join("PWNED").exists());
    assert!(procs(&dir, "serve").is_empty(), "no server started from a mangled image");
}

#[test]
fn output_captured_like_x_equals_rmm_up_ends_when_up_ends() {
    let dir = TestDir::new();
    let rmm = dir.rmm(&["up", "--masters", "1", "--workers", "1"]);
    let program = rmm.cmd.get_program().to_owned();
    let args: Vec<_> = rmm.cmd.get_args().map(|a| a.to_owned()).collect();
    // A script that keeps another descriptor on the pipe (fd 9), as shells
    // and CI runners often do: `x=$(rmm up 9>&1)`.
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg("x=$(\"$0\" \"$@\" 9>&1 2>/dev/null); printf '%s\\n' \"$x\"")
        .arg(program)
        .args(args)
        .current_dir(dir.tmp.path())
        .env("XDG_STATE_HOME", dir.xdg())
        .env("RMM_PLAIN", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = sh.spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut all = String::new();
        let _ = stdout.read_to_string(&mut all);
        let _ = tx.send(all);
    });
    let got = rx.recv_timeout(Duration::from_secs(60));
    let _ = child.kill();
    let _ = child.wait();
    let got = got.expect("`x=$(rmm up)` still waits after up ended: the emulator holds the caller's descriptor");
    assert!(got.contains("Cluster tinysetup is active"), "{got}");
    assert!(!procs(&dir, "serve").is_empty(), "the emulator still runs, detached");
}

/// `rmm ARGS` on a pseudo-terminal (util-linux `script`), `input` typed.
fn on_a_terminal(dir: &TestDir, args: &[&str], input: &str) -> Option<String> {
    if Command::new("script").arg("--version").output().is_err() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "script (util-linux) is needed under CI");
        eprintln!("SKIPPED: no `script` to run rmm on a terminal — install util-linux (apt-get install util-linux)");
        return None;
    }
    let mut line = format!("'{}' --state-dir '{}'", env!("CARGO_BIN_EXE_rmm"), dir.state().display());
    for a in args {
        line.push_str(&format!(" '{a}'"));
    }
    let mut child = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .current_dir(dir.tmp.path())
        .env("XDG_STATE_HOME", dir.xdg())
        .env("RMM_PLAIN", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    Some(text(&out.stdout))
}

#[test]
fn down_cluster_asks_on_a_terminal_and_no_keeps_everything() {
    let dir = TestDir::new();
    dir.up_ok(&["--masters", "1", "--workers", "1"]);
    std::fs::remove_dir_all(dir.state().join("events")).unwrap();
    let Some(out) = on_a_terminal(&dir, &["down", "--cluster", "tinysetup"], "n\n") else { return };
    assert!(out.contains("Remove 3 machines of cluster tinysetup (master01, rancher, worker01)? [y/N]"), "{out}");
    assert!(out.contains("Nothing removed."), "{out}");
    assert_eq!(dir.status_refresh()["orphans"].as_array().unwrap().len(), 3);
    let out = on_a_terminal(&dir, &["down", "--cluster", "tinysetup"], "y\n").unwrap();
    assert!(out.contains("Removed 3 machines of cluster tinysetup."), "{out}");
    assert!(procs(&dir, "serve").is_empty());
}

/// The server died before it ever answered (here: killed while it booted;
/// on a real box: a full disk at start, an OOM kill) and rmm crashed while
/// waiting for it. The resume's `wait_ready` must not poll a dead server
/// for `rancher_ready_s`: it starts the container again first.
#[test]
fn a_resume_waiting_for_a_server_that_died_before_it_answered_starts_it_again() {
    let dir = TestDir::new();
    std::fs::write(dir.tmp.path().join("rmm.toml"), "[timeouts]\nrancher_ready_s = 20\n").unwrap();
    let mut child = dir
        .rmm(&["up"])
        .env("RMM_LOCAL_RANCHER_BOOT_MS", "600000")
        .cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    until_wait_ready_started(&dir, &mut child);
    child.kill().unwrap();
    child.wait().unwrap();
    kill_container(&dir);

    let start = Instant::now();
    let out = dir.rmm(&["up", "--resume"]).run();
    assert!(out.status.success(), "after {:?}: {}", start.elapsed(), text(&out.stderr));
    check_completed_once(&dir, "server dead before it answered", 1);
}

/// The log deleted under a live cluster: `status` and `up` must not act as
/// if there never was a run (`status` said "no run yet" and exit 0; `up`
/// started a new log that failed on every machine, the evidence gone).
/// Both say the log is missing (exit 5, as `log` does) and name the way on;
/// `status --refresh` still lists the machines as orphans.
#[test]
fn a_deleted_log_beside_a_live_world_is_named_by_status_and_refused_by_up() {
    let dir = TestDir::new();
    dir.up_ok(&[]);
    std::fs::remove_dir_all(dir.state().join("events")).unwrap();
    let status = dir.rmm(&["status"]).code(5);
    let line = single_stderr_line(&status);
    assert!(line.contains("is missing") && line.contains("status --refresh"), "{line}");
    let up = dir.rmm(&["up"]).code(5);
    let line = single_stderr_line(&up);
    assert!(line.contains("is missing") && line.contains("down --cluster"), "{line}");
    assert!(!dir.state().join("events").exists(), "up left the evidence as it was");
    let refreshed = json(&dir.rmm(&["status", "--refresh", "--json"]).ok().stdout);
    assert_eq!(refreshed["orphans"].as_array().map(|o| o.len()), Some(7), "{refreshed}");
    dir.rmm(&["down", "--cluster", "tinysetup", "--yes"]).ok();
}

/// A Rancher whose machine's disk is full still answers (its log lines are
/// lost, as a server's logger drops them): the emulator's `println!`
/// panicked on the full device, so every request, `/ping` included, got no
/// answer at all and rmm could only time out.
#[test]
fn the_emulator_answers_when_its_log_cannot_be_written() {
    let dir = TestDir::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let data = dir.tmp.path().join("data");
    let devfull = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rmm"))
        .args(["emulator", "serve", "--data-dir"])
        .arg(&data)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("CATTLE_BOOTSTRAP_PASSWORD", "bootstrap-pw-for-a-test")
        .stdout(devfull)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _ = &mut child;
    let mut child = Kill(child);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let answers = rt.block_on(async {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut answered = 0;
        while Instant::now() < deadline && answered < 3 {
            if let Ok(Some(status)) = child.0.try_wait() {
                panic!("the emulator exited ({status}) with its log on a full device");
            }
            match client.get(format!("https://127.0.0.1:{port}/ping")).send().await {
                Ok(resp) if resp.status().is_success() => answered += 1,
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        answered
    });
    assert_eq!(answers, 3, "/ping answered with the log on a full device");
}

/// The server container died while rmm waited for its first answer, and
/// nothing brings it back (its supervisor died too: on a real box, a full
/// disk at start or a daemon that went away). `wait_ready` looks at the
/// container while it waits: the try ends naming it and the next try starts
/// it again, instead of polling a dead address for `rancher_ready_s`.
#[test]
fn a_server_that_dies_before_it_answers_is_started_again_by_the_next_try() {
    let dir = TestDir::new();
    std::fs::write(dir.tmp.path().join("rmm.toml"), "[timeouts]\nrancher_ready_s = 30\n").unwrap();
    let mut child = dir
        .rmm(&["up"])
        .env("RMM_LOCAL_RANCHER_BOOT_MS", "2500")
        .cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    until_wait_ready_started(&dir, &mut child);
    kill_container(&dir);
    let start = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "after {:?}: {}", start.elapsed(), text(&out.stderr));
    assert!(text(&out.stderr).contains("the Rancher server container is"), "{}", text(&out.stderr));
    check_completed_once(&dir, "server dead before its first answer", 0);
}

/// Polls the log beside the running `up` until rancher's `wait_ready` has
/// started (30 s at most: then the run is killed and the test fails).
fn until_wait_ready_started(dir: &TestDir, child: &mut std::process::Child) {
    let waiting = || {
        dir.events_while_running()
            .iter()
            .any(|e| e["actor"] == "rancher" && e["kind"] == "StepStarted" && e["data"]["step"] == "wait_ready")
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !waiting() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("wait_ready never started");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
