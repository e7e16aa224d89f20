//! Build metadata for `regionprobe_build_info`: the git revision and branch (from `git`, when
//! the sources are a checkout; "unknown" otherwise, as in the Docker build, which copies no
//! .git) and the compiler's version. No network.

use std::process::Command;

fn main() {
    let git = |args: &[&str]| -> Option<String> {
        let output = Command::new("git").args(args).output().ok()?;
        if !output.status.success() {
            return None;
        }
        let text = String::from_utf8(output.stdout).ok()?.trim().to_owned();
        (!text.is_empty()).then_some(text)
    };
    let revision = git(&["rev-parse", "HEAD"]);
    let branch = git(&["rev-parse", "--abbrev-ref", "HEAD"]);
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let rustversion = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .and_then(|text| text.split_whitespace().nth(1).map(str::to_owned));
    let or_unknown = |value: Option<String>| value.unwrap_or_else(|| "unknown".to_owned());
    println!(
        "cargo:rustc-env=REGIONPROBE_REVISION={}",
        or_unknown(revision)
    );
    println!("cargo:rustc-env=REGIONPROBE_BRANCH={}", or_unknown(branch));
    println!(
        "cargo:rustc-env=REGIONPROBE_RUSTVERSION={}",
        or_unknown(rustversion)
    );
    // Rebuild when HEAD moves (a commit, a checkout); only paths that exist, since a missing
    // one would rerun this script on every build.
    for path in [
        git(&["rev-parse", "--git-path", "HEAD"]),
        git(&["rev-parse", "--symbolic-full-name", "HEAD"])
            .and_then(|name| git(&["rev-parse", "--git-path", &name])),
    ]
    .into_iter()
    .flatten()
    {
        if std::path::Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
