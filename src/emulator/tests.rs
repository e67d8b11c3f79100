//! The whole flow against an in-process emulator over real HTTPS, then a
//! restart from the same data dir.

use std::time::Duration;

use base64::Engine;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

use super::{start, ServeOptions};

const BOOTSTRAP: &str = "bootstrap-pw";
const NEW_PASSWORD: &str = "a-much-longer-password";
const READY_MS: u64 = 300;

fn client(ca_pem: &str) -> Client {
    Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .tls_built_in_root_certs(false)
        .build()
        .unwrap()
}

fn opts(dir: &std::path::Path, bootstrap: &str) -> ServeOptions {
    ServeOptions {
        data_dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        bootstrap_password: Some(bootstrap.to_string()),
        node_ready: Duration::from_millis(READY_MS),
        tls_sans: vec![],
        rancher_version: super::Line::RKE1_LAST,
        knobs: super::Knobs::defaults(super::Line::RKE1_LAST),
    }
}

async fn send(req: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    (
        status,
        if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        },
    )
}

fn register_params(host: &str, ip: &str, etcd: bool, cp: bool, worker: bool) -> String {
    let roles: Vec<&str> = [(etcd, "etcd"), (cp, "controlplane"), (worker, "worker")]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, r)| *r)
        .collect();
    let params = json!({
        "customConfig": {"address": ip, "internalAddress": ip, "roles": roles},
        "etcd": etcd, "controlPlane": cp, "worker": worker, "requestedHostname": host,
    });
    base64::engine::general_purpose::STANDARD.encode(params.to_string())
}

/// The value after `flag` in a command line.
fn flag<'a>(cmd: &'a str, flag: &str) -> &'a str {
    let mut words = cmd.split_whitespace();
    words
        .find(|w| *w == flag)
        .and_then(|_| words.next())
        .unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_flow_then_restart_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(opts(dir.path(), BOOTSTRAP)).await.unwrap();
    let url = running.url();
    let ca = running.ca_pem().to_string();
    let c = client(&ca);
    let v3 = |p: &str| format!("{url}/v3{p}");

    // ping
    let resp = c.get(format!("{url}/ping")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/plain");
    assert_eq!(resp.text().await.unwrap(), "pong");

    // the CA, without authentication
    let (s, cacerts) = send(c.get(v3("/settings/cacerts"))).await;
    assert_eq!(s, 200);
    assert_eq!(cacerts["value"], ca.trim_end());
    let file = c
        .get(format!("{url}/cacerts"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(file, format!("{}\n", ca.trim_end()));
    let checksum = rmm_actors::ports::ca_checksum(cacerts["value"].as_str().unwrap());

    // the auth filter
    let (s, body) = send(c.get(v3("/clusters"))).await;
    assert_eq!(s, 401);
    assert_eq!(
        body,
        json!({"type": "error", "status": "401", "message": "Unauthorized 401: must authenticate"})
    );

    // login
    let login = format!("{url}/v3-public/localProviders/local?action=login");
    let (s, body) = send(
        c.post(&login)
            .json(&json!({"username": "admin", "password": "wrong"})),
    )
    .await;
    assert_eq!(s, 401);
    assert_eq!(
        (
            body["code"].as_str(),
            body["message"].as_str(),
            body["status"].as_u64()
        ),
        (
            Some("Unauthorized"),
            Some("authentication failed"),
            Some(401)
        )
    );
    let lower = format!("{url}/v3-public/localproviders/local?action=login");
    let (s, body) = send(
        c.post(&lower)
            .json(&json!({"username": "admin", "password": BOOTSTRAP})),
    )
    .await;
    assert_eq!(s, 201);
    let session = body["token"].as_str().unwrap().to_string();
    let (name, secret) = session.split_once(':').unwrap();
    assert!(name.starts_with("token-") && secret.len() == 54);
    assert_eq!(body["id"], name);

    // change the password
    let chpw = v3("/users?action=changepassword");
    let (s, body) = send(
        c.post(&chpw)
            .bearer_auth(&session)
            .json(&json!({"currentPassword": BOOTSTRAP, "newPassword": "short"})),
    )
    .await;
    assert_eq!(s, 422);
    assert_eq!(body["code"], "InvalidBodyContent");
    assert_eq!(body["message"], "Password must be at least 12 characters");
    let resp = c
        .post(&chpw)
        .bearer_auth(&session)
        .json(&json!({"currentPassword": BOOTSTRAP, "newPassword": NEW_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "");
    let (_, first_login) = send(c.get(v3("/settings/first-login"))).await;
    assert_eq!(first_login["value"], "false");

    // an API token; the login token stays valid
    let (s, body) = send(
        c.post(v3("/token"))
            .bearer_auth(&session)
            .json(&json!({"type": "token", "description": "rmm test run"})),
    )
    .await;
    assert_eq!(s, 201);
    assert_eq!(body["isDerived"], true);
    assert_eq!(body["description"], "rmm test run");
    let api = body["token"].as_str().unwrap().to_string();
    let api_id = body["id"].as_str().unwrap().to_string();
    let (s, list) = send(c.get(v3("/tokens")).bearer_auth(&api)).await;
    assert_eq!(s, 200);
    assert_eq!(list["type"], "collection");
    assert_eq!(list["pagination"]["total"], 2);
    assert!(
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t.get("token").is_none()),
        "token is writeOnly"
    );
    assert!(list["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["description"] == "rmm test run"));
    // Basic auth works too
    let basic = base64::engine::general_purpose::STANDARD.encode(&api);
    let (s, _) = send(
        c.get(v3("/tokens"))
            .header("authorization", format!("Basic {basic}")),
    )
    .await;
    assert_eq!(s, 200);
    // a throwaway token can be deleted
    let (_, tmp) = send(
        c.post(v3("/tokens"))
            .bearer_auth(&api)
            .json(&json!({"description": "tmp"})),
    )
    .await;
    let resp = c
        .delete(v3(&format!("/tokens/{}", tmp["id"].as_str().unwrap())))
        .bearer_auth(&api)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let (s, _) = send(
        c.get(v3("/tokens"))
            .bearer_auth(tmp["token"].as_str().unwrap()),
    )
    .await;
    assert_eq!(s, 401);

    // the cluster (before server-url: its tokens stay without commands)
    let cluster_body = json!({"type": "cluster", "name": "tinysetup",
        "rancherKubernetesEngineConfig": {"kubernetesVersion": "", "network": {"plugin": "canal"}}});
    let resp = c
        .post(v3("/cluster"))
        .bearer_auth(&api)
        .json(&cluster_body)
        .send()
        .await
        .unwrap();
    assert!(resp.headers()["x-api-schemas"]
        .to_str()
        .unwrap()
        .ends_with("/v3/schemas"));
    let (s, cluster) = (resp.status(), resp.json::<Value>().await.unwrap());
    assert_eq!(s, 201);
    let cid = cluster["id"].as_str().unwrap().to_string();
    assert!(cid.starts_with("c-") && cid.len() == 7);
    assert_eq!(cluster["state"], "provisioning");
    assert_eq!(
        cluster["transitioningMessage"],
        "waiting for etcd, controlplane and worker nodes to be registered"
    );
    let (s, dup) = send(
        c.post(v3("/clusters"))
            .bearer_auth(&api)
            .json(&json!({"name": "TinySetup"})),
    )
    .await;
    assert_eq!(s, 422);
    assert_eq!(
        (dup["code"].as_str(), dup["fieldName"].as_str()),
        (Some("NotUnique"), Some("Cluster name"))
    );
    let (_, found) = send(c.get(v3("/clusters?name=tinysetup")).bearer_auth(&api)).await;
    assert_eq!(found["pagination"]["total"], 1);
    assert_eq!(found["data"][0]["id"], cid.as_str());
    let (_, none) = send(c.get(v3("/clusters?name=other")).bearer_auth(&api)).await;
    assert_eq!(none["pagination"]["total"], 0);

    // registration token: empty nodeCommand until server-url is set
    let (s, crt) = send(
        c.post(v3("/clusterregistrationtoken"))
            .bearer_auth(&api)
            .json(&json!({"type": "clusterRegistrationToken", "clusterId": cid})),
    )
    .await;
    assert_eq!(s, 201);
    let crt_id = crt["id"].as_str().unwrap().to_string();
    assert!(crt_id.starts_with(&format!("{cid}:crt-")));
    assert_eq!(crt["nodeCommand"], "");
    let (_, got) = send(
        c.get(v3(&format!("/clusterregistrationtokens/{crt_id}")))
            .bearer_auth(&api),
    )
    .await;
    assert_eq!(got["nodeCommand"], "");

    // server-url
    let (s, setting) = send(
        c.put(v3("/settings/server-url"))
            .bearer_auth(&api)
            .json(&json!({"name": "server-url", "value": url})),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        (setting["value"].as_str(), setting["source"].as_str()),
        (Some(url.as_str()), Some("db"))
    );
    let (s, body) = send(
        c.put(v3("/settings/cacerts"))
            .bearer_auth(&api)
            .json(&json!({"value": "x"})),
    )
    .await;
    assert_eq!(
        (s.as_u16(), body["code"].as_str()),
        (405, Some("MethodNotAllow"))
    );
    let (s, _) = send(c.get(v3("/settings/no-such-setting")).bearer_auth(&api)).await;
    assert_eq!(s, 404);

    // now the controller has filled the commands in
    let (_, list) = send(
        c.get(v3(&format!("/clusterRegistrationTokens?clusterId={cid}")))
            .bearer_auth(&api),
    )
    .await;
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&crt_id.as_str()) && ids.contains(&format!("{cid}:default-token").as_str())
    );
    let (_, got) = send(
        c.get(v3(&format!("/clusterregistrationtokens/{crt_id}")))
            .bearer_auth(&api),
    )
    .await;
    let node_command = got["nodeCommand"].as_str().unwrap().to_string();
    let token = got["token"].as_str().unwrap();
    assert_eq!(
        node_command,
        format!(
            "sudo docker run -d --privileged --restart=unless-stopped --net=host -v /etc/kubernetes:/etc/kubernetes \
             -v /var/run:/var/run  rancher/rancher-agent:v2.11.3 --server {url} --token {token} --ca-checksum {checksum}"
        )
    );
    // a token made after server-url still has nothing in its POST response
    let (_, crt2) = send(
        c.post(v3("/clusterregistrationtokens"))
            .bearer_auth(&api)
            .json(&json!({"clusterId": cid})),
    )
    .await;
    assert_eq!(crt2["nodeCommand"], "");

    // the agents register
    let register = format!("{url}/v3/connect/register");
    let resp = c
        .post(&register)
        .header("X-API-Tunnel-Token", "nope")
        .header(
            "X-API-Tunnel-Params",
            register_params("master01", "10.0.0.11", true, true, false),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.json::<Value>().await.unwrap()["status"], "401");
    let agent_token = flag(&node_command, "--token");
    for (host, ip, e, cp, w) in [
        ("master01", "10.0.0.11", true, true, false),
        ("worker01", "10.0.0.21", false, false, true),
    ] {
        let resp = c
            .post(&register)
            .header("X-API-Tunnel-Token", agent_token)
            .header("X-API-Tunnel-Params", register_params(host, ip, e, cp, w))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let (_, nodes) = send(
        c.get(v3(&format!("/nodes?clusterId={cid}")))
            .bearer_auth(&api),
    )
    .await;
    assert_eq!(nodes["pagination"]["total"], 0, "agents are not up yet");
    let (_, cl) = send(c.get(v3(&format!("/clusters/{cid}"))).bearer_auth(&api)).await;
    assert_eq!(cl["state"], "provisioning");

    tokio::time::sleep(Duration::from_millis(READY_MS + 100)).await;
    // registering again updates, never duplicates
    let resp = c
        .post(&register)
        .header("X-API-Tunnel-Token", agent_token)
        .header(
            "X-API-Tunnel-Params",
            register_params("master01", "10.0.0.11", true, true, false),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (_, cl) = send(c.get(v3(&format!("/clusters/{cid}"))).bearer_auth(&api)).await;
    assert_eq!(
        (cl["state"].as_str(), cl["transitioning"].as_str()),
        (Some("active"), Some("no"))
    );
    let (_, nodes) = send(
        c.get(v3(&format!("/nodes?clusterId={cid}")))
            .bearer_auth(&api),
    )
    .await;
    assert_eq!(nodes["pagination"]["total"], 2);
    let data = nodes["data"].as_array().unwrap();
    assert!(data
        .iter()
        .all(|n| n["state"] == "active" && n["clusterId"] == cid.as_str()));
    let master = data
        .iter()
        .find(|n| n["requestedHostname"] == "master01")
        .unwrap();
    assert_eq!(
        (
            master["etcd"].as_bool(),
            master["controlPlane"].as_bool(),
            master["worker"].as_bool()
        ),
        (Some(true), Some(true), Some(false))
    );
    assert_eq!(master["ipAddress"], "10.0.0.11");
    assert_eq!(
        master["id"],
        format!("{cid}:{}", super::model::node_name("master01"))
    );

    // unknown routes
    let (s, body) = send(c.get(v3("/widgets")).bearer_auth(&api)).await;
    assert_eq!((s.as_u16(), body["code"].as_str()), (404, Some("NotFound")));
    let (s, _) = send(c.get(format!("{url}/nothing/here"))).await;
    assert_eq!(s, 404);

    running.shutdown().await.unwrap();

    // restart from disk: the bootstrap password no longer applies
    let running = start(opts(dir.path(), "another-bootstrap")).await.unwrap();
    assert_eq!(running.ca_pem(), ca, "the CA is reused");
    let url = running.url();
    let v3 = |p: &str| format!("{url}/v3{p}");
    let (s, _) = send(
        c.post(format!("{url}/v3-public/localProviders/local?action=login"))
            .json(&json!({"username": "admin", "password": "another-bootstrap"})),
    )
    .await;
    assert_eq!(s, 401);
    let (s, _) = send(
        c.post(format!("{url}/v3-public/localProviders/local?action=login"))
            .json(&json!({"username": "admin", "password": NEW_PASSWORD})),
    )
    .await;
    assert_eq!(s, 201);
    let (s, cl) = send(c.get(v3(&format!("/clusters/{cid}"))).bearer_auth(&api)).await;
    assert_eq!(s, 200, "the API token survives");
    assert_eq!(cl["state"], "active");
    let (_, nodes) = send(
        c.get(v3(&format!("/nodes?clusterId={cid}")))
            .bearer_auth(&api),
    )
    .await;
    assert_eq!(nodes["pagination"]["total"], 2);
    let (_, tokens) = send(c.get(v3("/tokens")).bearer_auth(&api)).await;
    assert!(tokens["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["id"] == api_id.as_str()));
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_bootstrap_password_and_form_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path(), "");
    o.bootstrap_password = None;
    let emulator = super::Emulator::open(o).unwrap();
    let pw = emulator.generated_password.clone().unwrap();
    assert_eq!(pw.len(), 54);
    let running = emulator.serve().unwrap();
    let c = client(running.ca_pem());
    let url = running.url();
    let (s, body) = send(
        c.post(format!("{url}/v3-public/localProviders/local?action=login"))
            .json(&json!({"username": "admin", "password": pw})),
    )
    .await;
    assert_eq!(s, 201);
    let tok = body["token"].as_str().unwrap().to_string();
    // curl's default form encoding hides the JSON fields from norman
    let (s, body) = send(
        c.post(format!("{url}/v3/clusters"))
            .bearer_auth(&tok)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(r#"{"name":"x"}"#),
    )
    .await;
    assert_eq!(
        (s.as_u16(), body["code"].as_str()),
        (422, Some("MissingRequired"))
    );
    running.shutdown().await.unwrap();
}
