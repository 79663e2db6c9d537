//! The node's side of MCP: what the brain's `McpServers` seam needs around
//! the protocol client. For each call it checks the environment's network
//! rules, finds the credential of the session's vaults whose
//! `mcp_server_url` is the server's (an `mcp_oauth` token is refreshed once
//! it has expired, or when the server refuses it, and written back to the
//! vault), and scrubs every secret of the session from what comes back.
//! The sandbox never sees any of it.

use std::sync::Arc;

use agentd_actors::brain::McpServers;
use agentd_actors::mcp::{McpCallResult, McpClient, McpError, McpTool};
use agentd_actors::model::HttpClient;
use agentd_actors::sandbox::{redact, Secret};
use agentd_protocol::agent::{EnvironmentSpec, McpServer, Network};
use agentd_protocol::api::SessionInfo;
use agentd_protocol::api::{ClientRequest, CredentialChange, McpCredentialChange, OAuthChange, OAuthRefreshChange};
use agentd_protocol::egress::Allowlist;
use agentd_protocol::ids::{GroupId, VaultId};
use agentd_protocol::resource::{Credential, McpAuth, OAuthRefresh, ResourceId, TokenEndpointAuth};
use base64::Engine;
use futures_util::future::BoxFuture;
use serde_json::Value;

use crate::leader::bounded;
use crate::service::{Caller, Service};

/// An access token this close to its expiry is refreshed before use.
const OAUTH_EXPIRY_MARGIN_MS: u64 = 30_000;

/// The node's MCP servers seam.
pub struct NodeMcp {
    service: Service,
    client: McpClient,
    http: HttpClient,
}

/// The credential a call presents: its token, and where it came from (to
/// refresh it).
struct Presented {
    token: String,
    vault_id: VaultId,
    credential: Credential,
}

impl NodeMcp {
    pub fn new(service: Service, http: HttpClient) -> Arc<NodeMcp> {
        Arc::new(NodeMcp { service, client: McpClient::new(http.clone()), http })
    }

    /// Everything a call needs: the egress check, the credential, the
    /// session's secrets for redaction.
    async fn prepare(
        &self,
        session: &SessionInfo,
        server: &McpServer,
    ) -> Result<(Option<Presented>, Vec<Secret>), McpError> {
        let unavailable = |error: agentd_protocol::ApiError| McpError::connection(&server.url, error.to_string());
        let environment = self.environment(session).await.map_err(unavailable)?;
        check_egress(environment.as_ref(), &server.url)?;
        let vaults = self.vaults(session, environment.as_ref()).map_err(unavailable)?;
        let mut secrets = Vec::new();
        let mut presented = None;
        for (vault_id, credentials) in vaults {
            for credential in credentials.into_iter().filter(|credential| credential.archived_at_ms.is_none()) {
                let value = self.open(&vault_id, &credential.secret_name, &credential.sealed).map_err(unavailable)?;
                let matches = credential
                    .mcp
                    .as_ref()
                    .is_some_and(|mcp| agentd_protocol::resource::same_mcp_url(&mcp.server_url, &server.url));
                secrets.push(Secret { name: secret_label(&credential), value: value.clone() });
                if matches && presented.is_none() {
                    presented = Some(Presented { token: value, vault_id, credential });
                }
            }
        }
        if let Some(current) = presented.take() {
            presented = Some(self.fresh(server, current, false).await?);
        }
        Ok((presented, secrets))
    }

    async fn environment(&self, session: &SessionInfo) -> Result<Option<EnvironmentSpec>, agentd_protocol::ApiError> {
        let Some(environment_id) = session.environment else { return Ok(None) };
        let lookup = self.service.environment(&Caller::Node, environment_id);
        Ok(bounded("reading the environment", lookup).await?.latest().cloned())
    }

    /// The credentials of the environment's vaults and the session's own.
    fn vaults(
        &self,
        session: &SessionInfo,
        environment: Option<&EnvironmentSpec>,
    ) -> Result<Vec<(VaultId, Vec<Credential>)>, agentd_protocol::ApiError> {
        let host = self.service.host();
        let mut ids: Vec<VaultId> = environment.map(|environment| environment.vaults.clone()).unwrap_or_default();
        if let Some(shard) = host.group(GroupId::Shard(session.shard)) {
            if let Some(view) = shard.state.session_view(session.session_id)? {
                ids.extend(view.details.vault_ids.iter().filter(|id| !ids.contains(id)).copied().collect::<Vec<_>>());
            }
        }
        let metadata = self.service.metadata()?;
        let mut vaults = Vec::new();
        for vault_id in ids {
            let resource = metadata.state.resource(ResourceId::Vault(vault_id))?;
            let credentials =
                resource.as_ref().and_then(|resource| resource.vault_body()).map(|body| body.credentials.clone());
            vaults.push((vault_id, credentials.unwrap_or_default()));
        }
        Ok(vaults)
    }

    fn open(&self, vault_id: &VaultId, name: &str, sealed: &[u8]) -> Result<String, agentd_protocol::ApiError> {
        self.service
            .secrets_key()
            .open(&crate::vault::seal_context(vault_id, name), sealed)
            .map_err(|error| agentd_protocol::ApiError::Internal { message: format!("opening {name}: {error}") })
    }

    /// The credential with a token that has not expired: an `mcp_oauth`
    /// one past (or near) its expiry, or refused (`refused`), is refreshed.
    async fn fresh(&self, server: &McpServer, presented: Presented, refused: bool) -> Result<Presented, McpError> {
        let Some(mcp) = &presented.credential.mcp else { return Ok(presented) };
        let McpAuth::OAuth { expires_at_ms, refresh } = &mcp.auth else { return Ok(presented) };
        let expired = expires_at_ms.is_some_and(|at| at <= self.service.now_ms() + OAUTH_EXPIRY_MARGIN_MS);
        let Some(refresh) = refresh.clone().filter(|_| expired || refused) else {
            if expired {
                return Err(McpError::authentication(&server.url, "the access token expired and cannot be refreshed"));
            }
            return Ok(presented);
        };
        self.refresh(server, presented, &refresh).await
    }

    /// Exchanges the refresh token for a new access token (RFC 6749 6) and
    /// writes it back to the vault, sealed.
    async fn refresh(
        &self,
        server: &McpServer,
        presented: Presented,
        refresh: &OAuthRefresh,
    ) -> Result<Presented, McpError> {
        let failed =
            |message: String| McpError::authentication(&server.url, format!("refreshing the token: {message}"));
        let vault_id = presented.vault_id;
        let id = presented.credential.id;
        let refresh_token = self
            .open(&vault_id, &format!("{id}/refresh_token"), &refresh.sealed_refresh_token)
            .map_err(|e| failed(e.to_string()))?;
        let client_secret = refresh
            .sealed_client_secret
            .as_ref()
            .map(|sealed| self.open(&vault_id, &format!("{id}/client_secret"), sealed))
            .transpose()
            .map_err(|e| failed(e.to_string()))?;
        let (body, headers) = token_request(refresh, &refresh_token, client_secret.as_deref());
        let response = self
            .http
            .post_raw_as(&refresh.token_endpoint, "application/x-www-form-urlencoded", &headers, body)
            .await
            .map_err(|error| failed(error.to_string()))?;
        if !(200..300).contains(&response.status) {
            return Err(failed(format!("the token endpoint answered HTTP {}", response.status)));
        }
        let answer: Value = serde_json::from_slice(&response.body).map_err(|error| failed(error.to_string()))?;
        let token =
            answer.get("access_token").and_then(Value::as_str).ok_or_else(|| failed("no access_token".into()))?;
        let expires_at_ms =
            answer.get("expires_in").and_then(Value::as_u64).map(|seconds| self.service.now_ms() + seconds * 1000);
        let rotated = answer.get("refresh_token").and_then(Value::as_str).map(|rotated| OAuthRefreshChange {
            client_id: refresh.client_id.clone(),
            token_endpoint: refresh.token_endpoint.clone(),
            endpoint_auth: refresh.endpoint_auth,
            client_secret: client_secret.clone(),
            refresh_token: rotated.to_string(),
            scope: refresh.scope.clone(),
            resource: refresh.resource.clone(),
        });
        let change = CredentialChange {
            display_name: None,
            metadata: Vec::new(),
            secret_name: None,
            secret_value: Some(token.to_string()),
            allowed_hosts: None,
            archive: false,
            mcp: Some(McpCredentialChange {
                server_url: presented.credential.mcp.as_ref().map_or(server.url.clone(), |mcp| mcp.server_url.clone()),
                oauth: Some(OAuthChange { expires_at_ms, refresh: rotated }),
            }),
        };
        let request = ClientRequest::PutCredential { vault_id, credential_id: id, change };
        let resource = self.service.call(&Caller::Node, request).await.and_then(|answer| answer.into_resource());
        let resource = resource.map_err(|error| failed(format!("storing the new token: {error}")))?;
        let credential = resource
            .vault_body()
            .and_then(|body| body.credentials.iter().find(|credential| credential.id == id).cloned())
            .ok_or_else(|| failed("the credential went away".into()))?;
        tracing::info!(%vault_id, credential = %id, server = %server.name, "refreshed an MCP OAuth token");
        Ok(Presented { token: token.to_string(), vault_id, credential })
    }

    /// Runs `exchange` with the credential; a refused `mcp_oauth` token is
    /// refreshed and the exchange tried once more.
    async fn with_credential<T>(
        &self,
        session: &SessionInfo,
        server: &McpServer,
        exchange: impl for<'a> Fn(&'a McpClient, Option<&'a str>) -> BoxFuture<'a, Result<T, McpError>>,
    ) -> Result<(T, Vec<Secret>), McpError> {
        let (presented, mut secrets) = self.prepare(session, server).await?;
        let token = presented.as_ref().map(|presented| presented.token.clone());
        // An error quotes what the server answered, which may echo a secret.
        match exchange(&self.client, token.as_deref()).await {
            Err(McpError::Authentication { .. }) if refreshable(presented.as_ref()) => {
                let Some(presented) = presented else { unreachable!("refreshable checks it") };
                let presented = self.fresh(server, presented, true).await.map_err(|error| scrubbed(error, &secrets))?;
                secrets.push(Secret { name: secret_label(&presented.credential), value: presented.token.clone() });
                match exchange(&self.client, Some(&presented.token)).await {
                    Ok(value) => Ok((value, secrets)),
                    Err(error) => Err(scrubbed(error, &secrets)),
                }
            }
            Ok(value) => Ok((value, secrets)),
            Err(error) => Err(scrubbed(error, &secrets)),
        }
    }
}

impl McpServers for NodeMcp {
    fn list_tools(&self, session: &SessionInfo, server: &McpServer) -> BoxFuture<'_, Result<Vec<McpTool>, McpError>> {
        let (session, server) = (session.clone(), server.clone());
        Box::pin(async move {
            let url = server.url.clone();
            let listed = self
                .with_credential(&session, &server, |client, token| {
                    let url = url.clone();
                    Box::pin(async move { client.list_tools(&url, token).await })
                })
                .await?;
            Ok(listed.0)
        })
    }

    fn call_tool(
        &self,
        session: &SessionInfo,
        server: &McpServer,
        tool: &str,
        input_json: &str,
    ) -> BoxFuture<'_, Result<McpCallResult, McpError>> {
        let (session, server, tool, input_json) =
            (session.clone(), server.clone(), tool.to_string(), input_json.to_string());
        Box::pin(async move {
            let url = server.url.clone();
            let (result, secrets) = self
                .with_credential(&session, &server, |client, token| {
                    let (url, tool, input_json) = (url.clone(), tool.clone(), input_json.clone());
                    Box::pin(async move { client.call_tool(&url, token, &tool, &input_json).await })
                })
                .await?;
            Ok(McpCallResult { text: redact(&result.text, &secrets), is_error: result.is_error })
        })
    }
}

/// `error` with every secret of the session replaced in its message.
fn scrubbed(error: McpError, secrets: &[Secret]) -> McpError {
    match error {
        McpError::Connection { url, message } => McpError::Connection { url, message: redact(&message, secrets) },
        McpError::Authentication { url, message } => {
            McpError::Authentication { url, message: redact(&message, secrets) }
        }
    }
}

fn refreshable(presented: Option<&Presented>) -> bool {
    presented
        .and_then(|presented| presented.credential.mcp.as_ref())
        .is_some_and(|mcp| matches!(&mcp.auth, McpAuth::OAuth { refresh: Some(_), .. }))
}

/// How a credential's value is named where it is redacted.
fn secret_label(credential: &Credential) -> String {
    match &credential.mcp {
        Some(_) => format!("mcp_credential_{}", credential.id),
        None => credential.secret_name.clone(),
    }
}

/// The form body and headers of a refresh-token request.
fn token_request(
    refresh: &OAuthRefresh,
    refresh_token: &str,
    client_secret: Option<&str>,
) -> (Vec<u8>, Vec<(&'static str, String)>) {
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("grant_type", "refresh_token");
    form.append_pair("refresh_token", refresh_token);
    let mut headers = Vec::new();
    match (refresh.endpoint_auth, client_secret) {
        (TokenEndpointAuth::ClientSecretBasic, Some(secret)) => {
            let pair = format!("{}:{secret}", refresh.client_id);
            headers
                .push(("authorization", format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair))));
        }
        (TokenEndpointAuth::ClientSecretPost, Some(secret)) => {
            form.append_pair("client_id", &refresh.client_id);
            form.append_pair("client_secret", secret);
        }
        _ => {
            form.append_pair("client_id", &refresh.client_id);
        }
    }
    if let Some(scope) = &refresh.scope {
        form.append_pair("scope", scope);
    }
    if let Some(resource) = &refresh.resource {
        form.append_pair("resource", resource);
    }
    (form.finish().into_bytes(), headers)
}

/// Egress to an MCP server follows the environment's network rules: an
/// unrestricted network reaches any server, an allowlist the servers it
/// lists, no network none (nor does a session without an environment).
fn check_egress(environment: Option<&EnvironmentSpec>, url: &str) -> Result<(), McpError> {
    let refused =
        |why: String| McpError::connection(url, format!("egress refused by the environment's network rules: {why}"));
    let network = environment.map(|environment| &environment.network).unwrap_or(&Network::None);
    let uri: hyper::Uri = url.parse().map_err(|_| McpError::connection(url, "not a URL"))?;
    let host = uri.host().unwrap_or_default().to_string();
    let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("https") { 443 } else { 80 });
    match network {
        Network::Unrestricted => Ok(()),
        Network::None => {
            Err(refused("the environment has no network (list the server's host in allowed_hosts)".into()))
        }
        Network::Allowlist(entries) => {
            let allowlist = Allowlist::parse(entries).map_err(refused)?;
            if allowlist.allows(&host, port) {
                Ok(())
            } else {
                Err(refused(format!("{host}:{port} is not in allowed_hosts")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn environment(network: Network) -> EnvironmentSpec {
        EnvironmentSpec {
            name: "e".into(),
            driver: "namespace".into(),
            network,
            tool_timeout_ms: 1_000,
            eager_provisioning: false,
            vaults: vec![],
            resources: Default::default(),
        }
    }

    #[test]
    fn egress_to_mcp_servers_follows_the_network_rules() {
        let url = "http://127.0.0.1:8123/mcp";
        assert!(check_egress(Some(&environment(Network::Unrestricted)), url).is_ok());
        assert!(check_egress(Some(&environment(Network::Allowlist(vec!["127.0.0.1:8123".into()]))), url).is_ok());
        let other = Network::Allowlist(vec!["127.0.0.1:9".into()]);
        let Err(McpError::Connection { message, .. }) = check_egress(Some(&environment(other)), url) else {
            panic!("an unlisted server was allowed");
        };
        assert!(message.contains("127.0.0.1:8123 is not in allowed_hosts"), "{message}");
        assert!(check_egress(Some(&environment(Network::None)), url).is_err());
        assert!(check_egress(None, url).is_err());
    }

    #[test]
    fn refresh_requests_authenticate_as_the_endpoint_asks() {
        let refresh = OAuthRefresh {
            client_id: "app".into(),
            token_endpoint: "http://127.0.0.1:1/token".into(),
            endpoint_auth: TokenEndpointAuth::ClientSecretBasic,
            scope: Some("read".into()),
            resource: None,
            sealed_refresh_token: vec![],
            sealed_client_secret: None,
        };
        let (body, headers) = token_request(&refresh, "r1", Some("s"));
        assert_eq!(String::from_utf8(body).unwrap(), "grant_type=refresh_token&refresh_token=r1&scope=read");
        assert_eq!(headers, vec![("authorization", "Basic YXBwOnM=".to_string())]);
        let post = OAuthRefresh { endpoint_auth: TokenEndpointAuth::ClientSecretPost, scope: None, ..refresh };
        let (body, headers) = token_request(&post, "r1", Some("s"));
        assert!(headers.is_empty());
        assert!(String::from_utf8(body).unwrap().ends_with("client_id=app&client_secret=s"));
    }
}
