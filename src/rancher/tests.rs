//! The client against a real HTTPS server on loopback: CA pinning, the
//! headers that go out, and the shapes that come back.

use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post, put};
use axum::Router;
use rmm_actors::ports::{ca_checksum, ApiError, CaTrust, RancherApi, RancherConnector, Secret};
use serde_json::json;

use super::testing::serve;
use super::{HttpConnector, HttpRancher};

type Seen = Arc<Mutex<Vec<(String, HeaderMap, String)>>>;

fn record(seen: &Seen, name: &str, headers: HeaderMap, body: String) {
    seen.lock().unwrap().push((name.to_string(), headers, body));
}

fn router(seen: Seen) -> Router {
    let (s1, s2, s3, s4) = (seen.clone(), seen.clone(), seen.clone(), seen);
    Router::new()
        .route("/ping", get(|| async { "pong" }))
        .route(
            "/v3-public/localProviders/local",
            post(move |h: HeaderMap, b: String| async move {
                record(&s1, "login", h, b);
                (StatusCode::CREATED, axum::Json(json!({"type":"token","id":"token-abcde","token":"token-abcde:s3cr3t"})))
            }),
        )
        .route(
            "/v3/users",
            post(move |h: HeaderMap, b: String| async move {
                record(&s2, "changepassword", h, b);
                StatusCode::OK
            }),
        )
        .route(
            "/v3/settings/{name}",
            put(move |h: HeaderMap, b: String| async move {
                record(&s3, "setting", h, b);
                axum::Json(json!({"type":"setting","id":"server-url"}))
            }),
        )
        .route(
            "/v3/clusters",
            get(move |h: HeaderMap| async move {
                let authed = h.get("authorization").and_then(|v| v.to_str().ok()) == Some("Bearer token-abcde:s3cr3t");
                record(&s4, "clusters", h, String::new());
                if authed {
                    (StatusCode::OK, axum::Json(json!({"type":"collection","data":[{"id":"c-1","name":"tinysetup","state":"active","transitioning":"no"}]})))
                } else {
                    (StatusCode::UNAUTHORIZED, axum::Json(json!({"type":"error","status":"401","message":"Unauthorized 401: must authenticate"})))
                }
            }),
        )
        .route(
            "/v3/cluster",
            post(|| async {
                (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    axum::Json(json!({"baseType":"error","type":"error","status":422,"code":"NotUnique","fieldName":"Cluster name","message":""})),
                )
            }),
        )
        .route("/v3/nodes", get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "starting") }))
}

#[tokio::test]
async fn pinned_client_talks_to_its_server_with_the_right_headers() {
    let seen: Seen = Arc::default();
    let (url, ca) = serve(router(seen.clone())).await;

    // The bootstrap: unverified for ping and cacerts only.
    let open = HttpConnector::new().connect(&url, CaTrust::Unverified).unwrap();
    open.ping().await.unwrap();
    assert!(ca_checksum(&ca).len() == 64);

    let api = HttpConnector::new().connect(&url, CaTrust::Pinned(ca)).unwrap();
    api.ping().await.unwrap();
    let pw = Secret::new("bootstrap-password");
    let token = api.login("admin", &pw).await.unwrap();
    assert_eq!(token.expose(), "token-abcde:s3cr3t");
    api.change_password(&token, &pw, &Secret::new("a-much-longer-password")).await.unwrap();
    api.set_setting(&token, "server-url", &url).await.unwrap();
    let c = api.find_cluster(&token, "tinysetup").await.unwrap().unwrap();
    assert_eq!((c.id.as_str(), c.state.as_str()), ("c-1", "active"));

    let e = api.find_cluster(&Secret::new("token-wrong:x"), "tinysetup").await.unwrap_err();
    assert_eq!(e, ApiError::Status { status: 401, code: None, message: "Unauthorized 401: must authenticate".into() });
    let e = api.create_cluster(&token, "tinysetup").await.unwrap_err();
    assert_eq!(e.code(), Some("NotUnique"));
    let e = api.list_nodes(&token, "c-1").await.unwrap_err();
    assert!(matches!(&e, ApiError::Unavailable(m) if m.contains("HTTP 503")), "{e:?}");
    assert!(!e.to_string().contains("s3cr3t"));

    let seen = seen.lock().unwrap();
    let (_, h, body) = seen.iter().find(|(n, ..)| n == "login").unwrap();
    assert_eq!(h["content-type"], "application/json");
    assert!(h["user-agent"].to_str().unwrap().starts_with("rmm/"));
    let body: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!((body["username"].as_str(), body["password"].as_str()), (Some("admin"), Some("bootstrap-password")));
    let (_, h, body) = seen.iter().find(|(n, ..)| n == "changepassword").unwrap();
    assert_eq!(h["authorization"], "Bearer token-abcde:s3cr3t");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(body).unwrap(),
        json!({"currentPassword":"bootstrap-password","newPassword":"a-much-longer-password"})
    );
    let (_, _, body) = seen.iter().find(|(n, ..)| n == "setting").unwrap();
    assert_eq!(serde_json::from_str::<serde_json::Value>(body).unwrap(), json!({"name":"server-url","value":url}));
}

#[tokio::test]
async fn a_server_whose_certificate_does_not_chain_to_the_pinned_ca_is_a_tls_error() {
    let (url, _ca) = serve(router(Seen::default())).await;
    let other_ca = super::testing::pki("127.0.0.1").ca_pem;
    let api = HttpRancher::new(&url, CaTrust::Pinned(other_ca)).unwrap();
    let e = api.ping().await.unwrap_err();
    assert!(matches!(&e, ApiError::Tls(m) if m.contains("not trusted")), "{e:?}");
    assert!(!e.is_retryable());
    // No credential leaves either: the handshake fails first.
    let e = api.login("admin", &Secret::new("pw")).await.unwrap_err();
    assert!(matches!(e, ApiError::Tls(_)));
}
