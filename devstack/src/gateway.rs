//! A stand-in for Supabase's API gateway (Kong) in front of postrust, so the
//! local stack has the limits a real project has and the application talks to
//! it exactly as it talks to Supabase:
//!
//! - PostgREST is served under `/rest/v1`; any other path is 404.
//! - Every request needs an `apikey` (header or query parameter). The new
//!   `sb_secret_…` / `sb_publishable_…` keys are not JWTs: the gateway turns
//!   them into a short-lived `service_role` / `anon` JWT for postrust. A secret
//!   key from a browser, or a new key in `Authorization`, is refused. Legacy
//!   JWT keys (`anon`, `service_role`) still work.
//! - Answers of tables, views and set-returning functions are cut to "Max rows"
//!   (PostgREST's `db-max-rows`), which postrust 3.1 does not apply to RPCs.
//!
//! `/_stack/stats` counts proxied requests per path, so tests can tell how
//! often a function was called. `POST /_stack/faults` makes every answer
//! slow (`{"latency_ms": 500}`) or every key refused, as after a rotation
//! (`{"refuse_keys": true}`), until set back; `{"secret_key": "sb_secret_…"}`
//! accepts another secret key in place of the one it has, as a rotation in
//! the dashboard does.

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::alphabet::URL_SAFE;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Where Supabase serves PostgREST.
pub const REST_PREFIX: &str = "/rest/v1";
/// Request bodies a backfill sends (a batch of vectors) run to tens of MB.
pub const BODY_LIMIT: usize = 256 * 1024 * 1024;
/// Lifetime of the JWTs the gateway mints, and how often it mints a new one:
/// reusing a token lets postrust answer from its verification cache.
const TOKEN_LIFETIME_SECS: u64 = 300;
const TOKEN_REUSE: Duration = Duration::from_secs(60);
/// The channel PostgREST listens on for `NOTIFY pgrst, 'reload schema'`.
const RELOAD_CHANNEL: &str = "pgrst";

/// The JSON postrust takes in `PGRST_ROLE_SETTINGS`, built from the role
/// settings stored in the database (scripts/stack.sh runs the same query).
pub const ROLE_SETTINGS_SQL: &str = include_str!("../../infra/local/postrust_role_settings.sql");

/// JWT parts may come with or without base64 padding.
const LENIENT_B64: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

#[derive(Clone)]
pub struct Config {
    /// Base URL of postrust, e.g. `http://127.0.0.1:55436`.
    pub upstream: String,
    /// The HS256 secret postrust checks JWTs with.
    pub jwt_secret: String,
    /// The accepted `sb_secret_…` key (role `service_role`).
    pub secret_key: String,
    /// The accepted `sb_publishable_…` key (role `anon`).
    pub publishable_key: String,
    /// Supabase's "Max rows": the most elements a table, view or
    /// set-returning function answers with.
    pub max_rows: usize,
    /// Where to learn which functions return sets (`pg_proc.proretset`).
    pub database_url: String,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("upstream", &self.upstream)
            .field("max_rows", &self.max_rows)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Refuses settings that would make the gateway behave unlike Supabase's.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.upstream.starts_with("http://") || self.upstream.starts_with("https://"),
            "--upstream must be an http:// URL"
        );
        anyhow::ensure!(
            !self.jwt_secret.is_empty(),
            "--jwt-secret must not be empty"
        );
        anyhow::ensure!(
            self.secret_key.starts_with("sb_secret_") && self.secret_key.len() > 20,
            "--secret-key must be an sb_secret_... key"
        );
        anyhow::ensure!(
            self.publishable_key.starts_with("sb_publishable_") && self.publishable_key.len() > 25,
            "--publishable-key must be an sb_publishable_... key"
        );
        anyhow::ensure!(self.max_rows >= 1, "--max-rows must be at least 1");
        Ok(())
    }
}

/// The Postgres roles the gateway hands out for the new keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Anon,
    ServiceRole,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Anon => "anon",
            Role::ServiceRole => "service_role",
        }
    }
}

/// Signs `claims` as an HS256 JWT.
pub fn sign_jwt(secret: &[u8], claims: &Value) -> Option<String> {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).ok()?;
    mac.update(header.as_bytes());
    mac.update(b".");
    mac.update(payload.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    Some(format!("{header}.{payload}.{signature}"))
}

/// The claims of an HS256 JWT signed with `secret` that has not expired.
pub fn verify_jwt(secret: &[u8], token: &str) -> Option<Value> {
    let mut parts = token.split('.');
    let (header, payload, signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let head: Value = serde_json::from_slice(&LENIENT_B64.decode(header).ok()?).ok()?;
    if head.get("alg").and_then(Value::as_str) != Some("HS256") {
        return None;
    }
    let signature = LENIENT_B64.decode(signature).ok()?;
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).ok()?;
    mac.update(header.as_bytes());
    mac.update(b".");
    mac.update(payload.as_bytes());
    mac.verify_slice(&signature).ok()?;
    let claims: Value = serde_json::from_slice(&LENIENT_B64.decode(payload).ok()?).ok()?;
    if let Some(exp) = claims.get("exp").and_then(Value::as_f64) {
        if exp < unix_now() as f64 {
            return None;
        }
    }
    Some(claims)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Compares keys in time independent of where they differ.
fn same_key(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// One minted token per role, reused for [`TOKEN_REUSE`].
struct Tokens {
    secret: Vec<u8>,
    anon: RwLock<Option<(Instant, HeaderValue)>>,
    service_role: RwLock<Option<(Instant, HeaderValue)>>,
}

impl Tokens {
    fn bearer(&self, role: Role) -> Option<HeaderValue> {
        let slot = match role {
            Role::Anon => &self.anon,
            Role::ServiceRole => &self.service_role,
        };
        if let Some((at, value)) = &*slot.read().unwrap_or_else(PoisonError::into_inner) {
            if at.elapsed() < TOKEN_REUSE {
                return Some(value.clone());
            }
        }
        let now = unix_now();
        let claims = json!({
            "role": role.name(),
            "iss": "supabase-gateway",
            "iat": now,
            "exp": now + TOKEN_LIFETIME_SECS,
        });
        let jwt = sign_jwt(&self.secret, &claims)?;
        let value = HeaderValue::try_from(format!("Bearer {jwt}")).ok()?;
        *slot.write().unwrap_or_else(PoisonError::into_inner) =
            Some((Instant::now(), value.clone()));
        Some(value)
    }
}

/// Why the gateway refused a request, with Supabase's answer for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    NoKey,
    InvalidKey,
    SecretKeyInBrowser,
    KeyInAuthorization,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = match self {
            Refusal::NoKey => json!({
                "message": "No API key found in request",
                "hint": "No `apikey` request header or url param was found.",
            }),
            Refusal::InvalidKey => json!({
                "message": "Invalid API key",
                "hint": "Double check your Supabase `anon` or `service_role` API key.",
            }),
            Refusal::SecretKeyInBrowser => json!({
                "message": "Forbidden use of secret API key in browser",
                "hint": "Secret API keys can only be used in a protected environment and should never be used in a browser. Use a publishable key instead.",
            }),
            Refusal::KeyInAuthorization => json!({
                "message": "Invalid authorization header",
                "hint": "sb_secret_ and sb_publishable_ keys are not JWTs: send them in the `apikey` header only, and only a user's JWT in `Authorization`.",
            }),
        };
        (StatusCode::UNAUTHORIZED, Json(body)).into_response()
    }
}

/// What an accepted `apikey` stands for.
enum Caller<'a> {
    /// A new key: the gateway mints the role's JWT.
    Minted(Role),
    /// A legacy JWT key: it is its own bearer token.
    Legacy(&'a str),
}

/// Which functions of the public schema return sets, cached from `pg_proc`,
/// forgotten on `NOTIFY pgrst` (a migration changed the schema) and when the
/// listening connection drops (a notification may have been missed).
struct Catalog {
    database_url: String,
    returns_set: RwLock<HashMap<String, bool>>,
    /// Bumped on every invalidation, so a reload racing one does not store
    /// what it read before it.
    generation: AtomicU64,
    /// Bumped on every reload, so requests queued behind one do not repeat it.
    reloads: AtomicU64,
    client: tokio::sync::Mutex<Option<tokio_postgres::Client>>,
}

impl Catalog {
    fn new(database_url: String) -> Arc<Self> {
        Arc::new(Self {
            database_url,
            returns_set: RwLock::new(HashMap::new()),
            generation: AtomicU64::new(0),
            reloads: AtomicU64::new(0),
            client: tokio::sync::Mutex::new(None),
        })
    }

    fn cached(&self, name: &str) -> Option<bool> {
        self.returns_set
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .copied()
    }

    fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.returns_set
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Whether the function returns a set. A function the database does not
    /// know (postrust answers 404 for it anyway), or a database out of reach,
    /// counts as returning one value: nothing is cut.
    async fn returns_set(self: &Arc<Self>, name: &str) -> bool {
        if let Some(known) = self.cached(name) {
            return known;
        }
        if let Err(e) = self.reload().await {
            tracing::warn!(error = %e, "cannot read the function list from Postgres; RPC answers are not cut");
        }
        self.cached(name).unwrap_or(false)
    }

    async fn reload(self: &Arc<Self>) -> anyhow::Result<()> {
        let seen = self.reloads.load(Ordering::SeqCst);
        let mut client = self.client.lock().await;
        if self.reloads.load(Ordering::SeqCst) != seen {
            return Ok(());
        }
        for _ in 0..5 {
            let generation = self.generation.load(Ordering::SeqCst);
            if client.as_ref().is_none_or(|c| c.is_closed()) {
                *client = Some(self.connect().await?);
            }
            let Some(db) = client.as_ref() else {
                anyhow::bail!("no database connection");
            };
            let rows = db
                .query(
                    "SELECT p.proname::text, bool_or(p.proretset) FROM pg_proc p \
                     JOIN pg_namespace n ON n.oid = p.pronamespace \
                     WHERE n.nspname = 'public' GROUP BY p.proname",
                    &[],
                )
                .await?;
            let map: HashMap<String, bool> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            let mut cache = self
                .returns_set
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            if self.generation.load(Ordering::SeqCst) == generation {
                *cache = map;
                self.reloads.fetch_add(1, Ordering::SeqCst);
                return Ok(());
            }
        }
        anyhow::bail!("the schema kept changing while it was read")
    }

    /// A connection that LISTENs on the reload channel; its task forgets the
    /// cache on each notification and when the connection ends.
    async fn connect(self: &Arc<Self>) -> anyhow::Result<tokio_postgres::Client> {
        let (client, mut connection) =
            tokio_postgres::connect(&self.database_url, tokio_postgres::NoTls).await?;
        let catalog: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                        if n.channel() == RELOAD_CHANNEL {
                            tracing::debug!(payload = n.payload(), "schema reload notified");
                            match catalog.upgrade() {
                                Some(c) => c.invalidate(),
                                None => return,
                            }
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "the database connection failed");
                        break;
                    }
                    None => break,
                }
            }
            if let Some(c) = catalog.upgrade() {
                c.invalidate();
            }
        });
        client
            .batch_execute(&format!("LISTEN {RELOAD_CHANNEL}"))
            .await?;
        Ok(client)
    }
}

#[derive(Default)]
struct Counts {
    requests: HashMap<String, u64>,
    statuses: HashMap<u16, u64>,
    cut: u64,
    rejected: u64,
}

/// Counts for `/_stack/stats`: one short lock per request.
#[derive(Default)]
struct Stats(Mutex<Counts>);

impl Stats {
    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn proxied(&self, path: &str, status: StatusCode, cut: bool) {
        let mut c = self.lock();
        match c.requests.get_mut(path) {
            Some(n) => *n += 1,
            None => {
                c.requests.insert(path.to_string(), 1);
            }
        }
        *c.statuses.entry(status.as_u16()).or_default() += 1;
        if cut {
            c.cut += 1;
        }
    }

    fn rejected(&self) {
        self.lock().rejected += 1;
    }

    fn snapshot(&self) -> Value {
        let c = self.lock();
        let statuses: serde_json::Map<String, Value> = c
            .statuses
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        json!({
            "requests": c.requests,
            "total": c.requests.values().sum::<u64>(),
            "statuses": statuses,
            "cut": c.cut,
            "rejected": c.rejected,
        })
    }

    fn reset(&self) {
        *self.lock() = Counts::default();
    }
}

struct Gateway {
    upstream: String,
    /// A fault may replace it while the gateway runs.
    secret_key: RwLock<String>,
    publishable_key: String,
    jwt_secret: Vec<u8>,
    max_rows: usize,
    tokens: Tokens,
    catalog: Arc<Catalog>,
    http: reqwest::Client,
    stats: Stats,
    faults: Faults,
}

/// Faults a test turns on while the gateway runs.
#[derive(Default)]
struct Faults {
    latency_ms: AtomicU64,
    refuse_keys: std::sync::atomic::AtomicBool,
}

impl Gateway {
    /// The `Authorization` header postrust gets, or why the request is refused.
    fn authorize(&self, headers: &HeaderMap, apikey: Option<&str>) -> Result<HeaderValue, Refusal> {
        let apikey = apikey.ok_or(Refusal::NoKey)?;
        let secret_key = self
            .secret_key
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let caller = if same_key(apikey.as_bytes(), secret_key.as_bytes()) {
            let browser = headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ua| ua.contains("Mozilla"));
            if browser {
                return Err(Refusal::SecretKeyInBrowser);
            }
            Caller::Minted(Role::ServiceRole)
        } else if same_key(apikey.as_bytes(), self.publishable_key.as_bytes()) {
            Caller::Minted(Role::Anon)
        } else {
            let role = verify_jwt(&self.jwt_secret, apikey).and_then(|claims| {
                claims
                    .get("role")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            });
            match role.as_deref() {
                Some("anon" | "service_role") => Caller::Legacy(apikey),
                _ => return Err(Refusal::InvalidKey),
            }
        };
        if let Some(given) = headers.get(header::AUTHORIZATION) {
            let token = given
                .to_str()
                .ok()
                .and_then(|v| {
                    v.get(..7)
                        .filter(|p| p.eq_ignore_ascii_case("bearer "))
                        .and_then(|_| v.get(7..))
                })
                .map(str::trim);
            if token
                .is_some_and(|t| t.starts_with("sb_secret_") || t.starts_with("sb_publishable_"))
            {
                return Err(Refusal::KeyInAuthorization);
            }
            // A user's session JWT: postrust checks it.
            return Ok(given.clone());
        }
        match caller {
            Caller::Minted(role) => self.tokens.bearer(role).ok_or(Refusal::InvalidKey),
            Caller::Legacy(jwt) => {
                HeaderValue::try_from(format!("Bearer {jwt}")).map_err(|_| Refusal::InvalidKey)
            }
        }
    }

    /// The body cut to `max_rows` elements where PostgREST's `db-max-rows`
    /// would cut it: a JSON array from a table or view (GET) or from a
    /// set-returning function (RPC).
    async fn cap(
        &self,
        method: &Method,
        path: &str,
        status: StatusCode,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> Option<Bytes> {
        if !status.is_success() {
            return None;
        }
        let function = match path.strip_prefix("/rpc/") {
            Some(name) if *method == Method::GET || *method == Method::POST => Some(name),
            Some(_) => return None,
            None if *method == Method::GET && path != "/" => None,
            None => return None,
        };
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.contains("json"));
        if !json {
            return None;
        }
        let at = cut_point(body, self.max_rows)?;
        if let Some(name) = function {
            if !self.catalog.returns_set(&percent_decode(name)).await {
                return None;
            }
        }
        let mut cut = Vec::with_capacity(at + 1);
        cut.extend_from_slice(&body[..at]);
        cut.push(b']');
        Some(Bytes::from(cut))
    }
}

/// Headers that belong to one connection, or that the gateway sets itself.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "content-length"
            | "host"
    )
}

/// The byte offset of the comma after the `max`-th element of a top-level
/// JSON array, when the array has more than `max` elements.
pub fn cut_point(body: &[u8], max: usize) -> Option<usize> {
    let start = body.iter().position(|b| !b.is_ascii_whitespace())?;
    if body[start] != b'[' || max == 0 {
        return None;
    }
    let (mut depth, mut elements) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for (i, &b) in body.iter().enumerate().skip(start) {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => depth += 1,
            b']' | b'}' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return None;
                }
            }
            b',' if depth == 1 => {
                elements += 1;
                if elements == max {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// `Content-Range` of a cut answer, keeping the upstream's start and total.
fn cut_range(upstream: Option<&HeaderValue>, n: usize) -> (String, Option<u64>) {
    let text = upstream.and_then(|v| v.to_str().ok()).unwrap_or("");
    let (range, total) = text.split_once('/').unwrap_or((text, "*"));
    let start: u64 = range
        .split_once('-')
        .and_then(|(a, _)| a.trim().parse().ok())
        .unwrap_or(0);
    let total = total.trim().parse::<u64>().ok();
    let end = start + n as u64 - 1;
    let shown = total.map_or_else(|| "*".to_string(), |t| t.to_string());
    (format!("{start}-{end}/{shown}"), total)
}

fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.contains('%') {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// The `apikey` query parameter, and the query without it (postrust would
/// read it as a column filter).
fn split_apikey(query: Option<&str>) -> (Option<String>, Option<Cow<'_, str>>) {
    let Some(q) = query.filter(|q| !q.is_empty()) else {
        return (None, None);
    };
    if !q.contains("apikey") {
        return (None, Some(Cow::Borrowed(q)));
    }
    let mut key = None;
    let rest: Vec<&str> = q
        .split('&')
        .filter(|pair| match pair.split_once('=') {
            Some(("apikey", v)) => {
                key.get_or_insert_with(|| percent_decode(v).into_owned());
                false
            }
            _ => true,
        })
        .collect();
    let rest = (!rest.is_empty()).then(|| Cow::Owned(rest.join("&")));
    (key, rest)
}

fn message(status: StatusCode, text: &str) -> Response {
    (status, Json(json!({ "message": text }))).into_response()
}

async fn proxy(
    State(gw): State<Arc<Gateway>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = match uri.path().strip_prefix(REST_PREFIX) {
        Some("") => "/",
        Some(p) if p.starts_with('/') => p,
        _ => {
            gw.stats.rejected();
            return message(StatusCode::NOT_FOUND, "no Route matched with those values");
        }
    };
    let (query_key, query) = split_apikey(uri.query());
    let header_key = headers
        .get("apikey")
        .map(|v| v.to_str().unwrap_or("\u{0}invalid"));
    let latency = gw.faults.latency_ms.load(Ordering::Relaxed);
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    let authorized = if gw.faults.refuse_keys.load(Ordering::Relaxed) {
        Err(Refusal::InvalidKey)
    } else {
        gw.authorize(&headers, header_key.or(query_key.as_deref()))
    };
    let authorization = match authorized {
        Ok(a) => a,
        Err(refusal) => {
            gw.stats.rejected();
            return refusal.into_response();
        }
    };
    let mut url = String::with_capacity(gw.upstream.len() + uri.path().len() + 64);
    url.push_str(&gw.upstream);
    url.push_str(path);
    if let Some(q) = &query {
        url.push('?');
        url.push_str(q);
    }
    let mut forward = HeaderMap::with_capacity(headers.len() + 1);
    for (name, value) in &headers {
        if !hop_by_hop(name)
            && name != header::AUTHORIZATION
            && name != header::ACCEPT_ENCODING
            && name.as_str() != "apikey"
        {
            forward.append(name.clone(), value.clone());
        }
    }
    forward.insert(header::AUTHORIZATION, authorization);
    let mut request = gw.http.request(method.clone(), &url).headers(forward);
    if !body.is_empty() {
        request = request.body(body);
    }
    let answer = match request.send().await {
        Ok(a) => a,
        Err(e) => return upstream_failed(&gw, path, &e),
    };
    let status = answer.status();
    let mut out_headers = HeaderMap::with_capacity(answer.headers().len() + 1);
    for (name, value) in answer.headers() {
        if !hop_by_hop(name) {
            out_headers.append(name.clone(), value.clone());
        }
    }
    let body = match answer.bytes().await {
        Ok(b) => b,
        Err(e) => return upstream_failed(&gw, path, &e),
    };
    let mut status_out = status;
    let body = match gw.cap(&method, path, status, &out_headers, &body).await {
        Some(cut) => {
            let (range, total) = cut_range(out_headers.get(header::CONTENT_RANGE), gw.max_rows);
            if let Ok(v) = HeaderValue::try_from(range) {
                out_headers.insert(header::CONTENT_RANGE, v);
            }
            // PostgREST answers 206 when it knows there are more rows.
            if total.is_some() {
                status_out = StatusCode::PARTIAL_CONTENT;
            }
            gw.stats.proxied(path, status_out, true);
            cut
        }
        None => {
            gw.stats.proxied(path, status_out, false);
            body
        }
    };
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status_out;
    *response.headers_mut() = out_headers;
    response
}

/// Kong's answers when the upstream is down or slow: 502 and 504, which
/// clients read as transient.
fn upstream_failed(gw: &Gateway, path: &str, e: &reqwest::Error) -> Response {
    let (status, text) = if e.is_timeout() {
        (
            StatusCode::GATEWAY_TIMEOUT,
            "The upstream server is timing out",
        )
    } else {
        (
            StatusCode::BAD_GATEWAY,
            "An invalid response was received from the upstream server",
        )
    };
    tracing::warn!(path, error = %e, "upstream request failed");
    gw.stats.proxied(path, status, false);
    message(status, text)
}

async fn stats(State(gw): State<Arc<Gateway>>) -> Json<Value> {
    Json(gw.stats.snapshot())
}

async fn reset_stats(State(gw): State<Arc<Gateway>>) -> StatusCode {
    gw.stats.reset();
    StatusCode::NO_CONTENT
}

/// `{"latency_ms": N, "refuse_keys": bool, "secret_key": "sb_secret_…"}`; a
/// field left out is left as it is.
async fn set_faults(State(gw): State<Arc<Gateway>>, Json(f): Json<Value>) -> StatusCode {
    if let Some(ms) = f.get("latency_ms").and_then(Value::as_u64) {
        gw.faults.latency_ms.store(ms, Ordering::Relaxed);
    }
    if let Some(refuse) = f.get("refuse_keys").and_then(Value::as_bool) {
        gw.faults.refuse_keys.store(refuse, Ordering::Relaxed);
    }
    if let Some(key) = f.get("secret_key").and_then(Value::as_str) {
        if !key.starts_with("sb_secret_") {
            return StatusCode::UNPROCESSABLE_ENTITY;
        }
        *gw.secret_key
            .write()
            .unwrap_or_else(PoisonError::into_inner) = key.to_string();
    }
    StatusCode::NO_CONTENT
}

/// The gateway's routes; starts reading the function list in the background.
pub fn router(config: Config) -> anyhow::Result<Router> {
    config.validate()?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(300))
        .tcp_nodelay(true)
        .build()?;
    let catalog = Catalog::new(config.database_url.clone());
    let warm = Arc::clone(&catalog);
    tokio::spawn(async move {
        if let Err(e) = warm.reload().await {
            tracing::warn!(error = %e, "cannot read the function list from Postgres yet");
        }
    });
    let state = Arc::new(Gateway {
        upstream: config.upstream.trim_end_matches('/').to_string(),
        tokens: Tokens {
            secret: config.jwt_secret.as_bytes().to_vec(),
            anon: RwLock::new(None),
            service_role: RwLock::new(None),
        },
        jwt_secret: config.jwt_secret.into_bytes(),
        secret_key: RwLock::new(config.secret_key),
        publishable_key: config.publishable_key,
        max_rows: config.max_rows,
        catalog,
        http,
        stats: Stats::default(),
        faults: Faults::default(),
    });
    Ok(Router::new()
        .route("/_stack/health", get(|| async { "ok" }))
        .route("/_stack/stats", get(stats))
        .route("/_stack/stats/reset", post(reset_stats))
        .route("/_stack/faults", post(set_faults))
        .fallback(proxy)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state))
}

/// Serves until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, config: Config) -> anyhow::Result<()> {
    tracing::info!(upstream = %config.upstream, max_rows = config.max_rows, "supabase-gateway serving");
    axum::serve(listener, router(config)?).await?;
    Ok(())
}

/// `PGRST_ROLE_SETTINGS` for postrust from the database's role settings.
pub async fn postrust_role_settings(database_url: &str) -> anyhow::Result<String> {
    let (client, connection) = tokio_postgres::connect(database_url, tokio_postgres::NoTls).await?;
    let task = tokio::spawn(connection);
    let messages = client.simple_query(ROLE_SETTINGS_SQL).await?;
    drop(client);
    let _ = task.await;
    messages
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .ok_or_else(|| anyhow::anyhow!("the role settings query returned no row"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_point_counts_top_level_elements_only() {
        let body = br#"[{"a":[1,2,3],"s":"x,]\"y"},{"b":{"c":","}},3,[4,5]]"#;
        assert_eq!(cut_point(body, 4), None);
        assert_eq!(cut_point(body, 9), None);
        let at = cut_point(body, 2).unwrap();
        let mut cut = body[..at].to_vec();
        cut.push(b']');
        let v: Value = serde_json::from_slice(&cut).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 2);
        assert_eq!(v[1]["b"]["c"], ",");
        assert_eq!(cut_point(b"  []", 1), None);
        assert_eq!(cut_point(br#"{"a":[1,2]}"#, 1), None);
        assert_eq!(cut_point(b"[1,2]", 1), Some(2));
    }

    #[test]
    fn jwts_round_trip_and_tampering_is_caught() {
        let claims = json!({"role": "anon", "exp": unix_now() + 60});
        let token = sign_jwt(b"secret", &claims).unwrap();
        assert_eq!(verify_jwt(b"secret", &token), Some(claims));
        assert_eq!(verify_jwt(b"other", &token), None);
        let expired = sign_jwt(b"secret", &json!({"role": "anon", "exp": 1})).unwrap();
        assert_eq!(verify_jwt(b"secret", &expired), None);
        assert_eq!(verify_jwt(b"secret", "sb_secret_abc"), None);
    }

    #[test]
    fn the_apikey_parameter_is_taken_out_of_the_query() {
        let (key, rest) = split_apikey(Some("select=id&apikey=sb%5Fx&limit=1"));
        assert_eq!(key.as_deref(), Some("sb_x"));
        assert_eq!(rest.as_deref(), Some("select=id&limit=1"));
        let (key, rest) = split_apikey(Some("apikey=k"));
        assert_eq!((key.as_deref(), rest), (Some("k"), None));
        let (key, rest) = split_apikey(Some("id=eq.1"));
        assert_eq!((key, rest.as_deref()), (None, Some("id=eq.1")));
    }

    #[test]
    fn a_cut_keeps_the_start_and_total() {
        assert_eq!(cut_range(None, 5), ("0-4/*".to_string(), None));
        let v = HeaderValue::from_static("10-99/500");
        assert_eq!(cut_range(Some(&v), 5), ("10-14/500".to_string(), Some(500)));
    }

    #[test]
    fn debug_hides_the_keys() {
        let c = Config {
            upstream: "http://127.0.0.1:1".into(),
            jwt_secret: "jwt-secret-value".into(),
            secret_key: "sb_secret_value".into(),
            publishable_key: "sb_publishable_value".into(),
            max_rows: 1000,
            database_url: "postgres://u:pw@h/db".into(),
        };
        let text = format!("{c:?}");
        for hidden in [
            "jwt-secret-value",
            "sb_secret_value",
            "sb_publishable_value",
            "pw@",
        ] {
            assert!(!text.contains(hidden), "{text}");
        }
    }
}
