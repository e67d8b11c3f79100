//! The RKE2/K3s custom-cluster steps, through Rancher's v1 (Steve) API.
//! Every wire fact here is from `reference/rancher-current.md`; the section
//! is named where it is used.
//!
//! Order (decide::V1_RANCHER_STEPS): readiness beyond `/ping` (§2.1), login
//! at `/v1-public/login` with the v3 fallback (§2.2), password and API
//! token (§3.4), `server-url` before the cluster (§2.3), the cluster
//! (§2.4), `status.clusterName` (§2.5), `default-token`'s command (§2.6),
//! the installer on every node (§2.7), each node's CAPI machine `Running`
//! with a `nodeRef` (§2.8), and the cluster ready as Rancher's own tests
//! define it (§2.9).

use std::sync::{Arc, Mutex};

use rmm_events::{Event, Outcome, Role, Step};

use super::{
    auth, exec, poll, rancher_api, secret_ref, session, shell_quote, token_description, StepCall, StepError,
    StepResult,
};
use crate::context::secret;
use crate::ports::{ApiError, RancherApi, Secret, SteveObject, RUN_ANNOTATION};

/// The namespace of v1 custom clusters and their machines (§1.3, §2.4).
pub const FLEET_DEFAULT: &str = "fleet-default";

/// A permanent failure whose message starts with this is a refusal: the
/// plan asks for something this server cannot do (rke1 on 2.12+, a
/// Kubernetes version it does not offer). `rmm up` exits 2 with the rest.
pub const REFUSAL: &str = "refused: ";

/// How long, after the installer ran, Rancher has to list the node's
/// machine before the step fails with the evidence from the node.
const REGISTRATION_GRACE_S: u64 = 60;

/// The installer's long role flags (§2.7: `-a` is ambiguous; long flags only).
pub fn role_flags(role: Role) -> Vec<&'static str> {
    match role {
        Role::Master => vec!["--etcd", "--controlplane"],
        Role::Worker => vec!["--worker"],
        Role::Rancher => vec![],
    }
}

/// `(major, minor)` of `v2.15.1`, `2.12.0-rc3`; `None` for dev builds.
pub fn minor_version(version: &str) -> Option<(u32, u32)> {
    let v = version.trim().trim_start_matches('v');
    let mut parts = v.split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Calls `f` with the run's token; on a 401 (the API token expired or was
/// revoked: 90 days by default, or a session token past its 16 h, §2.2)
/// logs in again, makes a new API token, and calls once more.
pub(super) async fn authed<T, F, Fut>(call: &StepCall<'_>, api: &Arc<dyn RancherApi>, f: F) -> StepResult<T>
where
    F: Fn(Secret) -> Fut,
    Fut: std::future::Future<Output = Result<T, ApiError>>,
{
    let used = auth(call.ctx)?;
    match f(used.clone()).await {
        Err(e) if e.status() == Some(401) => {
            let token = renew_after(call, api, Some(&used)).await?;
            Ok(f(token).await?)
        }
        other => Ok(other?),
    }
}

/// One renewal at a time: every actor's wait meets the same expired token
/// at about the same moment, and each making its own would leave a live
/// token per actor (one process runs one run).
static RENEWAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A new credential after a 401: a fresh session with the stored
/// passwords, and, when the run already had an API token, a new one of the
/// same description (a resume's `CreateApiToken` look-up clears older
/// ones). Recorded as a `Progress` event of the step that met the 401, so
/// `rmm log` shows when and why the token changed (never the token).
///
/// Unless another actor already renewed since `refused` was read: then
/// its token is used.
pub async fn renew_after(call: &StepCall<'_>, api: &Arc<dyn RancherApi>, refused: Option<&Secret>) -> StepResult<Secret> {
    let ctx = call.ctx;
    let _one = RENEWAL.lock().await;
    if let (Some(refused), Ok(now)) = (refused, auth(ctx)) {
        if now.expose() != refused.expose() {
            return Ok(now);
        }
    }
    let login = session(call, api).await?;
    if ctx.secret(secret::API_TOKEN).is_none() {
        return Ok(login);
    }
    let (id, token) = api.create_token(&login, &token_description(ctx)).await?;
    ctx.put_secret(secret::API_TOKEN, &token).map_err(StepError::permanent)?;
    tracing::warn!(token_id = %id, "Rancher refused the API token (expired or revoked): logged in again and made a new one");
    record_progress(call, format!("Rancher refused the run's API token (expired or revoked): logged in again and made API token {id}")).await;
    Ok(token)
}

/// Appends a `Progress` event of this step (best effort: a message that
/// cannot be recorded is only traced).
async fn record_progress(call: &StepCall<'_>, message: String) {
    let ctx = call.ctx;
    let env = ctx.envelope(call.actor, call.state.last_event, Event::Progress { step: call.step, message });
    match ctx.journal.append(vec![env]).await {
        Ok(records) => {
            if let Some(coordinator) = call.observer {
                coordinator.do_send(crate::coordinator::Appended(records));
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not record a progress message"),
    }
}

/// Records each change of Rancher's progress message as an event, so
/// `rmm log` shows why a wait took long.
struct ProgressLog<'a> {
    call: &'a StepCall<'a>,
    last: Mutex<Option<String>>,
}

impl<'a> ProgressLog<'a> {
    fn new(call: &'a StepCall<'a>) -> Self {
        ProgressLog { call, last: Mutex::new(None) }
    }

    async fn saw(&self, message: &str) {
        let message = self.call.ctx.redact(message.trim());
        if message.is_empty() {
            return;
        }
        {
            let mut last = self.last.lock().expect("not poisoned");
            if last.as_deref() == Some(message.as_str()) {
                return;
            }
            *last = Some(message.clone());
        }
        record_progress(self.call, message).await;
    }
}

// ------------------------------------------------------------------ rancher

/// §1.1: Rancher 2.12 removed RKE1; the v1 custom cluster exists from 2.6
/// (issue 8). Runs right after the CA is pinned: nothing is made in
/// Rancher before a refusal. A server without `/rancherversion` (404) is
/// let through (every Rancher line rmm knows has it).
pub async fn check_rancher_version(call: &StepCall<'_>) -> StepResult<Outcome> {
    let ctx = call.ctx;
    let api = rancher_api(call)?;
    let version = match api.rancher_version().await {
        Ok(v) => v,
        Err(e) if e.status() == Some(404) => "unknown".to_string(),
        Err(e) => return Err(e.into()),
    };
    if let Some(why) = line_refusal(ctx.plan.distribution, &version) {
        return Err(StepError::permanent(format!("{REFUSAL}{why}")));
    }
    Ok(Outcome::RancherVersion { version })
}

/// Why a Rancher of `version` cannot make a cluster of `d`, if it cannot
/// (§1.1: 2.12 removed RKE1; v1 custom clusters exist from 2.6).
pub fn line_refusal(d: rmm_events::Distribution, version: &str) -> Option<String> {
    let line = minor_version(version)?;
    if !d.is_v1() && line >= (2, 12) {
        return Some(format!(
            "Rancher {version} cannot make an rke1 cluster (Rancher 2.12 removed RKE1): use --distribution rke2 (or k3s), or a Rancher image of 2.11 or older for rke1"
        ));
    }
    if d.is_v1() && line < (2, 6) {
        return Some(format!(
            "Rancher {version} cannot make {} custom clusters (they need Rancher 2.6 or later): use a newer rancher_image",
            d.as_str()
        ));
    }
    None
}

/// The Rancher version an image's tag names (`rancher/rancher:v2.15.1`
/// → `v2.15.1`), if its tag is a version (not `latest`, `head`, a digest).
pub fn image_version(image: &str) -> Option<&str> {
    let image = image.split('@').next().unwrap_or(image);
    let name_end = image.rfind('/').map_or(0, |i| i + 1);
    let tag = image[name_end..].split_once(':')?.1;
    minor_version(tag).map(|_| tag)
}

/// §2.1: `/ping` is not enough; two rounds in a row of authenticated
/// `/v1` reads that both answer 200 (rancher/dashboard's e2e). A cluster
/// made before the webhooks are up can be unusable (rancher#51273).
pub async fn wait_api_ready(call: &StepCall<'_>) -> StepResult<Outcome> {
    let ctx = call.ctx;
    let api = rancher_api(call)?;
    let streak = Mutex::new(0u32);
    poll(ctx, ctx.plan.timeouts.rancher_ready_s, "two rounds of authenticated /v1 reads to succeed", || {
        let (api, streak) = (api.clone(), &streak);
        async move {
            let round = authed(call, &api, |a| {
                let api = api.clone();
                async move { api.v1_reads(&a).await }
            })
            .await;
            let mut n = streak.lock().expect("not poisoned");
            match round {
                Ok(()) => {
                    *n += 1;
                    Ok((*n >= 2).then_some(Outcome::ApiReady))
                }
                Err(e) if e.retryable || e.message.contains("answered 4") => {
                    *n = 0;
                    Err(StepError::transient(e.message))
                }
                Err(e) => Err(e),
            }
        }
    })
    .await
}

/// The plan's version, refused (with the list) when this server does not
/// offer it — Rancher would take it and fail much later in the planner
/// (§2.7: "an unoffered version gets 201 and the planner later fails") —
/// or the server's own default setting (§2.4).
pub async fn choose_kubernetes_version(call: &StepCall<'_>) -> StepResult<Outcome> {
    let ctx = call.ctx;
    let d = ctx.plan.distribution;
    let api = rancher_api(call)?;
    let distro = d.as_str();
    let offered = match authed(call, &api, |a| {
        let api = api.clone();
        async move { api.offered_versions(&a, distro).await }
    })
    .await
    {
        Ok(list) => Some(list),
        // No channel server route: the version cannot be checked here.
        Err(e) if e.message.contains("answered 404") => None,
        Err(e) => return Err(e),
    };
    if let Some(wanted) = &ctx.plan.kubernetes_version {
        return match &offered {
            Some(list) if !list.iter().any(|v| v == wanted) => Err(StepError::permanent(format!(
                "{REFUSAL}kubernetes_version {wanted} is not offered by this Rancher; it offers: {}",
                if list.is_empty() { "none (its release data is empty)".to_string() } else { list.join(", ") }
            ))),
            _ => Ok(Outcome::KubernetesVersionChosen { version: wanted.clone(), server_default: false }),
        };
    }
    let setting = d.default_version_setting().ok_or_else(|| StepError::permanent("rke1 has no v1 Kubernetes version"))?;
    let what = format!("the {setting} setting to be filled in");
    // Filled in once Rancher has read its release metadata (KDM).
    let version = poll(ctx, ctx.plan.timeouts.rancher_ready_s, &what, || {
        let api = api.clone();
        async move {
            let v = authed(call, &api, |a| {
                let api = api.clone();
                async move { api.get_setting(&a, setting).await }
            })
            .await?;
            Ok((!v.trim().is_empty()).then(|| v.trim().to_string()))
        }
    })
    .await?;
    Ok(Outcome::KubernetesVersionChosen { version, server_default: true })
}

fn chosen_version(call: &StepCall<'_>) -> StepResult<String> {
    match call.state.outcome(Step::ChooseKubernetesVersion) {
        Some(Outcome::KubernetesVersionChosen { version, .. }) => Ok(version.clone()),
        _ => Err(StepError::permanent("no Kubernetes version chosen yet")),
    }
}

fn cluster_ref(name: &str) -> Outcome {
    Outcome::ClusterCreated { cluster_id: format!("{FLEET_DEFAULT}/{name}") }
}

/// Whether `c` was made by run `run` (it carries [`RUN_ANNOTATION`]).
pub fn made_by(c: &SteveObject, run: &str) -> bool {
    c.annotations.get(RUN_ANNOTATION).is_some_and(|r| r == run)
}

/// The probe of `CreateCluster`: the v1 cluster of the plan's name. On a
/// Rancher this run started, a cluster of that name is this run's. On an
/// existing Rancher only one annotated with this run's id is: any other is
/// someone else's, and is refused, never adopted (nor later deleted).
pub async fn find_cluster(call: &StepCall<'_>) -> StepResult<Option<Outcome>> {
    let api = rancher_api(call)?;
    let name = call.ctx.plan.cluster_name.clone();
    let found = authed(call, &api, |a| {
        let (api, name) = (api.clone(), name.clone());
        async move { api.get_v1_cluster(&a, &name).await }
    })
    .await?;
    match found {
        Some(c) if call.ctx.plan.existing_rancher() && !made_by(&c, &call.ctx.run.to_string()) => Err(StepError::permanent(format!(
            "{REFUSAL}a cluster named {name} already exists in the Rancher at {} and was not made by this run: choose another --cluster-name (rmm never adopts or deletes a cluster it did not make)",
            call.ctx.plan.rancher_url.as_deref().unwrap_or("?")
        ))),
        Some(_) => Ok(Some(cluster_ref(&name))),
        None => Ok(None),
    }
}

/// §2.4: looked up by name first, on every try; a 409 `AlreadyExists`
/// (made by a try whose outcome was lost) is adopted.
pub async fn create_cluster(call: &StepCall<'_>) -> StepResult<Outcome> {
    if let Some(found) = find_cluster(call).await? {
        return Ok(found);
    }
    let api = rancher_api(call)?;
    let name = call.ctx.plan.cluster_name.clone();
    let version = chosen_version(call)?;
    let run = call.ctx.run.to_string();
    let made = authed(call, &api, |a| {
        let (api, name, version, run) = (api.clone(), name.clone(), version.clone(), run.clone());
        async move { api.create_v1_cluster(&a, &name, &version, &run).await }
    })
    .await;
    match made {
        Ok(_) => Ok(cluster_ref(&name)),
        // Made meanwhile (by a try whose outcome was lost, or, on a
        // shared server, by someone else: `find_cluster` tells which).
        Err(e) if e.message.contains("409") => Ok(find_cluster(call).await?.unwrap_or_else(|| cluster_ref(&name))),
        Err(e) => Err(e),
    }
}

async fn v1_cluster(call: &StepCall<'_>, api: &Arc<dyn RancherApi>) -> StepResult<SteveObject> {
    let name = call.ctx.plan.cluster_name.clone();
    authed(call, api, |a| {
        let (api, name) = (api.clone(), name.clone());
        async move { api.get_v1_cluster(&a, &name).await }
    })
    .await?
    .ok_or_else(|| StepError::permanent(format!("the v1 cluster {FLEET_DEFAULT}/{name} is gone from Rancher")))
}

/// An error transition or an error condition ends a wait with Rancher's
/// own message (issue 8: "failures seen in seconds").
pub(crate) fn error_of(what: &str, o: &SteveObject) -> Option<String> {
    if o.state.error {
        let m = if o.state.message.is_empty() { o.state.name.clone() } else { o.state.message.clone() };
        return Some(format!("{what} is in error: {m}"));
    }
    if let Some(f) = &o.failure {
        return Some(format!("{what} failed: {f}"));
    }
    if o.phase.as_deref() == Some("Failed") {
        return Some(format!("{what} is Failed"));
    }
    o.conditions
        .iter()
        .find(|c| c.reason == "Error" && c.status != "True" || c.kind == "Failed" && c.status == "True")
        .map(|c| format!("{what}: condition {} {}: {}", c.kind, c.status, c.message))
}

/// What Rancher says it is doing: the Steve state message, else the first
/// condition that is not True and has a message.
fn progress_of(o: &SteveObject) -> String {
    if !o.state.message.is_empty() {
        return o.state.message.clone();
    }
    o.conditions.iter().find(|c| c.status != "True" && !c.message.is_empty()).map(|c| c.message.clone()).unwrap_or_default()
}

/// §2.5: `status.clusterName` (`c-m-xxxxxxxx`).
pub async fn wait_cluster_name(call: &StepCall<'_>) -> StepResult<Outcome> {
    let ctx = call.ctx;
    let api = rancher_api(call)?;
    let what = format!("cluster {} to get its status.clusterName", ctx.plan.cluster_name);
    poll(ctx, ctx.plan.timeouts.node_command_s, &what, || async {
        let c = v1_cluster(call, &api).await?;
        if let Some(e) = error_of("the cluster", &c) {
            return Err(StepError::permanent(e));
        }
        Ok(c.cluster_name.map(|management_id| Outcome::ClusterNamed { management_id }))
    })
    .await
}

fn management_id(call: &StepCall<'_>) -> StepResult<String> {
    if let Some(join) = call.join {
        return Ok(join.cluster_id.clone());
    }
    match call.state.outcome(Step::WaitClusterName) {
        Some(Outcome::ClusterNamed { management_id }) => Ok(management_id.clone()),
        _ => Err(StepError::permanent("no management cluster id yet")),
    }
}

/// Which of `default-token`'s commands rmm runs.
///
/// `insecureNodeCommand`, when the server has a private CA (the Docker
/// install's self-signed default): the secure `nodeCommand`'s first `curl`
/// fails on any node that does not already trust that CA, and `curl … |
/// sh` then exits 0 anyway (§2.6, §2.7). In the insecure one only the
/// script download skips verification; the installer itself downloads
/// `<server>/cacerts` and checks it against `--ca-checksum` (§2.6), which
/// rmm first checks equals the checksum it pinned ([`check_ca_checksum`]).
/// Installing the CA on every node instead would need a CA store and a
/// writable `/usr/local/share/ca-certificates` on each machine kind, for
/// no gain in what the agent finally trusts. Without a pinned CA (public
/// certificate) the secure `nodeCommand` is used.
pub fn pick_command(token: &crate::ports::RegistrationToken, private_ca: bool) -> Option<Secret> {
    let (first, second) = if private_ca {
        (&token.insecure_node_command, &token.node_command)
    } else {
        (&token.node_command, &token.insecure_node_command)
    };
    first.clone().or_else(|| second.clone()).filter(|c| !c.expose().trim().is_empty())
}

/// The command's `--ca-checksum` must be the checksum rmm pinned: the
/// agent will trust what that checksum names.
pub fn check_ca_checksum(command: &str, pinned: &str) -> StepResult<()> {
    let words: Vec<&str> = command.split_whitespace().collect();
    let given = words.iter().position(|w| *w == "--ca-checksum").and_then(|i| words.get(i + 1));
    match given {
        Some(sum) if sum.trim_matches('\'').eq_ignore_ascii_case(pinned) => Ok(()),
        Some(sum) => Err(StepError::permanent(format!(
            "the node command's --ca-checksum {sum} is not the pinned CA's {pinned}: not run"
        ))),
        // Rancher adds it only when `cacerts` is set (§2.6).
        None => Err(StepError::permanent("the node command has no --ca-checksum although the CA is pinned: not run")),
    }
}

fn pinned_checksum(call: &StepCall<'_>) -> Option<String> {
    if let Some(join) = call.join {
        // Empty: verified against the system's roots, nothing pinned.
        return Some(join.ca_checksum.clone()).filter(|c| !c.is_empty());
    }
    match call.state.outcome(Step::PinCa) {
        Some(Outcome::CaPinned { checksum }) => Some(checksum.clone()),
        _ => None,
    }
}

async fn default_token_command(call: &StepCall<'_>, api: &Arc<dyn RancherApi>) -> StepResult<Option<Secret>> {
    // §2.6: `default-token` in namespace `<c-m-id>`, read through v3
    // (which serves the real token in place of `{token}`).
    let id = format!("{}:default-token", management_id(call)?);
    let token = authed(call, api, |a| {
        let (api, id) = (api.clone(), id.clone());
        async move {
            match api.get_registration_token(&a, &id).await {
                Ok(t) => Ok(Some(t)),
                // Not made yet by the cluster controller: keep polling.
                Err(e) if e.status() == Some(404) => Ok(None),
                Err(e) => Err(e),
            }
        }
    })
    .await?;
    Ok(token.and_then(|t| pick_command(&t, pinned_checksum(call).is_some())))
}

/// §2.6: `default-token` appears after the cluster and its command stays
/// empty until the controller fills it in (and `server-url` is set).
pub async fn wait_node_command(call: &StepCall<'_>) -> StepResult<Outcome> {
    let ctx = call.ctx;
    let api = rancher_api(call)?;
    let what = format!("default-token of {} to get its node command", management_id(call)?);
    let command = poll(ctx, ctx.plan.timeouts.node_command_s, &what, || default_token_command(call, &api)).await?;
    ctx.put_secret(secret::NODE_COMMAND, &command).map_err(StepError::permanent)?;
    Ok(Outcome::NodeCommandReady { command: secret_ref(secret::NODE_COMMAND, &command) })
}

/// §2.9: ready as Rancher's own test (`WaitForCreate`) defines it.
pub async fn wait_cluster_ready(call: &StepCall<'_>) -> StepResult<Outcome> {
    let ctx = call.ctx;
    let api = rancher_api(call)?;
    let mgmt = management_id(call)?;
    let progress = ProgressLog::new(call);
    let what = format!("cluster {} to be ready", ctx.plan.cluster_name);
    poll(ctx, ctx.plan.timeouts.active_s, &what, || async {
        let c = v1_cluster(call, &api).await?;
        if let Some(e) = error_of("the cluster", &c) {
            return Err(StepError::permanent(e));
        }
        let now = progress_of(&c);
        progress.saw(&now).await;
        let v1_ready = c.ready
            && c.observed_generation == c.generation
            && c.is_true("Ready")
            && c.is_true("Provisioned")
            && c.cluster_name.is_some();
        if !v1_ready {
            return Err(StepError::transient(if now.is_empty() { "not ready yet".to_string() } else { now }));
        }
        let name = ctx.plan.cluster_name.clone();
        let machines = authed(call, &api, |a| {
            let (api, name) = (api.clone(), name.clone());
            async move { api.list_machines(&a, &name).await }
        })
        .await?;
        if let Some(m) = machines.iter().find(|m| m.node_ref.is_none()) {
            return Err(StepError::transient(format!("machine {} has no nodeRef yet", m.name)));
        }
        let m = authed(call, &api, |a| {
            let (api, mgmt) = (api.clone(), mgmt.clone());
            async move { api.get_management_cluster(&a, &mgmt).await }
        })
        .await?;
        if m.is_true("Ready") {
            Ok(Some(Outcome::ClusterReady))
        } else {
            Err(StepError::transient(format!("management cluster {mgmt} not Ready yet")))
        }
    })
    .await
}

/// `rmm down` on an existing Rancher: deletes the v1 cluster (only the one
/// the `up` run made: annotated with its id) and waits until both it and
/// its management cluster are gone; Rancher removes the management
/// cluster, then lets the v1 object go (its finalizer). The server itself
/// is never touched. Run again (a resume), it deletes nothing twice: a
/// cluster already gone is 404, and the wait goes on.
pub async fn delete_cluster(call: &StepCall<'_>) -> StepResult<Outcome> {
    let ctx = call.ctx;
    let api = rancher_api(call)?;
    let name = ctx.plan.cluster_name.clone();
    let up_run = ctx.undo.as_ref().map(|u| u.run.to_string()).unwrap_or_default();
    let found = authed(call, &api, |a| {
        let (api, name) = (api.clone(), name.clone());
        async move { api.get_v1_cluster(&a, &name).await }
    })
    .await?;
    let mut management_id = ctx.undo.as_ref().and_then(|u| u.management_id.clone());
    if let Some(c) = &found {
        if !made_by(c, &up_run) {
            return Err(StepError::permanent(format!(
                "the cluster named {name} in the Rancher at {} was not made by run {up_run} (it carries no {RUN_ANNOTATION} of it): not deleted",
                ctx.plan.rancher_url.as_deref().unwrap_or("?")
            )));
        }
        management_id = management_id.or_else(|| c.cluster_name.clone());
        authed(call, &api, |a| {
            let (api, name) = (api.clone(), name.clone());
            async move { api.delete_v1_cluster(&a, &name).await }
        })
        .await?;
    }
    let progress = ProgressLog::new(call);
    let what = format!(
        "cluster {FLEET_DEFAULT}/{name}{} to be gone from Rancher",
        management_id.as_deref().map(|m| format!(" and management cluster {m}")).unwrap_or_default()
    );
    poll(ctx, ctx.plan.timeouts.active_s, &what, || async {
        let v1 = authed(call, &api, |a| {
            let (api, name) = (api.clone(), name.clone());
            async move { api.get_v1_cluster(&a, &name).await }
        })
        .await?;
        let mgmt_gone = match &management_id {
            None => true,
            Some(id) => {
                let got = authed(call, &api, |a| {
                    let (api, id) = (api.clone(), id.clone());
                    async move {
                        match api.get_management_cluster(&a, &id).await {
                            Ok(_) => Ok(false),
                            Err(e) if e.status() == Some(404) => Ok(true),
                            Err(e) => Err(e),
                        }
                    }
                })
                .await?;
                got
            }
        };
        match (v1, mgmt_gone) {
            (None, true) => Ok(Some(())),
            (Some(c), _) => {
                let now = progress_of(&c);
                let state = if now.is_empty() { c.state.name.clone() } else { format!("{}: {now}", c.state.name) };
                progress.saw(&format!("v1 cluster still there ({state})")).await;
                Err(StepError::transient(format!("the v1 cluster is still there ({state})")))
            }
            (None, false) => {
                progress.saw("v1 cluster gone; management cluster still there").await;
                Err(StepError::transient("the management cluster is still there"))
            }
        }
    })
    .await?;
    Ok(Outcome::ClusterDeleted { management_id: management_id.unwrap_or_default() })
}

// ------------------------------------------------------------------ nodes

/// Whether a CAPI machine is this node's: its `nodeRef` names it, or a
/// label or annotation holds its name (the `--node-name` the installer
/// sent as `X-Cattle-Node-Name`, §2.7). The reference names no label key
/// for it (§8: live bodies not captured), so any key is accepted.
pub fn is_machine_of(m: &SteveObject, node: &str) -> bool {
    m.node_ref.as_deref() == Some(node)
        || m.labels.values().any(|v| v == node)
        || m.annotations.values().any(|v| v == node)
}

/// This node's CAPI machine, if Rancher lists one (§2.8).
pub async fn machine_of_node(call: &StepCall<'_>) -> StepResult<Option<SteveObject>> {
    let api = rancher_api(call)?;
    let cluster = call.ctx.plan.cluster_name.clone();
    let machines = authed(call, &api, |a| {
        let (api, cluster) = (api.clone(), cluster.clone());
        async move { api.list_machines(&a, &cluster).await }
    })
    .await?;
    Ok(machines.into_iter().find(|m| is_machine_of(m, call.actor)))
}

/// A scale down (issue 11): delete this node's CAPI machine (the one the
/// log recorded when Rancher listed it, else the one Rancher lists for
/// the node) and wait until Rancher has let it go: Kubernetes keeps an
/// object with finalizers (`metadata.deletionTimestamp` set, phase
/// `Deleting`) until its controllers are done (CAPI drains and deletes
/// the node; https://kubernetes.io/docs/concepts/overview/working-with-objects/finalizers/),
/// and only then is it 404. Deleting the machine is how Rancher removes a
/// custom node (rancher/rancher#43686).
pub async fn delete_node(call: &StepCall<'_>) -> StepResult<Outcome> {
    let api = rancher_api(call)?;
    let recorded = super::recorded_node_id(call);
    let name = match recorded {
        Some(name) => Some(name),
        None => machine_of_node(call).await?.map(|m| m.name),
    };
    let Some(name) = name else { return Ok(Outcome::NodeDeleted { machine: String::new() }) };
    authed(call, &api, |a| {
        let (api, name) = (api.clone(), name.clone());
        async move { api.delete_machine(&a, &name).await }
    })
    .await?;
    let progress = ProgressLog::new(call);
    let cluster = call.ctx.plan.cluster_name.clone();
    let what = format!("Rancher to let machine {name} of node {} go", call.actor);
    poll(call.ctx, call.ctx.plan.timeouts.active_s, &what, || async {
        let machines = authed(call, &api, |a| {
            let (api, cluster) = (api.clone(), cluster.clone());
            async move { api.list_machines(&a, &cluster).await }
        })
        .await?;
        match machines.iter().find(|m| m.name == name) {
            None => Ok(Some(())),
            Some(m) => {
                let phase = m.phase.clone().unwrap_or_else(|| m.state.name.clone());
                progress.saw(&format!("machine {name} still there ({phase})")).await;
                Err(StepError::transient(format!("machine {name} is still there ({phase})")))
            }
        }
    })
    .await?;
    Ok(Outcome::NodeDeleted { machine: name })
}

/// The unit the installer writes (reference/rancher-current.md §2.7).
const AGENT_UNIT: &str = "/etc/systemd/system/rancher-system-agent.service";

/// Whether the installer already ran on this node, as far as writing the
/// agent's unit (after its registration call, §2.7).
async fn agent_installed(call: &StepCall<'_>) -> StepResult<bool> {
    let out = exec(call.ctx, call.actor, &format!("test -f {AGENT_UNIT} && echo installed")).await?;
    Ok(out.status == 0 && out.stdout.trim() == "installed")
}

/// How a failed registration check starts its message (see [`run_agent`]).
const AGENT_DEAD: &str = "agent service dead: ";

/// What systemd says of the agent's service on the node.
#[derive(Debug, PartialEq, Eq)]
pub enum AgentService {
    /// `active`, never restarted.
    Healthy,
    /// Loaded, not active yet (`activating`).
    Starting,
    /// It will not register: why.
    Dead(String),
    /// Running or starting, but systemd has restarted it this many times:
    /// it exited. Right after the installer, that is an agent that fails.
    Restarted(u64),
    /// The node did not say (no `systemctl`): Rancher's list decides.
    Unknown,
}

/// Reads `systemctl show -p LoadState -p ActiveState -p NRestarts` output
/// (one `Key=value` a line, in systemd's own order). The installer writes
/// and starts `rancher-system-agent.service` (§2.7); a unit that is not
/// there after the installer exited was never installed (the pipeline
/// exits 0 when curl fails, §2.7); a unit that is `failed`, or that
/// systemd has already restarted, exited: an agent that works keeps
/// running (it watches its plan secret).
pub fn agent_service_of(show: &str) -> AgentService {
    let get = |key: &str| show.lines().find_map(|l| l.trim().strip_prefix(key)?.strip_prefix('=')).map(str::trim);
    let Some(active) = get("ActiveState") else { return AgentService::Unknown };
    let restarts = get("NRestarts").and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
    match (get("LoadState"), active) {
        (Some("not-found"), _) => AgentService::Dead("the installer left no rancher-system-agent service on the node".into()),
        (_, "failed") => AgentService::Dead("the rancher-system-agent service failed".into()),
        _ if restarts > 0 => AgentService::Restarted(restarts),
        (_, "active") => AgentService::Healthy,
        _ => AgentService::Starting,
    }
}

/// [`agent_service_of`] the node; a node that cannot be asked right now
/// (the driver failed to run the command) says nothing.
async fn agent_service(call: &StepCall<'_>) -> AgentService {
    match exec(call.ctx, call.actor, "systemctl show rancher-system-agent -p LoadState -p ActiveState -p NRestarts").await {
        Ok(out) if out.status == 0 => agent_service_of(&out.stdout),
        _ => AgentService::Unknown,
    }
}

/// The agent's service status and log tail on the node, for a failure.
async fn agent_evidence(call: &StepCall<'_>) -> String {
    exec(
        call.ctx,
        call.actor,
        "systemctl status rancher-system-agent --no-pager 2>&1 | tail -n 5; journalctl -u rancher-system-agent -n 20 --no-pager 2>&1 | tail -n 20",
    )
    .await
    .map(|o| tail(&format!("{}\n{}", o.stdout, o.stderr), 12))
    .unwrap_or_else(|e| format!("could not read it: {}", e.message))
}

/// How often a wait for a node's machine looks at the agent on the node.
const AGENT_LOOK_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// An in-doubt `run_agent` happened when Rancher lists the node's machine
/// and the installer got as far as the agent's unit on the node. A machine
/// listed with no unit on the node is a registration whose installer was
/// cut short: its service was never made, so it would never check in, and
/// waiting for it to be `Running` would wait out `active_s`. `run_agent`
/// then runs the installer again.
pub async fn agent_ran(call: &StepCall<'_>) -> StepResult<Option<Outcome>> {
    let done = machine_of_node(call).await?.is_some() && agent_installed(call).await?;
    Ok(done.then_some(Outcome::AgentStarted))
}

/// The word after `flag` in a command.
fn flag_value<'a>(command: &'a str, flag: &str) -> Option<&'a str> {
    let words: Vec<&str> = command.split_whitespace().collect();
    words.iter().position(|w| *w == flag).and_then(|i| words.get(i + 1)).copied()
}

/// The last `n` non-empty lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().map(str::trim_end).filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// §2.7: the installer with long flags. A node whose machine Rancher
/// already lists does not run it again. The command is read fresh from
/// `default-token` right before (CRTs rotate, §2.6). Its exit status proves
/// nothing (`curl … | sh` exits 0 when curl fails), so the step then looks
/// for the machine in Rancher for up to a minute, and fails with the
/// evidence from the node (installer output, agent status and log tail,
/// secrets redacted) when it is not there.
pub async fn run_agent(call: &StepCall<'_>) -> StepResult<Outcome> {
    let ctx = call.ctx;
    let listed = machine_of_node(call).await?.is_some();
    if listed && agent_installed(call).await? {
        return Ok(Outcome::AgentStarted);
    }
    let api = rancher_api(call)?;
    let command = default_token_command(call, &api)
        .await?
        .ok_or_else(|| StepError::transient("default-token has no node command right now"))?;
    ctx.put_secret(secret::NODE_COMMAND, &command).map_err(StepError::permanent)?;
    if let Some(pinned) = pinned_checksum(call) {
        check_ca_checksum(command.expose(), &pinned)?;
    }
    let ip = call.state.ip().ok_or_else(|| StepError::permanent("the machine has no address"))?;
    let ip = shell_quote(ip);
    let full = format!(
        "{} {} --node-name {} --address {ip} --internal-address {ip}",
        command.expose().trim(),
        role_flags(call.role).join(" "),
        shell_quote(call.actor)
    );
    // Installed by a try whose outcome was lost, not listed yet: not run
    // again (a second registration could make a second machine); its
    // registration is checked as if it had just run. Listed but with no
    // unit on the node: the installer was cut short between its
    // registration and the service (rmm killed mid-way); it runs again,
    // with the node's kept system-agent id, so Rancher's machine stays the
    // same one, and the service that checks in is started this time.
    let out = if !listed && agent_installed(call).await? {
        crate::ports::ExecOutput {
            status: 0,
            stdout: format!("(not run again: {AGENT_UNIT} exists from an earlier try)"),
            stderr: String::new(),
        }
    } else {
        exec(ctx, call.actor, &full).await?
    };
    let grace = REGISTRATION_GRACE_S.min(ctx.plan.timeouts.node_listed_s);
    let what = format!("Rancher to list a machine for node {} after its installer ran", call.actor);
    // Registered means both: Rancher lists the machine (the installer's
    // `/v3/connect/agent` made it) and the agent's service runs on the
    // node. A service that died is seen at once, not after the minute
    // (nor after the half hour `wait_machine_running` would wait for a
    // machine whose agent never checks in).
    let registered = if out.status == 0 {
        poll(ctx, grace, &what, || async {
            match agent_service(call).await {
                AgentService::Dead(why) => Err(StepError::permanent(format!("{AGENT_DEAD}{why}"))),
                AgentService::Restarted(n) => Err(StepError::permanent(format!(
                    "{AGENT_DEAD}the rancher-system-agent service exited and was restarted {n} time(s)"
                ))),
                AgentService::Starting => Ok(None),
                AgentService::Healthy | AgentService::Unknown => Ok(machine_of_node(call).await?.map(|_| ())),
            }
        })
        .await
    } else {
        machine_of_node(call).await?.map(|_| ()).ok_or_else(|| StepError::permanent("installer failed"))
    };
    match registered {
        Ok(()) => Ok(Outcome::AgentStarted),
        Err(e) if e.message.starts_with("timed out") || e.message == "installer failed" || e.message.starts_with(AGENT_DEAD) => {
            let why = match e.message.strip_prefix(AGENT_DEAD) {
                Some(why) => format!(" ({why})"),
                None => String::new(),
            };
            let evidence = agent_evidence(call).await;
            let installer = tail(&format!("{}\n{}", out.stdout, out.stderr), 8);
            let text = format!(
                "node {} did not register{why}: the installer exited {}{}; installer output: {}; agent on the node: {}",
                call.actor,
                out.status,
                match (out.status, why.is_empty()) {
                    (0, true) => format!(" and Rancher lists no machine for it after {grace}s"),
                    (0, false) => String::new(),
                    _ => " and Rancher lists no machine for it".to_string(),
                },
                if installer.is_empty() { "(none)".to_string() } else { installer },
                if evidence.is_empty() { "(nothing)".to_string() } else { evidence },
            );
            // The registration token, wherever the installer echoed it.
            let text = match flag_value(command.expose(), "--token") {
                Some(token) if token.len() >= 4 => text.replace(token, "***"),
                _ => text,
            };
            let mut err = StepError::permanent(ctx.redact(&text));
            // The agent could not reach Rancher at all: Rancher is away.
            if err.message.contains("is not accessible") || err.message.contains("Could not resolve host") {
                err.retryable = true;
                err.unavailable = true;
            }
            Err(err)
        }
        Err(e) => Err(e),
    }
}

/// §2.8: the node's machine is listed (registered).
pub async fn wait_machine_listed(call: &StepCall<'_>) -> StepResult<Outcome> {
    let what = format!("Rancher to list the machine of node {}", call.actor);
    poll(call.ctx, call.ctx.plan.timeouts.node_listed_s, &what, || async {
        match machine_of_node(call).await? {
            Some(m) => match error_of(&format!("machine {}", m.name), &m) {
                Some(e) => Err(StepError::permanent(e)),
                None => Ok(Some(Outcome::NodeListed { node_id: m.name })),
            },
            None => Ok(None),
        }
    })
    .await
}

/// §2.8/§2.9: `status.phase == Running` and `status.nodeRef` set.
pub async fn wait_machine_running(call: &StepCall<'_>) -> StepResult<Outcome> {
    let ctx = call.ctx;
    let progress = ProgressLog::new(call);
    let what = format!("the machine of node {} to be Running", call.actor);
    let looked = Mutex::new(std::time::Instant::now());
    poll(ctx, ctx.plan.timeouts.active_s, &what, || async {
        let Some(m) = machine_of_node(call).await? else {
            return Err(StepError::transient("no machine listed for this node"));
        };
        if let Some(e) = error_of(&format!("machine {}", m.name), &m) {
            return Err(StepError::permanent(e));
        }
        let phase = m.phase.clone().unwrap_or_else(|| "no phase".into());
        if let (Some(node), "Running") = (&m.node_ref, phase.as_str()) {
            return Ok(Some(Outcome::MachineRunning { machine: m.name.clone(), node: node.clone() }));
        }
        // An agent that died after it registered leaves the machine
        // waiting for it for good: seen on the node every few seconds.
        // Only `failed` or gone counts here (an agent that has run a
        // while may have been restarted for good reasons).
        let look = {
            let mut at = looked.lock().expect("not poisoned");
            let due = at.elapsed() >= AGENT_LOOK_EVERY;
            if due {
                *at = std::time::Instant::now();
            }
            due
        };
        if look {
            if let AgentService::Dead(why) = agent_service(call).await {
                let text = format!(
                    "node {}'s agent stopped ({why}) while its machine {} is {phase}; agent on the node: {}",
                    call.actor,
                    m.name,
                    agent_evidence(call).await
                );
                return Err(StepError::permanent(call.ctx.redact(&text)));
            }
        }
        let now = progress_of(&m);
        let message = if now.is_empty() { phase } else { format!("{phase}: {now}") };
        progress.saw(&message).await;
        Err(StepError::transient(message))
    })
    .await
}

/// `rmm down` on an existing Rancher, once its cluster is gone: the run's
/// credentials in that Rancher are deleted, so no admin-scoped token rmm
/// made outlives the run (an API token made without a TTL never expires
/// on its own: rancher docs, "API Tokens"). Its API tokens are found by
/// their description (`rmm run <up run>`, and `rmm run <this down>` for one
/// a renewal made here), its login sessions by the ids rmm holds. The
/// others go first and the token rmm calls with last: Rancher lets a
/// derived (API) token delete itself, never a login session ("Cannot
/// delete token for current session. Use logout instead": rancher
/// `pkg/auth/tokens/manager.go` `deleteToken`, refused only when
/// `currentAuthToken.Name == t.Name && !currentAuthToken.IsDerived`), so a
/// session rmm calls with (a run that never made its API token) is left to
/// expire (`auth-user-session-ttl-minutes`, 16 h by default). A 404 counts
/// as deleted; a try again after a crash that took the caller's token
/// gets a new one (`effect`'s 401 path) and deletes that too.
pub async fn delete_api_tokens(call: &StepCall<'_>) -> StepResult<Outcome> {
    let ctx = call.ctx;
    let api = rancher_api(call)?;
    let caller = auth(ctx)?;
    let id_of = |s: &Secret| s.expose().split(':').next().unwrap_or_default().to_string();
    let caller_id = id_of(&caller);
    let mut runs = vec![ctx.run];
    runs.extend(ctx.undo.as_ref().map(|u| u.run));
    let descriptions: Vec<String> = runs.iter().map(|r| format!("rmm run {r}")).collect();
    let sessions: Vec<String> =
        runs.iter().filter_map(|r| ctx.secrets.get(&format!("{r}/{}", secret::LOGIN_TOKEN))).map(|s| id_of(&s)).collect();
    let listed = api.list_tokens(&caller).await?;
    let mut ours: Vec<String> = listed
        .iter()
        .filter(|t| descriptions.contains(&t.description) || sessions.contains(&t.id))
        .map(|t| t.id.clone())
        .collect();
    // The caller last: once it is gone, nothing more can be asked.
    ours.sort_by_key(|id| *id == caller_id);
    let caller_is_ours = descriptions.iter().any(|d| listed.iter().any(|t| t.id == caller_id && &t.description == d));
    let mut deleted = 0;
    for id in &ours {
        if *id == caller_id && !caller_is_ours {
            continue; // a login session: left to expire (see above)
        }
        api.delete_token(&caller, id).await?;
        deleted += 1;
    }
    Ok(Outcome::ApiTokensDeleted { deleted })
}
