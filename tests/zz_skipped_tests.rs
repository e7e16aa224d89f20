//! The last test binary of `cargo test` (integration tests run in name order; `zz_` sorts
//! last): prints how many tests were skipped in this run and why (issue 12, item 20). libtest
//! reports a skipped test as `ok`; each skip (`skip_unless`) records itself under target/,
//! and this binary, without libtest's harness so that its output is shown, sums them up.

fn main() {
    match regionprobe_testkit::black_box::skip_log() {
        Some((dir, run)) => {
            println!(
                "\n{}\n",
                regionprobe_testkit::black_box::take_skip_summary(&dir, &run)
            );
        }
        None => println!("\nregionprobe: cannot tell which tests were skipped in this run\n"),
    }
}
