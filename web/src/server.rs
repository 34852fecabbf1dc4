//! The HTTP server: routes (design §11), handlers, security headers, and [`Server`], which runs
//! it on a runtime of its own.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, Request, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::stream::{self, Stream};
use rankmysteps_dataflow::event::{format_day, parse_day, parse_user, Day, User};
use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;

use crate::error::WebError;
use crate::json::{histogram_json, standing_json};
use crate::live::{blocking, days_json, unknown_user, Hub, Subscription};
use crate::store::Store;

/// Largest `k` of a top-k request (and never more than the stored rows).
pub const MAX_K: usize = 1000;
/// Default `k` of a top-k request, as the original app.
pub const DEFAULT_K: usize = 100;
/// Largest `neighbours` of a standing request.
pub const MAX_NEIGHBOURS: usize = 50;
/// How often the watcher polls the store's version.
pub const POLL: Duration = Duration::from_millis(250);
/// Interval of the event streams' keep-alive comments.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// The Content-Security-Policy of every response: nothing inline, nothing from elsewhere.
pub const CSP: &str =
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

type AppState = Arc<Hub>;
type ApiResult = Result<Response, WebError>;

/// The router of the page and its API over `hub` (whose watcher must run: [`Hub::run`]).
pub fn router(hub: Arc<Hub>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/assets/app.js", get(app_js))
        .route("/assets/app.css", get(app_css))
        .route("/api/days", get(days))
        .route("/api/days/{day}/top", get(top))
        .route("/api/days/{day}/standing/{user}", get(standing))
        .route("/api/days/{day}/histogram", get(histogram))
        .route("/api/users/{user}/history", get(history))
        .route("/api/events", get(events))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::map_response(security_headers))
        .with_state(hub)
}

async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

async fn not_found(request: Request<axum::body::Body>) -> WebError {
    WebError::Route {
        status: StatusCode::NOT_FOUND,
        detail: format!("no route {}", request.uri().path()),
    }
}

async fn method_not_allowed(request: Request<axum::body::Body>) -> WebError {
    WebError::Route {
        status: StatusCode::METHOD_NOT_ALLOWED,
        detail: format!(
            "{} is not allowed on {}",
            request.method(),
            request.uri().path()
        ),
    }
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn page() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn app_css() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

fn day_param(text: &str) -> Result<Day, WebError> {
    parse_day(text).ok_or_else(|| WebError::InvalidDate(text.to_owned()))
}

fn user_param(text: &str) -> Result<User, WebError> {
    parse_user(text.trim()).ok_or_else(|| WebError::InvalidUuid(text.to_owned()))
}

fn path_error(e: PathRejection) -> WebError {
    WebError::BadRequest(format!("invalid path: {}", e.body_text()))
}

fn query(
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<HashMap<String, String>, WebError> {
    q.map(|Query(q)| q)
        .map_err(|e| WebError::BadRequest(format!("invalid query string: {}", e.body_text())))
}

/// A number parameter in `lo..=hi`, `default` when absent.
fn number(
    q: &HashMap<String, String>,
    name: &str,
    default: usize,
    lo: usize,
    hi: usize,
    err: fn(String) -> WebError,
) -> Result<usize, WebError> {
    let Some(text) = q.get(name) else {
        return Ok(default);
    };
    match text.parse::<usize>() {
        Ok(n) if (lo..=hi).contains(&n) => Ok(n),
        _ => Err(err(format!(
            "{text:?} is not a whole number from {lo} to {hi}"
        ))),
    }
}

fn json(value: Value) -> Response {
    Json(value).into_response()
}

async fn days(State(hub): State<AppState>) -> ApiResult {
    let store = hub.store().clone();
    let days = blocking(move || store.days())
        .await?
        .map_err(|e| WebError::from_store(e, None))?;
    Ok(json(days_json(&days)))
}

async fn top(
    State(hub): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> ApiResult {
    let Path(day_text) = path.map_err(path_error)?;
    let day = day_param(&day_text)?;
    let q = query(q)?;
    let asked = q.contains_key("k");
    let k = number(&q, "k", DEFAULT_K, 1, MAX_K, WebError::InvalidK)?;
    let top = hub.top(day).await?;
    let stored = top.top.len();
    // An explicit k beyond the stored rows is an error; the default takes what is stored.
    if asked && k > stored && top.users > stored as u64 {
        return Err(WebError::InvalidK(format!(
            "{k} exceeds the {stored} rows stored for {}",
            format_day(day)
        )));
    }
    let mut top = (*top).clone();
    top.top.truncate(k);
    Ok(json(serde_json::to_value(&top).unwrap_or_default()))
}

async fn standing(
    State(hub): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> ApiResult {
    let Path((day_text, user_text)) = path.map_err(path_error)?;
    let day = day_param(&day_text)?;
    let user = user_param(&user_text)?;
    let q = query(q)?;
    let n = number(
        &q,
        "neighbours",
        0,
        0,
        MAX_NEIGHBOURS,
        WebError::InvalidNeighbours,
    )?;
    let store = hub.store().clone();
    let found = blocking(move || store.standing(day, user, n))
        .await?
        .map_err(|e| WebError::from_store(e, Some(&format_day(day))))?;
    match found {
        Some((s, is_final)) => Ok(json(standing_json(day, user, &s, is_final))),
        None => {
            // Cassandra answers "no total" for a day it has never seen too.
            if hub.days().iter().any(|&(d, _)| d == day) {
                return Err(unknown_user(day, user));
            }
            let store = hub.store().clone();
            match blocking(move || store.top(day)).await? {
                Ok(_) => Err(unknown_user(day, user)),
                Err(e) => Err(WebError::from_store(e, Some(&format_day(day)))),
            }
        }
    }
}

async fn histogram(
    State(hub): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let Path(day_text) = path.map_err(path_error)?;
    let day = day_param(&day_text)?;
    let rows = hub.histogram(day).await?;
    let is_final = hub.days().iter().any(|&(d, f)| d == day && f);
    Ok(json(histogram_json(day, is_final, &rows)))
}

async fn history(
    State(hub): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let Path(user_text) = path.map_err(path_error)?;
    let user = user_param(&user_text)?;
    let store = hub.store().clone();
    let days = blocking(
        move || -> Result<Vec<Value>, rankmysteps_sinks::SinkError> {
            let mut out = Vec::new();
            let finals: HashMap<Day, bool> = store.days()?.into_iter().collect();
            for (day, steps) in store.history(user)? {
                let Some((s, is_final)) = store.standing(day, user, 0)? else {
                    continue;
                };
                let is_final = is_final || finals.get(&day).copied().unwrap_or(false);
                out.push(serde_json::json!({
                    "day": format_day(day),
                    "final": is_final,
                    "steps": steps,
                    "rank": s.rank,
                    "users": s.users,
                }));
            }
            Ok(out)
        },
    )
    .await?
    .map_err(|e| WebError::from_store(e, None))?;
    if days.is_empty() {
        return Err(WebError::UnknownUser(format!(
            "user {} has no steps on any day",
            rankmysteps_dataflow::event::format_user(user)
        )));
    }
    Ok(json(serde_json::json!({
        "user": rankmysteps_dataflow::event::format_user(user),
        "days": days,
    })))
}

async fn events(
    State(hub): State<AppState>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, WebError> {
    let q = query(q)?;
    let day = q
        .get("day")
        .filter(|d| !d.is_empty())
        .map(|d| day_param(d))
        .transpose()?;
    let user = q
        .get("user")
        .filter(|u| !u.is_empty())
        .map(|u| user_param(u))
        .transpose()?;
    let sub = hub.subscribe(day, user);
    let initial: std::collections::VecDeque<_> = sub.initial.clone().into();
    let stream = stream::unfold((sub, initial), |(mut sub, mut initial)| async move {
        loop {
            if let Some(m) = initial.pop_front() {
                return Some((Ok(to_event(&m)), (sub, initial)));
            }
            match sub.rx.recv().await {
                // The receiver is subscribed before the hub's cache is read, so a message the
                // watcher published in between is both in `initial` and received: the same
                // message (the cache holds what was sent), not news, sent once.
                Ok(m) if sub.initial.iter().any(|i| Arc::ptr_eq(i, &m)) => continue,
                Ok(m) if wanted(&sub, &m) => return Some((Ok(to_event(&m)), (sub, initial))),
                Ok(_) => continue,
                Err(RecvError::Lagged(n)) => {
                    // This client fell behind: tell it to read the current state again.
                    let e = Event::default()
                        .event("resync")
                        .data(serde_json::json!({"missed": n}).to_string());
                    return Some((Ok(e), (sub, initial)));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

fn wanted(sub: &Subscription, m: &crate::live::Message) -> bool {
    match m.event {
        "top" => m.day == sub.day,
        "standing" => m.day == sub.day && m.user == sub.user,
        _ => true,
    }
}

fn to_event(m: &crate::live::Message) -> Event {
    Event::default().event(m.event).data(&m.data)
}

/// Binds `addr` (`host:port`), saying clearly when it is taken.
pub fn bind(addr: &str) -> Result<std::net::TcpListener, WebError> {
    std::net::TcpListener::bind(addr).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            WebError::AddrInUse {
                addr: addr.to_owned(),
            }
        } else {
            WebError::Listen {
                addr: addr.to_owned(),
                detail: e.to_string(),
            }
        }
    })
}

/// A running server: its own tokio runtime on background threads, stopped when dropped.
pub struct Server {
    addr: SocketAddr,
    hub: Arc<Hub>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Server {
    /// Serves the page and API over `store` on `listener` (see [`bind`]), with the default
    /// poll interval.
    pub fn start(
        store: Arc<dyn Store>,
        listener: std::net::TcpListener,
    ) -> Result<Server, WebError> {
        Server::start_with(store, listener, POLL, 2)
    }

    /// [`Server::start`] with more routes beside the page's (e.g. the inspector's `/debug/`
    /// of an embedded job; they must not have a fallback of their own).
    pub fn start_with_routes(
        store: Arc<dyn Store>,
        listener: std::net::TcpListener,
        routes: Router,
    ) -> Result<Server, WebError> {
        Server::start_inner(store, listener, POLL, 2, Some(routes))
    }

    /// [`Server::start`] polling the store every `poll`, on `threads` runtime threads.
    pub fn start_with(
        store: Arc<dyn Store>,
        listener: std::net::TcpListener,
        poll: Duration,
        threads: usize,
    ) -> Result<Server, WebError> {
        Server::start_inner(store, listener, poll, threads, None)
    }

    fn start_inner(
        store: Arc<dyn Store>,
        listener: std::net::TcpListener,
        poll: Duration,
        threads: usize,
        routes: Option<Router>,
    ) -> Result<Server, WebError> {
        let addr = listener
            .local_addr()
            .map_err(|e| WebError::Internal(e.to_string()))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| WebError::Internal(e.to_string()))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("web")
            .enable_all()
            .build()
            .map_err(|e| WebError::Internal(format!("starting the web runtime: {e}")))?;
        let hub = Hub::new(store, poll);
        let listener = {
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(listener)
                .map_err(|e| WebError::Internal(e.to_string()))?
        };
        runtime.spawn(hub.clone().run());
        let app = match routes {
            Some(routes) => router(hub.clone()).merge(routes),
            None => router(hub.clone()),
        };
        runtime.spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "web server stopped");
            }
        });
        tracing::info!(%addr, store = %hub.store().describe(), "web: serving");
        Ok(Server {
            addr,
            hub,
            runtime: Some(runtime),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The page's URL.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Event streams open now.
    pub fn clients(&self) -> usize {
        self.hub.clients()
    }

    /// Reads made to the store so far.
    pub fn store_reads(&self) -> u64 {
        self.hub.store().reads()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // Also from within another runtime (async tests): do not block on its tasks.
            runtime.shutdown_background();
        }
    }
}
