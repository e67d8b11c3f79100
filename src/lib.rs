//! rmm: stands up a Rancher management server and an HA Kubernetes cluster
//! under it, recording every step in a durable, hash-chained event log.
pub mod drivers;
pub mod emulator;
pub mod rancher;
