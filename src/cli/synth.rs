//! `rmm synth --events N` (hidden): writes a synthetic log of exactly N
//! events into an empty state dir, for benchmarks and tests of long logs.
//!
//! The mix is what real runs record, seeded so a store can be made again:
//! `up` runs of `--masters`/`--workers` where Rancher's chain and the node
//! machines interleave, masters join one at a time and workers after them;
//! about one step in ten fails once and is retried; one run in eight
//! crashes (an intent without outcome) and is resumed, the resume adopting
//! the effect; one in twenty fails for good and is resumed; one completed
//! `up` in three is followed by a `down` and a new `up`. Causes link every
//! event to the one that made it happen, back to its attempt's start.
//! Records go through [`rmm_events::SledLog::append_batch`], so the chain and the
//! durability are the real ones. The last run is cut at N events, as a
//! crash would cut it.

use std::collections::VecDeque;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rmm_actors::decide::{NODE_STEPS, RANCHER_STEPS};
use rmm_events::{Envelope, Event, Outcome, Plan, Role, RunKind, SecretRef, Step, Via};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::state_dir::StateDir;

#[derive(Debug, clap::Args)]
pub struct SynthArgs {
    /// Events to write (exactly).
    #[arg(long)]
    pub events: u64,
    /// Masters per `up` run.
    #[arg(long, default_value_t = 3)]
    pub masters: u32,
    /// Workers per `up` run.
    #[arg(long, default_value_t = 3)]
    pub workers: u32,
    /// Seed of the mix (retries, crashes, failures, downs).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// Records per `append_batch`: one write-ahead sync and, at this size, one
/// checkpoint each.
const BATCH: usize = rmm_events::store::CHECKPOINT_EVERY as usize;

pub fn run(args: SynthArgs, dir: &StateDir) -> Result<()> {
    dir.create()?;
    let _lock = dir.lock()?;
    let mut log = dir.open_store()?;
    if log.last_seq() != 0 {
        return Err(Error::Refused(format!(
            "the log in {} is not empty ({} events): synth writes only into an empty state dir",
            dir.root.display(),
            log.last_seq()
        )));
    }
    let mut gen = Gen::new(&args);
    let mut batch = Vec::with_capacity(BATCH);
    let mut written = 0u64;
    while written < args.events {
        let Some(envelope) = gen.next() else { break };
        batch.push(envelope);
        written += 1;
        if batch.len() == BATCH {
            log.append_batch(std::mem::take(&mut batch))?;
        }
    }
    if !batch.is_empty() {
        log.append_batch(batch)?;
    }
    log.checkpoint()?;
    crate::outln!("{written} events in {} runs, head {}", gen.runs, hex::encode(log.head()));
    Ok(())
}

/// An endless, seeded stream of runs' events.
struct Gen {
    rng: StdRng,
    masters: u32,
    workers: u32,
    /// Events of the run being generated, not yet handed out.
    pending: VecDeque<Envelope>,
    /// Wall clock of the synthetic world, ms since the epoch.
    now_ms: i64,
    runs: u64,
    /// Whether the last run was a completed `up` (a `down` may follow).
    cluster_up: bool,
}

impl Iterator for Gen {
    type Item = Envelope;
    fn next(&mut self) -> Option<Envelope> {
        if self.pending.is_empty() {
            let down = self.cluster_up && self.rng.gen_ratio(1, 3);
            let events = if down { self.down_run() } else { self.up_run() };
            self.cluster_up = !down;
            self.runs += 1;
            self.pending.extend(events);
        }
        self.pending.pop_front()
    }
}

/// One run being written: its id, attempt, and each actor's latest event
/// (the cause of its next one).
struct RunGen {
    run: Uuid,
    attempt: u32,
    events: Vec<Envelope>,
    last: std::collections::HashMap<String, Uuid>,
    attempt_start: Uuid,
}

impl Gen {
    fn new(args: &SynthArgs) -> Gen {
        Gen {
            rng: StdRng::seed_from_u64(args.seed),
            masters: args.masters,
            workers: args.workers,
            pending: VecDeque::new(),
            now_ms: 1_767_225_600_000, // 2026-01-01T00:00:00Z
            runs: 0,
            cluster_up: false,
        }
    }

    fn id(&mut self) -> Uuid {
        let random: [u8; 10] = self.rng.gen();
        uuid::Builder::from_unix_timestamp_millis(self.now_ms as u64, &random).into_uuid()
    }

    fn plan(&self) -> Plan {
        // The RKE1 flow (v3 steps), which the synthesized steps follow.
        Plan {
            masters: self.masters,
            workers: self.workers,
            poll_ms: 2000,
            distribution: rmm_events::Distribution::Rke1,
            rancher_image: "rancher/rancher:v2.11.3".into(),
            ..Plan::default()
        }
    }

    /// Appends one event of `actor`, caused by `cause` (default: the
    /// actor's previous event, or its attempt's start).
    fn emit(&mut self, r: &mut RunGen, actor: &str, cause: Option<Uuid>, event: Event) -> Uuid {
        self.now_ms += self.rng.gen_range(1..400);
        let id = self.id();
        let cause = cause.or_else(|| r.last.get(actor).copied()).unwrap_or(r.attempt_start);
        r.events.push(Envelope {
            seq: 0,
            id,
            run: r.run,
            attempt: r.attempt,
            actor: actor.to_string(),
            cause: Some(cause),
            at_ms: self.now_ms,
            event,
        });
        r.last.insert(actor.to_string(), id);
        id
    }

    fn start_run(&mut self, kind: RunKind) -> RunGen {
        self.now_ms += self.rng.gen_range(60_000..86_400_000);
        let run = self.id();
        let mut r = RunGen { run, attempt: 1, events: Vec::new(), last: Default::default(), attempt_start: run };
        let started = self.id();
        r.events.push(Envelope {
            seq: 0,
            id: started,
            run,
            attempt: 1,
            actor: "coordinator".into(),
            cause: None,
            at_ms: self.now_ms,
            event: Event::RunStarted { kind, plan: self.plan() },
        });
        r.last.insert("coordinator".into(), started);
        let verb = if kind == RunKind::Up { "up" } else { "down" };
        self.attempt(&mut r, format!("rmm {verb}"));
        r
    }

    fn attempt(&mut self, r: &mut RunGen, command: String) {
        let attempt = r.attempt;
        let pid = self.rng.gen_range(1000..60000);
        let id = self.emit(
            r,
            "coordinator",
            None,
            Event::AttemptStarted {
                attempt,
                command,
                pid,
                rmm_version: env!("CARGO_PKG_VERSION").into(),
                user: "ops".into(),
                host: "bastion-1".into(),
            },
        );
        r.attempt_start = id;
        // A new attempt's actors start from its `AttemptStarted`.
        r.last.retain(|k, _| k == "coordinator");
    }

    /// One step of one actor: intent, maybe a retried failure, outcome.
    fn step(&mut self, r: &mut RunGen, actor: &str, step: Step, cause: Option<Uuid>, ip: &str) -> Uuid {
        let mut try_no = 1;
        let detail = detail(actor, step);
        self.emit(r, actor, cause, Event::StepStarted { step, try_no, detail: detail.clone() });
        while self.rng.gen_ratio(1, 10) && try_no < 3 {
            let error = failure(step);
            self.emit(r, actor, None, Event::StepFailed { step, try_no, error, retryable: true });
            try_no += 1;
            self.emit(r, actor, None, Event::StepStarted { step, try_no, detail: detail.clone() });
        }
        let outcome = self.outcome(actor, step, ip);
        self.emit(r, actor, None, Event::StepSucceeded { step, outcome, via: Via::Done })
    }

    fn outcome(&mut self, actor: &str, step: Step, ip: &str) -> Outcome {
        let secret = |name: &str, rng: &mut StdRng| SecretRef {
            name: name.into(),
            fingerprint: format!("{:012x}", rng.gen::<u64>() & 0xffff_ffff_ffff),
        };
        match step {
            Step::CreateMachine => Outcome::MachineCreated { ip: ip.into() },
            Step::StartServer => Outcome::ServerStarted { image: "rancher/rancher:v2.11.3".into() },
            Step::WaitReady => Outcome::Ready,
            Step::PinCa => Outcome::CaPinned { checksum: format!("{:016x}{:016x}{:016x}{:016x}", self.rng.gen::<u64>(), self.rng.gen::<u64>(), self.rng.gen::<u64>(), self.rng.gen::<u64>()) },
            Step::Login => Outcome::LoggedIn { token: secret("rancher/login-token", &mut self.rng) },
            Step::ChangePassword => Outcome::PasswordChanged { password: secret("rancher/admin-password", &mut self.rng) },
            Step::CreateApiToken => Outcome::ApiTokenCreated {
                token_id: format!("token-{:05x}", self.rng.gen_range(0..0xfffff)),
                token: secret("rancher/api-token", &mut self.rng),
            },
            Step::SetServerUrl => Outcome::ServerUrlSet { url: format!("https://{ip}") },
            Step::CreateCluster => Outcome::ClusterCreated { cluster_id: format!("c-{:05x}", self.rng.gen_range(0..0xfffff)) },
            Step::CreateRegistrationToken => {
                Outcome::RegistrationTokenCreated { token_id: format!("crt-{:05x}", self.rng.gen_range(0..0xfffff)) }
            }
            Step::WaitNodeCommand => Outcome::NodeCommandReady { command: secret("rancher/node-command", &mut self.rng) },
            Step::WaitClusterActive => Outcome::ClusterActive,
            Step::RunAgent => Outcome::AgentStarted,
            Step::WaitNodeListed => Outcome::NodeListed { node_id: format!("m-{actor}-{:04x}", self.rng.gen_range(0..0xffff)) },
            Step::WaitNodeActive => Outcome::NodeActive,
            Step::RemoveMachine => Outcome::MachineRemoved,
            Step::CheckRancherVersion => Outcome::RancherVersion { version: "v2.11.3".into() },
            Step::WaitApiReady => Outcome::ApiReady,
            Step::ChooseKubernetesVersion => Outcome::KubernetesVersionChosen { version: "v1.35.1+rke2r1".into(), server_default: true },
            Step::WaitClusterName => Outcome::ClusterNamed { management_id: "c-m-1".into() },
            Step::WaitMachineRunning => Outcome::MachineRunning { machine: "custom-1".into(), node: actor.into() },
            Step::WaitClusterReady => Outcome::ClusterReady,
            Step::CheckServer => Outcome::ServerRunning,
            Step::DeleteCluster => Outcome::ClusterDeleted { management_id: "c-m-1".into() },
            Step::CheckMachine => Outcome::MachineUp { ip: ip.into() },
            Step::DeleteNode => Outcome::NodeDeleted { machine: "custom-1".into() },
            Step::DeleteApiTokens => Outcome::ApiTokensDeleted { deleted: 2 },
        }
    }

    /// A crash inside `step`: its intent stays without outcome, and the
    /// resume adopts the effect.
    fn crash_in(&mut self, r: &mut RunGen, actor: &str, step: Step, ip: &str) {
        self.emit(r, actor, None, Event::StepStarted { step, try_no: 1, detail: detail(actor, step) });
        self.now_ms += self.rng.gen_range(60_000..3_600_000);
        r.attempt += 1;
        self.attempt(r, "rmm up --resume".into());
        let outcome = self.outcome(actor, step, ip);
        self.emit(r, actor, None, Event::StepSucceeded { step, outcome, via: Via::Adopted });
    }

    /// Runs every actor's queue of steps, interleaved at random. With
    /// `crash: Some(false)`, one run in eight crashes inside a step.
    fn interleave(
        &mut self,
        r: &mut RunGen,
        mut queues: Vec<(String, VecDeque<Step>)>,
        ips: &std::collections::HashMap<String, String>,
        mut crash: Option<bool>,
    ) {
        while !queues.is_empty() {
            let i = self.rng.gen_range(0..queues.len());
            let actor = queues[i].0.clone();
            let step = queues[i].1.pop_front().expect("queues are never empty");
            if queues[i].1.is_empty() {
                queues.swap_remove(i);
            }
            if crash == Some(false) && self.rng.gen_ratio(1, 130) {
                crash = Some(true);
                self.crash_in(r, &actor, step, &ips[&actor]);
            } else {
                self.step(r, &actor, step, None, &ips[&actor]);
            }
        }
    }

    fn up_run(&mut self) -> Vec<Envelope> {
        let mut r = self.start_run(RunKind::Up);
        let net = format!("10.{}.{}", self.rng.gen_range(0..255), self.rng.gen_range(0..255));
        let nodes: Vec<(String, Role)> = self.plan().node_names();
        let ips: std::collections::HashMap<String, String> = std::iter::once("rancher".to_string())
            .chain(nodes.iter().map(|(n, _)| n.clone()))
            .enumerate()
            .map(|(i, n)| (n, format!("{net}.{}", i + 1)))
            .collect();
        // Rancher's chain up to the node command, with the node machines
        // created meanwhile.
        let mut queues: Vec<(String, VecDeque<Step>)> = vec![("rancher".into(), RANCHER_STEPS.iter().copied().take_while(|s| *s != Step::WaitClusterActive).collect())];
        queues.extend(nodes.iter().map(|(n, _)| (n.clone(), VecDeque::from([Step::CreateMachine, Step::CheckMachine]))));
        self.interleave(&mut r, queues, &ips, Some(false));
        // A permanent failure (one run in twenty): the run fails, and a
        // resume starts over from the failed step.
        if self.rng.gen_ratio(1, 20) {
            let actor = "master01";
            let step = Step::RunAgent;
            self.emit(&mut r, actor, None, Event::StepStarted { step, try_no: 1, detail: detail(actor, step) });
            let error = "ssh master01: exit status 125: docker: Error response from daemon: no space left on device".to_string();
            self.emit(&mut r, actor, None, Event::StepFailed { step, try_no: 1, error: error.clone(), retryable: false });
            self.emit(&mut r, "coordinator", None, Event::RunFailed { actor: actor.into(), step: Some(step), reason: error });
            self.now_ms += self.rng.gen_range(600_000..7_200_000);
            r.attempt += 1;
            self.attempt(&mut r, "rmm up --resume".into());
        }
        // Masters join one at a time, then the workers together.
        let mut listed = r.last.get("rancher").copied();
        for (name, role) in &nodes {
            if *role != Role::Master {
                continue;
            }
            let grant = self.emit(&mut r, "coordinator", listed, Event::JoinGranted { node: name.clone() });
            self.step(&mut r, name, Step::RunAgent, Some(grant), &ips[name]);
            listed = Some(self.step(&mut r, name, Step::WaitNodeListed, None, &ips[name]));
        }
        // Workers join together; then everyone waits for `active`.
        let mut queues: Vec<(String, VecDeque<Step>)> = vec![("rancher".into(), VecDeque::from([Step::WaitClusterActive]))];
        for (name, role) in &nodes {
            if *role == Role::Worker {
                let grant = self.emit(&mut r, "coordinator", listed, Event::JoinGranted { node: name.clone() });
                r.last.insert(name.clone(), grant);
                queues.push((name.clone(), NODE_STEPS[2..].iter().copied().collect()));
            } else {
                queues.push((name.clone(), VecDeque::from([Step::WaitNodeActive])));
            }
        }
        self.interleave(&mut r, queues, &ips, None);
        self.emit(&mut r, "coordinator", None, Event::RunCompleted);
        r.events
    }

    fn down_run(&mut self) -> Vec<Envelope> {
        let mut r = self.start_run(RunKind::Down);
        let mut actors: Vec<String> = vec!["rancher".into()];
        actors.extend(self.plan().node_names().into_iter().map(|(n, _)| n));
        for a in &actors {
            self.emit(&mut r, a, None, Event::StepStarted { step: Step::RemoveMachine, try_no: 1, detail: format!("remove machine {a}") });
        }
        while !actors.is_empty() {
            let i = self.rng.gen_range(0..actors.len());
            let a = actors.swap_remove(i);
            self.emit(&mut r, &a, None, Event::StepSucceeded { step: Step::RemoveMachine, outcome: Outcome::MachineRemoved, via: Via::Done });
        }
        self.emit(&mut r, "coordinator", None, Event::RunCompleted);
        r.events
    }
}

/// The intent's detail, as the real steps write it.
fn detail(actor: &str, step: Step) -> String {
    let role = if actor == "rancher" { "rancher" } else if actor.starts_with("master") { "master" } else { "worker" };
    match step {
        Step::CreateMachine => format!("{role} machine {actor} (driver local)"),
        Step::StartServer => "rancher/rancher:v2.11.3 with bootstrap password 3f2a9c81d0e4".into(),
        Step::WaitReady => "GET /ping until pong (timeout 600 s)".into(),
        Step::RunAgent if role == "master" => "nodeCommand --etcd --controlplane".into(),
        Step::RunAgent => "nodeCommand --worker".into(),
        Step::WaitNodeListed => format!("GET /v3/nodes until {actor} is listed (timeout 600 s)"),
        Step::WaitNodeActive => format!("GET /v3/nodes until {actor} is active (timeout 1800 s)"),
        Step::WaitClusterActive => "GET /v3/clusters until active (timeout 1800 s)".into(),
        _ => String::new(),
    }
}

fn failure(step: Step) -> String {
    match step {
        Step::CreateMachine => "driver local: machine is still creating".into(),
        Step::WaitReady => "GET /ping: connection refused".into(),
        Step::Login => "POST /v3-public/localProviders/local?action=login: 401 Unauthorized".into(),
        _ => format!("{}: 503 Service Unavailable", step.as_str()),
    }
}
