//! The facts rmm records. Past tense, never renamed or reordered: bincode
//! encodes the variant *index*, so new variants go at the end (and the codec
//! version goes up when a variant's fields change; see `codec`).
//!
//! Every side effect is a [`Step`]: `StepStarted` (the intent) is durable
//! before the effect starts, and exactly one of `StepSucceeded` /
//! `StepFailed` closes it. Waits are steps too (they have no effect, but
//! they have a start, an end and a timeout, and the timeline shows them).

use serde::{Deserialize, Serialize};

use crate::Plan;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Rancher,
    Master,
    Worker,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Rancher => "rancher",
            Role::Master => "master",
            Role::Worker => "worker",
        }
    }
}

/// What a run does to the world: build the cluster, or remove it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunKind {
    Up,
    Down,
}

/// A secret is never written to the log: events name it and give the first
/// 12 hex digits of its SHA-256, so two events can be seen to refer to the
/// same value without revealing it. The value lives in the state dir's
/// owner-only secrets file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRef {
    pub name: String,
    pub fingerprint: String,
}

/// One unit of work of one actor. Imperative, like the messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Create this actor's machine through the driver.
    CreateMachine,
    /// `docker run … rancher/rancher` on the rancher machine.
    StartServer,
    /// Poll `GET /ping` until it answers `pong`.
    WaitReady,
    /// Read `/v3/settings/cacerts` once and pin its checksum.
    PinCa,
    /// Log in as `admin` with the bootstrap password.
    Login,
    /// `changepassword` to a generated password (stored before the call).
    ChangePassword,
    /// `POST /v3/token` with a description that names the run.
    CreateApiToken,
    /// `PUT /v3/settings/server-url`.
    SetServerUrl,
    /// `POST /v3/cluster` (a custom RKE cluster).
    CreateCluster,
    /// Find the cluster's registration token, or create one.
    CreateRegistrationToken,
    /// Poll the registration token until its `nodeCommand` is filled in.
    WaitNodeCommand,
    /// Poll the cluster until it is `active`.
    WaitClusterActive,
    /// Run `nodeCommand` with this node's address and roles on its machine.
    RunAgent,
    /// Poll `/v3/nodes` until Rancher lists this node.
    WaitNodeListed,
    /// Poll `/v3/nodes` until this node is `active`.
    WaitNodeActive,
    /// Remove this actor's machine (`rmm down`).
    RemoveMachine,
    /// Once per attempt, after the server was started: is its container
    /// running and answering? Started again if not.
    CheckServer,
    /// `GET /rancherversion`: refuses a distribution this server line
    /// cannot make (rke1 on 2.12+), before anything is made in Rancher.
    CheckRancherVersion,
    /// Authenticated `/v1` reads that succeed twice in a row: Rancher's
    /// webhooks are up (reference/rancher-current.md §2.1).
    WaitApiReady,
    /// The Kubernetes version: the plan's, checked against what the server
    /// offers, or the server's default.
    ChooseKubernetesVersion,
    /// Poll the v1 cluster until `status.clusterName` (`c-m-…`) is set.
    WaitClusterName,
    /// Poll this node's CAPI machine until it is `Running` with a `nodeRef`.
    WaitMachineRunning,
    /// Poll the v1 cluster (and its management cluster) until ready as
    /// Rancher's own tests define it (§2.9).
    WaitClusterReady,
    /// `rmm down` of a run on an existing Rancher: delete the cluster in
    /// Rancher and wait until both the v1 (provisioning) cluster and its
    /// management cluster are gone. Never touches the server itself.
    DeleteCluster,
    /// Once per attempt, for a node: is its machine there and running?
    /// Running: adopted. Stopped (`docker kill`, a reboot): started again
    /// through the driver, its address read anew and recorded, and — when
    /// its agent had run — waited for until Rancher shows the node back.
    /// Gone: made again only while its agent never ran; else the run
    /// fails with one line (a second registration of the node).
    CheckMachine,
    /// A scale down (issue 11): delete this node in Rancher (v1: its CAPI
    /// machine; rke1: its v3 node) and wait until Rancher has let it go
    /// (finalizers done, 404). Its machine is removed only after that.
    DeleteNode,
    /// `rmm down` of a run on an existing Rancher, after `DeleteCluster`:
    /// the run's credentials in that Rancher are deleted (its API tokens,
    /// its login sessions), so nothing rmm made there outlives the run.
    DeleteApiTokens,
}

impl Step {
    /// Steps that change the world. Waits and reads only look.
    pub fn is_effect(self) -> bool {
        !matches!(
            self,
            Step::WaitReady
                | Step::PinCa
                | Step::WaitNodeCommand
                | Step::WaitClusterActive
                | Step::WaitNodeListed
                | Step::WaitNodeActive
                | Step::CheckRancherVersion
                | Step::WaitApiReady
                | Step::ChooseKubernetesVersion
                | Step::WaitClusterName
                | Step::WaitMachineRunning
                | Step::WaitClusterReady
        )
    }

    /// Steps that hold for one attempt only: a new attempt runs them again
    /// (the fold forgets their success at `AttemptStarted`).
    pub fn once_per_attempt(self) -> bool {
        matches!(self, Step::CheckServer | Step::CheckMachine)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Step::CreateMachine => "create_machine",
            Step::StartServer => "start_server",
            Step::WaitReady => "wait_ready",
            Step::PinCa => "pin_ca",
            Step::Login => "login",
            Step::ChangePassword => "change_password",
            Step::CreateApiToken => "create_api_token",
            Step::SetServerUrl => "set_server_url",
            Step::CreateCluster => "create_cluster",
            Step::CreateRegistrationToken => "create_registration_token",
            Step::WaitNodeCommand => "wait_node_command",
            Step::WaitClusterActive => "wait_cluster_active",
            Step::RunAgent => "run_agent",
            Step::WaitNodeListed => "wait_node_listed",
            Step::WaitNodeActive => "wait_node_active",
            Step::RemoveMachine => "remove_machine",
            Step::CheckServer => "check_server",
            Step::CheckRancherVersion => "check_rancher_version",
            Step::WaitApiReady => "wait_api_ready",
            Step::ChooseKubernetesVersion => "choose_kubernetes_version",
            Step::WaitClusterName => "wait_cluster_name",
            Step::WaitMachineRunning => "wait_machine_running",
            Step::WaitClusterReady => "wait_cluster_ready",
            Step::DeleteCluster => "delete_cluster",
            Step::CheckMachine => "check_machine",
            Step::DeleteNode => "delete_node",
            Step::DeleteApiTokens => "delete_api_tokens",
        }
    }
}

/// What a finished step produced. Secrets appear only as [`SecretRef`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    MachineCreated { ip: String },
    ServerStarted { image: String },
    Ready,
    CaPinned { checksum: String },
    LoggedIn { token: SecretRef },
    PasswordChanged { password: SecretRef },
    ApiTokenCreated { token_id: String, token: SecretRef },
    ServerUrlSet { url: String },
    ClusterCreated { cluster_id: String },
    RegistrationTokenCreated { token_id: String },
    NodeCommandReady { command: SecretRef },
    ClusterActive,
    AgentStarted,
    NodeListed { node_id: String },
    NodeActive,
    MachineRemoved,
    /// `CheckServer`: the server was running and answered.
    ServerRunning,
    /// `CheckServer`: the server was not running (`state` is what the
    /// machine said: `exited`, `absent` …) and was started again.
    ServerRestarted { state: String },
    /// `CheckRancherVersion`: what `/rancherversion` said (`v2.15.1`).
    RancherVersion { version: String },
    /// `WaitApiReady`: two rounds of authenticated `/v1` reads succeeded.
    ApiReady,
    /// `ChooseKubernetesVersion`: the version the cluster is made with;
    /// `server_default` when the plan named none.
    KubernetesVersionChosen { version: String, server_default: bool },
    /// `WaitClusterName`: the management cluster id (`c-m-xxxxxxxx`).
    ClusterNamed { management_id: String },
    /// `WaitMachineRunning`: the node's CAPI machine (`custom-<hex>`) is
    /// `Running` and names its Kubernetes node.
    MachineRunning { machine: String, node: String },
    /// `WaitClusterReady`: ready, Ready=True, Provisioned=True, the
    /// management cluster Ready.
    ClusterReady,
    /// `PinCa`: the server's `cacerts` is empty (a publicly trusted
    /// certificate): it is verified against the system's trust roots.
    CaSystemRoots,
    /// `ChangePassword` on an existing Rancher whose first login was done
    /// already: the password given is the admin password; nothing changed.
    PasswordKept,
    /// `DeleteCluster`: the v1 cluster and its management cluster
    /// (`management_id`, empty when it was never named) are gone.
    ClusterDeleted { management_id: String },
    /// `CheckMachine`: the node's machine was running (adopted), at `ip`.
    MachineUp { ip: String },
    /// `CheckMachine`: the node's machine was `state` (`stopped`) and was
    /// started again; `ip` is its address now (it may have changed). When
    /// its agent had run, Rancher showed the node back before this.
    MachineStartedAgain { state: String, ip: String },
    /// `CheckMachine`: the node's machine was gone before its agent ever
    /// ran, and was made again, at `ip`.
    MachineMadeAgain { ip: String },
    /// `CreateMachine` on a host that already exists (the ssh driver): the
    /// host was claimed, and on this first contact its SSH host key had
    /// the fingerprint `host_key` (`SHA256:…`, as `ssh-keygen -l` prints
    /// it). Pinned: a host that later offers another key is refused.
    HostClaimed { ip: String, host_key: String },
    /// `DeleteNode`: Rancher let the node go (`machine`: the CAPI machine,
    /// or the v3 node id on rke1; empty when Rancher had none left).
    NodeDeleted { machine: String },
    /// `DeleteApiTokens`: `deleted` tokens of the run (API tokens and
    /// login sessions) were deleted; none of them is left in Rancher.
    ApiTokensDeleted { deleted: u32 },
}

/// How a step's outcome was established.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// The step ran and did it.
    Done,
    /// A resume found the effect already in the world and adopted it.
    Adopted,
}

/// The body of an envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// First event of a run: what it is asked to do.
    RunStarted { kind: RunKind, plan: Plan },
    /// A process began working on the run (1 for the first, +1 per resume):
    /// who typed what, where. (`user` and `host` since format version 2;
    /// empty when upcast from version 1.)
    AttemptStarted { attempt: u32, command: String, pid: u32, rmm_version: String, user: String, host: String },
    /// Intent: the step is about to run. Durable before the effect starts.
    StepStarted { step: Step, try_no: u32, detail: String },
    /// Outcome: the step is done.
    StepSucceeded { step: Step, outcome: Outcome, via: Via },
    /// Outcome: the step failed. `retryable` failures are tried again after
    /// a backoff, until `Retry::max_tries`; then the run fails.
    StepFailed { step: Step, try_no: u32, error: String, retryable: bool },
    /// The coordinator let a node run its agent (masters one at a time).
    JoinGranted { node: String },
    /// Every actor is done.
    RunCompleted,
    /// A step failed for good; resume after fixing the cause.
    RunFailed { actor: String, step: Option<Step>, reason: String },
    /// The process was asked to stop (Ctrl-C, SIGTERM) and stopped cleanly.
    AttemptInterrupted { reason: String },
    /// A wait saw Rancher's own progress message change (the planner's
    /// `waiting for probes: …`, a machine's phase): recorded so `rmm log`
    /// shows why a step took long. Never holds a secret.
    Progress { step: Step, message: String },
    /// A completed `up` run is asked for another topology (`rmm up
    /// --workers 5`): the run goes on under `plan` (same run, same
    /// secrets, a new attempt follows). Nodes the new plan drops are
    /// deleted in Rancher and removed; nodes it adds are made.
    PlanChanged { plan: Plan },
    /// Outcome: the step was stopped by Ctrl-C / SIGTERM before it ended
    /// (a wait cut short). Not a failed try: the resume runs it again.
    StepInterrupted { step: Step, try_no: u32, reason: String },
}

impl Event {
    /// The variant name, as `rmm log` shows it in `kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::RunStarted { .. } => "RunStarted",
            Event::AttemptStarted { .. } => "AttemptStarted",
            Event::StepStarted { .. } => "StepStarted",
            Event::StepSucceeded { .. } => "StepSucceeded",
            Event::StepFailed { .. } => "StepFailed",
            Event::JoinGranted { .. } => "JoinGranted",
            Event::RunCompleted => "RunCompleted",
            Event::RunFailed { .. } => "RunFailed",
            Event::AttemptInterrupted { .. } => "AttemptInterrupted",
            Event::Progress { .. } => "Progress",
            Event::PlanChanged { .. } => "PlanChanged",
            Event::StepInterrupted { .. } => "StepInterrupted",
        }
    }

    /// One short line for `rmm log`.
    pub fn summary(&self) -> String {
        match self {
            Event::RunStarted { kind, plan } => format!(
                "{} cluster {} ({} masters, {} workers, driver {})",
                match kind {
                    RunKind::Up => "up",
                    RunKind::Down => "down",
                },
                plan.cluster_name,
                plan.masters,
                plan.workers,
                plan.driver
            ),
            Event::AttemptStarted { attempt, command, pid, user, host, .. } => {
                let who = match (user.is_empty(), host.is_empty()) {
                    (false, false) => format!("{user}@{host} "),
                    (false, true) => format!("{user} "),
                    (true, false) => format!("@{host} "),
                    (true, true) => String::new(),
                };
                format!("attempt {attempt} by {who}pid {pid}: {command}")
            }
            Event::StepStarted { step, try_no, detail } => {
                let mut s = format!("{} (try {try_no})", step.as_str());
                if !detail.is_empty() {
                    s.push_str(": ");
                    s.push_str(detail);
                }
                s
            }
            Event::StepSucceeded { step, outcome, via } => {
                let via = match via {
                    Via::Done => "",
                    Via::Adopted => " [adopted]",
                };
                format!("{} ok{via}{}", step.as_str(), outcome_summary(outcome))
            }
            // A retryable failure promises nothing: the attempt may end
            // (another node failed, Ctrl-C) before the next try; that try,
            // when it comes, is its own `StepStarted`.
            Event::StepFailed { step, try_no, error, retryable } => format!(
                "{} failed (try {try_no}{}): {error}",
                step.as_str(),
                if *retryable { "" } else { ", gave up" }
            ),
            Event::JoinGranted { node } => format!("{node} may join"),
            Event::RunCompleted => "run completed".into(),
            Event::RunFailed { actor, step, reason } => match step {
                Some(step) => format!("run failed at {actor}/{}: {reason}", step.as_str()),
                None => format!("run failed at {actor}: {reason}"),
            },
            Event::AttemptInterrupted { reason } => format!("interrupted: {reason}"),
            Event::Progress { step, message } => format!("{}: {message}", step.as_str()),
            Event::PlanChanged { plan } => {
                format!("scale cluster {} to {} masters, {} workers", plan.cluster_name, plan.masters, plan.workers)
            }
            Event::StepInterrupted { step, try_no, reason } => {
                format!("{} interrupted (try {try_no}): {reason}", step.as_str())
            }
        }
    }
}

fn outcome_summary(outcome: &Outcome) -> String {
    match outcome {
        Outcome::MachineCreated { ip } => format!(": ip {ip}"),
        Outcome::ServerStarted { image } => format!(": {image}"),
        Outcome::CaPinned { checksum } => format!(": ca sha256 {}", &checksum[..checksum.len().min(16)]),
        Outcome::LoggedIn { token } => format!(": token {}", token.fingerprint),
        Outcome::PasswordChanged { password } => format!(": password {}", password.fingerprint),
        Outcome::ApiTokenCreated { token_id, .. } => format!(": {token_id}"),
        Outcome::ServerUrlSet { url } => format!(": {url}"),
        Outcome::ClusterCreated { cluster_id } => format!(": {cluster_id}"),
        Outcome::RegistrationTokenCreated { token_id } => format!(": {token_id}"),
        Outcome::NodeCommandReady { command } => format!(": command {}", command.fingerprint),
        Outcome::NodeListed { node_id } => format!(": {node_id}"),
        Outcome::ServerRunning => ": running and answering".into(),
        Outcome::ServerRestarted { state } => format!(": was {state}, started again"),
        Outcome::RancherVersion { version } => format!(": Rancher {version}"),
        Outcome::KubernetesVersionChosen { version, server_default } => {
            format!(": {version}{}", if *server_default { " (the server's default)" } else { "" })
        }
        Outcome::ClusterNamed { management_id } => format!(": {management_id}"),
        Outcome::MachineRunning { machine, node } => format!(": machine {machine} running as node {node}"),
        Outcome::CaSystemRoots => ": cacerts empty; verified against the system's trust roots".into(),
        Outcome::PasswordKept => ": the given password is the admin password (first login done before); kept".into(),
        Outcome::ClusterDeleted { management_id } if management_id.is_empty() => ": gone".into(),
        Outcome::ClusterDeleted { management_id } => format!(": gone, and management cluster {management_id}"),
        Outcome::MachineUp { ip } => format!(": running, ip {ip}"),
        Outcome::MachineStartedAgain { state, ip } => format!(": was {state}, started again, ip {ip}"),
        Outcome::MachineMadeAgain { ip } => format!(": was gone before its agent ran, made again, ip {ip}"),
        Outcome::HostClaimed { ip, host_key } => format!(": ip {ip}, host key {host_key}"),
        Outcome::NodeDeleted { machine } if machine.is_empty() => ": gone from Rancher".into(),
        Outcome::NodeDeleted { machine } => format!(": {machine} gone from Rancher"),
        Outcome::ApiTokensDeleted { deleted } => format!(": {deleted} deleted, none of the run's left"),
        Outcome::Ready
        | Outcome::ClusterActive
        | Outcome::AgentStarted
        | Outcome::NodeActive
        | Outcome::MachineRemoved
        | Outcome::ApiReady
        | Outcome::ClusterReady => String::new(),
    }
}
