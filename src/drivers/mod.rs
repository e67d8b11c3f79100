//! Machine drivers: adapters for the [`MachineDriver`] port.
//!
//! * [`local`] — the embedded local world (machines are directories, Rancher
//!   is the emulator running as a detached process).
//! * [`docker`] — Rancher and every node as containers on a Docker Engine.
//!
//! [`MachineDriver`]: rmm_actors::ports::MachineDriver
pub mod docker;
pub mod local;

pub use local::{LocalConfig, LocalDriver};
