//! End-to-end tests: the real `rmm` binary on the local world.

mod support;

mod bad_input;
mod crash;
mod down;
mod faults;
mod kills;
mod log;
mod report;
mod up;
mod world;
