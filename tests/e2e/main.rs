//! End-to-end tests: the real `rmm` binary on the local world.

mod support;

mod bad_input;
mod crash;
mod disk_full;
mod docker;
mod docker_machine;
mod down;
mod emulator;
mod existing;
mod faults;
mod kills;
mod kubeconfig;
mod list;
mod live_view;
mod log;
mod lookup;
mod outage;
mod output;
mod plan;
mod readers;
mod scale;
mod report;
mod secrets_lost;
mod shim;
mod ssh;
mod state_dir;
mod up;
mod words;
mod v1;
mod world;
mod worlds;
