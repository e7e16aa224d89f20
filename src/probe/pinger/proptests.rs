//! Property tests of the ICMP reply path (issue 7): `classify` and `quoted_token` on arbitrary and
//! near-valid packets, and `Inner::dispatch` against a model of the matching rules. Run with
//! `cargo test --lib prop_`; `tests/fixtures/fuzz/icmp/*.hex` is replayed on every run.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;

use proptest::prelude::*;
use tokio::sync::oneshot::error::TryRecvError;

use super::*;
use regionprobe_testkit::corpus::{corpus, from_hex, proptest_cases};

const OUR_IDENT: u16 = 0x4242;

/// `Inner` needs a tokio socket, never used by `dispatch`: a UDP one needs no privileges.
static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
});

fn inner(family: IpFamily, kind: SocketKind) -> Inner {
    let _entered = RUNTIME.enter();
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_nonblocking(true).unwrap();
    Inner {
        family,
        kind,
        timestamps: Timestamps::Kernel,
        socket: UdpSocket::from_std(socket).unwrap(),
        ident: OUR_IDENT,
        next_seq: AtomicU16::new(0),
        waiters: Mutex::new(HashMap::new()),
        answered: Mutex::new(Answered::default()),
        errors_read: AtomicU64::new(0),
        stats: PingerStats::default(),
    }
}

/// Whether `inner` is a subslice of `outer` (what a parser returns must point into its input).
fn within(inner: &[u8], outer: &[u8]) -> bool {
    let (start, end) = (
        outer.as_ptr() as usize,
        outer.as_ptr() as usize + outer.len(),
    );
    let at = inner.as_ptr() as usize;
    inner.is_empty() || (at >= start && at + inner.len() <= end)
}

fn family() -> impl Strategy<Value = IpFamily> {
    prop_oneof![Just(IpFamily::V4), Just(IpFamily::V6)]
}

fn kind() -> impl Strategy<Value = SocketKind> {
    prop_oneof![Just(SocketKind::Datagram), Just(SocketKind::Raw)]
}

fn address() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|a| IpAddr::V4(Ipv4Addr::from(a))),
        any::<u128>().prop_map(|a| IpAddr::V6(Ipv6Addr::from(a))),
    ]
}

/// ICMP messages that get past the first checks: a reply or an error (IPv4 or IPv6 type
/// numbers), quoting an IP header with a random length field, an echo header and some bytes.
fn near_valid_icmp() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(&[0u8, 3, 11, 1, 129, 8, 128, 5][..]),
        any::<u8>(),
        prop_oneof![
            // An IPv4 header with any IHL, options included.
            (0u8..16, any::<[u8; 3]>(), any::<Ipv4Addr>(), 0usize..44).prop_map(
                |(ihl, misc, dst, extra)| {
                    let mut ip = vec![0x40 | ihl, misc[0], misc[1], misc[2]];
                    ip.extend_from_slice(&[0; 12]);
                    ip.extend_from_slice(&dst.octets());
                    ip.extend(std::iter::repeat_n(0x01, extra));
                    ip
                }
            ),
            // An IPv6 header with a chain of extension headers of any length.
            (
                prop::collection::vec(
                    (
                        prop::sample::select(&[0u8, 43, 44, 51, 60, 135, 58, 17][..]),
                        0u8..4
                    ),
                    0..4
                ),
                any::<u128>(),
            )
                .prop_map(|(chain, dst)| {
                    let first = chain.first().map_or(58, |(next, _)| *next);
                    let mut ip = vec![0x60, 0, 0, 0, 0, 0, first, 64];
                    ip.extend_from_slice(&[0; 16]);
                    ip.extend_from_slice(&dst.to_be_bytes());
                    for (i, (_, len)) in chain.iter().enumerate() {
                        let next = chain.get(i + 1).map_or(58, |(n, _)| *n);
                        ip.extend_from_slice(&[next, *len]);
                        ip.extend(std::iter::repeat_n(0, 6 + usize::from(*len) * 8));
                    }
                    ip
                }),
            prop::collection::vec(any::<u8>(), 0..64),
        ],
        any::<[u8; 8]>(),
        prop::collection::vec(any::<u8>(), 0..24),
        any::<usize>(),
    )
        .prop_map(|(icmp_type, code, ip, echo, tail, cut)| {
            let mut packet = vec![icmp_type, code, 0, 0, 0, 0, 0, 0];
            packet.extend_from_slice(&ip);
            packet.extend_from_slice(&echo);
            packet.extend_from_slice(&tail);
            // Truncated anywhere, or not at all.
            let keep = cut % (packet.len() + 8);
            packet.truncate(keep);
            packet
        })
}

/// Any bytes, or a near-valid message, behind an IPv4 header of any length on raw sockets.
fn packet() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..128),
        near_valid_icmp(),
        (0u8..16, near_valid_icmp()).prop_map(|(ihl, icmp)| {
            let mut packet = vec![0x40 | ihl, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0];
            packet.extend_from_slice(&[192, 0, 2, 1, 10, 0, 0, 1]);
            packet.extend(std::iter::repeat_n(
                0,
                usize::from(ihl.saturating_sub(5)) * 4,
            ));
            packet.extend_from_slice(&icmp);
            packet
        }),
    ]
}

proptest! {
    #![proptest_config(proptest_cases(1000))]

    #[test]
    fn prop_icmp_classify_never_panics_and_points_into_the_packet(
        family in family(),
        kind in kind(),
        packet in packet(),
        from in address(),
    ) {
        match classify(family, kind, &packet, from) {
            Received::Reply { peer, payload, .. } => {
                prop_assert!(within(payload, &packet));
                // A reply's peer is its sender (raw IPv4: the IP header's source, which the
                // kernel also reports as the sender).
                if !(family == IpFamily::V4 && kind == SocketKind::Raw) {
                    prop_assert_eq!(peer, from);
                }
                prop_assert_eq!(IpFamily::of(&peer), family);
            }
            Received::Error { quoted, what, peer, .. } => {
                prop_assert!(within(quoted, &packet));
                prop_assert!(quoted.len() <= TOKEN_LEN);
                prop_assert!(!what.is_empty());
                prop_assert_eq!(IpFamily::of(&peer), family);
            }
            Received::Irrelevant => {}
        }
        // An address of the other family is never ours to judge.
        if IpFamily::of(&from) != family {
            prop_assert_eq!(classify(family, kind, &packet, from), Received::Irrelevant);
        }
    }

    #[test]
    fn prop_icmp_quoted_token_stays_within_the_quote(
        family in family(),
        icmp in prop_oneof![prop::collection::vec(any::<u8>(), 0..128), near_valid_icmp()],
    ) {
        let quoted = quoted_token(family, &icmp);
        prop_assert!(quoted.len() <= TOKEN_LEN);
        prop_assert!(within(quoted, &icmp));
    }

    /// Where surge-ping's decoder finds the quoted identifier and sequence, `quoted_token`
    /// finds the token right behind them: the two agree on the quoted IP header's length.
    #[test]
    fn prop_icmp_quoted_token_follows_the_decoded_echo_header(
        family in family(),
        icmp in near_valid_icmp(),
        from in address(),
    ) {
        let from = match (family, from) {
            (IpFamily::V4, IpAddr::V6(_)) => IpAddr::V4(Ipv4Addr::new(10, 0, 0, 254)),
            (IpFamily::V6, IpAddr::V4(_)) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            (_, from) => from,
        };
        if let Received::Error { ident, seq, quoted, .. } =
            classify(family, SocketKind::Datagram, &icmp, from)
        {
            let at = quoted.as_ptr() as usize - icmp.as_ptr() as usize;
            if !quoted.is_empty() {
                prop_assert_eq!(&icmp[at - 4..at], &[ident.to_be_bytes(), seq.to_be_bytes()].concat()[..]);
            }
        }
    }
}

/// One packet for the dispatch model, built from the probes waiting so it often comes close.
#[derive(Clone, Debug)]
struct Spec {
    error: bool,
    /// Index into the waiters (modulo), or a stranger.
    target: Option<usize>,
    /// Raw sockets: the identifier is ours, or not.
    our_ident: bool,
    seq_from_target: bool,
    seq: u16,
    echoed: Echo,
    /// Milliseconds after the previous packet.
    after_ms: u64,
}

#[derive(Clone, Debug)]
enum Echo {
    /// The target's token, cut to this length (replies: then padded with `extra`).
    Token {
        len: usize,
        extra: Vec<u8>,
    },
    /// The target's token with one bit flipped.
    Flipped {
        len: usize,
        bit: u8,
    },
    Random(Vec<u8>),
}

fn spec() -> impl Strategy<Value = Spec> {
    let echo = prop_oneof![
        (0usize..=TOKEN_LEN, prop::collection::vec(any::<u8>(), 0..4))
            .prop_map(|(len, extra)| Echo::Token { len, extra }),
        (1usize..=TOKEN_LEN, 0u8..64).prop_map(|(len, bit)| Echo::Flipped { len, bit }),
        prop::collection::vec(any::<u8>(), 0..12).prop_map(Echo::Random),
    ];
    (
        any::<bool>(),
        prop::option::weighted(0.9, 0usize..8),
        prop::bool::weighted(0.9),
        prop::bool::weighted(0.8),
        prop::sample::select(&[0u16, 1, 2, 0xffff][..]),
        echo,
        prop_oneof![4 => 0u64..100, 1 => Just(ANSWERED_WINDOW.as_millis() as u64)],
    )
        .prop_map(
            |(error, target, our_ident, seq_from_target, seq, echoed, after_ms)| Spec {
                error,
                target,
                our_ident,
                seq_from_target,
                seq,
                echoed,
                after_ms,
            },
        )
}

/// A datagram: any bytes, or the genuine reply with a few bytes overwritten.
#[derive(Clone, Debug)]
enum Wire {
    Bytes(Vec<u8>),
    Mangled(Vec<(usize, u8)>),
}

struct Probe {
    key: (IpAddr, u16),
    token: [u8; TOKEN_LEN],
    rx: oneshot::Receiver<Result<Arrival, PingError>>,
}

proptest! {
    #![proptest_config(proptest_cases(1000))]

    /// `dispatch` against the rules it implements: a reply completes a waiting probe only from
    /// its peer, with its sequence (raw sockets: our identifier) and a payload that starts with
    /// its token; an error only if its quote holds no other bytes than the token's; at most
    /// once; everything else is counted as a duplicate or as unmatched.
    #[test]
    fn prop_icmp_dispatch_answers_a_probe_only_with_its_token(
        kind in kind(),
        probes in prop::collection::vec(
            (prop::sample::select(&["192.0.2.1", "192.0.2.2", "2001:db8::1"][..]),
             prop::sample::select(&[0u16, 1, 2, 0xffff][..]),
             prop::sample::select(&[[0u8; 8], [7; 8], [0, 1, 2, 3, 4, 5, 6, 7]][..])),
            1..5,
        ),
        specs in prop::collection::vec(spec(), 0..12),
    ) {
        let inner = inner(IpFamily::V4, kind);
        let mut waiting: Vec<Probe> = Vec::new();
        for (peer, seq, token) in probes {
            let key = (peer.parse::<IpAddr>().unwrap(), seq);
            if waiting.iter().any(|p| p.key == key) {
                continue;
            }
            let (tx, rx) = oneshot::channel();
            inner.waiters.lock().unwrap().insert(key, Waiter { token, tx });
            waiting.push(Probe { key, token, rx });
        }
        let stranger: IpAddr = "198.51.100.7".parse().unwrap();

        // The model: what each probe must end with, and the counters.
        let mut answer: Vec<Option<(usize, bool)>> = vec![None; waiting.len()];
        let mut answered_at: HashMap<(IpAddr, u16), ([u8; TOKEN_LEN], Instant)> = HashMap::new();
        let (mut unmatched, mut duplicate) = (0u64, 0u64);
        let mut now = Instant::now();
        let mut sent: Vec<Instant> = Vec::new();

        for (i, spec) in specs.iter().enumerate() {
            now += Duration::from_millis(spec.after_ms);
            sent.push(now);
            let target = spec.target.map(|t| &waiting[t % waiting.len()]);
            let peer = target.map_or(stranger, |p| p.key.0);
            let seq = match target {
                Some(p) if spec.seq_from_target => p.key.1,
                _ => spec.seq,
            };
            let token = target.map_or([0xee; TOKEN_LEN], |p| p.token);
            let mut echoed = match &spec.echoed {
                Echo::Token { len, extra } => {
                    let mut bytes = token[..*len].to_vec();
                    if !spec.error && *len == TOKEN_LEN {
                        bytes.extend_from_slice(extra);
                    }
                    bytes
                }
                Echo::Flipped { len, bit } => {
                    let mut bytes = token[..*len].to_vec();
                    let bit = usize::from(*bit) % (len * 8);
                    bytes[bit / 8] ^= 1 << (bit % 8);
                    bytes
                }
                Echo::Random(bytes) => bytes.clone(),
            };
            if spec.error {
                echoed.truncate(TOKEN_LEN);
            }
            let ident = if spec.our_ident { OUR_IDENT } else { OUR_IDENT ^ 1 };
            let what = format!("error {i}");
            let received = if spec.error {
                Received::Error { peer, ident, seq, quoted: &echoed, what }
            } else {
                Received::Reply { peer, ident, seq, payload: &echoed }
            };
            inner.dispatch(received, now);

            // The rules, written out independently of `Echoed`.
            if kind == SocketKind::Raw && !spec.our_ident {
                continue;
            }
            let carries = |token: &[u8; TOKEN_LEN]| {
                if spec.error {
                    token.starts_with(&echoed)
                } else {
                    echoed.len() >= TOKEN_LEN && echoed[..TOKEN_LEN] == token[..]
                }
            };
            let waiter = waiting
                .iter()
                .position(|p| p.key == (peer, seq))
                .filter(|w| answer[*w].is_none());
            match waiter {
                Some(w) if carries(&waiting[w].token) => {
                    answer[w] = Some((i, spec.error));
                    answered_at.insert((peer, seq), (waiting[w].token, now));
                }
                _ => {
                    let proves = |token: &[u8; TOKEN_LEN]| !(spec.error && echoed.is_empty()) && carries(token);
                    match answered_at.get(&(peer, seq)) {
                        Some((token, at)) if now.saturating_duration_since(*at) < ANSWERED_WINDOW && proves(token) => duplicate += 1,
                        _ => unmatched += 1,
                    }
                }
            }
        }

        for (probe, expected) in waiting.iter_mut().zip(&answer) {
            match (probe.rx.try_recv(), expected) {
                (Err(TryRecvError::Empty), None) => {}
                (Ok(Ok(arrival)), Some((i, false))) => prop_assert_eq!(arrival.at, sent[*i]),
                (Ok(Err(PingError::Unreachable(what))), Some((i, true))) => {
                    prop_assert_eq!(what, format!("error {i}"));
                }
                (got, expected) => prop_assert!(false, "{:?}: got {:?}, expected packet {:?}", probe.key, got, expected),
            }
        }
        prop_assert_eq!(inner.stats.duplicate.load(Ordering::Relaxed), duplicate, "duplicates");
        prop_assert_eq!(inner.stats.unmatched.load(Ordering::Relaxed), unmatched, "unmatched");
        // Answered probes left the map; the others still wait.
        let left = inner.waiters.lock().unwrap().len();
        prop_assert_eq!(left, answer.iter().filter(|a| a.is_none()).count());
    }

    /// Bytes as they come off a datagram socket, through `classify` and `dispatch`: a probe is
    /// answered only by a packet that carries its sequence and token (a reply from its peer),
    /// or by an ICMP error; random and mangled packets answer nothing.
    #[test]
    fn prop_icmp_random_packets_answer_no_probe_they_do_not_match(
        family in family(),
        token in any::<[u8; TOKEN_LEN]>(),
        seq in any::<u16>(),
        packets in prop::collection::vec(
            (
                prop_oneof![
                    prop::collection::vec(any::<u8>(), 0..64).prop_map(Wire::Bytes),
                    near_valid_icmp().prop_map(Wire::Bytes),
                    prop::collection::vec((0usize..24, any::<u8>()), 0..3).prop_map(Wire::Mangled),
                ],
                any::<bool>(),
            ),
            1..6,
        ),
    ) {
        let inner = inner(family, SocketKind::Datagram);
        let peer: IpAddr = match family {
            IpFamily::V4 => "192.0.2.9".parse().unwrap(),
            IpFamily::V6 => "2001:db8::9".parse().unwrap(),
        };
        let other: IpAddr = match family {
            IpFamily::V4 => "192.0.2.10".parse().unwrap(),
            IpFamily::V6 => "2001:db8::10".parse().unwrap(),
        };
        let (tx, mut rx) = oneshot::channel();
        inner.waiters.lock().unwrap().insert((peer, seq), Waiter { token, tx });
        let reply_type = match family {
            IpFamily::V4 => 0,
            IpFamily::V6 => 129,
        };
        let mut genuine = echo_request(family, OUR_IDENT, seq, &token, 16);
        genuine[0] = reply_type;

        let mut answered_by = None;
        for (n, (wire, from_peer)) in packets.into_iter().enumerate() {
            let packet = match wire {
                Wire::Bytes(bytes) => bytes,
                Wire::Mangled(edits) => {
                    let mut mangled = genuine.clone();
                    for (at, byte) in edits {
                        mangled[at] = byte;
                    }
                    mangled
                }
            };
            let from = if from_peer { peer } else { other };
            let waiting = inner.waiters.lock().unwrap().contains_key(&(peer, seq));
            inner.dispatch(classify(family, SocketKind::Datagram, &packet, from), Instant::now());
            if waiting && !inner.waiters.lock().unwrap().contains_key(&(peer, seq)) {
                answered_by = Some((n, packet, from));
            }
        }
        match (rx.try_recv(), answered_by) {
            (Err(TryRecvError::Empty), None) => {}
            (Ok(Ok(_)), Some((_, packet, from))) => {
                prop_assert_eq!(from, peer);
                prop_assert_eq!(packet[0], reply_type);
                prop_assert_eq!(&packet[6..8], &seq.to_be_bytes());
                prop_assert_eq!(&packet[8..16], &token);
            }
            (Ok(Err(PingError::Unreachable(_))), Some((_, packet, _))) => {
                // An error quoting our request: its quote holds only bytes of our token.
                prop_assert!(matches!((family, packet[0]), (IpFamily::V4, 3 | 11) | (IpFamily::V6, 1 | 3)));
                let quoted = quoted_token(family, &packet);
                prop_assert!(token.starts_with(quoted));
            }
            (got, answered_by) => prop_assert!(false, "got {:?}, answered by {:?}", got, answered_by),
        }
    }
}

// ---- the corpus ------------------------------------------------------------------------------

/// `tests/fixtures/fuzz/icmp/*.hex`: `# <v4|v6> <datagram|raw> <from> <reply|error|irrelevant>`
/// then the packet in hex (whitespace and `#` comment lines ignored). Each is classified as
/// pinned and its quoted token read, on every run.
#[test]
fn prop_icmp_corpus_replays() {
    let paths = corpus("icmp");
    for path in paths {
        let text = std::fs::read_to_string(&path).unwrap();
        let shown = path.display();
        let header: Vec<&str> = text.lines().next().unwrap().split_whitespace().collect();
        let ["#", family, kind, from, expected] = header[..] else {
            panic!("{shown}: bad header {header:?}");
        };
        let family = match family {
            "v4" => IpFamily::V4,
            "v6" => IpFamily::V6,
            other => panic!("{shown}: family {other}"),
        };
        let kind = match kind {
            "datagram" => SocketKind::Datagram,
            "raw" => SocketKind::Raw,
            other => panic!("{shown}: kind {other}"),
        };
        let packet = from_hex(&text);
        let received = classify(family, kind, &packet, from.parse().unwrap());
        let got = match &received {
            Received::Reply { .. } => "reply",
            Received::Error { .. } => "error",
            Received::Irrelevant => "irrelevant",
        };
        assert_eq!(got, expected, "{shown}: {received:?}");
        let _ = quoted_token(family, &packet);
        let inner = inner(family, kind);
        inner.dispatch(received, Instant::now());
    }
}
