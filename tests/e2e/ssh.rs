//! `driver = "ssh"` against real OpenSSH servers: one `sshd` per host,
//! each on its own loopback address (`127.X.Y.10+i`) with its own host key
//! and state directory, run as the current user and killed by [`Hosts`]'s
//! Drop (and by [`TestDir`]'s, which kills whatever names the test's dir).
//! Skipped with SKIPPED and the apt line when `sshd` or `ssh` is missing,
//! except under CI=true.
//!
//! # A host
//! The commands run on this machine, so each host gets what makes it a host
//! of its own, through sshd's `ForceCommand` (`<host>/host-shell`):
//! * a private mount namespace (`unshare -m`, `-r` when not root) in which
//!   `/etc/systemd/system` and `/usr/local/bin` are the host's own
//!   directories (bind mounts), so each host's installer writes its unit
//!   file and binaries apart, and nothing of this machine's is touched;
//! * `CATTLE_AGENT_VAR_DIR` under the host's directory (the installer's
//!   own setting for where its state goes);
//! * on its PATH a `docker` that is the local world's (`rmm emulator
//!   host-docker`: the Rancher image runs the emulator on the host's
//!   address) and a `systemctl` that answers `--version` and `status` from
//!   the unit file, and `/run/systemd/system` on a tmpfs of the namespace
//!   (the hosts have no systemd of their own; the emulator's
//!   agent does its first check-in itself, as on the Docker driver's nodes).
//!
//! The node command is the emulator's real one (`curl … | sh -s - …`),
//! run by a real shell with real curl: the installer downloads the agent
//! binary from the emulator and registers from the host.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{text, TestDir};

const INSTALL: &str = "apt-get update && apt-get install -y openssh-server openssh-client";
const PORT: u16 = 22022;

fn tools(test: &str) -> Option<(PathBuf, PathBuf)> {
    // Debian puts sshd in /usr/sbin, not on every user's PATH.
    let debian = PathBuf::from("/usr/sbin/sshd");
    let sshd = if std::env::var_os("RMM_TEST_SSHD").is_none() && debian.exists() {
        debian
    } else {
        crate::support::require_tool(&["sshd"], "RMM_TEST_SSHD", test, INSTALL)?
    };
    crate::support::require_tool(&["ssh-keygen"], "RMM_TEST_SSH_KEYGEN", test, INSTALL)?;
    crate::support::require_tool(&["unshare"], "RMM_TEST_UNSHARE", test, "apt-get install -y util-linux")?;
    let ssh = crate::support::require_tool(&["ssh"], "RMM_TEST_SSH", test, INSTALL)?;
    Some((sshd, ssh))
}

/// One host: its sshd and its directory.
pub(crate) struct Host {
    name: String,
    ip: Ipv4Addr,
    dir: PathBuf,
    sshd: Option<Child>,
}

/// The hosts of a test; their sshds die with it.
pub(crate) struct Hosts {
    hosts: Vec<Host>,
    sshd_bin: PathBuf,
    client_key: PathBuf,
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for h in &mut self.hosts {
            if let Some(mut c) = h.sshd.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", text(&out.stderr));
    text(&out.stdout)
}

fn keygen(path: &Path) {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(path.with_extension("pub"));
    run(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", "rmm-test", "-f"]).arg(path));
}

fn is_root() -> bool {
    nix_uid() == 0
}

fn nix_uid() -> u32 {
    // /proc/self/status: "Uid:\t<real>\t…"
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(u32::MAX)
}

impl Hosts {
    fn new(t: &TestDir, names: &[&str], sshd_bin: PathBuf) -> Hosts {
        let root = t.tmp.path().join("hosts");
        std::fs::create_dir_all(&root).unwrap();
        let client_key = root.join("client_key");
        keygen(&client_key);
        std::fs::copy(client_key.with_extension("pub"), root.join("authorized_keys")).unwrap();
        if is_root() {
            // the privilege separation directory the Debian package makes
            let _ = std::fs::create_dir_all("/run/sshd");
        }
        let (x, y) = {
            let n = std::process::id() ^ (Instant::now().elapsed().subsec_nanos()) ^ (t.tmp.path().to_string_lossy().len() as u32 * 7919);
            let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() ^ n;
            (((seed >> 8) % 250 + 2) as u8, (seed % 250 + 2) as u8)
        };
        let mut hosts = Hosts { hosts: Vec::new(), sshd_bin, client_key };
        for (i, name) in names.iter().enumerate() {
            let ip = Ipv4Addr::new(127, x, y, 10 + i as u8);
            let dir = root.join(name);
            for d in ["etc-systemd-system", "usr-local-bin", "bin", "home", "machine", "var-lib-rancher"] {
                std::fs::create_dir_all(dir.join(d)).unwrap();
            }
            hosts.hosts.push(Host { name: name.to_string(), ip, dir, sshd: None });
            hosts.write_host(i);
            hosts.new_host_key(i);
            hosts.start(i);
        }
        hosts
    }

    fn write_host(&self, i: usize) {
        use std::os::unix::fs::PermissionsExt;
        let h = &self.hosts[i];
        let d = h.dir.display();
        let root_dir = self.hosts[i].dir.parent().unwrap().display().to_string();
        let exe = env!("CARGO_BIN_EXE_rmm");
        let unshare = if is_root() { "unshare -m" } else { "unshare -rm" };
        let shell = format!(
            r#"#!/bin/sh
# The host {name}: its own /etc/systemd/system and /usr/local/bin (bind
# mounts in a namespace of its own), its docker and systemctl.
H='{d}'
export H PATH="$H/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" HOME="$H/home"
export RMM_HOST_DIR="$H/machine" RMM_HOST_IP='{ip}' RMM_HOST_NAME='{name}'
export CATTLE_AGENT_VAR_DIR="$H/var-lib-rancher/agent"
# the test's knobs for this host (the emulator's clock, …): sshd hands a
# session none of its own environment
if [ -f "$H/env" ]; then . "$H/env"; fi
# its mounts; and, unless it is a host without systemd, /run/systemd/system
# (what systemd's sd_booted() looks for) on a tmpfs of its own
M='mount --bind "$H/etc-systemd-system" /etc/systemd/system && mount --bind "$H/usr-local-bin" /usr/local/bin'
if [ ! -e "$H/no-systemd" ]; then
  M="$M"' && {{ if [ -d /run/systemd ]; then mount -t tmpfs rmm-host /run/systemd; else mount -t tmpfs rmm-host /run; fi; }} && mkdir -p /run/systemd/system'
fi
export M
if [ -e "$H/drop-after-install" ]; then
  script="$(cat)"
  case "$script" in
    *system-agent-install.sh*)
      rm -f "$H/drop-after-install"
      printf '%s\n' "$script" | {unshare} sh -c 'eval "$M" && cd "$HOME" && exec sh -c "$SSH_ORIGINAL_COMMAND"'
      # the connection drops before the exit status gets back
      p=$$
      while [ "$p" -gt 1 ]; do
        case "$(cat /proc/$p/comm 2>/dev/null)" in sshd*) kill -9 "$p"; exit 1;; esac
        p="$(awk '{{print $4}}' /proc/$p/stat 2>/dev/null || echo 1)"
      done
      exit 1;;
  esac
  printf '%s\n' "$script" | exec {unshare} sh -c 'eval "$M" && cd "$HOME" && exec sh -c "$SSH_ORIGINAL_COMMAND"'
fi
exec {unshare} sh -c 'eval "$M" && cd "$HOME" && exec sh -c "$SSH_ORIGINAL_COMMAND"'
"#,
            name = h.name,
            ip = h.ip,
        );
        let files = [
            ("host-shell", shell),
            ("bin/docker", format!("#!/bin/sh\nexec '{exe}' emulator host-docker -- \"$@\"\n")),
            (
                "bin/systemctl",
                "#!/bin/sh\n# the test host's systemctl: its version, and the agent's unit from its file\ncase \"$1\" in\n  --version) echo 'systemd 252 (252.30-1~deb12u2, rmm test host)';;\n  status|is-active) if [ -f /etc/systemd/system/rancher-system-agent.service ]; then echo 'active'; else echo 'Unit rancher-system-agent.service could not be found.' >&2; exit 4; fi;;\n  *) exit 0;;\nesac\n".to_string(),
            ),
        ];
        for (f, body) in files {
            let p = h.dir.join(f);
            std::fs::write(&p, body).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let config = format!(
            "ListenAddress {ip}:{PORT}\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\nAuthorizedKeysFile {root_dir}/authorized_keys\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\nForceCommand {d}/host-shell\nLogLevel VERBOSE\n",
            ip = h.ip
        );
        std::fs::write(h.dir.join("sshd_config"), config).unwrap();
    }

    fn new_host_key(&self, i: usize) {
        keygen(&self.hosts[i].dir.join("host_key"));
    }

    fn start(&mut self, i: usize) {
        let h = &mut self.hosts[i];
        let log = std::fs::File::create(h.dir.join("sshd.log")).unwrap();
        let child = Command::new(&self.sshd_bin)
            .args(["-D", "-e", "-f"])
            .arg(h.dir.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start sshd");
        h.sshd = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect_timeout(&(h.ip, PORT).into(), Duration::from_millis(200)).is_err() {
            if let Some(status) = h.sshd.as_mut().unwrap().try_wait().unwrap() {
                panic!("sshd of {} exited {status}: {}", h.name, std::fs::read_to_string(h.dir.join("sshd.log")).unwrap_or_default());
            }
            assert!(Instant::now() < deadline, "sshd of {} does not answer on {}:{PORT}", h.name, h.ip);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self, i: usize) {
        if let Some(mut c) = self.hosts[i].sshd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `[ssh]` and `[[ssh.hosts]]` for rmm.toml.
    fn toml(&self) -> String {
        let mut s = format!(
            "[ssh]\nport = {PORT}\nidentity_file = \"{}\"\nsudo = false\nknown_hosts = \"{}\"\nrancher_port = 8443\nconnect_timeout_s = 5\ncommand_timeout_s = 120\n",
            self.client_key.display(),
            self.client_key.parent().unwrap().join("user_known_hosts").display()
        );
        for h in &self.hosts {
            s.push_str(&format!("\n[[ssh.hosts]]\nname = \"{}\"\naddress = \"{}\"\n", h.name, h.ip));
        }
        s
    }

    /// Sets `env` in every session of every host (the emulator's and the
    /// agent's knobs; `sshd` passes on none of the test's environment).
    pub(crate) fn set_env(&self, env: &[(&str, &str)]) {
        let lines: String = env.iter().map(|(k, v)| format!("export {k}='{v}'\n")).collect();
        for h in &self.hosts {
            std::fs::write(h.dir.join("env"), &lines).unwrap();
        }
    }

    fn dir(&self, name: &str) -> &Path {
        &self.hosts.iter().find(|h| h.name == name).unwrap().dir
    }
}

const SEVEN: &[&str] = &["rancher", "master01", "master02", "master03", "worker01", "worker02", "worker03"];

/// A test's world: the state dir with its rmm.toml, and the hosts.
pub(crate) fn world(test: &str, names: &[&str], masters: u32, workers: u32, extra: &str) -> Option<(TestDir, Hosts)> {
    world_of(test, names, masters, workers, extra, "rke2", "rancher/rancher:v2.15.1")
}

fn world_of(test: &str, names: &[&str], masters: u32, workers: u32, extra: &str, distribution: &str, image: &str) -> Option<(TestDir, Hosts)> {
    let (sshd, _ssh) = tools(test)?;
    let t = TestDir::new();
    let hosts = Hosts::new(&t, names, sshd);
    let cluster = format!("ssh{}", std::process::id() % 100000);
    let config = format!(
        "driver = \"ssh\"\ndistribution = \"{distribution}\"\nrancher_image = \"{image}\"\ncluster_name = \"{cluster}\"\nmasters = {masters}\nworkers = {workers}\npoll_ms = 100\n{extra}\n[timeouts]\nrancher_ready_s = 60\nnode_command_s = 60\nnode_listed_s = 60\nactive_s = 120\nmachine_create_s = 60\n\n{}",
        hosts.toml()
    );
    std::fs::write(t.tmp.path().join("rmm.toml"), config).unwrap();
    Some((t, hosts))
}

/// Every distinct command line seen while it runs, read from /proc.
struct PsWatch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<BTreeSet<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PsWatch {
    fn start() -> PsWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(BTreeSet::new()));
        let (s, w) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                if let Ok(procs) = std::fs::read_dir("/proc") {
                    for p in procs.flatten() {
                        if let Ok(c) = std::fs::read(p.path().join("cmdline")) {
                            if !c.is_empty() {
                                w.lock().unwrap().insert(String::from_utf8_lossy(&c).replace('\0', " "));
                            }
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        PsWatch { stop, seen, thread: Some(thread) }
    }

    fn finish(mut self) -> BTreeSet<String> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

impl Drop for PsWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The run's secrets (secrets.json), and the tokens inside node commands.
fn secrets(t: &TestDir) -> Vec<String> {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(t.state().join("secrets.json")).unwrap()).unwrap();
    let mut out = Vec::new();
    for s in v.as_object().unwrap().values().filter_map(Value::as_str) {
        if let Some(rest) = s.split("--token ").nth(1) {
            out.push(rest.split_whitespace().next().unwrap().to_string());
        } else if s.len() >= 12 {
            out.push(s.to_string());
        }
    }
    out
}

/// GET `paths` from the emulator as admin.
fn ask(t: &TestDir, paths: &[&str]) -> Vec<Value> {
    // the admin session of support.rs, over the CA pinned in the log
    let admin = crate::support::Admin::login(t);
    paths.iter().map(|p| admin.get(p)).collect()
}

fn machines_by_node(t: &TestDir) -> Vec<String> {
    let a = ask(t, &["/v1/cluster.x-k8s.io.machines/fleet-default"]);
    let mut nodes: Vec<String> = a[0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["metadata"]["labels"]["rke.cattle.io/node-name"].as_str().unwrap_or("").to_string())
        .collect();
    nodes.sort();
    nodes
}

#[test]
fn ssh_up_on_seven_hosts_registers_each_with_its_address_with_no_secret_in_ps_and_down_releases_every_host() {
    let Some((t, hosts)) = world("the ssh driver's full up", SEVEN, 3, 3, "") else { return };
    let watch = PsWatch::start();
    let up = t.up_ok(&[]);
    let seen = watch.finish();
    assert!(text(&up.stdout).contains("rmm kubeconfig"), "{}", text(&up.stdout));

    // No secret of the run on any command line seen during it.
    let secrets = secrets(&t);
    assert!(secrets.len() >= 2, "the password and the node command's token: {secrets:?}");
    for s in &secrets {
        if let Some(line) = seen.iter().find(|l| l.contains(s.as_str())) {
            panic!("a secret ({} chars) was on a command line: {}", s.len(), line.replace(s.as_str(), "<SECRET>"));
        }
    }
    assert!(seen.iter().any(|l| l.contains("eval \"$(cat)\"")), "the watch saw the ssh calls");

    // Six machines, each registered from its host's own address.
    let a = ask(&t, &["/v1/cluster.x-k8s.io.machines/fleet-default"]);
    let machines = a[0]["data"].as_array().unwrap();
    assert_eq!(machines.len(), 6, "{machines:?}");
    for m in machines {
        assert_eq!(m["status"]["phase"], "Running", "{m}");
        let node = m["metadata"]["labels"]["rke.cattle.io/node-name"].as_str().unwrap();
        let ip = hosts.hosts.iter().find(|h| h.name == node).unwrap().ip.to_string();
        // (The hosts share this machine's network stack, so the TCP source
        // of their calls is 127.0.0.1; the address they register is theirs.)
        let addresses = m["status"]["addresses"].to_string();
        assert!(addresses.contains(&format!("\"{ip}\"")), "{node}: --address is its host's: {addresses}");
        // The installer ran on that host: its unit and uninstall script.
        let dir = hosts.dir(node);
        assert!(dir.join("etc-systemd-system/rancher-system-agent.service").exists(), "{node}");
        assert!(dir.join("usr-local-bin/rancher-system-agent-uninstall.sh").exists(), "{node}");
    }
    assert!(!Path::new("/etc/systemd/system/rancher-system-agent.service").exists() || is_root(), "nothing of this machine's touched");
    // The server-url is the rancher host's address.
    assert_eq!(t.status()["rancher"]["url"], format!("https://{}:8443", hosts.hosts[0].ip));

    // status --refresh observes the hosts through the driver, and the
    // server container through docker over ssh.
    let refreshed = t.status_refresh();
    for a in refreshed["actors"].as_array().unwrap() {
        assert_eq!(a["observed"], "running", "{a}");
    }
    assert_eq!(refreshed["rancher"]["server"]["container"], "running", "{}", refreshed["rancher"]);
    assert_eq!(refreshed["rancher"]["server"]["answering"], true, "{}", refreshed["rancher"]);

    // down: every host released (uninstall ran), none deleted; sshd still answers.
    t.rmm(&["down", "--yes"]).ok();
    for h in &hosts.hosts {
        assert!(h.dir.join("host-shell").exists(), "{} not deleted", h.name);
        assert!(!h.dir.join("etc-systemd-system/rancher-system-agent.service").exists(), "{}: the uninstall script ran", h.name);
        assert!(!h.dir.join("usr-local-bin/rancher-system-agent").exists(), "{}", h.name);
        assert!(TcpStream::connect_timeout(&(h.ip, PORT).into(), Duration::from_secs(2)).is_ok(), "{} still answers", h.name);
    }
    let claims = std::fs::read_dir(t.state().join("ssh/claims")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(claims, 0, "every host released");
    // The server container is gone from the rancher host.
    let ps = run(Command::new("sh").arg("-c").arg(format!(
        "RMM_HOST_DIR='{}/machine' RMM_HOST_IP='{}' '{}' emulator host-docker -- ps -aq",
        hosts.hosts[0].dir.display(),
        hosts.hosts[0].ip,
        env!("CARGO_BIN_EXE_rmm")
    )));
    assert_eq!(ps.trim(), "", "the Rancher container removed");
}

#[test]
fn ssh_a_host_key_changed_between_runs_refuses_with_one_line() {
    let Some((t, mut hosts)) = world("the ssh driver's host key pinning", &["rancher", "master01", "worker01"], 1, 1, "") else {
        return;
    };
    t.up_ok(&[]);
    // The first contact recorded the host's key: the fingerprint of its sshd's key.
    let claim: Value =
        serde_json::from_str(&std::fs::read_to_string(t.state().join("ssh/claims/master01.json")).unwrap()).unwrap();
    let print = run(Command::new("ssh-keygen").arg("-l").arg("-f").arg(hosts.dir("master01").join("host_key.pub")));
    let print = print.split_whitespace().find(|w| w.starts_with("SHA256:")).unwrap().to_string();
    assert_eq!(claim["host_key"].as_str(), Some(print.as_str()), "{claim}");
    // ... and so does the log: the create step's outcome is the claim with
    // the key's fingerprint (the pin, as the CA's checksum is pinned).
    assert_eq!(logged_host_key(&t, "master01").as_deref(), Some(print.as_str()));
    t.rmm(&["down", "--yes"]).ok();
    // The host is reinstalled: a new host key.
    hosts.stop(1);
    hosts.new_host_key(1);
    hosts.start(1);
    let out = t.rmm(&["up"]).run();
    assert!(!out.status.success(), "{}", text(&out.stdout));
    let stderr = text(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("rmm:")).collect();
    assert_eq!(lines.len(), 1, "one rmm: line: {stderr}");
    assert!(lines[0].contains("host key of master01"), "{}", lines[0]);
    assert!(lines[0].contains("known_hosts"), "{}", lines[0]);
    assert!(lines[0].contains(&print), "the line names the fingerprint the log recorded: {}", lines[0]);
}

/// The fingerprint the log recorded for `machine`'s host (its create
/// step's `host_claimed` outcome, the latest).
fn logged_host_key(t: &TestDir, machine: &str) -> Option<String> {
    let out = t.rmm(&["log", "--json", "--all-runs"]).ok();
    text(&out.stdout)
        .lines()
        .rev()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["actor"] == machine && e["kind"] == "StepSucceeded" && e["data"]["step"] == "create_machine")
        .find_map(|e| e["data"]["outcome"]["host_claimed"]["host_key"].as_str().map(str::to_string))
}

/// The log is where the pin lives: with rmm's known-hosts file lost
/// mid-run, the resume restores a host's line when the key it offers is
/// the one the log recorded, and refuses (one line, both fingerprints) a
/// host that now offers another.
#[test]
fn ssh_a_lost_known_hosts_file_is_restored_from_the_log_and_a_changed_key_refused_with_one_line() {
    let Some((t, mut hosts)) = world("the ssh driver's host key pinning", &["rancher", "master01", "worker01"], 1, 1, "") else {
        return;
    };
    // Killed once every machine is claimed (the log has their keys).
    let mut cmd = t.rmm(&["up"]).cmd;
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let claimed = |e: &Value| e["kind"] == "StepSucceeded" && e["data"]["outcome"]["host_claimed"].is_object();
    while t.events_while_running().iter().filter(|e| claimed(e)).count() < 3 {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it was killed");
        assert!(Instant::now() < deadline, "the machines were never all claimed");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let pins = t.state().join("ssh/known_hosts");
    std::fs::remove_file(&pins).unwrap();
    // worker01 is reinstalled meanwhile: another key.
    hosts.stop(2);
    hosts.new_host_key(2);
    hosts.start(2);
    let out = t.rmm(&["up", "--resume"]).run();
    assert!(!out.status.success(), "{}", text(&out.stdout));
    let stderr = text(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("rmm:")).collect();
    assert_eq!(lines.len(), 1, "one rmm: line: {stderr}");
    let recorded = logged_host_key(&t, "worker01").unwrap();
    assert!(lines[0].contains("host key of worker01") && lines[0].contains(&recorded), "{}", lines[0]);
    // The others' lines came back from the log (their keys did not change).
    // (ssh hashes the names in known-hosts files: ask ssh-keygen.)
    let pinned = |i: usize| {
        let out = Command::new("ssh-keygen").arg("-F").arg(format!("[{}]:{PORT}", hosts.hosts[i].ip)).arg("-f").arg(&pins).output().unwrap();
        out.status.success() && !out.stdout.is_empty()
    };
    assert!(pinned(1), "master01's pin restored");
    assert!(!pinned(2), "worker01's new key not pinned");
}

#[test]
fn ssh_a_host_that_drops_the_connection_after_the_installer_ran_then_resume_registers_it_once() {
    let Some((t, hosts)) = world("the ssh driver's dropped connection", &["rancher", "master01", "worker01"], 1, 1, "[retry]\nmax_tries = 1\n") else {
        return;
    };
    std::fs::write(hosts.dir("master01").join("drop-after-install"), "").unwrap();
    let out = t.rmm(&["up"]).run();
    assert!(!out.status.success(), "the dropped connection fails the run (max_tries = 1): {}", text(&out.stdout));
    assert!(!hosts.dir("master01").join("drop-after-install").exists(), "the installer's connection was dropped");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("master01"), "{stderr}");
    t.up_ok(&["--resume"]);
    assert_eq!(machines_by_node(&t), ["master01", "worker01"], "each registered once");
}

/// Two state dirs never hold one host: "create" writes a claim on the host
/// naming the state dir; a second state dir's `up` is refused with one
/// line naming who holds it; `down` releases the host (after the uninstall
/// scripts), and then the other state dir's resume claims it.
#[test]
fn ssh_a_host_claimed_from_another_state_dir_is_refused_with_one_line_until_released() {
    let Some((a, hosts)) = world("the ssh driver's host claims", &["rancher", "master01", "worker01"], 1, 1, "") else {
        return;
    };
    a.up_ok(&[]);
    let claim_on = |name: &str| std::fs::read_to_string(hosts.dir(name).join("home/.rmm/claim")).ok();
    let held = claim_on("master01").expect("a claim on the host");
    assert!(held.contains(&a.state().display().to_string()) && held.contains("machine=master01"), "{held}");
    // Another state dir, the same hosts, another cluster.
    let b = TestDir::new();
    let config = std::fs::read_to_string(a.tmp.path().join("rmm.toml")).unwrap();
    let config = config.replace("cluster_name = \"ssh", "cluster_name = \"other");
    std::fs::write(b.tmp.path().join("rmm.toml"), config).unwrap();
    let out = b.rmm(&["up"]).run();
    assert!(!out.status.success(), "{}", text(&out.stdout));
    let stderr = text(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("rmm:")).collect();
    assert_eq!(lines.len(), 1, "one rmm: line: {stderr}");
    assert!(lines[0].contains("is claimed by cluster ssh") && lines[0].contains(&a.state().display().to_string()), "{}", lines[0]);
    assert_eq!(claim_on("master01").as_deref(), Some(held.as_str()), "the claim is untouched");
    // A's down releases every host; B's resume then claims them.
    a.rmm(&["down", "--yes"]).ok();
    for h in ["rancher", "master01", "worker01"] {
        assert_eq!(claim_on(h), None, "{h} released");
    }
    // `down` removes the Rancher container, not its data (/opt/rancher):
    // a new Rancher there would start as A's, with A's admin password. The
    // host's owner wipes it before handing the host on.
    std::fs::remove_dir_all(hosts.dir("rancher").join("machine/rancher")).unwrap();
    b.up_ok(&["--resume"]);
    let now = claim_on("worker01").expect("claimed by B");
    assert!(now.contains(&b.state().display().to_string()) && now.contains("cluster=other"), "{now}");
    b.rmm(&["down", "--yes"]).ok();
}

/// An existing Rancher (`rancher_url`): the hosts are the nodes only
/// (masters + workers, no rancher host), the full up registers them with
/// that server, and `down` releases them and leaves the server running.
#[test]
fn ssh_with_an_existing_rancher_takes_masters_plus_workers_hosts_and_the_full_up_works() {
    let server = crate::existing::Server::start();
    let url = format!("rancher_url = \"{}\"\n", server.url());
    let Some((t, mut hosts)) = world("the ssh driver with an existing Rancher", &["master01", "worker01"], 1, 1, &url) else {
        return;
    };
    t.rmm(&["up"]).env("RMM_RANCHER_PASSWORD", crate::existing::BOOTSTRAP).ok();
    assert_eq!(t.status()["run"]["state"], "completed");
    let admin = t.credentials()["password"].as_str().unwrap().to_string();
    let (status, token) = server.login(&admin);
    assert_eq!(status, 201);
    let toml = std::fs::read_to_string(t.tmp.path().join("rmm.toml")).unwrap();
    let name = toml.lines().find_map(|l| l.strip_prefix("cluster_name = \"")).unwrap().trim_end_matches('"').to_string();
    let (c, machines) = server.cluster(&token.unwrap(), &name);
    assert_eq!(c.expect("the cluster is in Rancher")["status"]["ready"], true);
    let mut nodes: Vec<&str> = machines.iter().map(|m| m["metadata"]["labels"]["rke.cattle.io/node-name"].as_str().unwrap_or("")).collect();
    nodes.sort();
    assert_eq!(nodes, ["master01", "worker01"], "each host registered once, from its host");
    assert!(machines.iter().all(|m| m["status"]["phase"] == "Running"), "{machines:?}");
    // status --refresh asks each host: one that does not answer (its sshd
    // down: powered off) is stopped, and running again once it answers.
    let observed = |t: &TestDir, name: &str| {
        let s = t.status_refresh();
        s["actors"].as_array().unwrap().iter().find(|a| a["name"] == name).unwrap()["observed"].clone()
    };
    hosts.stop(1);
    assert_eq!(observed(&t, "worker01"), "stopped");
    assert_eq!(observed(&t, "master01"), "running");
    hosts.start(1);
    assert_eq!(observed(&t, "worker01"), "running");
    t.rmm(&["down", "--yes"]).ok();
    for h in ["master01", "worker01"] {
        assert!(!hosts.dir(h).join("home/.rmm/claim").exists(), "{h} released");
    }
    assert_eq!(server.login(&admin).0, 201, "the server keeps running");
}

/// ... and with `rancher_url` a rancher host is one too many: refused
/// before anything is touched, with one line that says why.
#[test]
fn ssh_with_an_existing_rancher_refuses_a_rancher_host_with_one_line() {
    let t = TestDir::new();
    std::fs::write(
        t.tmp.path().join("rmm.toml"),
        "driver = \"ssh\"\ndistribution = \"rke2\"\nmasters = 1\nworkers = 1\nrancher_url = \"https://rancher.example.com\"\n\n[[ssh.hosts]]\nname = \"rancher\"\naddress = \"10.0.0.10\"\n\n[[ssh.hosts]]\nname = \"master01\"\naddress = \"10.0.0.11\"\n\n[[ssh.hosts]]\nname = \"worker01\"\naddress = \"10.0.0.12\"\n",
    )
    .unwrap();
    let out = t.rmm(&["up"]).env("RMM_RANCHER_PASSWORD", "some-password-1234").code(2);
    let line = crate::support::single_stderr_line(&out);
    assert!(line.contains("rancher not in the plan") && line.contains("rancher_url is set"), "{line}");
    assert!(!t.state().join("ssh.json").exists(), "nothing recorded");
}

/// The hosts decide the topology: `up` refuses, before touching anything,
/// when `[[ssh.hosts]]` does not name every planned machine.
#[test]
fn ssh_up_refuses_with_one_line_when_the_hosts_do_not_match_the_plan() {
    let t = TestDir::new();
    std::fs::write(
        t.tmp.path().join("rmm.toml"),
        "driver = \"ssh\"\ndistribution = \"rke2\"\nmasters = 1\nworkers = 1\n\n[[ssh.hosts]]\nname = \"rancher\"\naddress = \"10.0.0.10\"\n\n[[ssh.hosts]]\nname = \"master01\"\naddress = \"10.0.0.11\"\n",
    )
    .unwrap();
    let out = t.rmm(&["up"]).code(2);
    let line = crate::support::single_stderr_line(&out);
    assert!(line.starts_with("rmm:") && line.contains("worker01") && line.contains("[[ssh.hosts]]"), "{line}");
    assert!(!t.state().join("ssh.json").exists(), "nothing recorded");
}

/// "create" checks what the distribution needs: an rke2 node host without
/// systemd is refused with one line, and the run claims nothing it cannot use.
#[test]
fn ssh_a_node_host_without_systemd_is_refused_with_one_line() {
    let Some((t, hosts)) = world("the ssh driver's host checks", &["rancher", "master01", "worker01"], 1, 1, "") else {
        return;
    };
    std::fs::write(hosts.dir("worker01").join("no-systemd"), "").unwrap();
    let out = t.rmm(&["up"]).run();
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("rmm:")).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("worker01") && lines[0].contains("no systemd"), "{}", lines[0]);
    assert!(!t.state().join("ssh/claims/worker01.json").exists(), "not claimed");
}

/// rke1 on an emulated 2.11: the agent is a `docker run` on each node host,
/// its token handed over as `-e CATTLE_TOKEN` from the script's
/// environment, never on a command line; `down` releases every host.
#[test]
fn ssh_rke1_on_an_emulated_2_11_registers_each_node_with_no_secret_in_ps() {
    let Some((t, hosts)) = world_of("the ssh driver's rke1 run", &["rancher", "master01", "worker01"], 1, 1, "", "rke1", "rancher/rancher:v2.11.3") else {
        return;
    };
    let watch = PsWatch::start();
    t.up_ok(&[]);
    let seen = watch.finish();
    let secrets = secrets(&t);
    assert!(secrets.len() >= 2, "{secrets:?}");
    for s in &secrets {
        if let Some(line) = seen.iter().find(|l| l.contains(s.as_str())) {
            panic!("a secret ({} chars) was on a command line: {}", s.len(), line.replace(s.as_str(), "<SECRET>"));
        }
    }
    assert_eq!(t.status()["rancher"]["cluster_state"], "active");
    t.rmm(&["down", "--yes"]).ok();
    for h in &hosts.hosts {
        assert!(h.dir.join("host-shell").exists(), "{} not deleted", h.name);
    }
    assert_eq!(std::fs::read_dir(t.state().join("ssh/claims")).map(|d| d.count()).unwrap_or(0), 0);
}

/// How many times `actor` started `step` in the whole log.
fn started(events: &[Value], actor: &str, step: &str) -> usize {
    events.iter().filter(|e| e["kind"] == "StepStarted" && e["actor"] == actor && e["data"]["step"] == step).count()
}

/// Scale on ssh hosts (issue 11). 1 master + 1 worker; worker02's host is
/// added to rmm.toml and `up --workers 2` claims and registers only it
/// (nothing else claimed or installed twice); a moved worker01 is refused
/// first, changing nothing; then worker02's entry is dropped and `up
/// --workers 1` (crashed right after its attempt began, then resumed, so
/// the removal runs from the recorded settings, which rmm.toml no longer
/// has) deletes it in Rancher, runs its uninstall script and drops its
/// claim. `rmm plan` shows each change first.
#[test]
fn ssh_scale_claims_only_the_added_host_and_releases_the_removed_one_after_rancher_let_it_go() {
    let Some((t, hosts)) = world("the ssh driver's scale", &["rancher", "master01", "worker01", "worker02"], 1, 1, "") else {
        return;
    };
    let toml_path = t.tmp.path().join("rmm.toml");
    let with_w2 = std::fs::read_to_string(&toml_path).unwrap();
    let w2_entry = format!("\n[[ssh.hosts]]\nname = \"worker02\"\naddress = \"{}\"\n", hosts.hosts[3].ip);
    assert!(with_w2.contains(&w2_entry), "{with_w2}");
    let without_w2 = with_w2.replace(&w2_entry, "");
    std::fs::write(&toml_path, &without_w2).unwrap();
    t.up_ok(&[]);
    let on_host = |name: &str| std::fs::read_to_string(hosts.dir(name).join("home/.rmm/claim")).ok();
    let held: Vec<Option<String>> = ["rancher", "master01", "worker01"].iter().map(|h| on_host(h)).collect();
    assert!(held.iter().all(Option::is_some), "{held:?}");
    let settings = t.state().join("ssh.json");

    // worker01 "moved" (another address) while worker02 is added: refused
    // by up and by plan, one line naming worker01 and `rmm down`; nothing
    // recorded, nothing claimed.
    let w1 = format!("address = \"{}\"", hosts.hosts[2].ip);
    assert!(with_w2.contains(&w1));
    std::fs::write(&toml_path, with_w2.replace(&w1, "address = \"127.0.0.254\"")).unwrap();
    let (events_before, settings_before) = (t.events().len(), std::fs::read(&settings).unwrap());
    // (`plan` exits 1 for its errors: its 2 means changes.)
    for (cmd, code) in [(&["up", "--workers", "2"][..], 2), (&["plan", "--workers", "2"][..], 1)] {
        let line = crate::support::single_stderr_line(&t.rmm(cmd).code(code));
        assert!(line.starts_with("rmm: ") && line.contains("worker01 address 127.0.0.254") && line.contains("cannot move a node") && line.contains("`rmm down`"), "{cmd:?}: {line}");
    }
    assert_eq!(t.events().len(), events_before, "a refusal records nothing");
    assert_eq!(std::fs::read(&settings).unwrap(), settings_before, "the recorded settings untouched");
    assert_eq!(on_host("worker02"), None);

    // Adding worker02: the plan says so, then up does exactly that.
    std::fs::write(&toml_path, &with_w2).unwrap();
    let out = t.rmm(&["plan", "--workers", "2"]).code(2);
    let said = text(&out.stdout);
    assert!(said.contains("+ worker02 (worker)") && said.contains("1 to add, 0 to remove"), "{said}");
    let out = t.rmm(&["up", "--workers", "2"]).ok();
    assert!(text(&out.stdout).contains("(1 master, 2 workers): scaled in"), "{}", text(&out.stdout));
    assert_eq!(machines_by_node(&t), ["master01", "worker01", "worker02"], "each node registered once");
    let events = t.events();
    for m in ["rancher", "master01", "worker01", "worker02"] {
        assert_eq!(started(&events, m, "create_machine"), 1, "{m} claimed once");
    }
    for m in ["master01", "worker01", "worker02"] {
        assert_eq!(started(&events, m, "run_agent"), 1, "{m}'s installer ran once");
    }
    let now: Vec<Option<String>> = ["rancher", "master01", "worker01"].iter().map(|h| on_host(h)).collect();
    assert_eq!(now, held, "the kept hosts' claims untouched");
    assert!(on_host("worker02").is_some_and(|c| c.contains("machine=worker02")));
    assert!(hosts.dir("worker02").join("etc-systemd-system/rancher-system-agent.service").exists(), "installed on worker02");

    // Removing it: its entry dropped from rmm.toml.
    std::fs::write(&toml_path, &without_w2).unwrap();
    let out = t.rmm(&["plan", "--workers", "1"]).code(2);
    let said = text(&out.stdout);
    assert!(said.contains("- worker02 (worker)") && said.contains("0 to add, 1 to remove"), "{said}");
    // A crash right after the scale's attempt began (PlanChanged and
    // AttemptStarted are its first two appends): the merged settings,
    // worker02 still in them, were recorded before.
    assert!(crate::crash::crash_command(&t, &["up", "--workers", "1"], "RMM_CRASH_AFTER_APPEND", 2, &[]));
    let recorded: Value = serde_json::from_slice(&std::fs::read(&settings).unwrap()).unwrap();
    let names: Vec<&str> = recorded["hosts"].as_array().unwrap().iter().map(|h| h["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["rancher", "master01", "worker01", "worker02"], "{recorded}");
    t.up_ok(&["--resume"]);
    assert_eq!(machines_by_node(&t), ["master01", "worker01"], "Rancher no longer lists worker02");
    assert_eq!(on_host("worker02"), None, "worker02's claim on the host is gone");
    assert!(!t.state().join("ssh/claims/worker02.json").exists(), "and rmm's");
    assert!(!hosts.dir("worker02").join("etc-systemd-system/rancher-system-agent.service").exists(), "its uninstall script ran");
    assert!(hosts.dir("worker02").join("host-shell").exists(), "the host itself stays");
    let events = t.events();
    let w2: Vec<&str> = events
        .iter()
        .filter(|e| e["actor"] == "worker02" && e["kind"] == "StepSucceeded")
        .map(|e| e["data"]["step"].as_str().unwrap())
        .filter(|s| ["delete_node", "remove_machine"].contains(s))
        .collect();
    assert_eq!(w2, ["delete_node", "remove_machine"], "deleted in Rancher first, then released");
    let now: Vec<Option<String>> = ["rancher", "master01", "worker01"].iter().map(|h| on_host(h)).collect();
    assert_eq!(now, held, "the kept hosts untouched");
    assert_eq!(started(&events, "worker01", "run_agent"), 1);
    t.rmm(&["down", "--yes"]).ok();
    assert_eq!(std::fs::read_dir(t.state().join("ssh/claims")).map(|d| d.count()).unwrap_or(0), 0);
}
