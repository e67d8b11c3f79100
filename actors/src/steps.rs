//! The effects behind each step, and the probes a resume uses to ask the
//! world whether an in-doubt step already happened (DESIGN §4).
//!
//! Each effect is written so that running it again is safe: every step
//! that creates something in Rancher looks for it first, on every try (an
//! API token by its description, a cluster by name, a registration by node
//! name), so a step with no intent on record still finds what exists.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rmm_events::{ActorState, Outcome, Role, SecretRef, Step};

use crate::context::{generate_password, secret, RunCtx};
use crate::ports::{
    ca_checksum, ApiError, CaTrust, DriverError, MachineSpec, MachineState, RancherApi, Secret, ServerSpec,
};

/// What a node needs to know from the Rancher side to join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinInfo {
    pub url: String,
    pub cluster_id: String,
    /// Empty: the server is verified against the system's trust roots.
    pub ca_checksum: String,
}

/// One step to run, with everything it may read.
pub struct StepCall<'a> {
    pub ctx: &'a RunCtx,
    pub actor: &'a str,
    pub role: Role,
    pub step: Step,
    pub try_no: u32,
    /// The actor's folded state when the step was decided.
    pub state: &'a ActorState,
    pub join: Option<&'a JoinInfo>,
    /// Where records a step appends itself (Rancher's progress messages)
    /// are shown, like the step's own: the coordinator (the live view).
    pub observer: Option<&'a actix::Addr<crate::coordinator::Coordinator>>,
}

/// A failed step: recorded as `StepFailed`; retried when `retryable`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepError {
    pub message: String,
    pub retryable: bool,
    /// Rancher did not answer (no connection, a timeout, a 5xx/429): tried
    /// again for as long as `rancher_ready_s` allows, not a count of tries
    /// (see [`crate::decide::try_again`]).
    pub unavailable: bool,
    /// The run was told to stop (Ctrl-C, SIGTERM) and the step ended
    /// early: recorded as `StepInterrupted`, not as a failed try.
    pub stopped: bool,
}

impl StepError {
    pub fn permanent(message: impl Into<String>) -> StepError {
        StepError { message: message.into(), retryable: false, unavailable: false, stopped: false }
    }
    pub fn transient(message: impl Into<String>) -> StepError {
        StepError { message: message.into(), retryable: true, unavailable: false, stopped: false }
    }
    /// The run was told to stop while the step was under way.
    pub fn stopped(message: impl Into<String>) -> StepError {
        StepError { message: message.into(), retryable: true, unavailable: false, stopped: true }
    }
}

impl From<DriverError> for StepError {
    fn from(e: DriverError) -> Self {
        StepError { retryable: e.is_retryable(), message: e.to_string(), unavailable: false, stopped: false }
    }
}

impl From<ApiError> for StepError {
    fn from(e: ApiError) -> Self {
        // A TLS mismatch is a server that answers but is not ours: never
        // retried, whatever the budget.
        StepError { retryable: e.is_retryable(), unavailable: e.is_retryable(), message: e.to_string(), stopped: false }
    }
}

type StepResult<T> = Result<T, StepError>;

fn secret_ref(name: &str, value: &Secret) -> SecretRef {
    SecretRef { name: name.to_string(), fingerprint: value.fingerprint() }
}

/// Work done *before* the intent is recorded: values that must be chosen
/// and stored before the call that uses them (the bootstrap password, the
/// new admin password). Returns the intent's detail line.
pub fn prepare(call: &StepCall<'_>) -> StepResult<String> {
    let ctx = call.ctx;
    let ensure = |name: &str, len: usize| -> StepResult<Secret> {
        if let Some(s) = ctx.secret(name) {
            return Ok(s);
        }
        let s = generate_password(len);
        ctx.put_secret(name, &s).map_err(StepError::permanent)?;
        Ok(s)
    };
    Ok(match call.step {
        Step::CreateMachine => format!("{} machine {} (driver {})", call.role.as_str(), call.actor, ctx.plan.driver),
        Step::StartServer => {
            let pw = ensure(secret::BOOTSTRAP_PASSWORD, 24)?;
            format!("{} with bootstrap password {}", ctx.plan.rancher_image, pw.fingerprint())
        }
        Step::ChangePassword if ctx.plan.existing_rancher() => {
            let pw = ensure(secret::ADMIN_PASSWORD, 24)?;
            format!(
                "if the server's first login is still to be done (the given password is the bootstrap one): admin password {} (stored before the call); else the given password is the admin password and is kept",
                pw.fingerprint()
            )
        }
        Step::ChangePassword => {
            let pw = ensure(secret::ADMIN_PASSWORD, 24)?;
            format!("admin password {} (stored before the call)", pw.fingerprint())
        }
        Step::PinCa if ctx.plan.existing_rancher() => match &ctx.plan.ca_checksum {
            Some(sum) => format!("the CA served at {} must have the --ca-checksum {sum}", rancher_url(call)?),
            None => format!(
                "existing Rancher: no driver channel to its machine, so its CA is trusted on first use (the CA served now at {} is pinned and recorded; pass --ca-checksum to pin it up front)",
                rancher_url(call)?
            ),
        },
        Step::SetServerUrl if ctx.plan.existing_rancher() => format!("kept if the server has one; else {}", rancher_url(call)?),
        // Both addresses on record: the `server-url` (what nodes and pods
        // dial) and, when the driver publishes the server elsewhere, where
        // rmm reaches it (`rmm credentials` gives that one).
        Step::SetServerUrl => {
            let url = rancher_url(call)?;
            match ctx.driver.api_url(&url) {
                reach if reach != url => format!("{url} (published at {reach}, where rmm reaches it)"),
                _ => url,
            }
        }
        Step::DeleteCluster => format!(
            "v1 cluster {}/{} in Rancher at {}, until it and its management cluster are gone (timeout {}s); the server is left as it is",
            v1::FLEET_DEFAULT,
            ctx.plan.cluster_name,
            rancher_url(call)?,
            ctx.plan.timeouts.active_s
        ),
        Step::DeleteApiTokens => format!(
            "the run's API tokens and login sessions in Rancher at {} (`rmm run {}`)",
            rancher_url(call)?,
            ctx.undo.as_ref().map(|u| u.run).unwrap_or(ctx.run)
        ),
        Step::DeleteNode => format!(
            "{} of node {} in Rancher, until Rancher has let it go (timeout {}s); then its machine is removed",
            if ctx.plan.distribution.is_v1() { "the CAPI machine" } else { "the v3 node" },
            call.actor,
            ctx.plan.timeouts.active_s
        ),
        Step::CreateApiToken => format!("description {:?}", token_description(ctx)),
        Step::CreateCluster if ctx.plan.distribution.is_v1() => format!(
            "v1 cluster {}/{} ({})",
            v1::FLEET_DEFAULT,
            ctx.plan.cluster_name,
            ctx.plan.distribution.as_str()
        ),
        Step::CreateCluster => format!("cluster {}", ctx.plan.cluster_name),
        Step::RunAgent if ctx.plan.distribution.is_v1() => format!("system-agent installer, {}", v1::role_flags(call.role).join(" ")),
        Step::RunAgent => format!("roles {}", roles(call.role).join(",")),
        Step::WaitReady if ctx.plan.existing_rancher() => {
            format!("GET {}/ping (timeout {}s)", rancher_url(call)?, ctx.plan.timeouts.rancher_ready_s)
        }
        Step::WaitReady => format!("GET /ping (timeout {}s)", ctx.plan.timeouts.rancher_ready_s),
        Step::CheckServer => {
            format!("server container running and answering? (started again if not; timeout {}s)", ctx.plan.timeouts.rancher_ready_s)
        }
        Step::WaitNodeCommand => format!("nodeCommand filled in (timeout {}s)", ctx.plan.timeouts.node_command_s),
        Step::WaitNodeListed => format!("Rancher lists {} (timeout {}s)", call.actor, ctx.plan.timeouts.node_listed_s),
        Step::WaitNodeActive | Step::WaitClusterActive => format!("state active (timeout {}s)", ctx.plan.timeouts.active_s),
        Step::CheckRancherVersion => format!("GET /rancherversion: can this server make {}?", ctx.plan.distribution.as_str()),
        Step::WaitApiReady => format!("authenticated /v1 reads succeed twice in a row (timeout {}s)", ctx.plan.timeouts.rancher_ready_s),
        Step::ChooseKubernetesVersion => match &ctx.plan.kubernetes_version {
            Some(v) => format!("{v}, if this server offers it"),
            None => format!("the server's {}", ctx.plan.distribution.default_version_setting().unwrap_or("default")),
        },
        Step::WaitClusterName => format!("status.clusterName set (timeout {}s)", ctx.plan.timeouts.node_command_s),
        Step::WaitMachineRunning => format!("machine of node {} Running with a nodeRef (timeout {}s)", call.actor, ctx.plan.timeouts.active_s),
        Step::WaitClusterReady => format!("ready, Ready=True, Provisioned=True (timeout {}s)", ctx.plan.timeouts.active_s),
        Step::CheckMachine => format!(
            "machine {} running? (started again if stopped, then waited for until Rancher shows the node back; timeout {}s)",
            call.actor, ctx.plan.timeouts.active_s
        ),
        _ => String::new(),
    })
}

/// Runs the step's effect. A step that Rancher refuses with a 401 while
/// the run holds an API token (it expired, 90 days by default, or was
/// revoked: a resume months later) logs in again, makes a new token, and
/// runs once more (reference/rancher-current.md §2.2, §7 item 10).
pub async fn effect(call: &StepCall<'_>) -> StepResult<Outcome> {
    let used = call.ctx.secret(secret::API_TOKEN);
    match effect_once(call).await {
        Err(e)
            if e.message.contains("answered 401")
                && !matches!(call.step, Step::Login | Step::ChangePassword | Step::CreateApiToken)
                && call.ctx.secret(secret::API_TOKEN).is_some() =>
        {
            tracing::warn!(step = call.step.as_str(), "Rancher refused the API token: making a new one");
            v1::renew_after(call, &rancher_api(call)?, used.as_ref()).await?;
            effect_once(call).await
        }
        other => other,
    }
}

async fn effect_once(call: &StepCall<'_>) -> StepResult<Outcome> {
    if call.ctx.plan.distribution.is_v1() {
        match call.step {
            Step::CreateCluster => return v1::create_cluster(call).await,
            Step::WaitNodeCommand => return v1::wait_node_command(call).await,
            Step::RunAgent => return v1::run_agent(call).await,
            Step::WaitNodeListed => return v1::wait_machine_listed(call).await,
            _ => {}
        }
    }
    match call.step {
        Step::DeleteCluster => v1::delete_cluster(call).await,
        Step::DeleteApiTokens => v1::delete_api_tokens(call).await,
        Step::DeleteNode if call.ctx.plan.distribution.is_v1() => v1::delete_node(call).await,
        Step::DeleteNode => delete_node(call).await,
        Step::CreateMachine => create_machine(call).await,
        Step::StartServer => start_server(call).await,
        Step::WaitReady => wait_ready(call).await,
        Step::PinCa => pin_ca(call).await,
        Step::Login => login(call).await,
        Step::ChangePassword => change_password(call).await,
        Step::CreateApiToken => create_api_token(call).await,
        Step::SetServerUrl => set_server_url(call).await,
        Step::CreateCluster => create_cluster(call).await,
        Step::CreateRegistrationToken => registration_token(call).await,
        Step::WaitNodeCommand => wait_node_command(call).await,
        Step::WaitClusterActive => wait_cluster_active(call).await,
        Step::RunAgent => run_agent(call).await,
        Step::WaitNodeListed => wait_node_listed(call).await,
        Step::WaitNodeActive => wait_node_active(call).await,
        Step::RemoveMachine => remove_machine(call).await,
        Step::CheckServer => check_server(call).await,
        Step::CheckRancherVersion => v1::check_rancher_version(call).await,
        Step::WaitApiReady => v1::wait_api_ready(call).await,
        Step::ChooseKubernetesVersion => v1::choose_kubernetes_version(call).await,
        Step::WaitClusterName => v1::wait_cluster_name(call).await,
        Step::WaitMachineRunning => v1::wait_machine_running(call).await,
        Step::WaitClusterReady => v1::wait_cluster_ready(call).await,
        Step::CheckMachine => check_machine(call).await,
    }
}

/// Asks the world whether an in-doubt step's effect happened. `Some` adopts
/// it; `None` means run it again (waits and idempotent calls always do).
pub async fn probe(call: &StepCall<'_>) -> StepResult<Option<Outcome>> {
    let ctx = call.ctx;
    if ctx.plan.distribution.is_v1() {
        match call.step {
            Step::CreateCluster => return v1::find_cluster(call).await,
            Step::RunAgent => return v1::agent_ran(call).await,
            _ => {}
        }
    }
    match call.step {
        Step::CreateMachine => match ctx.driver.inspect(call.actor).await? {
            // Ours only if it carries this cluster's label (when the driver has labels).
            Some(m) if m.state == MachineState::Running && m.cluster.as_ref().is_none_or(|c| *c == ctx.plan.cluster_name) => {
                match m.ip {
                    Some(ip) => Ok(Some(machine_created(ctx, call.actor, ip).await?)),
                    None => Ok(None),
                }
            }
            // Not absent: say what it is (it is removed and made again).
            Some(m) if matches!(m.state, MachineState::Creating | MachineState::Error(_)) => Err(StepError::transient(format!(
                "machine {} exists but is in state {}, not running (a create cut short or failed): it is removed and created again",
                call.actor,
                match &m.state {
                    MachineState::Creating => "creating".to_string(),
                    MachineState::Error(why) => format!("error ({why})"),
                    _ => unreachable!("matched above"),
                }
            ))),
            _ => Ok(None),
        },
        Step::StartServer => Ok(server_running(ctx).await?.then(|| Outcome::ServerStarted {
            image: ctx.plan.rancher_image.clone(),
        })),
        Step::ChangePassword => {
            let api = rancher_api(call)?;
            let Some(new) = ctx.secret(secret::ADMIN_PASSWORD) else { return Ok(None) };
            match api.login("admin", &new).await {
                Ok(token) => {
                    ctx.put_secret(secret::LOGIN_TOKEN, &token).map_err(StepError::permanent)?;
                    Ok(Some(Outcome::PasswordChanged { password: secret_ref(secret::ADMIN_PASSWORD, &new) }))
                }
                Err(e) if e.status() == Some(401) => Ok(None),
                Err(e) => Err(e.into()),
            }
        }
        Step::CreateApiToken => find_api_token(call).await,
        Step::CreateCluster => {
            let api = rancher_api(call)?;
            let auth = auth(ctx)?;
            Ok(api
                .find_cluster(&auth, &ctx.plan.cluster_name)
                .await?
                .map(|c| Outcome::ClusterCreated { cluster_id: c.id }))
        }
        Step::CreateRegistrationToken => find_registration_token(call).await,
        Step::RunAgent => Ok(agent_ran(call).await?.then_some(Outcome::AgentStarted)),
        Step::RemoveMachine => Ok(ctx.driver.inspect(call.actor).await?.is_none().then_some(Outcome::MachineRemoved)),
        // Re-run: it only looks, and starts the server (or the machine)
        // only when it is down.
        Step::CheckServer
        | Step::CheckMachine
        | Step::WaitReady
        | Step::PinCa
        | Step::Login
        | Step::SetServerUrl
        | Step::WaitNodeCommand
        | Step::WaitClusterActive
        | Step::WaitNodeListed
        | Step::WaitNodeActive
        | Step::CheckRancherVersion
        | Step::WaitApiReady
        | Step::ChooseKubernetesVersion
        | Step::WaitClusterName
        | Step::WaitMachineRunning
        | Step::WaitClusterReady
        // Deleting again is harmless (404 counts as deleted), then it waits.
        | Step::DeleteCluster
        // Deleting is idempotent (404 counts as gone) and so is the wait.
        | Step::DeleteNode
        // Deleting again finds what is left (none, after a done delete).
        | Step::DeleteApiTokens => Ok(None),
    }
}

// ------------------------------------------------------------------ machines

/// How long one command on a machine, or one removal, may take.
const DRIVER_CALL_TIMEOUT: Duration = Duration::from_secs(600);

/// A driver call with an end: one that hangs is a transient failure.
async fn bounded<T>(what: String, call: impl std::future::Future<Output = Result<T, DriverError>>) -> StepResult<T> {
    match tokio::time::timeout(DRIVER_CALL_TIMEOUT, call).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(StepError::transient(format!("{what} did not finish within {}s", DRIVER_CALL_TIMEOUT.as_secs()))),
    }
}

async fn exec(ctx: &RunCtx, machine: &str, command: &str) -> StepResult<crate::ports::ExecOutput> {
    bounded(format!("a command on machine {machine}"), ctx.driver.exec(machine, command)).await
}

/// Starts the Rancher server on `machine` through the driver.
async fn start(ctx: &RunCtx, machine: &str) -> StepResult<crate::ports::ExecOutput> {
    let server = server_spec(ctx)?;
    bounded(format!("starting the Rancher server on machine {machine}"), ctx.driver.start_server(machine, &server)).await
}

async fn remove(ctx: &RunCtx, machine: &str) -> StepResult<()> {
    bounded(format!("removing machine {machine}"), ctx.driver.remove(machine)).await
}

/// `MachineCreated`, or `HostClaimed` with the host key the driver saw on
/// first contact (drivers that pin SSH host keys: ssh), so the log holds
/// the pin.
async fn machine_created(ctx: &RunCtx, machine: &str, ip: String) -> StepResult<Outcome> {
    Ok(match bounded(format!("reading the host key of {machine}"), ctx.driver.host_key(machine)).await? {
        Some(host_key) => Outcome::HostClaimed { ip, host_key },
        None => Outcome::MachineCreated { ip },
    })
}

async fn create_machine(call: &StepCall<'_>) -> StepResult<Outcome> {
    let ctx = call.ctx;
    if let Some(m) = ctx.driver.inspect(call.actor).await? {
        match m.state {
            // Only a machine this run already tried to create is ours to adopt.
            MachineState::Running if call.try_no > 1 => {
                if let Some(ip) = m.ip {
                    return machine_created(ctx, call.actor, ip).await;
                }
            }
            // Ours, stopped (a resume after it was stopped): started again
            // where the driver can, its address read anew.
            MachineState::Stopped if call.try_no > 1 || ctx.attempt > 1 => {
                if let Some(m) = bounded(format!("starting machine {} again", call.actor), ctx.driver.restart(call.actor)).await? {
                    if let Some(ip) = m.ip.filter(|_| m.state == MachineState::Running) {
                        return machine_created(ctx, call.actor, ip).await;
                    }
                }
            }
            MachineState::Running | MachineState::Stopped if call.try_no == 1 => {
                return Err(StepError::permanent(format!(
                    "a machine named {} already exists{}; remove it (rmm down) or use another state dir",
                    call.actor,
                    m.cluster.map(|c| format!(" (cluster {c})")).unwrap_or_default()
                )));
            }
            _ => {}
        }
        // Broken or half-made: remove it and create it again.
        remove(ctx, call.actor).await?;
    }
    let ip = make_machine(call).await?;
    machine_created(ctx, call.actor, ip).await
}

/// Creates this actor's machine through the driver, within
/// `machine_create_s`: its address.
async fn make_machine(call: &StepCall<'_>) -> StepResult<String> {
    let ctx = call.ctx;
    let spec = MachineSpec { name: call.actor.to_string(), cluster: ctx.plan.cluster_name.clone(), role: call.role };
    let timeout = Duration::from_secs(ctx.plan.timeouts.machine_create_s);
    let machine = tokio::time::timeout(timeout, ctx.driver.create(&spec))
        .await
        .map_err(|_| StepError::transient(format!("machine {} not created within {}s", call.actor, timeout.as_secs())))??;
    machine.ip.ok_or_else(|| StepError::transient(format!("machine {} has no address", call.actor)))
}

/// Once per attempt, for a node (see `Step::CheckMachine`), through the
/// driver port only:
/// * running: adopted, its address as the driver gives it now;
/// * stopped (`docker kill`, a reboot): started again through
///   [`crate::ports::MachineDriver::restart`], its address read anew and
///   recorded (later steps, `status` and `credentials` use it). If its
///   agent had run, the step then waits until Rancher shows the node back
///   (v1: its machine `Running` with a `nodeRef` and `Ready` not `False`;
///   rke1: the node `active`), failing at once, with Rancher's reason,
///   when Rancher says the machine failed. On real nodes the system-agent
///   is an enabled systemd unit and comes back with the machine
///   (reference/rancher-current.md §2.7: the installer enables
///   `rancher-system-agent.service`);
/// * gone: made again while its agent never ran (nothing in Rancher names
///   it yet); once the agent ran, one clear line and the run fails: a new
///   machine would register the node a second time (its system-agent id is
///   new), which Rancher counts as another machine of the same node.
async fn check_machine(call: &StepCall<'_>) -> StepResult<Outcome> {
    let ctx = call.ctx;
    let agent_ran = call.state.step(Step::RunAgent).is_some();
    let found = bounded(format!("looking at machine {}", call.actor), ctx.driver.inspect(call.actor)).await?;
    let recorded = call.state.ip().map(str::to_string);
    match found {
        Some(m) if m.state == MachineState::Running => match m.ip.or(recorded) {
            Some(ip) => Ok(Outcome::MachineUp { ip }),
            None => Err(StepError::transient(format!("machine {} runs but has no address yet", call.actor))),
        },
        Some(m) if m.state == MachineState::Stopped => {
            let Some(m) = bounded(format!("starting machine {} again", call.actor), ctx.driver.restart(call.actor)).await? else {
                return Err(StepError::permanent(format!(
                    "machine {} is stopped and the {} driver cannot start it again: start it yourself, then rmm up --resume",
                    call.actor, ctx.plan.driver
                )));
            };
            let Some(ip) = m.ip.filter(|_| m.state == MachineState::Running) else {
                return Err(StepError::transient(format!("machine {} was started again but does not run with an address yet", call.actor)));
            };
            tracing::warn!(machine = call.actor, %ip, "the node's machine was stopped: started it again");
            if agent_ran {
                node_back(call).await?;
            }
            Ok(Outcome::MachineStartedAgain { state: "stopped".into(), ip })
        }
        Some(m) => Err(StepError::transient(format!(
            "machine {} is {}: not running",
            call.actor,
            match &m.state {
                MachineState::Creating => "still being created".to_string(),
                MachineState::Error(why) => format!("broken ({why})"),
                _ => "in an unknown state".to_string(),
            }
        ))),
        None if agent_ran => Err(StepError::permanent(format!(
            "machine {} is gone (the {} driver finds no such machine) after its agent registered it with Rancher; rmm does not make it again (it would register the node a second time): run rmm down, then rmm up",
            call.actor, ctx.plan.driver
        ))),
        None => Ok(Outcome::MachineMadeAgain { ip: make_machine(call).await? }),
    }
}

/// After a node's machine was started again: Rancher shows the node back
/// (see [`check_machine`]).
async fn node_back(call: &StepCall<'_>) -> StepResult<()> {
    let ctx = call.ctx;
    let what = format!("Rancher to show node {} back after its machine was started again", call.actor);
    if ctx.plan.distribution.is_v1() {
        return poll(ctx, ctx.plan.timeouts.active_s, &what, || async {
            let Some(m) = v1::machine_of_node(call).await? else {
                return Err(StepError::transient("no machine listed for this node"));
            };
            if let Some(e) = v1::error_of(&format!("machine {}", m.name), &m) {
                return Err(StepError::permanent(e));
            }
            let phase = m.phase.clone().unwrap_or_else(|| "no phase".into());
            let ready = m.condition("Ready").is_none_or(|c| c.status == "True");
            if phase == "Running" && m.node_ref.is_some() && ready {
                return Ok(Some(()));
            }
            let why = m.condition("Ready").filter(|c| c.status != "True").map(|c| format!(", Ready {}: {}", c.status, c.message)).unwrap_or_default();
            Err(StepError::transient(format!("{phase}{why}")))
        })
        .await;
    }
    poll(ctx, ctx.plan.timeouts.active_s, &what, || async {
        match listed_node(call).await? {
            Some(n) if n.state == "active" => Ok(Some(())),
            Some(n) if n.state == "error" => Err(StepError::permanent(format!("node {} is in state error in Rancher", call.actor))),
            Some(n) => Err(StepError::transient(format!("node is {}", n.state))),
            None => Err(StepError::transient("node not listed")),
        }
    })
    .await
}

async fn remove_machine(call: &StepCall<'_>) -> StepResult<Outcome> {
    remove(call.ctx, call.actor).await?;
    Ok(Outcome::MachineRemoved)
}

// ------------------------------------------------------------------ rancher

/// `https://IP` (with the port when it is not 443).
pub fn server_url(ip: &str, port: u16) -> String {
    if port == 443 {
        format!("https://{ip}")
    } else {
        format!("https://{ip}:{port}")
    }
}

fn rancher_url(call: &StepCall<'_>) -> StepResult<String> {
    if let Some(url) = &call.ctx.plan.rancher_url {
        return Ok(url.clone());
    }
    if let Some(join) = call.join {
        return Ok(join.url.clone());
    }
    let ip = call.state.ip().ok_or_else(|| StepError::permanent("the rancher machine has no address"))?;
    Ok(server_url(ip, call.ctx.driver.https_port()))
}

/// A client for the server whose `server-url` is `url`, reached where the
/// driver says rmm reaches it ([`crate::ports::MachineDriver::api_url`]).
fn connect(ctx: &RunCtx, url: &str, trust: CaTrust) -> Result<Arc<dyn RancherApi>, ApiError> {
    ctx.connector.connect(&ctx.driver.api_url(url), trust)
}

fn token_description(ctx: &RunCtx) -> String {
    format!("rmm run {}", ctx.run)
}

/// A client that trusts only the pinned CA, after checking the stored PEM
/// against the checksum recorded in the log.
fn rancher_api(call: &StepCall<'_>) -> StepResult<Arc<dyn RancherApi>> {
    Ok(connect(call.ctx, &rancher_url(call)?, trust(call)?)?)
}

/// Whether the log recorded that this server is verified against the
/// system's trust roots (its `cacerts` is empty).
fn system_roots(call: &StepCall<'_>) -> bool {
    match (call.join, call.state.outcome(Step::PinCa), &call.ctx.undo) {
        (Some(join), _, _) => join.ca_checksum.is_empty(),
        (None, Some(outcome), _) => matches!(outcome, Outcome::CaSystemRoots),
        // A `down`: as the `up` run it undoes recorded.
        (None, None, Some(undo)) => undo.ca_trust.as_deref() == Some(""),
        (None, None, None) => false,
    }
}

/// The pinned CA, or the system's roots when that is what the log recorded.
fn trust(call: &StepCall<'_>) -> StepResult<CaTrust> {
    if system_roots(call) {
        return Ok(CaTrust::SystemRoots);
    }
    Ok(CaTrust::Pinned(pinned_pem(call)?))
}

/// The pinned CA (PEM) from the state dir, checked against the checksum in
/// the log.
fn pinned_pem(call: &StepCall<'_>) -> StepResult<String> {
    let ctx = call.ctx;
    let undone = call.ctx.undo.as_ref().and_then(|u| u.ca_trust.clone()).filter(|c| !c.is_empty());
    let logged = match (call.join, call.state.outcome(Step::PinCa), undone) {
        (Some(join), _, _) => join.ca_checksum.clone(),
        (None, Some(Outcome::CaPinned { checksum }), _) => checksum.clone(),
        // A `down`: the CA the `up` run it undoes pinned.
        (None, None, Some(checksum)) => checksum,
        _ => return Err(StepError::permanent("no CA pinned yet")),
    };
    let pem = ctx
        .secret(secret::RANCHER_CA)
        .ok_or_else(|| StepError::permanent("the pinned Rancher CA is missing from the state dir"))?;
    if ca_checksum(pem.expose()) != logged {
        return Err(StepError::permanent("the stored Rancher CA does not match the checksum in the log"));
    }
    Ok(pem.expose().to_string())
}

fn auth(ctx: &RunCtx) -> StepResult<Secret> {
    ctx.secret(secret::API_TOKEN)
        .or_else(|| ctx.secret(secret::LOGIN_TOKEN))
        .ok_or_else(|| StepError::permanent("no Rancher token in the state dir (log in again: a resume does)"))
}

/// One word for a POSIX shell: as is when it holds only safe characters,
/// else in single quotes (a `'` inside becomes `'\''`). Every value that
/// goes into a command run on a machine goes through this: configured
/// values (the image) must never be read as shell syntax.
pub fn shell_quote(word: &str) -> String {
    let safe = !word.is_empty()
        && word.chars().all(|c| c.is_ascii_alphanumeric() || "_-./:=@%+,^".contains(c));
    if safe {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

fn server_spec(ctx: &RunCtx) -> StepResult<ServerSpec> {
    let bootstrap_password = ctx
        .secret(secret::BOOTSTRAP_PASSWORD)
        .ok_or_else(|| StepError::permanent("bootstrap password missing from the state dir"))?;
    Ok(ServerSpec { image: ctx.plan.rancher_image.clone(), bootstrap_password })
}

async fn server_running(ctx: &RunCtx) -> StepResult<bool> {
    Ok(server_state(ctx).await? == "running")
}

/// The server container's state as `docker ps` gives it (`running`,
/// `restarting`, `exited` …), or `absent`.
pub async fn server_state(ctx: &RunCtx) -> StepResult<String> {
    let out = bounded("reading the server container's state".into(), ctx.driver.server_state("rancher")).await?;
    if out.status != 0 {
        return Err(StepError::transient(format!("docker ps exited {}: {}", out.status, ctx.redact(out.stderr.trim()))));
    }
    Ok(out.stdout.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("absent").to_string())
}

/// The server container's state, and — unless it is running (or its
/// restart policy is bringing it back) — the container started again, in
/// which case the state it was found in is returned second.
async fn ensure_server_running(call: &StepCall<'_>) -> StepResult<(String, Option<String>)> {
    let ctx = call.ctx;
    let state = server_state(ctx).await?;
    let restarted = match state.as_str() {
        "running" | "restarting" => None,
        other => {
            if other != "absent" {
                let out = bounded("removing the server container".into(), ctx.driver.remove_server(call.actor)).await?;
                if out.status != 0 {
                    return Err(StepError::transient(format!(
                        "docker rm -f rancher exited {}: {}",
                        out.status,
                        ctx.redact(out.stderr.trim())
                    )));
                }
            }
            let out = start(ctx, call.actor).await?;
            if out.status != 0 {
                return Err(StepError::transient(format!(
                    "the server container was {other}; docker run exited {}: {}",
                    out.status,
                    ctx.redact(out.stderr.trim())
                )));
            }
            tracing::warn!(state = other, "the Rancher server container was not running: started it again");
            Some(other.to_string())
        }
    };
    Ok((state, restarted))
}

/// Once per attempt (see `Step::CheckServer`): the server container is
/// running (or its restart policy is bringing it back), or it is started
/// again; then it must answer `/ping`, and — when the CA is known from the
/// log or from the machine — answer with that CA's certificate: a process
/// squatting the address is refused before any credential is sent.
async fn check_server(call: &StepCall<'_>) -> StepResult<Outcome> {
    let ctx = call.ctx;
    let (state, restarted) = ensure_server_running(call).await?;
    let url = rancher_url(call)?;
    // The CA to expect: the one pinned in the log, else the machine's own
    // (read again each poll while the server has not made it yet). With a
    // CA to expect, only a server with a certificate from it counts as
    // answering: a TLS failure is a server that is not ours. Only a driver
    // that cannot read the machine's CA leaves /ping unverified (it carries
    // no credential).
    let pinned = match call.state.outcome(Step::PinCa) {
        Some(Outcome::CaPinned { .. }) => Some(CaTrust::Pinned(pinned_pem(call)?)),
        Some(Outcome::CaSystemRoots) => Some(CaTrust::SystemRoots),
        _ => None,
    };
    let what = format!("the Rancher server at {url} to answer /ping (container {state})");
    // The client connected on an earlier poll, and how its server was trusted.
    type Connected = (Arc<dyn RancherApi>, Option<&'static str>);
    let api: std::sync::Mutex<Option<Connected>> = std::sync::Mutex::new(None);
    poll(ctx, ctx.plan.timeouts.rancher_ready_s, &what, || {
        let (url, pinned, api) = (url.clone(), pinned.clone(), &api);
        async move {
            let known = api.lock().expect("not poisoned").clone();
            let (client, expected) = match known {
                Some(known) => known,
                None => {
                    let (trust, expected) = match pinned {
                        Some(CaTrust::SystemRoots) => (CaTrust::SystemRoots, Some("the system's trust roots (as the log records)")),
                        Some(trust) => (trust, Some("the CA pinned in the log")),
                        None => match ctx.driver.read_server_ca(call.actor).await? {
                            Some(pem) => (CaTrust::Pinned(pem), Some("the CA on the rancher machine")),
                            None => (CaTrust::Unverified, None),
                        },
                    };
                    let made = (connect(ctx, &url, trust)?, expected);
                    *api.lock().expect("not poisoned") = Some(made.clone());
                    made
                }
            };
            match client.ping().await {
                Ok(()) => Ok(Some(())),
                Err(ApiError::Tls(e)) if expected.is_some() => Err(StepError::permanent(format!(
                    "CA mismatch: the server answering at {url} is not ours: its certificate does not chain to {} ({e}); no credential was sent",
                    expected.unwrap_or("the expected CA")
                ))),
                Err(e) if e.is_retryable() || e.status().is_some() => Err(StepError::transient(e.to_string())),
                Err(e) => Err(e.into()),
            }
        }
    })
    .await?;
    Ok(match restarted {
        Some(state) => Outcome::ServerRestarted { state },
        None => Outcome::ServerRunning,
    })
}

async fn start_server(call: &StepCall<'_>) -> StepResult<Outcome> {
    let ctx = call.ctx;
    let image = ctx.plan.rancher_image.clone();
    if call.try_no > 1 && server_running(ctx).await? {
        return Ok(Outcome::ServerStarted { image });
    }
    let out = start(ctx, call.actor).await?;
    if out.status != 0 {
        if out.stderr.contains("is already in use") && server_running(ctx).await? {
            return Ok(Outcome::ServerStarted { image });
        }
        return Err(StepError::transient(format!(
            "docker run exited {}: {}",
            out.status,
            ctx.redact(out.stderr.trim())
        )));
    }
    Ok(Outcome::ServerStarted { image })
}

/// Polls `check` every `poll_ms` (a fixed rate: the time a check takes does
/// not push the next one back) until it gives a value, the timeout passes
/// (a permanent failure naming `what`), or the run is told to stop.
async fn poll<T, F, Fut>(ctx: &RunCtx, timeout_s: u64, what: &str, mut check: F) -> StepResult<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = StepResult<Option<T>>>,
{
    let start = Instant::now();
    let deadline = start + Duration::from_secs(timeout_s);
    let period = Duration::from_millis(ctx.plan.poll_ms.max(1));
    let mut last = String::from("no answer yet");
    for tick in 1u32.. {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) if e.retryable => last = e.message,
            Err(e) => return Err(e),
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(StepError::permanent(format!(
                "timed out after {timeout_s}s waiting for {what} (last: {last})"
            )));
        }
        let next = (start + period * tick).max(now).min(deadline);
        if !ctx.sleep(next - now).await {
            return Err(StepError::stopped(format!("stopped while waiting for {what}")));
        }
    }
    unreachable!("the loop only ends by returning")
}

async fn wait_ready(call: &StepCall<'_>) -> StepResult<Outcome> {
    let ctx = call.ctx;
    // A resume (or a try after a failed one) may wait for a server that died
    // before it ever answered (killed, a full disk at start): polling it for
    // `rancher_ready_s` would be in vain. Start it again first; `check_server`
    // right after records the state it is then in.
    // An existing Rancher is not ours to start (or to look at).
    let ours = !ctx.plan.existing_rancher();
    if ours && (call.try_no > 1 || call.ctx.attempt > 1) {
        ensure_server_running(call).await?;
    }
    let url = rancher_url(call)?;
    // /ping carries no credential; the CA is pinned right after.
    let api = connect(ctx, &url, CaTrust::Unverified)?;
    let what = format!("Rancher at {url} to answer /ping");
    // While it does not answer, look at the container about once a second:
    // one that exited (and that no restart policy brings back: its
    // supervisor died too) will never answer, so the try ends now, naming
    // it, and the next try starts it again (above), instead of polling a
    // dead address for `rancher_ready_s`.
    let looked = std::sync::Mutex::new(Instant::now());
    let dead = std::sync::atomic::AtomicBool::new(false);
    let result = poll(ctx, ctx.plan.timeouts.rancher_ready_s, &what, || {
        let api = api.clone();
        let (looked, dead) = (&looked, &dead);
        async move {
            match api.ping().await {
                Ok(()) => Ok(Some(Outcome::Ready)),
                Err(e) if e.is_retryable() || e.status().is_some() => {
                    let due = {
                        let mut at = looked.lock().expect("not poisoned");
                        let due = at.elapsed() >= Duration::from_secs(1);
                        if due {
                            *at = Instant::now();
                        }
                        due
                    };
                    if due && ours {
                        let state = server_state(ctx).await?;
                        if !matches!(state.as_str(), "running" | "restarting") {
                            // Not retryable within `poll` (it would go on
                            // polling); made a failed try below.
                            dead.store(true, std::sync::atomic::Ordering::SeqCst);
                            return Err(StepError::permanent(format!(
                                "the Rancher server container is {state} (it stopped before it answered: {e}); the next try starts it again"
                            )));
                        }
                    }
                    Err(StepError::transient(e.to_string()))
                }
                Err(e) => Err(e.into()),
            }
        }
    })
    .await;
    match result {
        Err(e) if dead.load(std::sync::atomic::Ordering::SeqCst) => Err(StepError::transient(e.message)),
        other => other,
    }
}

/// Pins the CA the machine itself holds (read through the driver, not the
/// network), after checking that the server answering at the URL serves
/// that same CA; only a driver with no such channel falls back to trusting
/// the first answer. `cacerts` carries no credential; nothing that does is
/// sent before this step.
async fn pin_ca(call: &StepCall<'_>) -> StepResult<Outcome> {
    let ctx = call.ctx;
    let url = rancher_url(call)?;
    let api = connect(ctx, &url, CaTrust::Unverified)?;
    let served = match api.cacerts().await {
        Ok(pem) => pem,
        Err(ApiError::Decode(m)) if m.contains(crate::ports::EMPTY_CACERTS) => String::new(),
        Err(e) => return Err(e.into()),
    };
    if served.trim().is_empty() {
        return system_roots_trusted(call, &url).await;
    }
    // An existing Rancher (`--rancher-url`) has no machine of ours, so no
    // driver channel to read its CA from: the CA it serves now is trusted
    // on first use (recorded: the checksum in `CaPinned`, the reason in
    // this step's intent), unless `--ca-checksum` pinned it up front
    // (checked below). Every later call, a resume and `down` included,
    // trusts only that CA: a server that changes certificates later is
    // refused, not trusted again. Refusing instead (asking for
    // --ca-checksum every time) would only move the same first look to
    // the user's `curl -k …/cacerts | sha256sum`; see README, "TLS".
    let on_machine = if ctx.plan.existing_rancher() { None } else { ctx.driver.read_server_ca(call.actor).await? };
    let pem = match on_machine {
        Some(on_machine) => {
            let (machine_sum, served_sum) = (ca_checksum(on_machine.trim()), ca_checksum(served.trim()));
            if machine_sum != served_sum {
                return Err(StepError::permanent(format!(
                    "CA mismatch: the server answering at {url} serves a CA (sha256 {}) that is not the one on the rancher machine (sha256 {}); it is not ours, so no credential was sent",
                    &served_sum[..16],
                    &machine_sum[..16]
                )));
            }
            served
        }
        None if ctx.plan.existing_rancher() => served,
        None => {
            tracing::warn!(driver = %ctx.plan.driver, "the driver cannot read the server's CA from the machine: trusting the CA the server serves");
            served
        }
    };
    let checksum = ca_checksum(&pem);
    if let Some(expected) = &ctx.plan.ca_checksum {
        if !expected.eq_ignore_ascii_case(&checksum) {
            return Err(StepError::permanent(format!(
                "Rancher's CA checksum {checksum} does not match the pinned --ca-checksum {expected}"
            )));
        }
    }
    ctx.put_secret(secret::RANCHER_CA, &Secret::new(pem)).map_err(StepError::permanent)?;
    Ok(Outcome::CaPinned { checksum })
}

/// An empty `cacerts`: Rancher serves a publicly trusted certificate
/// (`--no-cacerts`, ACME; reference/rancher-current.md §3.2, §7 item 3).
/// There is no private CA to pin: the server must verify against the
/// system's trust roots, and that choice is recorded (`CaSystemRoots`).
/// A `--ca-checksum` still pins: a CA was asked for and there is none.
async fn system_roots_trusted(call: &StepCall<'_>, url: &str) -> StepResult<Outcome> {
    let ctx = call.ctx;
    if let Some(expected) = &ctx.plan.ca_checksum {
        return Err(StepError::permanent(format!(
            "--ca-checksum {expected} pins a CA, but Rancher's cacerts setting is empty (a publicly trusted certificate): leave --ca-checksum out to verify the server against the system's trust roots"
        )));
    }
    let api = connect(ctx, url, CaTrust::SystemRoots)?;
    match api.ping().await {
        Ok(()) => Ok(Outcome::CaSystemRoots),
        Err(ApiError::Tls(e)) => Err(StepError::permanent(format!(
            "Rancher's cacerts setting is empty, but the certificate at {url} does not chain to the system's trust roots ({e}); no credential was sent"
        ))),
        Err(e) => Err(e.into()),
    }
}

/// Logs in as `admin`: with the bootstrap password, then the admin password
/// (a resume after the change). Rancher answers /ping before its admin user
/// exists: 401 is polled. rke2/k3s use `/v1-public/login` (v3 on 404,
/// reference §2.2); rke1 the v3 login.
async fn login(call: &StepCall<'_>) -> StepResult<Outcome> {
    let ctx = call.ctx;
    let api = rancher_api(call)?;
    let bootstrap = ctx
        .secret(secret::BOOTSTRAP_PASSWORD)
        .ok_or_else(|| StepError::permanent("bootstrap password missing from the state dir"))?;
    let admin = ctx.secret(secret::ADMIN_PASSWORD);
    let public = ctx.plan.distribution.is_v1();
    let token = poll(ctx, ctx.plan.timeouts.login_s, "the admin login to succeed", || {
        let (api, bootstrap, admin) = (api.clone(), bootstrap.clone(), admin.clone());
        async move {
            for password in std::iter::once(bootstrap).chain(admin) {
                let tried = if public { api.login_public("admin", &password).await } else { api.login("admin", &password).await };
                match tried {
                    Ok(t) => return Ok(Some(t)),
                    Err(e) if e.status() == Some(401) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            // An existing Rancher whose first login was done long ago
            // will not start accepting this password: say so now rather
            // than after `login_s`. (Its bootstrap password stopped working
            // when the admin password was changed: Rancher answers a
            // plain 401, reference/rancher-api.md §2.2, §3.3.)
            if api_existing_setup(ctx, &api).await {
                return Err(StepError::permanent(format!(
                    "Rancher at {} refused the password given for admin (401 authentication failed): its first login was done already, so the password must be the admin password in force (if an earlier rmm run changed it, `rmm credentials` in that run's state dir prints it); give that one in {} or --rancher-password-file",
                    ctx.plan.rancher_url.as_deref().unwrap_or("?"),
                    secret::PASSWORD_ENV
                )));
            }
            Err(StepError::transient("401 authentication failed"))
        }
    })
    .await?;
    ctx.put_secret(secret::LOGIN_TOKEN, &token).map_err(StepError::permanent)?;
    Ok(Outcome::LoggedIn { token: secret_ref(secret::LOGIN_TOKEN, &token) })
}

/// Whether the run is on an existing Rancher whose first login is done
/// (its public `first-login` setting is `false`). Any doubt is `false`.
async fn api_existing_setup(ctx: &RunCtx, api: &Arc<dyn RancherApi>) -> bool {
    ctx.plan.existing_rancher() && api.public_setting("first-login").await.is_ok_and(|v| v.trim() == "false")
}

/// A session token for the calls made before the API token exists. Rancher
/// expires session tokens (16 h by default), so one kept from an earlier
/// attempt is checked, and a new one made with the password in force when
/// it no longer works.
async fn session(call: &StepCall<'_>, api: &Arc<dyn RancherApi>) -> StepResult<Secret> {
    let ctx = call.ctx;
    if let Some(token) = ctx.secret(secret::LOGIN_TOKEN) {
        match api.list_tokens(&token).await {
            Ok(_) => return Ok(token),
            Err(e) if e.status() == Some(401) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let candidates = [secret::ADMIN_PASSWORD, secret::BOOTSTRAP_PASSWORD];
    for password in candidates.iter().filter_map(|name| ctx.secret(name)) {
        match api.login("admin", &password).await {
            Ok(token) => {
                ctx.put_secret(secret::LOGIN_TOKEN, &token).map_err(StepError::permanent)?;
                return Ok(token);
            }
            Err(e) if e.status() == Some(401) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Err(StepError::permanent("cannot log in to Rancher as admin with the stored passwords"))
}

async fn change_password(call: &StepCall<'_>) -> StepResult<Outcome> {
    let ctx = call.ctx;
    let api = rancher_api(call)?;
    let login = session(call, &api).await?;
    let bootstrap = ctx
        .secret(secret::BOOTSTRAP_PASSWORD)
        .ok_or_else(|| StepError::permanent("bootstrap password missing from the state dir"))?;
    let new = ctx
        .secret(secret::ADMIN_PASSWORD)
        .ok_or_else(|| StepError::permanent("new admin password missing from the state dir"))?;
    let done = Outcome::PasswordChanged { password: secret_ref(secret::ADMIN_PASSWORD, &new) };
    // An existing Rancher: the password given is the bootstrap one only
    // while the server's first login is still to be done (`first-login`
    // is `true` until any user action, reference/rancher-api.md §2.3).
    // Otherwise it is the admin password (the login just worked with it):
    // kept, nothing changed — unless the admin password rmm stored works,
    // in which case an earlier try of this run changed it.
    if ctx.plan.existing_rancher() {
        let first_login = v1::authed(call, &api, |a| {
            let api = api.clone();
            async move { api.get_setting(&a, "first-login").await }
        })
        .await?;
        if first_login.trim() != "true" {
            return match api.login("admin", &new).await {
                Ok(_) => Ok(done),
                Err(e) if e.status() == Some(401) => Ok(Outcome::PasswordKept),
                Err(e) => Err(e.into()),
            };
        }
    }
    match api.change_password(&login, &bootstrap, &new).await {
        Ok(()) => Ok(done),
        // Changed by an earlier try whose outcome was lost: the new one works.
        Err(e) if e.status() == Some(422) && api.login("admin", &new).await.is_ok() => Ok(done),
        Err(e) => Err(e.into()),
    }
}

async fn find_api_token(call: &StepCall<'_>) -> StepResult<Option<Outcome>> {
    let ctx = call.ctx;
    let api = rancher_api(call)?;
    let login = session(call, &api).await?;
    let description = token_description(ctx);
    let stored = ctx.secret(secret::API_TOKEN);
    let stored_id = stored.as_ref().and_then(|s| s.expose().split(':').next().map(str::to_string));
    for token in api.list_tokens(&login).await? {
        if token.description != description {
            continue;
        }
        match (&stored, &stored_id) {
            (Some(secret), Some(id)) if *id == token.id => {
                return Ok(Some(Outcome::ApiTokenCreated {
                    token_id: token.id,
                    token: secret_ref(secret::API_TOKEN, secret),
                }))
            }
            // Ours, but its secret was lost with the crash: delete it.
            _ => api.delete_token(&login, &token.id).await?,
        }
    }
    Ok(None)
}

/// Looks first on every try, not only on retries: a token of this run
/// (described `rmm run <id>`) can exist with no intent on record (a log
/// whose last record was lost). Ours with its secret stored is adopted; one
/// whose secret we do not hold is deleted, then one is made.
async fn create_api_token(call: &StepCall<'_>) -> StepResult<Outcome> {
    let ctx = call.ctx;
    if let Some(found) = find_api_token(call).await? {
        return Ok(found);
    }
    let api = rancher_api(call)?;
    let login = session(call, &api).await?;
    let (token_id, token) = api.create_token(&login, &token_description(ctx)).await?;
    ctx.put_secret(secret::API_TOKEN, &token).map_err(StepError::permanent)?;
    Ok(Outcome::ApiTokenCreated { token_id, token: secret_ref(secret::API_TOKEN, &token) })
}

async fn set_server_url(call: &StepCall<'_>) -> StepResult<Outcome> {
    let api = rancher_api(call)?;
    let url = rancher_url(call)?;
    // An existing Rancher's `server-url` is what its other clusters'
    // agents connect to: changing it would cut them off. Kept when set.
    if call.ctx.plan.existing_rancher() {
        let current = v1::authed(call, &api, |a| {
            let api = api.clone();
            async move { api.get_setting(&a, "server-url").await }
        })
        .await?;
        if !current.trim().is_empty() {
            return Ok(Outcome::ServerUrlSet { url: current.trim().to_string() });
        }
    }
    // A token that expired (a resume months later) is made again.
    v1::authed(call, &api, |a| {
        let (api, url) = (api.clone(), url.clone());
        async move { api.set_setting(&a, "server-url", &url).await }
    })
    .await?;
    Ok(Outcome::ServerUrlSet { url })
}

/// Finds the cluster by name first, on every try: this Rancher was started
/// by this run, so a cluster of that name is ours (made by a try whose
/// intent or outcome is not on record).
async fn create_cluster(call: &StepCall<'_>) -> StepResult<Outcome> {
    let ctx = call.ctx;
    let api = rancher_api(call)?;
    let auth = auth(ctx)?;
    let name = &ctx.plan.cluster_name;
    if let Some(c) = api.find_cluster(&auth, name).await? {
        return Ok(Outcome::ClusterCreated { cluster_id: c.id });
    }
    match api.create_cluster(&auth, name).await {
        Ok(c) => Ok(Outcome::ClusterCreated { cluster_id: c.id }),
        // This Rancher was started by this run: a cluster of that name is ours.
        Err(e) if e.code() == Some("NotUnique") => match api.find_cluster(&auth, name).await? {
            Some(c) => Ok(Outcome::ClusterCreated { cluster_id: c.id }),
            None => Err(e.into()),
        },
        Err(e) => Err(e.into()),
    }
}

fn cluster_id(call: &StepCall<'_>) -> StepResult<String> {
    if let Some(join) = call.join {
        return Ok(join.cluster_id.clone());
    }
    match call.state.outcome(Step::CreateCluster) {
        Some(Outcome::ClusterCreated { cluster_id }) => Ok(cluster_id.clone()),
        _ => Err(StepError::permanent("no cluster yet")),
    }
}

async fn find_registration_token(call: &StepCall<'_>) -> StepResult<Option<Outcome>> {
    let api = rancher_api(call)?;
    let tokens = api.list_registration_tokens(&auth(call.ctx)?, &cluster_id(call)?).await?;
    Ok(tokens.into_iter().next().map(|t| Outcome::RegistrationTokenCreated { token_id: t.id }))
}

/// Reuses the cluster's registration token when there is one (Rancher 2.6+
/// creates `default-token` itself; the CLI and terraform reuse it too), and
/// creates one only when there is none.
async fn registration_token(call: &StepCall<'_>) -> StepResult<Outcome> {
    if let Some(found) = find_registration_token(call).await? {
        return Ok(found);
    }
    let api = rancher_api(call)?;
    let token = api.create_registration_token(&auth(call.ctx)?, &cluster_id(call)?).await?;
    Ok(Outcome::RegistrationTokenCreated { token_id: token.id })
}

async fn wait_node_command(call: &StepCall<'_>) -> StepResult<Outcome> {
    let ctx = call.ctx;
    let api = rancher_api(call)?;
    let auth = auth(ctx)?;
    let token_id = match call.state.outcome(Step::CreateRegistrationToken) {
        Some(Outcome::RegistrationTokenCreated { token_id }) => token_id.clone(),
        _ => return Err(StepError::permanent("no registration token yet")),
    };
    let what = format!("registration token {token_id} to get its nodeCommand");
    let command = poll(ctx, ctx.plan.timeouts.node_command_s, &what, || {
        let (api, auth, token_id) = (api.clone(), auth.clone(), token_id.clone());
        async move { Ok(api.get_registration_token(&auth, &token_id).await?.node_command) }
    })
    .await?;
    ctx.put_secret(secret::NODE_COMMAND, &command).map_err(StepError::permanent)?;
    Ok(Outcome::NodeCommandReady { command: secret_ref(secret::NODE_COMMAND, &command) })
}

async fn wait_cluster_active(call: &StepCall<'_>) -> StepResult<Outcome> {
    let ctx = call.ctx;
    let api = rancher_api(call)?;
    let auth = auth(ctx)?;
    let id = cluster_id(call)?;
    let what = format!("cluster {id} to be active");
    poll(ctx, ctx.plan.timeouts.active_s, &what, || {
        let (api, auth, id) = (api.clone(), auth.clone(), id.clone());
        async move {
            let c = api.get_cluster(&auth, &id).await?;
            if c.state == "active" {
                Ok(Some(Outcome::ClusterActive))
            } else {
                Err(StepError::transient(format!(
                    "{}{}",
                    c.state,
                    if c.transitioning_message.is_empty() { String::new() } else { format!(": {}", c.transitioning_message) }
                )))
            }
        }
    })
    .await
}

// ------------------------------------------------------------------ nodes

fn roles(role: Role) -> Vec<&'static str> {
    match role {
        Role::Master => vec!["etcd", "controlplane"],
        Role::Worker => vec!["worker"],
        Role::Rancher => vec![],
    }
}

async fn listed_node(call: &StepCall<'_>) -> StepResult<Option<crate::ports::NodeInfo>> {
    let api = rancher_api(call)?;
    let id = cluster_id(call)?;
    let nodes = v1::authed(call, &api, |a| {
        let (api, id) = (api.clone(), id.clone());
        async move { api.list_nodes(&a, &id).await }
    })
    .await?;
    Ok(nodes.into_iter().find(|n| n.requested_hostname == call.actor))
}

/// Whether the agent already ran on this node: Rancher lists it, or (it
/// takes a while to register) its container exists on the machine.
async fn agent_ran(call: &StepCall<'_>) -> StepResult<bool> {
    if listed_node(call).await?.is_some() {
        return Ok(true);
    }
    let Some(command) = call.ctx.secret(secret::NODE_COMMAND) else { return Ok(false) };
    let Some(image) = agent_image(command.expose()) else { return Ok(false) };
    let out = exec(call.ctx, call.actor, &format!("docker ps -a -q --filter {}", shell_quote(&format!("ancestor={image}")))).await?;
    Ok(out.status == 0 && !out.stdout.trim().is_empty())
}

/// The agent image of a node command: the word before `--server`.
fn agent_image(command: &str) -> Option<&str> {
    let words: Vec<&str> = command.split_whitespace().collect();
    let i = words.iter().position(|w| *w == "--server")?;
    words.get(i.checked_sub(1)?).copied().filter(|w| w.contains("rancher-agent"))
}

/// Runs the agent unless it already ran (Rancher lists the node by name, or
/// its container exists): looked up on every try, so a registration with
/// no intent on record is not made twice.
async fn run_agent(call: &StepCall<'_>) -> StepResult<Outcome> {
    let ctx = call.ctx;
    if agent_ran(call).await? {
        return Ok(Outcome::AgentStarted);
    }
    let command = ctx
        .secret(secret::NODE_COMMAND)
        .ok_or_else(|| StepError::permanent("node command missing from the state dir"))?;
    let ip = call.state.ip().ok_or_else(|| StepError::permanent("the machine has no address"))?;
    let ip = shell_quote(ip);
    // The node command is Rancher's own shell command; what rmm adds is quoted.
    // `--node-name`: the node is the machine name in Rancher on every
    // driver, also where the machine's hostname differs (docker-machine's
    // `<cluster>-<machine>`), as the v1 flow does.
    let mut full = format!(
        "{} --address {ip} --internal-address {ip} --node-name {}",
        command.expose().trim(),
        shell_quote(call.actor)
    );
    for r in roles(call.role) {
        full.push_str(" --");
        full.push_str(r);
    }
    let out = exec(ctx, call.actor, &full).await?;
    if out.status != 0 {
        let why = out.stderr.lines().last().unwrap_or("").trim();
        let mut e = StepError::transient(format!("agent exited {}: {}", out.status, ctx.redact(why)));
        // The agent could not reach Rancher (its run.sh says "<server>/ping
        // is not accessible"): Rancher is away, as for a call of ours.
        e.unavailable = why.contains("is not accessible") || why.contains("Rancher unavailable");
        return Err(e);
    }
    Ok(Outcome::AgentStarted)
}

async fn wait_node_listed(call: &StepCall<'_>) -> StepResult<Outcome> {
    let what = format!("Rancher to list node {}", call.actor);
    poll(call.ctx, call.ctx.plan.timeouts.node_listed_s, &what, || async {
        Ok(listed_node(call).await?.map(|n| Outcome::NodeListed { node_id: n.id }))
    })
    .await
}

/// The node's id as the log recorded it when Rancher listed it
/// (`WaitNodeListed`: the v3 node id on rke1, the CAPI machine on v1).
pub(crate) fn recorded_node_id(call: &StepCall<'_>) -> Option<String> {
    match call.state.outcome(Step::WaitNodeListed) {
        Some(Outcome::NodeListed { node_id }) => Some(node_id.clone()),
        _ => None,
    }
}

/// rke1 scale down: `DELETE /v3/nodes/<id>` of this node (the id the log
/// recorded when Rancher listed it, else the one Rancher lists under its
/// hostname), then wait until Rancher lists it no more.
async fn delete_node(call: &StepCall<'_>) -> StepResult<Outcome> {
    let recorded = recorded_node_id(call);
    let id = match recorded {
        Some(id) => Some(id),
        None => listed_node(call).await?.map(|n| n.id),
    };
    let Some(id) = id else { return Ok(Outcome::NodeDeleted { machine: String::new() }) };
    let api = rancher_api(call)?;
    v1::authed(call, &api, |a| {
        let (api, id) = (api.clone(), id.clone());
        async move { api.delete_node(&a, &id).await }
    })
    .await?;
    let cluster = cluster_id(call)?;
    let what = format!("Rancher to let node {} ({id}) go", call.actor);
    poll(call.ctx, call.ctx.plan.timeouts.active_s, &what, || async {
        let nodes = v1::authed(call, &api, |a| {
            let (api, cluster) = (api.clone(), cluster.clone());
            async move { api.list_nodes(&a, &cluster).await }
        })
        .await?;
        match nodes.iter().find(|n| n.id == id) {
            Some(n) => Err(StepError::transient(format!("node {id} is {}", n.state))),
            None => Ok(Some(())),
        }
    })
    .await?;
    Ok(Outcome::NodeDeleted { machine: id })
}

async fn wait_node_active(call: &StepCall<'_>) -> StepResult<Outcome> {
    let what = format!("node {} to be active", call.actor);
    poll(call.ctx, call.ctx.plan.timeouts.active_s, &what, || async {
        match listed_node(call).await? {
            Some(n) if n.state == "active" => Ok(Some(Outcome::NodeActive)),
            Some(n) => Err(StepError::transient(format!("node is {}", n.state))),
            None => Err(StepError::transient("node not listed")),
        }
    })
    .await
}

pub mod v1;
pub use v1::REFUSAL;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod quote_tests {
    use super::shell_quote;

    /// What a POSIX shell does with a word (the local world's exec splits
    /// the same way): the value comes back whole, never as syntax.
    fn split(s: &str) -> Vec<String> {
        // A tiny POSIX splitter for quoted words: enough for shell_quote's output.
        let mut words = Vec::new();
        let (mut cur, mut in_word, mut quoted, mut escaped) = (String::new(), false, false, false);
        for c in s.chars() {
            if escaped {
                cur.push(c);
                escaped = false;
                continue;
            }
            match c {
                '\'' => {
                    quoted = !quoted;
                    in_word = true;
                }
                ' ' if !quoted => {
                    if in_word {
                        words.push(std::mem::take(&mut cur));
                    }
                    in_word = false;
                }
                '\\' if !quoted => {
                    escaped = true;
                    in_word = true;
                }
                c => {
                    cur.push(c);
                    in_word = true;
                }
            }
        }
        if in_word {
            words.push(cur);
        }
        words
    }

    #[test]
    fn every_value_is_one_word_whatever_it_holds() {
        for v in ["rancher/rancher:v2.11.3", "a b", "x; touch /tmp/pwned", "$(id)", "`id`", "it's", "", "a\"b", "*"] {
            let q = shell_quote(v);
            assert_eq!(split(&format!("docker run {q} next")), vec!["docker".to_string(), "run".into(), v.into(), "next".into()], "{v:?} → {q}");
        }
        assert_eq!(shell_quote("rancher/rancher:v2.11.3"), "rancher/rancher:v2.11.3");
    }
}
