//! Fuzzing the configuration loader (issue 7) with proptest: arbitrary text and bytes, TOML
//! built from the real keys with wrong types and values, and `REGIONPROBE_*` overrides. Any
//! input must give a `Config` that keeps the loader's promises or an error that names the file:
//! never a panic. `tests/fixtures/fuzz/config/` replays the interesting inputs on every run.
//!
//! `cargo test --test proptest_config prop_` runs these alone; `PROPTEST_CASES=n` sets the cases.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::LazyLock;

use proptest::prelude::*;
use proptest::string::string_regex;
use proptest::test_runner::FileFailurePersistence;
use regionprobe::config::{self, Config, ConfigError, ConfigSource, ProbeConfig};
use regionprobe_testkit::corpus::proptest_cases;

/// The kit's case count (`PROPTEST_CASES` when set, CI's longer run; else `default`), with the
/// regressions saved beside the unit tests' (proptest cannot place an integration test's).
fn cases(default: u32) -> ProptestConfig {
    ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/proptest_config.txt",
        ))),
        ..proptest_cases(default)
    }
}

/// Loads `text` as the file `file` with `env` as the whole environment, and checks the
/// outcome: an error names the file, a success keeps every invariant. Returns the outcome for
/// checks of its own.
fn load(file: &str, text: &str, env: HashMap<String, String>) -> Result<Config, String> {
    let result = config::parse(file, text, Some(env.clone()));
    // The same input gives the same outcome: no hidden state, no order dependence.
    let again = config::parse(file, text, Some(env));
    match (&result, &again) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "two loads of one input differ"),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        _ => panic!("two loads of one input disagree: {result:?} / {again:?}"),
    }
    match result {
        Ok(config) => {
            check_invariants(&config);
            Ok(config)
        }
        Err(err) => {
            check_error(file, &err);
            Err(err.to_string())
        }
    }
}

fn check_error(file: &str, err: &ConfigError) {
    let shown = err.to_string();
    let prefix = format!("{file}: ");
    assert!(
        shown.starts_with(&prefix),
        "the error does not name {file:?}: {shown}"
    );
    assert!(
        !shown[prefix.len()..].trim().is_empty(),
        "an error without a message: {shown:?}"
    );
    if let ConfigError::Invalid { key, problem, .. } = err {
        // A bad value is always reported at its key.
        assert!(!key.is_empty() && !problem.is_empty(), "{shown}");
    }
}

/// What a loaded configuration promises the rest of the program.
fn check_invariants(config: &Config) {
    let label = |value: &str| {
        !value.is_empty()
            && value.len() <= 128
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.:/".contains(c))
    };
    assert!(
        label(&config.exporter.region),
        "{:?}",
        config.exporter.region
    );
    let ranking = &config.ranking;
    assert!(
        ranking.quantile > 0.0 && ranking.quantile < 1.0,
        "{ranking:?}"
    );
    assert!((0.0..1.0).contains(&ranking.hysteresis), "{ranking:?}");
    assert!(!ranking.window.is_zero(), "{ranking:?}");
    assert!(
        config.web.basic_auth_users.is_empty() || !config.web.basic_auth_users.contains_key(""),
        "an empty user name"
    );
    assert!(!config.web.health_without_auth || !config.web.basic_auth_users.is_empty());
    let mut names = std::collections::HashSet::new();
    for target in &config.targets {
        assert!(names.insert(&target.name), "duplicate name {}", target.name);
        assert!(label(&target.name) && label(&target.region), "{target:?}");
        assert!(
            target.interval.as_millis() >= 10,
            "interval {:?}",
            target.interval
        );
        assert!(
            !target.timeout.is_zero() && target.timeout <= target.interval,
            "{target:?}"
        );
        assert!(!target.buckets.is_empty(), "{target:?}");
        assert!(
            target.buckets.iter().all(|b| b.is_finite() && *b > 0.0),
            "{:?}",
            target.buckets
        );
        assert!(
            target.buckets.windows(2).all(|pair| pair[0] < pair[1]),
            "{:?}",
            target.buckets
        );
        match &target.probe {
            ProbeConfig::Icmp(icmp) => {
                assert!(!icmp.host.trim().is_empty());
                assert!((16..=65_499).contains(&icmp.payload_size), "{icmp:?}");
            }
            ProbeConfig::Tcp(tcp) => assert!(tcp.port != 0 && !tcp.host.is_empty(), "{tcp:?}"),
            ProbeConfig::Http(http) => {
                assert!(matches!(http.url.scheme_str(), Some("http" | "https")));
                assert!(!http.valid_status.is_empty());
                for (low, high) in &http.valid_status {
                    assert!(100 <= *low && low <= high && *high <= 599, "{low}..={high}");
                }
                assert!(http.max_body_bytes >= 1);
                assert!(!http.body_regex_invert || http.body_regex.is_some());
            }
            ProbeConfig::Dns(dns) => {
                assert!(!dns.valid_rcodes.is_empty());
                assert!(dns.server.port() != 0);
                assert!(dns.query.is_fqdn());
            }
            ProbeConfig::Stamp(stamp) => {
                assert!(stamp.port != 0 && !stamp.host.is_empty(), "{stamp:?}");
                assert!((1..=1000).contains(&stamp.train));
                assert_eq!(stamp.wait, target.timeout);
            }
            ProbeConfig::Db(db) => {
                assert!(db.port != 0 && !db.host.is_empty(), "{db:?}");
                assert!(!db.query.trim().is_empty());
            }
        }
    }
}

// ---- strategies ------------------------------------------------------------------------------

/// A TOML basic string holding `text`, escaped.
fn quoted(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A bcrypt hash in the format `[web] basic_auth_users` expects (cost 4: cheap to make).
static HASH: LazyLock<String> = LazyLock::new(|| bcrypt::hash("fuzz", 4).unwrap());

/// Any TOML value, of any type: what a key of the wrong type gets.
fn any_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        any::<String>().prop_map(|s| quoted(&s)),
        string_regex("[ -~]{0,12}")
            .unwrap()
            .prop_map(|s| quoted(&s)),
        any::<i64>().prop_map(|n| n.to_string()),
        (-70_000i64..70_000).prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| if f.is_finite() {
            format!("{f:?}")
        } else {
            "nan".into()
        }),
        Just("inf".to_owned()),
        Just("-inf".to_owned()),
        Just("-0.0".to_owned()),
        any::<bool>().prop_map(|b| b.to_string()),
        Just("1979-05-27T07:32:00Z".to_owned()),
        Just("07:32:00".to_owned()),
        Just("''''''".to_owned()),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
            prop::collection::vec((key_name(), inner), 0..3).prop_map(|kv| {
                let pairs: Vec<String> =
                    kv.into_iter().map(|(k, v)| format!("{k} = {v}")).collect();
                format!("{{ {} }}", pairs.join(", "))
            }),
        ]
    })
}

/// A bare or quoted TOML key.
fn key_name() -> impl Strategy<Value = String> {
    prop_oneof![
        string_regex("[a-z_][a-z0-9_-]{0,10}").unwrap(),
        any::<String>().prop_map(|s| quoted(&s)),
    ]
}

fn one_of(values: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop::sample::select(values).prop_map(|s| s.to_owned())
}

fn quoted_one_of(values: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop::sample::select(values).prop_map(quoted)
}

/// `(good, bad)`: values a key accepts, and values of its type it refuses.
fn pools(key: &'static str) -> (BoxedStrategy<String>, BoxedStrategy<String>) {
    let label = string_regex("[a-z0-9._:/-]{1,12}")
        .unwrap()
        .prop_map(|s| quoted(&s));
    let durations = |good: &'static [&'static str]| {
        (
            quoted_one_of(good).boxed(),
            prop_oneof![
                (
                    0u64..5_000,
                    prop::sample::select(&["ns", "us", "ms", "s", "m", "h", "", "x"][..])
                )
                    .prop_map(|(n, unit)| quoted(&format!("{n}{unit}"))),
                quoted_one_of(&[
                    "0s",
                    "9ms",
                    "-1s",
                    "1e3s",
                    "18446744073709551615s",
                    "99999999999999999999999h",
                    "584942417355y",
                    "1.5s",
                    "",
                    "soon",
                ]),
            ]
            .boxed(),
        )
    };
    let list = |items: BoxedStrategy<String>, len: std::ops::Range<usize>| {
        prop::collection::vec(items, len).prop_map(|v| format!("[{}]", v.join(", ")))
    };
    match key {
        "region" | "name" => (
            label.boxed(),
            prop_oneof![
                quoted_one_of(&["", "a b", "ü", "x\n", "\"quoted\""]),
                Just(quoted(&"x".repeat(129))),
            ]
            .boxed(),
        ),
        "listen" => (
            quoted_one_of(&["127.0.0.1:0", ":9537", "[::]:1", "0.0.0.0:65535"]).boxed(),
            quoted_one_of(&[
                "localhost:9537",
                "1.2.3.4:99999",
                ":",
                "",
                "[::1]",
                "::1:80",
            ])
            .boxed(),
        ),
        "interval" => durations(&["1s", "250ms", "10ms", "1m", "5s"]),
        // At most the shortest good interval: an explicit timeout over the interval is refused.
        "timeout" => durations(&["1ms", "5ms", "10ms"]),
        "window" | "loss_penalty" | "hold" => durations(&["5m", "1m", "30s", "1s"]),
        "buckets" => (
            prop::collection::btree_set(1u32..100_000, 1..6)
                .prop_map(|set| {
                    let bounds: Vec<String> = set
                        .iter()
                        .map(|n| format!("{:?}", f64::from(*n) / 10_000.0))
                        .collect();
                    format!("[{}]", bounds.join(", "))
                })
                .boxed(),
            list(
                prop_oneof![
                    (1u32..10_000).prop_map(|n| format!("{}", f64::from(n) / 1000.0)),
                    one_of(&["0.0", "-1.0", "nan", "inf", "-inf", "1e308", "5e-324", "1"]),
                ]
                .boxed(),
                0..6,
            )
            .boxed(),
        ),
        "quantile" => (
            one_of(&["0.5", "0.95", "0.99", "1e-300"]).boxed(),
            one_of(&["0.0", "1.0", "-0.1", "nan", "inf", "0"]).boxed(),
        ),
        "hysteresis" => (
            one_of(&["0.0", "0.1", "0.5", "0.9999999999999999"]).boxed(),
            one_of(&["1.0", "-0.1", "nan", "inf", "1"]).boxed(),
        ),
        "ip_version" => (
            one_of(&["4", "6"]).boxed(),
            one_of(&["0", "5", "255", "256", "-1", "\"4\""]).boxed(),
        ),
        "host" => (
            quoted_one_of(&["127.0.0.1", "::1", "example.com", " padded "]).boxed(),
            quoted_one_of(&["", " "]).boxed(),
        ),
        "payload_size" => (
            (16u32..=65_499).prop_map(|n| n.to_string()).boxed(),
            one_of(&["0", "15", "65500", "65535", "70000", "-1"]).boxed(),
        ),
        "address" => (
            quoted_one_of(&["127.0.0.1:80", "[::1]:443", "db.example:5432"]).boxed(),
            quoted_one_of(&["host", "::1:80", ":80", "h:0", "[::1:80", "h:65536", ""]).boxed(),
        ),
        "tls"
        | "tls_skip_verify"
        | "body_regex_invert"
        | "follow_redirects"
        | "keepalive"
        | "recursion_desired"
        | "allow_empty"
        | "health_without_auth" => (
            any::<bool>().prop_map(|b| b.to_string()).boxed(),
            quoted_one_of(&["true", "yes"]).boxed(),
        ),
        "url" => (
            quoted_one_of(&[
                "http://127.0.0.1:1/",
                "https://[::1]:8443/p?q",
                "https://example.com",
                "http://h/a%20b",
            ])
            .boxed(),
            quoted_one_of(&[
                "ftp://x/",
                "http://",
                "http:///p",
                "http://a b/",
                "//x/",
                "",
                "http://:80/",
            ])
            .boxed(),
        ),
        "method" => (
            quoted_one_of(&["GET", "post", "PROPFIND", "head"]).boxed(),
            quoted_one_of(&["BAD METHOD", "", "\u{0}", "GET\n"]).boxed(),
        ),
        "headers" => (
            prop::collection::btree_map("[a-z][a-z0-9-]{0,8}", "[ -~]{0,12}", 0..3)
                .prop_map(|map| {
                    let pairs: Vec<String> = map
                        .iter()
                        .map(|(k, v)| format!("{} = {}", quoted(k), quoted(v)))
                        .collect();
                    format!("{{ {} }}", pairs.join(", "))
                })
                .boxed(),
            prop::collection::vec((key_name(), any_value()), 1..3)
                .prop_map(|kv| {
                    let pairs: Vec<String> =
                        kv.into_iter().map(|(k, v)| format!("{k} = {v}")).collect();
                    format!("{{ {} }}", pairs.join(", "))
                })
                .boxed(),
        ),
        "body" => (
            any::<String>().prop_map(|s| quoted(&s)).boxed(),
            Just("[]".to_owned()).boxed(),
        ),
        "valid_status" => (
            list(
                prop_oneof![
                    (100u32..600).prop_map(|n| n.to_string()),
                    (1u8..6).prop_map(|c| quoted(&format!("{c}xx"))),
                    quoted_one_of(&["2XX", "204"]),
                ]
                .boxed(),
                1..4,
            )
            .boxed(),
            list(
                prop_oneof![
                    (0u32..700).prop_map(|n| n.to_string()),
                    (0u8..10).prop_map(|c| quoted(&format!("{c}xx"))),
                    quoted_one_of(&["2x", "abc", "99", "2xxx", "", "x2x", "٢xx"]),
                    one_of(&["65536", "-1", "200.0"]),
                ]
                .boxed(),
                0..4,
            )
            .boxed(),
        ),
        "body_regex" | "answer_regex" => (
            quoted_one_of(&["^ok", "", "\\p{Greek}+", "(?i)hello", "a|b"]).boxed(),
            quoted_one_of(&["(", "a{1000}{1000}", "[z-a]", "\\", "(?<n>a)(?<n>b)"]).boxed(),
        ),
        "max_redirects" => (
            (0u32..=255).prop_map(|n| n.to_string()).boxed(),
            one_of(&["256", "-1"]).boxed(),
        ),
        "max_body_bytes" => (
            prop_oneof![
                (1u64..1_000_000).prop_map(|n| n.to_string()),
                Just(i64::MAX.to_string())
            ]
            .boxed(),
            one_of(&["0", "18446744073709551615", "-1"]).boxed(),
        ),
        "min_answers" => (
            prop_oneof![
                (0u32..5).prop_map(|n| n.to_string()),
                Just(u32::MAX.to_string())
            ]
            .boxed(),
            one_of(&["4294967296", "-1"]).boxed(),
        ),
        "http_version" => (
            quoted_one_of(&["1.1", "2"]).boxed(),
            quoted_one_of(&["3", "1.0", ""]).boxed(),
        ),
        // Only paths that are harmless to read: missing, empty, not PEM.
        "tls_ca_file" | "tls_cert_file" | "tls_key_file" | "tls_client_ca_file" => (
            quoted_one_of(&["/nonexistent/ca.pem"]).boxed(),
            quoted_one_of(&["/dev/null", "Cargo.toml", "", "/"]).boxed(),
        ),
        "tls_server_name" => (
            quoted_one_of(&["example.com", "127.0.0.1"]).boxed(),
            quoted_one_of(&["", "a b", "-x-"]).boxed(),
        ),
        "tls_client_auth_type" => (
            quoted_one_of(&["RequireAndVerifyClientCert", "VerifyClientCertIfGiven"]).boxed(),
            quoted_one_of(&["NoClientCert", ""]).boxed(),
        ),
        "basic_auth_users" => (
            prop::collection::btree_map("[a-z]{1,8}", Just(()), 1..3)
                .prop_map(|users| {
                    let pairs: Vec<String> = users
                        .keys()
                        .map(|u| format!("{u} = {}", quoted(&HASH)))
                        .collect();
                    format!("{{ {} }}", pairs.join(", "))
                })
                .boxed(),
            prop::collection::vec(
                (
                    prop_oneof![
                        key_name(),
                        Just("\"a:b\"".to_owned()),
                        Just("\"\"".to_owned())
                    ],
                    quoted_one_of(&[
                        "password",
                        "",
                        "$2y$",
                        "$2b$99$abc",
                        "$2y$03$aaaaaaaaaaaaaaaaaaaaaa",
                    ]),
                ),
                0..3,
            )
            .prop_map(|kv| {
                let pairs: Vec<String> =
                    kv.into_iter().map(|(k, v)| format!("{k} = {v}")).collect();
                format!("{{ {} }}", pairs.join(", "))
            })
            .boxed(),
        ),
        "server" => (
            quoted_one_of(&["10.0.0.2", "127.0.0.1:5353", "[::1]:53", "::1"]).boxed(),
            quoted_one_of(&["ns.example", "1.2.3.4:0", ""]).boxed(),
        ),
        "query" => (
            quoted_one_of(&["example.com", ".", "bücher.de", "_srv._tcp.x", "a.b."]).boxed(),
            quoted_one_of(&[
                "",
                "a..b",
                "exa mple.com",
                "0123456789012345678901234567890123456789012345678901234567890123.com",
            ])
            .boxed(),
        ),
        "record_type" => (
            quoted_one_of(&["A", "aaaa", "TXT", "caa", "ANY", "ptr"]).boxed(),
            quoted_one_of(&["AXFR", "IXFR", "OPT", "FOO", "TYPE65535"]).boxed(),
        ),
        "transport" => (
            quoted_one_of(&["udp", "tcp"]).boxed(),
            quoted_one_of(&["doh", "UDP"]).boxed(),
        ),
        "valid_rcodes" => (
            list(
                quoted_one_of(&["NOERROR", "nxdomain", "SERVFAIL", "Refused"]).boxed(),
                1..3,
            )
            .boxed(),
            list(
                quoted_one_of(&["OK", "", "BADVERS", "NOERROR"]).boxed(),
                0..3,
            )
            .boxed(),
        ),
        "probe" => (
            quoted_one_of(&["icmp", "tcp", "http", "dns"]).boxed(),
            quoted_one_of(&["ICMP", "udp", ""]).boxed(),
        ),
        other => panic!("no values for {other}"),
    }
}

/// A value for `key`: one it accepts, or with probability `bad` one it refuses or one of any
/// type at all.
fn value_for(key: &'static str, bad: u32) -> BoxedStrategy<String> {
    let (good, refused) = pools(key);
    if bad == 0 {
        return good;
    }
    prop_oneof![100 - bad => good, bad => refused, (bad / 4).max(1) => any_value()].boxed()
}

const EXPORTER_KEYS: &[&str] = &["region", "listen", "allow_empty"];
const DEFAULTS_KEYS: &[&str] = &["interval", "timeout", "buckets"];
const RANKING_KEYS: &[&str] = &["window", "quantile", "loss_penalty", "hysteresis", "hold"];
const WEB_KEYS: &[&str] = &[
    "tls_cert_file",
    "tls_key_file",
    "tls_client_ca_file",
    "tls_client_auth_type",
    "basic_auth_users",
    "health_without_auth",
];
const COMMON_TARGET_KEYS: &[&str] = &["interval", "timeout", "buckets", "ip_version"];

/// The keys a probe kind requires, and those it may have.
fn probe_keys(kind: &str) -> (&'static [&'static str], &'static [&'static str]) {
    match kind {
        "icmp" => (&["host"], &["payload_size"]),
        "tcp" => (
            &["address"],
            &["tls", "tls_ca_file", "tls_server_name", "tls_skip_verify"],
        ),
        "http" => (
            &["url"],
            &[
                "method",
                "headers",
                "body",
                "valid_status",
                "body_regex",
                "body_regex_invert",
                "follow_redirects",
                "max_redirects",
                "max_body_bytes",
                "http_version",
                "keepalive",
                "tls_ca_file",
                "tls_server_name",
                "tls_skip_verify",
            ],
        ),
        _ => (
            &["server", "query"],
            &[
                "record_type",
                "transport",
                "recursion_desired",
                "valid_rcodes",
                "min_answers",
                "answer_regex",
            ],
        ),
    }
}

/// `key = value` lines: every key of `required` (rarely one left out), a subset of
/// `optional`, and now and then a key that does not exist.
fn section_body(
    required: &'static [&'static str],
    optional: &'static [&'static str],
    bad: u32,
) -> BoxedStrategy<String> {
    // (proptest's weighted strategies refuse the probabilities 0 and 1.)
    let keep = prop::collection::vec(
        prop::bool::weighted(1.0 - f64::from(bad.max(1)) / 200.0)
            .prop_map(move |keep| keep || bad == 0),
        required.len(),
    );
    let chosen = (
        keep,
        prop::sample::subsequence(optional, 0..=optional.len()),
    )
        .prop_map(move |(keep, optional)| {
            let mut keys: Vec<&'static str> = required
                .iter()
                .zip(keep)
                .filter_map(|(key, keep)| keep.then_some(*key))
                .collect();
            // TLS keys need files and a TLS URL or `tls = true`: valid only by luck, so a
            // document meant to load leaves them out.
            keys.extend(
                optional
                    .into_iter()
                    .filter(|key| bad > 0 || !key.starts_with("tls_")),
            );
            keys
        });
    let lines = chosen.prop_flat_map(move |keys| {
        keys.into_iter()
            .map(|key| value_for(key, bad).prop_map(move |v| format!("{key} = {v}\n")))
            .collect::<Vec<_>>()
    });
    let bogus = prop::option::weighted(
        f64::from(bad.max(1)) / 400.0,
        (key_name(), any_value()).prop_map(|(k, v)| format!("{k} = {v}\n")),
    )
    .prop_map(move |line| line.filter(|_| bad > 0));
    (lines, bogus)
        .prop_map(|(lines, bogus)| lines.concat() + &bogus.unwrap_or_default())
        .boxed()
}

/// One `[[target]]`: name, region and probe, and keys of its probe kind (with `bad`, now and
/// then those of another kind).
fn target(bad: u32) -> BoxedStrategy<String> {
    let kind = prop::sample::select(&["icmp", "tcp", "http", "dns"][..]);
    (kind.clone(), kind, 0u32..100)
        .prop_flat_map(move |(kind, other, roll)| {
            let keys_of = if roll < bad / 4 { other } else { kind };
            let (required, optional) = probe_keys(keys_of);
            let probe = if roll < bad / 4 + 1 && bad > 0 {
                value_for("probe", bad)
            } else {
                Just(quoted(kind)).boxed()
            };
            (
                section_body(&["name", "region"], &[], bad),
                probe,
                section_body(&[], COMMON_TARGET_KEYS, bad),
                section_body(required, optional, bad),
            )
        })
        .prop_map(|(names, probe, common, specific)| {
            format!("[[target]]\n{names}probe = {probe}\n{common}{specific}")
        })
        .boxed()
}

/// A whole file from the real sections and keys. `bad` (per cent) is how often a value is
/// one its key refuses: from none (the file should load, and the invariants are checked) to
/// many (the first mistake must be reported cleanly).
fn document() -> BoxedStrategy<String> {
    graded_document().prop_map(|(_, text)| text).boxed()
}

/// A document and its `bad`.
fn graded_document() -> BoxedStrategy<(u32, String)> {
    prop::sample::select(&[0u32, 0, 2, 10, 40][..])
        .prop_flat_map(|bad| {
            let section = move |name: &'static str, keys| {
                prop::option::weighted(
                    0.6,
                    section_body(&[], keys, bad).prop_map(move |body| format!("[{name}]\n{body}")),
                )
            };
            // Only with `bad`: [web] TLS needs files, which the fuzzer cannot make valid.
            let web_keys: &'static [&'static str] =
                if bad == 0 { &WEB_KEYS[4..5] } else { WEB_KEYS };
            (
                Just(bad),
                (
                    section("exporter", EXPORTER_KEYS),
                    section("defaults", DEFAULTS_KEYS),
                    section("ranking", RANKING_KEYS),
                    section("web", web_keys),
                    prop::collection::vec(target(bad), 0..4),
                ),
            )
        })
        .prop_map(|(bad, (exporter, defaults, ranking, web, targets))| {
            let text = [exporter, defaults, ranking, web]
                .into_iter()
                .flatten()
                .chain(targets)
                .collect::<Vec<_>>()
                .join("\n");
            (bad, text)
        })
        .boxed()
}

/// Edits a document a little: the near misses a person makes while typing.
fn mutated(document: String, edits: Vec<(usize, u8, char)>) -> String {
    let mut chars: Vec<char> = document.chars().collect();
    for (at, op, c) in edits {
        let at = if chars.is_empty() {
            0
        } else {
            at % (chars.len() + 1)
        };
        match op % 3 {
            0 => chars.insert(at, c),
            1 if at < chars.len() => {
                chars.remove(at);
            }
            _ if at < chars.len() => chars[at] = c,
            _ => chars.push(c),
        }
    }
    chars.into_iter().collect()
}

/// `REGIONPROBE_<SECTION>__<KEY>` variables, some well-formed and some not.
fn environment() -> BoxedStrategy<HashMap<String, String>> {
    let section = one_of(&[
        "EXPORTER", "DEFAULTS", "RANKING", "WEB", "TARGET", "exporter", "", "X",
    ]);
    let key = prop_oneof![
        one_of(&[
            "REGION",
            "LISTEN",
            "INTERVAL",
            "TIMEOUT",
            "BUCKETS",
            "QUANTILE",
            "HYSTERESIS",
            "HOLD",
            "WINDOW",
            "LOSS_PENALTY",
            "HEALTH_WITHOUT_AUTH",
            "BASIC_AUTH_USERS",
            "0",
            "0__NAME",
            "",
            "REGION__X",
            "__",
        ]),
        string_regex("[A-Z_]{0,8}").unwrap(),
    ];
    let value = prop_oneof![
        one_of(&[
            "1s", "0.5", "true", "-1", "eu", "", "nan", "1e400", "[1, 2]", ":9537", "0"
        ]),
        any::<String>(),
    ];
    let name = (section, key).prop_map(|(s, k)| format!("REGIONPROBE_{s}__{k}"));
    prop::collection::hash_map(name, value, 0..3).boxed()
}

fn file_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("exporter.toml".to_owned()),
        string_regex("[a-z/._ -]{1,16}\\.toml").unwrap(),
        any::<String>(),
    ]
}

// ---- properties ------------------------------------------------------------------------------

proptest! {
    #![proptest_config(cases(512))]

    #[test]
    fn prop_config_arbitrary_text_is_an_error_naming_the_file_or_a_valid_config(
        file in file_name(),
        text in prop_oneof![any::<String>(), string_regex("[\\[\\]a-z_=\" .0-9\n{},#-]{0,80}").unwrap()],
    ) {
        let _ = load(&file, &text, HashMap::new());
    }

    #[test]
    fn prop_config_structured_toml_is_loaded_or_rejected_by_key(
        file in file_name(),
        (bad, document) in graded_document(),
    ) {
        // A file with no region and no target is refused as empty or truncated unless it
        // sets allow_empty = true (issue 12, item 11).
        let empty = !document.contains("[[target]]")
            && !document.lines().any(|line| line.starts_with("region = "))
            && !document.contains("allow_empty = true");
        let outcome = load(&file, &document, HashMap::new());
        if bad == 0 && empty {
            prop_assert!(outcome.is_err(), "an empty file was loaded:\n{}", document);
        }
        if let Err(message) = outcome {
            let refused_as_empty = message.contains("the file looks empty or truncated");
            prop_assert!(!refused_as_empty || empty, "{}\n{}", message, document);
            // Values each key accepts make a file that loads, but for combinations the
            // generator does not avoid.
            let allowed = ["duplicate target name", "body_regex_invert", "max_redirects"];
            prop_assert!(
                bad > 0 || refused_as_empty || allowed.iter().any(|problem| message.contains(problem)),
                "a file of accepted values was refused: {}",
                message
            );
            // Structured documents are valid TOML (bar the odd bare key): the rejection is
            // about a key or a missing setting, with the key's path when there is one.
            prop_assert!(message.len() > file.len() + 2, "{message}");
        }
    }

    #[test]
    fn prop_config_near_miss_toml_never_panics(
        document in document(),
        edits in prop::collection::vec((any::<usize>(), any::<u8>(), any::<char>()), 1..4),
    ) {
        let _ = load("exporter.toml", &mutated(document, edits), HashMap::new());
    }

    #[test]
    fn prop_config_environment_overrides_never_panic(
        document in prop_oneof![Just(config::BUNDLED.to_owned()), document()],
        env in environment(),
    ) {
        let _ = load("exporter.toml", &document, env);
    }
}

proptest! {
    // File reads: fewer cases.
    #![proptest_config(cases(64))]

    #[test]
    fn prop_config_arbitrary_bytes_in_a_file_are_an_error_naming_the_file(
        bytes in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let path = std::env::temp_dir().join(format!(
            "regionprobe-fuzz-{}-{:?}.toml",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&path, &bytes).unwrap();
        let result = ConfigSource::File(path.clone()).load_with_env(Some(HashMap::new()));
        std::fs::remove_file(&path).unwrap();
        if let Err(err) = result {
            check_error(&path.display().to_string(), &err);
        } else if let Ok(config) = result {
            check_invariants(&config);
        }
    }
}

// ---- the corpus ------------------------------------------------------------------------------

/// `tests/fixtures/fuzz/config/*.toml`: inputs that once found a problem or sit on an edge.
/// Each starts with `# error: <message>` (exact, after the file name), `# error-contains:`, or
/// `# ok`, and is replayed through the loader on every run.
#[test]
fn prop_config_corpus_replays() {
    let dir = PathBuf::from("tests/fixtures/fuzz/config");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "toml"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 5, "the corpus is missing: {paths:?}");
    let mut outcomes = BTreeMap::new();
    for path in paths {
        let text = std::fs::read_to_string(&path).unwrap();
        let file = path.display().to_string();
        let first = text
            .lines()
            .next()
            .unwrap_or_default()
            .trim_start_matches('\u{feff}');
        let outcome = load(&file, &text, HashMap::new());
        let prefix = format!("{file}: ");
        match (
            first.strip_prefix("# error: "),
            first.strip_prefix("# error-contains: "),
            &outcome,
        ) {
            (Some(exact), _, Err(message)) => assert_eq!(&message[prefix.len()..], exact, "{file}"),
            (_, Some(part), Err(message)) => assert!(message.contains(part), "{file}: {message}"),
            (None, None, Ok(_)) if first == "# ok" => {}
            _ => panic!("{file}: expected {first:?}, got {outcome:?}"),
        }
        outcomes.insert(file, outcome.is_ok());
    }
    assert!(outcomes.values().any(|ok| !ok));
}
