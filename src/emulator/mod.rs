//! The Rancher API emulator (see mod docs once written).
