//! Pure decisions: given folded state, what happens next. No IO, no time,
//! no randomness — the same history always gives the same answer, which is
//! why a fresh start and a resume are the same code path.

use rmm_events::{ActorState, Plan, Retry, Role, RunState, Step, StepState};

/// The steps of each kind of actor, in order.
pub const RANCHER_STEPS: &[Step] = &[
    Step::CreateMachine,
    Step::StartServer,
    Step::WaitReady,
    Step::PinCa,
    Step::Login,
    Step::ChangePassword,
    Step::CreateApiToken,
    Step::SetServerUrl,
    Step::CreateCluster,
    Step::CreateRegistrationToken,
    Step::WaitNodeCommand,
    Step::WaitClusterActive,
];
pub const NODE_STEPS: &[Step] = &[Step::CreateMachine, Step::RunAgent, Step::WaitNodeListed, Step::WaitNodeActive];
pub const REMOVE_STEPS: &[Step] = &[Step::RemoveMachine];

/// The steps an actor of `role` runs in a run of this kind.
pub fn steps_for(role: Role, down: bool) -> &'static [Step] {
    match (down, role) {
        (true, _) => REMOVE_STEPS,
        (false, Role::Rancher) => RANCHER_STEPS,
        (false, _) => NODE_STEPS,
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
            Some(StepState::Failed { try_no, attempt: a, error, retryable, .. }) => {
                let used = state.tries_in_attempt(step, attempt);
                let fresh_attempt = *a < attempt;
                if !fresh_attempt && (!retryable || used >= retry.max_tries) {
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
pub fn grants(state: &RunState) -> Vec<String> {
    let ready = state.actor("rancher").is_some_and(|a| a.done(Step::WaitNodeCommand));
    if !ready {
        return Vec::new();
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

/// Whether every actor of an `up` run has finished all its steps.
pub fn up_complete(state: &RunState) -> bool {
    all_done(&state.plan, state, false)
}

fn all_done(plan: &Plan, state: &RunState, down: bool) -> bool {
    plan.machine_names().iter().all(|(name, role)| {
        state
            .actor(name)
            .is_some_and(|a| steps_for(*role, down).iter().all(|s| a.done(*s)))
    })
}
