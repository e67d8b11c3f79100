//! [`HttpRancher`]: the reqwest implementation of [`RancherApi`], and
//! [`HttpConnector`], which makes one per server URL and trust choice.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, Url};
use rmm_actors::ports::{
    ApiError, ApiToken, CaTrust, ClusterInfo, NodeInfo, RancherApi, RancherConnector, RegistrationToken, Secret,
    SteveObject,
};
use serde::Deserialize;
use serde_json::Value;

use super::model::{self, Collection};
use super::transport;

/// Why a credential is not sent (the port's contract for
/// [`CaTrust::Unverified`]).
pub const REFUSE_UNPINNED: &str = "refusing to send credentials to a server whose CA is not pinned";

/// Pages followed at most when listing (norman's default page is 1000).
const MAX_PAGES: usize = 50;

/// Makes [`HttpRancher`] clients.
#[derive(Debug, Clone)]
pub struct HttpConnector {
    timeout: Duration,
}

impl Default for HttpConnector {
    fn default() -> Self {
        HttpConnector { timeout: transport::DEFAULT_TIMEOUT }
    }
}

impl HttpConnector {
    /// Clients with the default per-request timeout (10 s).
    pub fn new() -> Self {
        Self::default()
    }

    /// Clients with another per-request timeout.
    pub fn with_timeout(timeout: Duration) -> Self {
        HttpConnector { timeout }
    }
}

impl RancherConnector for HttpConnector {
    fn connect(&self, base_url: &str, trust: CaTrust) -> Result<Arc<dyn RancherApi>, ApiError> {
        Ok(Arc::new(HttpRancher::with_timeout(base_url, trust, self.timeout)?))
    }
}

/// One Rancher server over HTTPS, speaking the v3 API.
///
/// Every request carries `User-Agent: rmm/<version>`, `Accept:
/// application/json`, `Content-Type: application/json` when it has a body,
/// and (for authenticated calls) `Authorization: Bearer <token>`, marked
/// sensitive. Redirects are never followed.
#[derive(Debug, Clone)]
pub struct HttpRancher {
    /// The server's origin (`https://host[:port]`); any path is dropped,
    /// as Rancher does with `server-url`.
    base: Url,
    client: reqwest::Client,
    pinned: bool,
    timeout: Duration,
}

impl HttpRancher {
    /// A client with the default timeout (10 s per request).
    pub fn new(base_url: &str, trust: CaTrust) -> Result<HttpRancher, ApiError> {
        Self::with_timeout(base_url, trust, transport::DEFAULT_TIMEOUT)
    }

    /// `base_url` must be `https://host[:port]`: credentials never travel
    /// in clear text. A bad URL or a bad pinned CA is [`ApiError::Tls`].
    pub fn with_timeout(base_url: &str, trust: CaTrust, timeout: Duration) -> Result<HttpRancher, ApiError> {
        let mut base =
            Url::parse(base_url.trim()).map_err(|e| ApiError::Tls(format!("bad Rancher URL {base_url:?}: {e}")))?;
        if base.scheme() != "https" {
            return Err(ApiError::Tls(format!("the Rancher URL must be https://, not {base_url:?}")));
        }
        let Some(host) = base.host_str().filter(|h| !h.is_empty()) else {
            return Err(ApiError::Tls(format!("the Rancher URL has no host: {base_url:?}")));
        };
        let loopback = match host.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>() {
            Ok(ip) => ip.is_loopback(),
            Err(_) => host.eq_ignore_ascii_case("localhost"),
        };
        base.set_path("/");
        base.set_query(None);
        base.set_fragment(None);
        // Verified: a pinned CA, or the system's roots.
        let pinned = !matches!(trust, CaTrust::Unverified);
        let client = transport::client(&trust, timeout, loopback)?;
        Ok(HttpRancher { base, client, pinned, timeout })
    }

    /// The server's origin, `https://host[:port]/`.
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut().expect("an https URL has a path").clear().extend(segments);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    /// Sends one request and reads the whole answer. Refuses, before
    /// anything is sent, to attach a credential without a pinned CA.
    async fn send(
        &self,
        method: Method,
        url: Url,
        auth: Option<&Secret>,
        headers: &[(&'static str, &Secret)],
        body: Option<&Value>,
    ) -> Result<(u16, Vec<u8>), ApiError> {
        if (auth.is_some() || !headers.is_empty()) && !self.pinned {
            return Err(ApiError::Tls(REFUSE_UNPINNED.into()));
        }
        let what = format!("{method} {}", url.path());
        let mut req = self
            .client
            .request(method, url)
            .timeout(self.timeout)
            .header(ACCEPT, HeaderValue::from_static("application/json"));
        if let Some(token) = auth {
            req = req.header(AUTHORIZATION, sensitive(&format!("Bearer {}", token.expose()))?);
        }
        for (name, value) in headers {
            req = req.header(*name, sensitive(value.expose())?);
        }
        if let Some(body) = body {
            let bytes = serde_json::to_vec(body).map_err(|e| ApiError::Decode(format!("{what}: request body: {e}")))?;
            req = req.header(CONTENT_TYPE, HeaderValue::from_static("application/json")).body(bytes);
        }
        let resp = req.send().await.map_err(|e| transport::transport_error(&what, e, self.timeout))?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| transport::transport_error(&what, e, self.timeout))?;
        tracing::debug!(request = %what, status, "rancher");
        if (200..300).contains(&status) {
            Ok((status, bytes.to_vec()))
        } else {
            Err(transport::status_error(&what, status, &bytes))
        }
    }

    async fn get(&self, auth: Option<&Secret>, segments: &[&str], query: &[(&str, &str)]) -> Result<Vec<u8>, ApiError> {
        Ok(self.send(Method::GET, self.url(segments, query), auth, &[], None).await?.1)
    }

    async fn post(
        &self,
        auth: Option<&Secret>,
        segments: &[&str],
        query: &[(&str, &str)],
        body: &Value,
    ) -> Result<Vec<u8>, ApiError> {
        Ok(self.send(Method::POST, self.url(segments, query), auth, &[], Some(body)).await?.1)
    }

    /// `POST /v3/clusters/<id>?action=generateKubeconfig` → `.config`
    /// (reference/rancher-current.md §2.10): the downstream cluster's
    /// kubeconfig, which holds a token of its own — a secret.
    pub async fn generate_kubeconfig(&self, auth: &Secret, cluster_id: &str) -> Result<Secret, ApiError> {
        #[derive(Deserialize)]
        struct Generated {
            config: String,
        }
        let body = self
            .post(Some(auth), &["v3", "clusters", cluster_id], &[("action", "generateKubeconfig")], &serde_json::json!({}))
            .await?;
        let g: Generated = serde_json::from_slice(&body)
            .map_err(|e| ApiError::Decode(format!("generateKubeconfig: {e}")))?;
        if g.config.trim().is_empty() {
            return Err(ApiError::Decode("generateKubeconfig: an empty config".into()));
        }
        Ok(Secret::new(g.config))
    }

    /// Every item of a collection, following `pagination.next` while it
    /// stays on this server.
    async fn list<T: for<'de> Deserialize<'de>>(
        &self,
        auth: &Secret,
        segments: &[&str],
        query: &[(&str, &str)],
    ) -> Result<Vec<T>, ApiError> {
        let what = segments.join("/");
        let mut url = self.url(segments, query);
        let mut all = Vec::new();
        for _ in 0..MAX_PAGES {
            let (_, body) = self.send(Method::GET, url.clone(), Some(auth), &[], None).await?;
            let page: Collection<T> = model::decode_collection(&what, &body)?;
            all.extend(page.data);
            let next = page.pagination.and_then(|p| p.next).filter(|n| !n.is_empty());
            match next.and_then(|n| Url::parse(&n).ok()) {
                Some(next) if next.origin() == self.base.origin() && next != url => url = next,
                _ => break,
            }
        }
        Ok(all)
    }

    /// What the agent does on first contact (`POST /v3/connect/register`):
    /// `X-API-Tunnel-Token` is the registration token, `X-API-Tunnel-Params`
    /// the base64 of the node's JSON parameters. Needs a pinned CA, like
    /// every call that carries a credential. Any 2xx is success.
    pub async fn register_node(&self, token: &Secret, params_base64: &str) -> Result<(), ApiError> {
        let params = Secret::new(params_base64);
        let url = self.url(&["v3", "connect", "register"], &[]);
        self.send(Method::POST, url, None, &[("X-API-Tunnel-Token", token), ("X-API-Tunnel-Params", &params)], None)
            .await
            .map(|_| ())
    }
}

fn sensitive(value: &str) -> Result<HeaderValue, ApiError> {
    // The error names neither the header nor its value.
    let mut v = HeaderValue::from_str(value)
        .map_err(|_| ApiError::Decode("a credential holds characters that cannot go in an HTTP header".into()))?;
    v.set_sensitive(true);
    Ok(v)
}

#[async_trait]
impl RancherApi for HttpRancher {
    async fn ping(&self) -> Result<(), ApiError> {
        let body = self.get(None, &["ping"], &[]).await?;
        if model::is_pong(&body) {
            Ok(())
        } else {
            // Something answers, but not Rancher's health handler (yet).
            Err(ApiError::Unavailable("GET /ping: the answer is not pong".into()))
        }
    }

    async fn cacerts(&self) -> Result<String, ApiError> {
        model::decode_cacerts(&self.get(None, &["v3", "settings", "cacerts"], &[]).await?)
    }

    async fn login(&self, username: &str, password: &Secret) -> Result<Secret, ApiError> {
        if !self.pinned {
            return Err(ApiError::Tls(REFUSE_UNPINNED.into()));
        }
        let body = model::login_body(username, password);
        let answer = self.post(None, &["v3-public", "localProviders", "local"], &[("action", "login")], &body).await?;
        model::decode_login(&answer)
    }

    async fn change_password(&self, auth: &Secret, current: &Secret, new: &Secret) -> Result<(), ApiError> {
        let body = model::change_password_body(current, new);
        // 200 with an empty body: nothing to parse.
        self.post(Some(auth), &["v3", "users"], &[("action", "changepassword")], &body).await.map(|_| ())
    }

    async fn create_token(&self, auth: &Secret, description: &str) -> Result<(String, Secret), ApiError> {
        let answer = self.post(Some(auth), &["v3", "token"], &[], &model::create_token_body(description)).await?;
        model::decode_created_token(&answer)
    }

    async fn list_tokens(&self, auth: &Secret) -> Result<Vec<ApiToken>, ApiError> {
        let tokens: Vec<model::TokenDtoPublic> = self.list(auth, &["v3", "tokens"], &[]).await?;
        Ok(tokens.into_iter().filter_map(model::api_token).collect())
    }

    /// Idempotent: a token that is already gone (404) counts as deleted.
    async fn delete_token(&self, auth: &Secret, id: &str) -> Result<(), ApiError> {
        match self.send(Method::DELETE, self.url(&["v3", "tokens", id], &[]), Some(auth), &[], None).await {
            Ok(_) => Ok(()),
            Err(e) if e.status() == Some(404) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn set_setting(&self, auth: &Secret, name: &str, value: &str) -> Result<(), ApiError> {
        let body = model::setting_body(name, value);
        let url = self.url(&["v3", "settings", name], &[]);
        self.send(Method::PUT, url, Some(auth), &[], Some(&body)).await.map(|_| ())
    }

    async fn create_cluster(&self, auth: &Secret, name: &str) -> Result<ClusterInfo, ApiError> {
        let answer = self.post(Some(auth), &["v3", "cluster"], &[], &model::create_cluster_body(name)).await?;
        model::decode_cluster(&answer)
    }

    async fn find_cluster(&self, auth: &Secret, name: &str) -> Result<Option<ClusterInfo>, ApiError> {
        let clusters: Vec<model::ClusterDto> = self.list(auth, &["v3", "clusters"], &[("name", name)]).await?;
        model::pick_cluster(clusters, name)
    }

    async fn get_cluster(&self, auth: &Secret, id: &str) -> Result<ClusterInfo, ApiError> {
        model::decode_cluster(&self.get(Some(auth), &["v3", "clusters", id], &[]).await?)
    }

    async fn list_registration_tokens(
        &self,
        auth: &Secret,
        cluster_id: &str,
    ) -> Result<Vec<RegistrationToken>, ApiError> {
        let tokens: Vec<model::RegistrationTokenDto> =
            self.list(auth, &["v3", "clusterregistrationtokens"], &[("clusterId", cluster_id)]).await?;
        // The server filters; check again (an ignored filter returns all).
        tokens
            .into_iter()
            .filter(|t| t.cluster_id().is_none_or(|c| c == cluster_id))
            .map(model::RegistrationTokenDto::into_token)
            .filter(|t| t.as_ref().map_or(true, |t| t.cluster_id == cluster_id))
            .collect()
    }

    async fn create_registration_token(&self, auth: &Secret, cluster_id: &str) -> Result<RegistrationToken, ApiError> {
        let body = model::create_registration_token_body(cluster_id);
        model::decode_registration_token(&self.post(Some(auth), &["v3", "clusterregistrationtoken"], &[], &body).await?)
    }

    async fn get_registration_token(&self, auth: &Secret, id: &str) -> Result<RegistrationToken, ApiError> {
        model::decode_registration_token(&self.get(Some(auth), &["v3", "clusterregistrationtokens", id], &[]).await?)
    }

    async fn list_nodes(&self, auth: &Secret, cluster_id: &str) -> Result<Vec<NodeInfo>, ApiError> {
        let nodes: Vec<model::NodeDto> = self.list(auth, &["v3", "nodes"], &[("clusterId", cluster_id)]).await?;
        nodes
            .into_iter()
            .filter(|n| n.cluster_id().is_none_or(|c| c == cluster_id))
            .map(model::NodeDto::into_info)
            .collect()
    }

    // The v1 calls: reference/rancher-current.md §2 (paths, bodies, codes).

    async fn rancher_version(&self) -> Result<String, ApiError> {
        model::decode_rancher_version(&self.get(None, &["rancherversion"], &[]).await?)
    }

    /// §2.2: `/v1-public/login` (2.13+, 201), the v3 login on 404 (2.12 and
    /// older have no such route), as terraform's `DoUserLogin` does.
    async fn login_public(&self, username: &str, password: &Secret) -> Result<Secret, ApiError> {
        if !self.pinned {
            return Err(ApiError::Tls(REFUSE_UNPINNED.into()));
        }
        let body = model::login_public_body(username, password);
        match self.post(None, &["v1-public", "login"], &[], &body).await {
            Ok(answer) => model::decode_login(&answer),
            Err(e) if e.status() == Some(404) => self.login(username, password).await,
            Err(e) => Err(e),
        }
    }

    async fn v1_reads(&self, auth: &Secret) -> Result<(), ApiError> {
        self.get(Some(auth), &["v1", "management.cattle.io.users"], &[]).await?;
        self.get(Some(auth), &["v1", "provisioning.cattle.io.clusters"], &[]).await?;
        Ok(())
    }

    async fn get_setting(&self, auth: &Secret, name: &str) -> Result<String, ApiError> {
        model::decode_setting_value(&self.get(Some(auth), &["v3", "settings", name], &[]).await?)
    }

    async fn offered_versions(&self, auth: &Secret, distro: &str) -> Result<Vec<String>, ApiError> {
        let route = format!("v1-{distro}-release");
        model::decode_releases(&self.get(Some(auth), &[route.as_str(), "releases"], &[]).await?)
    }

    async fn create_v1_cluster(&self, auth: &Secret, name: &str, kubernetes_version: &str, run: &str) -> Result<SteveObject, ApiError> {
        let body = model::create_v1_cluster_body(name, kubernetes_version, run);
        let answer = self.post(Some(auth), &["v1", "provisioning.cattle.io.clusters"], &[], &body).await?;
        model::decode_steve("v1 cluster", &answer)
    }

    async fn get_v1_cluster(&self, auth: &Secret, name: &str) -> Result<Option<SteveObject>, ApiError> {
        match self.get(Some(auth), &["v1", "provisioning.cattle.io.clusters", model::FLEET_DEFAULT, name], &[]).await {
            Ok(body) => model::decode_steve("v1 cluster", &body).map(Some),
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn delete_v1_cluster(&self, auth: &Secret, name: &str) -> Result<(), ApiError> {
        let url = self.url(&["v1", "provisioning.cattle.io.clusters", model::FLEET_DEFAULT, name], &[]);
        match self.send(Method::DELETE, url, Some(auth), &[], None).await {
            Ok(_) => Ok(()),
            Err(e) if e.status() == Some(404) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn public_setting(&self, name: &str) -> Result<String, ApiError> {
        model::decode_setting_value(&self.get(None, &["v3", "settings", name], &[]).await?)
    }

    async fn get_management_cluster(&self, auth: &Secret, id: &str) -> Result<SteveObject, ApiError> {
        model::decode_steve("management cluster", &self.get(Some(auth), &["v1", "management.cattle.io.clusters", id], &[]).await?)
    }

    async fn delete_machine(&self, auth: &Secret, name: &str) -> Result<(), ApiError> {
        let url = self.url(&["v1", "cluster.x-k8s.io.machines", model::FLEET_DEFAULT, name], &[]);
        match self.send(Method::DELETE, url, Some(auth), &[], None).await {
            Ok(_) => Ok(()),
            Err(e) if e.status() == Some(404) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn delete_node(&self, auth: &Secret, id: &str) -> Result<(), ApiError> {
        match self.send(Method::DELETE, self.url(&["v3", "nodes", id], &[]), Some(auth), &[], None).await {
            Ok(_) => Ok(()),
            Err(e) if e.status() == Some(404) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn list_machines(&self, auth: &Secret, cluster: &str) -> Result<Vec<SteveObject>, ApiError> {
        let all: Vec<model::SteveDto> =
            self.list(auth, &["v1", "cluster.x-k8s.io.machines", model::FLEET_DEFAULT], &[]).await?;
        let mut out = Vec::new();
        for m in all {
            let m = m.into_object()?;
            if m.labels.get(model::CLUSTER_NAME_LABEL).map(String::as_str) == Some(cluster) {
                out.push(m);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unverified() -> HttpRancher {
        HttpRancher::new("https://127.0.0.1:1", CaTrust::Unverified).unwrap()
    }

    #[test]
    fn urls_keep_only_the_origin_and_encode_segments() {
        let r = HttpRancher::new("https://10.0.0.5:8443/some/path?x=1", CaTrust::Unverified).unwrap();
        assert_eq!(r.base_url().as_str(), "https://10.0.0.5:8443/");
        assert_eq!(
            r.url(&["v3", "clusterregistrationtokens", "c-abcde:crt-xyz12"], &[]).as_str(),
            "https://10.0.0.5:8443/v3/clusterregistrationtokens/c-abcde:crt-xyz12"
        );
        assert_eq!(r.url(&["v3", "tokens", "a/b"], &[]).path(), "/v3/tokens/a%2Fb");
        assert_eq!(r.url(&["v3", "clusters"], &[("name", "a b&c")]).query(), Some("name=a+b%26c"));
    }

    #[test]
    fn only_https_urls_are_accepted() {
        for bad in ["http://10.0.0.5", "10.0.0.5", "ftp://x", ""] {
            assert!(matches!(HttpRancher::new(bad, CaTrust::Unverified), Err(ApiError::Tls(_))), "{bad}");
        }
    }

    /// Port 1 on loopback refuses connections: had anything been sent, the
    /// error would be `Unavailable`, not `Tls`.
    #[tokio::test]
    async fn unverified_clients_refuse_every_credentialed_call_before_sending() {
        let r = unverified();
        let s = Secret::new("token-abcde:secret");
        let refused = |e: ApiError| assert_eq!(e, ApiError::Tls(REFUSE_UNPINNED.into()));
        refused(r.login("admin", &s).await.unwrap_err());
        refused(r.change_password(&s, &s, &s).await.unwrap_err());
        refused(r.create_token(&s, "d").await.unwrap_err());
        refused(r.list_tokens(&s).await.unwrap_err());
        refused(r.delete_token(&s, "token-1").await.unwrap_err());
        refused(r.set_setting(&s, "server-url", "https://x").await.unwrap_err());
        refused(r.create_cluster(&s, "c").await.unwrap_err());
        refused(r.find_cluster(&s, "c").await.unwrap_err());
        refused(r.get_cluster(&s, "c-1").await.unwrap_err());
        refused(r.list_registration_tokens(&s, "c-1").await.unwrap_err());
        refused(r.create_registration_token(&s, "c-1").await.unwrap_err());
        refused(r.get_registration_token(&s, "c-1:crt-1").await.unwrap_err());
        refused(r.list_nodes(&s, "c-1").await.unwrap_err());
        refused(r.register_node(&s, "e30=").await.unwrap_err());
    }

    #[tokio::test]
    async fn unverified_clients_may_ping_and_a_refused_connection_is_unavailable() {
        let e = unverified().ping().await.unwrap_err();
        assert!(matches!(&e, ApiError::Unavailable(m) if m.starts_with("GET /ping: ")), "{e:?}");
        assert!(e.is_retryable());
    }
}
