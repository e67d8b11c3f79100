//! Machine drivers.
pub mod local;
