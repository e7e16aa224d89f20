//! Property tests of HTTP response validation (issue 7): `valid_status` from the configuration file to
//! the check on a status, the body read under `max_body_bytes` from any stream of frames and
//! matched with `body_regex`, and redirect `Location`s. Run with `cargo test --lib prop_`.

use std::collections::HashMap;
use std::sync::LazyLock;

use http_body_util::StreamBody;
use hyper::body::Frame;
use proptest::prelude::*;

use super::*;
use crate::config::{Pattern, ProbeConfig, parse};
use regionprobe_testkit::corpus::proptest_cases;

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
});

/// An entry of `valid_status` as written in the file.
#[derive(Clone, Debug)]
enum Entry {
    Code(i64),
    Text(String),
}

impl Entry {
    fn toml(&self) -> String {
        match self {
            Entry::Code(code) => code.to_string(),
            // A TOML basic string: JSON-like escapes, but \u{...} is not one of them.
            Entry::Text(text) => {
                let escaped: String = text
                    .chars()
                    .map(|c| match c {
                        '"' | '\\' => format!("\\{c}"),
                        c if c.is_control() => format!("\\u{:04X}", c as u32),
                        c => c.to_string(),
                    })
                    .collect();
                format!("\"{escaped}\"")
            }
        }
    }

    /// What the configuration reference promises: `NNN` (100 to 599) is that code, `Nxx` (N
    /// from 1 to 5, either case) is N00 to N99, and anything else is refused.
    fn accepts(&self) -> Option<std::ops::RangeInclusive<u16>> {
        let code = |n: i64| (100..=599).contains(&n).then_some(n as u16..=n as u16);
        match self {
            Entry::Code(n) => code(*n),
            Entry::Text(text) => match text.as_bytes() {
                [class @ b'1'..=b'5', x, y]
                    if x.eq_ignore_ascii_case(&b'x') && y.eq_ignore_ascii_case(&b'x') =>
                {
                    let base = u16::from(class - b'0') * 100;
                    Some(base..=base + 99)
                }
                _ => text.parse::<u16>().ok().and_then(|n| code(i64::from(n))),
            },
        }
    }
}

fn entry() -> impl Strategy<Value = Entry> {
    prop_oneof![
        (0i64..1000).prop_map(Entry::Code),
        prop_oneof![Just(-1i64), Just(65_535), Just(65_536), any::<i64>()].prop_map(Entry::Code),
        (
            0u8..10,
            prop::sample::select(&["xx", "XX", "xX", "x", "xxx", "x0", ""][..])
        )
            .prop_map(|(class, tail)| Entry::Text(format!("{class}{tail}"))),
        (0u16..1000).prop_map(|n| Entry::Text(n.to_string())),
        prop::sample::select(&["+200", " 200", "200 ", "0200", "2xx\n", "٢xx", "", "abc"][..])
            .prop_map(|t| Entry::Text(t.to_owned())),
        any::<String>().prop_map(Entry::Text),
    ]
}

/// An HTTP prober built through the real parser, for the tests that change its settings.
fn prober() -> Http {
    let text = "[[target]]\nname = \"t\"\nregion = \"r\"\nprobe = \"http\"\nurl = \"http://127.0.0.1:1/\"\n";
    let config = parse("fuzz.toml", text, Some(HashMap::new())).unwrap();
    match &config.targets[0].probe {
        ProbeConfig::Http(http) => Http::new(http, &Resolver::default()),
        other => panic!("{other:?}"),
    }
}

/// A part of a response body stream.
#[derive(Clone, Debug)]
enum Part {
    Data(Vec<u8>),
    Trailers,
    Error,
}

fn part() -> impl Strategy<Value = Part> {
    prop_oneof![
        8 => prop::collection::vec(any::<u8>(), 0..48).prop_map(Part::Data),
        8 => prop::collection::vec(prop::sample::select(&b"hello world OK ok \xff\xfe\n"[..]), 0..24)
            .prop_map(Part::Data),
        1 => Just(Part::Trailers),
        1 => Just(Part::Error),
    ]
}

const BODY_PATTERNS: &[&str] = &[
    "hello",
    "^OK",
    "(?i)ok$",
    "",
    "\u{fffd}",
    "[^\\s\\S]",
    "o+ w",
];

proptest! {
    #![proptest_config(proptest_cases(300))]

    /// `valid_status` from the file to the check on a response: classes accept exactly their
    /// hundred, codes themselves, and a list with anything else fails the load at that entry.
    #[test]
    fn prop_http_valid_status_accepts_exactly_its_classes_and_codes(
        entries in prop::collection::vec(entry(), 0..4),
    ) {
        let list: Vec<String> = entries.iter().map(Entry::toml).collect();
        let text = format!(
            "[[target]]\nname = \"t\"\nregion = \"r\"\nprobe = \"http\"\nurl = \"http://127.0.0.1:1/\"\nvalid_status = [{}]\n",
            list.join(", ")
        );
        let expected: Vec<_> = entries.iter().map(Entry::accepts).collect();
        match parse("fuzz.toml", &text, Some(HashMap::new())) {
            Ok(config) => {
                prop_assert!(!entries.is_empty() && expected.iter().all(Option::is_some), "{text}");
                let ProbeConfig::Http(http) = &config.targets[0].probe else {
                    panic!("not http");
                };
                for status in (0..=1000).chain([u16::MAX]) {
                    let accepted = expected.iter().flatten().any(|range| range.contains(&status));
                    prop_assert_eq!(http.accepts_status(status), accepted, "{} with {}", status, text);
                }
            }
            Err(err) => {
                let err = err.to_string();
                prop_assert!(err.starts_with("fuzz.toml: key `target[0].valid_status"), "{}", err);
                // Types are checked for the whole file before values: an integer that is no
                // u16 is reported before an entry that is merely out of range.
                let wrong_type = entries
                    .iter()
                    .position(|e| matches!(e, Entry::Code(n) if u16::try_from(*n).is_err()));
                match wrong_type.or_else(|| expected.iter().position(Option::is_none)) {
                    Some(bad) => prop_assert!(
                        err.contains(&format!("valid_status[{bad}]`")),
                        "{} should name entry {}",
                        err,
                        bad
                    ),
                    None => prop_assert!(entries.is_empty(), "{text}: {err}"),
                }
            }
        }
    }

    /// The body under `max_body_bytes`, from any sequence of data, trailers and error frames:
    /// longer than the limit fails as `validation`, a stream error as `error`, otherwise the
    /// body is kept (when a regex needs it) and judged by `body_regex`/`body_regex_invert`.
    #[test]
    fn prop_http_body_is_bounded_and_matched_as_configured(
        parts in prop::collection::vec(part(), 0..8),
        max in prop_oneof![1u64..200, Just(u64::MAX)],
        pattern in prop::option::of(prop::sample::select(BODY_PATTERNS)),
        invert in any::<bool>(),
    ) {
        static PROBER: LazyLock<std::sync::Mutex<Http>> =
            LazyLock::new(|| std::sync::Mutex::new(prober()));
        let mut probe = PROBER.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        probe.config.max_body_bytes = max;
        probe.config.body_regex = pattern.map(|p| Pattern(regex::Regex::new(p).unwrap()));
        probe.config.body_regex_invert = invert && pattern.is_some();

        // What must happen, frame by frame.
        let mut total: u64 = 0;
        let mut body = Vec::new();
        let mut expected = Ok(());
        for part in &parts {
            match part {
                Part::Data(data) => {
                    total += data.len() as u64;
                    if total > max {
                        expected = Err(Reason::Validation);
                        break;
                    }
                    body.extend_from_slice(data);
                }
                Part::Trailers => {}
                Part::Error => {
                    expected = Err(Reason::Error);
                    break;
                }
            }
        }

        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = parts
            .iter()
            .map(|part| match part {
                Part::Data(data) => Ok(Frame::data(Bytes::from(data.clone()))),
                Part::Trailers => Ok(Frame::trailers(Default::default())),
                Part::Error => Err(std::io::Error::other("reset")),
            })
            .collect();
        let stream = StreamBody::new(futures_util::stream::iter(frames));
        let read = RUNTIME.block_on(probe.read_body(stream));
        match (read, expected) {
            (Ok(kept), Ok(())) => {
                if pattern.is_some() {
                    prop_assert_eq!(&kept, &body);
                } else {
                    prop_assert!(kept.is_empty(), "the body is kept only for a regex");
                }
                let url: Uri = "http://127.0.0.1:1/".parse().unwrap();
                let verdict = probe.check_body(&url, &kept);
                let matched = pattern.is_none_or(|p| {
                    regex::Regex::new(p).unwrap().is_match(&String::from_utf8_lossy(&body))
                });
                prop_assert_eq!(verdict.is_ok(), matched != probe.config.body_regex_invert, "{:?}", verdict);
                if let Err(failure) = verdict {
                    prop_assert_eq!(failure.reason, Reason::Validation);
                }
            }
            (Err(failure), Err(reason)) => {
                prop_assert_eq!(failure.reason, reason, "{}", failure.detail);
                if reason == Reason::Validation {
                    prop_assert!(failure.detail.contains("max_body_bytes"), "{}", failure.detail);
                }
            }
            (read, expected) => prop_assert!(false, "read {:?}, expected {:?}", read, expected),
        }
    }

    /// A `Location` resolves to an http(s) URL with a host, or is refused: never a panic,
    /// never a URL the next hop cannot connect to.
    #[test]
    fn prop_http_redirect_locations_resolve_to_http_urls_or_nothing(
        base in prop::sample::select(&[
            "http://127.0.0.1:1/",
            "https://api.example.com:8443/v1/health?x=1",
            "http://[::1]/a/b/",
            "http://h",
        ][..]),
        location in prop_oneof![
            any::<String>(),
            (
                prop::sample::select(&["", "/", "//", "http://", "https://", "HTTP://", "ftp://", "?", "#", "./", "../", "http:", "//[", "http://@", "//:80"][..]),
                "[a-zA-Z0-9./:?#@\\[\\]%-]{0,16}",
            )
                .prop_map(|(prefix, rest)| format!("{prefix}{rest}")),
        ],
    ) {
        let base: Uri = base.parse().unwrap();
        if let Some(url) = join(&base, &location) {
            prop_assert!(matches!(url.scheme_str(), Some("http" | "https")), "{url}");
            prop_assert!(url.host().is_some_and(|host| !host.is_empty()), "{:?} gave {}", location, url);
        }
    }
}
