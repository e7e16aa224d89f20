//! Database probes against the real servers (PostgreSQL 15 with a streaming standby, Redis
//! with a replica), started by the test as root: phases and read/write series, the failure
//! reasons (wrong password, unknown database, read-only, stopped, silent) with no latency
//! sample, replication lag growing until the region loses its eligibility as the failover
//! candidate, and coming back; TLS (`require`, `verify-full`) to all three, succeeding with a
//! `tls` phase or failing as `tls` against another CA.

// Blocking waits on real time.
#![allow(clippy::disallowed_types)]

mod common;

use std::net::{SocketAddr, TcpListener};
use std::thread;
use std::time::Duration;

use common::{Exporter, Scrape, TempDir, http_server, skip_unless, wait_for};
use regionprobe_testkit::databases::{self, Mariadb, PASSWORD, Postgres, Redis};
use regionprobe_testkit::dns::closed_tcp_port;
use regionprobe_testkit::scrape::assert_promtool_clean;
use regionprobe_testkit::services::get_json;
use serde_json::Value;

fn skip() -> bool {
    let why = databases::available().err();
    skip_unless(why.is_none(), why.as_deref().unwrap_or(""))
}

fn count(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape.value(name, labels).unwrap_or(0.0)
}

/// The failover candidate in `/api/v1/ranking`.
fn best(exporter: &Exporter) -> Option<String> {
    let ranking = get_json(exporter.addr, "/api/v1/ranking").ok()?;
    ranking["best"]["region"].as_str().map(str::to_owned)
}

fn region(exporter: &Exporter, name: &str) -> Value {
    let ranking = get_json(exporter.addr, "/api/v1/ranking").unwrap();
    ranking["regions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["region"] == name)
        .cloned()
        .unwrap_or(Value::Null)
}

/// Every failing target fails with its own reason, within its timeout, and never observes a
/// latency sample; the password is nowhere.
fn check_failures(exporter: &Exporter, expected: &[(&str, &str)]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let scrape = loop {
        let scrape = exporter.metrics();
        let missing: Vec<String> = expected
            .iter()
            .filter(|(target, reason)| {
                count(
                    &scrape,
                    "regionprobe_probe_failures_total",
                    &[("target", target), ("reason", reason)],
                ) < 2.0
            })
            .map(|(target, _)| scrape_lines(&scrape, target))
            .collect();
        if missing.is_empty() {
            break scrape;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not failing as expected:\n{}\n{}",
            missing.join("\n"),
            exporter.log_text()
        );
        thread::sleep(Duration::from_millis(200));
    };
    for (target, reason) in expected {
        let probes = count(&scrape, "regionprobe_probes_total", &[("target", target)]);
        let failed = count(
            &scrape,
            "regionprobe_probe_failures_total",
            &[("target", target), ("reason", reason)],
        );
        assert!(
            failed >= 2.0,
            "{target}: {failed} of {probes} failed as {reason}"
        );
        // A probe still running when scraped is counted in probes_total only.
        assert!(
            probes - failed <= 1.0,
            "{target}: {probes} probes, {failed} failed as {reason}:\n{}",
            scrape_lines(&scrape, target)
        );
        assert_eq!(
            count(
                &scrape,
                "regionprobe_probe_duration_seconds_count",
                &[("target", target)]
            ),
            0.0,
            "{target}: a failure observed a latency"
        );
    }
    let (_, page) = exporter.get("/");
    let (_, targets) = exporter.get("/api/v1/targets");
    let (_, metrics) = exporter.get("/metrics");
    for (what, text) in [
        ("page", &page),
        ("targets API", &targets),
        ("metrics", &metrics),
        ("log", &exporter.log_text()),
    ] {
        assert!(!text.contains(PASSWORD), "the password is in the {what}");
    }
    if regionprobe_testkit::services::which("promtool").is_some() {
        assert_promtool_clean(&metrics);
    }
}

fn scrape_lines(scrape: &Scrape, target: &str) -> String {
    scrape
        .samples
        .iter()
        .filter(|s| s.labels.get("target").map(String::as_str) == Some(target))
        .map(|s| format!("{} {:?} {}", s.name, s.labels, s.value))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A TCP server that accepts and never says a word.
fn silent_server() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").unwrap()
}

fn lag(scrape: &Scrape, target: &str) -> Option<f64> {
    scrape.value("regionprobe_replication_lag_seconds", &[("target", target)])
}

#[test]
fn postgres_standby_lag_takes_the_region_out_of_failover_and_failures_have_reasons() {
    if skip() {
        return;
    }
    let dir = TempDir::new("db-pg");
    let password = dir.write("password", &format!("{PASSWORD}\n"));
    let wrong = dir.write("wrong", "not-the-password");
    let primary = Postgres::primary();
    let standby = primary.standby();
    standby.wait_streaming();
    let silent = silent_server();
    let slow = http_server(Duration::from_millis(150));
    let closed = closed_tcp_port();
    let db = |name: &str, region: &str, addr: String, extra: &str| {
        format!(
            "[[target]]\nname = \"{name}\"\nregion = \"{region}\"\nprobe = \"postgres\"\naddress = \"{addr}\"\n\
             user = \"postgres\"\npassword_file = \"{}\"\ndatabase = \"postgres\"\n{extra}\n",
            password.display()
        )
    };
    let mut config = String::from(
        "[exporter]\nregion = \"a\"\nlisten = \"127.0.0.1:0\"\n[defaults]\ninterval = \"400ms\"\n\
         [ranking]\nwindow = \"10s\"\nhold = \"1s\"\nmax_replication_lag = \"2s\"\n",
    );
    config += &db(
        "pg-primary",
        "a",
        primary.addr().to_string(),
        "write = true\nreplication = \"primary\"",
    );
    config += &db(
        "pg-standby",
        "b",
        standby.addr().to_string(),
        "replication = \"replica\"",
    );
    config += &db(
        "pg-heartbeat",
        "b",
        standby.addr().to_string(),
        "replication = \"heartbeat\"",
    );
    config += &format!(
        "[[target]]\nname = \"slow-c\"\nregion = \"c\"\nprobe = \"http\"\nurl = \"http://{slow}/\"\n"
    );
    config += &db("pg-unknown-db", "x", primary.addr().to_string(), "")
        .replace("database = \"postgres\"", "database = \"no_such_db\"");
    config += &db("pg-wrong-password", "x", primary.addr().to_string(), "").replace(
        &password.display().to_string(),
        &wrong.display().to_string(),
    );
    config += &db(
        "pg-read-only",
        "x",
        standby.addr().to_string(),
        "write = true",
    );
    config += &db("pg-stopped", "x", closed.to_string(), "");
    // The test server has ssl off: sslmode = "require" must not fall back to plain text.
    config += &db(
        "pg-no-tls",
        "x",
        primary.addr().to_string(),
        "sslmode = \"require\"",
    );
    config += &db(
        "pg-silent",
        "x",
        silent.local_addr().unwrap().to_string(),
        "",
    );
    let exporter = Exporter::start(&config);

    check_failures(
        &exporter,
        &[
            ("pg-unknown-db", "unknown_database"),
            ("pg-wrong-password", "auth"),
            ("pg-read-only", "read_only"),
            ("pg-stopped", "refused"),
            ("pg-silent", "timeout"),
            ("pg-no-tls", "tls"),
        ],
    );

    // Read and write are separate series; every phase is timed.
    let scrape = exporter.metrics();
    for phase in ["connect", "auth", "query", "write"] {
        assert!(
            count(
                &scrape,
                "regionprobe_db_phase_duration_seconds_count",
                &[("target", "pg-primary"), ("phase", phase)]
            ) > 0.0,
            "no {phase} phase:\n{}",
            scrape_lines(&scrape, "pg-primary")
        );
    }
    assert_eq!(
        scrape.value(
            "regionprobe_replication_link_up",
            &[("target", "pg-standby")]
        ),
        Some(1.0)
    );
    // The primary sees its standby (pg_basebackup -R names it by the cluster's name).
    assert!(
        !scrape
            .find(
                "regionprobe_replication_replica_gap_bytes",
                &[("target", "pg-primary")]
            )
            .is_empty(),
        "{}",
        scrape_lines(&scrape, "pg-primary")
    );

    // Healthy: the standby's region is the candidate, its lag small.
    wait_for(Duration::from_secs(20), "region b chosen", || {
        (best(&exporter).as_deref() == Some("b")).then_some(())
    });
    let scrape = exporter.metrics();
    assert!(lag(&scrape, "pg-standby").unwrap() < 2.0);

    // Replay paused while the primary's write target keeps writing: the lag grows past
    // max_replication_lag, the region is no longer eligible and the candidate moves.
    standby.sql("SELECT pg_wal_replay_pause()");
    wait_for(Duration::from_secs(20), "region b ineligible", || {
        let b = region(&exporter, "b");
        (b["eligible"] == false).then_some(())
    });
    let b = region(&exporter, "b");
    assert!(
        b["ineligible"]
            .as_str()
            .unwrap()
            .starts_with("replication_lag"),
        "{b}"
    );
    assert!(b["replication_lag_seconds"].as_f64().unwrap() > 2.0, "{b}");
    wait_for(Duration::from_secs(10), "candidate moved to c", || {
        (best(&exporter).as_deref() == Some("c")).then_some(())
    });
    let scrape = exporter.metrics();
    assert!(lag(&scrape, "pg-standby").unwrap() > 2.0);
    assert!(
        lag(&scrape, "pg-heartbeat").unwrap() > 2.0,
        "the heartbeat's age grows too"
    );
    assert_eq!(
        scrape.value(
            "regionprobe_region_eligible",
            &[("target_region", "b"), ("reason", "replication_lag")]
        ),
        Some(0.0)
    );
    let (_, page) = exporter.get("/");
    assert!(page.contains("not eligible: replication_lag"), "{page}");

    // Replay resumed: the lag falls to 0 and the region takes the candidate back.
    standby.sql("SELECT pg_wal_replay_resume()");
    wait_for(Duration::from_secs(20), "region b chosen again", || {
        (best(&exporter).as_deref() == Some("b")).then_some(())
    });
    assert!(lag(&exporter.metrics(), "pg-standby").unwrap() < 2.0);
    drop(silent);
}

#[test]
fn redis_replica_lag_and_broken_link_take_the_region_out_of_failover() {
    if skip() {
        return;
    }
    let dir = TempDir::new("db-redis");
    let password = dir.write("password", PASSWORD);
    let wrong = dir.write("wrong", "nope");
    let primary = Redis::primary();
    let replica = Redis::replica_of(&primary);
    replica.wait_link_up();
    let silent = silent_server();
    let slow = http_server(Duration::from_millis(150));
    let closed = closed_tcp_port();
    let db = |name: &str, region: &str, addr: String, extra: &str| {
        format!(
            "[[target]]\nname = \"{name}\"\nregion = \"{region}\"\nprobe = \"redis\"\naddress = \"{addr}\"\n\
             password_file = \"{}\"\n{extra}\n",
            password.display()
        )
    };
    let mut config = String::from(
        "[exporter]\nregion = \"a\"\nlisten = \"127.0.0.1:0\"\n[defaults]\ninterval = \"400ms\"\n\
         [ranking]\nwindow = \"10s\"\nhold = \"1s\"\nmax_replication_lag = \"2s\"\n",
    );
    config += &db(
        "redis-primary",
        "a",
        primary.addr().to_string(),
        "write = true\nreplication = \"primary\"",
    );
    config += &db(
        "redis-replica",
        "b",
        replica.addr().to_string(),
        "replication = \"replica\"",
    );
    config += &db(
        "redis-heartbeat",
        "b",
        replica.addr().to_string(),
        "replication = \"heartbeat\"",
    );
    config += &format!(
        "[[target]]\nname = \"slow-c\"\nregion = \"c\"\nprobe = \"http\"\nurl = \"http://{slow}/\"\n"
    );
    config += &db(
        "redis-unknown-db",
        "x",
        primary.addr().to_string(),
        "database = \"999\"",
    );
    config += &db("redis-wrong-password", "x", primary.addr().to_string(), "").replace(
        &password.display().to_string(),
        &wrong.display().to_string(),
    );
    config += &db(
        "redis-read-only",
        "x",
        replica.addr().to_string(),
        "write = true",
    );
    config += &db("redis-stopped", "x", closed.to_string(), "");
    config += &db(
        "redis-silent",
        "x",
        silent.local_addr().unwrap().to_string(),
        "",
    );
    let exporter = Exporter::start(&config);

    check_failures(
        &exporter,
        &[
            ("redis-unknown-db", "unknown_database"),
            ("redis-wrong-password", "auth"),
            ("redis-read-only", "read_only"),
            ("redis-stopped", "refused"),
            ("redis-silent", "timeout"),
        ],
    );
    let scrape = exporter.metrics();
    for phase in ["connect", "auth", "query", "write"] {
        assert!(
            count(
                &scrape,
                "regionprobe_db_phase_duration_seconds_count",
                &[("target", "redis-primary"), ("phase", phase)]
            ) > 0.0,
            "no {phase} phase:\n{}",
            scrape_lines(&scrape, "redis-primary")
        );
    }
    assert_eq!(
        scrape.value(
            "regionprobe_replication_link_up",
            &[("target", "redis-replica")]
        ),
        Some(1.0)
    );
    let gap = scrape.find(
        "regionprobe_replication_replica_gap_bytes",
        &[("target", "redis-primary")],
    );
    assert_eq!(gap.len(), 1, "{}", scrape_lines(&scrape, "redis-primary"));
    wait_for(Duration::from_secs(20), "region b chosen", || {
        (best(&exporter).as_deref() == Some("b")).then_some(())
    });
    // The primary's write target stamps the heartbeat; the replica's copy is fresh.
    wait_for(
        Duration::from_secs(10),
        "a fresh heartbeat on the replica",
        || {
            lag(&exporter.metrics(), "redis-heartbeat")
                .filter(|age| *age < 3.0)
                .map(|_| ())
        },
    );

    // The primary stalls (DEBUG SLEEP): the replica hears nothing, its lag passes 2 s.
    let primary = std::sync::Arc::new(primary);
    let stalled = {
        let primary = primary.clone();
        thread::spawn(move || primary.command(&["DEBUG", "SLEEP", "6"]))
    };
    wait_for(Duration::from_secs(10), "region b ineligible", || {
        (region(&exporter, "b")["eligible"] == false).then_some(())
    });
    wait_for(Duration::from_secs(5), "candidate moved to c", || {
        (best(&exporter).as_deref() == Some("c")).then_some(())
    });
    stalled.join().unwrap();
    wait_for(Duration::from_secs(20), "region b chosen again", || {
        (best(&exporter).as_deref() == Some("b")).then_some(())
    });

    // The link breaks (the replica promoted): the replica probe says so, no sample.
    let before = count(
        &exporter.metrics(),
        "regionprobe_probe_failures_total",
        &[("target", "redis-replica"), ("reason", "validation")],
    );
    replica.command(&["REPLICAOF", "NO", "ONE"]);
    wait_for(Duration::from_secs(10), "replica probe fails", || {
        (count(
            &exporter.metrics(),
            "regionprobe_probe_failures_total",
            &[("target", "redis-replica"), ("reason", "validation")],
        ) > before)
            .then_some(())
    });
    drop(silent);
}

#[test]
fn mariadb_stopped_sql_thread_takes_the_region_out_of_failover_and_failures_have_reasons() {
    if skip() {
        return;
    }
    let dir = TempDir::new("db-mariadb");
    let password = dir.write("password", PASSWORD);
    let wrong = dir.write("wrong", "nope-nope");
    let primary = Mariadb::primary();
    let replica = Mariadb::replica_of(&primary);
    let silent = silent_server();
    let slow = http_server(Duration::from_millis(150));
    let closed = closed_tcp_port();
    let db = |name: &str, region: &str, addr: String, extra: &str| {
        format!(
            "[[target]]\nname = \"{name}\"\nregion = \"{region}\"\nprobe = \"mysql\"\naddress = \"{addr}\"\n\
             user = \"probe\"\npassword_file = \"{}\"\ndatabase = \"probe\"\n{extra}\n",
            password.display()
        )
    };
    let mut config = String::from(
        "[exporter]\nregion = \"a\"\nlisten = \"127.0.0.1:0\"\n[defaults]\ninterval = \"400ms\"\n\
         [ranking]\nwindow = \"10s\"\nhold = \"1s\"\nmax_replication_lag = \"2s\"\n",
    );
    config += &db(
        "my-primary",
        "a",
        primary.addr().to_string(),
        "write = true",
    );
    config += &db(
        "my-replica",
        "b",
        replica.addr().to_string(),
        "replication = \"replica\"",
    );
    config += &db(
        "my-heartbeat",
        "b",
        replica.addr().to_string(),
        "replication = \"heartbeat\"",
    );
    config += &format!(
        "[[target]]\nname = \"slow-c\"\nregion = \"c\"\nprobe = \"http\"\nurl = \"http://{slow}/\"\n"
    );
    config += &db("my-unknown-db", "x", primary.addr().to_string(), "")
        .replace("database = \"probe\"", "database = \"no_such_db\"");
    config += &db("my-wrong-password", "x", primary.addr().to_string(), "").replace(
        &password.display().to_string(),
        &wrong.display().to_string(),
    );
    config += &db(
        "my-read-only",
        "x",
        replica.addr().to_string(),
        "write = true",
    );
    config += &db("my-stopped", "x", closed.to_string(), "");
    config += &db(
        "my-no-tls",
        "x",
        primary.addr().to_string(),
        "sslmode = \"require\"",
    );
    config += &db(
        "my-silent",
        "x",
        silent.local_addr().unwrap().to_string(),
        "",
    );
    let exporter = Exporter::start(&config);
    check_failures(
        &exporter,
        &[
            ("my-unknown-db", "unknown_database"),
            ("my-wrong-password", "auth"),
            ("my-read-only", "read_only"),
            ("my-stopped", "refused"),
            ("my-silent", "timeout"),
            ("my-no-tls", "tls"),
        ],
    );
    let scrape = exporter.metrics();
    for phase in ["connect", "auth", "query", "write"] {
        assert!(
            count(
                &scrape,
                "regionprobe_db_phase_duration_seconds_count",
                &[("target", "my-primary"), ("phase", phase)]
            ) > 0.0,
            "no {phase} phase:\n{}",
            scrape_lines(&scrape, "my-primary")
        );
    }
    wait_for(Duration::from_secs(20), "region b chosen", || {
        (best(&exporter).as_deref() == Some("b")).then_some(())
    });
    let scrape = exporter.metrics();
    assert_eq!(
        scrape.value(
            "regionprobe_replication_thread_running",
            &[("target", "my-replica"), ("thread", "sql")]
        ),
        Some(1.0)
    );
    assert!(lag(&scrape, "my-replica").unwrap() < 2.0);

    // The SQL thread stops: Seconds_Behind_Master is NULL, replication broken (+Inf).
    replica.sql("STOP SLAVE SQL_THREAD");
    wait_for(Duration::from_secs(20), "candidate moved to c", || {
        (best(&exporter).as_deref() == Some("c")).then_some(())
    });
    let b = region(&exporter, "b");
    assert_eq!(b["eligible"], false, "{b}");
    let scrape = exporter.metrics();
    assert_eq!(
        scrape.value(
            "regionprobe_replication_thread_running",
            &[("target", "my-replica"), ("thread", "sql")]
        ),
        Some(0.0)
    );
    assert_eq!(lag(&scrape, "my-replica"), Some(f64::INFINITY));
    wait_for(Duration::from_secs(10), "the heartbeat ages", || {
        (lag(&exporter.metrics(), "my-heartbeat").unwrap_or(0.0) > 2.0).then_some(())
    });

    replica.sql("START SLAVE SQL_THREAD");
    wait_for(Duration::from_secs(20), "region b chosen again", || {
        (best(&exporter).as_deref() == Some("b")).then_some(())
    });
    drop(silent);
}

/// TLS with rustls: `verify-full` against the server's CA and name succeeds (its handshake a
/// phase of its own, the certificate's expiry exported); against the web PKI roots it fails
/// as `tls`; `require` encrypts without verifying.
#[test]
fn redis_over_tls_verifies_or_fails_as_tls() {
    if skip() {
        return;
    }
    let pki = regionprobe_testkit::peers::Pki::new();
    let server = Redis::tls(&pki, &["db.regionprobe.test"]);
    let dir = TempDir::new("db-tls");
    let password = dir.write("password", PASSWORD);
    let ca = dir.write("ca.pem", &pki.ca_pem);
    let target = |name: &str, keys: &str| {
        format!(
            "[[target]]\nname = \"{name}\"\nregion = \"b\"\nprobe = \"redis\"\naddress = \"{}\"\n\
             password_file = \"{}\"\n{keys}\n",
            server.addr(),
            password.display()
        )
    };
    let config = String::from(
        "[exporter]\nregion = \"a\"\nlisten = \"127.0.0.1:0\"\n[defaults]\ninterval = \"400ms\"\n",
    ) + &target(
        "verified",
        &format!(
            "sslmode = \"verify-full\"\ntls_ca_file = \"{}\"\ntls_server_name = \"db.regionprobe.test\"",
            ca.display()
        ),
    ) + &target("web-roots", "sslmode = \"verify-full\"")
        + &target("require", "sslmode = \"require\"");
    let exporter = Exporter::start(&config);
    check_failures(&exporter, &[("web-roots", "tls")]);
    let scrape = wait_for(Duration::from_secs(20), "the TLS targets up", || {
        let scrape = exporter.metrics();
        ["verified", "require"]
            .iter()
            .all(|t| scrape.value("regionprobe_target_up", &[("target", t)]) == Some(1.0))
            .then_some(scrape)
    });
    let tls_phase = scrape
        .value(
            "regionprobe_db_phase_duration_seconds_sum",
            &[("target", "verified"), ("phase", "tls")],
        )
        .unwrap();
    assert!(tls_phase > 0.0, "the handshake is timed");
    assert!(
        scrape
            .value(
                "regionprobe_tls_cert_expiry_timestamp_seconds",
                &[("target", "verified")]
            )
            .is_some()
    );
}

/// TLS to PostgreSQL and MariaDB with rustls: `require` and `verify-full` (with the server's
/// CA and name) succeed with the handshake timed as a phase of its own; `verify-full` against
/// another CA fails as `tls`, with no latency sample.
#[test]
fn postgres_and_mariadb_over_tls_verify_or_fail_as_tls() {
    if skip() {
        return;
    }
    const NAME: &str = "db.regionprobe.test";
    let pki = regionprobe_testkit::peers::Pki::new();
    let other = regionprobe_testkit::peers::Pki::new();
    let pg = Postgres::tls(&pki, &[NAME]);
    let my = Mariadb::tls(&pki, &[NAME]);
    let dir = TempDir::new("db-tls-sql");
    let password = dir.write("password", PASSWORD);
    let ca = dir.write("ca.pem", &pki.ca_pem);
    let wrong_ca = dir.write("other-ca.pem", &other.ca_pem);
    let mut config = String::from(
        "[exporter]\nregion = \"a\"\nlisten = \"127.0.0.1:0\"\n[defaults]\ninterval = \"400ms\"\n",
    );
    let verify = |ca: &std::path::Path| {
        format!(
            "sslmode = \"verify-full\"\ntls_ca_file = \"{}\"\ntls_server_name = \"{NAME}\"",
            ca.display()
        )
    };
    for (kind, probe, addr, user, database) in [
        ("pg", "postgres", pg.addr(), "postgres", "postgres"),
        ("my", "mysql", my.addr(), "probe", "probe"),
    ] {
        for (suffix, keys) in [
            ("require", "sslmode = \"require\"".to_owned()),
            ("verified", verify(&ca)),
            ("wrong-ca", verify(&wrong_ca)),
        ] {
            config += &format!(
                "[[target]]\nname = \"{kind}-{suffix}\"\nregion = \"b\"\nprobe = \"{probe}\"\n\
                 address = \"{addr}\"\nuser = \"{user}\"\npassword_file = \"{}\"\n\
                 database = \"{database}\"\n{keys}\n",
                password.display()
            );
        }
    }
    let exporter = Exporter::start(&config);
    check_failures(&exporter, &[("pg-wrong-ca", "tls"), ("my-wrong-ca", "tls")]);
    let up = ["pg-require", "pg-verified", "my-require", "my-verified"];
    let scrape = wait_for(Duration::from_secs(20), "the TLS targets up", || {
        let scrape = exporter.metrics();
        up.iter()
            .all(|t| scrape.value("regionprobe_target_up", &[("target", t)]) == Some(1.0))
            .then_some(scrape)
    });
    for target in up {
        let tls_phase = scrape.value(
            "regionprobe_db_phase_duration_seconds_sum",
            &[("target", target), ("phase", "tls")],
        );
        assert!(
            tls_phase.is_some_and(|s| s > 0.0),
            "{target}: the handshake is not timed:\n{}",
            scrape_lines(&scrape, target)
        );
    }
    // Encrypted for real, seen from the server (PostgreSQL's pg_stat_ssl lists live sessions
    // only, and each probe closes its connection; there `verify-full` succeeding against the
    // test CA and name is the proof).
    let accepts = my.sql("SHOW GLOBAL STATUS LIKE 'Ssl_accepts'");
    assert!(
        accepts
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| n > 0),
        "no TLS handshake on the MariaDB server: {accepts}"
    );
}

/// `keepalive = true` keeps one connection per target across probes (the same server-side
/// session every time); without it each probe connects anew, and MySQL's is closed with
/// `COM_QUIT`, so the server counts no aborted client.
#[test]
fn keepalive_reuses_one_session_and_fresh_connections_close_cleanly() {
    if skip() {
        return;
    }
    let dir = TempDir::new("db-keepalive");
    let password = dir.write("password", PASSWORD);
    let postgres = Postgres::primary();
    let redis = Redis::primary();
    let mariadb = Mariadb::primary();
    // The kept MySQL target logs in as a user of its own, to find its session.
    mariadb.sql(&format!(
        "CREATE USER 'kept'@'%' IDENTIFIED BY '{PASSWORD}'; GRANT SELECT ON *.* TO 'kept'@'%';"
    ));
    let target = |name: &str, probe: &str, addr: SocketAddr, extra: &str| {
        format!(
            "[[target]]\nname = \"{name}\"\nregion = \"a\"\nprobe = \"{probe}\"\naddress = \"{addr}\"\n\
             password_file = \"{}\"\n{extra}\n",
            password.display()
        )
    };
    let mut config = String::from(
        "[exporter]\nregion = \"a\"\nlisten = \"127.0.0.1:0\"\n[defaults]\ninterval = \"500ms\"\n",
    );
    config += &target(
        "pg-kept",
        "postgres",
        postgres.addr(),
        "user = \"postgres\"\ndatabase = \"postgres\"\nkeepalive = true",
    );
    config += &target("redis-kept", "redis", redis.addr(), "keepalive = true");
    config += &target(
        "my-kept",
        "mysql",
        mariadb.addr(),
        "user = \"kept\"\nkeepalive = true",
    );
    config += &target(
        "my-fresh",
        "mysql",
        mariadb.addr(),
        "user = \"probe\"\ndatabase = \"probe\"",
    );
    let exporter = Exporter::start(&config);
    let targets = ["pg-kept", "redis-kept", "my-kept", "my-fresh"];
    let probed = |at_least: f64| {
        let scrape = exporter.metrics();
        targets.iter().all(|t| {
            count(&scrape, "regionprobe_probes_total", &[("target", t)]) >= at_least
                && scrape.value("regionprobe_target_up", &[("target", t)]) == Some(1.0)
        })
    };
    wait_for(Duration::from_secs(20), "every target probed twice", || {
        probed(2.0).then_some(())
    });
    let pg_session =
        || postgres.sql("SELECT pid FROM pg_stat_activity WHERE application_name = 'regionprobe'");
    let my_session =
        || mariadb.sql("SELECT ID FROM information_schema.PROCESSLIST WHERE USER = 'kept'");
    let redis_connections = || {
        let info = redis.command(&["INFO", "stats"]);
        info.lines()
            .find_map(|line| line.strip_prefix("total_connections_received:"))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .expect("total_connections_received in INFO stats")
    };
    let (pg_before, my_before, redis_before) = (pg_session(), my_session(), redis_connections());
    assert!(
        !pg_before.is_empty() && !pg_before.contains('\n'),
        "one kept PostgreSQL session: {pg_before:?}"
    );
    assert!(
        !my_before.is_empty() && !my_before.contains('\n'),
        "one kept MySQL session: {my_before:?}"
    );
    let before = exporter.metrics();
    let probes =
        |scrape: &Scrape, t: &str| count(scrape, "regionprobe_probes_total", &[("target", t)]);
    wait_for(Duration::from_secs(20), "five more probes each", || {
        let scrape = exporter.metrics();
        targets
            .iter()
            .all(|t| probes(&scrape, t) >= probes(&before, t) + 5.0)
            .then_some(())
    });
    assert_eq!(
        pg_session(),
        pg_before,
        "PostgreSQL: the same session across probes"
    );
    assert_eq!(
        my_session(),
        my_before,
        "MySQL: the same session across probes"
    );
    // The only new connection is the one that asks.
    assert_eq!(
        redis_connections(),
        redis_before + 1,
        "Redis: one connection across probes"
    );
    let scrape = exporter.metrics();
    for t in targets {
        let failures: f64 = scrape
            .find("regionprobe_probe_failures_total", &[("target", t)])
            .iter()
            .map(|s| s.value)
            .sum();
        assert_eq!(failures, 0.0, "{t}: {}", scrape_lines(&scrape, t));
    }
    assert_eq!(
        mariadb.sql("SHOW GLOBAL STATUS LIKE 'Aborted_clients'"),
        "Aborted_clients\t0",
        "my-fresh's connections end with COM_QUIT"
    );
}
