//! `rmm emulator serve` as a process: the Rancher line, the bootstrap
//! password from `CATTLE_BOOTSTRAP_PASSWORD`, and `--listen 0.0.0.0:PORT`
//! with every address of the host in the certificate.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("0.0.0.0:0").unwrap().local_addr().unwrap().port()
}

fn serve(dir: &std::path::Path, port: u16, line: Option<&str>) -> Killed {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rmm"));
    cmd.args(["emulator", "serve", "--data-dir"]).arg(dir).args(["--listen", &format!("0.0.0.0:{port}")]);
    if let Some(l) = line {
        cmd.args(["--rancher-version", l]);
    }
    cmd.env("CATTLE_BOOTSTRAP_PASSWORD", "password-from-the-env")
        .env_remove("RMM_LOCAL_LOGIN_WINDOW_MS")
        .env_remove("RMM_LOCAL_WEBHOOK_WINDOW_MS")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Killed(cmd.spawn().unwrap())
}

/// A non-loopback IPv4 address of this host, if it has one.
fn host_ipv4() -> Option<String> {
    let trie = std::fs::read_to_string("/proc/net/fib_trie").ok()?;
    let mut last = None;
    for line in trie.lines() {
        let t = line.trim_start_matches([' ', '|', '+', '-']).trim();
        if t.parse::<std::net::Ipv4Addr>().is_ok() {
            last = Some(t.to_string());
        } else if t.starts_with("/32 host LOCAL") {
            if let Some(ip) = last.clone().filter(|ip| !ip.starts_with("127.")) {
                return Some(ip);
            }
        }
    }
    None
}

async fn until_up(dir: &std::path::Path, port: u16) -> reqwest::Client {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(pem) = std::fs::read_to_string(dir.join("ca.crt")) {
            let c = reqwest::Client::builder()
                .tls_built_in_root_certs(false)
                .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap())
                .no_proxy()
                .build()
                .unwrap();
            if c.get(format!("https://127.0.0.1:{port}/ping")).send().await.is_ok() {
                return c;
            }
        }
        assert!(Instant::now() < deadline, "the emulator did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn serve_behaves_as_its_line_with_the_env_password_on_every_host_address() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tmp = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let (d13, p13) = (tmp.path().join("r13"), free_port());
        let _e13 = serve(&d13, p13, Some("2.13"));
        let c = until_up(&d13, p13).await;
        let v: Value = c.get(format!("https://127.0.0.1:{p13}/rancherversion")).send().await.unwrap().json().await.unwrap();
        assert_eq!(v["Version"], "v2.13.8");
        // the certificate names the host's own address (0.0.0.0 was given)
        if let Some(ip) = host_ipv4() {
            let v: Value = c.get(format!("https://{ip}:{p13}/rancherversion")).send().await.unwrap().json().await.unwrap();
            assert_eq!(v["Version"], "v2.13.8", "via {ip}");
        }
        // logins fail for a short while after /ping answers (503), then work
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            let r = c
                .post(format!("https://127.0.0.1:{p13}/v1-public/login"))
                .json(&json!({"type": "localProvider", "username": "admin", "password": "password-from-the-env"}))
                .send()
                .await
                .unwrap();
            if r.status() != 503 || Instant::now() > deadline {
                break r.status();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(status, 201, "CATTLE_BOOTSTRAP_PASSWORD is the admin's password");
        // no --rancher-version: 2.15
        let (d, p) = (tmp.path().join("default"), free_port());
        let _e = serve(&d, p, None);
        let c = until_up(&d, p).await;
        let v: Value = c.get(format!("https://127.0.0.1:{p}/rancherversion")).send().await.unwrap().json().await.unwrap();
        assert_eq!(v["Version"], "v2.15.1");
    });
}
