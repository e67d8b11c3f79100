//! The Coordinator: one per attempt. Spawns the machine actors, owns the
//! dependency graph (who may join when), and decides when the run is
//! complete, failed or interrupted.
//!
//! ```text
//!            Coordinator ── Join ──► master01 ─┐ (masters one at a time,
//!             ▲   ▲   │                        │  workers together after)
//!   Appended  │   │   └─ Stop ──► every actor  │
//!   Finished  │   └──────────────── rancher ◄──┘
//! ```
//! It folds every durable record into the run's state, so its decisions are
//! the pure [`grants`](crate::decide::grants) over the log.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use actix::prelude::*;
use rmm_events::{Event, Record, Role, RunState, Step};
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use crate::context::RunCtx;
use crate::decide::{cluster_wait_grant, down_waits_for_rancher, grants, plan_steps, removal_grant, SCALE_DOWN_STEPS};
use crate::steps::JoinInfo;
use crate::worker::{Drive, Ending, Join, Stop, StepActor};

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    Completed,
    Failed { actor: String, step: Step, reason: String },
    Interrupted,
    /// The log could not be written: nothing more was recorded.
    Fatal(String),
}

pub struct Coordinator {
    ctx: Arc<RunCtx>,
    state: RunState,
    /// The machine actors of this attempt, with their roles.
    machines: Vec<(String, Role)>,
    down: bool,
    actors: BTreeMap<String, Addr<StepActor>>,
    finished: BTreeMap<String, Ending>,
    /// Grants being appended, not yet durable.
    granting: BTreeSet<String>,
    failure: Option<(String, Step, String)>,
    interrupted: bool,
    stop_tx: watch::Sender<bool>,
    /// Every durable record, for the progress view.
    sink: Option<mpsc::UnboundedSender<Record>>,
    end_tx: Option<oneshot::Sender<RunEnd>>,
    ending: bool,
}

impl Coordinator {
    /// `state` must already include this attempt's `AttemptStarted`.
    pub fn new(
        ctx: Arc<RunCtx>,
        state: RunState,
        machines: Vec<(String, Role)>,
        down: bool,
        stop_tx: watch::Sender<bool>,
        sink: Option<mpsc::UnboundedSender<Record>>,
        end_tx: oneshot::Sender<RunEnd>,
    ) -> Coordinator {
        Coordinator {
            ctx,
            state,
            machines,
            down,
            actors: BTreeMap::new(),
            finished: BTreeMap::new(),
            granting: BTreeSet::new(),
            failure: None,
            interrupted: false,
            stop_tx,
            sink,
            end_tx: Some(end_tx),
            ending: false,
        }
    }

    fn join_info(&self) -> Option<JoinInfo> {
        if self.down {
            // Removing a machine needs nothing from Rancher.
            return Some(JoinInfo { url: String::new(), cluster_id: String::new(), ca_checksum: String::new() });
        }
        Some(JoinInfo {
            url: self.state.rancher_url()?.to_string(),
            cluster_id: self.state.cluster_id()?.to_string(),
            ca_checksum: self.state.ca_trust()?.to_string(),
        })
    }

    fn last_id(&self) -> Option<Uuid> {
        self.state.actor("coordinator").and_then(|a| a.last_event)
    }

    /// Lets in the nodes that may join now (and records it first).
    fn grant(&mut self, cause: Option<Uuid>, ctx: &mut Context<Self>) {
        if self.failure.is_some() || self.interrupted {
            return;
        }
        let allowed = if self.down {
            // On an existing Rancher, node machines go once the cluster is
            // gone from Rancher (or at once when the run has nothing there).
            let has_rancher = self.machines.iter().any(|(n, _)| n == "rancher");
            if !self.ctx.plan.existing_rancher() || down_waits_for_rancher(&self.state, has_rancher) {
                return;
            }
            self.machines
                .iter()
                .filter(|(n, r)| *r != Role::Rancher && !self.state.granted.contains(n))
                .map(|(n, _)| n.clone())
                .collect()
        } else {
            // A scale's removals: one at a time, not recorded (the gate is
            // the removed nodes' own recorded steps, which a resume folds
            // and decides on again).
            if let Some(node) = removal_grant(&self.state).filter(|n| !self.granting.contains(n)) {
                self.granting.insert(node.clone());
                if let Some(id) = cause.or(self.last_id()) {
                    self.send_join(&node, id);
                }
            }
            // A scale's wait for the cluster: once the nodes are done (not
            // recorded either: the gate is the nodes' recorded steps).
            if cluster_wait_grant(&self.state) && !self.granting.contains("rancher") {
                self.granting.insert("rancher".into());
                if let Some(id) = cause.or(self.last_id()) {
                    self.send_join("rancher", id);
                }
            }
            grants(&self.state)
        };
        let new: Vec<String> = allowed.into_iter().filter(|n| !self.granting.contains(n)).collect();
        if new.is_empty() {
            return;
        }
        if self.down {
            // Nothing to record: the gate is the rancher actor's recorded
            // `DeleteCluster`, which a resume folds and decides on again.
            self.granting.extend(new.iter().cloned());
            for node in &new {
                if let Some(id) = cause.or(self.last_id()) {
                    self.send_join(node, id);
                }
            }
            return;
        }
        let events: Vec<_> = new
            .iter()
            .map(|node| self.ctx.envelope("coordinator", cause.or(self.last_id()), Event::JoinGranted { node: node.clone() }))
            .collect();
        self.granting.extend(new);
        let journal = self.ctx.journal.clone();
        ctx.spawn(async move { journal.append(events).await }.into_actor(self).map(|result, act, ctx| match result {
            Ok(records) => {
                for r in &records {
                    act.observe(r);
                    if let Event::JoinGranted { node } = &r.envelope.event {
                        act.send_join(node, r.envelope.id);
                    }
                }
                act.grant(records.last().map(|r| r.envelope.id), ctx);
            }
            Err(e) => ctx.notify(Fatal(e)),
        }));
    }

    fn send_join(&self, node: &str, cause: Uuid) {
        tracing::info!(node, "join granted");
        if let (Some(addr), Some(info)) = (self.actors.get(node), self.join_info()) {
            addr.do_send(Join { cause, info });
        }
    }

    fn observe(&mut self, record: &Record) {
        self.state.apply(&record.envelope);
        if let Some(sink) = &self.sink {
            let _ = sink.send(record.clone());
        }
    }

    /// Once every actor has ended: record how the attempt ended, then stop.
    fn maybe_end(&mut self, ctx: &mut Context<Self>) {
        if self.ending || self.finished.len() < self.machines.len() {
            return;
        }
        self.ending = true;
        let (event, end) = if let Some((actor, step, reason)) = self.failure.clone() {
            (
                Event::RunFailed { actor: actor.clone(), step: Some(step), reason: reason.clone() },
                RunEnd::Failed { actor, step, reason },
            )
        } else if self.interrupted {
            (Event::AttemptInterrupted { reason: "stopped by a signal".into() }, RunEnd::Interrupted)
        } else {
            (Event::RunCompleted, RunEnd::Completed)
        };
        let env = self.ctx.envelope("coordinator", self.last_id(), event);
        let journal = self.ctx.journal.clone();
        ctx.spawn(async move { journal.append(vec![env]).await }.into_actor(self).map(move |result, act, ctx| {
            match result {
                Ok(records) => {
                    records.iter().for_each(|r| act.observe(r));
                    act.finish(end, ctx);
                }
                Err(e) => act.finish(RunEnd::Fatal(e), ctx),
            }
        }));
    }

    fn finish(&mut self, end: RunEnd, ctx: &mut Context<Self>) {
        let _ = self.stop_tx.send(true);
        // Ends the progress view.
        self.sink = None;
        if let Some(tx) = self.end_tx.take() {
            let _ = tx.send(end);
        }
        ctx.stop();
    }

    fn stop_all(&mut self) {
        let _ = self.stop_tx.send(true);
        for addr in self.actors.values() {
            addr.do_send(Stop);
        }
    }
}

impl Actor for Coordinator {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let me = ctx.address();
        let planned: BTreeSet<String> = self.ctx.plan.machine_names().into_iter().map(|(n, _)| n).collect();
        for (name, role) in self.machines.clone() {
            let state = self.state.actor(&name).cloned().unwrap_or_default();
            // A node a scale drops: deleted in Rancher, then removed.
            let order = if !self.down && !planned.contains(&name) { SCALE_DOWN_STEPS } else { plan_steps(role, self.down, &self.ctx.plan) };
            let actor = StepActor::new(
                name.clone(),
                role,
                order,
                state,
                self.ctx.clone(),
                me.clone(),
                self.last_id(),
            );
            self.actors.insert(name, actor.start());
        }
        // A resume: nodes let in by an earlier attempt are let in again
        // (not the nodes a scale removes: they go one at a time, below).
        for node in self.state.granted.clone().into_iter().filter(|n| planned.contains(n)) {
            if let Some(id) = self.last_id() {
                self.send_join(&node, id);
            }
        }
        for addr in self.actors.values() {
            addr.do_send(Drive);
        }
        self.grant(None, ctx);
        // Nothing to do (a `down` with no machines) ends at once.
        self.maybe_end(ctx);
    }
}

/// Records an actor made durable.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Appended(pub Vec<Record>);

impl Handler<Appended> for Coordinator {
    type Result = ();
    fn handle(&mut self, msg: Appended, ctx: &mut Context<Self>) {
        for r in &msg.0 {
            self.observe(r);
        }
        self.grant(msg.0.last().map(|r| r.envelope.id), ctx);
    }
}

/// An actor ended its part of this attempt.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Finished {
    pub actor: String,
    pub ending: Ending,
}

impl Handler<Finished> for Coordinator {
    type Result = ();
    fn handle(&mut self, msg: Finished, ctx: &mut Context<Self>) {
        if let Ending::GaveUp { step, reason } = &msg.ending {
            if self.failure.is_none() {
                self.failure = Some((msg.actor.clone(), *step, reason.clone()));
                self.stop_all();
            }
        }
        self.finished.insert(msg.actor, msg.ending);
        self.maybe_end(ctx);
    }
}

/// Stop cleanly: let steps in flight end, record `AttemptInterrupted`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Interrupt;

impl Handler<Interrupt> for Coordinator {
    type Result = ();
    fn handle(&mut self, _: Interrupt, ctx: &mut Context<Self>) {
        if !self.interrupted && !self.ending {
            self.interrupted = true;
            self.stop_all();
            self.maybe_end(ctx);
        }
    }
}

/// The log could not be written: end now, appending nothing more.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Fatal(pub String);

impl Handler<Fatal> for Coordinator {
    type Result = ();
    fn handle(&mut self, msg: Fatal, ctx: &mut Context<Self>) {
        if self.end_tx.is_none() {
            return; // already ended
        }
        self.ending = true;
        // Every actor stops too (waits end early, nothing new starts); the
        // process then ends without waiting for them.
        self.stop_all();
        self.finish(RunEnd::Fatal(msg.0), ctx);
    }
}
