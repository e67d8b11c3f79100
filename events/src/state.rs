//! Folding events into state. `apply` is total and makes no decisions; the
//! actors decide from this state (`rmm_actors::decide`), and `status`,
//! `replay` and `log` show it.

use std::collections::{BTreeMap, BTreeSet};

use uuid::Uuid;

use crate::{Envelope, Event, Outcome, Plan, Role, RunKind, Step};

/// Where one step of one actor stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepState {
    /// The intent is recorded and no outcome yet: the step is running, or a
    /// crash left it in doubt (a resume asks the world).
    InFlight { try_no: u32, attempt: u32, started_ms: i64 },
    Succeeded { outcome: Outcome, started_ms: i64, ended_ms: i64, tries: u32 },
    Failed { try_no: u32, attempt: u32, error: String, retryable: bool, started_ms: i64, ended_ms: i64 },
    /// Stopped by Ctrl-C / SIGTERM before it ended: not a failed try; the
    /// next attempt runs it again.
    Interrupted { try_no: u32, attempt: u32, started_ms: i64, ended_ms: i64 },
}

/// The folded history of one actor within a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActorState {
    pub steps: BTreeMap<Step, StepState>,
    /// Id of this actor's latest event: the cause of its next one.
    pub last_event: Option<Uuid>,
    /// When the actor's first event was recorded, and its latest.
    pub first_ms: Option<i64>,
    pub last_ms: Option<i64>,
    /// Per step: (attempt, tries within that attempt), for retry budgets.
    pub attempt_tries: BTreeMap<Step, (u32, u32)>,
    /// Rancher's latest progress message for the step in flight (the
    /// planner's `waiting for probes: …`), from `Event::Progress`; cleared
    /// when a step starts or ends.
    pub progress: Option<String>,
    /// The machine's address as last recorded: its create, or a
    /// `CheckMachine` that found it (started again, its address may have
    /// changed). Kept across attempts, unlike `CheckMachine`'s success.
    pub address: Option<String>,
    /// The rancher actor of a run whose topology changed (a scale,
    /// `PlanChanged`): its wait for the cluster to be ready again runs
    /// only once every node of the new plan is in and every node it drops
    /// is gone ([`ActorState::cluster_wait_after_nodes`]).
    pub rescaled: bool,
}

impl ActorState {
    pub fn apply(&mut self, env: &Envelope) {
        self.last_event = Some(env.id);
        self.first_ms.get_or_insert(env.at_ms);
        self.last_ms = Some(env.at_ms);
        match &env.event {
            Event::StepStarted { .. }
            | Event::StepSucceeded { .. }
            | Event::StepFailed { .. }
            | Event::StepInterrupted { .. } => self.progress = None,
            Event::Progress { message, .. } => self.progress = Some(message.clone()),
            _ => {}
        }
        match &env.event {
            Event::StepStarted { step, try_no, .. } => {
                let tries = self.attempt_tries.entry(*step).or_insert((env.attempt, 0));
                if tries.0 != env.attempt {
                    *tries = (env.attempt, 0);
                }
                tries.1 += 1;
                self.steps.insert(
                    *step,
                    StepState::InFlight { try_no: *try_no, attempt: env.attempt, started_ms: env.at_ms },
                );
            }
            Event::StepSucceeded { step, outcome, .. } => {
                match outcome {
                    Outcome::MachineCreated { ip }
                    | Outcome::MachineUp { ip }
                    | Outcome::MachineStartedAgain { ip, .. }
                    | Outcome::MachineMadeAgain { ip }
                    | Outcome::HostClaimed { ip, .. } => self.address = Some(ip.clone()),
                    _ => {}
                }
                let (started_ms, tries) = match self.steps.get(step) {
                    Some(StepState::InFlight { started_ms, try_no, .. }) => (*started_ms, *try_no),
                    _ => (env.at_ms, 1),
                };
                self.steps.insert(
                    *step,
                    StepState::Succeeded { outcome: outcome.clone(), started_ms, ended_ms: env.at_ms, tries },
                );
                // A server that was down (or made again) and is back: the
                // cluster it reports was ready before it went; whether it
                // is ready now is asked again before the attempt can end
                // (agents reconnect within Rancher's grace; a cluster that
                // does not come back fails the wait with its reason).
                if let Outcome::ServerRestarted { .. } = outcome {
                    self.forget_cluster_wait();
                }
            }
            Event::StepFailed { step, try_no, error, retryable } => {
                let started_ms = match self.steps.get(step) {
                    Some(StepState::InFlight { started_ms, .. }) => *started_ms,
                    _ => env.at_ms,
                };
                self.steps.insert(
                    *step,
                    StepState::Failed {
                        try_no: *try_no,
                        attempt: env.attempt,
                        error: error.clone(),
                        retryable: *retryable,
                        started_ms,
                        ended_ms: env.at_ms,
                    },
                );
            }
            Event::StepInterrupted { step, try_no, .. } => {
                let started_ms = match self.steps.get(step) {
                    Some(StepState::InFlight { started_ms, .. }) => *started_ms,
                    _ => env.at_ms,
                };
                self.steps.insert(
                    *step,
                    StepState::Interrupted { try_no: *try_no, attempt: env.attempt, started_ms, ended_ms: env.at_ms },
                );
            }
            _ => {}
        }
    }

    /// The final wait for the cluster (ready on rke2/k3s, active on rke1)
    /// of a rancher actor whose run changed topology: a cluster Rancher
    /// called ready before nodes joined or left says nothing about it now
    /// (the planner reconfigures it: `configuring worker node(s)`,
    /// `waiting for cluster agent to connect`, reference/rancher-current.md
    /// §2.8), so its success is forgotten and the wait runs again, after
    /// the nodes (the coordinator lets it start).
    fn rescale(&mut self) {
        self.forget_cluster_wait();
        self.rescaled = true;
    }

    /// The final wait for the cluster (ready, or active on rke1) runs
    /// again: a success of it, if any, is forgotten.
    fn forget_cluster_wait(&mut self) {
        for step in [Step::WaitClusterReady, Step::WaitClusterActive] {
            if matches!(self.steps.get(&step), Some(StepState::Succeeded { .. })) {
                self.steps.remove(&step);
            }
        }
    }

    /// Whether `step` of this actor waits for the coordinator to let it
    /// start: the final cluster wait of a rescaled run ([`Self::rescale`]).
    pub fn cluster_wait_after_nodes(&self, step: Step) -> bool {
        self.rescaled && matches!(step, Step::WaitClusterReady | Step::WaitClusterActive)
    }

    /// A new attempt: the success of a step that holds for one attempt only
    /// ([`Step::once_per_attempt`]) says nothing about now. (One in flight
    /// stays: the resume reconciles it, closing its intent.)
    pub fn new_attempt(&mut self) {
        self.steps.retain(|step, state| !(step.once_per_attempt() && matches!(state, StepState::Succeeded { .. })));
    }

    /// Tries of `step` within `attempt`.
    pub fn tries_in_attempt(&self, step: Step, attempt: u32) -> u32 {
        match self.attempt_tries.get(&step) {
            Some((a, n)) if *a == attempt => *n,
            _ => 0,
        }
    }

    /// The highest try number of `step` so far (0 if never started).
    pub fn last_try(&self, step: Step) -> u32 {
        match self.steps.get(&step) {
            Some(StepState::InFlight { try_no, .. })
            | Some(StepState::Failed { try_no, .. })
            | Some(StepState::Interrupted { try_no, .. }) => *try_no,
            Some(StepState::Succeeded { tries, .. }) => *tries,
            None => 0,
        }
    }

    pub fn step(&self, step: Step) -> Option<&StepState> {
        self.steps.get(&step)
    }

    pub fn outcome(&self, step: Step) -> Option<&Outcome> {
        match self.steps.get(&step) {
            Some(StepState::Succeeded { outcome, .. }) => Some(outcome),
            _ => None,
        }
    }

    pub fn done(&self, step: Step) -> bool {
        self.outcome(step).is_some()
    }

    /// The machine's address, once created: as last recorded (a machine
    /// started again may have another than at its create).
    pub fn ip(&self) -> Option<&str> {
        self.address.as_deref()
    }

    /// The step in flight, if any.
    pub fn in_flight(&self) -> Option<(Step, u32)> {
        self.steps.iter().find_map(|(s, st)| match st {
            StepState::InFlight { try_no, .. } => Some((*s, *try_no)),
            _ => None,
        })
    }
}

/// How a run stands, as the log tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    /// An attempt is (or was, until a crash) working on it.
    Running,
    Completed,
    Failed,
    /// The last attempt stopped cleanly before the end (Ctrl-C, SIGTERM).
    Interrupted,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Interrupted => "interrupted",
        }
    }
}

/// The folded state of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunState {
    pub id: Uuid,
    pub kind: RunKind,
    pub plan: Plan,
    pub status: RunStatus,
    /// Number of attempts so far.
    pub attempts: u32,
    pub actors: BTreeMap<String, ActorState>,
    /// Nodes the coordinator let join.
    pub granted: BTreeSet<String>,
    /// The reason of the last `RunFailed`.
    pub failure: Option<String>,
    pub started_ms: i64,
    pub ended_ms: Option<i64>,
    /// Seq of the first and last event of the run.
    pub first_seq: u64,
    pub last_seq: u64,
}

impl RunState {
    fn new(env: &Envelope, kind: RunKind, plan: Plan) -> RunState {
        RunState {
            id: env.run,
            kind,
            plan,
            status: RunStatus::Running,
            attempts: 0,
            actors: BTreeMap::new(),
            granted: BTreeSet::new(),
            failure: None,
            started_ms: env.at_ms,
            ended_ms: None,
            first_seq: env.seq,
            last_seq: env.seq,
        }
    }

    pub fn apply(&mut self, env: &Envelope) {
        debug_assert_eq!(env.run, self.id, "event of another run applied");
        self.last_seq = env.seq;
        match &env.event {
            Event::RunStarted { .. } => {}
            Event::AttemptStarted { attempt, .. } => {
                self.attempts = *attempt;
                self.status = RunStatus::Running;
                self.ended_ms = None;
                for actor in self.actors.values_mut() {
                    actor.new_attempt();
                }
            }
            Event::JoinGranted { node } => {
                self.granted.insert(node.clone());
            }
            Event::RunCompleted => {
                self.status = RunStatus::Completed;
                self.ended_ms = Some(env.at_ms);
            }
            Event::RunFailed { reason, .. } => {
                self.status = RunStatus::Failed;
                self.failure = Some(reason.clone());
                self.ended_ms = Some(env.at_ms);
            }
            Event::AttemptInterrupted { .. } => {
                self.status = RunStatus::Interrupted;
                self.ended_ms = Some(env.at_ms);
            }
            Event::PlanChanged { plan } => {
                self.plan = plan.clone();
                self.status = RunStatus::Running;
                self.ended_ms = None;
                self.failure = None;
                // A node the new plan brings back after an earlier scale
                // removed it starts afresh (a new machine).
                for (name, _) in plan.node_names() {
                    if self.actors.get(&name).is_some_and(|a| a.done(Step::RemoveMachine)) {
                        self.actors.remove(&name);
                        self.granted.remove(&name);
                    }
                }
                if let Some(rancher) = self.actors.get_mut("rancher") {
                    rancher.rescale();
                }
            }
            Event::StepStarted { .. }
            | Event::StepSucceeded { .. }
            | Event::StepFailed { .. }
            | Event::Progress { .. }
            | Event::StepInterrupted { .. } => {}
        }
        self.actors.entry(env.actor.clone()).or_default().apply(env);
    }

    pub fn actor(&self, name: &str) -> Option<&ActorState> {
        self.actors.get(name)
    }

    /// Whether the run still has work to do.
    pub fn finished(&self) -> bool {
        self.status == RunStatus::Completed
    }

    /// Every machine of the plan with its role, `rancher` first.
    pub fn machines(&self) -> Vec<(String, Role)> {
        self.plan.machine_names()
    }

    /// Nodes a scale dropped from the plan whose machine is not removed
    /// yet, in the order they go: workers, then masters, the
    /// highest-numbered first (issue 11).
    pub fn removals(&self) -> Vec<(String, Role)> {
        let planned: BTreeSet<String> = self.plan.machine_names().into_iter().map(|(n, _)| n).collect();
        let mut out: Vec<(String, Role)> = self
            .actors
            .iter()
            .filter(|(name, a)| !planned.contains(*name) && a.step(Step::CreateMachine).is_some() && !a.done(Step::RemoveMachine))
            .filter_map(|(name, _)| node_role(name).map(|r| (name.clone(), r)))
            .collect();
        // Workers before masters; within a role, the highest number first.
        out.sort_by(|(a, ra), (b, rb)| rb.cmp(ra).then_with(|| b.cmp(a)));
        out
    }

    /// Every actor an attempt of this run drives: the plan's machines,
    /// then the nodes a scale removes ([`RunState::removals`]).
    pub fn attempt_actors(&self) -> Vec<(String, Role)> {
        let mut all = self.plan.machine_names();
        if self.kind == RunKind::Up {
            all.extend(self.removals());
        }
        all
    }

    /// `https://…` of the Rancher server, once `server-url` is set; on an
    /// existing Rancher, the `--rancher-url` rmm talks to (its
    /// `server-url`, which nodes use, may name it otherwise).
    pub fn rancher_url(&self) -> Option<&str> {
        if let Some(url) = &self.plan.rancher_url {
            return Some(url);
        }
        match self.actor("rancher")?.outcome(Step::SetServerUrl) {
            Some(Outcome::ServerUrlSet { url }) => Some(url),
            _ => None,
        }
    }

    /// The cluster's id in Rancher: the management id (`c-m-…`) of a v1
    /// cluster once known, else what the create step returned (`c-xxxxx`
    /// for rke1; `fleet-default/<name>` for a v1 cluster).
    pub fn cluster_id(&self) -> Option<&str> {
        if let Some(Outcome::ClusterNamed { management_id }) = self.actor("rancher")?.outcome(Step::WaitClusterName) {
            return Some(management_id);
        }
        match self.actor("rancher")?.outcome(Step::CreateCluster) {
            Some(Outcome::ClusterCreated { cluster_id }) => Some(cluster_id),
            _ => None,
        }
    }

    /// What nodes are told to trust: the pinned CA's checksum, or `""` for
    /// a server verified against the system's roots (empty `cacerts`).
    pub fn ca_trust(&self) -> Option<&str> {
        match self.actor("rancher")?.outcome(Step::PinCa) {
            Some(Outcome::CaPinned { checksum }) => Some(checksum),
            Some(Outcome::CaSystemRoots) => Some(""),
            _ => None,
        }
    }

    pub fn ca_checksum(&self) -> Option<&str> {
        match self.actor("rancher")?.outcome(Step::PinCa) {
            Some(Outcome::CaPinned { checksum }) => Some(checksum),
            _ => None,
        }
    }
}

/// The role a node's actor name gives (`master03`, `worker12`).
pub fn node_role(name: &str) -> Option<Role> {
    let digits = |rest: &str| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit());
    match name {
        n if n.strip_prefix("master").is_some_and(digits) => Some(Role::Master),
        n if n.strip_prefix("worker").is_some_and(digits) => Some(Role::Worker),
        _ => None,
    }
}

/// Folds a whole log: every run, newest last. The latest run is kept whole;
/// earlier ones too (a log holds few runs; a million events are still one
/// or a few runs, and per-actor state is bounded by the steps).
#[derive(Debug, Clone, Default)]
pub struct History {
    pub runs: Vec<RunState>,
}

impl History {
    pub fn apply(&mut self, env: &Envelope) {
        if let Event::RunStarted { kind, plan } = &env.event {
            self.runs.push(RunState::new(env, *kind, plan.clone()));
        }
        match self.runs.iter_mut().rev().find(|r| r.id == env.run) {
            Some(run) => run.apply(env),
            None => panic!("seq {}: event of run {} before its RunStarted", env.seq, env.run),
        }
    }

    pub fn latest(&self) -> Option<&RunState> {
        self.runs.last()
    }

    /// The latest `up` run.
    pub fn latest_up(&self) -> Option<&RunState> {
        self.runs.iter().rev().find(|r| r.kind == RunKind::Up)
    }
}
