//! Who a request comes from: an API key checked against its hashed record
//! (replicated to every node), and a rate limit per key on this node.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use agentd_protocol::api::ClientRequest;
use agentd_protocol::ids::{ApiKeyId, GroupId};
use agentd_protocol::limits::{API_KEY_REQUESTS_BURST, API_KEY_REQUESTS_PER_SECOND};
use agentd_protocol::sync::lock;
use agentd_protocol::tenancy::{parse_api_key, ApiKeyRecord, Caller};
use agentd_protocol::ApiError;
use tokio::time::Instant;

use super::{Origin, Service};

fn unauthenticated(message: &str) -> ApiError {
    ApiError::Unauthenticated { message: message.to_string() }
}

impl Service {
    /// The caller an API key stands for, or why it stands for none. A key
    /// this node has not replicated yet (made a moment ago elsewhere) is
    /// looked up on the metadata leader.
    pub async fn authenticate(&self, api_key: &str) -> Result<Caller, ApiError> {
        if api_key.is_empty() {
            return Err(unauthenticated(
                "an API key is required: pass it as `Authorization: Bearer KEY`, `x-api-key: KEY` or --api-key",
            ));
        }
        let Some((key_id, secret)) = parse_api_key(api_key) else {
            return Err(unauthenticated("the API key is malformed"));
        };
        let record = match self.metadata()?.state.api_key(key_id)? {
            Some(record) => record,
            None => self.remote_api_key(key_id).await?,
        };
        if !record.matches(secret) {
            return Err(unauthenticated("the API key is not valid"));
        }
        if record.revoked_at_ms.is_some() {
            return Err(unauthenticated("the API key was revoked"));
        }
        self.inner.rate_limits.admit(key_id)?;
        Ok(Caller::Key { key_id, workspace: record.workspace, role: record.role })
    }

    /// A key's record: from this node's metadata replica, else from the
    /// metadata leader.
    pub(super) async fn api_key_record(&self, key_id: ApiKeyId) -> Result<ApiKeyRecord, ApiError> {
        match self.metadata()?.state.api_key(key_id)? {
            Some(record) => Ok(record),
            None => self.remote_api_key(key_id).await,
        }
    }

    async fn remote_api_key(&self, key_id: ApiKeyId) -> Result<ApiKeyRecord, ApiError> {
        let request = ClientRequest::GetApiKeyRecord { key_id };
        match self.route_metadata(&Caller::Node, request, Origin::FrontDoor).await {
            Ok(response) => response.into_api_key_record(),
            Err(ApiError::NotFound { .. }) => Err(unauthenticated("the API key is not valid")),
            Err(error) => Err(error),
        }
    }

    /// A key's record from this node's replica, for the metadata leader's answer.
    pub(super) fn local_api_key(&self, key_id: ApiKeyId) -> Result<Option<ApiKeyRecord>, ApiError> {
        let metadata = self.host().group(GroupId::Metadata);
        Ok(match metadata {
            Some(metadata) => metadata.state.api_key(key_id)?,
            None => None,
        })
    }
}

/// A token bucket per key: [`API_KEY_REQUESTS_PER_SECOND`] sustained,
/// [`API_KEY_REQUESTS_BURST`] at once. Per node: a client spread over nodes
/// gets each node's allowance.
#[derive(Default)]
pub(super) struct RateLimits {
    buckets: Mutex<HashMap<ApiKeyId, Bucket>>,
}

struct Bucket {
    tokens: f64,
    refilled: Instant,
}

impl RateLimits {
    fn admit(&self, key_id: ApiKeyId) -> Result<(), ApiError> {
        let now = Instant::now();
        let rate = f64::from(API_KEY_REQUESTS_PER_SECOND);
        let burst = f64::from(API_KEY_REQUESTS_BURST);
        let mut buckets = lock(&self.buckets);
        let bucket = buckets.entry(key_id).or_insert(Bucket { tokens: burst, refilled: now });
        let elapsed = now.duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let wait = Duration::from_secs_f64((1.0 - bucket.tokens) / rate);
        Err(ApiError::RateLimited { retry_after_ms: (wait.as_millis() as u64).max(1) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_key_gets_its_burst_then_waits_for_refills() {
        let limits = RateLimits::default();
        let key = ApiKeyId::from_random(1);
        for _ in 0..API_KEY_REQUESTS_BURST {
            limits.admit(key).expect("within the burst");
        }
        let Err(ApiError::RateLimited { retry_after_ms }) = limits.admit(key) else {
            panic!("past the burst was admitted");
        };
        assert!(retry_after_ms >= 1);
        limits.admit(ApiKeyId::from_random(2)).expect("another key has its own bucket");
        tokio::time::advance(Duration::from_millis(retry_after_ms)).await;
        limits.admit(key).expect("refilled");
    }
}
