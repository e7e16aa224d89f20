//! No secret of an HTTP target in any output of the real binary (issue 12): URL credentials,
//! header values, bearer tokens (inline, from a file) and basic-auth passwords, while the
//! targets fail in every way an HTTP probe can (refused, timeout, TLS, status, body, redirect
//! loop, unreadable secret file: `local`), through a failed reload too. Searched: every log line (at
//! debug level), `/api/v1/targets`, `/api/v1/ranking`, the status page, `/metrics` and the
//! `/-/reload` answers.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Exporter, TempDir, http, wait_for};
use regionprobe_testkit::peers::{Pki, http_server, tls_server};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

/// Every secret the configuration holds; none may appear anywhere.
const SECRETS: [&str; 8] = [
    "url-pa55word",
    "refused-pa55word",
    "hdr-s3cret",
    "file-t0ken",
    "inline-pa55",
    "loop-pa55word",
    "slow-pa55word",
    "inline-t0ken",
];

fn targets(plain: SocketAddr, tls: SocketAddr, token_file: &str) -> String {
    let target = |name: &str, keys: &str| {
        format!("[[target]]\nname = \"{name}\"\nregion = \"eu\"\nprobe = \"http\"\n{keys}\n")
    };
    [
        target(
            "status",
            &format!("url = \"http://probe:url-pa55word@{plain}/status/500\""),
        ),
        target(
            "body",
            &format!(
                "url = \"http://{plain}/text\"\nheaders = {{ X-Api-Key = \"hdr-s3cret\" }}\nbody_regex = \"never matches\""
            ),
        ),
        target(
            "refused",
            "url = \"http://probe:refused-pa55word@127.0.0.1:1/\"",
        ),
        target(
            "file",
            &format!("url = \"http://{plain}/status/503\"\nbearer_token_file = \"{token_file}\""),
        ),
        target(
            "tls",
            &format!(
                "url = \"https://{tls}/text\"\nbasic_auth = {{ username = \"probe\", password = \"inline-pa55\" }}"
            ),
        ),
        target(
            "loop",
            &format!("url = \"http://probe:loop-pa55word@{plain}/loop\"\nmax_redirects = 2"),
        ),
        target(
            "timeout",
            &format!(
                "url = \"http://probe:slow-pa55word@{plain}/slow-head/2000\"\ntimeout = \"300ms\""
            ),
        ),
        target(
            "bearer",
            &format!("url = \"http://{plain}/status/404\"\nbearer_token = \"inline-t0ken\""),
        ),
    ]
    .join("")
}

fn config(targets: &str) -> String {
    format!(
        "[exporter]\nregion = \"local\"\nlisten = \"127.0.0.1:0\"\n[defaults]\ninterval = \"500ms\"\ntimeout = \"400ms\"\n{targets}"
    )
}

fn assert_no_secret(place: &str, text: &str) {
    for secret in SECRETS {
        assert!(
            !text.contains(secret),
            "{place} shows the secret {secret}:\n{text}"
        );
    }
}

/// The targets of `/api/v1/targets`.
fn targets_view(exporter: &Exporter) -> Vec<Value> {
    let (_, body) = http(exporter.addr, "GET", "/api/v1/targets");
    let view: Value = serde_json::from_str(&body).unwrap();
    view["targets"].as_array().unwrap().clone()
}

/// Each target's `last_error.error` once every target has failed.
fn failures(exporter: &Exporter) -> Vec<(String, String)> {
    targets_view(exporter)
        .iter()
        .filter_map(|t| {
            let error = t["last_error"]["error"].as_str()?;
            Some((t["name"].as_str()?.to_owned(), error.to_owned()))
        })
        .collect()
}

#[test]
fn no_secret_in_any_output_on_any_failure() {
    let peers = tokio::runtime::Runtime::new().unwrap();
    let plain = peers.block_on(http_server(None));
    let pki = Pki::new();
    // A certificate for another name: every handshake fails verification.
    let tls = peers.block_on(http_server(Some(tls_server(
        pki.leaf(&["elsewhere.test"], (2031, 1, 1)),
    ))));
    let dir = TempDir::new("secrets");
    let token = dir.write("token", "file-t0ken\n");
    let token = token.display().to_string();
    let path = dir.write("exporter.toml", &config(&targets(plain, tls, &token)));
    let exporter = Exporter::start_with(&[], &path);

    let all_failed = wait_for(WAIT, "every target failed at least once", || {
        let failures = failures(&exporter);
        (failures.len() == 8).then_some(failures)
    });
    let reason_of = |name: &str| {
        targets_view(&exporter)
            .iter()
            .find(|t| t["name"] == name)
            .map(|t| t["last_error"]["reason"].as_str().unwrap_or("").to_owned())
            .unwrap()
    };
    for (name, reason) in [
        ("status", "http_status"),
        ("body", "validation"),
        ("refused", "refused"),
        ("file", "http_status"),
        ("tls", "tls"),
        ("loop", "http_status"),
        ("timeout", "timeout"),
        ("bearer", "http_status"),
    ] {
        assert_eq!(reason_of(name), reason, "{name}: {all_failed:?}");
    }
    // URL credentials are shown as Prometheus shows them.
    let (_, status) = all_failed.iter().find(|(n, _)| n == "status").unwrap();
    assert!(
        status.starts_with(&format!(
            "http://probe:xxxxx@{plain}/status/500 answered 500"
        )),
        "{status}"
    );

    // The token file goes away: a reload that needs it fails and says which file; the running
    // configuration keeps probing and fails as `error`, naming the file, never the token.
    std::fs::remove_file(&token).unwrap();
    let (code, reload) = http(exporter.addr, "POST", "/-/reload");
    assert_eq!(code, 500, "{reload}");
    assert!(reload.contains(&token), "{reload}");
    assert_no_secret("the refused reload's answer", &reload);
    let unreadable = wait_for(WAIT, "the token file's target fails for it", || {
        failures(&exporter)
            .into_iter()
            .find(|(name, error)| name == "file" && error.contains("credentials: cannot read"))
    });
    assert!(unreadable.1.contains(&token), "{unreadable:?}");
    assert_eq!(reason_of("file"), "local");

    // A good reload (the token back), answered without secrets too.
    std::fs::write(&token, "file-t0ken").unwrap();
    let (code, reload) = http(exporter.addr, "POST", "/-/reload");
    assert_eq!(code, 200, "{reload}");
    assert_no_secret("the reload's answer", &reload);

    for path in ["/api/v1/targets", "/api/v1/ranking", "/", "/metrics"] {
        let (code, body) = http(exporter.addr, "GET", path);
        assert_eq!(code, 200, "{path}");
        assert_no_secret(path, &body);
    }
    let log = exporter.log_text();
    assert!(log.contains("target down"), "{log}");
    assert!(
        log.contains("probe failed"),
        "debug lines were logged: {log}"
    );
    assert_no_secret("the log", &log);
    drop(peers);
}

/// Database passwords (issue 16): from `password_file`, right and wrong, against real
/// PostgreSQL and Redis servers, a silent server and a closed port; then a password file that
/// goes away (`local`, naming the file). No password in any output.
#[test]
fn no_database_password_in_any_output_on_any_failure() {
    use regionprobe_testkit::databases::{self, PASSWORD, Postgres, Redis};
    let available = databases::available();
    if common::skip_unless(
        available.is_ok(),
        available.as_ref().err().map_or("", String::as_str),
    ) {
        return;
    }
    const WRONG: [&str; 2] = ["wrong-pg-pa55word", "wrong-redis-pa55word"];
    let pg = Postgres::primary();
    let redis = Redis::primary();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = regionprobe_testkit::dns::closed_tcp_port();
    let dir = TempDir::new("secrets-db");
    let good = dir.write("good", PASSWORD).display().to_string();
    let wrong_pg = dir.write("wrong-pg", WRONG[0]).display().to_string();
    let wrong_redis = dir.write("wrong-redis", WRONG[1]).display().to_string();
    let target = |name: &str, probe: &str, address: String, file: &str| {
        let user = if probe == "postgres" {
            "user = \"postgres\"\n"
        } else {
            ""
        };
        format!(
            "[[target]]\nname = \"{name}\"\nregion = \"eu\"\nprobe = \"{probe}\"\naddress = \"{address}\"\n\
             {user}password_file = \"{file}\"\nwrite = true\n"
        )
    };
    let targets = [
        target("pg-good", "postgres", pg.addr().to_string(), &good),
        target("pg-wrong", "postgres", pg.addr().to_string(), &wrong_pg),
        target("redis-good", "redis", redis.addr().to_string(), &good),
        target(
            "redis-wrong",
            "redis",
            redis.addr().to_string(),
            &wrong_redis,
        ),
        target(
            "pg-silent",
            "postgres",
            silent.local_addr().unwrap().to_string(),
            &good,
        ),
        target("redis-refused", "redis", closed.to_string(), &good),
    ]
    .concat();
    let exporter = Exporter::start(&config(&targets));
    let expected = [
        ("pg-wrong", "auth"),
        ("redis-wrong", "auth"),
        ("pg-silent", "timeout"),
        ("redis-refused", "refused"),
    ];
    wait_for(WAIT, "every bad database target failed as expected", || {
        let view = targets_view(&exporter);
        expected
            .iter()
            .all(|(name, reason)| {
                view.iter()
                    .any(|t| t["name"] == *name && t["last_error"]["reason"] == *reason)
            })
            .then_some(())
    });
    wait_for(WAIT, "the good targets succeed", || {
        let view = targets_view(&exporter);
        ["pg-good", "redis-good"]
            .iter()
            .all(|name| view.iter().any(|t| t["name"] == *name && t["up"] == true))
            .then_some(())
    });
    // The wrong password file goes away: `local`, the file named, never its content.
    std::fs::remove_file(&wrong_pg).unwrap();
    let gone = wait_for(
        WAIT,
        "the removed password file's target fails for it",
        || {
            failures(&exporter)
                .into_iter()
                .find(|(name, error)| name == "pg-wrong" && error.contains("cannot read"))
        },
    );
    assert!(gone.1.contains(&wrong_pg), "{gone:?}");
    let mut outputs = vec![("the log".to_owned(), exporter.log_text())];
    for path in ["/api/v1/targets", "/api/v1/ranking", "/", "/metrics"] {
        let (code, body) = http(exporter.addr, "GET", path);
        assert_eq!(code, 200, "{path}");
        outputs.push((path.to_owned(), body));
    }
    for (place, text) in outputs {
        for secret in [PASSWORD, WRONG[0], WRONG[1]] {
            assert!(!text.contains(secret), "{place} shows {secret}:\n{text}");
        }
    }
    drop(silent);
}
