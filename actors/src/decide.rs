//! Pure decisions: given folded state, what happens next. No IO, no time,
//! no randomness — the same history always gives the same answer, which is
//! why a fresh start and a resume are the same code path.

use rmm_events::{ActorState, Distribution, Plan, Retry, Role, RunState, Step, StepState};

/// The steps of each kind of actor, in order (rke1: the v3 API).
pub const RANCHER_STEPS: &[Step] = &[
    Step::CreateMachine,
    Step::StartServer,
    Step::WaitReady,
    Step::CheckServer,
    Step::PinCa,
    // Before anything is made in Rancher: rke1 is refused on 2.12+.
    Step::CheckRancherVersion,
    Step::Login,
    Step::ChangePassword,
    Step::CreateApiToken,
    Step::SetServerUrl,
    Step::CreateCluster,
    Step::CreateRegistrationToken,
    Step::WaitNodeCommand,
    Step::WaitClusterActive,
];
/// A node: its machine, checked once per attempt (`CheckMachine`: a
/// machine stopped after its agent ran is started again and waited for),
/// the agent, then Rancher's view of the node.
pub const NODE_STEPS: &[Step] =
    &[Step::CreateMachine, Step::CheckMachine, Step::RunAgent, Step::WaitNodeListed, Step::WaitNodeActive];
pub const REMOVE_STEPS: &[Step] = &[Step::RemoveMachine];
/// A node a scale drops (issue 11): Rancher lets it go first (its CAPI
/// machine, or its v3 node on rke1, deleted and gone), then its machine
/// is removed.
pub const SCALE_DOWN_STEPS: &[Step] = &[Step::DeleteNode, Step::RemoveMachine];

/// The rancher actor's steps for rke2/k3s (reference/rancher-current.md §2,
/// issue 8's order): the version check and the Kubernetes version before
/// anything is made in Rancher (the login's session aside), readiness
/// beyond `/ping` with the token, `server-url` before the cluster.
pub const V1_RANCHER_STEPS: &[Step] = &[
    Step::CreateMachine,
    Step::StartServer,
    Step::WaitReady,
    Step::CheckServer,
    Step::PinCa,
    Step::CheckRancherVersion,
    Step::Login,
    Step::ChooseKubernetesVersion,
    Step::ChangePassword,
    Step::CreateApiToken,
    Step::WaitApiReady,
    Step::SetServerUrl,
    Step::CreateCluster,
    Step::WaitClusterName,
    Step::WaitNodeCommand,
    Step::WaitClusterReady,
];
/// A node on rke2/k3s: the installer (which checks its registration),
/// the machine listed, then `Running` with a `nodeRef` (§2.8).
pub const V1_NODE_STEPS: &[Step] =
    &[Step::CreateMachine, Step::CheckMachine, Step::RunAgent, Step::WaitNodeListed, Step::WaitMachineRunning];

/// The rancher actor on an existing Rancher (`--rancher-url`): the v1
/// steps without the machine and the server container. `/ping`, the CA,
/// the version check, then the API steps as on a server rmm started.
pub const EXISTING_V1_RANCHER_STEPS: &[Step] = &[
    Step::WaitReady,
    Step::PinCa,
    Step::CheckRancherVersion,
    Step::Login,
    Step::ChooseKubernetesVersion,
    Step::ChangePassword,
    Step::CreateApiToken,
    Step::WaitApiReady,
    Step::SetServerUrl,
    Step::CreateCluster,
    Step::WaitClusterName,
    Step::WaitNodeCommand,
    Step::WaitClusterReady,
];

/// `rmm down` of a run on an existing Rancher: the rancher actor deletes
/// the cluster in Rancher (and waits until it is gone), then the run's
/// tokens there; the server itself is never touched. The nodes' machines are removed only after that.
pub const EXISTING_DOWN_RANCHER_STEPS: &[Step] = &[Step::DeleteCluster, Step::DeleteApiTokens];

/// The steps an actor of `role` runs in a run of this plan: [`steps_for`],
/// except on an existing Rancher (`plan.rancher_url`).
pub fn plan_steps(role: Role, down: bool, plan: &Plan) -> &'static [Step] {
    match (plan.existing_rancher(), down, role) {
        (true, true, Role::Rancher) => EXISTING_DOWN_RANCHER_STEPS,
        // Validation refuses rke1 with --rancher-url (2.12+ has no RKE1).
        (true, false, Role::Rancher) => EXISTING_V1_RANCHER_STEPS,
        _ => steps_for(role, down, plan.distribution),
    }
}

/// Whether a node of a `down` on an existing Rancher must wait for the
/// cluster's deletion in Rancher before its machine is removed (a node
/// removed first would leave Rancher with a cluster of dead machines).
pub fn down_waits_for_rancher(state: &RunState, has_rancher_actor: bool) -> bool {
    state.plan.existing_rancher() && has_rancher_actor && !state.actor("rancher").is_some_and(|a| a.done(Step::DeleteCluster))
}

/// The steps an actor of `role` runs in a run of this kind.
pub fn steps_for(role: Role, down: bool, distribution: Distribution) -> &'static [Step] {
    match (down, role, distribution.is_v1()) {
        (true, _, _) => REMOVE_STEPS,
        (false, Role::Rancher, false) => RANCHER_STEPS,
        (false, _, false) => NODE_STEPS,
        (false, Role::Rancher, true) => V1_RANCHER_STEPS,
        (false, _, true) => V1_NODE_STEPS,
    }
}

/// What an actor does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Run `step` (after `delay_ms` of backoff).
    Run { step: Step, try_no: u32, delay_ms: u64 },
    /// An intent of an earlier attempt has no outcome: ask the world
    /// whether the effect happened before doing anything else.
    Reconcile { step: Step, try_no: u32 },
    /// Nothing to do until a message arrives (e.g. permission to join).
    Wait,
    /// Every step succeeded.
    Done,
    /// A step failed for good in this attempt.
    GiveUp { step: Step, reason: String },
}

/// The next step of an actor that runs `order`, where `open(step)` tells
/// whether the step may start now.
pub fn next_step(order: &[Step], open: impl Fn(Step) -> bool, state: &ActorState, attempt: u32, retry: &Retry) -> Next {
    for &step in order {
        match state.step(step) {
            Some(StepState::Succeeded { .. }) => continue,
            Some(StepState::InFlight { try_no, attempt: a, .. }) => {
                if *a < attempt {
                    return Next::Reconcile { step, try_no: *try_no };
                }
                // In flight in this very attempt: the actor is busy with it.
                return Next::Wait;
            }
            Some(StepState::Interrupted { try_no, attempt: a, .. }) => {
                // Stopped by a signal: this attempt is ending; the next one
                // runs the step again, without a backoff (not a failed try).
                if *a == attempt || !open(step) {
                    return Next::Wait;
                }
                return Next::Run { step, try_no: try_no + 1, delay_ms: 0 };
            }
            Some(StepState::Failed { try_no, attempt: a, error, retryable, .. }) => {
                let used = state.tries_in_attempt(step, attempt);
                let fresh_attempt = *a < attempt;
                // `retryable` records whether another try follows in this
                // attempt: decided when the try failed ([`try_again`]).
                if !fresh_attempt && !retryable {
                    return Next::GiveUp { step, reason: error.clone() };
                }
                if !open(step) {
                    return Next::Wait;
                }
                let delay_ms = if fresh_attempt || used == 0 { 0 } else { backoff_ms(retry, used) };
                return Next::Run { step, try_no: try_no + 1, delay_ms };
            }
            None => {
                if !open(step) {
                    return Next::Wait;
                }
                return Next::Run { step, try_no: 1, delay_ms: 0 };
            }
        }
    }
    Next::Done
}

/// How a try failed, for [`try_again`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Trying again cannot help (a 4xx, a TLS mismatch, a bad config).
    Permanent,
    /// May pass: tried again up to `retry.max_tries` times.
    Transient,
    /// Rancher did not answer (refused, timed out, 5xx/503): tried again
    /// until `rancher_ready_s` after the step's first try in this attempt
    /// (and at least `retry.max_tries` times), as a restart of Rancher
    /// takes as long as its start.
    Unavailable,
}

/// Whether a step whose try just failed is tried again in this attempt.
/// `used`: its tries in this attempt, this one included; `elapsed_ms`:
/// since its first try in this attempt started.
pub fn try_again(failure: Failure, used: u32, elapsed_ms: u64, plan: &Plan) -> bool {
    let by_count = used < plan.retry.max_tries;
    match failure {
        Failure::Permanent => false,
        Failure::Transient => by_count,
        Failure::Unavailable => {
            let next_try_at = elapsed_ms.saturating_add(backoff_ms(&plan.retry, used));
            by_count || next_try_at <= plan.timeouts.rancher_ready_s.saturating_mul(1000)
        }
    }
}

/// Exponential backoff after `failures` failed tries: base, 2·base, 4·base…, capped at 30 s.
pub fn backoff_ms(retry: &Retry, failures: u32) -> u64 {
    let exp = failures.saturating_sub(1).min(16);
    retry.backoff_ms.saturating_mul(1u64 << exp).min(30_000)
}

/// Which nodes may run their agent now, that have not been let in yet.
///
/// Masters join one at a time — master N+1 only once Rancher lists master N
/// (concurrent etcd joins break) — and the workers all together once every
/// master is listed. Nothing joins before the node command exists.
///
/// rke2/k3s: every node at once, as soon as the node command exists.
/// Rancher's planner starts nothing until an etcd, a control-plane and a
/// worker machine are registered, picks the init node and joins the other
/// etcd members itself (reference/rancher-current.md §2.7, §2.8): gating
/// masters on each other would slow the run and, gated on `Running`,
/// deadlock it.
pub fn grants(state: &RunState) -> Vec<String> {
    let ready = state.actor("rancher").is_some_and(|a| a.done(Step::WaitNodeCommand));
    if !ready {
        return Vec::new();
    }
    if state.plan.distribution.is_v1() {
        return state.plan.node_names().into_iter().map(|(n, _)| n).filter(|n| !state.granted.contains(n)).collect();
    }
    let listed = |name: &str| state.actor(name).is_some_and(|a| a.done(Step::WaitNodeListed));
    let nodes = state.plan.node_names();
    let mut out = Vec::new();
    for (name, role) in nodes.iter().filter(|(_, r)| *r == Role::Master) {
        debug_assert_eq!(*role, Role::Master);
        if !state.granted.contains(name) {
            out.push(name.clone());
            return out;
        }
        if !listed(name) {
            return out;
        }
    }
    for (name, _) in nodes.iter().filter(|(_, r)| *r == Role::Worker) {
        if !state.granted.contains(name) {
            out.push(name.clone());
        }
    }
    out
}

/// The node a scale removes next, if it may start now: one at a time, in
/// the order of [`RunState::removals`] (workers, then masters, the
/// highest-numbered first), each once the one before has gone; and only
/// once the nodes the plan adds are in (no etcd member leaves while a new
/// one is still joining).
pub fn removal_grant(state: &RunState) -> Option<String> {
    let removals = state.removals();
    let (next, _) = removals.first()?;
    let joined = state.plan.node_names().iter().all(|(name, role)| {
        state.actor(name).is_some_and(|a| steps_for(*role, false, state.plan.distribution).iter().all(|s| a.done(*s)))
    });
    joined.then(|| next.clone())
}

/// Whether the rancher actor of a scale may start its wait for the
/// cluster ([`rmm_events::ActorState::cluster_wait_after_nodes`]): every
/// node of the plan has done all its steps and every node the scale
/// drops is gone, so Rancher is asked about the cluster as it now is.
pub fn cluster_wait_grant(state: &RunState) -> bool {
    let Some(rancher) = state.actor("rancher") else { return false };
    if !rancher.rescaled {
        return false;
    }
    let nodes_in = state.plan.node_names().iter().all(|(name, role)| {
        state.actor(name).is_some_and(|a| plan_steps(*role, false, &state.plan).iter().all(|s| a.done(*s)))
    });
    nodes_in && state.removals().is_empty()
}

/// Whether every actor of an `up` run has finished all its steps.
pub fn up_complete(state: &RunState) -> bool {
    all_done(&state.plan, state, false)
}

fn all_done(plan: &Plan, state: &RunState, down: bool) -> bool {
    plan.machine_names().iter().all(|(name, role)| {
        state
            .actor(name)
            .is_some_and(|a| plan_steps(*role, down, plan).iter().all(|s| a.done(*s)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmm_events::{Envelope, Event, Outcome, RunKind, Via};
    use uuid::Uuid;

    fn plan() -> Plan {
        // RKE1: its masters join one at a time (the v1 rule is tested apart).
        Plan {
            workers: 2,
            retry: Retry { max_tries: 3, backoff_ms: 100 },
            distribution: rmm_events::Distribution::Rke1,
            rancher_image: "rancher/rancher:v2.11.3".into(),
            ..Plan::default()
        }
    }

    /// A little history builder: `given().attempt(1).started(..)…`.
    #[derive(Clone)]
    struct Given {
        run: Uuid,
        attempt: u32,
        events: Vec<Envelope>,
    }

    fn given() -> Given {
        let run = Uuid::now_v7();
        let mut g = Given { run, attempt: 1, events: Vec::new() };
        g.push("coordinator", Event::RunStarted { kind: RunKind::Up, plan: plan() });
        g.attempt(1)
    }

    impl Given {
        fn push(&mut self, actor: &str, event: Event) {
            let seq = self.events.len() as u64 + 1;
            self.events.push(Envelope {
                seq,
                id: Uuid::now_v7(),
                run: self.run,
                attempt: self.attempt,
                actor: actor.into(),
                cause: None,
                at_ms: seq as i64,
                event,
            });
        }
        fn attempt(mut self, n: u32) -> Self {
            self.attempt = n;
            self.push("coordinator", Event::AttemptStarted { attempt: n, command: "rmm up".into(), pid: 1, rmm_version: "0".into(), user: "ops".into(), host: "box".into() });
            self
        }
        fn started(mut self, actor: &str, step: Step, try_no: u32) -> Self {
            self.push(actor, Event::StepStarted { step, try_no, detail: String::new() });
            self
        }
        fn ok(mut self, actor: &str, step: Step, outcome: Outcome) -> Self {
            self.push(actor, Event::StepSucceeded { step, outcome, via: Via::Done });
            self
        }
        fn done(self, actor: &str, step: Step, outcome: Outcome) -> Self {
            let try_no = 1;
            self.started(actor, step, try_no).ok(actor, step, outcome)
        }
        fn failed(mut self, actor: &str, step: Step, try_no: u32, retryable: bool) -> Self {
            self.push(actor, Event::StepFailed { step, try_no, error: "boom".into(), retryable });
            self
        }
        fn granted(mut self, node: &str) -> Self {
            self.push("coordinator", Event::JoinGranted { node: node.into() });
            self
        }
        fn state(&self) -> RunState {
            let mut h = rmm_events::History::default();
            for e in &self.events {
                h.apply(e);
            }
            h.latest().unwrap().clone()
        }
        fn next(&self, actor: &str, order: &[Step], open: bool) -> Next {
            let state = self.state();
            let a = state.actor(actor).cloned().unwrap_or_default();
            next_step(order, |s| open || s == Step::CreateMachine, &a, self.attempt, &plan().retry)
        }
    }

    fn machine() -> Outcome {
        Outcome::MachineCreated { ip: "127.0.0.2".into() }
    }

    #[test]
    fn a_fresh_actor_creates_its_machine_first() {
        assert_eq!(given().next("master01", NODE_STEPS, false), Next::Run { step: Step::CreateMachine, try_no: 1, delay_ms: 0 });
    }

    #[test]
    fn a_node_with_a_machine_waits_for_permission_to_join() {
        let g = given().done("master01", Step::CreateMachine, machine());
        assert_eq!(g.next("master01", NODE_STEPS, false), Next::Wait);
        assert_eq!(g.next("master01", NODE_STEPS, true), Next::Run { step: Step::CheckMachine, try_no: 1, delay_ms: 0 });
        let g = g.done("master01", Step::CheckMachine, Outcome::MachineUp { ip: "127.0.0.2".into() });
        assert_eq!(g.next("master01", NODE_STEPS, true), Next::Run { step: Step::RunAgent, try_no: 1, delay_ms: 0 });
    }

    #[test]
    fn an_intent_without_outcome_from_an_earlier_attempt_is_reconciled_not_redone() {
        let g = given().started("rancher", Step::CreateMachine, 1).attempt(2);
        assert_eq!(g.next("rancher", RANCHER_STEPS, true), Next::Reconcile { step: Step::CreateMachine, try_no: 1 });
    }

    #[test]
    fn a_resume_checks_each_nodes_machine_again_even_when_every_step_succeeded() {
        let mut g = given();
        for s in NODE_STEPS {
            g = g.done("worker01", *s, machine());
        }
        assert_eq!(g.next("worker01", NODE_STEPS, true), Next::Done);
        let g = g.attempt(2);
        assert_eq!(g.next("worker01", NODE_STEPS, true), Next::Run { step: Step::CheckMachine, try_no: 1, delay_ms: 0 });
        // A machine started again at another address: that address holds
        // from then on, in later attempts too.
        let g = g.ok("worker01", Step::CheckMachine, Outcome::MachineStartedAgain { state: "stopped".into(), ip: "10.0.0.9".into() }).attempt(3);
        assert_eq!(g.state().actor("worker01").unwrap().ip(), Some("10.0.0.9"));
        assert_eq!(g.next("worker01", NODE_STEPS, true), Next::Run { step: Step::CheckMachine, try_no: 1, delay_ms: 0 });
    }

    #[test]
    fn a_server_that_was_restarted_makes_the_attempt_ask_again_whether_the_cluster_is_ready() {
        let mut g = given();
        for s in V1_RANCHER_STEPS {
            g = g.done("rancher", *s, machine());
        }
        assert_eq!(g.next("rancher", V1_RANCHER_STEPS, true), Next::Done);
        // Running as it was: nothing more to ask.
        let g2 = g.clone().attempt(2).ok("rancher", Step::CheckServer, Outcome::ServerRunning);
        assert_eq!(g2.next("rancher", V1_RANCHER_STEPS, true), Next::Done);
        // Down and started again: the cluster's readiness is asked again.
        let g3 = g.attempt(2).ok("rancher", Step::CheckServer, Outcome::ServerRestarted { state: "exited".into() });
        assert_eq!(g3.next("rancher", V1_RANCHER_STEPS, true), Next::Run { step: Step::WaitClusterReady, try_no: 1, delay_ms: 0 });
    }

    #[test]
    fn an_intent_in_flight_in_this_attempt_means_busy() {
        let g = given().started("rancher", Step::CreateMachine, 1);
        assert_eq!(g.next("rancher", RANCHER_STEPS, true), Next::Wait);
    }

    #[test]
    fn a_transient_failure_is_retried_with_growing_backoff() {
        let g = given().started("worker01", Step::CreateMachine, 1).failed("worker01", Step::CreateMachine, 1, true);
        assert_eq!(g.next("worker01", NODE_STEPS, true), Next::Run { step: Step::CreateMachine, try_no: 2, delay_ms: 100 });
        let g = g.started("worker01", Step::CreateMachine, 2).failed("worker01", Step::CreateMachine, 2, true);
        assert_eq!(g.next("worker01", NODE_STEPS, true), Next::Run { step: Step::CreateMachine, try_no: 3, delay_ms: 200 });
    }

    #[test]
    fn the_run_gives_up_when_a_failed_try_was_the_last_or_a_permanent_failure() {
        let mut g = given();
        for t in 1..=2 {
            g = g.started("worker01", Step::CreateMachine, t).failed("worker01", Step::CreateMachine, t, true);
        }
        // The third try is the last: recorded as not to be tried again.
        g = g.started("worker01", Step::CreateMachine, 3).failed("worker01", Step::CreateMachine, 3, false);
        assert!(matches!(g.next("worker01", NODE_STEPS, true), Next::GiveUp { step: Step::CreateMachine, .. }));
        let g = given().started("rancher", Step::CreateMachine, 1).failed("rancher", Step::CreateMachine, 1, false);
        assert!(matches!(g.next("rancher", RANCHER_STEPS, true), Next::GiveUp { .. }));
    }

    #[test]
    fn a_resume_gives_a_failed_step_a_fresh_budget_without_delay() {
        let mut g = given();
        for t in 1..=3 {
            g = g.started("worker01", Step::CreateMachine, t).failed("worker01", Step::CreateMachine, t, t < 3);
        }
        let g = g.attempt(2);
        assert_eq!(g.next("worker01", NODE_STEPS, true), Next::Run { step: Step::CreateMachine, try_no: 4, delay_ms: 0 });
    }

    #[test]
    fn an_actor_with_every_step_done_is_done() {
        let mut g = given();
        for s in NODE_STEPS {
            g = g.done("worker02", *s, machine());
        }
        assert_eq!(g.next("worker02", NODE_STEPS, true), Next::Done);
    }

    fn with_node_command() -> Given {
        given().done("rancher", Step::WaitNodeCommand, Outcome::NodeCommandReady {
            command: rmm_events::SecretRef { name: "node-command".into(), fingerprint: "abc".into() },
        })
    }

    #[test]
    fn nobody_joins_before_the_node_command_exists() {
        assert!(grants(&given().state()).is_empty());
    }

    #[test]
    fn masters_join_one_at_a_time_then_all_workers_together() {
        let listed = |id: &str| Outcome::NodeListed { node_id: id.into() };
        let g = with_node_command();
        assert_eq!(grants(&g.state()), vec!["master01"]);
        let g = g.granted("master01");
        assert!(grants(&g.state()).is_empty(), "master02 must wait until master01 is listed");
        let g = g.done("master01", Step::WaitNodeListed, listed("m1"));
        assert_eq!(grants(&g.state()), vec!["master02"]);
        let g = g.granted("master02").done("master02", Step::WaitNodeListed, listed("m2"));
        assert_eq!(grants(&g.state()), vec!["master03"]);
        let g = g.granted("master03");
        assert!(grants(&g.state()).is_empty(), "workers wait for the last master");
        let g = g.done("master03", Step::WaitNodeListed, listed("m3"));
        assert_eq!(grants(&g.state()), vec!["worker01", "worker02"]);
        let g = g.granted("worker01").granted("worker02");
        assert!(grants(&g.state()).is_empty());
    }

    fn v1_given() -> Given {
        let run = Uuid::now_v7();
        let mut g = Given { run, attempt: 1, events: Vec::new() };
        let plan = Plan { distribution: rmm_events::Distribution::Rke2, ..plan() };
        g.push("coordinator", Event::RunStarted { kind: RunKind::Up, plan });
        g.attempt(1)
    }

    #[test]
    fn the_v1_order_checks_the_server_before_anything_is_made_and_sets_server_url_before_the_cluster() {
        let pos = |s: Step| V1_RANCHER_STEPS.iter().position(|x| *x == s).unwrap();
        assert!(pos(Step::PinCa) < pos(Step::CheckRancherVersion));
        assert!(pos(Step::CheckRancherVersion) < pos(Step::Login));
        assert!(pos(Step::ChooseKubernetesVersion) < pos(Step::ChangePassword), "refused before the password or a token is made");
        assert!(pos(Step::CreateApiToken) < pos(Step::WaitApiReady));
        assert!(pos(Step::WaitApiReady) < pos(Step::SetServerUrl));
        assert!(pos(Step::SetServerUrl) < pos(Step::CreateCluster));
        assert!(pos(Step::CreateCluster) < pos(Step::WaitClusterName));
        assert!(pos(Step::WaitClusterName) < pos(Step::WaitNodeCommand));
        assert_eq!(V1_RANCHER_STEPS.last(), Some(&Step::WaitClusterReady));
        assert!(!V1_RANCHER_STEPS.contains(&Step::CreateRegistrationToken), "default-token is Rancher's own");
        assert_eq!(V1_NODE_STEPS, &[Step::CreateMachine, Step::CheckMachine, Step::RunAgent, Step::WaitNodeListed, Step::WaitMachineRunning]);
        // rke1 keeps its order, with the version check before the login.
        assert_eq!(steps_for(Role::Rancher, false, rmm_events::Distribution::Rke1), RANCHER_STEPS);
        assert_eq!(steps_for(Role::Worker, false, rmm_events::Distribution::K3s), V1_NODE_STEPS);
        let rp = |s: Step| RANCHER_STEPS.iter().position(|x| *x == s).unwrap();
        assert!(rp(Step::CheckRancherVersion) < rp(Step::Login));
    }

    #[test]
    fn on_the_v1_path_every_node_joins_as_soon_as_the_node_command_exists() {
        assert!(grants(&v1_given().state()).is_empty(), "nothing before the node command");
        let g = v1_given().done("rancher", Step::WaitNodeCommand, Outcome::NodeCommandReady {
            command: rmm_events::SecretRef { name: "node-command".into(), fingerprint: "abc".into() },
        });
        assert_eq!(grants(&g.state()), vec!["master01", "master02", "master03", "worker01", "worker02"]);
        let g = g.granted("master01").granted("worker01");
        assert_eq!(grants(&g.state()), vec!["master02", "master03", "worker02"], "no master waits for another");
    }

    #[test]
    fn a_v1_run_is_complete_when_every_machine_runs_and_the_cluster_is_ready() {
        let mut g = v1_given();
        let plan = g.state().plan;
        for (name, role) in plan.machine_names() {
            for s in steps_for(role, false, plan.distribution) {
                g = g.done(&name, *s, machine());
            }
        }
        assert!(up_complete(&g.state()));
        let mut g = v1_given();
        for (name, role) in plan.machine_names() {
            for s in steps_for(role, false, plan.distribution).iter().filter(|s| **s != Step::WaitMachineRunning) {
                g = g.done(&name, *s, machine());
            }
        }
        assert!(!up_complete(&g.state()), "a node whose machine is not Running is not done");
    }

    #[test]
    fn transient_failures_have_a_count_and_rancher_unavailable_has_a_time_budget() {
        let mut plan = plan(); // 3 tries, 100 ms backoff
        plan.timeouts.rancher_ready_s = 10;
        assert!(try_again(Failure::Transient, 2, 0, &plan));
        assert!(!try_again(Failure::Transient, 3, 0, &plan), "the third of three tries is the last");
        assert!(!try_again(Failure::Permanent, 1, 0, &plan));
        // Unavailable: past the count, as long as the next try starts within 10 s.
        assert!(try_again(Failure::Unavailable, 3, 0, &plan));
        assert!(try_again(Failure::Unavailable, 7, 3_000, &plan), "3 s + 6.4 s backoff < 10 s");
        assert!(!try_again(Failure::Unavailable, 7, 4_000, &plan), "4 s + 6.4 s backoff > 10 s");
        assert!(!try_again(Failure::Unavailable, 4, 10_000, &plan));
        // Within the count it is always tried again.
        assert!(try_again(Failure::Unavailable, 1, 60_000, &plan));
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let r = Retry { max_tries: 10, backoff_ms: 1000 };
        assert_eq!((backoff_ms(&r, 1), backoff_ms(&r, 2), backoff_ms(&r, 3)), (1000, 2000, 4000));
        assert_eq!(backoff_ms(&r, 12), 30_000);
    }
}
