//! Machine drivers: adapters for the [`MachineDriver`] port.
//!
//! * [`local`] — the embedded local world (machines are directories, Rancher
//!   is the emulator running as a detached process).
//! * [`docker`] — Rancher and every node as containers on a Docker Engine.
//! * [`docker_machine`] — machines made by `docker-machine` / `rancher-machine`.
//! * [`ssh`] — hosts that already exist, claimed and released over OpenSSH.
//!
//! [`MachineDriver`]: rmm_actors::ports::MachineDriver
pub mod docker;
pub mod docker_machine;
pub mod local;
pub mod ssh;

pub use local::{LocalConfig, LocalDriver};
