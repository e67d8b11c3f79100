//! `rmm-actors`: the actix actors of a run, their pure state machines, and
//! the ports (traits) through which they touch the world.
//!
//! # Layout
//! * `ports`       — `MachineDriver`, `RancherApi`/`RancherConnector`, `SecretStore`.
//! * `decide`      — pure: the next step of an actor, who may join, when a run is done.
//! * `steps`       — the effect behind each step, and the probe a resume uses.
//! * `worker`      — `StepActor`: the RancherHost actor and the Node actors.
//! * `coordinator` — `Coordinator`: spawns the actors, grants joins, ends the run.
//! * `journal`     — the single writer of the log (group commit).
//! * `crashpoint`  — `RMM_CRASH_AFTER_APPEND` / `RMM_CRASH_BEFORE_OUTCOME`.
//!
//! # Message flow
//! ```text
//!   rancher ─ Appended ─► Coordinator ─ Join ─► master01 … master03, worker01 …
//!   (every actor)  ─ Appended / Finished ─►  Coordinator ─ Stop ─► (every actor)
//! ```
//! Every event records its cause: the event after which its actor decided
//! the step, or the `JoinGranted` event carried by the `Join` message.

pub mod context;
pub mod coordinator;
pub mod crashpoint;
pub mod decide;
pub mod journal;
pub mod ports;
pub mod steps;
pub mod worker;

pub use context::RunCtx;
pub use coordinator::{Coordinator, Interrupt, RunEnd};
pub use journal::{AppendFailure, Journal};
