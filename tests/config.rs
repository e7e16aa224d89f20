//! Configuration loading, black-box: every invalid fixture pins its exact message, the bundled
//! file stays valid, and `check-config` reports through its exit status.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

use regionprobe::config::{
    self, ConfigSource, HttpAuth, HttpConfig, IpVersion, ProbeConfig, Secret,
};

fn fixtures() -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir("tests/fixtures/invalid")
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "toml"))
        .collect();
    paths.sort();
    paths
}

/// Each fixture starts with `# error: <message>` (the exact message after the file name) or
/// `# error-starts: <prefix>` for multi-line parser output.
#[test]
fn every_invalid_fixture_fails_with_its_pinned_message() {
    let paths = fixtures();
    assert!(paths.len() >= 15, "fixtures missing: {paths:?}");
    for path in paths {
        let text = std::fs::read_to_string(&path).unwrap();
        let first = text.lines().next().unwrap();
        let error = ConfigSource::File(path.clone())
            .load_with_env(Some(HashMap::new()))
            .expect_err(&format!("{} should be rejected", path.display()))
            .to_string();
        let expected_prefix = format!("{}: ", path.display());
        assert!(error.starts_with(&expected_prefix), "{error}");
        let message = &error[expected_prefix.len()..];
        if let Some(exact) = first.strip_prefix("# error: ") {
            assert_eq!(message, exact, "{}", path.display());
        } else if let Some(prefix) = first.strip_prefix("# error-starts: ") {
            assert!(message.starts_with(prefix), "{}: {message}", path.display());
        } else {
            panic!("{} has no `# error:` line", path.display());
        }
    }
}

#[test]
fn the_bundled_config_is_valid_and_probes_local_things() {
    let config = ConfigSource::Bundled
        .load_with_env(Some(HashMap::new()))
        .unwrap();
    assert_eq!(config.exporter.region, "local");
    assert_eq!(config.exporter.listen, "127.0.0.1:9537".parse().unwrap());
    let kinds: Vec<&str> = config
        .targets
        .iter()
        .map(|t| t.probe.kind().as_str())
        .collect();
    for kind in ["icmp", "tcp", "http"] {
        assert!(kinds.contains(&kind), "{kinds:?}");
    }
    // The TCP target is the exporter's own listen port, so it succeeds wherever it runs.
    let own_port = config.targets.iter().any(
        |t| matches!(&t.probe, ProbeConfig::Tcp(tcp) if tcp.port == config.exporter.listen.port()),
    );
    assert!(own_port);
    // The file in the repository is the one compiled in.
    assert_eq!(
        std::fs::read_to_string("exporter.toml").unwrap(),
        config::BUNDLED
    );
}

/// A misspelt key anywhere in the shipped file must fail, never be silently ignored.
#[test]
fn a_bogus_key_in_any_section_of_the_bundled_config_is_rejected() {
    for section in ["[exporter]", "[defaults]", "[ranking]", "[[target]]"] {
        let text = config::BUNDLED.replacen(section, &format!("{section}\nbogus_key = 1"), 1);
        let error = config::parse("exporter.toml", &text, Some(HashMap::new()))
            .expect_err(section)
            .to_string();
        assert!(error.contains("bogus_key"), "{section}: {error}");
    }
}

#[test]
fn environment_overrides_file_keys() {
    let env = HashMap::from([
        (
            "REGIONPROBE_EXPORTER__REGION".to_owned(),
            "eu-west-1".to_owned(),
        ),
        ("REGIONPROBE_DEFAULTS__INTERVAL".to_owned(), "5s".to_owned()),
        (
            "REGIONPROBE_RANKING__QUANTILE".to_owned(),
            "0.99".to_owned(),
        ),
    ]);
    let config = ConfigSource::Bundled.load_with_env(Some(env)).unwrap();
    assert_eq!(config.exporter.region, "eu-west-1");
    assert!(config.targets.iter().all(|t| t.interval.as_secs() == 5));
    assert_eq!(config.ranking.quantile, 0.99);
}

#[test]
fn only_section_key_variables_are_overrides() {
    let env = HashMap::from([
        ("REGIONPROBE_REQUIRE_SOMETHING".to_owned(), "1".to_owned()),
        ("REGIONPROBE_VERSION".to_owned(), "1.2.3".to_owned()),
    ]);
    ConfigSource::Bundled.load_with_env(Some(env)).unwrap();
    let env = HashMap::from([("REGIONPROBE_EXPORTER__REGOIN".to_owned(), "eu".to_owned())]);
    let error = ConfigSource::Bundled
        .load_with_env(Some(env))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("key `exporter.regoin`: unknown key; did you mean `region`?"),
        "{error}"
    );
}

#[test]
fn a_bad_environment_override_names_the_key() {
    let env = HashMap::from([(
        "REGIONPROBE_DEFAULTS__TIMEOUT".to_owned(),
        "soon".to_owned(),
    )]);
    let error = ConfigSource::Bundled
        .load_with_env(Some(env))
        .unwrap_err()
        .to_string();
    // The variable is to blame, not the file (issue 12, item 16).
    assert!(
        error.starts_with(
            "<bundled exporter.toml>: REGIONPROBE_DEFAULTS__TIMEOUT (environment override): key `defaults.timeout`: \"soon\" is not a duration"
        ),
        "{error}"
    );
    let env = HashMap::from([("REGIONPROBE_EXPORTER__REGOIN".to_owned(), "eu".to_owned())]);
    let error = ConfigSource::Bundled
        .load_with_env(Some(env))
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with(
            "<bundled exporter.toml>: REGIONPROBE_EXPORTER__REGOIN (environment override)"
        ),
        "{error}"
    );
    // A mistake in the file itself still blames the file, whatever the environment sets.
    let text = config::BUNDLED.replacen("interval = \"1s\"", "interval = \"1x\"", 1);
    let env = HashMap::from([("REGIONPROBE_EXPORTER__REGION".to_owned(), "eu".to_owned())]);
    let error = config::parse("exporter.toml", &text, Some(env))
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("exporter.toml: key `defaults.interval`"),
        "{error}"
    );
}

/// Issue 12, item 3: no config error repeats a secret's value or a source line, and each is
/// one line: loading, `check-config`, and a refused `POST /-/reload` (response and log).
#[test]
fn config_errors_never_repeat_a_secret() {
    let secrets = ["s3cr3t", "hunter2"];
    let fixtures = [
        "http_url_password.toml",
        "http_header_unterminated.toml",
        "http_headers_wrong_type.toml",
        "web_user_unterminated.toml",
        "web_user_wrong_type.toml",
    ];
    for name in fixtures {
        let path = format!("tests/fixtures/invalid/{name}");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            secrets.iter().any(|secret| text.contains(secret)),
            "{path} has no secret to leak"
        );
        let error = ConfigSource::File(path.clone().into())
            .load_with_env(Some(HashMap::new()))
            .unwrap_err()
            .to_string();
        let check = Command::new(common::BIN)
            .args(["check-config", "--config", &path])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&check.stderr);
        assert_eq!(check.status.code(), Some(1), "{path}");
        assert_eq!(stderr.trim_end(), error, "{path}");
        for output in [&error, stderr.trim_end()] {
            assert!(
                !output.contains('\n'),
                "{path}: more than one line: {output}"
            );
            assert!(output.starts_with(&format!("{path}: ")), "{output}");
            for secret in secrets {
                assert!(!output.contains(secret), "{path} leaks {secret}: {output}");
            }
        }
    }

    // The same through a reload of a running exporter.
    let good = "[exporter]\nregion = \"eu\"\nlisten = \"127.0.0.1:0\"\n";
    let exporter = common::Exporter::start(good);
    for name in fixtures {
        let text = std::fs::read_to_string(format!("tests/fixtures/invalid/{name}")).unwrap();
        std::fs::write(&exporter.config_path, text).unwrap();
        let (status, body) = common::http(exporter.addr, "POST", "/-/reload");
        assert_eq!(status, 500, "{name}: {body}");
        assert!(body.contains("reload failed"), "{body}");
        for secret in secrets {
            assert!(
                !body.contains(secret),
                "{name}: the response leaks {secret}: {body}"
            );
        }
    }
    let log = common::wait_for(
        std::time::Duration::from_secs(5),
        "every refused reload logged",
        || {
            let log = exporter.log_text();
            (log.matches("reload failed").count() == fixtures.len()).then_some(log)
        },
    );
    for secret in secrets {
        assert!(!log.contains(secret), "the log leaks {secret}:\n{log}");
    }
}

/// Issue 12, item 11: an empty or truncated file is refused (check-config and reload) unless
/// `exporter.allow_empty = true`; the bundled file still loads.
#[test]
fn an_empty_or_truncated_config_is_refused_unless_allowed() {
    for fixture in ["empty.toml", "truncated.toml"] {
        let path = format!("tests/fixtures/invalid/{fixture}");
        let out = Command::new(common::BIN)
            .args(["check-config", "--config", &path])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("allow_empty = true"),
            "{out:?}"
        );
    }
    let allowed = config::parse(
        "t.toml",
        "[exporter]\nallow_empty = true\n",
        Some(HashMap::new()),
    )
    .unwrap();
    assert!(allowed.targets.is_empty());
    assert_eq!(allowed.exporter.region, "local");
    // A region without targets is a deliberate file, not a truncated one.
    config::parse(
        "t.toml",
        "[exporter]\nregion = \"eu\"\n",
        Some(HashMap::new()),
    )
    .unwrap();

    // A running exporter keeps its targets and reports the failed reload.
    let good = "[exporter]\nregion = \"eu\"\nlisten = \"127.0.0.1:0\"\n[[target]]\nname = \"t\"\nregion = \"us\"\nprobe = \"tcp\"\naddress = \"127.0.0.1:1\"\n";
    let exporter = common::Exporter::start(good);
    std::fs::write(&exporter.config_path, "").unwrap();
    let (status, body) = common::http(exporter.addr, "POST", "/-/reload");
    assert_eq!(status, 500, "{body}");
    let scrape = exporter.metrics();
    assert_eq!(
        scrape.value("regionprobe_config_last_reload_successful", &[]),
        Some(0.0)
    );
    assert_eq!(
        scrape.label_values("regionprobe_target_up", "target"),
        ["t"]
    );
    std::fs::write(
        &exporter.config_path,
        "[exporter]\nlisten = \"127.0.0.1:0\"\nallow_empty = true\n",
    )
    .unwrap();
    let (status, body) = common::http(exporter.addr, "POST", "/-/reload");
    assert_eq!(status, 200, "{body}");
    let scrape = exporter.metrics();
    assert_eq!(
        scrape.value("regionprobe_config_last_reload_successful", &[]),
        Some(1.0)
    );
    assert!(
        scrape
            .label_values("regionprobe_target_up", "target")
            .is_empty()
    );
}

/// Issue 12, item 17: host values that can only fail at run time fail `check-config`.
#[test]
fn hosts_that_cannot_resolve_fail_check_config() {
    for (probe, key, value) in [
        ("icmp", "host", "10.0.0.300"),
        ("icmp", "host", "bad host"),
        ("tcp", "address", "10.0.0.256:80"),
        ("tcp", "address", "[fe80::zz]:80"),
        ("http", "url", "http://10.0.0.300/"),
    ] {
        let text = format!(
            "[[target]]\nname = \"a\"\nregion = \"eu\"\nprobe = \"{probe}\"\n{key} = \"{value}\"\n"
        );
        let error = config::parse("t.toml", &text, Some(HashMap::new()))
            .expect_err(value)
            .to_string();
        assert!(
            error.starts_with(&format!("t.toml: key `target[0].{key}`: ")),
            "{error}"
        );
    }
}

#[test]
fn per_target_settings_override_defaults() {
    let text = r#"
        [defaults]
        interval = "2s"
        timeout = "1500ms"
        buckets = [0.001, 0.01]
        [[target]]
        name = "a"
        region = "eu"
        probe = "tcp"
        address = "[::1]:443"
        interval = "500ms"
        ip_version = 6
        [[target]]
        name = "b"
        region = "us"
        probe = "icmp"
        host = "localhost"
        timeout = "100ms"
        buckets = [0.5]
        payload_size = 1000
    "#;
    let config = config::parse("t.toml", text, Some(HashMap::new())).unwrap();
    let (a, b) = (&config.targets[0], &config.targets[1]);
    assert_eq!(a.interval.as_millis(), 500);
    assert_eq!(
        a.timeout.as_millis(),
        500,
        "inherited timeout shrinks to the interval"
    );
    assert_eq!(*a.buckets, [0.001, 0.01]);
    match &a.probe {
        ProbeConfig::Tcp(tcp) => {
            assert_eq!(
                (tcp.host.as_str(), tcp.port, tcp.ip_version),
                ("::1", 443, IpVersion::V6)
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!((b.interval.as_secs(), b.timeout.as_millis()), (2, 100));
    assert_eq!(*b.buckets, [0.5]);
    assert!(matches!(&b.probe, ProbeConfig::Icmp(icmp) if icmp.payload_size == 1000));
}

#[test]
fn check_config_exits_zero_on_valid_and_one_with_the_message_on_invalid() {
    let ok = Command::new(common::BIN)
        .arg("check-config")
        .output()
        .unwrap();
    assert!(ok.status.success(), "{ok:?}");
    assert!(
        String::from_utf8_lossy(&ok.stdout).contains("OK (4 targets"),
        "{ok:?}"
    );

    let fixture = "tests/fixtures/invalid/duplicate_name.toml";
    let bad = Command::new(common::BIN)
        .args(["check-config", "--config", fixture])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.starts_with(&format!("{fixture}: key `target[2].name`: duplicate")),
        "{stderr}"
    );

    let missing = Command::new(common::BIN)
        .args(["check-config", "--config", "/nonexistent/exporter.toml"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&missing.stderr)
            .contains("/nonexistent/exporter.toml: cannot read")
    );
}

#[test]
fn run_with_an_invalid_config_exits_non_zero_and_says_why() {
    let output = Command::new(common::BIN)
        .args(["--config", "tests/fixtures/invalid/unknown_probe.toml"])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("unknown probe kind \"smtp\""),
        "{output:?}"
    );
}

fn http_config(lines: &str) -> HttpConfig {
    let text = format!("[[target]]\nname = \"t\"\nregion = \"r\"\nprobe = \"http\"\n{lines}");
    let target = config::parse("t.toml", &text, Some(Default::default()))
        .unwrap_or_else(|err| panic!("{err}"))
        .targets
        .remove(0);
    match std::sync::Arc::unwrap_or_clone(target).probe {
        ProbeConfig::Http(http) => *http,
        other => panic!("{other:?}"),
    }
}

#[test]
fn url_credentials_leave_the_url_and_become_basic_auth() {
    let http = http_config("url = \"https://pr%6Fbe:p%40ss:w0rd@api.example.com:8443/h?x=1\"");
    assert_eq!(http.url.to_string(), "https://api.example.com:8443/h?x=1");
    assert_eq!(
        http.auth,
        Some(HttpAuth::Basic {
            username: "probe".into(),
            password: Secret::Value("p@ss:w0rd".into()),
            from_url: true,
        })
    );
    let shown = format!("{http:?}");
    assert!(!shown.contains("w0rd"), "{shown}");
}

#[test]
fn secrets_come_from_the_file_the_environment_or_the_value_and_debug_hides_them() {
    // `std::env::set_var` is unsafe in edition 2024 (and `unsafe_code` is denied): PATH is
    // a variable every test process has.
    let path = std::env::var("PATH").unwrap();
    let http = http_config(
        "url = \"https://api.example.com/\"\nbasic_auth = { username = \"u\", password_env = \"PATH\" }",
    );
    assert_eq!(
        http.auth,
        Some(HttpAuth::Basic {
            username: "u".into(),
            password: Secret::Value(path.clone()),
            from_url: false,
        })
    );
    let headers = http_config(
        "url = \"https://api.example.com/\"\nheaders = { X-Api-Key = \"k3y-value\" }\nbearer_token = \"t0ken-value\"",
    );
    let shown = format!("{headers:?}");
    assert!(
        !shown.contains("k3y-value") && !shown.contains("t0ken-value"),
        "{shown}"
    );
    assert!(!format!("{http:?}").contains(&path));
}
