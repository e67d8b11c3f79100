//! The Rancher v3 API client: the adapter for the [`RancherApi`] and
//! [`RancherConnector`] ports, over reqwest + rustls (ring).
//!
//! # Layout
//! * `client`    — [`HttpRancher`] (one server) and [`HttpConnector`].
//! * `transport` — TLS trust (pinned CA or unverified), headers, timeouts,
//!   and transport failures → [`ApiError`].
//! * `model`     — the JSON read and written, and the four error shapes.
//!
//! # Errors, as the actors see them
//! * [`ApiError::Unavailable`]: no connection, a timeout (10 s per request),
//!   a 5xx, a `/ping` that does not say `pong`. Retry / poll again.
//! * [`ApiError::Status`]: a 4xx, with norman's `code` when the body has one
//!   (401 without code = the auth filter; 422 `NotUnique` = duplicate
//!   cluster name; 422 `InvalidBodyContent` = password rules). The
//!   `message` is the server's, never a value we sent.
//! * [`ApiError::Tls`]: the certificate does not chain to the pinned CA, a
//!   credential was about to go to an unpinned server, or the URL/CA given
//!   is unusable (not https, not a PEM). Permanent.
//! * [`ApiError::Decode`]: a 2xx whose body lacks what we need (login
//!   without a token, empty `cacerts` …) or an unexpected redirect.
//!
//! [`RancherApi`]: rmm_actors::ports::RancherApi
//! [`RancherConnector`]: rmm_actors::ports::RancherConnector
//! [`ApiError`]: rmm_actors::ports::ApiError
//! [`ApiError::Unavailable`]: rmm_actors::ports::ApiError::Unavailable
//! [`ApiError::Status`]: rmm_actors::ports::ApiError::Status
//! [`ApiError::Tls`]: rmm_actors::ports::ApiError::Tls
//! [`ApiError::Decode`]: rmm_actors::ports::ApiError::Decode

mod client;
mod model;
mod transport;

pub use client::{HttpConnector, HttpRancher, REFUSE_UNPINNED};
pub use transport::{DEFAULT_TIMEOUT, USER_AGENT};

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_v1;
