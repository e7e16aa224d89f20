//! `[[target_file]]` at run time: each file is polled once a second (modification time and
//! size, then a hash of the contents), and its targets re-read when it changed. A file that
//! cannot be read or is not valid keeps its last good targets; the log says why and
//! `regionprobe_target_file_valid{path}` is 0 until it is fixed.
//!
//! Polling rather than inotify (the `notify` crate): an editor's save, `mv` of a new version
//! over the file (an atomic replace) and a Kubernetes ConfigMap update (a symlink swap of the
//! directory) each replace the inode, so a watch on the file goes deaf and a watch on the
//! directory must re-resolve paths and symlinks; inotify also does not see changes on NFS.
//! Prometheus' own file_sd uses fsnotify *and* a periodic re-read for these reasons. A stat
//! per file per second costs nothing measurable and catches every case the same way, at a
//! delay of at most a second.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::config::{Config, Target, TargetFile, read_target_file};
use crate::metrics::Registry;

/// The watched files and their last good targets.
#[derive(Debug)]
pub struct TargetFiles {
    files: Vec<Watched>,
    /// What the collector shows: (path, valid, targets).
    shown: Arc<Mutex<Vec<(String, bool, usize)>>>,
}

#[derive(Debug)]
struct Watched {
    file: TargetFile,
    /// Modification time and size when last read.
    stamp: Option<(SystemTime, u64)>,
    /// Hash of the contents last read.
    hash: Option<u64>,
    good: Vec<Arc<Target>>,
    valid: bool,
    /// The problem last logged, so a file that stays bad is logged once.
    problem: Option<String>,
}

impl TargetFiles {
    pub fn register(registry: &mut Registry) -> Self {
        let shown = Arc::new(Mutex::new(Vec::new()));
        registry.register_collector(FilesCollector {
            shown: shown.clone(),
        });
        TargetFiles {
            files: Vec::new(),
            shown,
        }
    }

    /// Takes the files of a newly (re)loaded configuration: every file is read again (its
    /// defaults may have changed); a file that stays keeps its last good targets meanwhile.
    pub fn configure(&mut self, files: &[TargetFile]) {
        let mut old = std::mem::take(&mut self.files);
        self.files = files
            .iter()
            .map(|file| {
                let good = old
                    .iter_mut()
                    .find(|w| w.file.path == file.path)
                    .map(|w| std::mem::take(&mut w.good))
                    .unwrap_or_default();
                Watched {
                    file: file.clone(),
                    stamp: None,
                    hash: None,
                    good,
                    valid: false,
                    problem: None,
                }
            })
            .collect();
    }

    /// Reads the files that changed; true when the targets of one of them did. `base` is
    /// the configuration the files' targets join (their names must not collide with its).
    ///
    /// Called every second: while no file changed on disk it only reads their metadata (the
    /// names of every target, which a changed file's must not collide with, are gathered only
    /// when one did).
    pub fn poll(&mut self, base: &Config) -> bool {
        let touched: Vec<bool> = self.files.iter_mut().map(Watched::touched).collect();
        if !touched.contains(&true) {
            return false;
        }
        let mut changed = false;
        let mut names: HashSet<String> = base.targets.iter().map(|t| t.name.clone()).collect();
        for (watched, touched) in self.files.iter_mut().zip(touched) {
            if touched {
                changed |= watched.reread(&names);
            }
            names.extend(watched.good.iter().map(|t| t.name.clone()));
        }
        *self.shown.lock().expect("files lock") = self
            .files
            .iter()
            .map(|w| (w.file.path.display().to_string(), w.valid, w.good.len()))
            .collect();
        changed
    }

    /// The names of every file's last good targets.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.files
            .iter()
            .flat_map(|w| w.good.iter().map(|t| t.name.as_str()))
    }

    /// `base` with every file's last good targets added.
    pub fn merged(&self, base: &Config) -> Config {
        let mut config = base.clone();
        config
            .targets
            .extend(self.files.iter().flat_map(|w| w.good.iter().cloned()));
        config
    }
}

impl Watched {
    /// Whether the file may have changed since it was last read (its modification time or
    /// size differ, or it cannot be read at all): then [`Watched::reread`] reads it.
    fn touched(&mut self) -> bool {
        let stamp = std::fs::metadata(&self.file.path)
            .ok()
            .and_then(|meta| Some((meta.modified().ok()?, meta.len())));
        if stamp.is_some() && stamp == self.stamp {
            return false;
        }
        self.stamp = stamp;
        true
    }

    fn reread(&mut self, taken: &HashSet<String>) -> bool {
        let path = &self.file.path;
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) => {
                let problem = format!("cannot read it: {err}");
                self.refuse(&problem);
                return false;
            }
        };
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        text.hash(&mut hasher);
        let hash = hasher.finish();
        if Some(hash) == self.hash && self.valid {
            return false;
        }
        self.hash = Some(hash);
        let targets = read_target_file(&self.file, &text).and_then(|targets| {
            match targets.iter().find(|t| taken.contains(&t.name)) {
                Some(t) => Err(format!(
                    "target \"{}\" is already defined inline or by another target file",
                    t.name
                )),
                None => Ok(targets),
            }
        });
        match targets {
            Ok(targets) => {
                let changed = targets != self.good;
                if changed || !self.valid {
                    tracing::info!(file = %path.display(), targets = targets.len(), "target file read");
                }
                if changed {
                    // Unchanged: the running targets keep sharing the same copies.
                    self.good = targets;
                }
                self.valid = true;
                self.problem = None;
                changed
            }
            Err(problem) => {
                self.refuse(&problem);
                false
            }
        }
    }

    fn refuse(&mut self, problem: &str) {
        if self.problem.as_deref() != Some(problem) {
            tracing::error!(file = %self.file.path.display(), %problem, kept = self.good.len(), "target file not applied; keeping its last good targets");
            self.problem = Some(problem.to_owned());
        }
        self.valid = false;
    }
}

/// `regionprobe_target_file_valid` and `regionprobe_target_file_targets`.
#[derive(Debug)]
struct FilesCollector {
    shown: Arc<Mutex<Vec<(String, bool, usize)>>>,
}

impl Collector for FilesCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let shown = self.shown.lock().expect("files lock").clone();
        let mut family = encoder.encode_descriptor(
            "regionprobe_target_file_valid",
            "1 if the target file's last read succeeded, 0 if it could not be read or is not valid (its last good targets keep running).",
            None,
            MetricType::Gauge,
        )?;
        for (path, valid, _) in &shown {
            let labels = [("path", path.as_str())];
            ConstGauge::new(i64::from(*valid)).encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "regionprobe_target_file_targets",
            "Targets of the target file's last good version.",
            None,
            MetricType::Gauge,
        )?;
        for (path, _, targets) in &shown {
            let labels = [("path", path.as_str())];
            ConstGauge::new(*targets as i64).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
