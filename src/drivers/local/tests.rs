use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use axum::routing::{get, post};
use base64::Engine;
use rmm_actors::ports::{ca_checksum, DriverError, MachineDriver, MachineSpec, MachineState};
use rmm_events::Role;
use serde_json::json;

use super::agent::{self, AgentFlags};
use super::docker::{self, image_kind, name_filter_matches, parse_run, Kind};
use super::*;

fn words(s: &str) -> Vec<String> {
    shell_words::split(s).unwrap()
}

fn spec(name: &str, cluster: &str) -> MachineSpec {
    MachineSpec { name: name.into(), cluster: cluster.into(), role: Role::Master }
}

fn driver(dir: &Path, config: LocalConfig) -> LocalDriver {
    LocalDriver::with_config(dir.join("world"), PathBuf::from("/nonexistent/rmm"), config)
}

fn subnet_of(ip: &str) -> [u8; 3] {
    let [a, b, c, _] = ip.parse::<Ipv4Addr>().unwrap().octets();
    [a, b, c]
}

fn last_octet(ip: &str) -> u8 {
    ip.parse::<Ipv4Addr>().unwrap().octets()[3]
}

// ---------------------------------------------------------------- machines

#[tokio::test]
async fn create_gives_running_machines_the_lowest_free_address_of_the_world() {
    let tmp = tempfile::tempdir().unwrap();
    let d = driver(tmp.path(), LocalConfig::default());
    let a = d.create(&spec("rancher", "tiny")).await.unwrap();
    let b = d.create(&spec("master01", "tiny")).await.unwrap();
    assert_eq!(a.state, MachineState::Running);
    assert_eq!(a.cluster.as_deref(), Some("tiny"));
    let (ia, ib) = (a.ip.unwrap(), b.ip.unwrap());
    assert_eq!(ia.split('.').next(), Some("127"));
    assert_ne!(subnet_of(&ia)[1], 0, "never 127.0.0.x");
    assert_eq!(subnet_of(&ia), subnet_of(&ib));
    assert_eq!((last_octet(&ia), last_octet(&ib)), (1, 2));

    // Addresses come from the machines that exist: a removed machine's
    // address is free again.
    d.remove("rancher").await.unwrap();
    let again = d.create(&spec("rancher", "tiny")).await.unwrap();
    assert_eq!(last_octet(again.ip.as_deref().unwrap()), 1);

    // The subnet is the world's: another driver on the same world keeps it.
    let d2 = driver(tmp.path(), LocalConfig::default());
    let c = d2.create(&spec("worker01", "tiny")).await.unwrap();
    assert_eq!(subnet_of(c.ip.as_deref().unwrap()), subnet_of(&ia));
    assert_eq!(last_octet(c.ip.as_deref().unwrap()), 3);
}

/// What a create killed half-way (26–34 ms into a run) leaves: its staging
/// directory, with a record holding an address.
fn leave_staging(d: &LocalDriver, name: &str, ip_of: &str) {
    let staged = d.world_dir().join("machines").join(format!(".new-{name}-0badf00d"));
    std::fs::create_dir_all(staged.join("containers")).unwrap();
    let ip = format!("{}.{}", ip_of.rsplit_once('.').unwrap().0, 2);
    let record = serde_json::json!({
        "name": name, "cluster": "tiny", "role": "master", "state": "creating", "ip": ip,
        "created": "2026-01-01T00:00:00.000Z", "created_ms": 1, "ledger_base": 0
    });
    std::fs::write(staged.join("machine.json"), record.to_string()).unwrap();
}

fn dot_entries(d: &LocalDriver) -> Vec<String> {
    std::fs::read_dir(d.world_dir().join("machines"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with('.'))
        .collect()
}

#[tokio::test]
async fn a_create_cut_short_is_seen_half_made_then_cleaned_and_its_address_reused() {
    let tmp = tempfile::tempdir().unwrap();
    let d = driver(tmp.path(), LocalConfig::default());
    let r = d.create(&spec("rancher", "tiny")).await.unwrap();
    leave_staging(&d, "master01", r.ip.as_deref().unwrap());

    // Seen, not absent: inspect and list (status --refresh) report it.
    let m = d.inspect("master01").await.unwrap().expect("the half-made machine is seen");
    assert!(matches!(&m.state, MachineState::Error(why) if why.contains("cut short")), "{m:?}");
    let listed: Vec<String> = d.list("tiny").await.unwrap().into_iter().map(|m| m.name).collect();
    assert_eq!(listed, ["master01", "rancher"]);

    // The next create cleans it and its address (.2) is given again.
    let w = d.create(&spec("worker01", "tiny")).await.unwrap();
    assert_eq!(last_octet(w.ip.as_deref().unwrap()), 2);
    assert!(dot_entries(&d).is_empty(), "{:?}", dot_entries(&d));
    assert_eq!(d.inspect("master01").await.unwrap(), None);

    // A remove cut short after its rename is a machine gone, not half-made.
    std::fs::create_dir_all(d.world_dir().join("machines/.gone-master03-0badf00d")).unwrap();
    assert_eq!(d.inspect("master03").await.unwrap(), None);

    // And remove (what down calls) cleans one too.
    leave_staging(&d, "master02", r.ip.as_deref().unwrap());
    d.remove("master02").await.unwrap();
    d.remove("master03").await.unwrap();
    assert!(dot_entries(&d).is_empty(), "{:?}", dot_entries(&d));
}

#[tokio::test]
async fn a_create_counted_in_the_ledger_is_running_even_if_its_record_still_says_creating() {
    let tmp = tempfile::tempdir().unwrap();
    let d = driver(tmp.path(), LocalConfig::default());
    let m = d.create(&spec("master01", "tiny")).await.unwrap();
    // The state a kill right after the ledger's write leaves: the record
    // still `creating`, the ledger counting this create.
    let path = d.machine_dir("master01").join("machine.json");
    let mut record: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(record["ledger_base"], 0);
    record["state"] = "creating".into();
    std::fs::write(&path, record.to_string()).unwrap();
    let seen = d.inspect("master01").await.unwrap().unwrap();
    assert_eq!(seen.state, MachineState::Running);
    assert_eq!(seen.ip, m.ip);
    // Before the ledger's write it is creating.
    std::fs::write(d.world_dir().join("created.json"), b"{}").unwrap();
    assert_eq!(d.inspect("master01").await.unwrap().unwrap().state, MachineState::Creating);
}

#[tokio::test]
async fn machine_json_holds_name_cluster_role_state_ip_and_time() {
    let tmp = tempfile::tempdir().unwrap();
    let d = driver(tmp.path(), LocalConfig::default());
    let m = d.create(&MachineSpec { name: "worker02".into(), cluster: "c".into(), role: Role::Worker }).await.unwrap();
    let j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.machine_dir("worker02").join("machine.json")).unwrap()).unwrap();
    assert_eq!(j["name"], "worker02");
    assert_eq!(j["cluster"], "c");
    assert_eq!(j["role"], "worker");
    assert_eq!(j["state"], "running");
    assert_eq!(j["ip"].as_str(), m.ip.as_deref());
    assert!(j["created"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn creating_an_existing_name_fails_permanently_with_docker_machines_message() {
    let tmp = tempfile::tempdir().unwrap();
    let d = driver(tmp.path(), LocalConfig::default());
    d.create(&spec("master01", "tiny")).await.unwrap();
    let e = d.create(&spec("master01", "other")).await.unwrap_err();
    assert_eq!(e, DriverError::Permanent("Host already exists: \"master01\"".into()));
}

#[tokio::test]
async fn bad_names_are_refused_and_never_touch_the_filesystem() {
    let tmp = tempfile::tempdir().unwrap();
    let d = driver(tmp.path(), LocalConfig::default());
    for bad in ["", "../x", "a/b", ".hidden", "-x", "a b"] {
        assert!(matches!(d.create(&spec(bad, "c")).await, Err(DriverError::Permanent(_))), "{bad:?}");
        assert_eq!(d.inspect(bad).await.unwrap(), None);
        d.remove(bad).await.unwrap();
    }
    assert!(valid_name("master01") && valid_name("a.b-c") && valid_name("9"));
}

#[tokio::test]
async fn inspect_list_and_remove() {
    let tmp = tempfile::tempdir().unwrap();
    let d = driver(tmp.path(), LocalConfig::default());
    assert_eq!(d.inspect("rancher").await.unwrap(), None);
    assert!(d.list("tiny").await.unwrap().is_empty());
    for (n, c) in [("worker01", "tiny"), ("master01", "tiny"), ("rancher", "tiny"), ("stranger", "other")] {
        d.create(&spec(n, c)).await.unwrap();
    }
    let names: Vec<String> = d.list("tiny").await.unwrap().into_iter().map(|m| m.name).collect();
    assert_eq!(names, ["master01", "rancher", "worker01"]);
    assert_eq!(d.list("other").await.unwrap().len(), 1);
    assert_eq!(d.inspect("master01").await.unwrap().unwrap().state, MachineState::Running);

    d.remove("master01").await.unwrap();
    d.remove("master01").await.unwrap(); // idempotent
    assert_eq!(d.inspect("master01").await.unwrap(), None);
    assert!(!d.machine_dir("master01").exists());
    assert_eq!(d.list("tiny").await.unwrap().len(), 2);
    // No leftovers of the rename-away.
    let leftovers: Vec<_> = std::fs::read_dir(d.world_dir().join("machines"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test]
async fn a_half_made_machine_shows_as_error() {
    let tmp = tempfile::tempdir().unwrap();
    let d = driver(tmp.path(), LocalConfig::default());
    std::fs::create_dir_all(d.machine_dir("master02")).unwrap();
    let m = d.inspect("master02").await.unwrap().unwrap();
    assert!(matches!(m.state, MachineState::Error(_)), "{m:?}");
    assert_eq!((m.cluster, m.ip), (None, None));
    std::fs::write(d.machine_dir("master02").join("machine.json"), b"{").unwrap();
    assert!(matches!(d.inspect("master02").await.unwrap().unwrap().state, MachineState::Error(_)));
    d.remove("master02").await.unwrap();
    assert_eq!(d.inspect("master02").await.unwrap(), None);
}

#[tokio::test]
async fn a_machine_is_creating_while_the_create_sleeps() {
    let tmp = tempfile::tempdir().unwrap();
    let d = driver(tmp.path(), LocalConfig { create_delay: Duration::from_millis(300), ..Default::default() });
    let s = spec("master03", "tiny");
    let (created, seen) = tokio::join!(d.create(&s), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        d.inspect("master03").await.unwrap().unwrap()
    });
    assert_eq!(seen.state, MachineState::Creating);
    assert_eq!(seen.ip, None);
    assert_eq!(created.unwrap().state, MachineState::Running);
}

#[tokio::test]
async fn injected_create_failures_are_counted_in_the_world_and_leave_an_error_machine() {
    let tmp = tempfile::tempdir().unwrap();
    let config = LocalConfig { fail_create: parse_fail_create("master01:2, worker01:1"), ..Default::default() };
    let d = driver(tmp.path(), config.clone());

    let e = d.create(&spec("master01", "tiny")).await.unwrap_err();
    assert!(e.is_retryable(), "{e:?}");
    let m = d.inspect("master01").await.unwrap().unwrap();
    assert!(matches!(m.state, MachineState::Error(_)), "{m:?}");
    assert_eq!(m.ip, None);
    // Like docker-machine: the broken machine must be removed first.
    assert!(matches!(d.create(&spec("master01", "tiny")).await, Err(DriverError::Permanent(_))));
    d.remove("master01").await.unwrap();

    // A new process (driver) continues the count: one failure left.
    let d2 = driver(tmp.path(), config.clone());
    assert!(d2.create(&spec("master01", "tiny")).await.unwrap_err().is_retryable());
    d2.remove("master01").await.unwrap();
    assert_eq!(d2.create(&spec("master01", "tiny")).await.unwrap().state, MachineState::Running);

    // Other names are unaffected; worker01 fails once.
    d2.create(&spec("master02", "tiny")).await.unwrap();
    assert!(d2.create(&spec("worker01", "tiny")).await.is_err());
    d2.remove("worker01").await.unwrap();
    d2.create(&spec("worker01", "tiny")).await.unwrap();
}

#[test]
fn fail_create_spec_parses_lists_and_skips_nonsense() {
    assert_eq!(
        parse_fail_create("master01:2,worker03:1"),
        vec![("master01".to_string(), 2), ("worker03".to_string(), 1)]
    );
    assert_eq!(parse_fail_create("rancher"), vec![("rancher".to_string(), 1)]);
    assert_eq!(parse_fail_create(" a:x , ,b:3,../c:1"), vec![("b".to_string(), 3)]);
    assert!(parse_fail_create("").is_empty());
}

// ---------------------------------------------------------------- exec

#[tokio::test]
async fn exec_needs_a_running_machine_and_knows_few_commands() {
    let tmp = tempfile::tempdir().unwrap();
    let d = driver(tmp.path(), LocalConfig::default());
    assert_eq!(
        d.exec("nope", "docker ps").await.unwrap_err(),
        DriverError::Permanent("Host does not exist: \"nope\"".into())
    );
    d.create(&spec("m", "c")).await.unwrap();
    let o = d.exec("m", "ls -l /").await.unwrap();
    assert_eq!((o.status, o.stderr.as_str()), (127, "bash: ls: command not found\n"));
    let o = d.exec("m", "PASSWORD=hunter2hunter2 ls").await.unwrap();
    assert_eq!(o.status, 127);
    assert!(!o.stderr.contains("hunter2"));
    let o = d.exec("m", "echo 'unbalanced").await.unwrap();
    assert_eq!(o.status, 2);
    let o = d.exec("m", "sudo docker ps -q").await.unwrap();
    assert_eq!((o.status, o.stdout.as_str()), (0, ""));
    let o = d.exec("m", "docker ps --bogus").await.unwrap();
    assert_eq!(o.status, 125);
    let o = d.exec("m", "docker pull x").await.unwrap();
    assert_eq!(o.status, 127);
    let o = d.exec("m", "docker run -d busybox").await.unwrap();
    assert_eq!(o.status, 125);
}

#[test]
fn docker_run_of_rancher_parses_and_hides_the_password() {
    let s = parse_run(&words(
        "-d --privileged --restart=unless-stopped -p 80:80 -p 443:443 -v /opt/rancher:/var/lib/rancher \
         --name rancher -e CATTLE_BOOTSTRAP_PASSWORD='s3cret pw' --env=A=1 -eB=2 rancher/rancher:v2.9.2",
    ))
    .unwrap();
    assert!(s.detach && s.privileged);
    assert_eq!(s.name.as_deref(), Some("rancher"));
    assert_eq!(
        s.env,
        vec![
            ("CATTLE_BOOTSTRAP_PASSWORD".to_string(), "s3cret pw".to_string()),
            ("A".to_string(), "1".to_string()),
            ("B".to_string(), "2".to_string())
        ]
    );
    assert_eq!(s.image, "rancher/rancher:v2.9.2");
    assert!(s.args.is_empty());
    assert!(!format!("{s:?}").contains("s3cret"));

    let s = parse_run(&words("-dit --rm alpine sh -c 'echo hi'")).unwrap();
    assert!(s.detach && !s.privileged);
    assert_eq!((s.image.as_str(), s.args.len()), ("alpine", 3));
    assert!(parse_run(&words("-d")).is_err());
    assert!(parse_run(&words("--frobnicate x img")).is_err());
    assert!(parse_run(&words("--name")).is_err());
    assert!(parse_run(&words("-é img")).is_err());
    let s = parse_run(&words("-d -- rancher/rancher --x")).unwrap();
    assert_eq!((s.image.as_str(), s.args.len()), ("rancher/rancher", 1));
}

#[test]
fn image_references_follow_dockers_grammar() {
    for ok in ["rancher/rancher", "rancher/rancher:v2.11.3", "registry.example.com:5000/rancher/rancher:v2.9.2", "localhost/r/x", "rancher/rancher@sha256:abcdef0123"] {
        assert!(docker::valid_reference(ok), "{ok}");
    }
    for bad in ["rancher/rancher:v2.11.3; touch x", "rancher/rancher:v2 --privileged", "Rancher/rancher", "rancher/rancher:$(id)", "", "rancher//x", "rancher/rancher:"] {
        assert!(!docker::valid_reference(bad), "{bad}");
    }
    let e = docker::parse_run(&words("-d --name rancher 'rancher/rancher:v2.11.3 $(id)'")).unwrap_err();
    assert_eq!(e, "invalid reference format.");
}

#[test]
fn images_are_recognised_with_tags_registries_and_digests() {
    assert_eq!(image_kind("rancher/rancher"), Some(Kind::Server));
    assert_eq!(image_kind("rancher/rancher:v2.6.14"), Some(Kind::Server));
    assert_eq!(image_kind("docker.io/rancher/rancher:latest"), Some(Kind::Server));
    assert_eq!(image_kind("registry:5000/rancher/rancher-agent:v2.9.2"), Some(Kind::Agent));
    assert_eq!(image_kind("rancher/rancher-agent@sha256:abc"), Some(Kind::Agent));
    assert_eq!(image_kind("notrancher/rancher"), None);
    assert_eq!(image_kind("rancher/rancher-webhook:v1"), None);
}

#[test]
fn name_filters_behave_like_dockers_common_forms() {
    assert!(name_filter_matches("rancher", "rancher"));
    assert!(name_filter_matches("ranch", "rancher"));
    assert!(name_filter_matches("^rancher$", "rancher"));
    assert!(!name_filter_matches("^rancher$", "rancher-agent-1"));
    assert!(name_filter_matches("^/rancher$", "rancher"));
    assert!(name_filter_matches("^rancher", "rancher-agent-1"));
    assert!(name_filter_matches("agent-1$", "rancher-agent-1"));
    assert!(!name_filter_matches("other", "rancher"));
}

#[test]
fn agent_flags_follow_run_sh() {
    let cmd = "sudo docker run -d --privileged --restart=unless-stopped --net=host -v /etc/kubernetes:/etc/kubernetes \
               -v /var/run:/var/run  rancher/rancher-agent:v2.6.14 --server https://127.1.2.1:8443 --token tok123 \
               --ca-checksum abc --address 127.1.2.2 --internal-address 127.1.2.2 --etcd --controlplane";
    let w = words(cmd);
    let s = parse_run(&w[3..]).unwrap();
    assert_eq!(image_kind(&s.image), Some(Kind::Agent));
    let f = agent::parse(&s.args);
    assert_eq!(f.server.as_deref(), Some("https://127.1.2.1:8443"));
    assert_eq!(f.token.as_ref().map(|t| t.expose()), Some("tok123"));
    assert_eq!(f.ca_checksum.as_deref(), Some("abc"));
    assert_eq!((f.address.as_deref(), f.internal_address.as_deref()), (Some("127.1.2.2"), Some("127.1.2.2")));
    assert_eq!(f.roles(), ["etcd", "controlplane"]);
    assert!(!format!("{f:?}").contains("tok123"));

    // -a is all roles, not --address; parsing stops at an unknown argument.
    let f = agent::parse(&words("-s https://x -t t -a -n node7 --bogus --worker"));
    assert_eq!(f.roles(), ["etcd", "controlplane", "worker"]);
    assert_eq!(f.node_name.as_deref(), Some("node7"));
    let f = agent::parse(&words("-p -w --label a=b -l c=d --address 10.0.0.1 --oops -e"));
    assert_eq!(f.roles(), ["controlplane", "worker"]);
    assert_eq!(f.labels, ["a=b", "c=d"]);
    assert_eq!(f.address.as_deref(), Some("10.0.0.1"));
    assert_eq!(agent::parse(&[]), AgentFlags::default());
}

#[test]
fn tunnel_params_have_the_agents_shape() {
    let f = agent::parse(&words("--worker"));
    assert_eq!(
        agent::tunnel_params(&f, "127.1.2.5", "127.1.2.5", "worker02"),
        json!({"customConfig":{"address":"127.1.2.5","internalAddress":"127.1.2.5","roles":["worker"]},
               "etcd":false,"controlPlane":false,"worker":true,"requestedHostname":"worker02"})
    );
}

// ---------------------------------------------------------------- containers

/// A stand-in for `rmm emulator serve`: records its arguments and
/// environment in its working directory (the machine dir), then sleeps.
fn fake_rmm(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("fake-rmm");
    std::fs::write(&path, "#!/bin/sh\n/usr/bin/env > env.txt\necho \"$@\" > args.txt\nexec /bin/sleep 30\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

async fn wait_for(path: &Path) -> String {
    for _ in 0..200 {
        if let Ok(s) = std::fs::read_to_string(path) {
            if !s.is_empty() {
                return s;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{} never appeared", path.display());
}

#[tokio::test]
async fn docker_run_rancher_starts_a_detached_emulator_that_remove_stops() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = fake_rmm(tmp.path());
    let config =
        LocalConfig { emulator_env: vec![("RMM_LOCAL_RANCHER_BOOT_MS".into(), "1500".into())], ..Default::default() };
    let d = LocalDriver::with_config(tmp.path().join("world"), exe, config);
    let m = d.create(&spec("rancher", "tiny")).await.unwrap();
    let ip = m.ip.unwrap();
    let run = "sudo docker run -d --privileged --restart=unless-stopped -p 80:80 -p 443:443 --name rancher \
               -e CATTLE_BOOTSTRAP_PASSWORD=bootstrap-pw-123 rancher/rancher:v2.9.2";
    let o = d.exec("rancher", run).await.unwrap();
    assert_eq!(o.status, 0, "{o:?}");
    let id = o.stdout.trim().to_string();
    assert!(id.len() == 64 && id.chars().all(|c| c.is_ascii_hexdigit()), "{id}");

    let dir = d.machine_dir("rancher");
    let args = wait_for(&dir.join("args.txt")).await;
    // The container is the supervisor, which runs `emulator serve` under the
    // restart policy.
    assert_eq!(
        args.trim(),
        format!(
            // the emulated line follows the image tag (v2.9.2 → 2.9)
            "emulator supervise --container {} --restart unless-stopped -- --data-dir {} --listen {ip}:8443 --rancher-version 2.9",
            dir.join("containers").join(format!("{id}.json")).display(),
            dir.join("rancher").display()
        )
    );
    let env = wait_for(&dir.join("env.txt")).await;
    assert!(env.contains("CATTLE_BOOTSTRAP_PASSWORD=bootstrap-pw-123"));
    assert!(env.contains("RMM_LOCAL_RANCHER_BOOT_MS=1500"));
    assert!(!env.contains("CARGO"), "the caller's environment is not inherited");

    // The password is nowhere on disk but in that process's environment
    // (env.txt above is the fake's own doing).
    for entry in std::fs::read_dir(dir.join("containers")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap_or_default();
        assert!(!text.contains("bootstrap-pw-123"));
    }

    let o = d.exec("rancher", "docker ps -q --filter name=^rancher$").await.unwrap();
    assert_eq!(o.stdout, format!("{}\n", &id[..12]));
    let o = d.exec("rancher", "docker ps -q --no-trunc").await.unwrap();
    assert_eq!(o.stdout, format!("{id}\n"));
    let o = d.exec("rancher", "docker ps -q --filter name=other").await.unwrap();
    assert_eq!(o.stdout, "");

    let o = d.exec("rancher", run).await.unwrap();
    assert_eq!(o.status, 125);
    assert!(o
        .stderr
        .contains(&format!("Conflict. The container name \"/rancher\" is already in use by container \"{id}\"")));
    assert!(!o.stderr.contains("bootstrap-pw-123"));
    let o = d
        .exec("rancher", "docker run -d --privileged --name rancher2 -e CATTLE_BOOTSTRAP_PASSWORD=x rancher/rancher")
        .await
        .unwrap();
    assert_eq!(o.status, 125, "one server per machine (the port is taken)");

    let record: docker::Container =
        serde_json::from_slice(&std::fs::read(dir.join("containers").join(format!("{id}.json"))).unwrap()).unwrap();
    let pid = record.pid.unwrap();
    assert!(docker::process_alive(pid, record.pid_start));
    d.remove("rancher").await.unwrap();
    assert!(!docker::process_alive(pid, record.pid_start));
    assert!(!dir.exists());
}

#[tokio::test]
async fn rancher_without_privileged_exits_at_once_like_the_real_image() {
    let tmp = tempfile::tempdir().unwrap();
    let d = LocalDriver::with_config(tmp.path().join("world"), fake_rmm(tmp.path()), LocalConfig::default());
    d.create(&spec("rancher", "tiny")).await.unwrap();
    let o = d.exec("rancher", "docker run -d --name rancher rancher/rancher:v2.9.2").await.unwrap();
    assert_eq!(o.status, 0);
    let id = o.stdout.trim().to_string();
    assert_eq!(d.exec("rancher", "docker ps -q").await.unwrap().stdout, "");
    let all = d.exec("rancher", "docker ps -a").await.unwrap().stdout;
    assert!(all.contains("Exited (1)") && all.contains(&id[..12]), "{all}");
    let log = std::fs::read_to_string(d.machine_dir("rancher").join("containers").join(format!("{id}.log"))).unwrap();
    assert!(log.contains("--privileged"));
    // The dead container's name can be taken again.
    let o = d.exec("rancher", "docker run -d --privileged --name rancher rancher/rancher:v2.9.2").await.unwrap();
    assert_eq!(o.status, 0, "{o:?}");
    d.remove("rancher").await.unwrap();
}

// ---------------------------------------------------------------- agent

type Seen = Arc<Mutex<Vec<HeaderMap>>>;

async fn fake_rancher(seen: Seen, register_status: u16) -> (String, String) {
    let cacerts: Arc<Mutex<String>> = Arc::default();
    let c2 = cacerts.clone();
    let router = axum::Router::new()
        .route("/ping", get(|| async { "pong" }))
        .route(
            "/v3/settings/cacerts",
            get(move || {
                let c = c2.lock().unwrap().clone();
                async move { axum::Json(json!({"type":"setting","id":"cacerts","value":c})) }
            }),
        )
        .route(
            "/v3/connect/register",
            post(move |h: HeaderMap| async move {
                seen.lock().unwrap().push(h);
                let status = axum::http::StatusCode::from_u16(register_status).unwrap();
                (
                    status,
                    axum::Json(
                        json!({"type":"error","status":register_status,"code":"Unauthorized","message":"bad token"}),
                    ),
                )
            }),
        );
    let (url, ca) = crate::rancher::testing::serve(router).await;
    *cacerts.lock().unwrap() = ca.clone();
    (url, ca)
}

#[tokio::test]
async fn the_agent_checks_the_ca_and_registers_with_the_tunnel_headers() {
    let seen: Seen = Arc::default();
    let (url, ca) = fake_rancher(seen.clone(), 200).await;
    let tmp = tempfile::tempdir().unwrap();
    let d = driver(tmp.path(), LocalConfig::default());
    let m = d.create(&spec("master01", "tiny")).await.unwrap();
    let ip = m.ip.unwrap();
    let cmd = format!(
        "sudo docker run -d --privileged --restart=unless-stopped --net=host -v /etc/kubernetes:/etc/kubernetes \
         -v /var/run:/var/run  rancher/rancher-agent:v2.9.2 --server {url} --token regtoken123 --ca-checksum {} \
         --address {ip} --internal-address {ip} --etcd --controlplane",
        ca_checksum(&ca)
    );
    let o = d.exec("master01", &cmd).await.unwrap();
    assert_eq!(o.status, 0, "{o:?}");
    let id = o.stdout.trim().to_string();
    assert_eq!(id.len(), 64);

    let headers = seen.lock().unwrap().pop().unwrap();
    assert_eq!(headers["x-api-tunnel-token"], "regtoken123");
    let params =
        base64::engine::general_purpose::STANDARD.decode(headers["x-api-tunnel-params"].to_str().unwrap()).unwrap();
    let params: serde_json::Value = serde_json::from_slice(&params).unwrap();
    assert_eq!(
        params,
        json!({"customConfig":{"address":ip,"internalAddress":ip,"roles":["etcd","controlplane"]},
               "etcd":true,"controlPlane":true,"worker":false,"requestedHostname":"master01"})
    );
    // The agent's container runs, and its record holds no token.
    assert_eq!(d.exec("master01", "docker ps -q").await.unwrap().stdout, format!("{}\n", &id[..12]));
    let rec = std::fs::read_to_string(d.machine_dir("master01").join("containers").join(format!("{id}.json"))).unwrap();
    assert!(!rec.contains("regtoken123"));
}

#[tokio::test]
async fn the_agent_refuses_a_wrong_checksum_and_reports_a_refused_registration() {
    let seen: Seen = Arc::default();
    let (url, ca) = fake_rancher(seen.clone(), 401).await;
    let tmp = tempfile::tempdir().unwrap();
    let d = driver(tmp.path(), LocalConfig::default());
    d.create(&spec("worker01", "tiny")).await.unwrap();

    let wrong = "0".repeat(64);
    let o = d
        .exec("worker01", &format!("docker run -d rancher/rancher-agent:v2.9.2 --server {url} --token t0ken --ca-checksum {wrong} --worker"))
        .await
        .unwrap();
    assert_eq!(o.status, 1);
    assert!(
        o.stderr.contains(&format!(
            "Configured cacerts checksum ({}) does not match given --ca-checksum ({wrong})",
            ca_checksum(&ca)
        )),
        "{}",
        o.stderr
    );
    assert!(seen.lock().unwrap().is_empty(), "nothing registered");

    let o = d
        .exec(
            "worker01",
            &format!(
                "docker run -d rancher/rancher-agent:v2.9.2 --server {url} --token t0ken --ca-checksum {} --worker",
                ca_checksum(&ca)
            ),
        )
        .await
        .unwrap();
    assert_eq!(o.status, 1);
    assert!(o.stderr.contains("401") && o.stderr.contains("bad token"), "{}", o.stderr);
    assert!(!o.stderr.contains("t0ken"));
    assert_eq!(seen.lock().unwrap().len(), 1);
    assert_eq!(d.exec("worker01", "docker ps -qa").await.unwrap().stdout, "", "a failed agent leaves no container");

    let o = d
        .exec(
            "worker01",
            "docker run -d rancher/rancher-agent:v2.9.2 --server https://127.0.0.1:1 --token t --ca-checksum x",
        )
        .await
        .unwrap();
    assert_eq!(o.status, 1);
    assert!(o.stderr.contains("/ping is not accessible"), "{}", o.stderr);
}

/// The world lives in rmm's state dir: its files are owner-only from the
/// start and its temp files are made with `O_EXCL | O_NOFOLLOW`.
#[test]
fn world_files_are_owner_only_and_never_follow_a_symlink() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("machine.json");
    write_atomic(&path, b"{}").unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "untouched").unwrap();
    std::os::unix::fs::symlink(&victim, dir.path().join(".lock")).unwrap();
    assert!(open_lock_file(&dir.path().join(".lock")).is_err(), "a symlinked lock is refused");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
}
