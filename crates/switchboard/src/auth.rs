//! JWT authentication for sockets and routes, on the `jsonwebtoken` crate.
//!
//! [`JwtAuth`] is a [`Middleware`]: it finds the token (an
//! `Authorization: Bearer` header, a `token` query parameter, or a
//! `Sec-WebSocket-Protocol` entry `bearer.<jwt>` — browsers cannot set
//! headers on a WebSocket), verifies it with the one algorithm it was
//! configured for, and puts the claims in the request extensions, where
//! handlers read them with [`Claims<T>`]. The token is never logged, and a
//! protocol entry carrying it is removed from the offer so it can never be
//! echoed back as the selected subprotocol.
//!
//! Pinning: `Validation::new(alg)` accepts only that algorithm, so
//! `alg: none` and RS256/HS256 confusion (an RSA public key used as an HMAC
//! secret) fail. `exp` is required, `nbf` honoured, leeway 5 s by default.
//!
//! A failure answers 401 with the reason before the upgrade, or — with
//! [`JwtAuth::reject_after_accept`], as the seeds do — accepts and closes
//! with 1008 and the reason. A token that expires while its socket is open
//! closes it with 1008 "token expired", unless the application calls
//! [`JwtAuth::refresh`] with a newer token in time.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{header, HeaderValue, StatusCode};
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use switchboard_proto::{CloseCode, CloseFrame};

use crate::{
    extract::{FromRequestParts, Rejection, RequestContext},
    middleware::{Middleware, Reject},
    ws::Socket,
};

/// The prefix of a `Sec-WebSocket-Protocol` entry that carries a token.
pub const PROTOCOL_PREFIX: &str = "bearer.";

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AuthError(String);

impl AuthError {
    /// The reason, safe to show to the client (it never contains the token).
    pub fn reason(&self) -> &str {
        &self.0
    }
}

/// Verified claims, as inserted by [`JwtAuth`].
#[derive(Debug, Clone)]
pub struct VerifiedClaims(pub serde_json::Value);

/// When the connection's token expires (read by the socket at accept).
#[derive(Debug, Clone, Copy)]
pub(crate) struct TokenExpiry(pub(crate) Instant);

/// The standard claims Switchboard itself looks at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StandardClaims {
    /// Subject: the user id.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Issued at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Not before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
}

/// JWT verification settings; use as middleware.
///
/// ```
/// use std::time::Duration;
/// use switchboard::auth::{create_token, JwtAuth};
///
/// let auth = JwtAuth::hs256(b"secret").leeway(Duration::from_secs(2));
/// let token = create_token(b"secret", "ann", Duration::from_secs(60)).unwrap();
/// let claims: serde_json::Value = auth.verify(&token).unwrap();
/// assert_eq!(claims["sub"], "ann");
/// assert!(auth.verify::<serde_json::Value>("not-a-token").is_err());
/// ```
#[derive(Clone)]
pub struct JwtAuth {
    key: DecodingKey,
    validation: Validation,
    reject_after_accept: bool,
    optional: bool,
}

impl std::fmt::Debug for JwtAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuth")
            .field("algorithms", &self.validation.algorithms)
            .field("leeway", &self.validation.leeway)
            .field("reject_after_accept", &self.reject_after_accept)
            .finish_non_exhaustive()
    }
}

fn pinned(alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.set_required_spec_claims(&["exp"]);
    v.validate_exp = true;
    v.validate_nbf = true;
    v.validate_aud = false;
    v.leeway = 5;
    v
}

impl JwtAuth {
    /// Verifies with `key` and only `alg`.
    pub fn new(alg: Algorithm, key: DecodingKey) -> JwtAuth {
        JwtAuth {
            key,
            validation: pinned(alg),
            reject_after_accept: false,
            optional: false,
        }
    }

    /// HS256 with a shared secret.
    pub fn hs256(secret: &[u8]) -> JwtAuth {
        JwtAuth::new(Algorithm::HS256, DecodingKey::from_secret(secret))
    }

    /// HS384 with a shared secret.
    pub fn hs384(secret: &[u8]) -> JwtAuth {
        JwtAuth::new(Algorithm::HS384, DecodingKey::from_secret(secret))
    }

    /// HS512 with a shared secret.
    pub fn hs512(secret: &[u8]) -> JwtAuth {
        JwtAuth::new(Algorithm::HS512, DecodingKey::from_secret(secret))
    }

    /// RS256/384/512 or PS* with an RSA public key in PEM.
    pub fn rsa_pem(alg: Algorithm, pem: &[u8]) -> Result<JwtAuth, AuthError> {
        let key =
            DecodingKey::from_rsa_pem(pem).map_err(|e| AuthError(format!("bad RSA key: {e}")))?;
        Ok(JwtAuth::new(alg, key))
    }

    /// ES256/384 with an EC public key in PEM.
    pub fn ec_pem(alg: Algorithm, pem: &[u8]) -> Result<JwtAuth, AuthError> {
        let key =
            DecodingKey::from_ec_pem(pem).map_err(|e| AuthError(format!("bad EC key: {e}")))?;
        Ok(JwtAuth::new(alg, key))
    }

    /// EdDSA with an Ed25519 public key in PEM.
    pub fn ed_pem(pem: &[u8]) -> Result<JwtAuth, AuthError> {
        let key = DecodingKey::from_ed_pem(pem)
            .map_err(|e| AuthError(format!("bad Ed25519 key: {e}")))?;
        Ok(JwtAuth::new(Algorithm::EdDSA, key))
    }

    /// Clock skew tolerated on `exp` and `nbf` (default 5 s).
    pub fn leeway(mut self, leeway: Duration) -> JwtAuth {
        self.validation.leeway = leeway.as_secs();
        self
    }

    /// Requires this issuer (`iss`).
    pub fn issuer(mut self, iss: &str) -> JwtAuth {
        self.validation.set_issuer(&[iss]);
        self
    }

    /// Requires this audience (`aud`).
    pub fn audience(mut self, aud: &str) -> JwtAuth {
        self.validation.set_audience(&[aud]);
        self
    }

    /// Refuse WebSockets by accepting and closing with 1008 and the reason
    /// (the seeds' style) instead of answering 401 before the upgrade.
    pub fn reject_after_accept(mut self, yes: bool) -> JwtAuth {
        self.reject_after_accept = yes;
        self
    }

    /// Let requests without any token through unauthenticated (a present
    /// but invalid token is still refused).
    pub fn optional(mut self, yes: bool) -> JwtAuth {
        self.optional = yes;
        self
    }

    /// Verifies `token` and returns its claims.
    pub fn verify<T: DeserializeOwned>(&self, token: &str) -> Result<T, AuthError> {
        decode::<T>(token, &self.key, &self.validation)
            .map(|d| d.claims)
            .map_err(|e| AuthError(describe(&e)))
    }

    /// Verifies a fresh token for an open socket and moves its expiry, so
    /// a long-lived connection survives its first token. The new token must
    /// have the same subject.
    pub fn refresh(&self, socket: &mut Socket, token: &str) -> Result<(), AuthError> {
        let claims: serde_json::Value = self.verify(token)?;
        let current = socket
            .extensions()
            .get::<VerifiedClaims>()
            .map(|c| c.0["sub"].clone());
        if current.is_some_and(|sub| sub != claims["sub"]) {
            return Err(AuthError("refreshed token is for another subject".into()));
        }
        let expiry = expiry_instant(&claims);
        socket.sender().shared.set_expiry(expiry.map(|e| e.0));
        if let Some(e) = expiry {
            socket.extensions_mut().insert(e);
        }
        socket.extensions_mut().insert(VerifiedClaims(claims));
        Ok(())
    }

    fn refuse(&self, reason: String) -> Reject {
        if self.reject_after_accept {
            Reject::Close(CloseFrame::new(CloseCode::POLICY_VIOLATION, reason))
        } else {
            Reject::Http(Rejection::new(StatusCode::UNAUTHORIZED, reason))
        }
    }
}

fn describe(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => "token expired".into(),
        K::ImmatureSignature => "token not yet valid".into(),
        K::InvalidSignature => "invalid token signature".into(),
        K::InvalidAlgorithm => "token algorithm not accepted".into(),
        K::MissingRequiredClaim(c) => format!("token lacks required claim `{c}`"),
        K::InvalidIssuer => "token issuer not accepted".into(),
        K::InvalidAudience => "token audience not accepted".into(),
        K::InvalidToken | K::Base64(_) | K::Json(_) | K::Utf8(_) => "malformed token".into(),
        _ => "invalid token".into(),
    }
}

fn expiry_instant(claims: &serde_json::Value) -> Option<TokenExpiry> {
    let exp = claims.get("exp")?.as_u64()?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(TokenExpiry(
        Instant::now() + Duration::from_secs(exp.saturating_sub(now)),
    ))
}

/// Finds the token: header, then query, then subprotocol entry (which is
/// removed from the request so it is never selected or echoed).
fn take_token(cx: &mut RequestContext) -> Option<String> {
    if let Some(v) = cx
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        if let Some(t) = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
        {
            return Some(t.trim().to_owned());
        }
    }
    if let Some(t) = cx.query_param("token") {
        return Some(t);
    }
    let protocols = switchboard_proto::parse_protocols(cx.headers()).ok()?;
    let token = protocols
        .iter()
        .find_map(|p| p.strip_prefix(PROTOCOL_PREFIX))?
        .to_owned();
    let rest: Vec<&str> = protocols
        .iter()
        .filter(|p| !p.starts_with(PROTOCOL_PREFIX))
        .map(String::as_str)
        .collect();
    let headers = &mut cx.parts_mut().headers;
    headers.remove(header::SEC_WEBSOCKET_PROTOCOL);
    if !rest.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&rest.join(", ")) {
            headers.insert(header::SEC_WEBSOCKET_PROTOCOL, v);
        }
    }
    Some(token)
}

impl Middleware for JwtAuth {
    fn before(&self, cx: &mut RequestContext) -> Result<(), Reject> {
        if cx.extensions().get::<VerifiedClaims>().is_some() {
            // Already verified by an earlier JwtAuth (app-wide and route).
            return Ok(());
        }
        let Some(token) = take_token(cx) else {
            return if self.optional {
                Ok(())
            } else {
                count_failure(cx, "missing token");
                Err(self.refuse("missing token".into()))
            };
        };
        let claims: serde_json::Value = self.verify(&token).map_err(|e| {
            count_failure(cx, e.reason());
            self.refuse(e.0)
        })?;
        if let Some(expiry) = expiry_instant(&claims) {
            cx.extensions_mut().insert(expiry);
        }
        cx.extensions_mut().insert(VerifiedClaims(claims));
        Ok(())
    }
}

/// Counts a refused token in the app's metrics, when they are on.
fn count_failure(cx: &RequestContext, reason: &str) {
    if let Some(m) = &cx.shared.metrics {
        m.auth_failure(reason);
    }
}

/// Typed claims of the verified token (requires [`JwtAuth`] middleware).
///
/// Answers 401 if the route has no verified token, or if the claims do not
/// have the shape `T` asks for.
#[derive(Debug, Clone)]
pub struct Claims<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts for Claims<T> {
    fn from_request_parts(cx: &mut RequestContext) -> Result<Self, Rejection> {
        let claims = cx
            .extensions()
            .get::<VerifiedClaims>()
            .ok_or_else(|| Rejection::new(StatusCode::UNAUTHORIZED, "not authenticated"))?;
        serde_json::from_value(claims.0.clone())
            .map(Claims)
            .map_err(|e| {
                Rejection::new(
                    StatusCode::UNAUTHORIZED,
                    format!("unexpected token claims: {e}"),
                )
            })
    }
}

impl Socket {
    /// The verified token's claims, if the route uses [`JwtAuth`].
    pub fn claims<T: DeserializeOwned>(&self) -> Option<T> {
        let c = self.extensions().get::<VerifiedClaims>()?;
        serde_json::from_value(c.0.clone()).ok()
    }

    /// The verified token's subject (`sub`), e.g. the user id.
    pub fn user_id(&self) -> Option<String> {
        let c = self.extensions().get::<VerifiedClaims>()?;
        c.0.get("sub")?.as_str().map(str::to_owned)
    }
}

/// Mints an HS256 token for `subject` valid for `ttl` (the seeds'
/// `create_token`), for development and tests.
pub fn create_token(secret: &[u8], subject: &str, ttl: Duration) -> Result<String, AuthError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = StandardClaims {
        sub: subject.to_owned(),
        exp: now + ttl.as_secs(),
        iat: Some(now),
        nbf: None,
    };
    encode_token(Algorithm::HS256, &EncodingKey::from_secret(secret), &claims)
}

/// Encodes any claims with any algorithm and key.
pub fn encode_token<T: Serialize>(
    alg: Algorithm,
    key: &EncodingKey,
    claims: &T,
) -> Result<String, AuthError> {
    encode(&Header::new(alg), claims, key).map_err(|e| AuthError(format!("cannot sign token: {e}")))
}

pub use jsonwebtoken::{
    Algorithm as JwtAlgorithm, DecodingKey as JwtDecodingKey, EncodingKey as JwtEncodingKey,
};
