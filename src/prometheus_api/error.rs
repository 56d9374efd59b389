//! Why Prometheus did not give a usable answer: one error type for the
//! client (the HTTP exchange and the API envelope) and the decoder (the
//! series inside `data`), so that a caller matches one enum whichever part
//! failed, and a metric label names the kind of failure the same way.

use std::time::Duration;

/// Why Prometheus did not give a usable answer.
///
/// Every message names the URL (never credentials) and says what to check.
/// [`PromError::label`] gives a short, stable name for a metric label.
#[derive(Debug, thiserror::Error)]
pub enum PromError {
    /// The client cannot be built from these settings.
    #[error("cannot use Prometheus URL {url}: {reason}")]
    Config {
        /// The base URL as given, with any credentials and query removed.
        url: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// No HTTP exchange could be completed (connection refused, DNS, TLS, reset).
    #[error(
        "cannot reach Prometheus at {url}: {reason}; check that Prometheus is running and that the URL is right"
    )]
    Unreachable {
        /// The endpoint.
        url: String,
        /// The lowest-level cause, e.g. `Connection refused (os error 111)`.
        reason: String,
    },
    /// No complete answer arrived in time, or Prometheus gave up on the query.
    #[error(
        "Prometheus at {url} did not answer within {}; it may be overloaded or the query too expensive: raise the query timeout or simplify the expression",
        humantime::format_duration(*.timeout)
    )]
    Timeout {
        /// The endpoint.
        url: String,
        /// The configured query timeout.
        timeout: Duration,
    },
    /// An HTTP error status without a Prometheus API error in the body, as a
    /// proxy or a wrong URL produces.
    #[error("Prometheus at {url} answered HTTP {status} ({detail}); {}", http_hint(*.status))]
    Http {
        /// The endpoint.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// A short excerpt of the body, or where a redirect points.
        detail: String,
    },
    /// Prometheus answered with `"status": "error"`: a bad expression
    /// (`bad_data`), a failed evaluation (`execution`), and so on.
    #[error("Prometheus at {url} refused the query ({error_type}): {error}")]
    Api {
        /// The endpoint.
        url: String,
        /// Prometheus's `errorType`, e.g. `bad_data`, `execution`, `unavailable`.
        error_type: String,
        /// Prometheus's own message, verbatim, e.g.
        /// `invalid parameter "query": 1:6: parse error: unclosed left parenthesis`.
        error: String,
    },
    /// A 2xx answer that is not a valid Prometheus API response.
    #[error(
        "Prometheus at {url} sent an answer that is not a valid Prometheus API response: {reason}; check that the URL points at Prometheus"
    )]
    BadResponse {
        /// The endpoint.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The engine answered from part of its data only (some of its stores
    /// or storage nodes did not answer): what is missing is unknown, so the
    /// answer is not used.
    #[error(
        "the engine at {url} answered from part of its data only (a store or storage node did not answer); the devices this query watches are unknown until it answers whole: check the engine's stores"
    )]
    Partial {
        /// The endpoint.
        url: String,
    },
    /// The expression yields something other than what the call needs (a
    /// range vector or a string where numbers per series are expected).
    #[error("the expression yields {found} where {expected} is needed; {}", result_hint(.found))]
    WrongResultType {
        /// What the caller needed, e.g. `an instant vector`.
        expected: &'static str,
        /// What Prometheus returned, e.g. `a range vector`.
        found: &'static str,
    },
}

impl PromError {
    /// A short, stable name of the kind of failure, for a metric label.
    pub fn label(&self) -> &'static str {
        match self {
            PromError::Config { .. } => "config",
            PromError::Unreachable { .. } => "unreachable",
            PromError::Timeout { .. } => "timeout",
            PromError::Http { .. } => "http",
            PromError::Api { .. } => "api",
            PromError::BadResponse { .. } => "bad_response",
            PromError::Partial { .. } => "partial",
            PromError::WrongResultType { .. } => "wrong_result_type",
        }
    }
}

fn http_hint(status: u16) -> &'static str {
    match status {
        300..=399 => "set the Prometheus URL to where it redirects",
        401 | 403 => "check the basic-auth credentials or bearer token",
        404 => "check that the URL is the Prometheus base URL (without /api/v1)",
        500..=599 => "Prometheus, or a proxy in front of it, is failing; check that Prometheus is running and see its log",
        _ => "check that the URL points at Prometheus",
    }
}

fn result_hint(found: &str) -> &'static str {
    match found {
        "a native histogram" => {
            "turn histograms into numbers first, e.g. with histogram_quantile() or histogram_count()"
        }
        _ => "write an expression that yields one number per series (no [range] selector; wrap one in a function such as last_over_time() or rate())",
    }
}
