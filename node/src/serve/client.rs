//! ALPN `agentd/1`: the native client's front door. Decodes a request,
//! calls the service, encodes the answer; a follow streams a frame per batch.

use agentd_protocol::api::{ClientRequest, ClientResponse, Request};
use agentd_protocol::ids::SessionId;
use agentd_protocol::limits::CLIENT_FRAME_BYTES_MAX;
use agentd_protocol::{ApiError, PROTOCOL_VERSION};
use agentd_transport::wire::write_frame;

use super::stream::{answer, read_request};
use crate::service::{Caller, Service};

pub(super) async fn serve(service: Service, mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    let Some(request) =
        read_request::<Request, _>(&mut send, &mut recv, CLIENT_FRAME_BYTES_MAX, ClientResponse::Error).await
    else {
        return;
    };
    let caller = Caller::Anonymous;
    let response = match request.body {
        _ if request.version != PROTOCOL_VERSION => ClientResponse::Error(ApiError::UnsupportedVersion {
            requested: request.version,
            supported: PROTOCOL_VERSION,
        }),
        ClientRequest::FollowEvents { session_id, from_seq } => {
            return follow(&service, &caller, session_id, from_seq, &mut send).await;
        }
        body => service.call(&caller, body).await.unwrap_or_else(ClientResponse::Error),
    };
    answer(&mut send, &response, CLIENT_FRAME_BYTES_MAX).await;
}

/// Streams a frame per batch of the session's events until the client goes
/// away, or ends with an error frame when the follow cannot go on here.
async fn follow(
    service: &Service,
    caller: &Caller,
    session_id: SessionId,
    from_seq: u64,
    send: &mut quinn::SendStream,
) {
    let streamed = async {
        let mut follow = service.follow(caller, session_id, from_seq).await?;
        loop {
            let events = tokio::select! {
                events = follow.next() => events?,
                _ = send.stopped() => return Ok(()),
            };
            let frame = ClientResponse::Events { events, next_seq: follow.next_seq() };
            write_frame(send, &frame, CLIENT_FRAME_BYTES_MAX)
                .await
                .map_err(|_| ApiError::Unavailable { message: "client went away".into() })?;
        }
    };
    if let Err(error) = streamed.await {
        answer(send, &ClientResponse::Error(error), CLIENT_FRAME_BYTES_MAX).await;
    } else {
        let _ = send.finish();
    }
}
