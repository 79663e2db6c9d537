//! ALPN `agentd/1`: the native client's front door. Decodes a request,
//! calls the service, encodes the answer; a follow streams a frame per batch.

use agentd_protocol::api::{ClientRequest, ClientResponse, Request, RequestV1};
use agentd_protocol::frame::decode_body;
use agentd_protocol::ids::SessionId;
use agentd_protocol::limits::CLIENT_FRAME_BYTES_MAX;
use agentd_protocol::{ApiError, PROTOCOL_VERSION};
use agentd_transport::wire::write_frame;

use super::stream::{answer, read_request_as};
use crate::service::{Caller, Service};

pub(super) async fn serve(service: Service, mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    // Admitted before the request is read: a refused one costs no memory.
    let permit = match service.admit_request() {
        Ok(permit) => permit,
        Err(error) => {
            let _ = recv.stop(quinn::VarInt::from_u32(0));
            return answer(&mut send, &ClientResponse::Error(error), CLIENT_FRAME_BYTES_MAX).await;
        }
    };
    let decode = |body: &[u8]| match decode_body::<Request>(body) {
        Ok(request) => Ok(Envelope::Current(request)),
        Err(error) => decode_body::<RequestV1>(body).map(Envelope::Version1).map_err(|_| error),
    };
    let Some(request) =
        read_request_as(&mut send, &mut recv, CLIENT_FRAME_BYTES_MAX, ClientResponse::Error, decode).await
    else {
        return;
    };
    let request = match request {
        Envelope::Current(request) if request.version == PROTOCOL_VERSION => request,
        Envelope::Current(Request { version, .. }) | Envelope::Version1(RequestV1 { version, .. }) => {
            let error = ApiError::UnsupportedVersion { requested: version, supported: PROTOCOL_VERSION };
            return answer(&mut send, &ClientResponse::Error(error), CLIENT_FRAME_BYTES_MAX).await;
        }
    };
    let caller = match service.authenticate(&request.api_key).await {
        Ok(caller) => caller,
        Err(error) => return answer(&mut send, &ClientResponse::Error(error), CLIENT_FRAME_BYTES_MAX).await,
    };
    let response = match request.body {
        ClientRequest::FollowEvents { session_id, from_seq } => {
            // A follow lives as long as its reader: it holds no permit.
            drop(permit);
            return follow(&service, &caller, session_id, from_seq, &mut send).await;
        }
        body => service.call(&caller, body).await.unwrap_or_else(ClientResponse::Error),
    };
    answer(&mut send, &response, CLIENT_FRAME_BYTES_MAX).await;
}

/// A request of this protocol version, or of version 1 (which carried no
/// key), so that an old client is told which version to speak.
enum Envelope {
    Current(Request),
    Version1(RequestV1),
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
