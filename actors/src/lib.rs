//! `rmm-actors`: the actix actors, their pure state machines, and the ports.
pub mod ports;
