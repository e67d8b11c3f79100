//! The create steps look before they create, on every try: with a fake
//! Rancher that already holds what the step would make, and no intent of
//! it on record (try 1), the step adopts (or clears) instead of making a
//! second one.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rmm_events::{ActorState, Envelope, Event, Outcome, Plan, Role, SledLog, Step, Via};
use tokio::sync::{watch, Semaphore};
use uuid::Uuid;

use super::*;
use crate::journal::Journal;
use crate::ports::{
    ApiToken, ClusterInfo, Condition, ExecOutput, Machine, MachineDriver, NodeInfo, RancherConnector, RegistrationToken,
    SecretStore, SteveObject, SteveState,
};

#[derive(Default)]
struct World {
    tokens: Vec<(ApiToken, Secret)>,
    clusters: Vec<ClusterInfo>,
    nodes: Vec<NodeInfo>,
    /// Calls that create or delete something, in order.
    writes: Vec<String>,
    /// Commands run on machines.
    execs: Vec<String>,
    /// Stderr of a command that fails (exit 1), if any.
    exec_fails: Option<String>,
    // The v1 side.
    version: String,
    v1_clusters: Vec<SteveObject>,
    machines: Vec<SteveObject>,
    default_token: Option<RegistrationToken>,
    offered: Vec<String>,
    settings: BTreeMap<String, String>,
    /// Bearer tokens answered with 401 (expired or revoked).
    expired: Vec<String>,
    /// Rounds of `/v1` reads that fail (503) before they succeed.
    reads_fail: u32,
    /// Whether running the installer registers a machine for its node.
    register_on_exec: bool,
    /// The installer's unit exists on the nodes (it ran before).
    agent_installed: bool,
    /// Nodes whose installer wrote the agent's unit.
    installed_on: std::collections::BTreeSet<String>,
    /// `cacerts` is empty (a publicly trusted certificate).
    cacerts_empty: bool,
    /// The trust of every client made, in order.
    trusts: Vec<CaTrust>,
    /// A little Rancher of its own: machines go Running with a nodeRef one
    /// poll after they appear, and the cluster is ready once this many are.
    controllers: Option<usize>,
    /// Machines created through the driver, by name: (ip, times created).
    made: BTreeMap<String, u32>,
    /// The passwords login accepts (`None`: any).
    passwords: Option<Vec<String>>,
    /// What the driver's `inspect` finds, by name (none: nothing).
    found: BTreeMap<String, Machine>,
    /// Machines started again through the driver, in order.
    restarted: Vec<String>,
}

fn unauthorized() -> ApiError {
    ApiError::Status { status: 401, code: None, message: "Unauthorized 401: must authenticate".into() }
}

impl World {
    fn check(&self, auth: &Secret) -> Result<(), ApiError> {
        if self.expired.iter().any(|t| t == auth.expose()) {
            return Err(unauthorized());
        }
        Ok(())
    }
}

fn machine(name: &str, node: &str, phase: &str) -> SteveObject {
    let mut m = SteveObject { name: name.into(), phase: Some(phase.into()), ..Default::default() };
    m.labels.insert("cluster.x-k8s.io/cluster-name".into(), "tinysetup".into());
    m.labels.insert("rke.cattle.io/node-name".into(), node.into());
    m
}

fn condition(kind: &str, status: &str, message: &str) -> Condition {
    Condition { kind: kind.into(), status: status.into(), reason: String::new(), message: message.into() }
}

#[derive(Clone, Default)]
struct Fake(Arc<Mutex<World>>);

impl Fake {
    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.0.lock().unwrap()
    }
}

fn cluster(id: &str, name: &str) -> ClusterInfo {
    ClusterInfo {
        id: id.into(),
        name: name.into(),
        state: "provisioning".into(),
        transitioning: "no".into(),
        transitioning_message: String::new(),
    }
}

#[async_trait]
impl RancherApi for Fake {
    async fn ping(&self) -> Result<(), ApiError> {
        Ok(())
    }
    async fn cacerts(&self) -> Result<String, ApiError> {
        if self.world().cacerts_empty {
            return Err(ApiError::Decode(format!("{}: no private CA", crate::ports::EMPTY_CACERTS)));
        }
        Ok("pem".into())
    }
    async fn login(&self, _: &str, password: &Secret) -> Result<Secret, ApiError> {
        match &self.world().passwords {
            Some(ok) if !ok.iter().any(|p| p == password.expose()) => {
                Err(ApiError::Status { status: 401, code: Some("Unauthorized".into()), message: "authentication failed".into() })
            }
            _ => Ok(Secret::new("token-login:s")),
        }
    }
    async fn change_password(&self, _: &Secret, _: &Secret, _: &Secret) -> Result<(), ApiError> {
        Ok(())
    }
    async fn create_token(&self, _: &Secret, description: &str) -> Result<(String, Secret), ApiError> {
        let mut w = self.world();
        let id = format!("token-{}", w.writes.len() + 1);
        let secret = Secret::new(format!("{id}:secret"));
        w.tokens.push((ApiToken { id: id.clone(), description: description.into() }, secret.clone()));
        w.writes.push(format!("create token {id}"));
        Ok((id, secret))
    }
    async fn list_tokens(&self, _: &Secret) -> Result<Vec<ApiToken>, ApiError> {
        Ok(self.world().tokens.iter().map(|(t, _)| t.clone()).collect())
    }
    async fn delete_token(&self, _: &Secret, id: &str) -> Result<(), ApiError> {
        let mut w = self.world();
        w.tokens.retain(|(t, _)| t.id != id);
        w.writes.push(format!("delete token {id}"));
        Ok(())
    }
    async fn set_setting(&self, auth: &Secret, _: &str, _: &str) -> Result<(), ApiError> {
        self.world().check(auth)
    }
    async fn create_cluster(&self, _: &Secret, name: &str) -> Result<ClusterInfo, ApiError> {
        let mut w = self.world();
        let c = cluster(&format!("c-{}", w.clusters.len() + 1), name);
        w.clusters.push(c.clone());
        w.writes.push(format!("create cluster {}", c.id));
        Ok(c)
    }
    async fn find_cluster(&self, _: &Secret, name: &str) -> Result<Option<ClusterInfo>, ApiError> {
        Ok(self.world().clusters.iter().find(|c| c.name == name).cloned())
    }
    async fn get_cluster(&self, auth: &Secret, id: &str) -> Result<ClusterInfo, ApiError> {
        self.world().check(auth)?;
        self.world().clusters.iter().find(|c| c.id == id).cloned().ok_or(ApiError::Status { status: 404, code: None, message: id.into() })
    }
    async fn list_registration_tokens(&self, _: &Secret, _: &str) -> Result<Vec<RegistrationToken>, ApiError> {
        Ok(Vec::new())
    }
    async fn create_registration_token(&self, _: &Secret, cluster_id: &str) -> Result<RegistrationToken, ApiError> {
        Ok(RegistrationToken {
            id: format!("{cluster_id}:crt-1"),
            cluster_id: cluster_id.into(),
            node_command: None,
            insecure_node_command: None,
        })
    }
    async fn get_registration_token(&self, auth: &Secret, id: &str) -> Result<RegistrationToken, ApiError> {
        let w = self.world();
        w.check(auth)?;
        match &w.default_token {
            Some(t) if id.ends_with(":default-token") => Ok(t.clone()),
            _ => Err(ApiError::Status { status: 404, code: None, message: id.into() }),
        }
    }
    async fn list_nodes(&self, _: &Secret, _: &str) -> Result<Vec<NodeInfo>, ApiError> {
        Ok(self.world().nodes.clone())
    }
    async fn rancher_version(&self) -> Result<String, ApiError> {
        Ok(self.world().version.clone())
    }
    async fn login_public(&self, _: &str, _: &Secret) -> Result<Secret, ApiError> {
        Ok(Secret::new("token-login:s"))
    }
    async fn v1_reads(&self, auth: &Secret) -> Result<(), ApiError> {
        let mut w = self.world();
        w.check(auth)?;
        w.writes.push("v1 reads".into());
        if w.reads_fail > 0 {
            w.reads_fail -= 1;
            return Err(ApiError::Unavailable("GET /v1/management.cattle.io.users: HTTP 503".into()));
        }
        Ok(())
    }
    async fn get_setting(&self, auth: &Secret, name: &str) -> Result<String, ApiError> {
        let w = self.world();
        w.check(auth)?;
        Ok(w.settings.get(name).cloned().unwrap_or_default())
    }
    async fn offered_versions(&self, auth: &Secret, _: &str) -> Result<Vec<String>, ApiError> {
        let w = self.world();
        w.check(auth)?;
        Ok(w.offered.clone())
    }
    async fn create_v1_cluster(&self, auth: &Secret, name: &str, version: &str, run: &str) -> Result<SteveObject, ApiError> {
        let mut w = self.world();
        w.check(auth)?;
        if w.v1_clusters.iter().any(|c| c.name == name) {
            return Err(ApiError::Status { status: 409, code: Some("AlreadyExists".into()), message: "exists".into() });
        }
        let mut c = SteveObject { name: name.into(), ..Default::default() };
        c.annotations.insert(crate::ports::RUN_ANNOTATION.into(), run.into());
        w.v1_clusters.push(c.clone());
        w.writes.push(format!("create v1 cluster {name} {version}"));
        Ok(c)
    }
    async fn get_v1_cluster(&self, auth: &Secret, name: &str) -> Result<Option<SteveObject>, ApiError> {
        let mut w = self.world();
        w.check(auth)?;
        if let Some(want) = w.controllers {
            let running = w.machines.iter().filter(|m| m.node_ref.is_some()).count();
            for c in w.v1_clusters.iter_mut() {
                c.cluster_name = Some("c-m-12345678".into());
                if running >= want {
                    c.ready = true;
                    c.conditions = vec![condition("Ready", "True", ""), condition("Provisioned", "True", "")];
                    c.state.message = String::new();
                } else {
                    c.state.message = "waiting for at least one control plane, etcd, and worker node to be registered".into();
                }
            }
        }
        Ok(w.v1_clusters.iter().find(|c| c.name == name).cloned())
    }
    async fn delete_v1_cluster(&self, auth: &Secret, name: &str) -> Result<(), ApiError> {
        let mut w = self.world();
        w.check(auth)?;
        w.v1_clusters.retain(|c| c.name != name);
        w.writes.push(format!("delete v1 cluster {name}"));
        Ok(())
    }
    async fn public_setting(&self, name: &str) -> Result<String, ApiError> {
        Ok(self.world().settings.get(name).cloned().unwrap_or_default())
    }
    async fn get_management_cluster(&self, auth: &Secret, id: &str) -> Result<SteveObject, ApiError> {
        let w = self.world();
        w.check(auth)?;
        if !w.v1_clusters.iter().any(|c| c.cluster_name.as_deref() == Some(id)) && w.writes.iter().any(|x| x.starts_with("delete v1 cluster")) {
            return Err(ApiError::Status { status: 404, code: Some("NotFound".into()), message: format!("clusters.management.cattle.io \"{id}\" not found") });
        }
        Ok(SteveObject { name: id.into(), conditions: vec![condition("Ready", "True", "")], ..Default::default() })
    }
    async fn delete_machine(&self, auth: &Secret, name: &str) -> Result<(), ApiError> {
        let mut w = self.world();
        w.check(auth)?;
        w.machines.retain(|m| m.name != name);
        w.writes.push(format!("delete machine {name}"));
        Ok(())
    }
    async fn delete_node(&self, _: &Secret, id: &str) -> Result<(), ApiError> {
        self.world().writes.push(format!("delete node {id}"));
        Ok(())
    }
    async fn list_machines(&self, auth: &Secret, cluster: &str) -> Result<Vec<SteveObject>, ApiError> {
        let mut w = self.world();
        w.check(auth)?;
        if w.controllers.is_some() {
            // The planner: what was Pending last time runs now.
            for m in w.machines.iter_mut() {
                if m.phase.as_deref() == Some("Provisioning") {
                    m.phase = Some("Running".into());
                    m.node_ref = m.labels.get("rke.cattle.io/node-name").cloned();
                    m.state.message = String::new();
                } else if m.phase.as_deref() == Some("Pending") {
                    m.phase = Some("Provisioning".into());
                    m.state.message = "waiting for plan to be applied".into();
                }
            }
        }
        Ok(w.machines.iter().filter(|m| m.labels.get("cluster.x-k8s.io/cluster-name").map(String::as_str) == Some(cluster)).cloned().collect())
    }
}

impl RancherConnector for Fake {
    fn connect(&self, _: &str, trust: CaTrust) -> Result<Arc<dyn RancherApi>, ApiError> {
        self.world().trusts.push(trust);
        Ok(Arc::new(self.clone()))
    }
}

#[async_trait]
impl MachineDriver for Fake {
    async fn create(&self, spec: &MachineSpec) -> Result<Machine, DriverError> {
        let mut w = self.world();
        if w.controllers.is_none() {
            return Err(DriverError::Permanent(format!("not in this test: create {}", spec.name)));
        }
        let n = w.made.len();
        *w.made.entry(spec.name.clone()).or_insert(0) += 1;
        let m = Machine { name: spec.name.clone(), cluster: Some(spec.cluster.clone()), state: MachineState::Running, ip: Some(format!("127.0.9.{}", n + 1)) };
        w.found.insert(spec.name.clone(), m.clone());
        Ok(m)
    }
    async fn inspect(&self, name: &str) -> Result<Option<Machine>, DriverError> {
        Ok(self.world().found.get(name).cloned())
    }
    /// A stopped machine runs again, at another address.
    async fn restart(&self, name: &str) -> Result<Option<Machine>, DriverError> {
        let mut w = self.world();
        w.restarted.push(name.to_string());
        Ok(w.found.get_mut(name).filter(|m| m.state == MachineState::Stopped).map(|m| {
            m.state = MachineState::Running;
            m.ip = Some("10.0.0.99".into());
            m.clone()
        }))
    }
    async fn list(&self, _: &str) -> Result<Vec<Machine>, DriverError> {
        Ok(Vec::new())
    }
    async fn exec(&self, name: &str, command: &str) -> Result<ExecOutput, DriverError> {
        let mut w = self.world();
        w.execs.push(command.to_string());
        // The v1 installer (rke1's agent run has --node-name too).
        let v1_installer = command.contains("--node-name") && !command.contains("rancher/rancher-agent");
        if w.register_on_exec && v1_installer {
            let words: Vec<&str> = command.split_whitespace().collect();
            let i = words.iter().position(|w| *w == "--node-name").unwrap();
            let node = words[i + 1].to_string();
            // The installer writes the unit after registering; the node's
            // kept system-agent id registers the same machine again.
            w.installed_on.insert(name.to_string());
            if !w.machines.iter().any(|m| m.labels.get("rke.cattle.io/node-name") == Some(&node)) {
                let n = w.machines.len();
                w.machines.push(machine(&format!("custom-{n:012x}"), &node, "Pending"));
            }
        }
        if v1_installer && !w.register_on_exec {
            // An installer that echoes its token (a trace, `sh -x`), then fails quietly.
            return Ok(ExecOutput { status: 0, stdout: String::new(), stderr: "+ CATTLE_TOKEN=t0ps3cr3t\n[ERROR] curl: (60) SSL certificate problem".into() });
        }
        if command.starts_with("docker ps") && w.controllers.is_some() {
            return Ok(ExecOutput { status: 0, stdout: "running\n".into(), stderr: String::new() });
        }
        if command.starts_with("test -f /etc/systemd/system/rancher-system-agent.service") {
            let installed = w.agent_installed || w.installed_on.contains(name);
            return Ok(ExecOutput { status: if installed { 0 } else { 1 }, stdout: if installed { "installed\n".into() } else { String::new() }, stderr: String::new() });
        }
        if command.starts_with("systemctl status") {
            return Ok(ExecOutput { status: 0, stdout: "rancher-system-agent.service: inactive (dead)\nlevel=error msg=\"x509: certificate signed by unknown authority\"".into(), stderr: String::new() });
        }
        Ok(match (&w.exec_fails, command.contains("--server")) {
            (Some(stderr), true) => ExecOutput { status: 1, stdout: String::new(), stderr: stderr.clone() },
            _ => ExecOutput { status: 0, stdout: String::new(), stderr: String::new() },
        })
    }
    async fn remove(&self, _: &str) -> Result<(), DriverError> {
        Ok(())
    }
}

#[derive(Default)]
struct Secrets(Mutex<BTreeMap<String, Secret>>);

impl SecretStore for Secrets {
    fn get(&self, name: &str) -> Option<Secret> {
        self.0.lock().unwrap().get(name).cloned()
    }
    fn put(&self, name: &str, value: &Secret) -> Result<(), String> {
        self.0.lock().unwrap().insert(name.to_string(), value.clone());
        Ok(())
    }
}

/// A run context over the fake world; the store lives in a temp dir
/// removed on drop.
struct Fixture {
    ctx: RunCtx,
    fake: Fake,
    _stop: watch::Sender<bool>,
    dir: std::path::PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn fixture() -> Fixture {
    let dir = std::env::temp_dir().join(format!("rmm-steps-{}-{}", std::process::id(), Uuid::now_v7()));
    let log = SledLog::open(&dir).unwrap_or_else(|_| panic!("open a store in {}", dir.display()));
    let (journal, _writer) = Journal::start(log);
    let (stop_tx, stop) = watch::channel(false);
    let fake = Fake::default();
    let ctx = RunCtx {
        run: Uuid::now_v7(),
        attempt: 1,
        // An RKE1 run on the last line that has it; `v1_fixture` makes it rke2.
        plan: Plan { distribution: rmm_events::Distribution::Rke1, rancher_image: "rancher/rancher:v2.11.3".into(), ..Plan::default() },
        journal,
        driver: Arc::new(fake.clone()),
        connector: Arc::new(fake.clone()),
        secrets: Arc::new(Secrets::default()),
        create_slots: Arc::new(Semaphore::new(1)),
        stop,
        undo: None,
    };
    ctx.put_secret(secret::RANCHER_CA, &Secret::new("pem")).unwrap();
    ctx.put_secret(secret::LOGIN_TOKEN, &Secret::new("token-login:s")).unwrap();
    Fixture { ctx, fake, _stop: stop_tx, dir }
}

/// The state of an actor whose `done` steps succeeded, and nothing else:
/// no intent of the step under test is on record.
fn state(run: Uuid, done: &[(Step, Outcome)]) -> ActorState {
    let mut s = ActorState::default();
    for (i, (step, outcome)) in done.iter().enumerate() {
        s.apply(&Envelope {
            seq: i as u64 + 1,
            id: Uuid::now_v7(),
            run,
            attempt: 1,
            actor: "x".into(),
            cause: None,
            at_ms: i as i64,
            event: Event::StepSucceeded { step: *step, outcome: outcome.clone(), via: Via::Done },
        });
    }
    s
}

fn rancher_state(run: Uuid) -> ActorState {
    state(
        run,
        &[
            (Step::CreateMachine, Outcome::MachineCreated { ip: "127.0.0.1".into() }),
            (Step::PinCa, Outcome::CaPinned { checksum: ca_checksum("pem") }),
        ],
    )
}

fn call<'a>(ctx: &'a RunCtx, actor: &'a str, role: Role, step: Step, state: &'a ActorState, join: Option<&'a JoinInfo>) -> StepCall<'a> {
    StepCall { ctx, actor, role, step, try_no: 1, state, join, observer: None }
}

#[tokio::test]
async fn an_api_token_of_this_run_whose_secret_is_not_held_is_replaced_not_doubled_on_a_first_try() {
    let f = fixture();
    let description = token_description(&f.ctx);
    f.fake.world().tokens.push((ApiToken { id: "token-lost".into(), description: description.clone() }, Secret::new("token-lost:x")));
    let st = rancher_state(f.ctx.run);
    let outcome = effect(&call(&f.ctx, "rancher", Role::Rancher, Step::CreateApiToken, &st, None)).await.unwrap();
    let w = f.fake.world();
    let ours: Vec<_> = w.tokens.iter().filter(|(t, _)| t.description == description).collect();
    assert_eq!(ours.len(), 1, "exactly one token of this run: {:?}", w.writes);
    assert_eq!(w.writes, vec!["delete token token-lost", "create token token-2"]);
    assert!(matches!(outcome, Outcome::ApiTokenCreated { token_id, .. } if token_id == "token-2"));
}

#[tokio::test]
async fn an_api_token_of_this_run_whose_secret_is_held_is_adopted_on_a_first_try() {
    let f = fixture();
    let description = token_description(&f.ctx);
    let held = Secret::new("token-made:secret");
    f.fake.world().tokens.push((ApiToken { id: "token-made".into(), description }, held.clone()));
    f.ctx.put_secret(secret::API_TOKEN, &held).unwrap();
    let st = rancher_state(f.ctx.run);
    let outcome = effect(&call(&f.ctx, "rancher", Role::Rancher, Step::CreateApiToken, &st, None)).await.unwrap();
    assert!(f.fake.world().writes.is_empty(), "nothing made or deleted: {:?}", f.fake.world().writes);
    assert!(matches!(outcome, Outcome::ApiTokenCreated { token_id, .. } if token_id == "token-made"));
}

#[tokio::test]
async fn a_cluster_of_the_plan_s_name_is_adopted_on_a_first_try() {
    let f = fixture();
    f.fake.world().clusters.push(cluster("c-found", &f.ctx.plan.cluster_name));
    let st = rancher_state(f.ctx.run);
    let outcome = effect(&call(&f.ctx, "rancher", Role::Rancher, Step::CreateCluster, &st, None)).await.unwrap();
    assert!(f.fake.world().writes.is_empty(), "{:?}", f.fake.world().writes);
    assert_eq!(outcome, Outcome::ClusterCreated { cluster_id: "c-found".into() });
}

#[tokio::test]
async fn a_node_rancher_already_lists_does_not_run_its_agent_again_on_a_first_try() {
    let f = fixture();
    f.ctx.put_secret(secret::NODE_COMMAND, &Secret::new("sudo docker run rancher/rancher-agent:v2.11.3 --server https://127.0.0.1:8443 --token t")).unwrap();
    f.fake.world().nodes.push(NodeInfo {
        id: "c-1:m-1".into(),
        requested_hostname: "worker01".into(),
        state: "registering".into(),
        etcd: false,
        control_plane: false,
        worker: true,
        ip_address: None,
    });
    let st = state(f.ctx.run, &[(Step::CreateMachine, Outcome::MachineCreated { ip: "127.0.0.3".into() })]);
    let join = JoinInfo { url: "https://127.0.0.1:8443".into(), cluster_id: "c-1".into(), ca_checksum: ca_checksum("pem") };
    let outcome = effect(&call(&f.ctx, "worker01", Role::Worker, Step::RunAgent, &st, Some(&join))).await.unwrap();
    assert_eq!(outcome, Outcome::AgentStarted);
    assert!(f.fake.world().execs.is_empty(), "the agent did not run again: {:?}", f.fake.world().execs);
    // Not listed: the agent runs (once).
    f.fake.world().nodes.clear();
    effect(&call(&f.ctx, "worker01", Role::Worker, Step::RunAgent, &st, Some(&join))).await.unwrap();
    let execs = f.fake.world().execs.clone();
    assert_eq!(execs.iter().filter(|c| c.contains("--server")).count(), 1, "{execs:?}");
}

#[tokio::test]
async fn an_agent_that_cannot_reach_rancher_is_rancher_unavailable_and_another_failure_is_not() {
    let f = fixture();
    f.ctx.put_secret(secret::NODE_COMMAND, &Secret::new("sudo docker run rancher/rancher-agent:v2.11.3 --server https://127.0.0.1:8443 --token t")).unwrap();
    let st = state(f.ctx.run, &[(Step::CreateMachine, Outcome::MachineCreated { ip: "127.0.0.3".into() })]);
    let join = JoinInfo { url: "https://127.0.0.1:8443".into(), cluster_id: "c-1".into(), ca_checksum: ca_checksum("pem") };
    // What the agent's run.sh says when the server does not answer.
    f.fake.world().exec_fails = Some("ERROR: https://127.0.0.1:8443/ping is not accessible (Connection refused)\n".into());
    let e = effect(&call(&f.ctx, "worker01", Role::Worker, Step::RunAgent, &st, Some(&join))).await.unwrap_err();
    assert!(e.retryable && e.unavailable, "{e:?}");
    f.fake.world().exec_fails = Some("ERROR: Configured cacerts checksum (a) does not match given --ca-checksum (b)\n".into());
    let e = effect(&call(&f.ctx, "worker01", Role::Worker, Step::RunAgent, &st, Some(&join))).await.unwrap_err();
    assert!(e.retryable && !e.unavailable, "{e:?}");
}

// ------------------------------------------------------------------ v1 (rke2/k3s)

fn v1_fixture() -> Fixture {
    let mut f = fixture();
    f.ctx.plan.distribution = rmm_events::Distribution::Rke2;
    f.ctx.plan.rancher_image = "rancher/rancher:v2.15.1".into();
    f.ctx.plan.timeouts.node_listed_s = 1;
    f.ctx.plan.timeouts.active_s = 2;
    f.ctx.plan.poll_ms = 5;
    f.ctx.put_secret(secret::API_TOKEN, &Secret::new("token-api:s")).unwrap();
    f.ctx.put_secret(secret::ADMIN_PASSWORD, &Secret::new("admin-password-123")).unwrap();
    f
}

fn v1_rancher_state(run: Uuid) -> ActorState {
    state(
        run,
        &[
            (Step::CreateMachine, Outcome::MachineCreated { ip: "127.0.0.1".into() }),
            (Step::PinCa, Outcome::CaPinned { checksum: ca_checksum("pem") }),
            (Step::ChooseKubernetesVersion, Outcome::KubernetesVersionChosen { version: "v1.35.1+rke2r1".into(), server_default: false }),
            (Step::WaitClusterName, Outcome::ClusterNamed { management_id: "c-m-abcd1234".into() }),
        ],
    )
}

fn v1_join() -> JoinInfo {
    JoinInfo { url: "https://127.0.0.1:8443".into(), cluster_id: "c-m-abcd1234".into(), ca_checksum: ca_checksum("pem") }
}

fn default_token(with_checksum: &str) -> RegistrationToken {
    let cmd = |insecure: &str| {
        format!(
            "curl {insecure}-fL https://127.0.0.1:8443/system-agent-install.sh | sudo  sh -s - --server https://127.0.0.1:8443 --label 'cattle.io/os=linux' --token t0ps3cr3t --ca-checksum {with_checksum}"
        )
    };
    RegistrationToken {
        id: "c-m-abcd1234:default-token".into(),
        cluster_id: "c-m-abcd1234".into(),
        node_command: Some(Secret::new(cmd(""))),
        insecure_node_command: Some(Secret::new(cmd("--insecure "))),
    }
}

#[tokio::test]
async fn rke1_is_refused_on_2_12_and_later_before_anything_is_made() {
    let mut f = fixture();
    f.ctx.plan.distribution = rmm_events::Distribution::Rke1;
    let st = rancher_state(f.ctx.run);
    f.fake.world().version = "v2.15.1".into();
    let e = effect(&call(&f.ctx, "rancher", Role::Rancher, Step::CheckRancherVersion, &st, None)).await.unwrap_err();
    assert!(!e.retryable && e.message.starts_with(REFUSAL), "{e:?}");
    assert!(e.message.contains("Rancher 2.12 removed RKE1") && e.message.contains("--distribution rke2"), "{}", e.message);
    assert!(f.fake.world().writes.is_empty());
    f.fake.world().version = "v2.11.3".into();
    let ok = effect(&call(&f.ctx, "rancher", Role::Rancher, Step::CheckRancherVersion, &st, None)).await.unwrap();
    assert_eq!(ok, Outcome::RancherVersion { version: "v2.11.3".into() });
    f.ctx.plan.distribution = rmm_events::Distribution::Rke2;
    f.fake.world().version = "v2.15.1".into();
    assert!(effect(&call(&f.ctx, "rancher", Role::Rancher, Step::CheckRancherVersion, &st, None)).await.is_ok());
}

#[test]
fn rancher_versions_parse_to_their_line() {
    assert_eq!(v1::minor_version("v2.15.1"), Some((2, 15)));
    assert_eq!(v1::minor_version("2.12.0-rc3"), Some((2, 12)));
    assert_eq!(v1::minor_version("dev"), None);
}

#[tokio::test]
async fn a_kubernetes_version_the_server_does_not_offer_is_refused_with_the_list() {
    let mut f = v1_fixture();
    f.fake.world().offered = vec!["v1.34.4+rke2r1".into(), "v1.35.1+rke2r1".into()];
    f.ctx.plan.kubernetes_version = Some("v1.33.0+rke2r1".into());
    let st = rancher_state(f.ctx.run);
    let e = effect(&call(&f.ctx, "rancher", Role::Rancher, Step::ChooseKubernetesVersion, &st, None)).await.unwrap_err();
    assert!(e.message.starts_with(REFUSAL) && !e.retryable, "{e:?}");
    assert!(e.message.contains("v1.33.0+rke2r1") && e.message.contains("it offers: v1.34.4+rke2r1, v1.35.1+rke2r1"), "{}", e.message);
    f.ctx.plan.kubernetes_version = Some("v1.35.1+rke2r1".into());
    let ok = effect(&call(&f.ctx, "rancher", Role::Rancher, Step::ChooseKubernetesVersion, &st, None)).await.unwrap();
    assert_eq!(ok, Outcome::KubernetesVersionChosen { version: "v1.35.1+rke2r1".into(), server_default: false });
}

#[tokio::test]
async fn without_a_version_the_server_default_setting_is_used() {
    let f = v1_fixture();
    f.fake.world().settings.insert("rke2-default-version".into(), "v1.35.1+rke2r1".into());
    let st = rancher_state(f.ctx.run);
    let ok = effect(&call(&f.ctx, "rancher", Role::Rancher, Step::ChooseKubernetesVersion, &st, None)).await.unwrap();
    assert_eq!(ok, Outcome::KubernetesVersionChosen { version: "v1.35.1+rke2r1".into(), server_default: true });
}

#[tokio::test]
async fn readiness_needs_two_rounds_of_v1_reads_in_a_row() {
    let f = v1_fixture();
    f.fake.world().reads_fail = 2;
    let st = rancher_state(f.ctx.run);
    let ok = effect(&call(&f.ctx, "rancher", Role::Rancher, Step::WaitApiReady, &st, None)).await.unwrap();
    assert_eq!(ok, Outcome::ApiReady);
    let rounds = f.fake.world().writes.iter().filter(|w| *w == "v1 reads").count();
    assert_eq!(rounds, 4, "two failed rounds, then two good ones");
}

#[tokio::test]
async fn a_v1_cluster_of_the_plan_s_name_is_adopted_and_otherwise_made_once_with_the_version() {
    let f = v1_fixture();
    let st = v1_rancher_state(f.ctx.run);
    let made = effect(&call(&f.ctx, "rancher", Role::Rancher, Step::CreateCluster, &st, None)).await.unwrap();
    assert_eq!(made, Outcome::ClusterCreated { cluster_id: "fleet-default/tinysetup".into() });
    assert_eq!(f.fake.world().writes, vec!["create v1 cluster tinysetup v1.35.1+rke2r1"]);
    // A try whose outcome was lost: found by name, nothing made again.
    let again = effect(&call(&f.ctx, "rancher", Role::Rancher, Step::CreateCluster, &st, None)).await.unwrap();
    assert_eq!(again, made);
    assert_eq!(f.fake.world().writes.len(), 1);
    let probed = probe(&call(&f.ctx, "rancher", Role::Rancher, Step::CreateCluster, &st, None)).await.unwrap();
    assert_eq!(probed, Some(made));
}

#[tokio::test]
async fn an_expired_api_token_is_replaced_by_logging_in_again() {
    let f = v1_fixture();
    f.fake.world().expired.push("token-api:s".into());
    f.fake.world().v1_clusters.push(SteveObject { name: "tinysetup".into(), cluster_name: Some("c-m-abcd1234".into()), ..Default::default() });
    let st = v1_rancher_state(f.ctx.run);
    let ok = effect(&call(&f.ctx, "rancher", Role::Rancher, Step::WaitClusterName, &st, None)).await.unwrap();
    assert_eq!(ok, Outcome::ClusterNamed { management_id: "c-m-abcd1234".into() });
    let now = f.ctx.secret(secret::API_TOKEN).unwrap();
    assert_ne!(now.expose(), "token-api:s", "a new API token is stored");
    assert!(f.fake.world().writes.iter().any(|w| w.starts_with("create token")), "{:?}", f.fake.world().writes);
}

#[tokio::test]
async fn the_insecure_node_command_is_read_fresh_and_run_with_long_flags_then_registration_is_checked() {
    let f = v1_fixture();
    f.fake.world().default_token = Some(default_token(&ca_checksum("pem")));
    f.fake.world().register_on_exec = true;
    let st = state(f.ctx.run, &[(Step::CreateMachine, Outcome::MachineCreated { ip: "127.0.0.11".into() })]);
    let join = v1_join();
    let ok = effect(&call(&f.ctx, "master01", Role::Master, Step::RunAgent, &st, Some(&join))).await.unwrap();
    assert_eq!(ok, Outcome::AgentStarted);
    let execs: Vec<String> = f.fake.world().execs.iter().filter(|c| c.contains("--node-name")).cloned().collect();
    assert_eq!(execs.len(), 1, "{execs:?}");
    let cmd = &execs[0];
    assert!(cmd.starts_with("curl --insecure -fL "), "{cmd}");
    assert!(cmd.ends_with("--etcd --controlplane --node-name master01 --address 127.0.0.11 --internal-address 127.0.0.11"), "{cmd}");
    assert!(!cmd.contains(" -a ") && !cmd.contains(" -e "), "long flags only: {cmd}");
    // Its machine is listed now: neither a retry nor a resume runs it again.
    effect(&call(&f.ctx, "master01", Role::Master, Step::RunAgent, &st, Some(&join))).await.unwrap();
    assert_eq!(probe(&call(&f.ctx, "master01", Role::Master, Step::RunAgent, &st, Some(&join))).await.unwrap(), Some(Outcome::AgentStarted));
    assert_eq!(f.fake.world().execs.iter().filter(|c| c.contains("--node-name")).count(), 1);
    let listed = effect(&call(&f.ctx, "master01", Role::Master, Step::WaitNodeListed, &st, Some(&join))).await.unwrap();
    assert!(matches!(listed, Outcome::NodeListed { node_id } if node_id.starts_with("custom-")));
}

#[tokio::test]
async fn an_installer_that_exits_0_without_registering_fails_fast_with_the_node_s_evidence_redacted() {
    let f = v1_fixture();
    f.fake.world().default_token = Some(default_token(&ca_checksum("pem")));
    let st = state(f.ctx.run, &[(Step::CreateMachine, Outcome::MachineCreated { ip: "127.0.0.14".into() })]);
    let join = v1_join();
    let started = std::time::Instant::now();
    let e = effect(&call(&f.ctx, "worker01", Role::Worker, Step::RunAgent, &st, Some(&join))).await.unwrap_err();
    assert!(started.elapsed() < std::time::Duration::from_secs(30), "seen in seconds, not at a timeout");
    assert!(!e.retryable, "{e:?}");
    assert!(e.message.contains("node worker01 did not register"), "{}", e.message);
    assert!(e.message.contains("x509: certificate signed by unknown authority"), "the agent's log tail: {}", e.message);
    assert!(e.message.contains("SSL certificate problem"), "the installer's output: {}", e.message);
    assert!(!e.message.contains("t0ps3cr3t"), "no secret in the error: {}", e.message);
}

#[tokio::test]
async fn a_node_command_whose_ca_checksum_is_not_the_pinned_one_is_not_run() {
    let f = v1_fixture();
    f.fake.world().default_token = Some(default_token(&"ee".repeat(32)));
    let st = state(f.ctx.run, &[(Step::CreateMachine, Outcome::MachineCreated { ip: "127.0.0.14".into() })]);
    let e = effect(&call(&f.ctx, "worker01", Role::Worker, Step::RunAgent, &st, Some(&v1_join()))).await.unwrap_err();
    assert!(e.message.contains("not the pinned CA"), "{}", e.message);
    assert!(f.fake.world().execs.is_empty());
}

#[tokio::test]
async fn a_machine_in_error_ends_its_wait_with_rancher_s_message() {
    let f = v1_fixture();
    let mut m = machine("custom-000000000001", "worker02", "Provisioning");
    m.state = SteveState { name: "error".into(), message: "failed to apply plan: exit status 1".into(), error: true, transitioning: false };
    f.fake.world().machines.push(m);
    let st = state(f.ctx.run, &[(Step::CreateMachine, Outcome::MachineCreated { ip: "127.0.0.15".into() })]);
    let e = effect(&call(&f.ctx, "worker02", Role::Worker, Step::WaitMachineRunning, &st, Some(&v1_join()))).await.unwrap_err();
    assert!(!e.retryable && e.message.contains("failed to apply plan: exit status 1"), "{e:?}");
}

#[tokio::test]
async fn a_machine_is_done_when_running_with_a_node_ref_and_planner_messages_are_recorded() {
    let f = v1_fixture();
    let mut m = machine("custom-000000000002", "master02", "Provisioning");
    m.state.message = "waiting for probes: etcd, kube-apiserver".into();
    f.fake.world().machines.push(m);
    let st = state(f.ctx.run, &[(Step::CreateMachine, Outcome::MachineCreated { ip: "127.0.0.12".into() })]);
    let fake = f.fake.clone();
    let flip = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let mut w = fake.world();
        w.machines[0].phase = Some("Running".into());
        w.machines[0].node_ref = Some("master02".into());
        w.machines[0].state.message = String::new();
    });
    let ok = effect(&call(&f.ctx, "master02", Role::Master, Step::WaitMachineRunning, &st, Some(&v1_join()))).await.unwrap();
    flip.await.unwrap();
    assert_eq!(ok, Outcome::MachineRunning { machine: "custom-000000000002".into(), node: "master02".into() });
    // Each change of Rancher's message is one event in the log (not one per poll).
    let log = SledLog::open_snapshot(&f.dir).unwrap();
    let progress: Vec<String> = log
        .scan(1)
        .map(|r| r.unwrap().envelope.event)
        .filter_map(|e| match e {
            Event::Progress { step: Step::WaitMachineRunning, message } => Some(message),
            _ => None,
        })
        .collect();
    assert_eq!(progress, vec!["Provisioning: waiting for probes: etcd, kube-apiserver".to_string()], "{progress:?}");
}

#[tokio::test]
async fn the_cluster_is_ready_only_as_rancher_s_tests_define_it_and_an_error_ends_the_wait() {
    let f = v1_fixture();
    let ready = SteveObject {
        name: "tinysetup".into(),
        generation: 3,
        observed_generation: 3,
        ready: true,
        cluster_name: Some("c-m-abcd1234".into()),
        conditions: vec![condition("Ready", "True", ""), condition("Provisioned", "True", "")],
        ..Default::default()
    };
    let st = v1_rancher_state(f.ctx.run);
    // observedGeneration behind: not ready (times out after active_s = 2).
    f.fake.world().v1_clusters = vec![SteveObject { observed_generation: 2, ..ready.clone() }];
    let e = effect(&call(&f.ctx, "rancher", Role::Rancher, Step::WaitClusterReady, &st, None)).await.unwrap_err();
    assert!(e.message.contains("timed out"), "{e:?}");
    f.fake.world().v1_clusters = vec![ready.clone()];
    let ok = effect(&call(&f.ctx, "rancher", Role::Rancher, Step::WaitClusterReady, &st, None)).await.unwrap();
    assert_eq!(ok, Outcome::ClusterReady);
    let mut broken = ready;
    broken.ready = false;
    broken.state = SteveState { name: "error".into(), message: "could not find release data for v1.99.0+rke2r1".into(), error: true, transitioning: false };
    f.fake.world().v1_clusters = vec![broken];
    let started = std::time::Instant::now();
    let e = effect(&call(&f.ctx, "rancher", Role::Rancher, Step::WaitClusterReady, &st, None)).await.unwrap_err();
    assert!(e.message.contains("could not find release data") && !e.retryable, "{e:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
}

#[test]
fn the_insecure_command_is_chosen_with_a_private_ca_and_the_secure_one_without() {
    let t = default_token(&ca_checksum("pem"));
    assert!(v1::pick_command(&t, true).unwrap().expose().contains("--insecure"));
    assert!(!v1::pick_command(&t, false).unwrap().expose().contains("--insecure"));
}

#[tokio::test]
async fn an_empty_cacerts_is_verified_against_the_system_roots_and_recorded() {
    let mut f = v1_fixture();
    f.fake.world().cacerts_empty = true;
    let st = state(f.ctx.run, &[(Step::CreateMachine, Outcome::MachineCreated { ip: "127.0.0.1".into() })]);
    let ok = effect(&call(&f.ctx, "rancher", Role::Rancher, Step::PinCa, &st, None)).await.unwrap();
    assert_eq!(ok, Outcome::CaSystemRoots);
    assert!(f.fake.world().trusts.contains(&CaTrust::SystemRoots), "the server was checked with the system roots");
    // From then on every call trusts the system roots, not a pinned CA.
    let st = state(f.ctx.run, &[(Step::CreateMachine, Outcome::MachineCreated { ip: "127.0.0.1".into() }), (Step::PinCa, Outcome::CaSystemRoots)]);
    f.fake.world().trusts.clear();
    f.fake.world().version = "v2.15.1".into();
    effect(&call(&f.ctx, "rancher", Role::Rancher, Step::CheckRancherVersion, &st, None)).await.unwrap();
    assert_eq!(f.fake.world().trusts, vec![CaTrust::SystemRoots]);
    // --ca-checksum still pins: a CA was asked for and there is none.
    f.ctx.plan.ca_checksum = Some("ab".repeat(32));
    let st = state(f.ctx.run, &[(Step::CreateMachine, Outcome::MachineCreated { ip: "127.0.0.1".into() })]);
    let e = effect(&call(&f.ctx, "rancher", Role::Rancher, Step::PinCa, &st, None)).await.unwrap_err();
    assert!(!e.retryable && e.message.contains("--ca-checksum") && e.message.contains("cacerts setting is empty"), "{e:?}");
}

#[tokio::test]
async fn with_system_roots_the_secure_node_command_runs_without_a_checksum_check() {
    let f = v1_fixture();
    let mut t = default_token(&ca_checksum("pem"));
    t.node_command = Some(Secret::new("curl -fL https://rancher.example.com/system-agent-install.sh | sudo  sh -s - --server https://rancher.example.com --label 'cattle.io/os=linux' --token t0ps3cr3t"));
    f.fake.world().default_token = Some(t);
    f.fake.world().register_on_exec = true;
    let st = state(f.ctx.run, &[(Step::CreateMachine, Outcome::MachineCreated { ip: "127.0.0.11".into() })]);
    let join = JoinInfo { url: "https://rancher.example.com".into(), cluster_id: "c-m-abcd1234".into(), ca_checksum: String::new() };
    effect(&call(&f.ctx, "worker03", Role::Worker, Step::RunAgent, &st, Some(&join))).await.unwrap();
    let execs: Vec<String> = f.fake.world().execs.iter().filter(|c| c.contains("--node-name")).cloned().collect();
    assert!(execs[0].starts_with("curl -fL https://rancher.example.com/"), "{execs:?}");
    assert!(execs[0].ends_with("--worker --node-name worker03 --address 127.0.0.11 --internal-address 127.0.0.11"), "{execs:?}");
}

#[tokio::test]
async fn server_url_is_set_with_a_new_token_when_the_old_one_expired() {
    let f = v1_fixture();
    f.fake.world().expired.push("token-api:s".into());
    let st = v1_rancher_state(f.ctx.run);
    let ok = effect(&call(&f.ctx, "rancher", Role::Rancher, Step::SetServerUrl, &st, None)).await.unwrap();
    assert_eq!(ok, Outcome::ServerUrlSet { url: "https://127.0.0.1".into() });
    assert_ne!(f.ctx.secret(secret::API_TOKEN).unwrap().expose(), "token-api:s");
}

#[tokio::test]
async fn an_installer_that_already_ran_is_not_run_again_and_its_registration_is_checked() {
    let f = v1_fixture();
    f.fake.world().default_token = Some(default_token(&ca_checksum("pem")));
    f.fake.world().agent_installed = true;
    let st = state(f.ctx.run, &[(Step::CreateMachine, Outcome::MachineCreated { ip: "127.0.0.13".into() })]);
    let e = effect(&call(&f.ctx, "master03", Role::Master, Step::RunAgent, &st, Some(&v1_join()))).await.unwrap_err();
    assert!(e.message.contains("not run again"), "{}", e.message);
    assert_eq!(f.fake.world().execs.iter().filter(|c| c.contains("--node-name")).count(), 0);
    // Once Rancher lists it, the step is done, still without running it.
    f.fake.world().machines.push(machine("custom-000000000003", "master03", "Provisioning"));
    effect(&call(&f.ctx, "master03", Role::Master, Step::RunAgent, &st, Some(&v1_join()))).await.unwrap();
    assert_eq!(f.fake.world().execs.iter().filter(|c| c.contains("--node-name")).count(), 0);
}

#[tokio::test]
async fn a_listed_machine_whose_installer_was_cut_short_before_its_unit_is_installed_again() {
    // rmm killed between the installer's registration call and the unit:
    // Rancher lists the machine, but no service will ever check in.
    let f = v1_fixture();
    f.fake.world().default_token = Some(default_token(&ca_checksum("pem")));
    f.fake.world().register_on_exec = true;
    f.fake.world().machines.push(machine("custom-000000000003", "master03", "Provisioning"));
    let st = state(f.ctx.run, &[(Step::CreateMachine, Outcome::MachineCreated { ip: "127.0.0.13".into() })]);
    let join = v1_join();
    let c = call(&f.ctx, "master03", Role::Master, Step::RunAgent, &st, Some(&join));
    assert_eq!(probe(&c).await.unwrap(), None, "not adopted: listed, but no unit on the node");
    assert_eq!(effect(&c).await.unwrap(), Outcome::AgentStarted);
    assert_eq!(f.fake.world().execs.iter().filter(|c| c.contains("--node-name master03")).count(), 1, "the installer ran again");
    assert_eq!(f.fake.world().machines.len(), 1, "the same machine");
    // Now both hold: adopted, and not run a third time.
    assert_eq!(probe(&c).await.unwrap(), Some(Outcome::AgentStarted));
    effect(&c).await.unwrap();
    assert_eq!(f.fake.world().execs.iter().filter(|c| c.contains("--node-name")).count(), 1);
}

/// Runs one attempt of a fresh rke2 `up` through the coordinator, the
/// actors and the steps against `fake`; returns how it ended and every
/// record the live view got.
fn run_flow(fake: &Fake) -> (crate::coordinator::RunEnd, Vec<Envelope>) {
    use crate::coordinator::Coordinator;
    let dir = std::env::temp_dir().join(format!("rmm-flow-{}-{}", std::process::id(), Uuid::now_v7()));
    struct Rm(std::path::PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _rm = Rm(dir.clone());
    let mut log = SledLog::open(&dir).unwrap();
    let plan = Plan {
        distribution: rmm_events::Distribution::Rke2,
        poll_ms: 5,
        timeouts: rmm_events::Timeouts { active_s: 20, node_listed_s: 5, ..Default::default() },
        ..Plan::default()
    };
    let run = Uuid::now_v7();
    let env = |event| Envelope { seq: 0, id: Uuid::now_v7(), run, attempt: 1, actor: "coordinator".into(), cause: None, at_ms: rmm_events::now_ms(), event };
    let records = log
        .append_batch(vec![
            env(Event::RunStarted { kind: rmm_events::RunKind::Up, plan: plan.clone() }),
            env(Event::AttemptStarted { attempt: 1, command: "rmm up".into(), pid: 1, rmm_version: "0".into(), user: String::new(), host: String::new() }),
        ])
        .unwrap();
    let mut history = rmm_events::History::default();
    for r in &records {
        history.apply(&r.envelope);
    }
    let state = history.latest().unwrap().clone();
    {
        let mut w = fake.world();
        w.controllers = Some(6);
        w.register_on_exec = true;
        w.version = "v2.15.1".into();
        w.settings.insert("rke2-default-version".into(), "v1.35.1+rke2r1".into());
        let mut t = default_token(&ca_checksum("pem"));
        t.id = "c-m-12345678:default-token".into();
        w.default_token = Some(t);
    }
    let (journal, _writer) = Journal::start(log);
    let (stop_tx, stop) = watch::channel(false);
    let ctx = Arc::new(RunCtx {
        run,
        attempt: 1,
        plan: plan.clone(),
        journal,
        driver: Arc::new(fake.clone()),
        connector: Arc::new(fake.clone()),
        secrets: Arc::new(Secrets::default()),
        create_slots: Arc::new(Semaphore::new(8)),
        stop,
        undo: None,
    });
    let (sink, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let system = actix::System::new();
    let end = system.block_on(async move {
        let (end_tx, end_rx) = tokio::sync::oneshot::channel();
        let machines = plan.machine_names();
        let _addr = actix::Actor::start(Coordinator::new(ctx, state, machines, false, stop_tx, Some(sink), end_tx));
        tokio::time::timeout(std::time::Duration::from_secs(60), end_rx).await.expect("the run ends").unwrap()
    });
    let mut seen = Vec::new();
    while let Ok(r) = rx.try_recv() {
        seen.push(r.envelope);
    }
    (end, seen)
}

/// A whole rke2 `up`: every node registers once, all of them as soon as
/// the command exists, and the run completes on the v1 readiness.
#[test]
fn a_whole_rke2_run_completes_with_one_cluster_and_one_registration_per_node() {
    use crate::coordinator::RunEnd;
    let fake = Fake::default();
    let (end, seen) = run_flow(&fake);
    assert_eq!(end, RunEnd::Completed, "{:?}", seen.iter().map(|e| format!("{} {}", e.actor, e.event.summary())).collect::<Vec<_>>());
    let w = fake.world();
    assert_eq!(w.writes.iter().filter(|x| x.starts_with("create v1 cluster")).count(), 1, "{:?}", w.writes);
    let installs: Vec<&String> = w.execs.iter().filter(|c| c.contains("--node-name")).collect();
    assert_eq!(installs.len(), 6, "one installer run per node: {installs:?}");
    for node in ["master01", "master02", "master03", "worker01", "worker02", "worker03"] {
        assert_eq!(installs.iter().filter(|c| c.contains(&format!("--node-name {node} "))).count(), 1, "{node}");
    }
    assert_eq!(w.machines.len(), 6);
    assert!(w.made.values().all(|n| *n == 1) && w.made.len() == 7, "{:?}", w.made);
    // Every node was let in at once, in one batch, before any machine ran.
    let granted: Vec<usize> = seen.iter().enumerate().filter(|(_, e)| matches!(e.event, Event::JoinGranted { .. })).map(|(i, _)| i).collect();
    assert_eq!(granted.len(), 6);
    let first_running = seen.iter().position(|e| matches!(&e.event, Event::StepSucceeded { step: Step::WaitMachineRunning, .. })).unwrap();
    assert!(granted.iter().all(|i| *i < first_running), "no node waited for another's machine to run");
    // Rancher's messages reached the live view.
    let progress: Vec<String> = seen.iter().filter(|e| matches!(e.event, Event::Progress { .. })).map(|e| format!("{} {}", e.actor, e.event.summary())).collect();
    assert!(progress.iter().any(|p| p.contains("waiting for")), "{progress:?}");
    assert!(seen.iter().any(|e| matches!(&e.event, Event::StepSucceeded { step: Step::WaitClusterReady, .. })));
}

/// What an earlier attempt made without recording it (a lost log tail) is
/// found, not made again: the v1 cluster by name, a node whose machine
/// Rancher lists, an installer that already ran.
#[test]
fn a_rke2_run_over_a_world_that_already_holds_its_cluster_and_a_node_makes_nothing_twice() {
    use crate::coordinator::RunEnd;
    let fake = Fake::default();
    {
        let mut w = fake.world();
        w.v1_clusters.push(SteveObject { name: "tinysetup".into(), ..Default::default() });
        w.machines.push(machine("custom-00000000000a", "master02", "Pending"));
        // ... whose installer ran to the end on the node (its unit exists)
        w.installed_on.insert("master02".into());
    }
    let (end, seen) = run_flow(&fake);
    assert_eq!(end, RunEnd::Completed, "{:?}", seen.iter().map(|e| e.event.summary()).collect::<Vec<_>>());
    let w = fake.world();
    assert!(!w.writes.iter().any(|x| x.starts_with("create v1 cluster")), "{:?}", w.writes);
    assert_eq!(w.execs.iter().filter(|c| c.contains("--node-name master02 ")).count(), 0);
    assert_eq!(w.execs.iter().filter(|c| c.contains("--node-name")).count(), 5);
    assert_eq!(w.machines.len(), 6);
}

#[tokio::test]
async fn an_rke1_wait_renews_an_expired_api_token_and_goes_on() {
    let f = fixture();
    f.ctx.put_secret(secret::API_TOKEN, &Secret::new("token-api:s")).unwrap();
    f.ctx.put_secret(secret::ADMIN_PASSWORD, &Secret::new("admin-password-123")).unwrap();
    let mut c = cluster("c-1", "tinysetup");
    c.state = "active".into();
    f.fake.world().clusters.push(c);
    f.fake.world().expired.push("token-api:s".into());
    let st = state(
        f.ctx.run,
        &[
            (Step::CreateMachine, Outcome::MachineCreated { ip: "127.0.0.1".into() }),
            (Step::PinCa, Outcome::CaPinned { checksum: ca_checksum("pem") }),
            (Step::CreateCluster, Outcome::ClusterCreated { cluster_id: "c-1".into() }),
        ],
    );
    let ok = effect(&call(&f.ctx, "rancher", Role::Rancher, Step::WaitClusterActive, &st, None)).await.unwrap();
    assert_eq!(ok, Outcome::ClusterActive);
    assert_ne!(f.ctx.secret(secret::API_TOKEN).unwrap().expose(), "token-api:s");
}

#[test]
fn the_agent_service_on_the_node_says_whether_it_can_register() {
    use v1::AgentService::*;
    let show = |load: &str, active: &str, n: u32| v1::agent_service_of(&format!("NRestarts={n}\nLoadState={load}\nActiveState={active}\n"));
    assert_eq!(show("loaded", "active", 0), Healthy);
    assert_eq!(show("loaded", "activating", 0), Starting);
    assert!(matches!(show("loaded", "failed", 0), Dead(w) if w.contains("failed")));
    // a unit that restarts on failure: a crashing agent is `activating (auto-restart)` between tries
    assert_eq!(show("loaded", "activating", 3), Restarted(3));
    assert_eq!(show("loaded", "active", 1), Restarted(1));
    assert!(matches!(show("not-found", "inactive", 0), Dead(w) if w.contains("no rancher-system-agent service")));
    // a node without systemctl says nothing: Rancher's list decides
    assert_eq!(v1::agent_service_of("bash: systemctl: command not found\n"), Unknown);
}

// ------------------------------------------------------------------ an existing Rancher

fn existing_fixture() -> Fixture {
    let mut f = v1_fixture();
    f.ctx.plan.rancher_url = Some("https://rancher.example.com".into());
    f.ctx.put_secret(secret::BOOTSTRAP_PASSWORD, &Secret::new("given-password")).unwrap();
    f
}

#[tokio::test]
async fn on_an_existing_rancher_the_password_changes_only_while_its_first_login_is_to_be_done() {
    let f = existing_fixture();
    let st = v1_rancher_state(f.ctx.run);
    f.fake.world().settings.insert("first-login".into(), "true".into());
    let changed = effect(&call(&f.ctx, "rancher", Role::Rancher, Step::ChangePassword, &st, None)).await.unwrap();
    assert!(matches!(changed, Outcome::PasswordChanged { .. }), "{changed:?}");
    // First login done, and the admin password rmm stored works: an
    // earlier try of this run changed it (its outcome was lost).
    f.fake.world().settings.insert("first-login".into(), "false".into());
    f.fake.world().passwords = Some(vec!["admin-password-123".into()]);
    let again = effect(&call(&f.ctx, "rancher", Role::Rancher, Step::ChangePassword, &st, None)).await.unwrap();
    assert!(matches!(again, Outcome::PasswordChanged { .. }), "{again:?}");
    // First login done by someone else: the given password is the admin
    // one, and is kept; nothing is changed.
    f.fake.world().passwords = Some(vec!["given-password".into()]);
    let kept = effect(&call(&f.ctx, "rancher", Role::Rancher, Step::ChangePassword, &st, None)).await.unwrap();
    assert_eq!(kept, Outcome::PasswordKept);
}

#[tokio::test]
async fn on_an_existing_rancher_a_cluster_of_that_name_not_made_by_this_run_is_refused_never_adopted() {
    let f = existing_fixture();
    let st = v1_rancher_state(f.ctx.run);
    f.fake.world().v1_clusters.push(SteveObject { name: "tinysetup".into(), ..Default::default() });
    let e = effect(&call(&f.ctx, "rancher", Role::Rancher, Step::CreateCluster, &st, None)).await.unwrap_err();
    assert!(!e.retryable && e.message.contains("already exists") && e.message.contains("--cluster-name"), "{e:?}");
    assert!(f.fake.world().writes.is_empty());
    // One of this run's (a try whose outcome was lost) is adopted.
    f.fake.world().v1_clusters[0].annotations.insert(crate::ports::RUN_ANNOTATION.into(), f.ctx.run.to_string());
    let adopted = effect(&call(&f.ctx, "rancher", Role::Rancher, Step::CreateCluster, &st, None)).await.unwrap();
    assert_eq!(adopted, Outcome::ClusterCreated { cluster_id: "fleet-default/tinysetup".into() });
    assert!(f.fake.world().writes.is_empty());
}

#[tokio::test]
async fn on_an_existing_rancher_its_server_url_is_kept_and_set_only_when_empty() {
    let f = existing_fixture();
    let st = v1_rancher_state(f.ctx.run);
    f.fake.world().settings.insert("server-url".into(), "https://rancher.corp".into());
    let kept = effect(&call(&f.ctx, "rancher", Role::Rancher, Step::SetServerUrl, &st, None)).await.unwrap();
    assert_eq!(kept, Outcome::ServerUrlSet { url: "https://rancher.corp".into() });
    f.fake.world().settings.insert("server-url".into(), String::new());
    let set = effect(&call(&f.ctx, "rancher", Role::Rancher, Step::SetServerUrl, &st, None)).await.unwrap();
    assert_eq!(set, Outcome::ServerUrlSet { url: "https://rancher.example.com".into() });
}

#[tokio::test]
async fn a_down_deletes_only_the_cluster_its_up_run_made_with_that_run_s_secrets_and_trust() {
    let mut f = existing_fixture();
    let up = Uuid::now_v7();
    // The up run's secrets, not this run's: read through `undo`.
    f.ctx.secrets.put(&format!("{up}/{}", secret::RANCHER_CA), &Secret::new("pem")).unwrap();
    f.ctx.secrets.put(&format!("{up}/{}", secret::API_TOKEN), &Secret::new("token-up:s")).unwrap();
    f.ctx.undo = Some(crate::context::Undo { run: up, ca_trust: Some(ca_checksum("pem")), management_id: Some("c-m-abcd1234".into()) });
    let fresh = ActorState::default();
    let mut theirs = SteveObject { name: "tinysetup".into(), cluster_name: Some("c-m-abcd1234".into()), ..Default::default() };
    f.fake.world().v1_clusters.push(theirs.clone());
    let e = effect(&call(&f.ctx, "rancher", Role::Rancher, Step::DeleteCluster, &fresh, None)).await.unwrap_err();
    assert!(e.message.contains("was not made by run") && !e.retryable, "{e:?}");
    assert!(f.fake.world().writes.is_empty(), "someone else's cluster is never deleted");
    theirs.annotations.insert(crate::ports::RUN_ANNOTATION.into(), up.to_string());
    f.fake.world().v1_clusters = vec![theirs];
    let done = effect(&call(&f.ctx, "rancher", Role::Rancher, Step::DeleteCluster, &fresh, None)).await.unwrap();
    assert_eq!(done, Outcome::ClusterDeleted { management_id: "c-m-abcd1234".into() });
    assert_eq!(f.fake.world().writes, vec!["delete v1 cluster tinysetup"]);
    assert!(
        f.fake.world().trusts.iter().all(|t| *t == CaTrust::Pinned("pem".into())),
        "only the CA the up run pinned: {:?}",
        f.fake.world().trusts
    );
    // Again (a resume): nothing left to delete, nothing deleted twice.
    let again = effect(&call(&f.ctx, "rancher", Role::Rancher, Step::DeleteCluster, &fresh, None)).await.unwrap();
    assert_eq!(again, done);
    assert_eq!(f.fake.world().writes.len(), 1);
}

#[test]
fn an_existing_rancher_has_no_machine_or_server_steps_and_its_down_deletes_the_cluster_first() {
    use crate::decide::{plan_steps, EXISTING_DOWN_RANCHER_STEPS};
    let plan = Plan { distribution: rmm_events::Distribution::Rke2, rancher_url: Some("https://r".into()), ..Plan::default() };
    let up = plan_steps(Role::Rancher, false, &plan);
    for s in [Step::CreateMachine, Step::StartServer, Step::CheckServer] {
        assert!(!up.contains(&s), "{s:?}");
    }
    let own = plan_steps(Role::Rancher, false, &Plan { rancher_url: None, ..plan.clone() });
    assert_eq!(up, own.iter().copied().filter(|s| !matches!(s, Step::CreateMachine | Step::StartServer | Step::CheckServer)).collect::<Vec<_>>());
    assert_eq!(plan_steps(Role::Rancher, true, &plan), EXISTING_DOWN_RANCHER_STEPS);
    assert_eq!(plan_steps(Role::Worker, true, &plan), crate::decide::REMOVE_STEPS);
    assert_eq!(plan_steps(Role::Master, false, &plan), crate::decide::V1_NODE_STEPS);
}

/// `rmm down` on an existing Rancher deletes the `up` run's API tokens and
/// the login sessions rmm holds, the token it calls with last, and leaves
/// every other token of the server alone.
#[tokio::test]
async fn a_down_on_an_existing_rancher_deletes_the_runs_tokens_the_caller_last_and_nothing_else() {
    let mut f = v1_fixture();
    let up_run = f.ctx.run;
    f.ctx.plan.rancher_url = Some("https://127.0.0.1:8443".into());
    // The down is a run of its own that undoes `up_run` (its secrets are read under that id).
    f.ctx.undo = Some(crate::context::Undo { run: up_run, ca_trust: Some(ca_checksum("pem")), management_id: None });
    f.ctx.run = Uuid::now_v7();
    let ours = format!("rmm run {up_run}");
    {
        let mut w = f.fake.world();
        for (id, description) in [("token-api", ours.as_str()), ("token-old", ours.as_str()), ("token-login", ""), ("token-user", "the user's own"), ("token-other", "rmm run 0190")] {
            w.tokens.push((ApiToken { id: id.into(), description: description.into() }, Secret::new(format!("{id}:s"))));
        }
    }
    let st = state(f.ctx.run, &[(Step::PinCa, Outcome::CaPinned { checksum: ca_checksum("pem") })]);
    let outcome = effect(&call(&f.ctx, "rancher", Role::Rancher, Step::DeleteApiTokens, &st, None)).await.unwrap();
    assert_eq!(outcome, Outcome::ApiTokensDeleted { deleted: 3 });
    let w = f.fake.world();
    let left: Vec<&str> = w.tokens.iter().map(|(t, _)| t.id.as_str()).collect();
    assert_eq!(left, ["token-user", "token-other"], "{:?}", w.writes);
    assert_eq!(w.writes.last().map(String::as_str), Some("delete token token-api"), "the caller goes last: {:?}", w.writes);
}


// ---------------------------------------------------------------- CheckMachine

fn found(name: &str, state: MachineState) -> Machine {
    Machine { name: name.into(), cluster: Some("tinysetup".into()), state, ip: Some("10.0.0.7".into()) }
}

fn node_state(run: Uuid, agent_ran: bool) -> ActorState {
    let mut done = vec![(Step::CreateMachine, Outcome::MachineCreated { ip: "10.0.0.7".into() })];
    if agent_ran {
        done.push((Step::RunAgent, Outcome::AgentStarted));
    }
    state(run, &done)
}

#[tokio::test]
async fn check_machine_adopts_a_running_machine_at_the_address_the_driver_gives() {
    let f = v1_fixture();
    f.fake.world().found.insert("worker01".into(), found("worker01", MachineState::Running));
    let st = node_state(f.ctx.run, true);
    let ok = effect(&call(&f.ctx, "worker01", Role::Worker, Step::CheckMachine, &st, Some(&v1_join()))).await.unwrap();
    assert_eq!(ok, Outcome::MachineUp { ip: "10.0.0.7".into() });
    assert!(f.fake.world().restarted.is_empty());
}

#[tokio::test]
async fn check_machine_starts_a_stopped_machine_again_and_records_its_new_address() {
    let f = v1_fixture();
    f.fake.world().found.insert("worker01".into(), found("worker01", MachineState::Stopped));
    // Its agent never ran: nothing to wait for in Rancher.
    let st = node_state(f.ctx.run, false);
    let ok = effect(&call(&f.ctx, "worker01", Role::Worker, Step::CheckMachine, &st, Some(&v1_join()))).await.unwrap();
    assert_eq!(ok, Outcome::MachineStartedAgain { state: "stopped".into(), ip: "10.0.0.99".into() });
    assert_eq!(f.fake.world().restarted, ["worker01"]);
}

#[tokio::test]
async fn after_a_restart_check_machine_waits_until_rancher_shows_the_node_back_and_fails_at_once_on_a_failed_machine() {
    // Running with a nodeRef and Ready: back.
    let f = v1_fixture();
    let mut m = machine("custom-000000000001", "worker01", "Running");
    m.node_ref = Some("worker01".into());
    m.conditions = vec![condition("Ready", "True", "")];
    f.fake.world().machines.push(m.clone());
    f.fake.world().found.insert("worker01".into(), found("worker01", MachineState::Stopped));
    let st = node_state(f.ctx.run, true);
    let ok = effect(&call(&f.ctx, "worker01", Role::Worker, Step::CheckMachine, &st, Some(&v1_join()))).await.unwrap();
    assert!(matches!(ok, Outcome::MachineStartedAgain { .. }), "{ok:?}");

    // Not Ready (its agent did not come back): the wait ends at its timeout, naming why.
    let f = v1_fixture();
    let mut lost = m.clone();
    lost.conditions = vec![condition("Ready", "False", "Node condition Ready is Unknown: the system-agent of node worker01 is not connected")];
    f.fake.world().machines.push(lost);
    f.fake.world().found.insert("worker01".into(), found("worker01", MachineState::Stopped));
    let e = effect(&call(&f.ctx, "worker01", Role::Worker, Step::CheckMachine, &st, Some(&v1_join()))).await.unwrap_err();
    assert!(!e.retryable && e.message.contains("timed out") && e.message.contains("system-agent of node worker01 is not connected"), "{e:?}");

    // Failed in Rancher: at once, with Rancher's reason (not at the timeout).
    let f = v1_fixture();
    let mut failed = machine("custom-000000000001", "worker01", "Failed");
    failed.failure = Some("the node's disk is full".into());
    f.fake.world().machines.push(failed);
    f.fake.world().found.insert("worker01".into(), found("worker01", MachineState::Stopped));
    let e = effect(&call(&f.ctx, "worker01", Role::Worker, Step::CheckMachine, &st, Some(&v1_join()))).await.unwrap_err();
    assert!(!e.retryable && !e.message.contains("timed out") && e.message.contains("the node's disk is full"), "{e:?}");
}

#[tokio::test]
async fn a_machine_gone_after_its_agent_ran_fails_with_one_line_and_one_gone_before_is_made_again() {
    let f = v1_fixture();
    let e = effect(&call(&f.ctx, "worker01", Role::Worker, Step::CheckMachine, &node_state(f.ctx.run, true), Some(&v1_join())))
        .await
        .unwrap_err();
    assert!(!e.retryable, "{e:?}");
    assert!(e.message.contains("machine worker01 is gone") && e.message.contains("rmm down") && !e.message.contains('\n'), "{e:?}");
    assert!(f.fake.world().made.is_empty(), "not made again");

    let f = v1_fixture();
    f.fake.world().controllers = Some(6);
    let ok = effect(&call(&f.ctx, "worker01", Role::Worker, Step::CheckMachine, &node_state(f.ctx.run, false), Some(&v1_join())))
        .await
        .unwrap();
    assert!(matches!(ok, Outcome::MachineMadeAgain { .. }), "{ok:?}");
    assert_eq!(f.fake.world().made.get("worker01"), Some(&1));
}
