//! Machine drivers: adapters for the [`MachineDriver`] port.
//!
//! * [`local`] — the embedded local world (machines are directories, Rancher
//!   is the emulator running as a detached process).
//!
//! [`MachineDriver`]: rmm_actors::ports::MachineDriver
pub mod local;

pub use local::{LocalConfig, LocalDriver};
