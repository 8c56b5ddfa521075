//! One query in, one decision out: answer it from [`Names`], forward it
//! upstream, or drop it. Pure (no I/O), so every case is a unit test.
//!
//! - not a DNS message, or more or fewer than one question: FORMERR with
//!   the query's id (a packet shorter than a header, or one that is itself
//!   a response, is dropped: there is no one to answer, or answering could
//!   start a loop);
//! - an opcode other than QUERY: NOTIMP;
//! - a service's name: its addresses of the asked type (A: IPv4, AAAA:
//!   IPv6; any other type, or a family it has none of: no answers,
//!   NOERROR), authoritative;
//! - another name under the cluster domain: NXDOMAIN, authoritative;
//! - both negative answers (NXDOMAIN, and NOERROR without answers) carry
//!   the cluster domain's SOA in the authority section, so resolvers
//!   cache them for [`TTL_SECS`] only (RFC 2308) instead of a default of
//!   their own;
//! - anything else, or a class other than IN: forwarded as it came.

use std::net::IpAddr;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use super::names::{Lookup, Names};

/// How long a resolver may keep an answer: short, since a removed
/// service must stop resolving soon.
pub const TTL_SECS: u32 = 5;

/// The length of a DNS header: a shorter packet has no id to answer.
const HEADER_LEN: usize = 12;

/// What to do with one query.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Send these bytes back.
    Answer(Vec<u8>),
    /// Not the cluster's name: pass the query upstream as it is.
    Forward,
    /// Nothing to send.
    Drop,
}

/// Decides what to do with `query` (the bytes of one DNS message).
pub fn decide(query: &[u8], names: &Names) -> Decision {
    let message = match Message::from_vec(query) {
        Ok(message) => message,
        Err(_) => return malformed(query),
    };
    if message.message_type() != MessageType::Query {
        return Decision::Drop;
    }
    if message.op_code() != OpCode::Query {
        return error(&message, ResponseCode::NotImp);
    }
    let [question] = message.queries() else {
        return error(&message, ResponseCode::FormErr);
    };
    if question.query_class() != DNSClass::IN {
        return Decision::Forward;
    }
    let name = question.name().to_ascii();
    let mut reply = Message::new();
    reply
        .set_header(hickory_proto::op::Header::response_from_request(
            message.header(),
        ))
        .set_authoritative(true)
        .set_recursion_available(true)
        .add_query(question.clone());
    match names.lookup(&name) {
        Lookup::Elsewhere => return Decision::Forward,
        Lookup::NoSuchName => {
            reply.set_response_code(ResponseCode::NXDomain);
        }
        Lookup::Service(addrs) => {
            for addr in addrs {
                let rdata = match (question.query_type(), addr) {
                    (RecordType::A, IpAddr::V4(v4)) => RData::A(A(*v4)),
                    (RecordType::AAAA, IpAddr::V6(v6)) => RData::AAAA(AAAA(*v6)),
                    _ => continue,
                };
                reply.add_answer(Record::from_rdata(question.name().clone(), TTL_SECS, rdata));
            }
        }
    }
    if reply.answers().is_empty() {
        if let Some(soa) = start_of_authority(names.domain()) {
            reply.add_name_server(soa);
        }
    }
    encode(&reply)
}

/// The cluster domain's SOA record, whose TTL and minimum bound how long
/// a resolver caches a negative answer; `None` if the domain is no DNS
/// name (the flag's check refuses such a domain).
fn start_of_authority(domain: &str) -> Option<Record> {
    let zone = Name::from_ascii(format!("{domain}.")).ok()?;
    let soa = SOA::new(
        Name::from_ascii(format!("ns.{domain}.")).ok()?,
        Name::from_ascii(format!("hostmaster.{domain}.")).ok()?,
        1,
        3600,
        600,
        86400,
        TTL_SECS,
    );
    Some(Record::from_rdata(zone, TTL_SECS, RData::SOA(soa)))
}

/// A packet that is no DNS message: FORMERR if it has a query's header.
fn malformed(query: &[u8]) -> Decision {
    let Some(header) = query.get(..HEADER_LEN) else {
        return Decision::Drop;
    };
    let is_response = header[2] & 0x80 != 0;
    if is_response {
        return Decision::Drop;
    }
    let id = u16::from_be_bytes([header[0], header[1]]);
    encode(&Message::error_msg(
        id,
        OpCode::Query,
        ResponseCode::FormErr,
    ))
}

/// SERVFAIL for `query` (no upstream answered), if it has an id.
pub fn server_failure(query: &[u8]) -> Option<Vec<u8>> {
    let id = query.get(..2)?;
    let message = Message::error_msg(
        u16::from_be_bytes([id[0], id[1]]),
        OpCode::Query,
        ResponseCode::ServFail,
    );
    message.to_vec().ok()
}

fn error(message: &Message, code: ResponseCode) -> Decision {
    encode(&Message::error_msg(message.id(), message.op_code(), code))
}

fn encode(message: &Message) -> Decision {
    match message.to_vec() {
        Ok(bytes) => Decision::Answer(bytes),
        Err(_) => Decision::Drop,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;
    use raft_state::state::RegistryState;

    use crate::dns::names::tests::record;

    /// A query for `name` of `kind`, id 7, as a stub resolver sends it.
    pub(crate) fn query(name: &str, kind: RecordType) -> Vec<u8> {
        let mut message = Message::new();
        message
            .set_id(7)
            .set_recursion_desired(true)
            .add_query(Query::query(Name::from_ascii(name).expect("name"), kind));
        message.to_vec().expect("encode")
    }

    fn names() -> Names {
        let mut state = RegistryState::default();
        state
            .services
            .insert("app-redis".to_owned(), record([198, 18, 0, 2], Some("app")));
        Names::of(&state, "lbmesh.internal")
    }

    fn answer(decision: Decision) -> Message {
        let Decision::Answer(bytes) = decision else {
            panic!("no answer: {decision:?}");
        };
        Message::from_vec(&bytes).expect("answer parses")
    }

    fn addresses(message: &Message) -> Vec<String> {
        message
            .answers()
            .iter()
            .map(|r| r.data().to_string())
            .collect()
    }

    #[test]
    fn a_service_gets_its_vip_and_an_aaaa_query_no_address() {
        let names = names();
        let reply = answer(decide(
            &query("redis.app.lbmesh.internal.", RecordType::A),
            &names,
        ));
        assert_eq!(reply.id(), 7);
        assert_eq!(reply.response_code(), ResponseCode::NoError);
        assert!(reply.authoritative() && reply.recursion_desired());
        assert_eq!(addresses(&reply), ["198.18.0.2"]);
        assert_eq!(reply.answers()[0].ttl(), TTL_SECS);
        assert!(reply.name_servers().is_empty(), "no SOA beside an answer");
        // A service without a v6 VIP: no AAAA, and no error either.
        let reply = answer(decide(&query("app-redis.", RecordType::AAAA), &names));
        assert_eq!(reply.response_code(), ResponseCode::NoError);
        assert!(reply.answers().is_empty());
        assert_negative_ttl(&reply);
    }

    /// A negative answer carries the domain's SOA with a short TTL.
    fn assert_negative_ttl(reply: &Message) {
        let [soa] = reply.name_servers() else {
            panic!("one SOA expected: {:?}", reply.name_servers());
        };
        assert_eq!(soa.name().to_ascii(), "lbmesh.internal.");
        let RData::SOA(data) = soa.data() else {
            panic!("not an SOA: {soa:?}");
        };
        assert_eq!((soa.ttl(), data.minimum()), (TTL_SECS, TTL_SECS));
        assert_eq!(data.mname().to_ascii(), "ns.lbmesh.internal.");
    }

    #[test]
    fn unknown_names_are_nxdomain_inside_the_domain_and_forwarded_outside() {
        let names = names();
        let reply = answer(decide(&query("db.lbmesh.internal.", RecordType::A), &names));
        assert_eq!(reply.response_code(), ResponseCode::NXDomain);
        assert!(reply.answers().is_empty());
        assert_negative_ttl(&reply);
        assert_eq!(
            decide(&query("example.com.", RecordType::A), &names),
            Decision::Forward
        );
    }

    #[test]
    fn garbage_gets_formerr_and_short_packets_or_responses_nothing() {
        let names = names();
        let mut garbage = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        garbage.extend_from_slice(&[0xff; 9]);
        let reply = answer(decide(&garbage, &names));
        assert_eq!(reply.id(), 0x1234);
        assert_eq!(reply.response_code(), ResponseCode::FormErr);
        assert_eq!(decide(&[1, 2, 3], &names), Decision::Drop);
        let mut response = query("app-redis.", RecordType::A);
        response[2] |= 0x80;
        assert_eq!(decide(&response, &names), Decision::Drop);
        response[2] &= 0x7f;
        // A header announcing two questions, followed by one.
        response[5] = 2;
        assert_eq!(
            answer(decide(&response, &names)).response_code(),
            ResponseCode::FormErr
        );
    }

    #[test]
    fn random_packets_never_panic() {
        let names = names();
        let valid = query("redis.app.lbmesh.internal.", RecordType::A);
        let mut rng = fastrand::Rng::with_seed(16);
        for _ in 0..20_000 {
            let mut packet = valid.clone();
            for _ in 0..rng.usize(1..6) {
                let at = rng.usize(..packet.len());
                packet[at] = rng.u8(..);
            }
            packet.truncate(rng.usize(..=packet.len()));
            let _ = decide(&packet, &names);
        }
    }
}
