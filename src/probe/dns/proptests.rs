//! Property tests of DNS answer validation (issue 7): messages built from random parts, and random or
//! mangled wire bytes through hickory's decoder, judged by `Dns::validate` against the rules
//! of `valid_rcodes`, `min_answers` and `answer_regex`. Run with `cargo test --lib prop_`;
//! `tests/fixtures/fuzz/dns/*.hex` is replayed on every run.

use std::net::{Ipv4Addr, Ipv6Addr};

use hickory_resolver::proto::op::{DnsResponse, MessageType, OpCode, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, AAAA, CNAME, MX, NULL, TXT};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use proptest::prelude::*;

use super::*;
use crate::config::{DnsConfig, DnsTransport, Pattern};
use regionprobe_testkit::corpus::{corpus, from_hex, proptest_cases};

fn name() -> impl Strategy<Value = Name> {
    prop_oneof![
        // Labels of any bytes: hickory escapes what is not printable.
        prop::collection::vec(prop::collection::vec(any::<u8>(), 1..12), 0..4)
            .prop_filter_map("not a valid name", |labels| Name::from_labels(labels).ok()),
        prop::sample::select(&["www.example.com.", "example.com", ".", "xn--bcher-kva.de."][..])
            .prop_map(|text| Name::from_ascii(text).unwrap()),
    ]
}

fn rdata() -> impl Strategy<Value = RData> {
    prop_oneof![
        any::<u32>().prop_map(|a| RData::A(A(Ipv4Addr::from(a)))),
        any::<u128>().prop_map(|a| RData::AAAA(AAAA(Ipv6Addr::from(a)))),
        name().prop_map(|n| RData::CNAME(CNAME(n))),
        (any::<u16>(), name()).prop_map(|(pref, n)| RData::MX(MX::new(pref, n))),
        prop::collection::vec(any::<String>(), 1..3).prop_map(|t| RData::TXT(TXT::new(t))),
        prop::collection::vec(any::<u8>(), 1..16).prop_map(|b| RData::NULL(NULL::with(b))),
    ]
}

fn record() -> impl Strategy<Value = Record> {
    (name(), any::<u32>(), rdata()).prop_map(|(n, ttl, data)| Record::from_rdata(n, ttl, data))
}

/// A response: usually one of the named rcodes, sometimes any 12-bit (EDNS-extended) one.
fn message() -> impl Strategy<Value = Message> {
    (
        any::<u16>(),
        prop_oneof![4 => 0u16..12, 1 => 0u16..4096],
        prop::collection::vec(record(), 0..6),
        prop::collection::vec(record(), 0..2),
    )
        .prop_map(|(id, rcode, answers, additionals)| {
            let mut message = Message::response(id, OpCode::Query);
            message.metadata.response_code = rcode.into();
            message.add_answers(answers);
            message.add_additionals(additionals);
            message
        })
}

const PATTERNS: &[&str] = &[
    "",
    "^www",
    "example",
    r"\d+\.\d+",
    "IN",
    "^$",
    "(?s).",
    "[^\\s\\S]",
    "TXT|MX",
    "\"",
];

fn dns_config() -> impl Strategy<Value = DnsConfig> {
    (
        prop::collection::vec(prop_oneof![4 => 0u16..12, 1 => 0u16..4096], 1..4),
        prop_oneof![0u32..8, Just(u32::MAX)],
        prop::option::of(prop::sample::select(PATTERNS)),
    )
        .prop_map(|(rcodes, min_answers, pattern)| DnsConfig {
            server: "192.0.2.53:53".parse().unwrap(),
            query: Name::from_ascii("www.example.com.").unwrap(),
            record_type: RecordType::A,
            transport: DnsTransport::Udp,
            recursion_desired: true,
            valid_rcodes: rcodes.into_iter().map(Into::into).collect(),
            min_answers,
            answer_regex: pattern.map(|p| Pattern(regex::Regex::new(p).unwrap())),
        })
}

/// The verdict, written out from the rules in the configuration reference.
fn expected(config: &DnsConfig, message: &Message) -> bool {
    // A truncated answer (TC flag) is never accepted: the model missed this rule until 30,000
    // cases of random wire bytes set the flag.
    !message.metadata.truncation
        && config
            .valid_rcodes
            .contains(&message.metadata.response_code)
        && message.answers.len() as u64 >= u64::from(config.min_answers)
        && config.answer_regex.as_ref().is_none_or(|pattern| {
            message
                .answers
                .iter()
                .any(|record| pattern.0.is_match(&record.to_string()))
        })
}

fn check(config: &DnsConfig, message: &Message) -> Result<(), TestCaseError> {
    let verdict = Dns::new(config).validate(message);
    prop_assert_eq!(verdict.is_ok(), expected(config, message), "{:?}", verdict);
    if let Err(failure) = verdict {
        prop_assert_eq!(failure.reason, Reason::Validation);
        prop_assert!(
            failure
                .detail
                .starts_with("www.example.com. A from 192.0.2.53:53: "),
            "{}",
            failure.detail
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(proptest_cases(500))]

    #[test]
    fn prop_dns_validation_follows_the_rules(config in dns_config(), message in message()) {
        check(&config, &message)?;
    }

    /// The same message, encoded and decoded as the probe receives it, gets the same verdict.
    #[test]
    fn prop_dns_a_message_off_the_wire_is_judged_as_sent(config in dns_config(), message in message()) {
        let Ok(bytes) = message.to_vec() else {
            return Ok(());
        };
        // hickory refuses a few of its own encodings (an empty TXT, say): not ours to judge.
        let response = DnsResponse::from_buffer(bytes);
        prop_assume!(response.is_ok(), "{:?}", response);
        let response = response.unwrap();
        check(&config, &response)?;
        // Without an OPT record only the low 4 bits of an rcode travel.
        let sent = u16::from(message.metadata.response_code);
        prop_assert_eq!(u16::from(response.metadata.response_code), sent & 0xf);
        prop_assert_eq!(response.answers.len(), message.answers.len());
    }

    /// Random bytes, and valid messages with bytes overwritten or cut: decoded or refused,
    /// never a panic; whatever decodes is judged by the rules.
    #[test]
    fn prop_dns_random_and_mangled_wire_bytes_never_panic(
        config in dns_config(),
        bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..96),
            (message(), prop::collection::vec((any::<usize>(), any::<u8>()), 0..4), any::<usize>())
                .prop_filter_map("not encodable", |(message, edits, cut)| {
                    let mut bytes = message.to_vec().ok()?;
                    for (at, byte) in edits {
                        let at = at % bytes.len();
                        bytes[at] = byte;
                    }
                    bytes.truncate(cut % (bytes.len() + 16));
                    Some(bytes)
                }),
        ],
    ) {
        if let Ok(message) = Message::from_vec(&bytes) {
            check(&config, &message)?;
        }
        if let Ok(response) = DnsResponse::from_buffer(bytes) {
            prop_assert_eq!(response.metadata.message_type, MessageType::Response);
            check(&config, &response)?;
        }
    }

    #[test]
    fn prop_dns_every_rcode_has_a_name(rcode in any::<u16>()) {
        let shown = rcode_name(rcode.into());
        prop_assert!(!shown.is_empty());
    }
}

/// `tests/fixtures/fuzz/dns/*.hex`: `# response` (decodes as a response), `# query` (decodes,
/// but is not a response) or `# invalid`, then the message in hex. Each is decoded and, when
/// it decodes, judged under several configurations, on every run.
#[test]
fn prop_dns_corpus_replays() {
    let paths = corpus("dns");
    let configs: Vec<DnsConfig> = [(0, None), (1, Some("^www")), (u32::MAX, Some("(?s)."))]
        .into_iter()
        .map(|(min_answers, pattern)| DnsConfig {
            server: "192.0.2.53:53".parse().unwrap(),
            query: Name::from_ascii("www.example.com.").unwrap(),
            record_type: RecordType::A,
            transport: DnsTransport::Udp,
            recursion_desired: true,
            valid_rcodes: vec![ResponseCode::NoError, ResponseCode::NXDomain],
            min_answers,
            answer_regex: pattern.map(|p| Pattern(regex::Regex::new(p).unwrap())),
        })
        .collect();
    for path in paths {
        let text = std::fs::read_to_string(&path).unwrap();
        let shown = path.display();
        let expected = text.lines().next().unwrap().trim_start_matches("# ").trim();
        let bytes = from_hex(&text);
        let got = match (
            Message::from_vec(&bytes),
            DnsResponse::from_buffer(bytes.clone()),
        ) {
            (Ok(_), Ok(response)) => {
                for config in &configs {
                    check(config, &response).unwrap_or_else(|err| panic!("{shown}: {err}"));
                }
                "response"
            }
            (Ok(_), Err(_)) => "query",
            (Err(_), _) => "invalid",
        };
        assert_eq!(got, expected, "{shown}");
    }
}
