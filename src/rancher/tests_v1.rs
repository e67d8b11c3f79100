//! The v1 calls against an HTTPS server on loopback that answers with the
//! wire shapes of reference/rancher-current.md §2 (paths, bodies, codes):
//! what rmm sends, and what it reads back.

use std::sync::{Arc, Mutex};

use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use rmm_actors::ports::{CaTrust, RancherConnector, Secret};
use serde_json::{json, Value};

use super::testing::serve;
use super::HttpConnector;

type Seen = Arc<Mutex<Vec<(String, String)>>>;

fn bearer_ok(h: &HeaderMap) -> bool {
    h.get("authorization").and_then(|v| v.to_str().ok()) == Some("Bearer token-abcde:s3cr3t")
}

fn unauthorized() -> (StatusCode, Json<Value>) {
    (StatusCode::UNAUTHORIZED, Json(json!({"type":"error","status":"401","message":"Unauthorized 401: must authenticate"})))
}

/// A provisioning cluster as Steve serves it (§2.0, §2.4, §2.9).
fn v1_cluster() -> Value {
    json!({
        "id": "fleet-default/tinysetup",
        "type": "provisioning.cattle.io.cluster",
        "apiVersion": "provisioning.cattle.io/v1",
        "kind": "Cluster",
        "metadata": {
            "name": "tinysetup", "namespace": "fleet-default", "generation": 2,
            "state": {"name": "active", "message": "", "error": false, "transitioning": false}
        },
        "spec": {"kubernetesVersion": "v1.35.1+rke2r1", "rkeConfig": {}},
        "status": {
            "clusterName": "c-m-abcd1234", "ready": true, "observedGeneration": 2,
            "clientSecretName": "tinysetup-kubeconfig",
            "conditions": [{"type": "Ready", "status": "True"}, {"type": "Provisioned", "status": "True", "message": ""}]
        }
    })
}

fn router(seen: Seen, with_v1_login: bool) -> Router {
    let (s1, s2, s3) = (seen.clone(), seen.clone(), seen);
    let created = Arc::new(Mutex::new(false));
    let mut r = Router::new()
        .route("/ping", get(|| async { "pong" }))
        .route("/rancherversion", get(|| async { Json(json!({"Version":"v2.15.1","GitCommit":"9994cd9","RancherPrime":"false"})) }))
        .route(
            "/v3-public/localProviders/local",
            post(move |b: String| async move {
                s1.lock().unwrap().push(("v3 login".into(), b));
                (StatusCode::CREATED, Json(json!({"type":"token","id":"token-abcde","token":"token-abcde:s3cr3t"})))
            }),
        )
        .route("/v1/management.cattle.io.users", get(|h: HeaderMap| async move {
            if bearer_ok(&h) { (StatusCode::OK, Json(json!({"type":"collection","data":[]}))) } else { unauthorized() }
        }))
        .route(
            "/v1/provisioning.cattle.io.clusters",
            get(|h: HeaderMap| async move {
                if bearer_ok(&h) { (StatusCode::OK, Json(json!({"type":"collection","data":[]}))) } else { unauthorized() }
            })
            .post(move |h: HeaderMap, b: String| async move {
                if !bearer_ok(&h) {
                    return unauthorized();
                }
                s2.lock().unwrap().push(("create cluster".into(), b));
                let mut made = created.lock().unwrap();
                if *made {
                    return (StatusCode::CONFLICT, Json(json!({"type":"error","status":409,"code":"AlreadyExists","message":"clusters.provisioning.cattle.io \"tinysetup\" already exists"})));
                }
                *made = true;
                (StatusCode::CREATED, Json(json!({"id":"fleet-default/tinysetup","metadata":{"name":"tinysetup","namespace":"fleet-default","generation":1},"status":null})))
            }),
        )
        .route("/v1/provisioning.cattle.io.clusters/fleet-default/{name}", get(|Path(name): Path<String>| async move {
            if name == "tinysetup" { (StatusCode::OK, Json(v1_cluster())) } else {
                (StatusCode::NOT_FOUND, Json(json!({"type":"error","status":404,"code":"NotFound","message":"not found"})))
            }
        }))
        .route("/v1/management.cattle.io.clusters/{id}", get(|Path(id): Path<String>| async move {
            Json(json!({"id": id, "metadata": {"name": id, "state": {"name":"active"}}, "status": {"conditions": [{"type":"Ready","status":"True"}]}}))
        }))
        .route("/v1/cluster.x-k8s.io.machines/fleet-default", get(|| async {
            Json(json!({"type":"collection","data":[
                {"id":"fleet-default/custom-0123456789ab","metadata":{"name":"custom-0123456789ab",
                  "labels":{"cluster.x-k8s.io/cluster-name":"tinysetup","rke.cattle.io/etcd-role":"true","rke.cattle.io/control-plane-role":"true"},
                  "state":{"name":"running","message":"","error":false,"transitioning":false}},
                 "status":{"phase":"Running","nodeRef":{"kind":"Node","name":"master01"}}},
                {"id":"fleet-default/custom-ba9876543210","metadata":{"name":"custom-ba9876543210",
                  "labels":{"cluster.x-k8s.io/cluster-name":"other"}},"status":{"phase":"Pending"}}
            ]}))
        }))
        .route("/v3/settings/{name}", get(|Path(name): Path<String>| async move {
            Json(json!({"type":"setting","id": name, "value": if name == "rke2-default-version" { "v1.35.1+rke2r1" } else { "" }}))
        }))
        .route("/v1-rke2-release/releases", get(|| async {
            Json(json!({"type":"collection","data":[
                {"id":"v1.34.4+rke2r1","version":"v1.34.4+rke2r1"},{"id":"v1.35.1+rke2r1","version":"v1.35.1+rke2r1"}]}))
        }))
        .route("/v3/clusterregistrationtokens/{id}", get(|Path(id): Path<String>| async move {
            Json(json!({"type":"clusterRegistrationToken","id": id, "clusterId":"c-m-abcd1234",
                "nodeCommand":"curl -fL https://10.0.0.2/system-agent-install.sh | sudo  sh -s - --server https://10.0.0.2 --label 'cattle.io/os=linux' --token tok --ca-checksum aa",
                "insecureNodeCommand":"curl --insecure -fL https://10.0.0.2/system-agent-install.sh | sudo  sh -s - --server https://10.0.0.2 --label 'cattle.io/os=linux' --token tok --ca-checksum aa"}))
        }));
    if with_v1_login {
        r = r.route(
            "/v1-public/login",
            post(move |b: String| async move {
                s3.lock().unwrap().push(("v1 login".into(), b));
                (StatusCode::CREATED, Json(json!({"token":"token-abcde:s3cr3t","expiresAt":"","id":"token-abcde","baseType":"token","type":"token"})))
            }),
        );
    }
    r
}

#[tokio::test]
async fn the_v1_flow_speaks_the_reference_wire_shapes() {
    let seen: Seen = Arc::default();
    let (url, ca) = serve(router(seen.clone(), true)).await;
    let api = HttpConnector::new().connect(&url, CaTrust::Pinned(ca)).unwrap();

    assert_eq!(api.rancher_version().await.unwrap(), "v2.15.1");
    let token = api.login_public("admin", &Secret::new("bootstrap-pw")).await.unwrap();
    assert_eq!(token.expose(), "token-abcde:s3cr3t");
    api.v1_reads(&token).await.unwrap();
    assert_eq!(api.get_setting(&token, "rke2-default-version").await.unwrap(), "v1.35.1+rke2r1");
    assert_eq!(api.offered_versions(&token, "rke2").await.unwrap(), vec!["v1.34.4+rke2r1", "v1.35.1+rke2r1"]);

    let made = api.create_v1_cluster(&token, "tinysetup", "v1.35.1+rke2r1", "run-1").await.unwrap();
    assert_eq!((made.name.as_str(), made.cluster_name.as_deref()), ("tinysetup", None), "status null reads as empty");
    let e = api.create_v1_cluster(&token, "tinysetup", "v1.35.1+rke2r1", "run-1").await.unwrap_err();
    assert_eq!((e.status(), e.code()), (Some(409), Some("AlreadyExists")));

    let c = api.get_v1_cluster(&token, "tinysetup").await.unwrap().unwrap();
    assert_eq!(c.cluster_name.as_deref(), Some("c-m-abcd1234"));
    assert!(c.ready && c.generation == 2 && c.observed_generation == 2 && c.is_true("Ready") && c.is_true("Provisioned"));
    assert_eq!(c.state.name, "active");
    assert_eq!(api.get_v1_cluster(&token, "nope").await.unwrap(), None);
    assert!(api.get_management_cluster(&token, "c-m-abcd1234").await.unwrap().is_true("Ready"));

    let machines = api.list_machines(&token, "tinysetup").await.unwrap();
    assert_eq!(machines.len(), 1, "only this cluster's machines: {machines:?}");
    assert_eq!((machines[0].phase.as_deref(), machines[0].node_ref.as_deref()), (Some("Running"), Some("master01")));

    let crt = api.get_registration_token(&token, "c-m-abcd1234:default-token").await.unwrap();
    assert!(crt.insecure_node_command.unwrap().expose().starts_with("curl --insecure -fL "));
    assert!(crt.node_command.unwrap().expose().starts_with("curl -fL "));

    let e = api.v1_reads(&Secret::new("token-old:x")).await.unwrap_err();
    assert_eq!(e.status(), Some(401));

    let seen = seen.lock().unwrap();
    let body = |name: &str| -> Value { serde_json::from_str(&seen.iter().find(|(n, _)| n == name).unwrap().1).unwrap() };
    assert_eq!(body("v1 login"), json!({"type":"localProvider","username":"admin","password":"bootstrap-pw","description":"rmm"}));
    assert_eq!(
        body("create cluster"),
        json!({
            "type": "provisioning.cattle.io.cluster",
            "apiVersion": "provisioning.cattle.io/v1",
            "kind": "Cluster",
            "metadata": {"name": "tinysetup", "namespace": "fleet-default", "annotations": {"rmm/run": "run-1"}},
            "spec": {"kubernetesVersion": "v1.35.1+rke2r1", "rkeConfig": {}}
        })
    );
    assert!(!seen.iter().any(|(n, _)| n == "v3 login"));
}

#[tokio::test]
async fn a_server_without_v1_public_login_is_logged_in_through_v3() {
    let seen: Seen = Arc::default();
    let (url, ca) = serve(router(seen.clone(), false)).await;
    let api = HttpConnector::new().connect(&url, CaTrust::Pinned(ca)).unwrap();
    let token = api.login_public("admin", &Secret::new("pw")).await.unwrap();
    assert_eq!(token.expose(), "token-abcde:s3cr3t");
    assert_eq!(seen.lock().unwrap().iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), vec!["v3 login"]);
}

/// nextest runs each test in a process of its own: setting SSL_CERT_FILE
/// here touches no other test.
#[tokio::test]
async fn a_server_with_empty_cacerts_is_verified_against_the_system_roots() {
    let (url, ca) = serve(router(Seen::default(), true)).await;
    let dir = std::env::temp_dir().join(format!("rmm-roots-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bundle = dir.join("bundle.pem");
    std::fs::write(&bundle, format!("{}\n{}\n", super::testing::pki("127.0.0.1").ca_pem, ca)).unwrap();
    std::env::set_var("SSL_CERT_FILE", &bundle);
    let api = HttpConnector::new().connect(&url, CaTrust::SystemRoots).unwrap();
    api.ping().await.unwrap();
    // Verified, so a credential may go.
    api.v1_reads(&Secret::new("token-abcde:s3cr3t")).await.unwrap();
    // Roots that do not hold the server's CA: a TLS error, nothing sent.
    std::fs::write(&bundle, super::testing::pki("127.0.0.1").ca_pem).unwrap();
    let api = HttpConnector::new().connect(&url, CaTrust::SystemRoots).unwrap();
    let e = api.ping().await.unwrap_err();
    assert!(matches!(&e, rmm_actors::ports::ApiError::Tls(_)), "{e:?}");
    std::env::set_var("SSL_CERT_FILE", dir.join("missing.pem"));
    let e = HttpConnector::new().connect(&url, CaTrust::SystemRoots).err().unwrap();
    assert!(e.to_string().contains("SSL_CERT_FILE"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn unverified_clients_refuse_the_v1_calls_that_carry_a_credential() {
    let api = HttpConnector::new().connect("https://127.0.0.1:1", CaTrust::Unverified).unwrap();
    let s = Secret::new("token-abcde:secret");
    for e in [
        api.login_public("admin", &s).await.unwrap_err(),
        api.v1_reads(&s).await.unwrap_err(),
        api.get_setting(&s, "rke2-default-version").await.unwrap_err(),
        api.offered_versions(&s, "rke2").await.unwrap_err(),
        api.create_v1_cluster(&s, "c", "v1", "run-1").await.unwrap_err(),
        api.get_v1_cluster(&s, "c").await.unwrap_err(),
        api.get_management_cluster(&s, "c-m-1").await.unwrap_err(),
        api.list_machines(&s, "c").await.unwrap_err(),
    ] {
        assert_eq!(e, rmm_actors::ports::ApiError::Tls(super::REFUSE_UNPINNED.into()));
    }
}
