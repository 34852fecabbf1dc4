//! [`WebError`]: every way a request (or starting the server) can fail, and its JSON response.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rankmysteps_sinks::SinkError;

/// An error of the web server. A request's error is answered as JSON
/// `{"error": "<code>", "detail": "..."}` with the status of [`WebError::status`].
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// A day in the URL is not a date `YYYY-MM-DD` (400 `invalid_date`).
    #[error("{0:?} is not a date of the form YYYY-MM-DD")]
    InvalidDate(String),
    /// A user in the URL is not a UUID (400 `invalid_uuid`).
    #[error("{0:?} is not a UUID (8-4-4-4-12 hex digits)")]
    InvalidUuid(String),
    /// `k` is not a number in range (400 `invalid_k`).
    #[error("k: {0}")]
    InvalidK(String),
    /// `neighbours` is not a number in range (400 `invalid_neighbours`).
    #[error("neighbours: {0}")]
    InvalidNeighbours(String),
    /// Anything else wrong with the request: a missing parameter, a malformed query string
    /// (400 `bad_request`).
    #[error("{0}")]
    BadRequest(String),
    /// No results for that day (404 `unknown_day`).
    #[error("no results for day {0}")]
    UnknownDay(String),
    /// The user has no total on that day, or no day at all (404 `unknown_user`).
    #[error("{0}")]
    UnknownUser(String),
    /// No such route (404 `not_found`) or method (405 `method_not_allowed`).
    #[error("{detail}")]
    Route {
        /// 404 or 405.
        status: StatusCode,
        /// What was asked.
        detail: String,
    },
    /// The store (Cassandra, the output directory) cannot be read now (503 `store_unavailable`).
    #[error("the results store is unavailable: {0}")]
    Unavailable(String),
    /// The store holds something unreadable, or the server failed (500 `internal`).
    #[error("internal error: {0}")]
    Internal(String),
    /// The listen address is taken.
    #[error("cannot listen on {addr}: the address is already in use (another rankmysteps, or another server, has it); choose another with --listen or [web] listen")]
    AddrInUse {
        /// The address.
        addr: String,
    },
    /// The listen address is invalid or cannot be bound.
    #[error("cannot listen on {addr}: {detail}")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        detail: String,
    },
}

impl WebError {
    /// The HTTP status of the error.
    pub fn status(&self) -> StatusCode {
        match self {
            WebError::InvalidDate(_)
            | WebError::InvalidUuid(_)
            | WebError::InvalidK(_)
            | WebError::InvalidNeighbours(_)
            | WebError::BadRequest(_) => StatusCode::BAD_REQUEST,
            WebError::UnknownDay(_) | WebError::UnknownUser(_) => StatusCode::NOT_FOUND,
            WebError::Route { status, .. } => *status,
            WebError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            WebError::Internal(_) | WebError::AddrInUse { .. } | WebError::Listen { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// The machine-readable code of the JSON body's `error`.
    pub fn code(&self) -> &'static str {
        match self {
            WebError::InvalidDate(_) => "invalid_date",
            WebError::InvalidUuid(_) => "invalid_uuid",
            WebError::InvalidK(_) => "invalid_k",
            WebError::InvalidNeighbours(_) => "invalid_neighbours",
            WebError::BadRequest(_) => "bad_request",
            WebError::UnknownDay(_) => "unknown_day",
            WebError::UnknownUser(_) => "unknown_user",
            WebError::Route { status, .. } if *status == StatusCode::METHOD_NOT_ALLOWED => {
                "method_not_allowed"
            }
            WebError::Route { .. } => "not_found",
            WebError::Unavailable(_) => "store_unavailable",
            WebError::Internal(_) | WebError::AddrInUse { .. } | WebError::Listen { .. } => {
                "internal"
            }
        }
    }

    /// A store error met while reading `day`'s results: a missing day is 404, a store that
    /// cannot be reached 503, a corrupt file 500.
    pub fn from_store(error: SinkError, day: Option<&str>) -> WebError {
        match error {
            SinkError::NotFound { what } => match day {
                Some(day) => WebError::UnknownDay(day.to_owned()),
                None => WebError::Unavailable(format!("{what} not found")),
            },
            SinkError::Cassandra { .. } | SinkError::Io { .. } | SinkError::S3 { .. } => {
                WebError::Unavailable(error.to_string())
            }
            SinkError::Corrupt { .. }
            | SinkError::OutOfOrder { .. }
            | SinkError::Fenced { .. }
            | SinkError::Input { .. } => WebError::Internal(error.to_string()),
        }
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"error": self.code(), "detail": self.to_string()})
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::debug!(error = %self, "request failed");
        }
        (status, axum::Json(self.body())).into_response()
    }
}
