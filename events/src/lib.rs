//! `rmm-events`: the pure core of rmm. What an event is, how it is encoded
//! and chained, where it is stored, and how a log folds into state.
//! No actix, no network.
//!
//! # Layout
//! * `event`    — [`Event`] (past tense), [`Step`], [`Outcome`], [`Role`].
//! * `plan`     — [`Plan`], carried inside `RunStarted` so the log is self-contained.
//! * `envelope` — [`Envelope`] (seq, id, run, attempt, actor, cause, time) and the hash chain.
//! * `codec`    — the only bincode call sites; a format version byte first.
//! * `store`    — [`SledLog`]: sled 0.34.7 plus `fdatasync`, group commit.
//! * `state`    — [`History`], [`RunState`], [`ActorState`]: `apply` only, no decisions.
//! * `tail`     — [`WalTail`]: records another process appended, read from its write-ahead file.
//!
//! # Glossary
//! * **Step** — one unit of work of one actor (create a machine, log in …).
//! * **Intent** — `StepStarted`, durable before the step's effect begins.
//! * **Outcome** — `StepSucceeded` or `StepFailed`, appended when it ends.
//! * **Attempt** — one process working on a run; a resume is a new attempt.
//!
//! # Crash model
//! A process may die between any two instructions. Because the intent is
//! durable before the effect, a crash can only leave an intent without an
//! outcome, never an effect the log does not mention.

pub mod codec;
pub mod envelope;
mod error;
pub mod event;
pub mod plan;
pub mod state;
pub mod store;
pub mod tail;

pub use envelope::{chain_hash, now_ms, rfc3339_ms, Envelope, Hash, Record, GENESIS};
pub use error::{Error, Result};
pub use event::{Event, Outcome, Role, RunKind, SecretRef, Step, Via};
pub use plan::{Distribution, Plan, Retry, Timeouts, DEFAULT_DISTRIBUTION, DEFAULT_RANCHER_IMAGE};
pub use state::{node_role, ActorState, History, RunState, RunStatus, StepState};
pub use store::{OpenError, SledLog, READER_CACHE_BYTES};
pub use tail::{Tail, WalTail};
