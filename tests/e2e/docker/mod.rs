//! `--driver docker` on the real Docker Engine of this machine, with test
//! images built here ([`images`]): no image can be pulled, and the runtime
//! refuses `--privileged`, so the tests set `privileged = false` (the real
//! images need it: README). Skipped with SKIPPED and the reason when no
//! engine answers, except under CI=true, where they fail.
//!
//! Every test has its own cluster name; [`Cleanup`] removes whatever
//! carries that cluster's label (containers, volumes, networks) and the
//! test's images when the test ends, failed or not.

mod images;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::Value;

use crate::support::{text, TestDir};

/// A number unique within this test process.
pub fn unique() -> u32 {
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

/// Whether an engine answers (`docker version`); else SKIPPED (or a
/// failure under CI=true).
fn engine_answers(test: &str) -> bool {
    let out = Command::new("docker").args(["version", "--format", "{{.Server.Version}}"]).output();
    let why = match out {
        Ok(o) if o.status.success() => return true,
        Ok(o) => format!("no Docker Engine answers: {}", text(&o.stderr).trim()),
        Err(e) => format!("the docker CLI cannot run: {e}"),
    };
    let what = format!("{test} needs a Docker Engine: {why} — install and start it: `apt-get install -y docker.io && (systemctl start docker || dockerd &)`");
    if crate::support::under_ci() {
        panic!("{what} (CI=true: .ci/run starts the engine)");
    }
    println!("SKIPPED: {what}");
    false
}

/// `docker ARGS` → stdout (must succeed).
fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("docker");
    assert!(out.status.success(), "docker {args:?}: {}", text(&out.stderr));
    text(&out.stdout)
}

/// The ids of the cluster's objects of one kind (`container`, `volume`,
/// `network`), found by label through the engine.
fn labelled(kind: &str, cluster: &str) -> Vec<String> {
    let filter = format!("label=io.rmm.cluster={cluster}");
    let args: Vec<&str> = match kind {
        "container" => vec!["ps", "-aq", "--filter", &filter],
        "volume" => vec!["volume", "ls", "-q", "--filter", &filter],
        _ => vec!["network", "ls", "-q", "--filter", &filter],
    };
    docker(&args).lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect()
}

/// Removes every object labelled with the cluster when dropped.
struct Cleanup {
    cluster: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let quiet = |args: &[&str]| {
            let _ = Command::new("docker").args(args).stdout(Stdio::null()).stderr(Stdio::null()).status();
        };
        for kind in ["container", "volume", "network"] {
            let ids = std::panic::catch_unwind(|| labelled(kind, &self.cluster)).unwrap_or_default();
            for id in ids {
                match kind {
                    "container" => quiet(&["rm", "-fv", &id]),
                    "volume" => quiet(&["volume", "rm", "-f", &id]),
                    _ => quiet(&["network", "rm", &id]),
                }
            }
        }
    }
}

/// A test's world: its dir, cluster, images and cleanup (dropped in
/// reverse: the cluster's objects, then the images).
struct World {
    t: TestDir,
    cluster: String,
    _cleanup: Cleanup,
    _images: images::TestImages,
    node_image: String,
}

impl World {
    fn new(test: &str) -> Option<World> {
        if !engine_answers(test) {
            return None;
        }
        let images = images::build("2.15");
        let cluster = format!("dk{}-{}", std::process::id(), unique());
        let t = TestDir::new();
        let config = format!(
            "driver = \"docker\"\ndistribution = \"rke2\"\nrancher_image = \"{}\"\ncluster_name = \"{cluster}\"\npoll_ms = 100\n\n[timeouts]\nrancher_ready_s = 60\nnode_command_s = 60\nnode_listed_s = 60\nactive_s = 120\nmachine_create_s = 60\n\n[docker]\nnode_image = \"{}\"\nprivileged = false\n",
            images.rancher, images.node
        );
        std::fs::write(t.tmp.path().join("rmm.toml"), config).unwrap();
        Some(World { t, node_image: images.node.clone(), _cleanup: Cleanup { cluster: cluster.clone() }, cluster, _images: images })
    }

    /// The container's address on the cluster network.
    fn ip_of(&self, container: &str) -> String {
        docker(&["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", container]).trim().to_string()
    }

    /// GET `path` from the emulator through the published port, as admin.
    fn ask(&self, paths: &[&str]) -> Vec<Value> {
        // the admin session of support.rs, over the CA pinned in the log
        let admin = crate::support::Admin::login(&self.t);
        paths.iter().map(|p| admin.get(p)).collect()
    }
}

#[test]
fn docker_up_makes_rancher_and_six_nodes_as_containers_that_register_from_their_own_addresses_and_down_leaves_nothing() {
    let Some(w) = World::new("the docker driver's full up") else { return };
    let up = w.t.up_ok(&[]);
    let out = text(&up.stdout);
    assert!(out.contains("rmm kubeconfig"), "{out}");

    // 1 + 3 + 3 containers, labelled, on one network.
    let containers = labelled("container", &w.cluster);
    assert_eq!(containers.len(), 7, "{containers:?}");
    let server = format!("rmm-{}-rancher", w.cluster);
    let rancher_ip = w.ip_of(&server);
    let creds = w.t.credentials();
    let url = creds["url"].as_str().unwrap();
    assert!(url.starts_with("https://127.0.0.1:"), "rmm reaches Rancher through the published port: {url}");
    let status = w.t.status();
    assert_eq!(status["rancher"]["url"], format!("https://{rancher_ip}"), "the server-url is the container's address on the cluster network");
    // `up` ends naming where you reach it, as `credentials` does, and the
    // server-url beside it.
    assert!(out.contains(&format!("Rancher: {url} (server-url https://{rancher_ip}: what the nodes use)")), "{out}");

    // The CA rmm pinned is the one the server keeps (read inside its
    // container, as the driver reads it), not merely what it served.
    let b64 = docker(&["exec", &server, "kubectl", "-n", "cattle-system", "get", "secret", "tls-rancher", "-o", "jsonpath={.data.tls\\.crt}"]);
    let pem = {
        use base64::Engine as _;
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64.trim()).unwrap()).unwrap()
    };
    assert_eq!(creds["ca_checksum"].as_str().unwrap(), rmm_actors::ports::ca_checksum(pem.trim()), "the pinned CA is the server's own");

    // The bootstrap password is nowhere in the server's configuration.
    let inspect = docker(&["inspect", &server]);
    assert!(!inspect.contains("CATTLE_BOOTSTRAP_PASSWORD="), "the password reached docker inspect");
    let events = w.t.events();
    let secrets: Value = serde_json::from_str(&std::fs::read_to_string(w.t.state().join("secrets.json")).unwrap()).unwrap();
    // Every secret of the run, and the registration token inside the node
    // command, in no container's configuration (`docker inspect`).
    let mut values: Vec<String> = secrets.as_object().unwrap().values().filter_map(Value::as_str).filter(|v| v.len() >= 12).map(String::from).collect();
    let tokens: Vec<String> = values
        .iter()
        .filter_map(|v| v.split_whitespace().skip_while(|w| *w != "--token").nth(1).map(String::from))
        .collect();
    assert!(!tokens.is_empty(), "the node command is among the run's secrets");
    values.extend(tokens);
    let mut inspect_all = vec!["inspect"];
    inspect_all.extend(containers.iter().map(String::as_str));
    let all = docker(&inspect_all);
    for v in &values {
        assert!(!all.contains(v.as_str()), "a secret of the run is in docker inspect of a container");
    }
    assert!(!events.is_empty());
    // Both URLs on record: the server-url on the cluster network, and the
    // published one rmm reaches it at.
    let set = events.iter().find(|e| e["kind"] == "StepStarted" && e["data"]["step"] == "set_server_url").expect("set_server_url's intent");
    let detail = set["data"]["detail"].as_str().unwrap();
    assert!(detail.starts_with(&format!("https://{rancher_ip} ")) && detail.contains(&format!("published at {url}")), "{detail}");

    // The emulator, asked through its /v1 API: the cluster ready, six
    // machines Running, each registered from its own container address.
    let answers = w.ask(&["/v1/provisioning.cattle.io.clusters", "/v1/cluster.x-k8s.io.machines/fleet-default"]);
    let clusters = answers[0]["data"].as_array().unwrap();
    let cluster = clusters.iter().find(|c| c["metadata"]["name"] == w.cluster.as_str()).expect("the cluster");
    assert_eq!(cluster["status"]["ready"], true, "{cluster}");
    let machines = answers[1]["data"].as_array().unwrap();
    assert_eq!(machines.len(), 6, "{machines:?}");
    let mut seen = std::collections::BTreeSet::new();
    for m in machines {
        assert_eq!(m["status"]["phase"], "Running", "{m}");
        let node = m["metadata"]["labels"]["rke.cattle.io/node-name"].as_str().unwrap().to_string();
        let ip = w.ip_of(&format!("rmm-{}-{node}", w.cluster));
        let from = m["metadata"]["annotations"]["emulator.rmm.io/registered-from"].as_str().unwrap_or("");
        assert_eq!(from, ip, "{node} registered from its own container's address");
        assert!(!ip.starts_with("127."), "{node}: {ip}");
        assert_ne!(ip, rancher_ip);
        let addresses = m["status"]["addresses"].to_string();
        assert!(addresses.contains(&ip), "{node}: --address is the container's: {addresses}");
        seen.insert(ip);
    }
    assert_eq!(seen.len(), 6, "six distinct addresses: {seen:?}");
    for role in ["master01", "worker03"] {
        let c = format!("rmm-{}-{role}", w.cluster);
        assert_eq!(docker(&["inspect", "-f", "{{.Config.Hostname}} {{.Config.Image}} {{.HostConfig.Privileged}}", &c]).trim(), format!("{role} {} false", w.node_image));
    }

    // down: nothing with our labels is left, as the engine sees it.
    w.t.rmm(&["down", "--yes"]).ok();
    for kind in ["container", "volume", "network"] {
        assert_eq!(labelled(kind, &w.cluster), Vec::<String>::new(), "{kind}s left behind by down");
    }
}

/// SIGKILLs `child` once its log holds `events` events, unless it ends
/// first; `true` if killed.
fn kill_after_events(mut child: std::process::Child, t: &TestDir, events: usize) -> bool {
    loop {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if t.events_while_running().len() >= events {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

impl World {
    /// Six machines in Rancher, one per node name; the cluster ready; one
    /// container per machine.
    fn check_made_once(&self, what: &str) {
        // Ready, or ready again within a deadline: right after a resume
        // that made the Rancher container again, the emulator was seen
        // (once, in CI under load) to show the cluster not ready for a
        // moment. Not diagnosed; see the session note. A cluster that never
        // comes back still fails here.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let answers = loop {
            let answers = self.ask(&["/v1/provisioning.cattle.io.clusters", "/v1/cluster.x-k8s.io.machines/fleet-default"]);
            let ready = answers[0]["data"].as_array().is_some_and(|c| c.len() == 1 && c[0]["status"]["ready"] == true);
            if ready || std::time::Instant::now() >= deadline {
                break answers;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        };
        let clusters = answers[0]["data"].as_array().unwrap();
        assert_eq!(clusters.len(), 1, "{what}: one v1 cluster");
        assert_eq!(clusters[0]["status"]["ready"], true, "{what}: {}", clusters[0]["status"]);
        let mut nodes: Vec<String> = answers[1]["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["metadata"]["labels"]["rke.cattle.io/node-name"].as_str().unwrap().to_string())
            .collect();
        nodes.sort();
        assert_eq!(nodes, ["master01", "master02", "master03", "worker01", "worker02", "worker03"], "{what}: each node registered once");
        assert_eq!(labelled("container", &self.cluster).len(), 7, "{what}: one container per machine");
        assert_eq!(labelled("network", &self.cluster).len(), 1, "{what}: one network");
    }
}

#[test]
fn docker_sigkill_at_a_seeded_moment_and_the_rancher_container_removed_then_resume_recovers_from_the_volume() {
    for seed in crate::support::seeds("RMM_DOCKER_KILL_SEED", &[21]) {
        use rand::{Rng, SeedableRng};
        eprintln!("docker sigkill seed {seed}");
        let Some(w) = World::new("the docker driver's resume") else { return };
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut cmd = w.t.rmm(&["up"]).cmd;
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        // Mid-run, as the issue asks: after a seeded number of the run's
        // ~130 events (a moment in time could fall after the end).
        let events = rng.gen_range(5..100);
        let killed = kill_after_events(cmd.spawn().unwrap(), &w.t, events);
        assert!(killed, "seed {seed}: the run ended before its {events}th event: the kill was not mid-run");
        // The Rancher server's container removed behind rmm's back (its
        // volume stays): the resume makes it again, and Rancher comes back
        // with its state (admin password, cluster, machines) from the volume.
        let server = format!("rmm-{}-rancher", w.cluster);
        let existed = Command::new("docker").args(["rm", "-f", &server]).output().unwrap().status.success();
        let resumed = w.t.rmm(&["up", "--resume"]).run();
        assert!(resumed.status.success(), "seed {seed} (killed: {killed}): {}", text(&resumed.stderr));
        // Made once, and the admin password set by the first process still
        // logs in (`ask`): Rancher's state came back from the volume.
        w.check_made_once(&format!("seed {seed} (killed: {killed}, server removed: {existed})"));
        let server_state = docker(&["inspect", "-f", "{{.State.Status}}", &server]);
        assert_eq!(server_state.trim(), "running", "seed {seed}: the server container was made again");
        w.t.rmm(&["down", "--yes"]).ok();
        for kind in ["container", "volume", "network"] {
            assert_eq!(labelled(kind, &w.cluster), Vec::<String>::new(), "seed {seed}: {kind}s left behind");
        }
    }
}

#[test]
fn docker_a_container_labelled_with_the_cluster_but_unknown_to_the_log_is_an_orphan_down_leaves_it_unless_orphans() {
    let Some(w) = World::new("the docker driver's orphans") else { return };
    w.t.rmm(&["up", "--masters", "1", "--workers", "1"]).ok();
    let stray = format!("rmm-{}-stray", w.cluster);
    docker(&[
        "run", "-d", "--name", &stray, "--label", &format!("io.rmm.cluster={}", w.cluster), "--label", "io.rmm.machine=stray", &w.node_image,
    ]);
    let status = w.t.status_refresh();
    let orphans: Vec<&str> = status["orphans"].as_array().unwrap().iter().filter_map(|o| o["name"].as_str()).collect();
    assert_eq!(orphans, ["stray"], "{status}");
    assert_eq!(status["rancher"]["server"]["container"], "running", "{}", status["rancher"]);
    assert_eq!(status["rancher"]["server"]["answering"], true, "{}", status["rancher"]);

    let down = w.t.rmm(&["down", "--yes"]).ok();
    assert!(text(&down.stderr).contains("orphans): stray"), "{}", text(&down.stderr));
    let left = labelled("container", &w.cluster);
    assert_eq!(left.len(), 1, "only the orphan is left: {left:?}");
    assert_eq!(docker(&["inspect", "-f", "{{.Name}}", &left[0]]).trim(), format!("/{stray}"));
    assert_eq!(labelled("volume", &w.cluster), Vec::<String>::new());

    w.t.rmm(&["down", "--yes", "--orphans"]).ok();
    for kind in ["container", "volume", "network"] {
        assert_eq!(labelled(kind, &w.cluster), Vec::<String>::new(), "{kind}s left behind by down --orphans");
    }
}

#[test]
fn docker_a_node_killed_before_its_agent_ran_is_started_again_by_the_resume_at_its_address_and_registers_once() {
    let Some(w) = World::new("the docker driver's killed node") else { return };
    // The node command appears 5 s after the cluster: every node container
    // is up well before any agent runs.
    let slow_token = |cmd: crate::support::RmmCmd| cmd.env("RMM_LOCAL_DEFAULT_TOKEN_MS", "5000");
    let mut cmd = slow_token(w.t.rmm(&["up"])).cmd;
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let filter = format!("label=io.rmm.cluster={}", w.cluster);
    loop {
        let running = docker(&["ps", "-q", "--filter", &filter, "--filter", "label=io.rmm.role=worker", "--filter", "status=running"]);
        if running.lines().count() == 3 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the worker containers did not all run within 60 s");
        assert!(child.try_wait().unwrap().is_none(), "up ended before its nodes ran");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let worker = format!("rmm-{}-worker01", w.cluster);
    let ip = w.ip_of(&worker);
    docker(&["kill", &worker]);
    child.kill().unwrap(); // SIGKILL rmm too: the resume finds the node stopped
    child.wait().unwrap();
    assert_eq!(docker(&["inspect", "-f", "{{.State.Status}}", &worker]).trim(), "exited");

    let resumed = slow_token(w.t.rmm(&["up", "--resume"])).run();
    assert!(resumed.status.success(), "{}", text(&resumed.stderr));
    w.check_made_once("a killed node");
    assert_eq!(docker(&["inspect", "-f", "{{.State.Status}}", &worker]).trim(), "running", "started again");
    assert_eq!(w.ip_of(&worker), ip, "at the address it had");
    let machines = w.ask(&["/v1/cluster.x-k8s.io.machines/fleet-default"]);
    let m = machines[0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["metadata"]["labels"]["rke.cattle.io/node-name"] == "worker01")
        .cloned()
        .unwrap();
    assert_eq!(m["metadata"]["annotations"]["emulator.rmm.io/registered-from"], ip.as_str(), "{m}");
    w.t.rmm(&["down", "--yes"]).ok();
}

/// worker01's CAPI machine in the emulator, asked through its API.
fn machine_of(w: &World, node: &str) -> Value {
    let machines = w.ask(&["/v1/cluster.x-k8s.io.machines/fleet-default"]);
    machines[0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["metadata"]["labels"]["rke.cattle.io/node-name"] == node)
        .cloned()
        .unwrap_or_else(|| panic!("no machine of {node}: {}", machines[0]))
}

fn ready_of(m: &Value) -> String {
    m["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").map(|c| c["status"].as_str().unwrap().to_string()).unwrap_or_default()
}

#[test]
fn docker_a_node_killed_after_its_agent_ran_is_started_again_by_the_resume_which_waits_until_rancher_shows_it_back() {
    let Some(w) = World::new("the docker driver's node killed after its agent ran") else { return };
    // A slow planner (3 s a step): the run is far from done when
    // worker01's agent has run, so rmm is killed mid-run (a resume of a
    // completed run is a no-op by contract).
    let mut cmd = w.t.rmm(&["up"]).env("RMM_LOCAL_PLANNER_MS", "3000").cmd;
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    // worker01's run_agent succeeded, as the log says.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let agent_ran = |e: &Value| e["actor"] == "worker01" && e["kind"] == "StepSucceeded" && e["data"]["step"] == "run_agent";
    while !w.t.events_while_running().iter().any(agent_ran) {
        assert!(std::time::Instant::now() < deadline, "worker01's agent did not run within 120 s");
        assert!(child.try_wait().unwrap().is_none(), "up ended before worker01's agent ran");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let worker = format!("rmm-{}-worker01", w.cluster);
    // Its agent's service runs (the node's init started the installed
    // unit, as systemd does at once on a real node): its first check-in
    // is in its log on the node.
    loop {
        let log = Command::new("docker").args(["exec", &worker, "cat", "/tmp/rancher-system-agent.log"]).output().unwrap();
        if text(&log.stdout).contains("Starting remote watch of plans") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "worker01's agent service did not start: {}", text(&log.stderr));
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    docker(&["kill", &worker]);
    // SIGKILL rmm too (left running, its next command on the node would
    // start the container behind the core's back).
    assert!(child.try_wait().unwrap().is_none(), "up ended before it was killed");
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(docker(&["inspect", "-f", "{{.State.Status}}", &worker]).trim(), "exited");
    // Rancher (the emulator) notices the agent went away: its machine is
    // not Ready (polled, after the emulator's 10 s grace, on its own clock).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let m = machine_of(&w, "worker01");
        if ready_of(&m) == "False" && m["status"]["conditions"].to_string().contains("system-agent of node worker01 is not connected") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the emulator never noticed worker01's agent went away: {m}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }

    let resumed = w.t.rmm(&["up", "--resume"]).env("RMM_LOCAL_PLANNER_MS", "3000").run();
    assert!(resumed.status.success(), "{}", text(&resumed.stderr));
    w.check_made_once("a node killed after its agent ran");
    assert_eq!(docker(&["inspect", "-f", "{{.State.Status}}", &worker]).trim(), "running", "started again");
    let ip = w.ip_of(&worker);
    // Back in Rancher: the node's agent came back with the container (its
    // init starts the installed unit, as systemd does), registered once,
    // from its (possibly new) address; the resume waited for that.
    let m = machine_of(&w, "worker01");
    assert_eq!(ready_of(&m), "True", "{m}");
    assert_eq!(m["metadata"]["annotations"]["emulator.rmm.io/registered-from"], ip.as_str(), "{m}");
    // The log records the restart, with the address now; status shows it.
    let events = w.t.events();
    let restarted: Vec<&Value> = events
        .iter()
        .filter(|e| e["actor"] == "worker01" && e["kind"] == "StepSucceeded" && e["data"]["step"] == "check_machine" && e["attempt"] == 2)
        .collect();
    assert_eq!(restarted.len(), 1, "{restarted:?}");
    assert_eq!(restarted[0]["data"]["outcome"]["machine_started_again"]["ip"], ip.as_str(), "{}", restarted[0]);
    // Every other node was found running and adopted.
    for node in ["master01", "master02", "master03", "worker02", "worker03"] {
        assert!(
            events.iter().any(|e| e["actor"] == node && e["attempt"] == 2 && e["data"]["step"] == "check_machine" && e["data"]["outcome"]["machine_up"].is_object()),
            "{node} adopted"
        );
    }
    let status = w.t.status();
    assert!(status.to_string().contains(&ip), "status shows worker01's address: {status}");
    w.t.rmm(&["down", "--yes"]).ok();
}

#[test]
fn docker_a_half_made_node_container_is_removed_and_made_again_and_a_stopped_one_not_of_this_run_is_refused() {
    let Some(w) = World::new("the docker driver's half-made container") else { return };
    // What a create cut by a crash leaves: created with the cluster's
    // labels, never started (no command of ours ran in it).
    let worker = format!("rmm-{}-worker01", w.cluster);
    let labels = [format!("io.rmm.cluster={}", w.cluster), "io.rmm.machine=worker01".into(), "io.rmm.role=worker".into()];
    let mut args = vec!["create".to_string(), "--name".into(), worker.clone()];
    for l in &labels {
        args.extend(["--label".into(), l.clone()]);
    }
    args.push(w.node_image.clone());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let half_made = docker(&args).trim().to_string();
    w.t.rmm(&["up", "--masters", "1", "--workers", "1"]).ok();
    let now = docker(&["inspect", "-f", "{{.Id}} {{.State.Status}}", &worker]);
    let (id, state) = now.trim().split_once(' ').unwrap();
    assert_ne!(id, half_made, "the half-made container was removed and a new one made");
    assert_eq!(state, "running");
    let machines = w.ask(&["/v1/cluster.x-k8s.io.machines/fleet-default"]);
    assert_eq!(machines[0]["data"].as_array().unwrap().len(), 2, "registered once each");
    w.t.rmm(&["down", "--yes"]).ok();

    // A stopped container of that name that this run did not make: the
    // fresh run refuses to take it over, naming it.
    let other = TestDir::new();
    std::fs::copy(w.t.tmp.path().join("rmm.toml"), other.tmp.path().join("rmm.toml")).unwrap();
    let mut run = vec!["run", "-d"];
    run.extend_from_slice(&args[1..]);
    let stopped = docker(&run).trim().to_string();
    docker(&["kill", &stopped]);
    let refused = other.rmm(&["up", "--masters", "1", "--workers", "1"]).run();
    assert!(!refused.status.success());
    let err = text(&refused.stderr);
    assert!(err.contains("worker01") && err.contains("already exists"), "{err}");
    assert_eq!(docker(&["inspect", "-f", "{{.Id}}", &worker]).trim(), stopped, "left alone");
    other.rmm(&["down", "--yes", "--orphans"]).ok();
}

impl World {
    /// After a scale step: the engine holds exactly the containers of
    /// rancher and `nodes` (by rmm's labels), each running and on the
    /// cluster network (no endpoint of a removed one left); Rancher (the
    /// emulator, through its /v1 API) lists exactly `nodes`, each Running,
    /// registered once, from its container's address; `rmm status` and
    /// `rmm list` say the same.
    fn check_scaled(&self, what: &str, nodes: &[&str]) {
        let mut want: Vec<String> = nodes.iter().map(|n| n.to_string()).collect();
        want.sort();
        // The driver's world, as the engine lists it by rmm's labels.
        let filter = format!("label=io.rmm.cluster={}", self.cluster);
        let ps = docker(&["ps", "-a", "--filter", &filter, "--format", "{{.Names}} {{.Label \"io.rmm.machine\"}} {{.State}}"]);
        let mut containers: Vec<(String, String, String)> = ps
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f[1].to_string(), f[0].to_string(), f[2].to_string())
            })
            .collect();
        containers.sort();
        let mut expect: Vec<String> = want.clone();
        expect.push("rancher".into());
        expect.sort();
        let machines: Vec<String> = containers.iter().map(|c| c.0.clone()).collect();
        assert_eq!(machines, expect, "{what}: the containers of the cluster: {ps}");
        for (machine, name, state) in &containers {
            assert_eq!(state, "running", "{what}: {machine}");
            assert_eq!(name, &format!("rmm-{}-{machine}", self.cluster), "{what}");
        }
        // The network's endpoints: exactly those containers.
        let net = docker(&["network", "inspect", "-f", "{{range .Containers}}{{.Name}} {{end}}", &format!("rmm-{}", self.cluster)]);
        let mut on_net: Vec<&str> = net.split_whitespace().collect();
        on_net.sort();
        let mut names: Vec<&str> = containers.iter().map(|c| c.1.as_str()).collect();
        names.sort();
        assert_eq!(on_net, names, "{what}: the cluster network's endpoints");
        assert_eq!(labelled("volume", &self.cluster).len(), 1, "{what}: the rancher data volume only");

        // Rancher, through its /v1 API: exactly these nodes, Running, one
        // CAPI machine each, registered from the container's address.
        let answers = self.ask(&["/v1/provisioning.cattle.io.clusters", "/v1/cluster.x-k8s.io.machines/fleet-default"]);
        let clusters = answers[0]["data"].as_array().unwrap();
        assert_eq!(clusters.len(), 1, "{what}: one v1 cluster");
        assert_eq!(clusters[0]["status"]["ready"], true, "{what}: {}", clusters[0]["status"]);
        let listed = answers[1]["data"].as_array().unwrap();
        let mut in_rancher: Vec<String> = Vec::new();
        for m in listed {
            let node = m["metadata"]["labels"]["rke.cattle.io/node-name"].as_str().unwrap().to_string();
            assert_eq!(m["status"]["phase"], "Running", "{what}: {m}");
            assert!(m["metadata"]["deletionTimestamp"].is_null(), "{what}: {node} is being deleted: {m}");
            let ip = self.ip_of(&format!("rmm-{}-{node}", self.cluster));
            assert_eq!(m["metadata"]["annotations"]["emulator.rmm.io/registered-from"], ip.as_str(), "{what}: {node}");
            in_rancher.push(node);
        }
        in_rancher.sort();
        assert_eq!(in_rancher, want, "{what}: the nodes Rancher lists, each once");
        // The emulator's registration ledger (in its data volume): every
        // node it ever made was made by one registration.
        let ledger = tempfile::tempdir().unwrap();
        docker(&["cp", &format!("rmm-{}-rancher:/var/lib/rancher/emulator/state.json", self.cluster), ledger.path().to_str().unwrap()]);
        let made = crate::support::registrations_in(ledger.path()).made;
        for node in &want {
            assert_eq!(made.get(&format!("{}/{node}", self.cluster)), Some(&1), "{what}: {node} registered once: {made:?}");
        }
        for (node, n) in &made {
            assert_eq!(*n, 1, "{what}: {node} registered {n} times");
        }

        // `rmm status`: the run completed, exactly these actors, each done
        // at its container's address, running as the engine sees it; no orphan.
        let status = self.t.status_refresh();
        assert_eq!(status["run"]["state"], "completed", "{what}: {status}");
        assert_eq!(status["orphans"], Value::Array(vec![]), "{what}: orphans: {status}");
        let mut actors: Vec<String> = Vec::new();
        for a in status["actors"].as_array().unwrap() {
            let name = a["name"].as_str().unwrap().to_string();
            assert_eq!(a["state"], "done", "{what}: {a}");
            assert_eq!(a["observed"], "running", "{what}: {a}");
            if name != "rancher" {
                assert_eq!(a["ip"], self.ip_of(&format!("rmm-{}-{name}", self.cluster)).as_str(), "{what}: {a}");
            }
            actors.push(name);
        }
        actors.sort();
        assert_eq!(actors, expect, "{what}: the actors of status");
        // `rmm list`: this cluster, completed, at the URL status shows
        // (the server-url, as `credentials` names it).
        let list = crate::support::json(&self.t.rmm(&["list", "--json"]).ok().stdout);
        let entry = list.as_array().unwrap().iter().find(|e| e["name"] == self.cluster.as_str()).unwrap_or_else(|| panic!("{what}: {list}")).clone();
        assert_eq!(entry["state"], "completed", "{what}: {entry}");
        assert_eq!(entry["driver"], "docker", "{what}: {entry}");
        assert_eq!(entry["url"], status["rancher"]["url"], "{what}: {entry}");
        assert_eq!(entry["url"], self.t.credentials()["server_url"], "{what}: {entry}");
    }
}

/// Issue 11 on the docker driver: 1+1 → 1+2 → 1+1. The added worker is
/// a container that registers once from its own address; the removed one
/// (the highest-numbered worker) is deleted in Rancher first, then its
/// container goes with its anonymous volumes (the real
/// `rancher/systemd-node` declares `VOLUME /var/lib/kubelet
/// /var/lib/rancher`, reference/rancher-current.md §6 item 2; the test
/// node image does too) and its network endpoint.
#[test]
fn docker_scale_adds_a_worker_container_and_removes_it_deleted_in_rancher_first_and_leaves_nothing_of_it() {
    let Some(w) = World::new("the docker driver's scale") else { return };
    w.t.rmm(&["up", "--masters", "1", "--workers", "1"]).ok();
    w.check_scaled("1+1", &["master01", "worker01"]);

    let out = w.t.rmm(&["up", "--workers", "2"]).ok();
    assert!(text(&out.stdout).contains("(1 master, 2 workers): scaled in"), "{}", text(&out.stdout));
    w.check_scaled("1+2", &["master01", "worker01", "worker02"]);
    let worker02 = format!("rmm-{}-worker02", w.cluster);
    let mounts = docker(&["inspect", "-f", "{{range .Mounts}}{{if eq .Type \"volume\"}}{{.Name}} {{end}}{{end}}", &worker02]);
    let volumes: Vec<String> = mounts.split_whitespace().map(String::from).collect();
    assert_eq!(volumes.len(), 2, "the node image's two anonymous volumes: {mounts}");
    let events_before = w.t.events().len();

    let out = w.t.rmm(&["up", "--workers", "1"]).ok();
    assert!(text(&out.stdout).contains("(1 master, 1 worker): scaled in"), "{}", text(&out.stdout));
    w.check_scaled("1+2 → 1+1", &["master01", "worker01"]);
    let gone = Command::new("docker").args(["inspect", &worker02]).output().unwrap();
    assert!(!gone.status.success(), "worker02's container is gone");
    for v in &volumes {
        let left = Command::new("docker").args(["volume", "inspect", v]).output().unwrap();
        assert!(!left.status.success(), "worker02's volume {v} left behind");
    }
    // In Rancher first, then the container: worker02's steps of this attempt.
    let events = w.t.events();
    assert_eq!(crate::support::steps_done(&events[events_before..], "worker02"), ["delete_node", "remove_machine"]);

    w.t.rmm(&["down", "--yes"]).ok();
    for kind in ["container", "volume", "network"] {
        assert_eq!(labelled(kind, &w.cluster), Vec::<String>::new(), "{kind}s left behind by down");
    }
}

/// Issue 11 on the docker driver, killed: `rmm up --workers 1` on a 1+2
/// cluster SIGKILLed after a seeded number of the scale-down's events
/// (from its start through worker02's delete in Rancher and its removal),
/// then `rmm up --resume` finishes it: exactly rancher, master01 and
/// worker01 remain, the same containers as before (nothing made again),
/// worker02 gone from the engine and from Rancher, each node registered once.
#[test]
fn docker_scale_down_sigkilled_at_a_seeded_moment_is_finished_by_the_resume_and_nothing_is_made_twice() {
    for seed in crate::support::seeds("RMM_DOCKER_SCALE_KILL_SEED", &[7]) {
        use rand::{Rng, SeedableRng};
        eprintln!("docker scale-down sigkill seed {seed}");
        let Some(w) = World::new("the docker driver's killed scale-down") else { return };
        w.t.rmm(&["up", "--masters", "1", "--workers", "2"]).ok();
        let ids = |w: &World| -> Vec<String> {
            let filter = format!("label=io.rmm.cluster={}", w.cluster);
            let mut v: Vec<String> = docker(&["ps", "-aq", "--no-trunc", "--filter", &filter]).lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect();
            v.sort();
            v
        };
        let kept: Vec<String> = ["rancher", "master01", "worker01"]
            .iter()
            .map(|m| docker(&["inspect", "-f", "{{.Id}}", &format!("rmm-{}-{m}", w.cluster)]).trim().to_string())
            .collect();
        let base = w.t.events().len();
        // A scale-down of one worker appends about 16 events: the attempt
        // and plan, the server and machine checks (~8), worker02's delete
        // in Rancher (its intent, progress, outcome: Rancher takes a while
        // to let the machine go), its removal (2), the cluster wait (2)
        // and the end. Killed at the first poll of the log (a `rmm log`
        // each) that finds k of them, k ≤ 12: before worker02 is gone
        // (seen: 10 events in, during the delete; 12, right after the
        // removal's intent).
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let k = rng.gen_range(1..=12);
        let mut cmd = w.t.rmm(&["up", "--workers", "1"]).cmd;
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        let killed = kill_after_events(cmd.spawn().unwrap(), &w.t, base + k);
        assert!(killed, "seed {seed}: the scale-down ended before its {k}th event: the kill was not mid-run");
        let at_kill = w.t.events();
        let last = at_kill.last().map(|e| format!("{} {} {}", e["actor"], e["kind"], e["data"]["step"])).unwrap_or_default();
        eprintln!("seed {seed}: killed after {} events of the scale-down (asked {k}); the last: {last}", at_kill.len() - base);
        assert!(!at_kill.iter().skip(base).any(|e| e["kind"] == "RunCompleted"), "seed {seed}: killed mid-run");

        let resumed = w.t.rmm(&["up", "--resume"]).run();
        assert!(resumed.status.success(), "seed {seed}: {}", text(&resumed.stderr));
        let what = format!("seed {seed}, killed after event {k} of the scale-down");
        w.check_scaled(&what, &["master01", "worker01"]);
        let mut kept_sorted = kept.clone();
        kept_sorted.sort();
        assert_eq!(ids(&w), kept_sorted, "{what}: the same containers, none made again");
        // worker02: deleted in Rancher before its container was removed,
        // each effect at most once more after the kill.
        let events = w.t.events();
        let of = |kind: &str, step: &str| events[base..].iter().filter(|e| e["actor"] == "worker02" && e["kind"] == kind && e["data"]["step"] == step).count();
        assert_eq!(of("StepSucceeded", "delete_node"), 1, "{what}");
        assert_eq!(of("StepSucceeded", "remove_machine"), 1, "{what}");
        assert!(of("StepStarted", "delete_node") <= 2 && of("StepStarted", "remove_machine") <= 2, "{what}");
        let order: Vec<&str> = events[base..]
            .iter()
            .filter(|e| e["actor"] == "worker02" && e["kind"] == "StepSucceeded")
            .map(|e| e["data"]["step"].as_str().unwrap())
            .collect();
        assert_eq!(order, ["delete_node", "remove_machine"], "{what}");
        w.t.rmm(&["down", "--yes"]).ok();
        for kind in ["container", "volume", "network"] {
            assert_eq!(labelled(kind, &w.cluster), Vec::<String>::new(), "{what}: {kind}s left behind");
        }
    }
}
