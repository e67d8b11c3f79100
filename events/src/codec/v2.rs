//! Format version 2, frozen: the shapes as they were written, and their
//! upcast into today's types. Never change this file (format version 1
//! borrows its `Plan` from here: it did not change between 1 and 2).

use serde::Deserialize;
use uuid::Uuid;

use crate::{Distribution, Outcome, Retry, RunKind, Step, Timeouts, Via};

#[derive(Deserialize)]
pub struct Envelope {
    seq: u64,
    id: Uuid,
    run: Uuid,
    attempt: u32,
    actor: String,
    cause: Option<Uuid>,
    at_ms: i64,
    event: Event,
}

#[derive(Deserialize)]
enum Event {
    RunStarted { kind: RunKind, plan: Plan },
    AttemptStarted { attempt: u32, command: String, pid: u32, rmm_version: String, user: String, host: String },
    StepStarted { step: Step, try_no: u32, detail: String },
    StepSucceeded { step: Step, outcome: Outcome, via: Via },
    StepFailed { step: Step, try_no: u32, error: String, retryable: bool },
    JoinGranted { node: String },
    RunCompleted,
    RunFailed { actor: String, step: Option<Step>, reason: String },
    AttemptInterrupted { reason: String },
}

/// The plan of format versions 1 and 2: no `distribution`, no
/// `kubernetes_version`.
#[derive(Deserialize)]
pub struct Plan {
    cluster_name: String,
    masters: u32,
    workers: u32,
    driver: String,
    parallel: u32,
    rancher_image: String,
    ca_checksum: Option<String>,
    timeouts: Timeouts,
    retry: Retry,
    poll_ms: u64,
}

impl From<Plan> for crate::Plan {
    /// Every run of these versions made an RKE1 cluster through the v3 API.
    fn from(p: Plan) -> Self {
        crate::Plan {
            cluster_name: p.cluster_name,
            masters: p.masters,
            workers: p.workers,
            driver: p.driver,
            parallel: p.parallel,
            rancher_image: p.rancher_image,
            ca_checksum: p.ca_checksum,
            timeouts: p.timeouts,
            retry: p.retry,
            poll_ms: p.poll_ms,
            distribution: Distribution::Rke1,
            kubernetes_version: None,
            rancher_url: None,
        }
    }
}

impl From<Envelope> for crate::Envelope {
    fn from(e: Envelope) -> Self {
        crate::Envelope {
            seq: e.seq,
            id: e.id,
            run: e.run,
            attempt: e.attempt,
            actor: e.actor,
            cause: e.cause,
            at_ms: e.at_ms,
            event: e.event.into(),
        }
    }
}

impl From<Event> for crate::Event {
    fn from(e: Event) -> Self {
        use crate::Event as Now;
        match e {
            Event::RunStarted { kind, plan } => Now::RunStarted { kind, plan: plan.into() },
            Event::AttemptStarted { attempt, command, pid, rmm_version, user, host } => {
                Now::AttemptStarted { attempt, command, pid, rmm_version, user, host }
            }
            Event::StepStarted { step, try_no, detail } => Now::StepStarted { step, try_no, detail },
            Event::StepSucceeded { step, outcome, via } => Now::StepSucceeded { step, outcome, via },
            Event::StepFailed { step, try_no, error, retryable } => Now::StepFailed { step, try_no, error, retryable },
            Event::JoinGranted { node } => Now::JoinGranted { node },
            Event::RunCompleted => Now::RunCompleted,
            Event::RunFailed { actor, step, reason } => Now::RunFailed { actor, step, reason },
            Event::AttemptInterrupted { reason } => Now::AttemptInterrupted { reason },
        }
    }
}
