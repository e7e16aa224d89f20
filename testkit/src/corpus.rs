//! The fuzz corpus and the property tests' case count: [`corpus`] lists the `*.hex` inputs of
//! `tests/fixtures/fuzz/<kind>/`, [`from_hex`] reads one, [`proptest_cases`] configures a
//! property for a quick `cargo test` or CI's longer run.

use std::path::{Path, PathBuf};

/// The repository's root: the parent of this crate's directory (`<repo>/testkit`).
fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit/ sits in the repository")
}

/// The `*.hex` files of the fuzz corpus `<repo>/tests/fixtures/fuzz/<kind>/`, sorted; at least
/// four, so that a corpus that went missing fails instead of replaying nothing.
pub fn corpus(kind: &str) -> Vec<PathBuf> {
    let dir = repo().join("tests/fixtures/fuzz").join(kind);
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("{}: {err}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "hex"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 4, "the corpus is missing: {paths:?}");
    paths
}

/// The bytes of a corpus file in hex: `#` lines are comments, whitespace is ignored.
pub fn from_hex(text: &str) -> Vec<u8> {
    let digits: String = text
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .flat_map(|line| line.chars().filter(|c| !c.is_whitespace()))
        .collect();
    assert!(digits.len().is_multiple_of(2), "odd number of hex digits");
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).expect("hex digits"))
        .collect()
}

/// The proptest configuration of a property test: `PROPTEST_CASES` when set (CI's longer
/// bounded run), else `default`, chosen so that a plain `cargo test` stays quick.
pub fn proptest_cases(default: u32) -> proptest::test_runner::Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default);
    proptest::test_runner::Config {
        cases,
        ..proptest::test_runner::Config::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_skips_comments_and_whitespace() {
        assert_eq!(
            from_hex("# a comment\n0a ff\n  10\n"),
            vec![0x0a, 0xff, 0x10]
        );
    }

    #[test]
    fn the_repository_corpora_are_found() {
        for kind in ["dns", "icmp"] {
            assert!(corpus(kind).iter().all(|path| path.starts_with(repo())));
        }
    }
}
