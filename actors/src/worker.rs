//! `StepActor`: one per machine — the RancherHost actor (`rancher`) and a
//! Node actor per master and worker. Thin glue around the pure
//! [`next_step`](crate::decide::next_step) and the effects in `steps`.
//!
//! ```text
//!  Drive ──► decide(state) ──► Run/Reconcile ──► [intent] ─► effect ─► [outcome]
//!    ▲                                                                    │
//!    └──────────────────── apply durable records ◄────────────────────────┘
//! ```
//! State trails the log: the actor applies a record only once the journal
//! returned it (durable). Every record goes to the coordinator as well.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use rmm_events::{now_ms, ActorState, Event, Record, Role, Step, Via};
use uuid::Uuid;

use crate::context::RunCtx;
use crate::coordinator::{Appended, Coordinator, Finished, Fatal};
use crate::crashpoint;
use crate::decide::{next_step, try_again, Failure, Next};
use crate::steps::{self, JoinInfo, StepCall};

/// How an actor ended its part of this attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    Done,
    GaveUp { step: Step, reason: String },
    Stopped,
}

pub struct StepActor {
    name: String,
    role: Role,
    order: &'static [Step],
    state: ActorState,
    ctx: Arc<RunCtx>,
    coordinator: Addr<Coordinator>,
    /// Node actors need the Rancher side's details before any step after
    /// their machine; `None` until the coordinator lets them join.
    join: Option<JoinInfo>,
    needs_join: bool,
    /// The event that caused the actor's next step.
    cause: Option<Uuid>,
    /// When each step's first try of this attempt started (the time budget
    /// of a step that finds Rancher unavailable runs from there).
    first_try_ms: BTreeMap<Step, i64>,
    busy: bool,
    stopping: bool,
    ended: bool,
}

impl StepActor {
    pub fn new(
        name: String,
        role: Role,
        order: &'static [Step],
        state: ActorState,
        ctx: Arc<RunCtx>,
        coordinator: Addr<Coordinator>,
        started_by: Option<Uuid>,
    ) -> StepActor {
        // A node joins when let in; in a `down` on an existing Rancher, its
        // machine is removed when let in (after the cluster's deletion).
        let needs_join = role != Role::Rancher
            && (order.contains(&Step::RunAgent)
                || order.contains(&Step::DeleteNode)
                || (order.contains(&Step::RemoveMachine) && ctx.plan.existing_rancher()));
        // This attempt's first event of the actor is caused by the
        // attempt's start (which records the command the user typed).
        let cause = started_by.or(state.last_event);
        StepActor {
            name,
            role,
            order,
            state,
            ctx,
            coordinator,
            join: None,
            needs_join,
            cause,
            first_try_ms: BTreeMap::new(),
            busy: false,
            stopping: false,
            ended: false,
        }
    }

    fn end(&mut self, ending: Ending) {
        if !self.ended {
            self.ended = true;
            self.coordinator.do_send(Finished { actor: self.name.clone(), ending });
        }
    }
}

impl Actor for StepActor {
    type Context = Context<Self>;
}

/// Look at the state and start the next step, if any.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Drive;

/// The coordinator lets a node run its agent. `cause` is the id of the
/// `JoinGranted` event.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Join {
    pub cause: Uuid,
    pub info: JoinInfo,
}

/// Finish the step in flight (waits end early) and start nothing new.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop;

impl Handler<Join> for StepActor {
    type Result = ();
    fn handle(&mut self, msg: Join, ctx: &mut Context<Self>) {
        self.join = Some(msg.info);
        self.cause = Some(msg.cause);
        ctx.notify(Drive);
    }
}

impl Handler<Stop> for StepActor {
    type Result = ();
    fn handle(&mut self, _: Stop, _: &mut Context<Self>) {
        self.stopping = true;
        if !self.busy {
            self.end(Ending::Stopped);
        }
    }
}

impl Handler<Drive> for StepActor {
    type Result = ();
    fn handle(&mut self, _: Drive, ctx: &mut Context<Self>) {
        if self.busy || self.ended {
            return;
        }
        // Told to stop (a `Stop`, or the run's stop flag: set on a fatal
        // log error, which sends no `Stop` in time to every actor): start
        // nothing, end. Driving on instead would spin, since every step
        // returns at once without doing anything once the flag is set.
        if self.stopping || self.ctx.stopped() {
            self.end(Ending::Stopped);
            return;
        }
        let has_join = self.join.is_some();
        let needs_join = self.needs_join;
        let state = &self.state;
        // The rancher actor of a scale: its cluster wait once let in.
        let open = |s: Step| {
            if state.cluster_wait_after_nodes(s) {
                return has_join;
            }
            !needs_join || s == Step::CreateMachine || has_join
        };
        let next = next_step(self.order, open, &self.state, self.ctx.attempt, &self.ctx.plan.retry);
        tracing::debug!(actor = %self.name, ?next, "decided");
        match next {
            Next::Wait => {}
            Next::Done => self.end(Ending::Done),
            Next::GiveUp { step, reason } => self.end(Ending::GaveUp { step, reason }),
            Next::Run { .. } | Next::Reconcile { .. } => {
                self.busy = true;
                let step = match &next {
                    Next::Run { step, .. } | Next::Reconcile { step, .. } => *step,
                    _ => unreachable!("matched above"),
                };
                let job = Job {
                    first_try_ms: self.first_try_ms.get(&step).copied(),
                    ctx: self.ctx.clone(),
                    actor: self.name.clone(),
                    role: self.role,
                    state: self.state.clone(),
                    join: self.join.clone(),
                    cause: self.cause,
                    coordinator: self.coordinator.clone(),
                };
                ctx.spawn(job.run(next).into_actor(self).map(|result, act, ctx| {
                    act.busy = false;
                    match result {
                        // Nothing recorded: the step did not start because
                        // the run is stopping. End rather than drive again.
                        Ok(records) if records.is_empty() => act.end(Ending::Stopped),
                        Ok(records) => {
                            for r in &records {
                                if let Event::StepStarted { step, .. } = &r.envelope.event {
                                    if r.envelope.attempt == act.ctx.attempt {
                                        act.first_try_ms.entry(*step).or_insert(r.envelope.at_ms);
                                    }
                                }
                                act.state.apply(&r.envelope);
                                act.cause = Some(r.envelope.id);
                            }
                            ctx.notify(Drive);
                        }
                        Err(e) => {
                            act.ended = true;
                            act.coordinator.do_send(Fatal(e));
                        }
                    }
                }));
            }
        }
    }
}

/// A failure reason as one line (tools answer with several).
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// One step's work, owned so it can run while the actor keeps receiving.
struct Job {
    ctx: Arc<RunCtx>,
    actor: String,
    role: Role,
    state: ActorState,
    join: Option<JoinInfo>,
    cause: Option<Uuid>,
    coordinator: Addr<Coordinator>,
    /// When the step's first try of this attempt started, if it had one.
    first_try_ms: Option<i64>,
}

impl Job {
    /// Returns the durable records it appended (none only when the run is
    /// stopping); `Err` only when the log cannot be written (fatal).
    async fn run(self, next: Next) -> Result<Vec<Record>, String> {
        match next {
            Next::Run { step, try_no, delay_ms } => self.run_step(step, try_no, delay_ms).await,
            Next::Reconcile { step, try_no } => self.reconcile(step, try_no).await,
            _ => Ok(Vec::new()),
        }
    }

    fn call(&self, step: Step, try_no: u32) -> StepCall<'_> {
        StepCall {
            ctx: &self.ctx,
            actor: &self.actor,
            role: self.role,
            step,
            try_no,
            state: &self.state,
            join: self.join.as_ref(),
            observer: Some(&self.coordinator),
        }
    }

    async fn append(&self, cause: Option<Uuid>, event: Event) -> Result<Record, String> {
        let env = self.ctx.envelope(&self.actor, cause, event);
        let record = self.ctx.journal.append(vec![env]).await?.remove(0);
        self.coordinator.do_send(Appended(vec![record.clone()]));
        Ok(record)
    }

    async fn run_step(&self, step: Step, try_no: u32, delay_ms: u64) -> Result<Vec<Record>, String> {
        if delay_ms > 0 && !self.ctx.sleep(Duration::from_millis(delay_ms)).await {
            return Ok(Vec::new());
        }
        // A creation waits for a slot (`--parallel`) *before* its intent is
        // recorded: a queued machine is not "being created", and a stop
        // while it queues creates nothing.
        let _slot = match step {
            Step::CreateMachine => match self.ctx.slot().await {
                Some(slot) => Some(slot),
                None => return Ok(Vec::new()),
            },
            _ => None,
        };
        if self.ctx.stopped() {
            return Ok(Vec::new());
        }
        let call = self.call(step, try_no);
        let detail = steps::prepare(&call).map_err(|e| format!("{} {}: {}", self.actor, step.as_str(), e.message))?;
        let started = self.append(self.cause, Event::StepStarted { step, try_no, detail }).await?;
        tracing::info!(actor = %self.actor, step = step.as_str(), try_no, seq = started.envelope.seq, "step started");
        let result = steps::effect(&call).await;
        if let Err(e) = &result {
            tracing::info!(actor = %self.actor, step = step.as_str(), try_no, retryable = e.retryable, "step failed");
        }
        if step.is_effect() {
            crashpoint::effect_done();
        }
        let outcome = match result {
            Ok(outcome) => Event::StepSucceeded { step, outcome, via: Via::Done },
            // Cut short by Ctrl-C / SIGTERM: not a failed try.
            Err(e) if e.stopped => {
                Event::StepInterrupted { step, try_no, reason: one_line(&self.ctx.redact(&e.message)) }
            }
            Err(e) => self.failed(step, try_no, &e, started.envelope.at_ms),
        };
        let ended = self.append(Some(started.envelope.id), outcome).await?;
        Ok(vec![started, ended])
    }

    /// The `StepFailed` of a try: whether another try follows in this
    /// attempt is decided here ([`try_again`]) and recorded as `retryable`,
    /// so the last try of a step never reads "will retry".
    fn failed(&self, step: Step, try_no: u32, e: &steps::StepError, started_ms: i64) -> Event {
        let plan = &self.ctx.plan;
        let used = self.state.tries_in_attempt(step, self.ctx.attempt) + 1;
        let elapsed_ms = (now_ms() - self.first_try_ms.unwrap_or(started_ms)).max(0) as u64;
        let failure = match (e.retryable, e.unavailable) {
            (false, _) => Failure::Permanent,
            (true, false) => Failure::Transient,
            (true, true) => Failure::Unavailable,
        };
        let again = try_again(failure, used, elapsed_ms, plan);
        let mut error = one_line(&self.ctx.redact(&e.message));
        if e.retryable && !again {
            let tries = if used == 1 { "1 try".to_string() } else { format!("{used} tries") };
            error.push_str(&match failure {
                Failure::Unavailable => format!(
                    " (gave up after {tries} in {:.1} s: Rancher stayed unavailable for longer than rancher_ready_s = {} s)",
                    elapsed_ms as f64 / 1000.0,
                    plan.timeouts.rancher_ready_s
                ),
                _ => format!(" (gave up after {tries})"),
            });
        }
        Event::StepFailed { step, try_no, error, retryable: again }
    }

    async fn reconcile(&self, step: Step, try_no: u32) -> Result<Vec<Record>, String> {
        let call = self.call(step, try_no);
        let event = match steps::probe(&call).await {
            Ok(Some(outcome)) => Event::StepSucceeded { step, outcome, via: Via::Adopted },
            Ok(None) => Event::StepFailed {
                step,
                try_no,
                error: "interrupted before its outcome was recorded; not found in the world, so it runs again".into(),
                retryable: true,
            },
            Err(e) => Event::StepFailed {
                step,
                try_no,
                error: one_line(&format!(
                    "interrupted; could not check the world ({}), so it runs again",
                    self.ctx.redact(&e.message)
                )),
                retryable: true,
            },
        };
        Ok(vec![self.append(self.cause, event).await?])
    }
}
