//! Old logs keep working: one encoded record of every event kind, for every
//! format version rmm has written, is checked in under `tests/fixtures/v*/`
//! and decoded here into today's types (upcasting older versions).
//!
//! To add fixtures for a new format version, bump `codec::FORMAT_VERSION`,
//! then run `RMM_WRITE_FIXTURES=1 cargo test -p rmm-events --test compat`
//! once and commit the new directory. Never rewrite an old directory.

use std::path::PathBuf;

use rmm_events::{codec, Distribution, Envelope, Event, Outcome, Plan, RunKind, SecretRef, Step, Via};
use uuid::Uuid;

/// The plan written into fixtures. Versions 1 and 2 had no
/// `distribution` / `kubernetes_version`: their fixtures decode as rke1
/// with no version (see [`expected`]), whatever today's default is.
fn plan() -> Plan {
    Plan {
        // The default image when the fixtures were written (frozen: a
        // fixture never changes with today's defaults).
        rancher_image: "rancher/rancher:v2.11.3".into(),
        ca_checksum: Some("ab".repeat(32)),
        distribution: Distribution::Rke2,
        kubernetes_version: Some("v1.35.1+rke2r1".into()),
        rancher_url: Some("https://rancher.example.com".into()),
        ..Plan::default()
    }
}

/// One canonical event of every kind (and every outcome), by name.
fn canonical() -> Vec<(&'static str, Event)> {
    let secret = |name: &str| SecretRef { name: name.into(), fingerprint: "0123456789ab".into() };
    let ok = |step, outcome| Event::StepSucceeded { step, outcome, via: Via::Done };
    vec![
        ("run_started", Event::RunStarted { kind: RunKind::Up, plan: plan() }),
        ("run_started_down", Event::RunStarted { kind: RunKind::Down, plan: plan() }),
        ("attempt_started", attempt_started()),
        ("step_started", Event::StepStarted { step: Step::CreateMachine, try_no: 1, detail: "master machine master01".into() }),
        ("step_failed", Event::StepFailed { step: Step::Login, try_no: 2, error: "401 authentication failed".into(), retryable: true }),
        ("machine_created", ok(Step::CreateMachine, Outcome::MachineCreated { ip: "127.1.2.3".into() })),
        ("server_started", ok(Step::StartServer, Outcome::ServerStarted { image: "rancher/rancher:v2.11.3".into() })),
        ("ready", ok(Step::WaitReady, Outcome::Ready)),
        ("ca_pinned", ok(Step::PinCa, Outcome::CaPinned { checksum: "cd".repeat(32) })),
        ("logged_in", ok(Step::Login, Outcome::LoggedIn { token: secret("login-token") })),
        ("password_changed", ok(Step::ChangePassword, Outcome::PasswordChanged { password: secret("admin-password") })),
        ("api_token_created", ok(Step::CreateApiToken, Outcome::ApiTokenCreated { token_id: "token-x69qs".into(), token: secret("api-token") })),
        ("server_url_set", ok(Step::SetServerUrl, Outcome::ServerUrlSet { url: "https://127.1.2.1:8443".into() })),
        ("cluster_created", ok(Step::CreateCluster, Outcome::ClusterCreated { cluster_id: "c-7kx2q".into() })),
        ("registration_token", ok(Step::CreateRegistrationToken, Outcome::RegistrationTokenCreated { token_id: "c-7kx2q:default-token".into() })),
        ("node_command_ready", ok(Step::WaitNodeCommand, Outcome::NodeCommandReady { command: secret("node-command") })),
        ("cluster_active", ok(Step::WaitClusterActive, Outcome::ClusterActive)),
        ("agent_started", Event::StepSucceeded { step: Step::RunAgent, outcome: Outcome::AgentStarted, via: Via::Adopted }),
        ("node_listed", ok(Step::WaitNodeListed, Outcome::NodeListed { node_id: "c-7kx2q:m-594b5a31a8ed".into() })),
        ("node_active", ok(Step::WaitNodeActive, Outcome::NodeActive)),
        ("machine_removed", ok(Step::RemoveMachine, Outcome::MachineRemoved)),
        ("join_granted", Event::JoinGranted { node: "master02".into() }),
        ("run_completed", Event::RunCompleted),
        ("run_failed", Event::RunFailed { actor: "worker01".into(), step: Some(Step::CreateMachine), reason: "quota".into() }),
        ("attempt_interrupted", Event::AttemptInterrupted { reason: "stopped by a signal".into() }),
    ]
}

/// Events added after a format version's fixtures were first written,
/// with the first version that has them (they are appended at the end of
/// their enums, so the encoding of everything older is unchanged).
fn added_later() -> Vec<(u8, &'static str, Event)> {
    let ok = |step, outcome| Event::StepSucceeded { step, outcome, via: Via::Done };
    vec![
        (2, "check_server_started", Event::StepStarted { step: Step::CheckServer, try_no: 1, detail: "server container running and answering?".into() }),
        (2, "server_running", ok(Step::CheckServer, Outcome::ServerRunning)),
        (2, "server_restarted", ok(Step::CheckServer, Outcome::ServerRestarted { state: "exited".into() })),
        (3, "rancher_version", ok(Step::CheckRancherVersion, Outcome::RancherVersion { version: "v2.15.1".into() })),
        (3, "api_ready", ok(Step::WaitApiReady, Outcome::ApiReady)),
        (3, "kubernetes_version_chosen", ok(Step::ChooseKubernetesVersion, Outcome::KubernetesVersionChosen { version: "v1.35.1+rke2r1".into(), server_default: true })),
        (3, "cluster_named", ok(Step::WaitClusterName, Outcome::ClusterNamed { management_id: "c-m-7kx2qz4b".into() })),
        (3, "machine_running", ok(Step::WaitMachineRunning, Outcome::MachineRunning { machine: "custom-0123456789ab".into(), node: "master01".into() })),
        (3, "cluster_ready", ok(Step::WaitClusterReady, Outcome::ClusterReady)),
        (3, "ca_system_roots", ok(Step::PinCa, Outcome::CaSystemRoots)),
        (3, "progress", Event::Progress { step: Step::WaitClusterReady, message: "waiting for probes: etcd, kube-apiserver".into() }),
        (4, "password_kept", ok(Step::ChangePassword, Outcome::PasswordKept)),
        (4, "delete_cluster_started", Event::StepStarted { step: Step::DeleteCluster, try_no: 1, detail: "v1 cluster fleet-default/tinysetup".into() }),
        (4, "cluster_deleted", ok(Step::DeleteCluster, Outcome::ClusterDeleted { management_id: "c-m-7kx2qz4b".into() })),
        (4, "check_machine_started", Event::StepStarted { step: Step::CheckMachine, try_no: 1, detail: "machine worker01 running?".into() }),
        (4, "machine_up", ok(Step::CheckMachine, Outcome::MachineUp { ip: "10.231.4.111".into() })),
        (4, "machine_started_again", ok(Step::CheckMachine, Outcome::MachineStartedAgain { state: "stopped".into(), ip: "10.231.4.112".into() })),
        (4, "machine_made_again", ok(Step::CheckMachine, Outcome::MachineMadeAgain { ip: "10.231.4.113".into() })),
        (4, "host_claimed", ok(Step::CreateMachine, Outcome::HostClaimed { ip: "10.0.0.11".into(), host_key: "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU".into() })),
        (4, "plan_changed", Event::PlanChanged { plan: Plan { masters: 5, workers: 2, ..plan() } }),
        (4, "delete_node_started", Event::StepStarted { step: Step::DeleteNode, try_no: 1, detail: "the CAPI machine of node worker05".into() }),
        (4, "node_deleted", ok(Step::DeleteNode, Outcome::NodeDeleted { machine: "custom-0123456789ab".into() })),
        (4, "step_interrupted", Event::StepInterrupted { step: Step::WaitClusterReady, try_no: 1, reason: "stopped by a signal".into() }),
        (4, "delete_api_tokens_started", Event::StepStarted { step: Step::DeleteApiTokens, try_no: 1, detail: "the run's API tokens and login sessions".into() }),
        (4, "api_tokens_deleted", ok(Step::DeleteApiTokens, Outcome::ApiTokensDeleted { deleted: 2 })),
    ]
}

#[test]
fn fixtures_of_events_added_later_decode_from_their_first_version_on() {
    for (since, name, event) in added_later() {
        // Written into today's version's directory, whatever version first had them.
        if std::env::var_os("RMM_WRITE_FIXTURES").is_some() && since <= codec::FORMAT_VERSION {
            std::fs::create_dir_all(fixtures(codec::FORMAT_VERSION)).unwrap();
            let path = fixtures(codec::FORMAT_VERSION).join(format!("{name}.bin"));
            if !path.exists() {
                std::fs::write(&path, codec::encode(&envelope(event.clone()))).unwrap();
            }
        }
        for version in since..=codec::FORMAT_VERSION {
            let path = fixtures(version).join(format!("{name}.bin"));
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let decoded = codec::decode(&bytes).unwrap_or_else(|e| panic!("v{version} {name}: {e}"));
            assert_eq!(decoded, expected(version, event.clone()), "v{version} {name}");
        }
    }
}

fn attempt_started() -> Event {
    Event::AttemptStarted {
        attempt: 2,
        command: "rmm up --resume".into(),
        pid: 4242,
        rmm_version: "0.1.0".into(),
        user: "ops".into(),
        host: "build-7".into(),
    }
}

fn envelope(event: Event) -> Envelope {
    Envelope {
        seq: 7,
        id: Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0001),
        run: Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0002),
        attempt: 2,
        actor: "master01".into(),
        cause: Some(Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0003)),
        at_ms: 1_764_000_000_000,
        event,
    }
}

fn fixtures(version: u8) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(format!("v{version}"))
}

/// What a fixture of `version` must decode to today: the canonical event,
/// upcast.
fn expected(version: u8, event: Event) -> Envelope {
    match (version, event) {
        // Version 1 had no `user`/`host`: they upcast to "".
        (1, Event::AttemptStarted { attempt, command, pid, rmm_version, .. }) => {
            envelope(Event::AttemptStarted { attempt, command, pid, rmm_version, user: String::new(), host: String::new() })
        }
        // Versions 1 and 2 made only RKE1 clusters and recorded no version.
        (1 | 2, Event::RunStarted { kind, plan }) => envelope(Event::RunStarted {
            kind,
            plan: Plan { distribution: Distribution::Rke1, kubernetes_version: None, rancher_url: None, ..plan },
        }),
        // Versions 1 to 3 always started their own Rancher.
        (3, Event::RunStarted { kind, plan }) => envelope(Event::RunStarted { kind, plan: Plan { rancher_url: None, ..plan } }),
        (_, event) => envelope(event),
    }
}

#[test]
fn fixtures_of_every_kind_and_every_version_decode_into_todays_types() {
    if std::env::var_os("RMM_WRITE_FIXTURES").is_some() {
        let dir = fixtures(codec::FORMAT_VERSION);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, event) in canonical() {
            std::fs::write(dir.join(format!("{name}.bin")), codec::encode(&envelope(event))).unwrap();
        }
    }
    let mut checked = 0;
    for version in 1..=codec::FORMAT_VERSION {
        let dir = fixtures(version);
        assert!(dir.is_dir(), "no fixtures for format version {version}: {}", dir.display());
        for (name, event) in canonical() {
            let path = dir.join(format!("{name}.bin"));
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(bytes[0], version, "{}", path.display());
            let decoded = codec::decode(&bytes).unwrap_or_else(|e| panic!("v{version} {name}: {e}"));
            assert_eq!(decoded, expected(version, event), "v{version} {name}");
            checked += 1;
        }
    }
    assert!(checked >= 25);
}

#[test]
fn every_event_kind_has_a_fixture() {
    // A new Event variant must get a canonical fixture: this match breaks
    // the build until it is listed.
    for (_, event) in canonical() {
        match event {
            Event::RunStarted { .. }
            | Event::AttemptStarted { .. }
            | Event::StepStarted { .. }
            | Event::StepSucceeded { .. }
            | Event::StepFailed { .. }
            | Event::JoinGranted { .. }
            | Event::RunCompleted
            | Event::RunFailed { .. }
            | Event::AttemptInterrupted { .. }
            | Event::Progress { .. }
            | Event::PlanChanged { .. }
            | Event::StepInterrupted { .. } => {}
        }
    }
    let mut all: Vec<Event> = canonical().into_iter().map(|(_, e)| e).collect();
    all.extend(added_later().into_iter().map(|(_, _, e)| e));
    let kinds: std::collections::BTreeSet<&str> = all.iter().map(|e| e.kind()).collect();
    assert_eq!(kinds.len(), 12);
}

#[test]
fn a_run_of_an_old_log_decodes_as_rke1() {
    for version in 1..=2u8 {
        let bytes = std::fs::read(fixtures(version).join("run_started.bin")).unwrap();
        match codec::decode(&bytes).unwrap().event {
            Event::RunStarted { plan, .. } => {
                assert_eq!(plan.distribution, Distribution::Rke1, "v{version}");
                assert_eq!(plan.kubernetes_version, None, "v{version}");
            }
            other => panic!("v{version}: {other:?}"),
        }
    }
}

#[test]
fn a_run_of_a_log_before_version_4_started_its_own_rancher() {
    for version in 1..=3u8 {
        let bytes = std::fs::read(fixtures(version).join("run_started.bin")).unwrap();
        match codec::decode(&bytes).unwrap().event {
            Event::RunStarted { plan, .. } => assert_eq!(plan.rancher_url, None, "v{version}"),
            other => panic!("v{version}: {other:?}"),
        }
    }
}

#[test]
fn a_future_format_version_is_refused_naming_it() {
    let mut bytes = codec::encode(&envelope(Event::RunCompleted));
    bytes[0] = codec::FORMAT_VERSION + 1;
    let err = codec::decode(&bytes).unwrap_err().to_string();
    assert!(err.contains(&format!("version {}", codec::FORMAT_VERSION + 1)), "{err}");
}
