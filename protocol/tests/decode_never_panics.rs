//! Property tests: decoding arbitrary or corrupted bytes yields a typed error
//! or a value, never a panic, and valid messages round-trip.

use agentd_protocol::api::{ClientRequest, ClientResponse, Consistency, Request, RequestV1};
use agentd_protocol::cluster::{ClusterEnvelope, ClusterRequest, JoinRequest, JoinResponse, RaftRpcKind};
use agentd_protocol::event::{Event, EventPayload};
use agentd_protocol::frame::{decode_body, decode_frame, encode_frame};
use agentd_protocol::hands::{HandsCall, HandsRequest, HandsResponse};
use agentd_protocol::ids::{EventId, GroupId, SessionId, ShardId};
use agentd_protocol::limits::{CLIENT_FRAME_BYTES_MAX, HANDS_FRAME_BYTES_MAX};
use agentd_protocol::resource::{EventQuery, Order};
use proptest::prelude::*;

fn text_key(bits: u128) -> String {
    format!("agentd_{bits:032x}_{}", "0".repeat(64))
}

fn sample_requests(bits: u128, text: String, seq: u64) -> Vec<Request> {
    let session_id = SessionId::from_random(bits);
    vec![
        Request::new(text_key(bits), ClientRequest::CreateSession { session_id, agent: None, environment: None }),
        Request::new(
            text_key(bits),
            ClientRequest::Append {
                session_id,
                event_id: EventId::from_random(bits.rotate_left(7)),
                payload: EventPayload::user_text(text),
            },
        ),
        Request::new(
            text_key(bits),
            ClientRequest::ReadEvents { session_id, from_seq: seq, limit: 10, consistency: Consistency::Local },
        ),
        Request::new(text_key(bits), ClientRequest::FollowEvents { session_id, from_seq: seq }),
        Request::new(text_key(bits), ClientRequest::ClusterStatus),
        Request::new(
            text_key(bits),
            ClientRequest::ListEvents {
                session_id,
                query: EventQuery {
                    types: vec!["agent.message".into()],
                    order: Order::Descending,
                    after_seq: Some(seq),
                    limit: 5,
                },
            },
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_body::<Request>(&bytes);
        let _ = decode_body::<RequestV1>(&bytes);
        let _ = decode_body::<ClientResponse>(&bytes);
        let _ = decode_body::<ClusterEnvelope>(&bytes);
        let _ = decode_body::<JoinRequest>(&bytes);
        let _ = decode_body::<JoinResponse>(&bytes);
        let _ = decode_body::<Event>(&bytes);
        let _ = decode_frame::<Request>(&bytes, CLIENT_FRAME_BYTES_MAX);
        let _ = decode_body::<HandsRequest>(&bytes);
        let _ = decode_body::<HandsResponse>(&bytes);
    }

    #[test]
    fn hands_calls_round_trip(name in ".{0,16}", input in ".{0,64}", key in ".{0,32}", value in ".{0,32}") {
        let request = HandsRequest::new(HandsCall::Execute {
            name,
            input_json: input,
            idempotency_key: key,
            secrets: vec![("TOKEN".to_owned(), value)],
        });
        let bytes = encode_frame(&request, HANDS_FRAME_BYTES_MAX).unwrap();
        prop_assert_eq!(decode_frame::<HandsRequest>(&bytes, HANDS_FRAME_BYTES_MAX).unwrap(), request);
    }

    #[test]
    fn valid_requests_round_trip(bits in any::<u128>(), text in ".{0,64}", seq in any::<u64>()) {
        for request in sample_requests(bits, text.clone(), seq) {
            let frame = encode_frame(&request, CLIENT_FRAME_BYTES_MAX).unwrap();
            prop_assert_eq!(decode_frame::<Request>(&frame, CLIENT_FRAME_BYTES_MAX).unwrap(), request);
        }
    }

    #[test]
    fn corrupted_and_truncated_frames_never_panic(
        bits in any::<u128>(),
        text in ".{0,64}",
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
    ) {
        for request in sample_requests(bits, text.clone(), 1) {
            let mut frame = encode_frame(&request, CLIENT_FRAME_BYTES_MAX).unwrap();
            for (position, value) in &flips {
                let index = position % frame.len();
                frame[index] ^= value;
            }
            let _ = decode_frame::<Request>(&frame, CLIENT_FRAME_BYTES_MAX);
            let _ = decode_frame::<Request>(&frame[..cut % (frame.len() + 1)], CLIENT_FRAME_BYTES_MAX);
        }
        let raft = ClusterEnvelope {
            version: 1,
            from: 7,
            body: ClusterRequest::Raft { group: GroupId::Shard(ShardId(3)), kind: RaftRpcKind::Vote, payload: text.into_bytes(), to: 2 },
        };
        let frame = encode_frame(&raft, CLIENT_FRAME_BYTES_MAX).unwrap();
        let _ = decode_frame::<ClusterEnvelope>(&frame[..cut % (frame.len() + 1)], CLIENT_FRAME_BYTES_MAX);
    }
}

#[test]
fn huge_length_prefixes_are_refused_before_allocation() {
    // A vector claiming 2^62 elements inside a small body.
    let mut body = vec![0u8]; // Request.version varint prefix follows
    body.extend_from_slice(&[0xff; 16]);
    assert!(decode_body::<Request>(&body).is_err());
    let header = (u32::MAX).to_be_bytes();
    assert!(matches!(
        agentd_protocol::frame::body_len(header, CLIENT_FRAME_BYTES_MAX),
        Err(agentd_protocol::Error::FrameTooLarge { .. })
    ));
}
