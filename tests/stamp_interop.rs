//! Interoperability with an independent STAMP implementation, stamp-suite (crates.io,
//! `cargo install stamp-suite --version 1.0.0`): its sender against our reflector and our
//! sender against its reflector, unauthenticated and authenticated. `#[ignore]`d: .ci/run
//! installs stamp-suite and runs them (`cargo test --test stamp_interop -- --ignored`); the
//! binary is `$STAMP_SUITE`, else `stamp-suite` on the PATH.

// Blocking, real-time helpers: std's clock.
#![allow(clippy::disallowed_types)]

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Exporter, Scrape, TempDir, skip_unless, wait_for};

const KEY_HEX: &str = "8899aabbccddeeff00112233445566778899aabbccddeeff0011223344556677";

fn stamp_suite() -> Option<String> {
    let binary = std::env::var("STAMP_SUITE").unwrap_or_else(|_| "stamp-suite".into());
    Command::new(&binary)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
        .then_some(binary)
}

/// A child process killed when dropped (also on panic).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A key file as stamp-suite wants it: hex, readable by its owner only.
fn key_file(dir: &TempDir) -> String {
    let path = dir.write("stamp.key", KEY_HEX);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
    path.display().to_string()
}

fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape.value(name, labels).unwrap_or(0.0)
}

fn their_sender_against_our_reflector(authenticated: bool) {
    let Some(binary) = stamp_suite() else {
        skip_unless(
            false,
            "stamp-suite not installed (cargo install stamp-suite)",
        );
        return;
    };
    let dir = TempDir::new("stamp-interop");
    let key = key_file(&dir);
    let key_line = if authenticated {
        format!("key_file = \"{key}\"\n")
    } else {
        String::new()
    };
    let reflector = Exporter::start(&format!(
        "[exporter]\nregion = \"r\"\nlisten = \"127.0.0.1:0\"\nallow_empty = true\n\
         [reflector]\nlisten = \"127.0.0.1:0\"\n{key_line}\
         [[reflector.allow]]\nnetwork = \"127.0.0.1/32\"\nregion = \"s\"\n"
    ));
    let at = wait_for(Duration::from_secs(10), "the reflector", || {
        reflector
            .metrics()
            .find("regionprobe_reflector_up", &[])
            .first()
            .map(|s| s.labels["listen"].parse::<SocketAddr>().unwrap())
    });
    let mut args = vec![
        "-r".to_owned(),
        "127.0.0.1".into(),
        "-p".into(),
        at.port().to_string(),
        "-S".into(),
        "127.0.0.1".into(),
        "-c".into(),
        "50".into(),
        "-d".into(),
        "10".into(),
        "--output-format".into(),
        "json".into(),
    ];
    if authenticated {
        args.extend(["-A".into(), "A".into(), "--hmac-key-file".into(), key]);
    }
    let output = Command::new(&binary)
        .args(&args)
        .stderr(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary: serde_json::Value = stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|v| v["type"] == "summary")
        .unwrap_or_else(|| panic!("no summary from stamp-suite: {stdout}"));
    assert_eq!(summary["packets_received"], 50, "{summary}");
    // Our reflector is stateful: its own sequence counted 0 to 49.
    assert_eq!(
        summary["measurements"]["last_reflector_sequence"], 49,
        "{summary}"
    );
    let reflected = value(
        &reflector.metrics(),
        "regionprobe_reflector_reflected_packets_total",
        &[("sender_region", "s")],
    );
    assert_eq!(reflected, 50.0);
}

fn our_sender_against_their_reflector(authenticated: bool) {
    let Some(binary) = stamp_suite() else {
        skip_unless(
            false,
            "stamp-suite not installed (cargo install stamp-suite)",
        );
        return;
    };
    let dir = TempDir::new("stamp-interop");
    let key = key_file(&dir);
    // A free port for it (stamp-suite binds what it is told).
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut args = vec![
        "-i".to_owned(),
        "-S".into(),
        "127.0.0.1".into(),
        "-o".into(),
        port.to_string(),
        "--stateful-reflector".into(),
    ];
    if authenticated {
        args.extend([
            "-A".into(),
            "A".into(),
            "--hmac-key-file".into(),
            key.clone(),
        ]);
    }
    let _reflector = Killed(
        Command::new(&binary)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let key_line = if authenticated {
        format!("key_file = \"{key}\"\n")
    } else {
        String::new()
    };
    let sender = Exporter::start(&format!(
        "[exporter]\nregion = \"s\"\nlisten = \"127.0.0.1:0\"\n\
         [[target]]\nname = \"t\"\nregion = \"r\"\nprobe = \"stamp\"\naddress = \"127.0.0.1:{port}\"\n\
         interval = \"100ms\"\ntimeout = \"100ms\"\ntrain = 5\n{key_line}"
    ));
    let t = [("target", "t")];
    let scrape = wait_for(Duration::from_secs(20), "100 settled packets", || {
        let scrape = sender.metrics();
        (value(&scrape, "regionprobe_stamp_packets_total", &t) >= 100.0).then_some(scrape)
    });
    for d in ["forward", "backward"] {
        let labels = [("target", "t"), ("direction", d)];
        // The first packets may go out before stamp-suite listens.
        let lost = value(&scrape, "regionprobe_stamp_lost_packets_total", &labels);
        assert!(lost <= 5.0, "{d}: {lost}");
        assert!(value(&scrape, "regionprobe_stamp_ipdv_seconds_count", &labels) >= 50.0);
    }
    assert_eq!(
        value(&scrape, "regionprobe_stamp_invalid_replies_total", &t),
        0.0
    );
    assert!(value(&scrape, "regionprobe_probe_duration_seconds_count", &t) >= 15.0);
}

#[test]
#[ignore = "needs stamp-suite: run by .ci/run"]
fn stamp_suite_sender_against_our_reflector() {
    their_sender_against_our_reflector(false);
}

#[test]
#[ignore = "needs stamp-suite: run by .ci/run"]
fn stamp_suite_sender_against_our_reflector_authenticated() {
    their_sender_against_our_reflector(true);
}

#[test]
#[ignore = "needs stamp-suite: run by .ci/run"]
fn our_sender_against_stamp_suites_reflector() {
    our_sender_against_their_reflector(false);
}

#[test]
#[ignore = "needs stamp-suite: run by .ci/run"]
fn our_sender_against_stamp_suites_reflector_authenticated() {
    our_sender_against_their_reflector(true);
}
