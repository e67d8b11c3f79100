//! Rancher unavailable during a call step (issue 7, item 2, the call side):
//! waited for within `rancher_ready_s`, not four tries; given up on with a
//! last try that says so; and a server that answers with another CA ends
//! the run at once.
//!
//! The moment is exact: the `LD_PRELOAD` shim (see `shim.rs`) holds the
//! write of `change_password`'s intent (its detail says "stored before the
//! call") until the test has stopped the emulator, so the call itself meets
//! a Rancher that is gone.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::shim::shim;
use crate::support::*;

const PAUSE_ON: &str = "stored before the call";

/// The emulator's pid, command line and environment.
pub struct Emulator {
    pid: i32,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Emulator {
    pub fn find(dir: &TestDir) -> Emulator {
        Self::running(dir).expect("the emulator runs")
    }

    fn running(dir: &TestDir) -> Option<Emulator> {
        let needle = dir.state().to_string_lossy().to_string();
        for p in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else { continue };
            let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
            let args: Vec<String> =
                cmdline.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).to_string()).collect();
            if args.iter().any(|a| a == "emulator") && args.iter().any(|a| a.contains(&needle)) {
                let environ = std::fs::read(p.path().join("environ")).unwrap_or_default();
                let env = environ
                    .split(|b| *b == 0)
                    .filter_map(|kv| String::from_utf8_lossy(kv).split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
                    // The restarted emulator runs without the shim.
                    .filter(|(k, _)| !k.starts_with("LD_PRELOAD") && !k.starts_with("RMM_SHIM"))
                    .collect();
                return Some(Emulator { pid, args, env });
            }
        }
        None
    }

    /// `--listen IP:PORT`.
    pub fn listen(&self) -> SocketAddr {
        let i = self.args.iter().position(|a| a == "--listen").expect("--listen");
        self.args[i + 1].parse().unwrap()
    }

    /// SIGKILL, and wait until it is gone.
    fn kill(&self) {
        Command::new("kill").args(["-9", &self.pid.to_string()]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read(format!("/proc/{}/cmdline", self.pid)).is_ok_and(|c| !c.is_empty()) {
            assert!(Instant::now() < deadline, "the emulator did not die");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Starts it again like a container with a restart policy: same
    /// command, same environment. Killed (and reaped) when dropped.
    fn restart(&self) -> Restarted {
        let mut cmd = Command::new(&self.args[0]);
        cmd.args(&self.args[1..]).env_clear().envs(self.env.clone()).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        Restarted(cmd.spawn().unwrap())
    }
}

struct Restarted(Child);

impl Drop for Restarted {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `rmm up` (1 master, 1 worker) held at `change_password`'s intent;
/// returns the process and the pause file (create `<file>.go` to go on).
fn up_paused_at_change_password(dir: &TestDir) -> (Child, PathBuf) {
    up_paused_at(dir, PAUSE_ON)
}

/// `rmm up` (1 master, 1 worker) held at the first record holding `pattern`.
fn up_paused_at(dir: &TestDir, pattern: &str) -> (Child, PathBuf) {
    let pause = dir.tmp.path().join("pause");
    let child = dir
        .rmm(&["up", "--masters", "1", "--workers", "1"])
        .env("LD_PRELOAD", shim().unwrap().to_str().unwrap())
        .env("RMM_SHIM_PAUSE_ON", pattern)
        .env("RMM_SHIM_PAUSE_FILE", pause.to_str().unwrap())
        .env("RMM_SHIM_REFUSE_PORT", "8443")
        .env("RMM_SHIM_REFUSE_WHILE", outage_file(dir).to_str().unwrap())
        .cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pause.exists() {
        assert!(Instant::now() < deadline, "the run never reached {pattern:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    (child, pause)
}

fn outage_file(dir: &TestDir) -> PathBuf {
    dir.tmp.path().join("outage")
}

/// Rancher goes away: the emulator is killed, and while the outage lasts
/// rmm's connections to its port are refused by the shim too (so a world
/// that restarts its server by itself, as a restart policy does, cannot
/// end the outage early).
fn outage_begins(dir: &TestDir) -> Emulator {
    std::fs::write(outage_file(dir), b"").unwrap();
    let emulator = Emulator::find(dir);
    emulator.kill();
    emulator
}

/// Rancher is back: started again unless the world already did.
fn outage_ends(dir: &TestDir, emulator: &Emulator) -> Option<Restarted> {
    let restarted = Emulator::running(dir).is_none().then(|| emulator.restart());
    std::fs::remove_file(outage_file(dir)).unwrap();
    restarted
}

fn go_on(pause: &std::path::Path) {
    std::fs::write(pause.with_extension("go"), b"").unwrap();
}

/// Waits for `child` to end, failing the test if it has not within `bound`.
fn wait(mut child: Child, bound: Duration) -> std::process::Output {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > bound {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("rmm did not end within {bound:?}: {}", text(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

fn step_failures(events: &[Value], step: &str) -> Vec<Value> {
    events.iter().filter(|e| e["kind"] == "StepFailed" && e["data"]["step"] == step).cloned().collect()
}

#[test]
fn rancher_down_for_longer_than_four_tries_during_a_call_step_is_waited_for_and_the_run_completes() {
    if shim().is_none() {
        return;
    }
    let dir = TestDir::new();
    let (child, pause) = up_paused_at_change_password(&dir);
    let emulator = outage_begins(&dir);
    go_on(&pause);
    // Down until change_password has failed more often than the old four
    // tries allowed (250 ms backoff, doubling: ~3.75 s of outage).
    let deadline = Instant::now() + Duration::from_secs(60);
    while step_failures(&dir.events_while_running(), "change_password").len() < 5 {
        assert!(Instant::now() < deadline, "change_password was not retried five times");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _restarted = outage_ends(&dir, &emulator);
    let out = wait(child, Duration::from_secs(120));
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "the run waits for Rancher to come back: {stderr}");
    let events = dir.events();
    let failures = step_failures(&events, "change_password");
    assert!(failures.len() >= 5, "{failures:?}");
    assert!(failures.iter().all(|f| f["data"]["retryable"] == true), "each was tried again: {failures:?}");
    assert!(failures.iter().all(|f| f["data"]["error"].as_str().unwrap().contains("Rancher unavailable")), "{failures:?}");
    assert_eq!(dir.status()["run"]["state"], "completed");
    let rancher = ask_rancher(&dir);
    assert_eq!(rancher.nodes.len(), 2);
    assert!(rancher.nodes.iter().all(|n| n["state"] == "active"));
}

/// A node's join while Rancher is away: its look-up (does Rancher list the
/// node already?) finds Rancher unavailable, and is waited for like a call.
fn rancher_down_while_a_node_runs_its_agent_is_waited_for_and_the_run_completes_on(kind: Kind) {
    if shim().is_none() {
        return;
    }
    let dir = TestDir::on(kind);
    // master01's run_agent intent.
    let intent = match kind {
        Kind::Rke2 => "system-agent installer, --etcd --controlplane",
        Kind::Rke1 => "roles etcd,controlplane",
    };
    let (child, pause) = up_paused_at(&dir, intent);
    let emulator = outage_begins(&dir);
    go_on(&pause);
    let deadline = Instant::now() + Duration::from_secs(60);
    while step_failures(&dir.events_while_running(), "run_agent").len() < 5 {
        assert!(Instant::now() < deadline, "run_agent was not retried five times");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _restarted = outage_ends(&dir, &emulator);
    let out = wait(child, Duration::from_secs(120));
    assert!(out.status.success(), "the run waits for Rancher to come back: {}", text(&out.stderr));
    let failures = step_failures(&dir.events(), "run_agent");
    assert!(failures.iter().all(|f| f["data"]["retryable"] == true), "{failures:?}");
    match kind {
        Kind::Rke2 => assert_eq!(ask_rancher_v1(&dir).machines.len(), 2),
        Kind::Rke1 => assert_eq!(ask_rancher(&dir).nodes.len(), 2),
    }
}

#[test]
fn rancher_down_while_a_node_runs_its_agent_is_waited_for_and_the_run_completes() {
    rancher_down_while_a_node_runs_its_agent_is_waited_for_and_the_run_completes_on(Kind::Rke2);
}

#[test]
fn on_rke1_rancher_down_while_a_node_runs_its_agent_is_waited_for_and_the_run_completes() {
    rancher_down_while_a_node_runs_its_agent_is_waited_for_and_the_run_completes_on(Kind::Rke1);
}

#[test]
fn rancher_gone_for_good_ends_the_step_after_rancher_ready_s_and_its_last_try_does_not_say_will_retry() {
    if shim().is_none() {
        return;
    }
    let dir = TestDir::new();
    std::fs::write(dir.tmp.path().join("rmm.toml"), "[timeouts]\nrancher_ready_s = 5\n").unwrap();
    let (child, pause) = up_paused_at_change_password(&dir);
    outage_begins(&dir);
    go_on(&pause);
    let out = wait(child, Duration::from_secs(60));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("rmm: ")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("change_password") && errors[0].contains("Rancher unavailable"), "{stderr}");
    assert!(errors[0].contains("rancher_ready_s = 5 s"), "the budget is named: {stderr}");
    let failures = step_failures(&dir.events(), "change_password");
    // Four tries (the count) fit in 1.75 s; the 5 s budget allows a fifth.
    assert!(failures.len() >= 5, "tried for rancher_ready_s, not four times: {failures:?}");
    let (last, before) = failures.split_last().unwrap();
    assert_eq!(last["data"]["retryable"], false, "the last try is recorded as not tried again: {last}");
    assert!(before.iter().all(|f| f["data"]["retryable"] == true));
    let progress: Vec<&str> = stderr.lines().filter(|l| l.contains("change_password failed")).collect();
    assert_eq!(progress.len(), failures.len(), "{stderr}");
    let last_line = progress.last().unwrap();
    assert!(!last_line.contains("will retry") && last_line.contains("gave up"), "{last_line}");
    let log = text(&dir.rmm(&["log"]).ok().stdout);
    assert!(!log.lines().rfind(|l| l.contains("change_password failed")).unwrap().contains("will retry"), "{log}");
}

/// A server certificate for `ip` from a CA of the impostor's own.
fn impostor_tls(ip: std::net::IpAddr) -> rustls::ServerConfig {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "not your rancher");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![ip.to_string()]).unwrap().signed_by(&key, &ca, &ca_key).unwrap();
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()))
        .unwrap()
}

/// A TLS server on `addr` with `config`, answering every request `{}`;
/// counts the requests that reach it (none should: the handshake fails
/// against the pinned CA before any header is sent).
fn impostor(
    addr: SocketAddr,
    config: rustls::ServerConfig,
) -> (Arc<AtomicUsize>, std::thread::JoinHandle<()>, tokio::sync::oneshot::Sender<()>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let seen = hits.clone();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let router = axum::Router::new().fallback(move || {
                let seen = seen.clone();
                async move {
                    seen.fetch_add(1, Ordering::SeqCst);
                    axum::Json(serde_json::json!({}))
                }
            });
            // The emulator's connections may linger in TIME_WAIT: reuse the address.
            let deadline = Instant::now() + Duration::from_secs(10);
            let listener = loop {
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket.set_reuseaddr(true).unwrap();
                match socket.bind(addr).and_then(|()| socket.listen(128)) {
                    Ok(l) => break l.into_std().unwrap(),
                    Err(e) => {
                        assert!(Instant::now() < deadline, "the impostor cannot bind {addr}: {e}");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            };
            let handle = axum_server::Handle::new();
            let server = axum_server::from_tcp_rustls(listener, axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(config)))
                .handle(handle.clone());
            let serving = tokio::spawn(server.serve(router.into_make_service()));
            ready_tx.send(handle.listening().await.is_some()).unwrap();
            let _ = stop_rx.await;
            handle.shutdown();
            let _ = serving.await;
        });
    });
    assert!(ready_rx.recv_timeout(Duration::from_secs(10)).unwrap(), "the impostor could not bind {addr}");
    (hits, thread, stop_tx)
}

#[test]
fn a_server_with_another_ca_at_rancher_s_address_ends_the_run_at_once_with_a_tls_mismatch() {
    if shim().is_none() {
        return;
    }
    let dir = TestDir::new();
    let (child, pause) = up_paused_at_change_password(&dir);
    let emulator = Emulator::find(&dir);
    let addr = emulator.listen();
    let tls = impostor_tls(addr.ip());
    emulator.kill();
    let (hits, thread, stop) = impostor(addr, tls);
    go_on(&pause);
    let out = wait(child, Duration::from_secs(30));
    let _ = stop.send(());
    thread.join().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("rmm: ")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("change_password") && errors[0].contains("TLS") && errors[0].contains("pinned CA"), "{stderr}");
    let failures = step_failures(&dir.events(), "change_password");
    assert_eq!(failures.len(), 1, "a CA mismatch is not retried: {failures:?}");
    assert_eq!(failures[0]["data"]["retryable"], false);
    assert_eq!(hits.load(Ordering::SeqCst), 0, "no request (and no credential) reached the impostor");
    assert_eq!(dir.status()["run"]["state"], "failed");
}
