//! `probe = "dns"`: one query to one server with hickory's DNS client: no cache, no retries,
//! a fresh socket (udp) or connection (tcp) per probe. Latency is the round trip of the query,
//! plus the TCP connect over tcp (what a client falling back to TCP waits for), which the
//! outcome's phases split into `connect` and `processing`.

use std::time::Duration;

use futures_util::StreamExt;
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::tcp::TcpClientStream;
use hickory_resolver::net::udp::UdpClientStream;
use hickory_resolver::net::xfer::{DnsExchange, DnsHandle, DnsMultiplexer};
use hickory_resolver::proto::op::{DnsRequestOptions, Message, Query};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::outcome::{Failure, Outcome, Phase, Phases, Reason, connect_failure};
use crate::config::{DnsConfig, DnsTransport, rcode_name};

/// The reasons a DNS probe fails with (its server is an address: nothing to resolve).
pub const REASONS: &[Reason] = &[
    Reason::Timeout,
    Reason::Refused,
    Reason::Unreachable,
    Reason::Validation,
    Reason::Error,
    Reason::Local,
];

/// The phases a DNS probe exports: over tcp the connect and the query; over udp none (the
/// round trip is the one phase, the latency itself).
pub fn phases(config: &DnsConfig) -> &'static [Phase] {
    match config.transport {
        DnsTransport::Udp => &[],
        DnsTransport::Tcp => &[Phase::Connect, Phase::Processing],
    }
}

/// The query, the record type, the server and the transport.
pub fn endpoint(config: &DnsConfig) -> String {
    let transport = match config.transport {
        DnsTransport::Udp => "udp",
        DnsTransport::Tcp => "tcp",
    };
    format!(
        "{} {} @{} ({transport})",
        config.query, config.record_type, config.server
    )
}

/// hickory's own per-request timeout; the target's (shorter) timeout cancels us first.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct Dns {
    config: DnsConfig,
}

/// Aborts the exchange's background task when the probe ends or is cancelled.
struct Background(JoinHandle<()>);

impl Drop for Background {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Dns {
    pub fn new(config: &DnsConfig) -> Self {
        Dns {
            config: config.clone(),
        }
    }

    pub async fn run(&mut self) -> Result<Outcome, Failure> {
        let server = self.config.server;
        let provider = TokioRuntimeProvider::default();
        let started = Instant::now();
        let (exchange, background) = match self.config.transport {
            DnsTransport::Udp => {
                let stream = UdpClientStream::builder(server, provider)
                    .with_timeout(Some(CLIENT_TIMEOUT))
                    .with_max_retries(0)
                    .build();
                let (exchange, background) =
                    DnsExchange::<TokioRuntimeProvider>::from_stream(stream);
                (exchange, tokio::spawn(background))
            }
            DnsTransport::Tcp => {
                let (connect, handle) =
                    TcpClientStream::new(server, None, Some(CLIENT_TIMEOUT), provider);
                let stream = connect.await.map_err(|err| match err {
                    NetError::Io(io) => connect_failure(server, &io),
                    NetError::Timeout => {
                        Failure::new(Reason::Timeout, format!("connect {server}: timed out"))
                    }
                    other => Failure::new(Reason::Error, format!("connect {server}: {other}")),
                })?;
                let multiplexer = DnsMultiplexer::new(stream, handle).with_timeout(CLIENT_TIMEOUT);
                let (exchange, background) =
                    DnsExchange::<TokioRuntimeProvider>::from_stream(multiplexer);
                (exchange, tokio::spawn(background))
            }
        };
        let _background = Background(background);

        let mut options = DnsRequestOptions::default();
        options.recursion_desired = self.config.recursion_desired;
        let query = Query::query(self.config.query.clone(), self.config.record_type);
        let sent = Instant::now();
        let response = exchange
            .lookup(query, options)
            .next()
            .await
            .ok_or_else(|| Failure::new(Reason::Error, format!("{server}: no response")))?
            .map_err(|err| self.query_failure(err))?;
        let answered = Instant::now();
        // Over tcp the connect is a phase of its own; the query is `processing`. The phases
        // add up to the latency.
        let mut phases = Phases::default();
        match self.config.transport {
            DnsTransport::Udp => phases.add(Phase::Processing, answered - started),
            DnsTransport::Tcp => {
                phases.add(Phase::Connect, sent - started);
                phases.add(Phase::Processing, answered - sent);
            }
        }
        self.validate(&response)?;
        Ok(Outcome {
            latency: phases.total(),
            phases: Some(phases),
            ..Outcome::default()
        })
    }

    fn query_failure(&self, err: NetError) -> Failure {
        let server = self.config.server;
        match err {
            NetError::Timeout => Failure::new(Reason::Timeout, format!("{server}: no answer")),
            // A send or receive error (the connect has its own): the reason as for a connect.
            NetError::Io(io) => Failure::new(
                connect_failure(server, &io).reason,
                format!("{server}: {io}"),
            ),
            other => Failure::new(Reason::Error, format!("{server}: {other}")),
        }
    }

    /// The answer must be complete (no TC flag), carry an accepted rcode, enough records, and a record matching
    /// `answer_regex`: otherwise the server answered, but not what we expect (`validation`).
    /// Takes the decoded message: `DnsResponse` derefs to it, and tests build one directly.
    fn validate(&self, response: &Message) -> Result<(), Failure> {
        let config = &self.config;
        let what = format!(
            "{} {} from {}",
            config.query, config.record_type, config.server
        );
        // TC: the server says the answer is incomplete. A resolver would ask again over TCP,
        // so neither the round trip nor the records say what a client gets.
        if response.metadata.truncation {
            return Err(Failure::new(
                Reason::Validation,
                format!(
                    "{what}: the answer is truncated (TC flag); transport = \"tcp\" gets it whole"
                ),
            ));
        }
        let rcode = response.metadata.response_code;
        if !config.valid_rcodes.contains(&rcode) {
            let expected: Vec<String> = config
                .valid_rcodes
                .iter()
                .copied()
                .map(rcode_name)
                .collect();
            return Err(Failure::new(
                Reason::Validation,
                format!(
                    "{what}: rcode {}, expected {}",
                    rcode_name(rcode),
                    expected.join(" or ")
                ),
            ));
        }
        let answers = &response.answers;
        if (answers.len() as u64) < u64::from(config.min_answers) {
            return Err(Failure::new(
                Reason::Validation,
                format!(
                    "{what}: {} answers, expected at least {}",
                    answers.len(),
                    config.min_answers
                ),
            ));
        }
        if let Some(pattern) = &config.answer_regex
            && !answers
                .iter()
                .any(|record| pattern.0.is_match(&record.to_string()))
        {
            return Err(Failure::new(
                Reason::Validation,
                format!("{what}: no answer matches /{}/", pattern.0.as_str()),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    //! `Dns::run` against a real DNS server on 127.0.0.1 (the test kit's `dns`), with
    //! the target's timeout applied the way the scheduler applies it.

    use std::collections::HashMap;
    use std::net::SocketAddr;

    use hickory_resolver::proto::rr::RecordType;
    use tokio::time::timeout;

    use super::*;
    use crate::config::ProbeConfig;
    use regionprobe_testkit::dns::{DnsServer, Transport, closed_tcp_port};

    /// A DNS target's keys through the real configuration parser, so the defaults are the
    /// shipped ones.
    fn config(server: SocketAddr, keys: &str) -> DnsConfig {
        let text = format!(
            "[[target]]\nname = \"dns\"\nregion = \"r\"\nprobe = \"dns\"\nserver = \"{server}\"\n{keys}\n"
        );
        let config = crate::config::parse("test.toml", &text, Some(HashMap::new()))
            .unwrap_or_else(|err| panic!("{err}"));
        match &config.targets[0].probe {
            ProbeConfig::Dns(dns) => (**dns).clone(),
            other => panic!("not a dns target: {other:?}"),
        }
    }

    async fn probe(server: SocketAddr, keys: &str) -> Result<Outcome, Failure> {
        let mut dns = Dns::new(&config(server, keys));
        // A generous bound: a probe that hangs fails here instead of hanging the test.
        timeout(Duration::from_secs(5), dns.run())
            .await
            .expect("the probe should end on its own")
    }

    async fn fails(server: SocketAddr, keys: &str) -> Failure {
        probe(server, keys)
            .await
            .expect_err(&format!("{keys} should fail"))
    }

    async fn succeeds(server: SocketAddr, keys: &str) -> Outcome {
        probe(server, keys)
            .await
            .unwrap_or_else(|failure| panic!("{keys}: {failure}"))
    }

    const TRANSPORTS: [(&str, Transport); 2] = [("udp", Transport::Udp), ("tcp", Transport::Tcp)];

    #[tokio::test]
    async fn an_answer_is_a_success_timed_by_its_round_trip_over_udp_and_tcp() {
        let server = DnsServer::start().await;
        for (transport, expected) in TRANSPORTS {
            let keys = format!("query = \"www.example.test\"\ntransport = \"{transport}\"");
            let quick = succeeds(server.addr, &keys).await;
            assert!(quick.latency > Duration::ZERO, "{transport}: {quick:?}");
            assert!(
                quick.latency < Duration::from_secs(1),
                "{transport}: {quick:?}"
            );

            server.set_delay(Duration::from_millis(100));
            let slow = succeeds(server.addr, &keys).await;
            server.set_delay(Duration::ZERO);
            assert!(
                slow.latency >= Duration::from_millis(100) && slow.latency < Duration::from_secs(1),
                "{transport}: a 100 ms delay measured as {:?}",
                slow.latency
            );

            let received = server.received();
            let last = received.last().unwrap();
            assert_eq!(last.transport, expected);
            assert_eq!(last.name, "www.example.test.");
            assert_eq!(last.record_type, RecordType::A);
        }
        assert_eq!(server.received().len(), 4, "{:?}", server.received());
    }

    #[tokio::test]
    async fn tcp_latency_includes_the_connect_as_a_phase() {
        let server = DnsServer::start().await;
        server.set_delay(Duration::from_millis(50));
        let outcome = succeeds(
            server.addr,
            "query = \"www.example.test\"\ntransport = \"tcp\"",
        )
        .await;
        let phases = outcome.phases.expect("phases over tcp");
        assert!(phases.get(Phase::Connect) > Duration::ZERO, "{phases:?}");
        assert!(
            phases.get(Phase::Processing) >= Duration::from_millis(50),
            "{phases:?}"
        );
        assert_eq!(phases.total(), outcome.latency);
    }

    #[tokio::test]
    async fn each_probe_sends_exactly_one_query_on_a_fresh_socket() {
        let server = DnsServer::start().await;
        for (transport, expected) in TRANSPORTS {
            let before = server.received().len();
            let mut dns = Dns::new(&config(
                server.addr,
                &format!("query = \"www.example.test\"\ntransport = \"{transport}\""),
            ));
            for _ in 0..3 {
                dns.run().await.unwrap();
            }
            let received = &server.received()[before..];
            assert_eq!(received.len(), 3, "{transport}: {received:?}");
            assert!(received.iter().all(|q| q.transport == expected));
            let mut ports: Vec<u16> = received.iter().map(|q| q.peer.port()).collect();
            ports.sort_unstable();
            ports.dedup();
            assert_eq!(
                ports.len(),
                3,
                "{transport}: a socket was reused: {received:?}"
            );
        }
        assert_eq!(server.tcp_accepted(), 3);
    }

    #[tokio::test]
    async fn recursion_desired_is_set_by_default_and_cleared_on_request() {
        let server = DnsServer::start().await;
        for (transport, _) in TRANSPORTS {
            succeeds(
                server.addr,
                &format!("query = \"www.example.test\"\ntransport = \"{transport}\""),
            )
            .await;
            succeeds(
                server.addr,
                &format!(
                    "query = \"www.example.test\"\ntransport = \"{transport}\"\nrecursion_desired = false"
                ),
            )
            .await;
        }
        let flags: Vec<bool> = server
            .received()
            .iter()
            .map(|q| q.recursion_desired)
            .collect();
        assert_eq!(flags, [true, false, true, false]);
    }

    #[tokio::test]
    async fn an_unexpected_rcode_is_validation_naming_the_rcode() {
        let server = DnsServer::start().await;
        for (transport, _) in TRANSPORTS {
            for (name, rcode) in [
                ("nowhere.example.test", "NXDOMAIN"),
                ("servfail.example.test", "SERVFAIL"),
                ("refused.example.test", "REFUSED"),
            ] {
                let failure = fails(
                    server.addr,
                    &format!("query = \"{name}\"\ntransport = \"{transport}\""),
                )
                .await;
                // The server answered: even REFUSED is not the `refused` of a closed port.
                assert_eq!(failure.reason, Reason::Validation, "{failure}");
                assert!(
                    failure
                        .detail
                        .contains(&format!("rcode {rcode}, expected NOERROR")),
                    "{failure}"
                );
                assert!(failure.detail.contains(name), "{failure}");
            }
        }
    }

    #[tokio::test]
    async fn a_truncated_answer_is_validation_even_with_its_records() {
        let server = DnsServer::start().await;
        server.set_truncated(true);
        for (transport, _) in TRANSPORTS {
            // The records are there and would satisfy min_answers: TC alone fails the probe.
            let failure = fails(
                server.addr,
                &format!(
                    "query = \"www.example.test\"\ntransport = \"{transport}\"\nmin_answers = 2"
                ),
            )
            .await;
            assert_eq!(failure.reason, Reason::Validation, "{transport}: {failure}");
            assert!(failure.detail.contains("truncated (TC flag)"), "{failure}");
        }
        server.set_truncated(false);
        succeeds(server.addr, "query = \"www.example.test\"\nmin_answers = 2").await;
    }

    #[tokio::test]
    async fn valid_rcodes_decides_which_rcodes_succeed() {
        let server = DnsServer::start().await;
        let nx = "query = \"nowhere.example.test\"\nvalid_rcodes = [\"NXDOMAIN\"]";
        let outcome = succeeds(server.addr, nx).await;
        assert!(outcome.latency > Duration::ZERO);

        // NOERROR is no longer accepted once valid_rcodes leaves it out.
        let failure = fails(
            server.addr,
            "query = \"www.example.test\"\nvalid_rcodes = [\"NXDOMAIN\", \"servfail\"]",
        )
        .await;
        assert_eq!(failure.reason, Reason::Validation);
        assert!(
            failure
                .detail
                .contains("rcode NOERROR, expected NXDOMAIN or SERVFAIL"),
            "{failure}"
        );
    }

    #[tokio::test]
    async fn min_answers_counts_the_records_of_the_answer_section() {
        let server = DnsServer::start().await;
        // www has two A records.
        succeeds(server.addr, "query = \"www.example.test\"\nmin_answers = 2").await;
        let failure = fails(server.addr, "query = \"www.example.test\"\nmin_answers = 3").await;
        assert_eq!(failure.reason, Reason::Validation);
        assert!(
            failure.detail.contains("2 answers, expected at least 3"),
            "{failure}"
        );
        // NOERROR without records (no MX at www): fine by default, too few with min_answers.
        succeeds(
            server.addr,
            "query = \"www.example.test\"\nrecord_type = \"MX\"",
        )
        .await;
        let failure = fails(
            server.addr,
            "query = \"www.example.test\"\nrecord_type = \"MX\"\nmin_answers = 1",
        )
        .await;
        assert_eq!(failure.reason, Reason::Validation);
        assert!(
            failure.detail.contains("0 answers, expected at least 1"),
            "{failure}"
        );
    }

    #[tokio::test]
    async fn answer_regex_must_match_a_record() {
        let server = DnsServer::start().await;
        // The second record matches: any record may.
        succeeds(
            server.addr,
            "query = \"www.example.test\"\nanswer_regex = '192\\.0\\.2\\.11$'",
        )
        .await;
        let failure = fails(
            server.addr,
            "query = \"www.example.test\"\nanswer_regex = '198\\.51\\.100\\.'",
        )
        .await;
        assert_eq!(failure.reason, Reason::Validation);
        assert!(
            failure
                .detail
                .contains("no answer matches /198\\.51\\.100\\./"),
            "{failure}"
        );
        // No answers at all cannot match.
        let failure = fails(
            server.addr,
            "query = \"www.example.test\"\nrecord_type = \"TXT\"\nanswer_regex = '.'",
        )
        .await;
        assert_eq!(failure.reason, Reason::Validation, "{failure}");
    }

    #[tokio::test]
    async fn record_types_are_asked_for_and_their_answers_validated() {
        let server = DnsServer::start().await;
        let cases = [
            ("www.example.test", "AAAA", RecordType::AAAA, "2001:db8::10"),
            (
                "mail.example.test",
                "mx",
                RecordType::MX,
                "10 mx1\\.example\\.test\\.",
            ),
            ("example.test", "TXT", RecordType::TXT, "v=spf1 -all"),
            (
                "alias.example.test",
                "CNAME",
                RecordType::CNAME,
                "CNAME www\\.example\\.test\\.",
            ),
            // An A query of an alias follows the chain: the CNAME and the A records.
            (
                "alias.example.test",
                "A",
                RecordType::A,
                "A 192\\.0\\.2\\.10",
            ),
        ];
        for (query, record_type, expected, regex) in cases {
            for (transport, _) in TRANSPORTS {
                succeeds(
                    server.addr,
                    &format!(
                        "query = \"{query}\"\nrecord_type = \"{record_type}\"\ntransport = \"{transport}\"\nmin_answers = 1\nanswer_regex = '{regex}'"
                    ),
                )
                .await;
                let last = server.received().pop().unwrap();
                assert_eq!(
                    (last.name.as_str(), last.record_type),
                    (format!("{query}.").as_str(), expected)
                );
            }
        }
        // A record of the wrong type does not satisfy the regex meant for another.
        let failure = fails(
            server.addr,
            "query = \"www.example.test\"\nrecord_type = \"AAAA\"\nanswer_regex = '192\\.0\\.2\\.10'",
        )
        .await;
        assert_eq!(failure.reason, Reason::Validation, "{failure}");
    }

    #[tokio::test]
    async fn an_ipv6_server_is_asked_over_udp_and_tcp() {
        let Some(server) = DnsServer::start_on("::1".parse().unwrap()).await else {
            eprintln!("SKIP: no IPv6 loopback on this machine");
            return;
        };
        for (transport, expected) in TRANSPORTS {
            succeeds(
                server.addr,
                &format!(
                    "query = \"www.example.test\"\ntransport = \"{transport}\"\nmin_answers = 2"
                ),
            )
            .await;
            assert_eq!(server.received().pop().unwrap().transport, expected);
        }
    }

    #[tokio::test]
    async fn a_closed_tcp_port_is_refused() {
        let closed = closed_tcp_port();
        let failure = fails(closed, "query = \"www.example.test\"\ntransport = \"tcp\"").await;
        assert_eq!(failure.reason, Reason::Refused, "{failure}");
        assert!(failure.detail.contains(&closed.to_string()), "{failure}");
    }

    /// Longer than hickory's UDP retry interval (333 ms), so a retry would show.
    const SILENT_TIMEOUT: Duration = Duration::from_millis(800);

    #[tokio::test]
    async fn a_server_that_never_answers_is_a_timeout_after_exactly_one_query() {
        let server = DnsServer::start().await;
        server.set_silent(true);
        for (transport, expected) in TRANSPORTS {
            let before = server.received().len();
            let mut probe = Dns::new(&config(
                server.addr,
                &format!("query = \"www.example.test\"\ntransport = \"{transport}\""),
            ));
            let started = Instant::now();
            let result = timeout(SILENT_TIMEOUT, probe.run()).await;
            assert!(result.is_err(), "{transport}: {result:?}");
            assert!(started.elapsed() >= SILENT_TIMEOUT);

            let received = &server.received()[before..];
            assert_eq!(received.len(), 1, "{transport}: {received:?}");
            assert_eq!(received[0].transport, expected);
        }
    }

    #[tokio::test]
    async fn a_cancelled_tcp_probe_closes_its_connection() {
        let server = DnsServer::start().await;
        server.set_silent(true);
        let mut dns = Dns::new(&config(
            server.addr,
            "query = \"www.example.test\"\ntransport = \"tcp\"",
        ));
        for round in 1..=3 {
            assert!(
                timeout(Duration::from_millis(200), dns.run())
                    .await
                    .is_err()
            );
            let deadline = Instant::now() + Duration::from_secs(2);
            while server.tcp_open() > 0 {
                assert!(
                    Instant::now() < deadline,
                    "round {round}: {} connection(s) left open after the timeout",
                    server.tcp_open()
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(server.tcp_accepted(), round);
        }
    }
}
