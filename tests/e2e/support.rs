//! The harness: a fresh state dir per test, a command builder for the real
//! binary, readers for the log and status, and a client that asks the
//! emulator through its Rancher API. Every process a test starts under its
//! state dir (the emulator is detached on purpose) is killed when the
//! `TestDir` is dropped, also when the test fails.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

pub struct TestDir {
    pub tmp: tempfile::TempDir,
}

impl TestDir {
    pub fn new() -> TestDir {
        TestDir { tmp: tempfile::Builder::new().prefix("rmm-e2e-").tempdir().expect("temp dir") }
    }

    /// A fresh dir whose `rmm.toml` builds `kind` (its distribution and a
    /// Rancher image of a line that makes it).
    pub fn on(kind: Kind) -> TestDir {
        let dir = TestDir::new();
        std::fs::write(dir.tmp.path().join("rmm.toml"), kind.config()).unwrap();
        dir
    }

    pub fn state(&self) -> PathBuf {
        self.tmp.path().join("state")
    }

    /// This test's `XDG_STATE_HOME` (the registry `rmm list` reads).
    pub fn xdg(&self) -> PathBuf {
        self.tmp.path().join("xdg")
    }

    /// `rmm ARGS` in this test's directory, with this test's state dir.
    pub fn rmm(&self, args: &[&str]) -> RmmCmd {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rmm"));
        cmd.current_dir(self.tmp.path())
            .arg("--state-dir")
            .arg(self.state())
            .args(args)
            .env_remove("RMM_LOCAL_CREATE_MS")
            .env_remove("RMM_LOCAL_RANCHER_BOOT_MS")
            .env_remove("RMM_LOCAL_NODE_READY_MS")
            .env_remove("RMM_LOCAL_FAIL_CREATE")
            .env_remove("RMM_CRASH_AFTER_APPEND")
            .env_remove("RMM_CRASH_BEFORE_OUTCOME")
            // the docker-machine test double runs machines' commands with it
            .env("DM_DOUBLE_RMM", env!("CARGO_BIN_EXE_rmm"))
            // The registry of clusters (`rmm list`) of this test, never the user's.
            .env("XDG_STATE_HOME", self.xdg())
            .env("RMM_PLAIN", "1");
        RmmCmd { cmd }
    }

    /// `rmm up` that must succeed.
    pub fn up_ok(&self, args: &[&str]) -> Output {
        let mut all = vec!["up"];
        all.extend_from_slice(args);
        self.rmm(&all).ok()
    }

    pub fn status(&self) -> Value {
        json(&self.rmm(&["status", "--json"]).ok().stdout)
    }

    pub fn status_refresh(&self) -> Value {
        json(&self.rmm(&["status", "--json", "--refresh"]).ok().stdout)
    }

    /// Every event of the log, as `rmm log --json` prints them.
    pub fn events(&self) -> Vec<Value> {
        let out = self.rmm(&["log", "--json", "--all-runs"]).ok();
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).expect("one JSON object a line")).collect()
    }

    /// The log so far, read beside a running `up` (empty before it exists).
    pub fn events_while_running(&self) -> Vec<Value> {
        let out = self.rmm(&["log", "--json", "--all-runs"]).run();
        if !out.status.success() {
            return Vec::new();
        }
        String::from_utf8(out.stdout).unwrap().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    pub fn credentials(&self) -> Value {
        json(&self.rmm(&["credentials", "--json"]).ok().stdout)
    }

    /// Kills every process whose command line mentions this test's dir
    /// (the detached emulator of its local world).
    fn kill_processes(&self) {
        let needle = self.tmp.path().to_string_lossy().to_string();
        let Ok(procs) = std::fs::read_dir("/proc") else { return };
        for p in procs.flatten() {
            let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else { continue };
            if pid == std::process::id() as i32 {
                continue;
            }
            let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&needle) {
                let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            }
        }
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        self.kill_processes();
    }
}

/// The two kinds of run the crash proof covers: RKE2 on the current line
/// (Rancher 2.15, the v1 API) and RKE1 on the last line that has it
/// (Rancher 2.11, the v3 API).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Rke2,
    Rke1,
}

impl Kind {
    pub fn config(self) -> &'static str {
        match self {
            Kind::Rke2 => "distribution = \"rke2\"\nrancher_image = \"rancher/rancher:v2.15.1\"\n",
            Kind::Rke1 => "distribution = \"rke1\"\nrancher_image = \"rancher/rancher:v2.11.3\"\n",
        }
    }
}

pub struct RmmCmd {
    pub cmd: Command,
}

impl RmmCmd {
    pub fn env(mut self, k: &str, v: &str) -> RmmCmd {
        self.cmd.env(k, v);
        self
    }

    pub fn run(mut self) -> Output {
        self.cmd.output().expect("run rmm")
    }

    /// Runs; killed (and the test failed, with its stderr) if it has not
    /// ended within `bound`: a hang fails instead of hanging the test.
    pub fn run_within(self, bound: std::time::Duration) -> Output {
        let mut cmd = self.cmd;
        let desc = format!("{cmd:?}");
        let mut child = cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().expect("run rmm");
        let start = std::time::Instant::now();
        while child.try_wait().unwrap().is_none() {
            if start.elapsed() > bound {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                panic!("{desc} did not end within {bound:?} (a hang?): {}", text(&out.stderr));
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        child.wait_with_output().unwrap()
    }

    /// Runs and requires exit 0.
    pub fn ok(self) -> Output {
        let desc = format!("{:?}", self.cmd);
        let out = self.run();
        assert!(out.status.success(), "{desc} failed: {}\nstdout:\n{}\nstderr:\n{}", out.status, text(&out.stdout), text(&out.stderr));
        out
    }

    /// Runs and requires exit `code`.
    pub fn code(self, code: i32) -> Output {
        let desc = format!("{:?}", self.cmd);
        let out = self.run();
        assert_eq!(out.status.code(), Some(code), "{desc}: stdout:\n{}\nstderr:\n{}", text(&out.stdout), text(&out.stderr));
        out
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

pub fn json(b: &[u8]) -> Value {
    serde_json::from_slice(b).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(b)))
}

/// What the emulator says, asked through its Rancher API as an admin.
pub struct RancherView {
    pub clusters: Vec<Value>,
    pub nodes: Vec<Value>,
    pub tokens: Vec<Value>,
    pub registration_tokens: Vec<Value>,
}

/// An admin session with the run's Rancher: its URL, the password `rmm
/// credentials` prints, and the CA pinned in the log (checked against the
/// one served).
pub struct Admin {
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
    url: String,
    token: String,
}

impl Admin {
    pub fn login(dir: &TestDir) -> Admin {
        let creds = dir.credentials();
        let url = creds["url"].as_str().expect("url").to_string();
        let password = creds["password"].as_str().expect("password").to_string();
        let checksum = creds["ca_checksum"].as_str().expect("ca checksum").to_string();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (client, token) = rt.block_on(async {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let insecure = reqwest::Client::builder().danger_accept_invalid_certs(true).build().unwrap();
            let ca: Value = insecure.get(format!("{url}/v3/settings/cacerts")).send().await.unwrap().json().await.unwrap();
            let pem = ca["value"].as_str().unwrap().to_string();
            assert_eq!(rmm_actors::ports::ca_checksum(&pem), checksum, "the CA served is the one pinned in the log");
            let client = reqwest::Client::builder()
                .tls_built_in_root_certs(false)
                .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap())
                .build()
                .unwrap();
            let login: Value = client
                .post(format!("{url}/v3-public/localProviders/local?action=login"))
                .json(&serde_json::json!({"username": "admin", "password": password}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let token = login["token"].as_str().expect("login with the password `rmm credentials` prints").to_string();
            (client, token)
        });
        Admin { rt, client, url, token }
    }

    /// `GET path` as the admin: the JSON it answers.
    pub fn get(&self, path: &str) -> Value {
        self.rt.block_on(async {
            let resp = self.client.get(format!("{}{path}", self.url)).bearer_auth(&self.token).send().await.unwrap();
            resp.json().await.unwrap()
        })
    }

    /// The `data` of the collection at `path`.
    pub fn list(&self, path: &str) -> Vec<Value> {
        let v = self.get(path);
        v["data"].as_array().cloned().unwrap_or_else(|| panic!("{path}: a collection: {v}"))
    }
}

pub fn ask_rancher(dir: &TestDir) -> RancherView {
    let admin = Admin::login(dir);
    let clusters = admin.list("/v3/clusters");
    let cid = clusters.first().map(|c| c["id"].as_str().unwrap().to_string()).unwrap_or_default();
    RancherView {
        nodes: admin.list(&format!("/v3/nodes?clusterId={cid}")),
        registration_tokens: admin.list(&format!("/v3/clusterregistrationtokens?clusterId={cid}")),
        tokens: admin.list("/v3/tokens"),
        clusters,
    }
}

/// What the emulator says about an rke2/k3s run, asked through its `/v1`
/// (Steve) API as an admin (reference/rancher-current.md §2).
pub struct V1View {
    /// `provisioning.cattle.io` clusters.
    pub clusters: Vec<Value>,
    /// `management.cattle.io` clusters.
    pub management: Vec<Value>,
    /// CAPI machines (`cluster.x-k8s.io`).
    pub machines: Vec<Value>,
    /// API tokens (`/v3/tokens`: Rancher 2.15 still serves them there).
    pub tokens: Vec<Value>,
}

pub fn ask_rancher_v1(dir: &TestDir) -> V1View {
    let admin = Admin::login(dir);
    V1View {
        clusters: admin.list("/v1/provisioning.cattle.io.clusters"),
        management: admin.list("/v1/management.cattle.io.clusters"),
        machines: admin.list("/v1/cluster.x-k8s.io.machines"),
        tokens: admin.list("/v3/tokens"),
    }
}

/// The emulator's registration ledger (in its data dir, on the rancher
/// machine of the local world), per `<cluster>/<node>`: how many nodes or
/// machines its registrations made, and how many registration calls it
/// made in all (also those that only updated its node or machine).
pub struct Registrations {
    pub made: std::collections::BTreeMap<String, u64>,
    pub calls: std::collections::BTreeMap<String, u64>,
}

pub fn registrations(dir: &TestDir) -> Registrations {
    registrations_in(&dir.state().join("world/machines/rancher/rancher"))
}

/// The registration ledger of the emulator whose data dir is `data`.
pub fn registrations_in(data: &std::path::Path) -> Registrations {
    let path = data.join("state.json");
    let state = json(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())));
    let map = |k: &str| serde_json::from_value(state[k].clone()).unwrap_or_else(|e| panic!("{k} in {}: {e}", path.display()));
    Registrations { made: map("registrations"), calls: map("registrationCalls") }
}

/// The seeds a seeded test runs: `var=N` replays one; otherwise the pinned
/// ones plus one new (printed by the test, so a failure can be replayed and
/// pinned).
pub fn seeds(var: &str, pinned: &[u64]) -> Vec<u64> {
    if let Some(seed) = std::env::var(var).ok().and_then(|s| s.parse().ok()) {
        return vec![seed];
    }
    let fresh = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    pinned.iter().copied().chain(std::iter::once(fresh)).collect()
}

/// The steps `actor` finished (`StepSucceeded`) among `events`, in order.
pub fn steps_done<'a>(events: &'a [Value], actor: &str) -> Vec<&'a str> {
    events
        .iter()
        .filter(|e| e["actor"] == actor && e["kind"] == "StepSucceeded")
        .map(|e| e["data"]["step"].as_str().unwrap())
        .collect()
}

/// The one line of stderr a failing command prints (asserted to be one).
pub fn single_stderr_line(out: &Output) -> String {
    let stderr = text(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr, got: {stderr}");
    lines[0].to_string()
}

/// Whether this is CI (`CI=true`, as GitHub Actions and most CI systems
/// set it): there, every tool a test needs must be installed (`.ci/run`
/// installs them), and a missing one fails the test instead of skipping it.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// A program outside Rust that a test needs (chromium now; a Docker Engine
/// and OpenSSH soon), found at the path in `$env_var` when that is set,
/// else as the first of `names` on the `PATH`.
///
/// Missing, it prints `SKIPPED: <test needs what> — <how to install>` and
/// returns `None`: the test returns early and passes, so the README's test
/// command passes on a machine with only Rust. Under `CI=true` it panics
/// with the same line instead. (`.config/nextest.toml` shows the output of
/// the tests that call this even when they pass, so the line is seen.)
pub fn require_tool(names: &[&str], env_var: &str, needed_for: &str, install: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &std::path::Path| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    let why = match std::env::var_os(env_var) {
        Some(p) if executable(std::path::Path::new(&p)) => return Some(PathBuf::from(p)),
        Some(p) => format!("{env_var}={} is not an executable file", std::path::Path::new(&p).display()),
        None => {
            for dir in std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).unwrap_or_default() {
                for name in names {
                    let p = dir.join(name);
                    if executable(&p) {
                        return Some(p);
                    }
                }
            }
            format!("{} not found on the PATH (or set {env_var} to its path)", names.join(" or "))
        }
    };
    let what = format!("{needed_for} needs {}: {why} — install it: `{install}`", names[0]);
    if under_ci() {
        panic!("{what} (CI=true: a missing tool fails the test instead of skipping it; .ci/run installs it)");
    }
    println!("SKIPPED: {what}");
    None
}
