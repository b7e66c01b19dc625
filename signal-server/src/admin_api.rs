//! The admin REST API (nested under `/api` by the server).
//!
//! Every route needs `Authorization: Bearer <token>`, the token being the content of
//! `admin_token_file`. Without a configured token every route answers 503.
//!
//! | method + path              | body / query                                    | success |
//! |----------------------------|-------------------------------------------------|---------|
//! | `GET /accounts`            |                                                 | 200 `[AccountView]` |
//! | `POST /accounts`           | `{number, password, name?, switch?, kind?}`     | 201 `AccountView` |
//! | `DELETE /accounts/{number}`|                                                 | 204 |
//! | `GET /switches`            |                                                 | 200 `[SwitchView]` |
//! | `POST /switches`           | `{id, secret}`                                  | 201 `SwitchView` |
//! | `DELETE /switches/{id}`    |                                                 | 204 |
//! | `GET /calls`               | `?number=N&limit=L` (both optional; limit 100)  | 200 `[CallView]`, newest first |
//! | `PUT /accounts/{number}/password` | `{password}`                             | 200 `{"revoked_sessions": n}` (all revoked) |
//! | `GET /sessions`            | `?number=N` (optional)                          | 200 `[SessionView]` (never a token) |
//! | `DELETE /sessions/{id}`    |                                                 | 204 |
//! | `DELETE /accounts/{number}/sessions` |                                       | 200 `{"revoked_sessions": n}` |
//!
//! Errors are `{"error": code, "message": text}`: 400 `invalid`, 401 `unauthorized`,
//! 404 `not_found`, 408 `timeout`, 409 `already_exists`, 413 (body over
//! `limits.max_request_body_bytes`, `too_large`), 429 `rate_limited` (with `Retry-After`), 500 `internal`,
//! 503 `disabled`. The rules are those of the command line (see [`crate::admin`]).
//!
//! Wrong tokens are counted per address ([`TokenThrottle`]): past
//! `limits.admin_failures_per_address` every request from there gets 429 until a backoff that
//! doubles with each further wrong token has passed. The token is compared in constant time.
//! No CORS headers are sent: browsers refuse cross-origin reads of the API.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, put};
use serde::Deserialize;
use tokio::sync::Notify;

use crate::Config;
use crate::admin::{self, AccountInput, AccountView, AdminError, CallView, PasswordInput, SessionView, SwitchInput, SwitchView};
use crate::credentials;
use crate::directory::{Directory, DirectoryError};

#[derive(Clone)]
pub struct AdminState {
    pub dir: Arc<dyn Directory>,
    /// The bearer token; `None`: the API is disabled (503).
    pub token: Option<String>,
    pub config: Arc<Config>,
    /// Notified after every successful change, so the server reloads the directory at once.
    pub changed: Arc<Notify>,
    /// Wrong tokens per address.
    pub throttle: Arc<TokenThrottle>,
}

/// Addresses remembered at most; past this, the oldest failures are forgotten first.
const MAX_THROTTLED_ADDRESSES: usize = 65_536;

/// Wrong admin tokens per address (an IPv4 address or an IPv6 /64), in memory: past `budget`
/// failures the address must wait `base · 2^(failures − budget)` (at most `max`) after its last
/// failure, and every request from it meanwhile gets 429. A right token clears the address.
pub struct TokenThrottle {
    budget: u32,
    base: Duration,
    max: Duration,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl TokenThrottle {
    pub fn new(budget: u32, base: Duration, max: Duration) -> TokenThrottle {
        TokenThrottle { budget, base, max, failures: Mutex::new(HashMap::new()) }
    }

    fn backoff(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(self.budget).min(30);
        self.base.saturating_mul(1 << doublings).min(self.max)
    }

    /// `Err(wait)`: this address must wait before trying again.
    fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let key = crate::net::address_key(ip);
        let map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(&key) {
            Some(&(n, last)) if n >= self.budget => {
                let until = last + self.backoff(n);
                if now < until { Err(until - now) } else { Ok(()) }
            }
            _ => Ok(()),
        }
    }

    fn failed(&self, ip: IpAddr, now: Instant) {
        let key = crate::net::address_key(ip);
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_THROTTLED_ADDRESSES && !map.contains_key(&key) {
            // Forget what has served its backoff, then (still full) the oldest failure.
            let forget_after = self.max * 2;
            map.retain(|_, (_, last)| now.duration_since(*last) < forget_after);
            if map.len() >= MAX_THROTTLED_ADDRESSES
                && let Some(oldest) = map.iter().min_by_key(|(_, (_, last))| *last).map(|(k, _)| *k)
            {
                map.remove(&oldest);
            }
        }
        let e = map.entry(key).or_insert((0, now));
        e.0 = e.0.saturating_add(1);
        e.1 = now;
    }

    fn succeeded(&self, ip: IpAddr) {
        self.failures.lock().unwrap_or_else(|e| e.into_inner()).remove(&crate::net::address_key(ip));
    }
}

/// Ends an admin request (body included) that takes longer than the configured time with 408.
pub async fn request_deadline(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::new(StatusCode::REQUEST_TIMEOUT, "timeout", "request not completed in time").into_response(),
    }
}

/// The admin routes, with their state applied. Nest under `/api`.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/accounts", get(list_accounts).post(add_account))
        .route("/accounts/{number}", delete(remove_account))
        .route("/switches", get(list_switches).post(add_switch))
        .route("/switches/{id}", delete(remove_switch))
        .route("/calls", get(list_calls))
        .route("/accounts/{number}/password", put(set_password))
        .route("/accounts/{number}/sessions", delete(revoke_account_sessions))
        .route("/sessions", get(list_sessions))
        .route("/sessions/{id}", delete(revoke_session))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token))
        .fallback(not_found)
        .with_state(state)
}

/// A JSON error response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// `Retry-After`, seconds (429).
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), retry_after: None }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.code, "message": self.message });
        let mut resp = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::Invalid(m) => ApiError::new(StatusCode::BAD_REQUEST, "invalid", m),
            AdminError::Directory(d) => d.into(),
            AdminError::Internal(m) => {
                tracing::error!(error = %m, "admin API");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", m)
            }
        }
    }
}

impl From<DirectoryError> for ApiError {
    fn from(e: DirectoryError) -> Self {
        let message = e.to_string();
        match e {
            DirectoryError::AlreadyExists { .. } => ApiError::new(StatusCode::CONFLICT, "already_exists", message),
            DirectoryError::NotFound { .. } => ApiError::new(StatusCode::NOT_FOUND, "not_found", message),
            DirectoryError::Invalid(m) => ApiError::new(StatusCode::BAD_REQUEST, "invalid", m),
            // A full disk (logged once per episode by the directory): try again later.
            DirectoryError::Unavailable(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message),
            DirectoryError::Database(_) => {
                tracing::error!(error = %message, "admin API");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
            }
        }
    }
}

fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    // The rejection text describes the JSON problem (field, type, position), never the values.
    body.map(|Json(v)| v).map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", "request body over limits.max_request_body_bytes")
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid", e.body_text())
        }
    })
}

async fn require_token(State(s): State<AdminState>, req: Request, next: Next) -> Response {
    let Some(expected) = &s.token else {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "disabled", "admin API disabled: set admin_token_file")
            .into_response();
    };
    // Served by the server, the peer's address is always there; a router used on its own (unit
    // tests) counts everyone as one unspecified address.
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(a)| a.ip())
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    let now = Instant::now();
    if let Err(wait) = s.throttle.check(ip, now) {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        metrics::counter!("trunkline_admin_rate_limited_total").increment(1);
        return ApiError {
            retry_after: Some(secs.max(1)),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("too many wrong admin tokens from this address; retry in {} s", secs.max(1)),
            )
        }
        .into_response();
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    match presented {
        Some(t) if credentials::ct_eq(t, expected) => {
            s.throttle.succeeded(ip);
            next.run(req).await
        }
        Some(_) => {
            s.throttle.failed(ip, now);
            metrics::counter!("trunkline_admin_auth_failures_total").increment(1);
            tracing::warn!(%ip, "admin API: wrong token");
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "wrong admin token").into_response()
        }
        None => {
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "send Authorization: Bearer <admin token>").into_response()
        }
    }
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such admin API route")
}

async fn list_accounts(State(s): State<AdminState>) -> Result<Json<Vec<AccountView>>, ApiError> {
    Ok(Json(s.dir.list_accounts().await?.into_iter().map(AccountView::from).collect()))
}

async fn add_account(
    State(s): State<AdminState>,
    body: Result<Json<AccountInput>, JsonRejection>,
) -> Result<(StatusCode, Json<AccountView>), ApiError> {
    let input = json_body(body)?;
    let view = admin::add_account(s.dir.as_ref(), s.config.clone(), input).await?;
    s.changed.notify_one();
    tracing::info!(number = %view.number, kind = view.kind.as_str(), "admin API: account added");
    Ok((StatusCode::CREATED, Json(view)))
}

async fn remove_account(State(s): State<AdminState>, Path(number): Path<String>) -> Result<StatusCode, ApiError> {
    s.dir.remove_account(&number).await?;
    s.changed.notify_one();
    tracing::info!(number = %number, "admin API: account removed");
    Ok(StatusCode::NO_CONTENT)
}

async fn list_switches(State(s): State<AdminState>) -> Result<Json<Vec<SwitchView>>, ApiError> {
    Ok(Json(s.dir.list_switches().await?.into_iter().map(SwitchView::from).collect()))
}

async fn add_switch(
    State(s): State<AdminState>,
    body: Result<Json<SwitchInput>, JsonRejection>,
) -> Result<(StatusCode, Json<SwitchView>), ApiError> {
    let input = json_body(body)?;
    let view = admin::add_switch(s.dir.as_ref(), s.config.clone(), input).await?;
    s.changed.notify_one();
    tracing::info!(switch = %view.id, "admin API: switch added");
    Ok((StatusCode::CREATED, Json(view)))
}

async fn remove_switch(State(s): State<AdminState>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    s.dir.remove_switch(&id).await?;
    s.changed.notify_one();
    tracing::info!(switch = %id, "admin API: switch removed");
    Ok(StatusCode::NO_CONTENT)
}

async fn set_password(
    State(s): State<AdminState>,
    Path(number): Path<String>,
    body: Result<Json<PasswordInput>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let input = json_body(body)?;
    let revoked = admin::set_password(s.dir.as_ref(), s.config.clone(), &number, input.password).await?;
    s.changed.notify_one();
    tracing::info!(number = %number, revoked_sessions = revoked, "admin API: password changed; sessions revoked");
    Ok(Json(serde_json::json!({ "revoked_sessions": revoked })))
}

#[derive(Deserialize)]
struct SessionsQuery {
    number: Option<String>,
}

async fn list_sessions(
    State(s): State<AdminState>,
    query: Result<Query<SessionsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<SessionView>>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid", e.body_text()))?;
    let number = q.number.filter(|n| !n.is_empty());
    if let Some(n) = &number {
        trunkline_protocol::check_number("number", n)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid", e.message))?;
    }
    let list = s.dir.list_sessions(number.as_deref(), crate::server::unix_ms()).await?;
    Ok(Json(list.into_iter().map(SessionView::from).collect()))
}

async fn revoke_session(State(s): State<AdminState>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "invalid", format!("session id {id:?} is not a number")))?;
    match s.dir.revoke_session(id).await? {
        Some(number) => {
            tracing::info!(session_id = id, %number, "admin API: session revoked");
            Ok(StatusCode::NO_CONTENT)
        }
        None => Err(DirectoryError::NotFound { what: "session", key: id.to_string() }.into()),
    }
}

async fn revoke_account_sessions(
    State(s): State<AdminState>,
    Path(number): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    trunkline_protocol::check_number("number", &number)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid", e.message))?;
    if s.dir.account(&number).await?.is_none() {
        return Err(DirectoryError::NotFound { what: "account", key: number }.into());
    }
    let revoked = s.dir.revoke_sessions(&number).await?;
    tracing::info!(%number, revoked_sessions = revoked, "admin API: sessions revoked");
    Ok(Json(serde_json::json!({ "revoked_sessions": revoked })))
}

#[derive(Deserialize)]
struct CallsQuery {
    number: Option<String>,
    limit: Option<String>,
}

async fn list_calls(
    State(s): State<AdminState>,
    query: Result<Query<CallsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<CallView>>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid", e.body_text()))?;
    let number = q.number.filter(|n| !n.is_empty());
    let limit = match q.limit.as_deref() {
        None | Some("") => admin::DEFAULT_CALLS_LIMIT,
        Some(l) => l
            .parse::<u32>()
            .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "invalid", format!("limit {l:?} is not a number")))?,
    };
    admin::check_calls_query(number.as_deref(), limit)?;
    let records = s.dir.call_records(number.as_deref(), limit).await?;
    Ok(Json(records.into_iter().map(CallView::from).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::CallRecord;
    use crate::directory::sqlite::SqliteDirectory;
    use axum::body::Body;
    use axum::http::Method;
    use tower::ServiceExt;
    use trunkline_protocol::{Outcome, Step};

    const TOKEN: &str = "admin-token-0123456789";

    async fn state(token: Option<&str>) -> AdminState {
        let mut config = Config::default();
        config.auth.password_hash_memory_kib = 64;
        config.auth.password_hash_iterations = 1;
        AdminState {
            dir: Arc::new(SqliteDirectory::open("sqlite::memory:").await.unwrap()),
            token: token.map(str::to_string),
            config: Arc::new(config),
            changed: Arc::new(Notify::new()),
            throttle: Arc::new(TokenThrottle::new(1000, Duration::from_secs(1), Duration::from_secs(1))),
        }
    }

    async fn call(
        s: &AdminState,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (StatusCode, serde_json::Value) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = match body {
            Some(b) => req.header(header::CONTENT_TYPE, "application/json").body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        }
        .unwrap();
        let resp = router(s.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        let json = if bytes.is_empty() { serde_json::Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
        (status, json)
    }

    /// Has `changed` been notified (a stored permit)?
    async fn was_notified(s: &AdminState) -> bool {
        tokio::time::timeout(std::time::Duration::from_millis(20), s.changed.notified()).await.is_ok()
    }

    #[tokio::test]
    async fn disabled_without_token() {
        let s = state(None).await;
        let (st, body) = call(&s, Method::GET, "/accounts", Some("anything"), None).await;
        assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["error"], "disabled");
        assert_eq!(body["message"], "admin API disabled: set admin_token_file");
    }

    #[tokio::test]
    async fn wrong_or_missing_token_is_401() {
        let s = state(Some(TOKEN)).await;
        for t in [None, Some("wrong"), Some("admin-token-012345678X"), Some("")] {
            let (st, body) = call(&s, Method::GET, "/accounts", t, None).await;
            assert_eq!(st, StatusCode::UNAUTHORIZED, "{t:?}");
            assert_eq!(body["error"], "unauthorized");
        }
        // A write with a wrong token changes nothing.
        let (st, _) =
            call(&s, Method::POST, "/switches", Some("wrong"), Some(serde_json::json!({"id": "sw1", "secret": "x".repeat(20)})))
                .await;
        assert_eq!(st, StatusCode::UNAUTHORIZED);
        assert!(s.dir.list_switches().await.unwrap().is_empty());
        let (st, _) = call(&s, Method::GET, "/accounts", Some(TOKEN), None).await;
        assert_eq!(st, StatusCode::OK);
    }

    #[tokio::test]
    async fn accounts_and_switches_lifecycle() {
        let s = state(Some(TOKEN)).await;
        let t = Some(TOKEN);
        let secret = "switch-secret-0123456789";
        let (st, body) = call(&s, Method::POST, "/switches", t, Some(serde_json::json!({"id": "sw1", "secret": secret}))).await;
        assert_eq!(st, StatusCode::CREATED, "{body}");
        assert_eq!(body, serde_json::json!({"id": "sw1", "online": false, "direct_urls": [], "last_seen_ms": null}));
        assert!(was_notified(&s).await);
        assert!(credentials::verify_password(&s.dir.switch_secret_hash("sw1").await.unwrap().unwrap(), secret));

        let (st, body) = call(
            &s,
            Method::POST,
            "/accounts",
            t,
            Some(serde_json::json!({"number": "200", "password": "pw-200", "switch": "sw1", "name": "Desk"})),
        )
        .await;
        assert_eq!(st, StatusCode::CREATED, "{body}");
        assert_eq!(body, serde_json::json!({"number": "200", "display_name": "Desk", "kind": "deskphone", "home_switch": "sw1"}));
        assert!(was_notified(&s).await);
        let stored = s.dir.account("200").await.unwrap().unwrap();
        assert_eq!(stored.ha1_md5, Some(credentials::ha1_md5("200", &s.config.sip_realm, "pw-200")));

        let (st, _) =
            call(&s, Method::POST, "/accounts", t, Some(serde_json::json!({"number": "100", "password": "pw-100"}))).await;
        assert_eq!(st, StatusCode::CREATED);
        assert!(was_notified(&s).await);
        let (st, body) = call(&s, Method::GET, "/accounts", t, None).await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(body.as_array().unwrap().len(), 2);
        assert_eq!(body[0], serde_json::json!({"number": "100", "display_name": "100", "kind": "browser", "home_switch": null}));
        let text = body.to_string();
        assert!(!text.contains("pw-") && !text.contains("argon2") && !text.contains("ha1"), "{text}");

        // Switch still has an account: 400 naming it.
        let (st, body) = call(&s, Method::DELETE, "/switches/sw1", t, None).await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"], "invalid");
        assert!(body["message"].as_str().unwrap().contains("200"), "{body}");
        assert!(!was_notified(&s).await);

        let (st, body) = call(&s, Method::DELETE, "/accounts/200", t, None).await;
        assert_eq!(st, StatusCode::NO_CONTENT, "{body}");
        assert!(was_notified(&s).await);
        let (st, body) = call(&s, Method::DELETE, "/accounts/200", t, None).await;
        assert_eq!(st, StatusCode::NOT_FOUND);
        assert_eq!(body["error"], "not_found");
        let (st, _) = call(&s, Method::DELETE, "/switches/sw1", t, None).await;
        assert_eq!(st, StatusCode::NO_CONTENT);
        let (st, body) = call(&s, Method::GET, "/switches", t, None).await;
        assert_eq!((st, body), (StatusCode::OK, serde_json::json!([])));
    }

    #[tokio::test]
    async fn bad_requests_change_nothing() {
        let s = state(Some(TOKEN)).await;
        let t = Some(TOKEN);
        let cases = [
            ("/accounts", serde_json::json!({"number": "1 2", "password": "x"}), StatusCode::BAD_REQUEST, "invalid"),
            ("/accounts", serde_json::json!({"number": "100", "password": ""}), StatusCode::BAD_REQUEST, "invalid"),
            (
                "/accounts",
                serde_json::json!({"number": "100", "password": "x", "kind": "deskphone"}),
                StatusCode::BAD_REQUEST,
                "invalid",
            ),
            (
                "/accounts",
                serde_json::json!({"number": "100", "password": "x", "kind": "fax"}),
                StatusCode::BAD_REQUEST,
                "invalid",
            ),
            (
                "/accounts",
                serde_json::json!({"number": "100", "password": "x", "home_switch": "sw"}),
                StatusCode::BAD_REQUEST,
                "invalid",
            ),
            ("/accounts", serde_json::json!({"number": "100"}), StatusCode::BAD_REQUEST, "invalid"),
            (
                "/accounts",
                serde_json::json!({"number": "100", "password": "x", "switch": "nope"}),
                StatusCode::NOT_FOUND,
                "not_found",
            ),
            ("/switches", serde_json::json!({"id": "sw1", "secret": "tiny-S3CR"}), StatusCode::BAD_REQUEST, "invalid"),
            ("/switches", serde_json::json!({"id": "bad id", "secret": "x".repeat(32)}), StatusCode::BAD_REQUEST, "invalid"),
        ];
        for (uri, body, status, code) in cases {
            let (st, resp) = call(&s, Method::POST, uri, t, Some(body.clone())).await;
            assert_eq!((st, resp["error"].as_str().unwrap()), (status, code), "{body} → {resp}");
            assert!(!resp.to_string().contains("S3CR"), "secret echoed: {resp}");
        }
        assert!(s.dir.list_accounts().await.unwrap().is_empty());
        assert!(s.dir.list_switches().await.unwrap().is_empty());
        assert!(!was_notified(&s).await);

        // Not JSON at all.
        let req = Request::builder()
            .method(Method::POST)
            .uri("/accounts")
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from("{nope"))
            .unwrap();
        let resp = router(s.clone()).oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

        // Duplicate → 409.
        let ok = serde_json::json!({"number": "100", "password": "pw"});
        assert_eq!(call(&s, Method::POST, "/accounts", t, Some(ok.clone())).await.0, StatusCode::CREATED);
        let (st, body) = call(&s, Method::POST, "/accounts", t, Some(ok)).await;
        assert_eq!((st, body["error"].as_str().unwrap()), (StatusCode::CONFLICT, "already_exists"));
        // Unknown route → JSON 404.
        let (st, body) = call(&s, Method::GET, "/nothing", t, None).await;
        assert_eq!((st, body["error"].as_str().unwrap()), (StatusCode::NOT_FOUND, "not_found"));
    }

    #[tokio::test]
    async fn calls_listing() {
        let s = state(Some(TOKEN)).await;
        let rec = |id: &str, caller: &str, callee: &str, at: i64| CallRecord {
            call_id: id.into(),
            caller: caller.into(),
            callee: callee.into(),
            switch_id: Some("sw1".into()),
            started_ms: at,
            ended_ms: at + 10,
            outcome: Outcome::Busy,
            duration_ms: None,
            trace: vec![Step::A, Step::B1, Step::B2, Step::B4, Step::B5],
        };
        s.dir
            .insert_call_records(&[rec("c1", "100", "200", 1), rec("c2", "300", "400", 2), rec("c3", "200", "300", 3)])
            .await
            .unwrap();
        let t = Some(TOKEN);
        let (st, body) = call(&s, Method::GET, "/calls", t, None).await;
        assert_eq!(st, StatusCode::OK);
        let ids: Vec<_> = body.as_array().unwrap().iter().map(|c| c["call_id"].as_str().unwrap().to_string()).collect();
        assert_eq!(ids, ["c3", "c2", "c1"]);
        assert_eq!(body[0]["trace"], serde_json::json!(["A", "B1", "B2", "B4", "B5"]));
        assert_eq!(body[0]["outcome"], "busy");
        let (_, body) = call(&s, Method::GET, "/calls?number=200&limit=1", t, None).await;
        assert_eq!(body.as_array().unwrap().len(), 1);
        assert_eq!(body[0]["call_id"], "c3");
        let (_, body) = call(&s, Method::GET, "/calls?number=&limit=", t, None).await;
        assert_eq!(body.as_array().unwrap().len(), 3);
        for bad in ["/calls?limit=0", "/calls?limit=abc", "/calls?limit=99999999", "/calls?number=a%20b"] {
            let (st, body) = call(&s, Method::GET, bad, t, None).await;
            assert_eq!((st, body["error"].as_str().unwrap()), (StatusCode::BAD_REQUEST, "invalid"), "{bad}");
        }
    }
}
