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
    ApiToken, ClusterInfo, ExecOutput, Machine, MachineDriver, NodeInfo, RancherConnector, RegistrationToken, SecretStore,
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
        Ok("pem".into())
    }
    async fn login(&self, _: &str, _: &Secret) -> Result<Secret, ApiError> {
        Ok(Secret::new("token-login:s"))
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
    async fn set_setting(&self, _: &Secret, _: &str, _: &str) -> Result<(), ApiError> {
        Ok(())
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
    async fn get_cluster(&self, _: &Secret, id: &str) -> Result<ClusterInfo, ApiError> {
        self.world().clusters.iter().find(|c| c.id == id).cloned().ok_or(ApiError::Status { status: 404, code: None, message: id.into() })
    }
    async fn list_registration_tokens(&self, _: &Secret, _: &str) -> Result<Vec<RegistrationToken>, ApiError> {
        Ok(Vec::new())
    }
    async fn create_registration_token(&self, _: &Secret, cluster_id: &str) -> Result<RegistrationToken, ApiError> {
        Ok(RegistrationToken { id: format!("{cluster_id}:crt-1"), cluster_id: cluster_id.into(), node_command: None })
    }
    async fn get_registration_token(&self, _: &Secret, id: &str) -> Result<RegistrationToken, ApiError> {
        Err(ApiError::Status { status: 404, code: None, message: id.into() })
    }
    async fn list_nodes(&self, _: &Secret, _: &str) -> Result<Vec<NodeInfo>, ApiError> {
        Ok(self.world().nodes.clone())
    }
}

impl RancherConnector for Fake {
    fn connect(&self, _: &str, _: CaTrust) -> Result<Arc<dyn RancherApi>, ApiError> {
        Ok(Arc::new(self.clone()))
    }
}

#[async_trait]
impl MachineDriver for Fake {
    async fn create(&self, spec: &MachineSpec) -> Result<Machine, DriverError> {
        Err(DriverError::Permanent(format!("not in this test: create {}", spec.name)))
    }
    async fn inspect(&self, _: &str) -> Result<Option<Machine>, DriverError> {
        Ok(None)
    }
    async fn list(&self, _: &str) -> Result<Vec<Machine>, DriverError> {
        Ok(Vec::new())
    }
    async fn exec(&self, _: &str, command: &str) -> Result<ExecOutput, DriverError> {
        let mut w = self.world();
        w.execs.push(command.to_string());
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
        plan: Plan::default(),
        journal,
        driver: Arc::new(fake.clone()),
        connector: Arc::new(fake.clone()),
        secrets: Arc::new(Secrets::default()),
        create_slots: Arc::new(Semaphore::new(1)),
        stop,
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
    StepCall { ctx, actor, role, step, try_no: 1, state, join }
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
