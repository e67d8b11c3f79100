//! `--rancher-url`: an existing Rancher, here `rmm emulator serve` started
//! on its own (2.15, `CATTLE_BOOTSTRAP_PASSWORD` in its environment), as a
//! user's own server would be. No rancher machine is made; the nodes of the
//! local world register with that server; `down` deletes the cluster in
//! Rancher and removes only the node machines; the server keeps running.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{single_stderr_line, text, TestDir};

pub(crate) const BOOTSTRAP: &str = "bootstrap-pw-from-the-env";

/// The emulator process, killed when the test ends (also on failure).
pub(crate) struct Server {
    child: Child,
    port: u16,
    data: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    pub(crate) fn start() -> Server {
        let data = tempfile::Builder::new().prefix("rmm-e2e-existing-").tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rmm"));
        cmd.args(["emulator", "serve", "--rancher-version", "2.15", "--data-dir"])
            .arg(data.path())
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("CATTLE_BOOTSTRAP_PASSWORD", BOOTSTRAP)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, _) in std::env::vars() {
            if k.starts_with("RMM_LOCAL_") {
                cmd.env_remove(k);
            }
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let server = Server { child: cmd.spawn().unwrap(), port, data, rt };
        let deadline = Instant::now() + Duration::from_secs(20);
        while server.get_public("/ping").is_none() {
            assert!(Instant::now() < deadline, "the emulator did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    pub(crate) fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    fn client(&self) -> Option<reqwest::Client> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let pem = std::fs::read_to_string(self.data.path().join("ca.crt")).ok()?;
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap())
            .no_proxy()
            .build()
            .ok()
    }

    fn get_public(&self, path: &str) -> Option<String> {
        let client = self.client()?;
        self.rt.block_on(async {
            let r = client.get(format!("{}{path}", self.url())).send().await.ok()?;
            if !r.status().is_success() {
                return None;
            }
            r.text().await.ok()
        })
    }

    /// `POST /v1-public/login` → the status and the bearer token.
    pub(crate) fn login(&self, password: &str) -> (u16, Option<String>) {
        let client = self.client().unwrap();
        self.rt.block_on(async {
            let r = client
                .post(format!("{}/v1-public/login", self.url()))
                .json(&json!({"type": "localProvider", "username": "admin", "password": password}))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            (status, body["token"].as_str().map(str::to_string))
        })
    }

    /// `GET path` as admin: the status and the body.
    fn get(&self, token: &str, path: &str) -> (u16, Value) {
        let client = self.client().unwrap();
        self.rt.block_on(async {
            let r = client.get(format!("{}{path}", self.url())).bearer_auth(token).send().await.unwrap();
            (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
        })
    }

    fn data(&self, token: &str, path: &str) -> Vec<Value> {
        let (status, v) = self.get(token, path);
        assert_eq!(status, 200, "{path}: {v}");
        v["data"].as_array().cloned().unwrap_or_else(|| panic!("a collection: {v}"))
    }

    /// The v1 cluster of `name` and its CAPI machines, as Rancher lists them.
    pub(crate) fn cluster(&self, token: &str, name: &str) -> (Option<Value>, Vec<Value>) {
        let (status, c) = self.get(token, &format!("/v1/provisioning.cattle.io.clusters/fleet-default/{name}"));
        let machines = self
            .data(token, "/v1/cluster.x-k8s.io.machines/fleet-default")
            .into_iter()
            .filter(|m| m["metadata"]["labels"]["cluster.x-k8s.io/cluster-name"] == name)
            .collect();
        ((status == 200).then_some(c), machines)
    }
}

fn config(dir: &TestDir, server: &Server, cluster: &str) {
    // Distribution and image explicit: the defaults change under us.
    std::fs::write(
        dir.tmp.path().join("rmm.toml"),
        format!(
            "distribution = \"rke2\"\nrancher_image = \"rancher/rancher:v2.15.1\"\ncluster_name = \"{cluster}\"\nrancher_url = \"{}\"\n",
            server.url()
        ),
    )
    .unwrap();
}

/// The local world's machines of a state dir.
fn machines(dir: &TestDir) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.state().join("world/machines"))
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().to_string()).filter(|n| !n.starts_with('.')).collect())
        .unwrap_or_default();
    names.sort();
    names
}

fn six_nodes() -> Vec<String> {
    ["master01", "master02", "master03", "worker01", "worker02", "worker03"].map(String::from).to_vec()
}

/// The cluster is ready as Rancher's tests define it, with six machines
/// Running, three etcd + control plane and three workers.
fn assert_ready_with_six_running(server: &Server, token: &str, name: &str) {
    let (c, ms) = server.cluster(token, name);
    let c = c.unwrap_or_else(|| panic!("cluster {name} is not in Rancher"));
    assert_eq!(c["metadata"]["state"]["name"], "active", "{c}");
    assert_eq!(c["status"]["ready"], true, "{c}");
    assert_eq!(ms.len(), 6, "six machines of {name}, each once: {ms:?}");
    assert!(ms.iter().all(|m| m["status"]["phase"] == "Running"), "{ms:?}");
    let role = |m: &Value, l: &str| m["metadata"]["labels"][l] == "true";
    let masters = ms.iter().filter(|m| role(m, "rke.cattle.io/etcd-role") && role(m, "rke.cattle.io/control-plane-role")).count();
    let workers = ms.iter().filter(|m| role(m, "rke.cattle.io/worker-role")).count();
    assert_eq!((masters, workers), (3, 3), "{ms:?}");
}

/// Every JSON output and the whole log of `dir`, as text.
fn outputs(dir: &TestDir) -> String {
    let mut all = String::new();
    for args in [
        &["log", "--json", "--all-runs"][..],
        &["status", "--json"],
        &["status", "--json", "--refresh"],
        &["replay", "--json"],
    ] {
        let out = dir.rmm(args).run();
        all.push_str(&text(&out.stdout));
        all.push_str(&text(&out.stderr));
    }
    let export = dir.tmp.path().join("export.jsonl");
    dir.rmm(&["log", "--export", export.to_str().unwrap()]).ok();
    all.push_str(&std::fs::read_to_string(&export).unwrap());
    // The raw store too: no password in any byte of the log.
    for entry in walk(&dir.state().join("events")) {
        all.push_str(&String::from_utf8_lossy(&std::fs::read(entry).unwrap_or_default()));
    }
    all
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn an_existing_rancher_takes_the_bootstrap_then_the_admin_password_and_down_leaves_the_server() {
    let mut server = Server::start();

    // (e) No password: one line, exit 2, nothing made.
    let none = TestDir::new();
    config(&none, &server, "nopassword");
    let out = none.rmm(&["up"]).cmd_without_password().code(2);
    let line = single_stderr_line(&out);
    assert!(line.starts_with("rmm: --rancher-url ") && line.contains("RMM_RANCHER_PASSWORD") && line.contains("--rancher-password-file"), "{line}");
    assert!(!none.state().exists(), "nothing is created without the password");

    // (a) The bootstrap password: first login, password changed.
    let a = TestDir::new();
    config(&a, &server, "alpha");
    let watch = CmdlineWatch::start(BOOTSTRAP);
    let up = a.rmm(&["up"]).env("RMM_RANCHER_PASSWORD", BOOTSTRAP).ok();
    let (looks, seen_in) = watch.stop();
    assert!(looks > 0, "the command lines were looked at");
    assert_eq!(seen_in, None, "the password was on a command line (`ps` shows it)");
    assert!(text(&up.stdout).contains(&format!("Rancher: {}", server.url())), "{}", text(&up.stdout));
    assert_eq!(machines(&a), six_nodes(), "no rancher machine in the local world");
    let refreshed = a.status_refresh();
    let rancher = refreshed["actors"].as_array().unwrap().iter().find(|x| x["name"] == "rancher").unwrap().clone();
    assert_eq!(rancher["observed"], "not a machine (existing Rancher)", "{rancher}");
    assert_eq!(refreshed["orphans"], json!([]), "{refreshed}");
    let creds = a.credentials();
    let admin = creds["password"].as_str().unwrap().to_string();
    assert_ne!(admin, BOOTSTRAP, "the bootstrap password was changed");
    assert_eq!(creds["url"], server.url());
    // As strict as Rancher: the bootstrap password no longer logs in.
    assert_eq!(server.login(BOOTSTRAP).0, 401);
    let (status, token) = server.login(&admin);
    assert_eq!(status, 201);
    let token = token.unwrap();
    let clusters = server.data(&token, "/v1/provisioning.cattle.io.clusters");
    assert_eq!(clusters.len(), 1, "{clusters:?}");
    assert_ready_with_six_running(&server, &token, "alpha");
    // The CA was trusted on first use, and that is what the log says.
    let events = a.events();
    let pin = events.iter().find(|e| e["kind"] == "StepStarted" && e["data"]["step"] == "pin_ca");
    let pin = pin.unwrap_or_else(|| panic!("a pin_ca intent: {events:?}"));
    assert!(pin.to_string().contains("trusted on first use"), "{pin}");
    assert!(!events.iter().any(|e| e["actor"] == "rancher" && e.to_string().contains("create_machine")), "no rancher machine step");

    // (d) No password in the log or any JSON output.
    let seen = outputs(&a) + &text(&up.stdout) + &text(&up.stderr);
    assert!(!seen.contains(BOOTSTRAP), "the bootstrap password leaked");
    assert!(!seen.contains(&admin), "the admin password leaked");

    // (b) A second cluster, another state dir, the admin password (as read
    // from the first): it is kept, not changed.
    let b = TestDir::new();
    config(&b, &server, "beta");
    let up_b = b.rmm(&["up"]).env("RMM_RANCHER_PASSWORD", &admin).ok();
    assert_eq!(machines(&b), six_nodes());
    assert_eq!(b.credentials()["password"], admin.as_str(), "the given admin password is the one in force");
    assert_eq!(server.login(&admin).0, 201, "the admin password was not changed");
    assert!(b.events().iter().any(|e| e.to_string().contains("password_kept")), "the log says it was kept");
    assert_ready_with_six_running(&server, &token, "beta");
    let seen = outputs(&b) + &text(&up_b.stdout) + &text(&up_b.stderr);
    assert!(!seen.contains(&admin), "the admin password leaked from the second run");

    // The stale bootstrap password on a server set up already: refused in
    // seconds with the reason, not after the login timeout.
    let stale = TestDir::new();
    config(&stale, &server, "stale");
    let started = Instant::now();
    let out = stale.rmm(&["up"]).env("RMM_RANCHER_PASSWORD", BOOTSTRAP).code(1);
    assert!(started.elapsed() < Duration::from_secs(60), "took {:?}", started.elapsed());
    let stderr = text(&out.stderr);
    let line = stderr.lines().last().unwrap_or_default();
    assert!(line.starts_with("rmm: run failed: rancher login: "), "{stderr}");
    assert!(line.contains("first login was done already") && line.contains("rmm credentials"), "{line}");
    assert!(!line.contains(BOOTSTRAP), "{line}");
    assert!(server.cluster(&token, "stale").0.is_none(), "nothing made in Rancher");

    // --ca-checksum pins instead of trusting on first use: a server with
    // another CA is refused before any credential is sent.
    let pinned = TestDir::new();
    config(&pinned, &server, "pinned");
    let toml = pinned.tmp.path().join("rmm.toml");
    let with_sum = std::fs::read_to_string(&toml).unwrap() + &format!("ca_checksum = \"{}\"\n", "0".repeat(64));
    std::fs::write(&toml, with_sum).unwrap();
    let out = pinned.rmm(&["up"]).env("RMM_RANCHER_PASSWORD", &admin).code(1);
    let stderr = text(&out.stderr);
    assert!(stderr.lines().last().unwrap_or_default().contains("does not match the pinned --ca-checksum"), "{stderr}");
    assert!(!pinned.events().iter().any(|e| e["data"]["step"] == "login"), "no login was tried");

    // (c) down: the cluster goes from Rancher (v1 and management), the
    // node machines go, the server stays and keeps the other cluster.
    let mgmt = a.status()["rancher"]["cluster_id"].as_str().expect("a management id").to_string();
    assert!(mgmt.starts_with("c-m-"), "{mgmt}");
    let a_run = a.events()[0]["run"].as_str().unwrap().to_string();
    let described = |run: &str| {
        server.data(&token, "/v3/tokens").into_iter().filter(|t| t["description"] == format!("rmm run {run}")).count()
    };
    assert_eq!(described(&a_run), 1, "alpha's run holds one API token");
    let down = a.rmm(&["down"]).ok();
    assert!(text(&down.stdout).contains("Deleted cluster alpha in Rancher"), "{}", text(&down.stdout));
    // The run's credentials in this shared Rancher went with its cluster;
    // the other run's are untouched.
    assert_eq!(described(&a_run), 0, "alpha's API token is deleted by its down");
    let b_run = b.events()[0]["run"].as_str().unwrap().to_string();
    assert_eq!(described(&b_run), 1, "beta's API token stays");
    assert!(a.events().iter().any(|e| e["kind"] == "StepSucceeded" && e["data"]["step"] == "delete_api_tokens"));
    assert!(machines(&a).is_empty(), "the node machines are removed: {:?}", machines(&a));
    let (v1, ms) = server.cluster(&token, "alpha");
    assert!(v1.is_none() && ms.is_empty(), "alpha is gone from Rancher: {v1:?} {ms:?}");
    assert_eq!(server.get(&token, &format!("/v1/management.cattle.io.clusters/{mgmt}")).0, 404, "its management cluster too");
    assert_eq!(server.get_public("/ping").as_deref(), Some("pong"), "the server still answers");
    assert_ready_with_six_running(&server, &token, "beta");
    // The cluster went from Rancher before any machine was removed.
    let events = a.events();
    let seq = |pred: &dyn Fn(&Value) -> bool| events.iter().filter(|e| pred(e)).map(|e| e["seq"].as_u64().unwrap()).collect::<Vec<_>>();
    let deleted = seq(&|e| e["kind"] == "StepSucceeded" && e.to_string().contains("delete_cluster"));
    let removals = seq(&|e| e["kind"] == "StepStarted" && e.to_string().contains("remove_machine"));
    assert_eq!((deleted.len(), removals.len()), (1, 6), "{events:?}");
    assert!(removals.iter().all(|r| *r > deleted[0]), "machines removed only after the cluster was gone");
    // A second down: nothing left, the server untouched.
    a.rmm(&["down"]).ok();
    assert_eq!(server.get_public("/ping").as_deref(), Some("pong"));
    assert!(server.child_alive(), "the server process was never stopped");
}

#[test]
fn a_crashed_run_on_an_existing_rancher_resumes_without_the_password_and_makes_nothing_twice() {
    let server = Server::start();
    let d = TestDir::new();
    config(&d, &server, "gamma");
    // Crash after the cluster exists in Rancher (well past 20 appends).
    let crashed = d.rmm(&["up", "--masters", "1", "--workers", "1"]).env("RMM_RANCHER_PASSWORD", BOOTSTRAP).env("RMM_CRASH_AFTER_APPEND", "30").run();
    assert!(!crashed.status.success(), "the crash point was reached: {}", text(&crashed.stderr));
    // The stored password is used; none is needed again.
    let resumed = d.rmm(&["up", "--resume"]).cmd_without_password().ok();
    assert!(text(&resumed.stdout).contains("is active"), "{}", text(&resumed.stdout));
    assert!(text(&resumed.stdout).contains(": resumed and done in") && text(&resumed.stdout).contains("(attempt 2; the run began"), "{}", text(&resumed.stdout));
    let admin = d.credentials()["password"].as_str().unwrap().to_string();
    let token = server.login(&admin).1.expect("the admin password rmm set works");
    let (c, ms) = server.cluster(&token, "gamma");
    assert_eq!(c.expect("gamma in Rancher")["status"]["ready"], true);
    assert_eq!(ms.len(), 2, "one machine per node, none twice: {ms:?}");
    assert_eq!(server.data(&token, "/v1/provisioning.cattle.io.clusters").len(), 1);
    let tokens = server.data(&token, "/v3/tokens");
    let ours = tokens.iter().filter(|t| t["description"].as_str().is_some_and(|s| s.starts_with("rmm run "))).count();
    assert_eq!(ours, 1, "one API token of the run: {tokens:?}");
    // A scale (day two) needs no password either: the run's is stored.
    let scaled = d.rmm(&["up", "--workers", "2"]).cmd_without_password().ok();
    assert!(text(&scaled.stdout).contains("is active (1 master, 2 workers)"), "{}", text(&scaled.stdout));
    let (_, ms) = server.cluster(&token, "gamma");
    assert_eq!(ms.len(), 3, "the added worker joined, nothing twice: {ms:?}");
    assert_eq!(machines(&d).len(), 3);
    // A down that dies right after its DELETE was sent (before the outcome
    // is recorded): the next `down` finishes it, deleting nothing twice.
    let died = d.rmm(&["down"]).env("RMM_CRASH_BEFORE_OUTCOME", "1").run();
    assert!(!died.status.success(), "the down crashed: {}", text(&died.stderr));
    let (v1, _) = server.cluster(&token, "gamma");
    assert!(v1.is_none_or(|c| c["metadata"]["deletionTimestamp"].is_string()), "the delete was sent");
    assert_eq!(machines(&d).len(), 3, "no machine removed before the cluster is gone from Rancher");
    d.rmm(&["down"]).ok();
    assert!(server.cluster(&token, "gamma").0.is_none());
    let left: Vec<Value> = server
        .data(&token, "/v3/tokens")
        .into_iter()
        .filter(|t| t["description"].as_str().is_some_and(|s| s.starts_with("rmm run ")))
        .collect();
    assert!(left.is_empty(), "no token of the run is left in Rancher: {left:?}");
    assert!(machines(&d).is_empty());
    assert_eq!(server.get_public("/ping").as_deref(), Some("pong"));
}

trait WithoutPassword {
    fn cmd_without_password(self) -> Self;
}

impl WithoutPassword for crate::support::RmmCmd {
    fn cmd_without_password(mut self) -> Self {
        self.cmd.env_remove("RMM_RANCHER_PASSWORD");
        self
    }
}

impl Server {
    fn child_alive(&mut self) -> bool {
        self.child.try_wait().map(|s| s.is_none()).unwrap_or(false)
    }
}

/// Looks at every process's command line (what `ps` shows) until stopped,
/// noting one that holds `needle`.
struct CmdlineWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<(u64, Option<String>)>,
}

impl CmdlineWatch {
    fn start(needle: &str) -> CmdlineWatch {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, needle) = (stop.clone(), needle.to_string());
        let handle = std::thread::spawn(move || {
            let mut looks = 0;
            while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                    let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
                    let line = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                    if line.contains(&needle) {
                        return (looks, Some(line));
                    }
                }
                looks += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            (looks, None)
        });
        CmdlineWatch { stop, handle }
    }

    fn stop(self) -> (u64, Option<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.handle.join().unwrap()
    }
}
