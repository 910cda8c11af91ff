//! The HTTP side: routes, authentication, errors in OpenAI's shape, the event streams.
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State as AxState};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};

use super::job::{new_id, valid_id, BadRequest, Checker, Job, Status};
use super::state::State;
use crate::cli::request::unix_time;

/// The page (plain HTML, CSS and JavaScript; nothing loaded from elsewhere).
pub const PAGE: &str = include_str!("page.html");

pub struct Server {
    pub state: Arc<State>,
    pub checker: Checker,
    pub api_key: Option<String>,
    pub model: String,
    /// The server's settings for the page (model, device, memory mode).
    pub info: Value,
    pub max_queue: usize,
    pub max_body: usize,
    /// `--body-timeout`.
    pub body_timeout: Duration,
    /// The Host and Origin rules ([`Guard`]).
    pub guard: Guard,
    /// Open event streams, in total and per job ([`MAX_STREAMS`], [`MAX_STREAMS_PER_JOB`]).
    pub streams: Mutex<HashMap<String, usize>>,
}

/// Most event streams open at once, and per job; more get 429 with Retry-After.
pub const MAX_STREAMS: usize = 64;
pub const MAX_STREAMS_PER_JOB: usize = 16;

/// Browser-facing rules (DNS rebinding, cross-site requests).
///
/// * Host: an IP address (a rebinding page reaches the server under a *name*), `localhost`
///   (and `*.localhost`), the `--host` name, or an `--allowed-host` name; anything else gets
///   403. The port is not compared.
/// * State-changing methods (POST, DELETE, ...): `Sec-Fetch-Site` must be `same-origin` or
///   `none` when sent, and `Origin`, when sent, must be the server's own origin (the Host of
///   the request) or an `--allow-origin`; anything else gets 403. Another port of 127.0.0.1 is
///   another origin (and "same-site" for the browser: refused too).
#[derive(Clone, Debug, Default)]
pub struct Guard {
    /// Lowercase host names accepted besides IP addresses and localhost.
    pub hosts: Vec<String>,
    /// Lowercase origins (`scheme://host[:port]`) accepted besides the server's own.
    pub origins: Vec<String>,
}

/// The host part of a Host header value (`name`, `name:port`, `[v6]:port`), lowercase.
fn host_name(h: &str) -> String {
    let h = h.trim();
    let name = if let Some(rest) = h.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        match h.rsplit_once(':') {
            Some((n, p)) if p.bytes().all(|c| c.is_ascii_digit()) => n,
            _ => h,
        }
    };
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl Guard {
    pub fn host_ok(&self, host: &str) -> bool {
        let n = host_name(host);
        !n.is_empty()
            && (n.parse::<std::net::IpAddr>().is_ok()
                || n == "localhost"
                || n.ends_with(".localhost")
                || self.hosts.contains(&n))
    }

    /// Whether a state-changing request with these headers comes from the server's own page
    /// (or a tool that is no browser, which sends neither header).
    pub fn origin_ok(&self, host: &str, origin: Option<&str>, fetch_site: Option<&str>) -> bool {
        let allowed = |o: &str| {
            let o = o.trim().trim_end_matches('/').to_ascii_lowercase();
            self.origins.contains(&o)
        };
        if let Some(o) = origin {
            let own = ["http://", "https://"].iter().any(|s| {
                o.trim()
                    .eq_ignore_ascii_case(&format!("{s}{}", host.trim()))
            });
            return own || allowed(o);
        }
        match fetch_site.map(|s| s.trim().to_ascii_lowercase()) {
            None => true,
            Some(s) => s == "same-origin" || s == "none",
        }
    }
}

type S = Arc<Server>;

/// An error answer: `{"error": {"message", "type", "param", "code"}}`.
pub fn error(status: StatusCode, message: &str, param: Option<&str>, code: &str) -> Response {
    let kind = match status {
        StatusCode::UNAUTHORIZED => "authentication_error",
        StatusCode::NOT_FOUND => "not_found_error",
        StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
        s if s.is_server_error() => "server_error",
        _ => "invalid_request_error",
    };
    let mut r = (
        status,
        axum::Json(
            json!({"error": {"message": message, "type": kind, "param": param, "code": code}}),
        ),
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}

/// Largest list answer in bytes: items stop there (`has_more` says more exist).
pub const MAX_LIST_BYTES: usize = 1 << 20;

/// A JSON answer with a strong ETag (FNV-1a of the body) and `Cache-Control: no-cache`: a
/// client that sends the tag back in If-None-Match gets 304 with no body (the page's browser
/// revalidates this way on its own).
fn json_etag(headers: &axum::http::HeaderMap, v: &Value) -> Response {
    let body = v.to_string();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in body.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    let tag = format!("\"{h:016x}\"");
    let hit = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().trim_start_matches("W/") == tag || t.trim() == "*")
        });
    let mut r = if hit {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, "application/json")], body).into_response()
    };
    let hs = r.headers_mut();
    hs.insert(
        header::ETAG,
        HeaderValue::from_str(&tag).expect("hex digits"),
    );
    hs.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

fn not_found(id: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        &format!("no video with id {id:?}"),
        Some("id"),
        "not_found",
    )
}

/// Equal in time independent of where the strings differ (the length is not secret).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | ((a.len() ^ b.len()) >> 8) as u8;
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0 && a.len() == b.len()
}

async fn auth(AxState(s): AxState<S>, req: Request, next: Next) -> Response {
    if let Some(key) = &s.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, rest) = v.trim_start().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then_some(rest)
            })
            .unwrap_or("");
        if !constant_time_eq(given.trim().as_bytes(), key.as_bytes()) {
            return error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong API key: send `Authorization: Bearer KEY`",
                None,
                "invalid_api_key",
            );
        }
    }
    next.run(req).await
}

/// The Host and Origin rules of [`Guard`], before everything else.
async fn guard(AxState(s): AxState<S>, req: Request, next: Next) -> Response {
    let h = req.headers();
    let text = |k: header::HeaderName| h.get(k).and_then(|v| v.to_str().ok()).map(str::to_string);
    let host = text(header::HOST)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    if !s.guard.host_ok(&host) {
        return error(
            StatusCode::FORBIDDEN,
            &format!("Host {host:?} is not a name of this server (pass --allowed-host NAME to serve under it)"),
            None,
            "host_not_allowed",
        );
    }
    let safe = matches!(
        *req.method(),
        axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
    );
    if !safe {
        let origin = text(header::ORIGIN);
        let site = h
            .get("sec-fetch-site")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if !s.guard.origin_ok(&host, origin.as_deref(), site.as_deref()) {
            return error(
                StatusCode::FORBIDDEN,
                &format!(
                    "a page of another site ({}) may not change jobs here (pass --allow-origin ORIGIN to allow it)",
                    origin.as_deref().or(site.as_deref()).unwrap_or("?")
                ),
                None,
                "cross_origin",
            );
        }
    }
    next.run(req).await
}

pub fn router(s: S) -> Router {
    let api = Router::new()
        .route("/v1/videos", get(list).post(create))
        .route("/v1/videos/{id}", get(retrieve).delete(delete))
        .route("/v1/videos/{id}/content", get(content))
        .route("/v1/videos/{id}/events", get(events))
        .route("/v1/server", get(server_info))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(s.clone(), auth));
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/health", get(health))
        .merge(api)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route", None, "not_found") })
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "this method is not allowed on this route",
                None,
                "method_not_allowed",
            )
        })
        .layer(DefaultBodyLimit::max(s.max_body))
        .layer(middleware::from_fn_with_state(s.clone(), guard))
        .with_state(s)
}

/// The body of `GET /health`.
pub fn health_json(s: &Server) -> Value {
    let g = s.state.lock();
    json!({
        "status": "ok",
        "model_state": g.model_state,
        "queue_length": g.queue.len(),
        "running": g.running.is_some(),
    })
}

async fn health(AxState(s): AxState<S>) -> Response {
    axum::Json(health_json(&s)).into_response()
}

async fn server_info(AxState(s): AxState<S>) -> Response {
    let mut v = s.info.clone();
    v["model_id"] = json!(s.model);
    let d = &s.checker.defaults;
    v["defaults"] = json!({
        "num_frames": d.frames.unwrap_or(crate::cli::args::DEFAULT_FRAMES),
        "width": d.width.unwrap_or(crate::cli::args::DEFAULT_WIDTH),
        "height": d.height.unwrap_or(crate::cli::args::DEFAULT_HEIGHT),
        "num_inference_steps": d.steps.unwrap_or(crate::cli::args::DEFAULT_STEPS),
        "fps": crate::cli::args::DEFAULT_FPS,
        "guidance_scale": crate::cli::args::DEFAULT_GUIDANCE,
        "negative_prompt": crate::cli::args::DEFAULT_NEGATIVE_PROMPT,
        "size_multiple": s.checker.layout.size_multiple(),
    });
    axum::Json(v).into_response()
}

/// The body of a POST: at most `--max-body` bytes within `--body-timeout` (a client that
/// trickles it gets 408 and the connection is closed).
async fn read_body(s: &Server, req: Request) -> Result<Bytes, Response> {
    let limited = axum::body::to_bytes(req.into_body(), s.max_body);
    match tokio::time::timeout(s.body_timeout, limited).await {
        Err(_) => {
            let mut r = error(
                StatusCode::REQUEST_TIMEOUT,
                &format!(
                    "the request body did not arrive within {} s (--body-timeout)",
                    s.body_timeout.as_secs()
                ),
                None,
                "body_timeout",
            );
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            Err(r)
        }
        Ok(Err(e)) => {
            // axum wraps http-body-util's LengthLimitError ("length limit exceeded").
            let too_large = e.to_string().contains("length limit");
            let mut r = if too_large {
                error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("the request body is larger than {} bytes", s.max_body),
                    None,
                    "body_too_large",
                )
            } else {
                error(
                    StatusCode::BAD_REQUEST,
                    &format!("cannot read the request body: {e}"),
                    None,
                    "bad_body",
                )
            };
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            Err(r)
        }
        Ok(Ok(b)) => Ok(b),
    }
}

async fn create(AxState(s): AxState<S>, req: Request) -> Response {
    let ctype = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.to_ascii_lowercase());
    let essence = ctype
        .as_deref()
        .map(|c| c.split(';').next().unwrap_or("").trim().to_string());
    let multipart = match essence.as_deref() {
        None | Some("application/json") => false,
        Some("multipart/form-data") => true,
        Some(other) => {
            return error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                &format!("Content-Type {other} is not accepted: send application/json (curl: -H 'Content-Type: application/json') or multipart/form-data"),
                None,
                "unsupported_media_type",
            )
        }
    };
    let body = match read_body(&s, req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let body = if multipart {
        match super::multipart::to_json(ctype.as_deref().unwrap_or(""), &body) {
            Ok(b) => b,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &e.message,
                    e.param.as_deref(),
                    e.code,
                )
            }
        }
    } else {
        body.to_vec()
    };
    let (params, warnings) = match s.checker.check(&body) {
        Ok(p) => p,
        Err(BadRequest {
            message,
            param,
            code,
        }) => return error(StatusCode::BAD_REQUEST, &message, param.as_deref(), code),
    };
    let id = match new_id() {
        Ok(i) => i,
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("no random id: {e}"),
                None,
                "server_error",
            )
        }
    };
    let st = &s.state;
    let (job, pos) = {
        let mut g = st.lock();
        if g.queue.len() >= s.max_queue {
            g.counters.rejected_full += 1;
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                &format!(
                    "the queue is full ({} jobs waiting); try again later",
                    g.queue.len()
                ),
                None,
                "queue_full",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
            return r;
        }
        let job = Job {
            id: id.clone(),
            seq: g.next_seq,
            created_at: unix_time(),
            started_at: None,
            completed_at: None,
            status: Status::Queued,
            params,
            warnings,
            error: None,
            attempts: 0,
            timings: None,
            live: Default::default(),
        };
        // Saved before it is queued: an accepted job is on disk.
        if let Err(e) = st.save(&job) {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("cannot save the job: {e}"),
                None,
                "server_error",
            );
        }
        g.next_seq += 1;
        g.counters.submitted += 1;
        g.jobs.insert(id.clone(), job.clone());
        g.queue.push_back(id.clone());
        (job, g.queue.len())
    };
    st.wake.notify_all();
    st.emit(&id, "queue", json!({"queue_position": pos}));
    (StatusCode::OK, axum::Json(job.to_api(&s.model, Some(pos)))).into_response()
}

fn object(s: &Server, id: &str) -> Option<Value> {
    let g = s.state.lock();
    let j = g.jobs.get(id)?;
    Some(j.to_api(&s.model, State::queue_position(&g, id)))
}

async fn retrieve(
    AxState(s): AxState<S>,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
) -> Response {
    match object(&s, &id) {
        Some(v) => json_etag(&headers, &v),
        None => not_found(&id),
    }
}

#[derive(serde::Deserialize)]
struct ListQuery {
    limit: Option<String>,
    after: Option<String>,
    order: Option<String>,
}

async fn list(
    AxState(s): AxState<S>,
    Query(q): Query<ListQuery>,
    headers: axum::http::HeaderMap,
) -> Response {
    let limit = match q.limit.as_deref().map(str::parse::<usize>) {
        None => 20,
        Some(Ok(n)) if (1..=100).contains(&n) => n,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "limit must be a whole number from 1 to 100",
                Some("limit"),
                "invalid_value",
            )
        }
    };
    let asc = match q.order.as_deref() {
        None | Some("desc") => false,
        Some("asc") => true,
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "order must be \"asc\" or \"desc\"",
                Some("order"),
                "invalid_value",
            )
        }
    };
    let g = s.state.lock();
    let mut all: Vec<&Job> = g.jobs.values().collect();
    all.sort_by_key(|j| j.seq);
    if !asc {
        all.reverse();
    }
    let start = match &q.after {
        None => 0,
        Some(a) => match all.iter().position(|j| &j.id == a) {
            Some(i) => i + 1,
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("after = {a:?} is not the id of a video"),
                    Some("after"),
                    "invalid_value",
                )
            }
        },
    };
    let mut page: Vec<Value> = Vec::new();
    let mut bytes = 0;
    for j in all.iter().skip(start).take(limit) {
        let v = j.to_api(&s.model, State::queue_position(&g, &j.id));
        let n = v.to_string().len();
        if !page.is_empty() && bytes + n > MAX_LIST_BYTES {
            break; // the answer stays under MAX_LIST_BYTES; `after` pages on
        }
        bytes += n;
        page.push(v);
    }
    let has_more = start + page.len() < all.len();
    drop(g);
    json_etag(
        &headers,
        &json!({
            "object": "list",
            "first_id": page.first().map(|v| v["id"].clone()),
            "last_id": page.last().map(|v| v["id"].clone()),
            "has_more": has_more,
            "data": page,
        }),
    )
}

async fn delete(AxState(s): AxState<S>, Path(id): Path<String>) -> Response {
    let st = &s.state;
    let mut g = st.lock();
    let Some(status) = g.jobs.get(&id).map(|j| j.status) else {
        return not_found(&id);
    };
    match status {
        Status::Queued => {
            g.queue.retain(|q| q != &id);
            g.counters.cancelled += 1;
            let j = g.jobs.get_mut(&id).expect("checked above");
            j.status = Status::Cancelled;
            j.completed_at = Some(unix_time());
            j.error = Some(super::job::JobError {
                code: "cancelled".into(),
                message: "cancelled before it started".into(),
            });
            let snap = j.clone();
            // Saved under the lock: a second DELETE (which removes the finished job's files)
            // cannot run between the change and the save and leave the record on disk.
            if let Err(e) = st.save(&snap) {
                eprintln!("warning: cannot save job {id}: {e}");
            }
            drop(g);
            st.emit(&id, "cancelled", json!({"status": "cancelled"}));
            st.prune();
            axum::Json(snap.to_api(&s.model, None)).into_response()
        }
        Status::InProgress => {
            if let Some((rid, flag)) = &g.running {
                if rid == &id {
                    flag.store(true, std::sync::atomic::Ordering::SeqCst);
                }
            }
            let j = g.jobs.get_mut(&id).expect("checked above");
            j.live.cancel_requested = true;
            let v = j.to_api(&s.model, None);
            (StatusCode::ACCEPTED, axum::Json(v)).into_response()
        }
        _ => {
            g.jobs.remove(&id);
            st.remove_files(&id); // under the lock, like every change of a job's files
            drop(g);
            axum::Json(json!({"id": id, "object": "video.deleted", "deleted": true}))
                .into_response()
        }
    }
}

async fn content(
    AxState(s): AxState<S>,
    Path(id): Path<String>,
    Query(q): Query<std::collections::HashMap<String, String>>,
    req: Request,
) -> Response {
    let status = s.state.lock().jobs.get(&id).map(|j| j.status);
    match status {
        None => return not_found(&id),
        Some(Status::Completed) => {}
        Some(st) => {
            return error(
                StatusCode::NOT_FOUND,
                &format!("the video is not ready (status {})", st.name()),
                Some("id"),
                "video_not_ready",
            )
        }
    }
    // Only ids of the server's own shape name files (checked again: the id came from a URL).
    if !valid_id(&id) {
        return not_found(&id);
    }
    let path = s.state.video_path(&id);
    if !crate::io::video::writes_mp4() {
        // PNG builds: one frame per request, `?frame=N`.
        let n: usize = q.get("frame").and_then(|f| f.parse().ok()).unwrap_or(0);
        return match std::fs::read(path.join(format!("frame_{n:05}.png"))) {
            Ok(b) => ([(header::CONTENT_TYPE, "image/png")], b).into_response(),
            Err(_) => error(
                StatusCode::NOT_FOUND,
                &format!(
                    "this build writes PNG frames (no `ffmpeg` feature); frame {n} does not exist"
                ),
                Some("frame"),
                "not_found",
            ),
        };
    }
    let mut req = req;
    let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
    if !range_applies(req.headers(), modified) {
        // RFC 9110 14.2: a Range the server does not serve as asked is ignored (200 with
        // the whole video), as is one whose If-Range validator is stale.
        req.headers_mut().remove(header::RANGE);
    }
    use tower::ServiceExt;
    match tower_http::services::ServeFile::new(&path)
        .oneshot(req)
        .await
    {
        Ok(r) if r.status() == StatusCode::NOT_FOUND => error(
            StatusCode::NOT_FOUND,
            "the video file of this job is gone from the data folder",
            Some("id"),
            "video_missing",
        ),
        Ok(mut r) => {
            if r.status().is_success() {
                r.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("video/mp4"));
            }
            r.map(Body::new)
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot read the video: {e}"),
            None,
            "server_error",
        ),
    }
}

/// Whether the request's Range is served as asked: one `bytes=` range of a valid form
/// (`A-B` with A <= B, `A-`, `-N`), and, with If-Range, a validator equal to the file's
/// Last-Modified (the only validator the videos carry). Anything else is ignored.
fn range_applies(h: &axum::http::HeaderMap, modified: Option<std::time::SystemTime>) -> bool {
    let Some(r) = h.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return true; // nothing to apply
    };
    let Some(spec) = r.trim().strip_prefix("bytes=") else {
        return false;
    };
    if spec.contains(',') {
        return false; // several ranges: the whole video instead of a multipart answer
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return false;
    };
    let num = |t: &str| t.trim().parse::<u64>().ok();
    let ok = match (a.trim().is_empty(), b.trim().is_empty()) {
        (false, false) => matches!((num(a), num(b)), (Some(x), Some(y)) if x <= y),
        (false, true) => num(a).is_some(),
        (true, false) => num(b).is_some_and(|n| n > 0),
        (true, true) => false,
    };
    if !ok {
        return false;
    }
    match h.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(v) => modified.is_some_and(|m| http_date(m) == v.trim()),
    }
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the form of Last-Modified.
fn http_date(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let (hh, mm, ss) = ((secs % 86_400) / 3600, (secs % 3600) / 60, secs % 60);
    // civil from days (Howard Hinnant's algorithm)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    const WD: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MON: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {d:02} {} {y} {hh:02}:{mm:02}:{ss:02} GMT",
        WD[days.rem_euclid(7) as usize],
        MON[(m - 1) as usize]
    )
}

async fn metrics(AxState(s): AxState<S>) -> Response {
    let g = s.state.lock();
    let c = &g.counters;
    // (name, type, help, value): one exposition block each.
    let rows: [(&str, &str, &str, u64); 7] = [
        (
            "contentv_queue_length",
            "gauge",
            "Jobs waiting in the queue.",
            g.queue.len() as u64,
        ),
        (
            "contentv_jobs_running",
            "gauge",
            "Jobs running (0 or 1).",
            u64::from(g.running.is_some()),
        ),
        (
            "contentv_jobs_submitted_total",
            "counter",
            "Jobs accepted since the server started.",
            c.submitted,
        ),
        (
            "contentv_jobs_completed_total",
            "counter",
            "Jobs completed since the server started.",
            c.completed,
        ),
        (
            "contentv_jobs_failed_total",
            "counter",
            "Jobs failed since the server started.",
            c.failed,
        ),
        (
            "contentv_jobs_cancelled_total",
            "counter",
            "Jobs cancelled since the server started.",
            c.cancelled,
        ),
        (
            "contentv_jobs_rejected_queue_full_total",
            "counter",
            "Requests refused with 429 (queue full).",
            c.rejected_full,
        ),
    ];
    let mut t = String::new();
    for (name, kind, help, v) in rows {
        t += &format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n");
    }
    t += "# HELP contentv_step_seconds Wall-clock seconds per denoising step.\n# TYPE contentv_step_seconds summary\n";
    t += &format!(
        "contentv_step_seconds_sum {}\ncontentv_step_seconds_count {}\n",
        c.step_seconds, c.steps
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        t,
    )
        .into_response()
}

/// The job's state as one event: where it is now (sent first on every stream).
fn snapshot_event(s: &Server, id: &str) -> Option<(Event, bool)> {
    let g = s.state.lock();
    let j = g.jobs.get(id)?;
    let pos = State::queue_position(&g, id);
    let v = j.to_api(&s.model, pos);
    let (kind, done) = match j.status {
        Status::Queued => ("queue", false),
        Status::InProgress => ("progress", false),
        Status::Completed => ("completed", true),
        Status::Failed => ("failed", true),
        Status::Cancelled => ("cancelled", true),
    };
    let data = if kind == "queue" {
        json!({"queue_position": pos, "video": v})
    } else {
        json!({"video": v})
    };
    Some((Event::default().event(kind).data(data.to_string()), done))
}

/// One open event stream, counted in [`Server::streams`] until it is dropped.
struct StreamSlot {
    s: S,
    id: String,
}

impl StreamSlot {
    /// A slot for a stream of job `id`, or the 429 answer when the caps are reached.
    // The Err is the answer itself, built once per refused request: boxing it buys nothing.
    #[allow(clippy::result_large_err)]
    fn take(s: &S, id: &str) -> Result<StreamSlot, Response> {
        let mut m = s.streams.lock().unwrap_or_else(|e| e.into_inner());
        let total: usize = m.values().sum();
        let this = m.get(id).copied().unwrap_or(0);
        if total >= MAX_STREAMS || this >= MAX_STREAMS_PER_JOB {
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                &format!(
                    "too many event streams open ({total} in all, {this} for this job; at most {MAX_STREAMS} and {MAX_STREAMS_PER_JOB}); poll GET /v1/videos/{id} instead or try again later"
                ),
                None,
                "too_many_streams",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            return Err(r);
        }
        *m.entry(id.to_string()).or_insert(0) += 1;
        Ok(StreamSlot {
            s: s.clone(),
            id: id.to_string(),
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut m = self.s.streams.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.id);
            }
        }
    }
}

async fn events(AxState(s): AxState<S>, Path(id): Path<String>) -> Response {
    // Subscribe before the snapshot: nothing between them is missed.
    let rx = s.state.events.subscribe();
    let Some((first, done)) = snapshot_event(&s, &id) else {
        return not_found(&id);
    };
    let slot = match StreamSlot::take(&s, &id) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let last_pos = State::queue_position(&s.state.lock(), &id);
    struct St {
        s: S,
        id: String,
        rx: tokio::sync::broadcast::Receiver<super::state::JobEvent>,
        first: Option<Event>,
        done: bool,
        last_pos: Option<usize>,
        _slot: StreamSlot,
    }
    let init = St {
        _slot: slot,
        last_pos,
        s,
        id,
        rx,
        first: Some(first),
        done,
    };
    let stream = futures_util::stream::unfold(init, |mut st| async move {
        if let Some(f) = st.first.take() {
            return Some((Ok::<Event, Infallible>(f), st));
        }
        if st.done {
            return None;
        }
        loop {
            match st.rx.recv().await {
                Ok(ev) if ev.id == st.id => {
                    let terminal = matches!(ev.kind, "completed" | "failed" | "cancelled");
                    if terminal {
                        st.done = true;
                        // the final object, with everything
                        if let Some((e, _)) = snapshot_event(&st.s, &st.id) {
                            return Some((Ok(e), st));
                        }
                    }
                    let e = Event::default().event(ev.kind).data(ev.data.to_string());
                    return Some((Ok(e), st));
                }
                Ok(_) => {
                    // Another job moved: this one's queue position may have changed.
                    let pos = {
                        let g = st.s.state.lock();
                        State::queue_position(&g, &st.id)
                    };
                    if pos.is_some() && pos != st.last_pos {
                        st.last_pos = pos;
                        let e = Event::default()
                            .event("queue")
                            .data(json!({"queue_position": pos}).to_string());
                        return Some((Ok(e), st));
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    // Too slow a reader: send where the job is now instead.
                    let (e, done) = snapshot_event(&st.s, &st.id)?;
                    st.done = done;
                    return Some((Ok(e), st));
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    let mut r = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

#[cfg(test)]
mod tests {
    #[test]
    fn constant_time_eq_is_equality() {
        use super::constant_time_eq as eq;
        assert!(eq(b"secret", b"secret"));
        assert!(!eq(b"secret", b"secreT"));
        assert!(!eq(b"secret", b"secre"));
        assert!(!eq(b"", b"x"));
        assert!(eq(b"", b""));
        // lengths that differ by a multiple of 256
        assert!(!eq(&[0u8; 256], b""));
    }

    #[test]
    fn http_dates_and_ranges() {
        use std::time::{Duration, UNIX_EPOCH};
        let t = UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(super::http_date(t), "Sun, 06 Nov 1994 08:49:37 GMT");
        let h = |r: &str, ir: Option<&str>| {
            let mut m = axum::http::HeaderMap::new();
            m.insert(axum::http::header::RANGE, r.parse().unwrap());
            if let Some(v) = ir {
                m.insert(axum::http::header::IF_RANGE, v.parse().unwrap());
            }
            super::range_applies(&m, Some(t))
        };
        assert!(h("bytes=0-1", None) && h("bytes=5-", None) && h("bytes=-3", None));
        assert!(!h("items=0-1", None) && !h("bytes=5-2", None) && !h("bytes=0-1,4-5", None));
        assert!(h("bytes=0-1", Some("Sun, 06 Nov 1994 08:49:37 GMT")));
        assert!(!h("bytes=0-1", Some("Sat, 05 Nov 1994 08:49:37 GMT")));
    }
}
