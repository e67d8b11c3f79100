//! How norman writes resources, collections and errors (§1.4–§1.6).

use serde_json::{json, Map, Value};

use super::model::{
    ApiError, Cluster, Model, Node, RegistrationToken, Token, User, AGENT_IMAGE, NODE_WAITING,
    WAITING_FOR_NODES,
};

/// RFC 3339 UTC, second precision, from epoch milliseconds (norman's
/// date format).
pub fn rfc3339(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// What rendering needs besides the model: the URL base and the clock.
pub struct Ctx<'a> {
    pub model: &'a Model,
    /// `https://<Host>`
    pub base: String,
    pub now: u64,
}

impl Ctx<'_> {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The fields every resource has.
    fn resource(
        &self,
        ty: &str,
        plural: &str,
        id: &str,
        created_ms: u64,
        uuid: &str,
        editable: bool,
    ) -> Map<String, Value> {
        let this = self.url(&format!("/v3/{plural}/{id}"));
        let mut links = Map::new();
        links.insert("self".into(), json!(this));
        if editable {
            links.insert("update".into(), json!(this));
            links.insert("remove".into(), json!(this));
        }
        let mut m = Map::new();
        m.insert("id".into(), json!(id));
        m.insert("type".into(), json!(ty));
        m.insert("baseType".into(), json!(ty));
        m.insert("links".into(), Value::Object(links));
        m.insert("actions".into(), json!({}));
        m.insert("created".into(), json!(rfc3339(created_ms)));
        m.insert("createdTS".into(), json!(created_ms));
        m.insert("uuid".into(), json!(uuid));
        m.insert("labels".into(), json!({}));
        m.insert("annotations".into(), json!({}));
        m
    }

    fn action(&self, plural: &str, id: &str, name: &str) -> String {
        self.url(&format!("/v3/{plural}/{id}?action={name}"))
    }

    pub fn cluster(&self, c: &Cluster) -> Value {
        let mut m = self.resource("cluster", "clusters", &c.id, c.created_ms, &c.uuid, true);
        m.insert("dockerRootDir".into(), json!("/var/lib/docker"));
        m.insert("enableNetworkPolicy".into(), json!(false));
        m.insert("description".into(), json!(""));
        for (k, v) in &c.spec {
            m.insert(k.clone(), v.clone());
        }
        m.insert("name".into(), json!(c.name));
        m.insert("creatorId".into(), json!(c.creator_id));
        m.insert("internal".into(), json!(false));
        m.insert("namespaceId".into(), Value::Null);
        let links = m["links"].as_object_mut().expect("links");
        for (rel, path) in [
            ("nodes", format!("/v3/nodes?clusterId={}", c.id)),
            (
                "clusterRegistrationTokens",
                format!("/v3/clusters/{}/clusterregistrationtokens", c.id),
            ),
        ] {
            links.insert(rel.into(), json!(self.url(&path)));
        }
        let k8s = c
            .spec
            .get("rancherKubernetesEngineConfig")
            .and_then(|r| r.get("kubernetesVersion"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let at = |ms: u64| rfc3339(ms);
        match self.model.cluster_active_since(&c.id, self.now) {
            None => {
                m.insert("state".into(), json!("provisioning"));
                m.insert("transitioning".into(), json!("yes"));
                m.insert("transitioningMessage".into(), json!(WAITING_FOR_NODES));
                m.insert("driver".into(), json!(""));
                m.insert(
                    "conditions".into(),
                    json!([
                        {"type": "Pending", "status": "True", "lastUpdateTime": at(c.created_ms)},
                        {"type": "Provisioned", "status": "Unknown", "reason": "Provisioning",
                         "message": WAITING_FOR_NODES, "lastUpdateTime": at(c.created_ms)},
                        {"type": "Waiting", "status": "Unknown", "lastUpdateTime": at(c.created_ms)},
                    ]),
                );
            }
            Some(since) => {
                m.insert("state".into(), json!("active"));
                m.insert("transitioning".into(), json!("no"));
                m.insert("transitioningMessage".into(), json!(""));
                m.insert("driver".into(), json!("rancherKubernetesEngine"));
                let conds: Vec<Value> = ["Pending", "Provisioned", "Waiting", "Ready", "Updated"]
                    .iter()
                    .map(|t| json!({"type": t, "status": "True", "lastUpdateTime": at(since)}))
                    .collect();
                m.insert("conditions".into(), Value::Array(conds));
                let git = k8s.split('-').next().unwrap_or("").to_string();
                let mut parts = git.trim_start_matches('v').split('.');
                let (major, minor) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                m.insert(
                    "version".into(),
                    json!({"gitVersion": git, "major": major, "minor": minor, "platform": "linux/amd64"}),
                );
                m.insert(
                    "apiEndpoint".into(),
                    json!(format!("https://{}:6443", self.control_plane_ip(&c.id))),
                );
                m.insert("agentImage".into(), json!(AGENT_IMAGE));
            }
        }
        // No actions are listed: the emulator implements none of the cluster actions.
        Value::Object(m)
    }

    fn control_plane_ip(&self, cluster_id: &str) -> String {
        self.model
            .listed_nodes(self.now)
            .filter(|n| n.cluster_id == cluster_id && n.control_plane)
            .map(|n| {
                if n.address.is_empty() {
                    n.internal_address.clone()
                } else {
                    n.address.clone()
                }
            })
            .next()
            .unwrap_or_default()
    }

    pub fn node(&self, n: &Node) -> Value {
        let id = n.id();
        let mut m = self.resource("node", "nodes", &id, n.registered_ms, &n.uuid, true);
        let active = self
            .model
            .cluster_active_since(&n.cluster_id, self.now)
            .is_some();
        let internal = if n.internal_address.is_empty() {
            n.address.clone()
        } else {
            n.internal_address.clone()
        };
        m.insert("name".into(), json!(""));
        m.insert("clusterId".into(), json!(n.cluster_id));
        m.insert("namespaceId".into(), Value::Null);
        m.insert("etcd".into(), json!(n.etcd));
        m.insert("controlPlane".into(), json!(n.control_plane));
        m.insert("worker".into(), json!(n.worker));
        m.insert("requestedHostname".into(), json!(n.requested_hostname));
        m.insert("imported".into(), json!(true));
        m.insert("nodeTemplateId".into(), Value::Null);
        m.insert("unschedulable".into(), json!(false));
        m.insert("labels".into(), json!(n.labels));
        m.insert(
            "customConfig".into(),
            json!({"address": n.address, "internalAddress": n.internal_address, "roles": n.roles, "label": n.labels}),
        );
        let since = rfc3339(n.registered_ms.saturating_add(self.model.node_ready_ms));
        if n.deleting_ms.is_some() {
            m.insert("state".into(), json!("removing"));
            m.insert("transitioning".into(), json!("yes"));
            m.insert("transitioningMessage".into(), json!(""));
        } else if active {
            m.insert("state".into(), json!("active"));
            m.insert("transitioning".into(), json!("no"));
            m.insert("transitioningMessage".into(), json!(""));
            m.insert("hostname".into(), json!(n.requested_hostname));
            m.insert("nodeName".into(), json!(n.requested_hostname));
            m.insert("ipAddress".into(), json!(internal));
            m.insert("externalIpAddress".into(), json!(n.address));
            m.insert(
                "conditions".into(),
                json!([
                    {"type": "Initialized", "status": "True", "lastUpdateTime": since},
                    {"type": "Provisioned", "status": "True", "lastUpdateTime": since},
                    {"type": "Registered", "status": "True", "message": "registered with kubernetes", "lastUpdateTime": since},
                    {"type": "Ready", "status": "True", "lastUpdateTime": since},
                ]),
            );
        } else {
            m.insert("state".into(), json!("registering"));
            m.insert("transitioning".into(), json!("yes"));
            m.insert("transitioningMessage".into(), json!(NODE_WAITING));
            m.insert("hostname".into(), json!(""));
            m.insert("nodeName".into(), json!(""));
            m.insert("ipAddress".into(), json!(n.address));
            m.insert("externalIpAddress".into(), json!(""));
            m.insert(
                "conditions".into(),
                json!([
                    {"type": "Initialized", "status": "True", "lastUpdateTime": since},
                    {"type": "Provisioned", "status": "True", "lastUpdateTime": since},
                    {"type": "Registered", "status": "Unknown", "message": NODE_WAITING, "lastUpdateTime": since},
                ]),
            );
        }
        Value::Object(m)
    }

    /// `with_commands` is false for the POST response: the 2.6+ controller
    /// has not run yet.
    pub fn registration_token(&self, rt: &RegistrationToken, with_commands: bool) -> Value {
        let id = rt.id();
        let mut m = self.resource(
            "clusterRegistrationToken",
            "clusterregistrationtokens",
            &id,
            rt.created_ms,
            &rt.uuid,
            true,
        );
        // a rotating default-token (2.13+, RMM_LOCAL_CRT_TTL_MS) shows its current value
        let rt = &self.model.crt_at(rt, self.now);
        let cmds = if with_commands {
            self.model.commands(rt)
        } else {
            Default::default()
        };
        m.insert("name".into(), json!(rt.name));
        m.insert("clusterId".into(), json!(rt.cluster_id));
        m.insert("namespaceId".into(), Value::Null);
        m.insert("token".into(), json!(rt.token));
        m.insert("nodeCommand".into(), json!(cmds.node_command));
        m.insert("insecureNodeCommand".into(), json!(cmds.insecure_node_command));
        m.insert("command".into(), json!(cmds.command));
        m.insert("insecureCommand".into(), json!(cmds.insecure_command));
        m.insert("manifestUrl".into(), json!(cmds.manifest_url));
        m.insert("windowsNodeCommand".into(), json!(""));
        m.insert("insecureWindowsNodeCommand".into(), json!(""));
        m.insert("state".into(), json!("active"));
        m.insert("transitioning".into(), json!("no"));
        m.insert("transitioningMessage".into(), json!(""));
        m["links"].as_object_mut().expect("links").insert(
            "cluster".into(),
            json!(self.url(&format!("/v3/clusters/{}", rt.cluster_id))),
        );
        Value::Object(m)
    }

    pub fn setting(&self, name: &str) -> Option<Value> {
        let (value, default, source) = self.model.setting(name)?;
        let editable = name != "cacerts";
        // settings exist from the install on
        let installed = self.model.state.users.first().map_or(0, |u| u.created_ms);
        let mut m = self.resource("setting", "settings", name, installed, "", editable);
        m.insert("name".into(), json!(name));
        m.insert(
            "customized".into(),
            json!(source == "db" && value != default),
        );
        m.insert("value".into(), json!(value));
        m.insert("default".into(), json!(default));
        m.insert("source".into(), json!(source));
        Some(Value::Object(m))
    }

    pub fn user(&self, u: &User, me: bool) -> Value {
        let mut m = self.resource("user", "users", &u.id, u.created_ms, &u.uuid, true);
        m.insert("name".into(), json!(u.display_name));
        m.insert("username".into(), json!(u.username));
        m.insert("description".into(), json!(""));
        m.insert("enabled".into(), json!(true));
        m.insert("me".into(), json!(me));
        m.insert("mustChangePassword".into(), json!(u.must_change_password));
        m.insert("principalIds".into(), json!([format!("local://{}", u.id)]));
        m.insert("creatorId".into(), Value::Null);
        m.insert("state".into(), json!("active"));
        m.insert("transitioning".into(), json!("no"));
        m.insert("transitioningMessage".into(), json!(""));
        let actions = m["actions"].as_object_mut().expect("actions");
        for a in ["setpassword", "refreshauthprovideraccess"] {
            actions.insert(a.into(), json!(self.action("users", &u.id, a)));
        }
        Value::Object(m)
    }

    /// A token; the secret (`token`, writeOnly) only in create responses.
    pub fn token(&self, t: &Token, with_secret: bool, current: bool) -> Value {
        let mut m = self.resource("token", "tokens", &t.name, t.created_ms, &t.uuid, true);
        m.insert("name".into(), json!(t.name));
        if with_secret {
            m.insert("token".into(), json!(t.bearer()));
        }
        let mut labels = Map::new();
        labels.insert(
            "authn.management.cattle.io/token-userId".into(),
            json!(t.user_id),
        );
        if t.is_derived {
            labels.insert("cattle.io/creator".into(), json!("norman"));
        } else {
            labels.insert("authn.management.cattle.io/kind".into(), json!("session"));
        }
        m.insert("labels".into(), Value::Object(labels));
        m.insert("authProvider".into(), json!("local"));
        m.insert("userId".into(), json!(t.user_id));
        m.insert(
            "userPrincipal".into(),
            json!(format!("local://{}", t.user_id)),
        );
        m.insert("groupPrincipals".into(), Value::Null);
        m.insert("providerInfo".into(), Value::Null);
        m.insert("isDerived".into(), json!(t.is_derived));
        m.insert("current".into(), json!(current));
        m.insert("enabled".into(), json!(true));
        m.insert("expired".into(), json!(t.expired(self.now)));
        m.insert("ttl".into(), json!(t.ttl_ms));
        m.insert(
            "expiresAt".into(),
            json!(t.expires_ms().map(rfc3339).unwrap_or_default()),
        );
        m.insert("lastUpdateTime".into(), json!(""));
        m.insert("description".into(), json!(t.description));
        m.insert("clusterId".into(), json!(t.cluster_id));
        Value::Object(m)
    }
}

/// Shape 1 of §1.6.
pub fn error(e: &ApiError) -> Value {
    let mut m = json!({
        "baseType": "error",
        "type": "error",
        "status": e.status,
        "code": e.code,
        "message": e.message,
    });
    if let Some(f) = &e.field_name {
        m["fieldName"] = json!(f);
    }
    m
}

/// Shape 2 of §1.6: the authentication filter's 401 (status is a string).
pub fn filter_401() -> Value {
    json!({"type": "error", "status": "401", "message": "Unauthorized 401: must authenticate"})
}

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_614_592_800_000), "2021-03-01T10:00:00Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
    }
}
