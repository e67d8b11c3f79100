//! End-to-end tests: the real `rmm` binary on the local world.

mod support;

mod bad_input;
mod crash;
mod disk_full;
mod down;
mod faults;
mod kills;
mod log;
mod lookup;
mod outage;
mod report;
mod shim;
mod up;
