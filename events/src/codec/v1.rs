//! Format version 1, frozen: the shapes as they were written, and their
//! upcast into today's types. Never change this file; types it borrows from
//! today's code (`Plan`, `Step`, `Outcome` …) must be frozen here too the day
//! they change.

use serde::Deserialize;
use uuid::Uuid;

use super::v2::Plan;
use crate::{Outcome, RunKind, Step, Via};

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
    AttemptStarted { attempt: u32, command: String, pid: u32, rmm_version: String },
    StepStarted { step: Step, try_no: u32, detail: String },
    StepSucceeded { step: Step, outcome: Outcome, via: Via },
    StepFailed { step: Step, try_no: u32, error: String, retryable: bool },
    JoinGranted { node: String },
    RunCompleted,
    RunFailed { actor: String, step: Option<Step>, reason: String },
    AttemptInterrupted { reason: String },
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
            // Version 1 did not record who ran the command, nor where.
            Event::AttemptStarted { attempt, command, pid, rmm_version } => {
                Now::AttemptStarted { attempt, command, pid, rmm_version, user: String::new(), host: String::new() }
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
