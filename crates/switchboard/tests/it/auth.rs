//! JWT auth: every way a token can be wrong, every place it can come from,
//! both refusal styles, expiry during a connection and refresh.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::{json, Value};
use switchboard::{
    auth::{
        create_token, encode_token, Claims, JwtAlgorithm as Alg, JwtAuth, JwtEncodingKey as Key,
    },
    testing::TestClient,
    App, ConnectError, Error, Json, Message, StatusCode, WebSocket, WsConfig,
};

const SECRET: &[u8] = b"test-secret";
const RSA_PRIVATE: &[u8] = include_bytes!("../fixtures/rsa_private.pem");
const RSA_PUBLIC: &[u8] = include_bytes!("../fixtures/rsa_public.pem");
const EC_PRIVATE: &[u8] = include_bytes!("../fixtures/ec_private.pem");
const EC_PUBLIC: &[u8] = include_bytes!("../fixtures/ec_public.pem");
const ED_PRIVATE: &[u8] = include_bytes!("../fixtures/ed_private.pem");
const ED_PUBLIC: &[u8] = include_bytes!("../fixtures/ed_public.pem");

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[derive(Deserialize)]
struct User {
    sub: String,
}

fn app(auth: JwtAuth) -> App {
    let refresher = auth.clone();
    App::new()
        .websocket_with(
            "/ws",
            WsConfig::default()
                .protocols(["chat"])
                .middleware(auth.clone()),
            |ws: WebSocket| async move {
                let mut ws = ws.accept().await?;
                ws.send_json(&json!({"user": ws.user_id(), "protocol": ws.protocol()}))
                    .await?;
                while let Some(m) = ws.recv_message().await? {
                    ws.send(m).await?;
                }
                Ok::<_, Error>(())
            },
        )
        .websocket_with(
            "/refreshing",
            WsConfig::default().middleware(auth.clone()),
            move |ws: WebSocket| {
                let auth = refresher.clone();
                async move {
                    let mut ws = ws.accept().await?;
                    while let Some(token) = ws.recv_text().await? {
                        match auth.refresh(&mut ws, &token) {
                            Ok(()) => ws.send_text("refreshed").await?,
                            Err(e) => ws.send_text(format!("refused: {e}")).await?,
                        }
                    }
                    Ok::<_, Error>(())
                }
            },
        )
        .post("/token", |Json(body): Json<Value>| async move {
            let user = body["user"].as_str().unwrap_or("anon").to_owned();
            Json(json!({"token": create_token(SECRET, &user, Duration::from_secs(60)).unwrap()}))
        })
        .get("/me", |Claims(u): Claims<User>| async move { u.sub })
        .middleware(auth.optional(true))
}

fn hs(claims: Value) -> String {
    encode_token(Alg::HS256, &Key::from_secret(SECRET), &claims).unwrap()
}

async fn refused(c: &TestClient, token: &str) -> (StatusCode, String) {
    match c.websocket_connect(&format!("/ws?token={token}")).await {
        Err(ConnectError::Rejected { status, body, .. }) => {
            let body: Value = serde_json::from_str(&body).unwrap();
            (
                status,
                body["error"].as_str().unwrap_or_default().to_owned(),
            )
        }
        other => panic!("token must be refused, got {other:?}"),
    }
}

#[tokio::test]
async fn token_from_header_query_or_subprotocol() {
    let c = TestClient::new(app(JwtAuth::hs256(SECRET)));
    let token = create_token(SECRET, "ann", Duration::from_secs(60)).unwrap();
    let mut ws = c
        .websocket_connect("/ws")
        .header("authorization", &format!("Bearer {token}"))
        .await
        .unwrap();
    assert_eq!(
        ws.recv_json::<Value>().await.unwrap().unwrap()["user"],
        "ann"
    );
    let mut ws = c
        .websocket_connect(&format!("/ws?token={token}"))
        .await
        .unwrap();
    assert_eq!(
        ws.recv_json::<Value>().await.unwrap().unwrap()["user"],
        "ann"
    );
    // Browsers: the token rides in Sec-WebSocket-Protocol and is never echoed.
    let mut ws = c
        .websocket_connect("/ws")
        .protocol("chat")
        .protocol(&format!("bearer.{token}"))
        .await
        .unwrap();
    assert_eq!(ws.protocol(), Some("chat"));
    assert_eq!(
        ws.recv_json::<Value>().await.unwrap().unwrap(),
        json!({"user": "ann", "protocol": "chat"})
    );
}

#[tokio::test]
async fn every_bad_token_is_refused_with_401_and_a_reason() {
    let c = TestClient::new(app(JwtAuth::hs256(SECRET).leeway(Duration::ZERO)));
    let t = now();
    let cases = [
        (hs(json!({"sub": "a", "exp": t - 10})), "token expired"),
        (
            hs(json!({"sub": "a", "exp": t + 60, "nbf": t + 30})),
            "token not yet valid",
        ),
        (hs(json!({"sub": "a"})), "token lacks required claim `exp`"),
        (
            encode_token(
                Alg::HS256,
                &Key::from_secret(b"wrong"),
                &json!({"sub": "a", "exp": t + 60}),
            )
            .unwrap(),
            "invalid token signature",
        ),
        ("not.a.token".to_owned(), "malformed token"),
        ("garbage".to_owned(), "malformed token"),
    ];
    for (token, reason) in cases {
        assert_eq!(
            refused(&c, &token).await,
            (StatusCode::UNAUTHORIZED, reason.to_owned()),
            "{token}"
        );
    }
    // alg: none.
    use base64::Engine;
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&json!({"sub": "a", "exp": t + 60}))
    );
    assert_eq!(refused(&c, &none).await.0, StatusCode::UNAUTHORIZED);
    // Algorithm pinned: a valid HS384 token is refused by an HS256 route.
    let hs384 = encode_token(
        Alg::HS384,
        &Key::from_secret(SECRET),
        &json!({"sub": "a", "exp": t + 60}),
    )
    .unwrap();
    assert_eq!(
        refused(&c, &hs384).await,
        (
            StatusCode::UNAUTHORIZED,
            "token algorithm not accepted".to_owned()
        )
    );
    // Missing.
    let err = c.websocket_connect("/ws").await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::UNAUTHORIZED));
    assert!(err.to_string().contains("missing token"));
}

#[tokio::test]
async fn rs_hs_confusion_is_rejected() {
    let auth = JwtAuth::rsa_pem(Alg::RS256, RSA_PUBLIC).unwrap();
    let c = TestClient::new(app(auth));
    let t = now();
    // The attack: sign HS256 using the RSA *public* key as the HMAC secret.
    let forged = encode_token(
        Alg::HS256,
        &Key::from_secret(RSA_PUBLIC),
        &json!({"sub": "a", "exp": t + 60}),
    )
    .unwrap();
    assert_eq!(refused(&c, &forged).await.0, StatusCode::UNAUTHORIZED);
    let good = encode_token(
        Alg::RS256,
        &Key::from_rsa_pem(RSA_PRIVATE).unwrap(),
        &json!({"sub": "rsa", "exp": t + 60}),
    )
    .unwrap();
    let mut ws = c
        .websocket_connect(&format!("/ws?token={good}"))
        .await
        .unwrap();
    assert_eq!(
        ws.recv_json::<Value>().await.unwrap().unwrap()["user"],
        "rsa"
    );
}

#[tokio::test]
async fn ec_and_eddsa_keys() {
    let t = now();
    let claims = json!({"sub": "k", "exp": t + 60});
    let es = encode_token(Alg::ES256, &Key::from_ec_pem(EC_PRIVATE).unwrap(), &claims).unwrap();
    let c = TestClient::new(app(JwtAuth::ec_pem(Alg::ES256, EC_PUBLIC).unwrap()));
    assert!(c
        .websocket_connect(&format!("/ws?token={es}"))
        .await
        .is_ok());
    let ed = encode_token(Alg::EdDSA, &Key::from_ed_pem(ED_PRIVATE).unwrap(), &claims).unwrap();
    let c = TestClient::new(app(JwtAuth::ed_pem(ED_PUBLIC).unwrap()));
    assert!(c
        .websocket_connect(&format!("/ws?token={ed}"))
        .await
        .is_ok());
    assert_eq!(refused(&c, &es).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn refusal_after_accept_uses_close_1008() {
    let c = TestClient::new(app(JwtAuth::hs256(SECRET).reject_after_accept(true)));
    let mut ws = c.websocket_connect("/ws?token=garbage").await.unwrap();
    match ws.recv().await.unwrap() {
        Message::Close(Some(f)) => {
            assert_eq!((f.code.0, f.reason.as_str()), (1008, "malformed token"))
        }
        other => panic!("expected close 1008, got {other:?}"),
    }
}

#[tokio::test]
async fn token_endpoint_and_claims_extractor() {
    let c = TestClient::new(app(JwtAuth::hs256(SECRET)));
    let token: Value = c
        .post("/token")
        .json(&json!({"user": "zoe"}))
        .send()
        .await
        .json();
    let token = token["token"].as_str().unwrap();
    let r = c
        .get("/me")
        .header("authorization", &format!("Bearer {token}"))
        .send()
        .await;
    assert_eq!((r.status(), r.text().as_str()), (StatusCode::OK, "zoe"));
    let r = c.get("/me").send().await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = c
        .get("/me")
        .header("authorization", "Bearer nope")
        .send()
        .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.text().contains("malformed token"));
}

#[tokio::test]
async fn expiring_token_closes_the_socket_unless_refreshed() {
    let auth = JwtAuth::hs256(SECRET).leeway(Duration::ZERO);
    let c = TestClient::new(app(auth));
    let short = hs(json!({"sub": "ann", "exp": now() + 2}));
    // Not refreshed: closed with 1008 "token expired".
    let mut ws = c
        .websocket_connect(&format!("/refreshing?token={short}"))
        .await
        .unwrap();
    match tokio::time::timeout(Duration::from_secs(5), ws.recv())
        .await
        .unwrap()
        .unwrap()
    {
        Message::Close(Some(f)) => {
            assert_eq!((f.code.0, f.reason.as_str()), (1008, "token expired"))
        }
        other => panic!("expected close 1008, got {other:?}"),
    }
    // Refreshed in time: still open after the first token's expiry.
    let short = hs(json!({"sub": "ann", "exp": now() + 2}));
    let mut ws = c
        .websocket_connect(&format!("/refreshing?token={short}"))
        .await
        .unwrap();
    let other_user = hs(json!({"sub": "eve", "exp": now() + 60}));
    ws.send_text(other_user).await.unwrap();
    assert!(ws
        .recv_text()
        .await
        .unwrap()
        .unwrap()
        .starts_with("refused: refreshed token is for another subject"));
    ws.send_text(hs(json!({"sub": "ann", "exp": now() + 60})))
        .await
        .unwrap();
    assert_eq!(ws.recv_text().await.unwrap().as_deref(), Some("refreshed"));
    tokio::time::sleep(Duration::from_millis(3500)).await;
    ws.send_text("still here?").await.unwrap();
    assert!(ws
        .recv_text()
        .await
        .unwrap()
        .unwrap()
        .starts_with("refused"));
    assert!(ws.is_open());
}
