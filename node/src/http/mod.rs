//! The second front door: the Managed Agents HTTP API, so that the official
//! Anthropic SDKs work against any node by pointing `base_url` at it. A thin
//! adapter over [`Service`](crate::service::Service): it authenticates the
//! API key, turns JSON into service calls and answers back in the API's
//! shapes; every rule, route and forward is the service's.
//!
//! - `server.rs`: HTTP/1.1 and HTTP/2 over TCP, optionally TLS (rustls);
//! - `middleware.rs`: request ids, authentication, the error envelope;
//! - `agents.rs`, `environments.rs`, `sessions.rs`, `events.rs`, `vaults.rs`:
//!   one file per resource, its routes, handlers and JSON shapes;
//! - `stream.rs`: the SSE stream of a session's events;
//! - `util.rs`, `error.rs`: bodies, queries, times, cursors; the error envelope.

mod agents;
mod environments;
mod error;
mod events;
mod middleware;
mod server;
mod sessions;
mod stream;
mod tools;
mod util;
mod vaults;

use axum::routing::{get, post};
use axum::Router;

pub use server::{HttpHandle, HttpOptions, HttpServer, HttpTls};

use crate::service::Service;

/// What every handler gets: the node's service.
#[derive(Clone)]
pub struct AppState {
    pub service: Service,
}

fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/v1/agents", post(agents::create).get(agents::list))
        .route("/v1/agents/{agent_id}", get(agents::retrieve).post(agents::update))
        .route("/v1/agents/{agent_id}/archive", post(agents::archive))
        .route("/v1/agents/{agent_id}/versions", get(agents::versions))
        .route("/v1/environments", post(environments::create).get(environments::list))
        .route(
            "/v1/environments/{environment_id}",
            get(environments::retrieve).post(environments::update).delete(environments::delete),
        )
        .route("/v1/environments/{environment_id}/archive", post(environments::archive))
        .route("/v1/sessions", post(sessions::create).get(sessions::list))
        .route("/v1/sessions/{session_id}", get(sessions::retrieve).post(sessions::update).delete(sessions::delete))
        .route("/v1/sessions/{session_id}/archive", post(sessions::archive))
        .route("/v1/sessions/{session_id}/events", post(events::send).get(events::list))
        .route("/v1/sessions/{session_id}/events/stream", get(stream::stream))
        .route("/v1/vaults", post(vaults::create).get(vaults::list))
        .route("/v1/vaults/{vault_id}", get(vaults::retrieve).post(vaults::update).delete(vaults::delete))
        .route("/v1/vaults/{vault_id}/archive", post(vaults::archive))
        .route("/v1/vaults/{vault_id}/credentials", post(vaults::create_credential).get(vaults::list_credentials))
        .route(
            "/v1/vaults/{vault_id}/credentials/{credential_id}",
            get(vaults::retrieve_credential).post(vaults::update_credential).delete(vaults::delete_credential),
        )
        .route("/v1/vaults/{vault_id}/credentials/{credential_id}/archive", post(vaults::archive_credential))
        .fallback(middleware::unknown_route)
        .layer(axum::middleware::from_fn_with_state(state.clone(), middleware::authenticate))
        .layer(axum::middleware::from_fn_with_state(state.clone(), middleware::admit));
    api.layer(axum::middleware::from_fn(middleware::request_id))
        .layer(axum::extract::DefaultBodyLimit::max(agentd_protocol::limits::HTTP_BODY_BYTES_MAX))
        .with_state(state)
}
