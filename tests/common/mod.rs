//! What needs this package's binary: [`BIN`] and [`Exporter`] (the kit's exporter runner on
//! regionprobe). Everything else comes from the test kit (`testkit/`), re-exported here so
//! that the tests write `common::...`.
// Each test binary uses a different subset of these helpers and re-exports.
#![allow(dead_code, unused_imports)]

use std::ops::{Deref, DerefMut};
use std::path::Path;

pub use regionprobe_testkit::black_box::{
    Sample, Scrape, TempDir, http, http_full, http_server, http_with_headers, ip, is_root, panels,
    run, run_quietly, skip_unless, wait_for,
};

/// Path of the binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_regionprobe");

/// The real binary, running, with its stderr collected: the kit's
/// [`regionprobe_testkit::black_box::Exporter`] on [`BIN`] (fields and methods through
/// `Deref`).
#[derive(Debug)]
pub struct Exporter(regionprobe_testkit::black_box::Exporter);

impl Exporter {
    /// Starts the binary on `config` (written to a temp file); its listen address should use
    /// port 0. Waits until it logs the bound address.
    pub fn start(config: &str) -> Self {
        Exporter(regionprobe_testkit::black_box::Exporter::start(BIN, config))
    }

    /// Starts `prefix... regionprobe --config path` (e.g. prefix `ip netns exec ns`).
    pub fn start_with(prefix: &[&str], config_path: &Path) -> Self {
        Exporter(regionprobe_testkit::black_box::Exporter::start_with(
            BIN,
            prefix,
            config_path,
        ))
    }

    /// Sends SIGTERM and returns the exit status.
    pub fn stop(self) -> std::process::ExitStatus {
        self.0.stop()
    }
}

impl Deref for Exporter {
    type Target = regionprobe_testkit::black_box::Exporter;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for Exporter {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}
