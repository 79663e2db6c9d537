//! The invariant checkers: pure functions over what a run recorded (the
//! history of client operations and of leadership and epochs observed on
//! the nodes) and what the replicas hold at the end. One checker per
//! invariant of the design (`shared/DESIGN.md`, "Invariants").

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use agentd_protocol::event::{Event, EventPayload};
use agentd_protocol::ids::{EventId, SessionId};

/// Which invariant a violation breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Invariant {
    /// Invariant 1: No acknowledged event is ever lost.
    AcknowledgedKept,
    /// Invariant 2: Replicas agree; per-session sequence numbers have no gaps or duplicates.
    ReplicasAgree,
    /// Invariant 3: At most one leader per term per group.
    OneLeaderPerTerm,
    /// Invariant 4: Stale orchestrator epochs never append.
    StaleEpochsNeverAppend,
    /// Invariant 5: A tool call takes effect at most once per idempotency key.
    EffectsAtMostOnce,
    /// Invariant 6: After faults stop, the cluster converges and every session finishes.
    Convergence,
    /// Invariant 7: No vault secret appears in any stored event.
    NoSecretInLog,
    /// Invariant 8: Bad input from the network or disk yields a typed error, never a
    /// panic (a node that panics stops the run at once).
    NoPanic,
    /// Invariant 9: A terminated session's log ends with its termination: nothing
    /// (a late tool result of a fenced orchestrator, a client's event) follows it.
    TerminatedIsLast,
    /// Invariant 11: Within a session, event timestamps never go backwards,
    /// whatever the leaders' clocks say.
    TimestampsMonotonic,
}

impl Invariant {
    pub fn name(self) -> &'static str {
        match self {
            Invariant::AcknowledgedKept => "acknowledged-events-kept",
            Invariant::ReplicasAgree => "replicas-agree",
            Invariant::OneLeaderPerTerm => "one-leader-per-term",
            Invariant::StaleEpochsNeverAppend => "stale-epochs-never-append",
            Invariant::EffectsAtMostOnce => "tool-effects-at-most-once",
            Invariant::Convergence => "convergence-after-faults",
            Invariant::NoSecretInLog => "no-secret-in-log",
            Invariant::NoPanic => "no-panic",
            Invariant::TerminatedIsLast => "terminated-is-last",
            Invariant::TimestampsMonotonic => "timestamps-never-go-backwards",
        }
    }

    /// Liveness invariants exit 2; the rest are safety (exit 1).
    pub fn is_liveness(self) -> bool {
        self == Invariant::Convergence
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub invariant: Invariant,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}: {}", self.invariant.name(), self.detail)
    }
}

fn violation(invariant: Invariant, detail: String) -> Violation {
    Violation { invariant, detail }
}

/// An append a client saw acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acked {
    pub session_id: SessionId,
    pub event_id: EventId,
    pub seq: u64,
}

/// A termination a client saw acknowledged, as the sequence number of its event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terminated {
    pub session_id: SessionId,
    pub seq: u64,
}

/// A node that saw itself leader of a group in a term.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Leadership {
    pub group: String,
    pub term: u64,
    pub node: u64,
}

/// What the brain's session log saw. The order in which the observations
/// arrive is not the log's: a proposal can return on its (former) leader
/// after a later leader's claim has returned, so each observation carries
/// its place in the session's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EpochObservation {
    /// A claim of `epoch` was committed, after at most `after_seq` events of
    /// the session.
    Claimed { session_id: SessionId, epoch: u64, after_seq: u64 },
    /// An append under `epoch` was committed.
    Appended { session_id: SessionId, epoch: u64, seq: u64 },
}

/// Everything one replica holds at the end: each session's events in order.
pub type Replica = BTreeMap<SessionId, Vec<Event>>;

/// Invariant 1: Every acknowledged append is on every replica of its session, at the
/// acknowledged sequence number.
pub fn acknowledged_kept(acked: &[Acked], replicas: &BTreeMap<u64, Replica>) -> Vec<Violation> {
    let mut violations = Vec::new();
    for ack in acked {
        let holders: Vec<(&u64, &Vec<Event>)> = replicas
            .iter()
            .filter_map(|(node, replica)| replica.get(&ack.session_id).map(|events| (node, events)))
            .collect();
        if holders.is_empty() {
            violations.push(violation(
                Invariant::AcknowledgedKept,
                format!("{} (acknowledged as seq {}) is on no replica: its session is gone", ack.event_id, ack.seq),
            ));
            continue;
        }
        for (node, events) in holders {
            let found = events.iter().find(|event| event.id == ack.event_id);
            match found {
                Some(event) if event.seq == ack.seq => {}
                Some(event) => violations.push(violation(
                    Invariant::AcknowledgedKept,
                    format!("n{node}: {} acknowledged as seq {} is stored as seq {}", ack.event_id, ack.seq, event.seq),
                )),
                None => violations.push(violation(
                    Invariant::AcknowledgedKept,
                    format!(
                        "n{node}: {} of {} acknowledged as seq {} is missing (the replica holds {} events)",
                        ack.event_id,
                        ack.session_id,
                        ack.seq,
                        events.len()
                    ),
                )),
            }
        }
    }
    violations
}

/// Invariant 9: On every replica of a terminated session, the event at the
/// acknowledged sequence number is `session.status_terminated` and it is the last.
pub fn timestamps_monotonic(replicas: &BTreeMap<u64, Replica>) -> Vec<Violation> {
    let mut violations = Vec::new();
    for (node, replica) in replicas {
        for (session_id, events) in replica {
            let backwards = events.windows(2).find(|pair| pair[1].processed_at_ms < pair[0].processed_at_ms);
            if let Some(pair) = backwards {
                violations.push(violation(
                    Invariant::TimestampsMonotonic,
                    format!(
                        "n{node}: {session_id} seq {} is stamped {} ms, before seq {} at {} ms",
                        pair[1].seq, pair[1].processed_at_ms, pair[0].seq, pair[0].processed_at_ms
                    ),
                ));
            }
        }
    }
    violations
}

pub fn terminated_is_last(terminated: &[Terminated], replicas: &BTreeMap<u64, Replica>) -> Vec<Violation> {
    let mut violations = Vec::new();
    for termination in terminated {
        for (node, replica) in replicas {
            let Some(events) = replica.get(&termination.session_id) else { continue };
            let at = events.iter().find(|event| event.seq == termination.seq);
            if !at.is_some_and(|event| event.payload == EventPayload::SessionStatusTerminated) {
                violations.push(violation(
                    Invariant::TerminatedIsLast,
                    format!(
                        "n{node}: {} was terminated at seq {}, which holds {:?}",
                        termination.session_id,
                        termination.seq,
                        at.map(|event| event.payload.type_name())
                    ),
                ));
            }
            if let Some(after) = events.iter().find(|event| event.seq > termination.seq) {
                violations.push(violation(
                    Invariant::TerminatedIsLast,
                    format!(
                        "n{node}: {} has {} at seq {} after its termination at seq {}",
                        termination.session_id,
                        after.payload.type_name(),
                        after.seq,
                        termination.seq
                    ),
                ));
            }
        }
    }
    violations
}

/// Invariant 2: Every replica's events of a session are numbered 1..n without gaps
/// or duplicate ids, and the replicas of a session hold the same events
/// (after convergence, all of them; `converged == false` allows a replica
/// to hold a prefix).
pub fn replicas_agree(replicas: &BTreeMap<u64, Replica>, converged: bool) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut sessions: BTreeSet<SessionId> = BTreeSet::new();
    for (node, replica) in replicas {
        for (session_id, events) in replica {
            sessions.insert(*session_id);
            let mut ids = BTreeSet::new();
            for (index, event) in events.iter().enumerate() {
                if event.seq != index as u64 + 1 {
                    violations.push(violation(
                        Invariant::ReplicasAgree,
                        format!("n{node}: {session_id} has seq {} at position {}", event.seq, index + 1),
                    ));
                    break;
                }
                if !ids.insert(event.id) {
                    violations.push(violation(
                        Invariant::ReplicasAgree,
                        format!("n{node}: {session_id} holds {} twice", event.id),
                    ));
                }
            }
        }
    }
    for session_id in sessions {
        let copies: Vec<(&u64, &Vec<Event>)> = replicas
            .iter()
            .filter_map(|(node, replica)| replica.get(&session_id).map(|events| (node, events)))
            .collect();
        let Some((longest_node, longest)) = copies.iter().max_by_key(|(_, events)| events.len()) else { continue };
        for (node, events) in &copies {
            let common = events.len().min(longest.len());
            if let Some(position) = (0..common).find(|&index| events[index] != longest[index]) {
                violations.push(violation(
                    Invariant::ReplicasAgree,
                    format!(
                        "{session_id}: n{node} and n{longest_node} differ at seq {}: {:?} vs {:?}",
                        position + 1,
                        events[position].payload.type_name(),
                        longest[position].payload.type_name()
                    ),
                ));
            } else if converged && events.len() != longest.len() {
                violations.push(violation(
                    Invariant::ReplicasAgree,
                    format!(
                        "{session_id}: after convergence n{node} holds {} events, n{longest_node} {}",
                        events.len(),
                        longest.len()
                    ),
                ));
            }
        }
    }
    violations
}

/// Invariant 3: No two nodes led the same group in the same term.
pub fn one_leader_per_term(leaderships: &[Leadership]) -> Vec<Violation> {
    let mut leaders: BTreeMap<(&str, u64), BTreeSet<u64>> = BTreeMap::new();
    for leadership in leaderships {
        leaders.entry((leadership.group.as_str(), leadership.term)).or_default().insert(leadership.node);
    }
    leaders
        .into_iter()
        .filter(|(_, nodes)| nodes.len() > 1)
        .map(|((group, term), nodes)| {
            let nodes: Vec<String> = nodes.iter().map(|node| format!("n{node}")).collect();
            violation(Invariant::OneLeaderPerTerm, format!("{group} term {term} had leaders {}", nodes.join(", ")))
        })
        .collect()
}

/// Invariant 4: Once epoch `e` of a session was claimed, no append under an epoch
/// below `e` commits: no event under an older epoch comes after the claim
/// in the session's log.
pub fn stale_epochs_never_append(observations: &[EpochObservation]) -> Vec<Violation> {
    let mut claims: BTreeMap<SessionId, Vec<(u64, u64)>> = BTreeMap::new();
    for observation in observations {
        if let EpochObservation::Claimed { session_id, epoch, after_seq } = observation {
            claims.entry(*session_id).or_default().push((*epoch, *after_seq));
        }
    }
    let mut violations = Vec::new();
    for observation in observations {
        let EpochObservation::Appended { session_id, epoch, seq } = observation else { continue };
        let newer_before = claims
            .get(session_id)
            .into_iter()
            .flatten()
            .filter(|(claimed, after_seq)| claimed > epoch && after_seq < seq)
            .max();
        if let Some((claimed, after_seq)) = newer_before {
            violations.push(violation(
                Invariant::StaleEpochsNeverAppend,
                format!(
                    "{session_id}: seq {seq} appended under epoch {epoch} after epoch {claimed} was claimed (at seq {after_seq} or before)"
                ),
            ));
        }
    }
    violations
}

/// Invariant 5: Every idempotency key took effect at most once.
pub fn effects_at_most_once(effects: &BTreeMap<String, u32>) -> Vec<Violation> {
    effects
        .iter()
        .filter(|(key, count)| !key.is_empty() && **count > 1)
        .map(|(key, count)| {
            violation(Invariant::EffectsAtMostOnce, format!("tool call {key} took effect {count} times"))
        })
        .collect()
}

/// Invariant 7: No stored event contains a secret value.
pub fn no_secret_in_log(replicas: &BTreeMap<u64, Replica>, secrets: &[String]) -> Vec<Violation> {
    let mut violations = Vec::new();
    for (node, replica) in replicas {
        for events in replica.values() {
            for event in events {
                let text = format!("{:?}", event.payload);
                if secrets.iter().any(|secret| !secret.is_empty() && text.contains(secret.as_str())) {
                    violations.push(violation(
                        Invariant::NoSecretInLog,
                        format!(
                            "n{node}: {} seq {} ({}) contains a vault secret",
                            event.session_id,
                            event.seq,
                            event.payload.type_name()
                        ),
                    ));
                }
            }
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(session: u128, seq: u64, id: u128) -> Event {
        Event {
            session_id: SessionId::from_random(session),
            seq,
            id: EventId::from_random(id),
            processed_at_ms: 0,
            payload: EventPayload::user_text("x"),
        }
    }

    #[test]
    fn a_lost_acknowledged_event_is_reported() {
        let acked = vec![Acked { session_id: SessionId::from_random(1), event_id: EventId::from_random(9), seq: 2 }];
        let replica: Replica = BTreeMap::from([(SessionId::from_random(1), vec![event(1, 1, 8)])]);
        let violations = acknowledged_kept(&acked, &BTreeMap::from([(1, replica.clone())]));
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].invariant, Invariant::AcknowledgedKept);
        let full: Replica = BTreeMap::from([(SessionId::from_random(1), vec![event(1, 1, 8), event(1, 2, 9)])]);
        assert!(acknowledged_kept(&acked, &BTreeMap::from([(1, full)])).is_empty());
    }

    #[test]
    fn a_timestamp_that_goes_backwards_is_reported() {
        let session = SessionId::from_random(1);
        let at = |seq, processed_at_ms| Event { processed_at_ms, ..event(1, seq, seq as u128) };
        let forward: Replica = BTreeMap::from([(session, vec![at(1, 10), at(2, 10), at(3, 11)])]);
        assert!(timestamps_monotonic(&BTreeMap::from([(1, forward)])).is_empty());
        let backward: Replica = BTreeMap::from([(session, vec![at(1, 10), at(2, 9)])]);
        let violations = timestamps_monotonic(&BTreeMap::from([(1, backward)]));
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].invariant, Invariant::TimestampsMonotonic);
    }

    #[test]
    fn an_event_after_a_termination_is_reported() {
        let session = SessionId::from_random(1);
        let terminated_event = Event { payload: EventPayload::SessionStatusTerminated, ..event(1, 2, 2) };
        let terminated = vec![Terminated { session_id: session, seq: 2 }];
        let ended: Replica = BTreeMap::from([(session, vec![event(1, 1, 1), terminated_event.clone()])]);
        assert!(terminated_is_last(&terminated, &BTreeMap::from([(1, ended)])).is_empty());
        let continued: Replica = BTreeMap::from([(session, vec![event(1, 1, 1), terminated_event, event(1, 3, 3)])]);
        let violations = terminated_is_last(&terminated, &BTreeMap::from([(1, continued)]));
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].invariant, Invariant::TerminatedIsLast);
        let elsewhere: Replica = BTreeMap::from([(session, vec![event(1, 1, 1), event(1, 2, 2)])]);
        assert_eq!(terminated_is_last(&terminated, &BTreeMap::from([(1, elsewhere)])).len(), 1);
    }

    #[test]
    fn diverging_replicas_and_gaps_are_reported() {
        let a: Replica = BTreeMap::from([(SessionId::from_random(1), vec![event(1, 1, 1), event(1, 2, 2)])]);
        let b: Replica = BTreeMap::from([(SessionId::from_random(1), vec![event(1, 1, 1), event(1, 2, 3)])]);
        assert_eq!(replicas_agree(&BTreeMap::from([(1, a.clone()), (2, b)]), true).len(), 1);
        let prefix: Replica = BTreeMap::from([(SessionId::from_random(1), vec![event(1, 1, 1)])]);
        assert!(replicas_agree(&BTreeMap::from([(1, a.clone()), (2, prefix.clone())]), false).is_empty());
        assert_eq!(replicas_agree(&BTreeMap::from([(1, a), (2, prefix)]), true).len(), 1);
        let gap: Replica = BTreeMap::from([(SessionId::from_random(1), vec![event(1, 2, 1)])]);
        assert_eq!(replicas_agree(&BTreeMap::from([(1, gap)]), false).len(), 1);
    }

    #[test]
    fn two_leaders_in_a_term_and_stale_appends_are_reported() {
        let leaderships = vec![
            Leadership { group: "shard-0".into(), term: 3, node: 1 },
            Leadership { group: "shard-0".into(), term: 3, node: 2 },
            Leadership { group: "shard-0".into(), term: 4, node: 2 },
        ];
        assert_eq!(one_leader_per_term(&leaderships).len(), 1);
        let session_id = SessionId::from_random(1);
        let observations = vec![
            EpochObservation::Claimed { session_id, epoch: 1, after_seq: 1 },
            EpochObservation::Appended { session_id, epoch: 1, seq: 2 },
            EpochObservation::Claimed { session_id, epoch: 2, after_seq: 2 },
            EpochObservation::Appended { session_id, epoch: 1, seq: 3 },
        ];
        assert_eq!(stale_epochs_never_append(&observations).len(), 1);
        assert!(stale_epochs_never_append(&observations[..3]).is_empty());
        // An append that returned late, after a newer claim that came after
        // it in the log, is not stale.
        let late = vec![
            EpochObservation::Claimed { session_id, epoch: 1, after_seq: 1 },
            EpochObservation::Claimed { session_id, epoch: 2, after_seq: 3 },
            EpochObservation::Appended { session_id, epoch: 1, seq: 3 },
        ];
        assert!(stale_epochs_never_append(&late).is_empty());
    }

    #[test]
    fn repeated_effects_and_leaked_secrets_are_reported() {
        let effects = BTreeMap::from([("a".to_string(), 1), ("b".to_string(), 2), (String::new(), 5)]);
        assert_eq!(effects_at_most_once(&effects).len(), 1);
        let mut leaked = event(1, 1, 1);
        leaked.payload = EventPayload::user_text("token=hunter2");
        let replica: Replica = BTreeMap::from([(SessionId::from_random(1), vec![leaked])]);
        assert_eq!(no_secret_in_log(&BTreeMap::from([(1, replica.clone())]), &["hunter2".to_string()]).len(), 1);
        assert!(no_secret_in_log(&BTreeMap::from([(1, replica)]), &["other".to_string()]).is_empty());
    }
}
