//! regionprobe's test kit, shared by the unit tests in `src/` and the black-box tests in
//! `tests/` (a dev-dependency; it does not depend on regionprobe):
//!
//! - [`peers`]: an HTTP(S) test server with scripted routes and a throwaway PKI;
//! - [`dns`]: an authoritative test DNS server over UDP and TCP;
//! - [`corpus`]: the fuzz corpus of `tests/fixtures/fuzz/` and the property tests' case count;
//! - [`databases`]: real PostgreSQL and Redis servers, primaries and replicas;
//! - [`services`]: the real Prometheus and Alertmanager, a webhook receiver, an HTTPS app;
//! - [`dashboards`]: the Grafana dashboards' queries as Grafana sends them, run on Prometheus;
//! - [`black_box`]: run the exporter binary, HTTP to it, parse `/metrics`, wait, skip, `ip`.
//! - [`scrape`]: `/metrics` linted by promtool, values that must be there, the ranking API.
//! - [`netns`]: network namespaces, veth pairs and uplinks for tests that need a network.
//! - [`wan`]: a WAN emulator (delay, jitter, loss per direction, a path per address) over TUN devices.

// Blocking helpers on real time: there is no tokio clock to pause here (clippy.toml bans
// std's Instant for the code under test, whose tests pause time).
#![allow(clippy::disallowed_types)]

pub mod black_box;
pub mod corpus;
pub mod dashboards;
pub mod databases;
pub mod dns;
pub mod netns;
pub mod peers;
pub mod scrape;
pub mod services;
pub mod wan;
