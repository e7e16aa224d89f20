//! The ranking end to end through the real binary: regions with different latency and loss
//! are ranked in the right order on /metrics, in /api/v1/ranking and on the status page; the
//! failover candidate is the best other region; reloads keep it.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use common::{Exporter, wait_for};
use regionprobe_testkit::scrape::{order, ranking};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

fn http_target(name: &str, region: &str, addr: SocketAddr) -> String {
    format!(
        "[[target]]\nname = \"{name}\"\nregion = \"{region}\"\nprobe = \"http\"\nurl = \"http://{addr}/\"\n"
    )
}

/// Regions: `near` answers at once, `far` after 60 ms, `down` refuses; the sidecar is in `home`.
fn three_regions(closed: u16) -> String {
    let near = common::http_server(Duration::ZERO);
    let far = common::http_server(Duration::from_millis(60));
    format!(
        "[exporter]\nregion = \"home\"\nlisten = \"127.0.0.1:0\"\n[defaults]\ninterval = \"100ms\"\ntimeout = \"100ms\"\n\
         [ranking]\nwindow = \"30s\"\nhold = \"1s\"\n{}{}{}{}",
        http_target("near-1", "near", near),
        http_target("home-1", "home", near),
        http_target("far-1", "far", far),
        format_args!(
            "[[target]]\nname = \"down-1\"\nregion = \"down\"\nprobe = \"tcp\"\naddress = \"127.0.0.1:{closed}\"\n"
        ),
    )
}

#[test]
fn regions_rank_by_latency_and_loss_and_the_best_other_region_is_the_candidate() {
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let exporter = Exporter::start(&three_regions(closed));
    let ranked = wait_for(WAIT, "far to have samples and a ranking", || {
        let ranked = ranking(&exporter);
        let far = ranked["regions"]
            .as_array()?
            .iter()
            .find(|r| r["region"] == "far")?;
        (far["successes"].as_u64()? >= 5).then_some(ranked)
    });

    // home is ranked (as fast as near) but never the candidate; down is last, unreachable.
    let names = order(&ranked);
    assert_eq!(names.last().map(String::as_str), Some("down"), "{ranked:#}");
    assert!(
        names.iter().position(|r| r == "near") < names.iter().position(|r| r == "far"),
        "{ranked:#}"
    );
    assert_eq!(ranked["best"]["region"], "near", "{ranked:#}");
    assert!(ranked["best"]["since"].is_string());
    let down = &ranked["regions"].as_array().unwrap()[3];
    assert!(
        down["score_seconds"].is_null(),
        "+Inf is null in JSON: {down}"
    );
    assert_eq!(down["loss_ratio"], 1.0);
    assert_eq!(down["targets"], serde_json::json!(["down-1"]));
    let far = ranked["regions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["region"] == "far")
        .unwrap();
    assert!(far["p50_seconds"].as_f64().unwrap() >= 0.06, "{far}");

    let scrape = exporter.metrics();
    assert_eq!(
        scrape.value(
            "regionprobe_region_score_seconds",
            &[("target_region", "down")]
        ),
        Some(f64::INFINITY)
    );
    let rank = |region| {
        scrape
            .value("regionprobe_region_rank", &[("target_region", region)])
            .unwrap()
    };
    assert!(rank("near") < rank("far") && rank("far") < rank("down"));
    assert_eq!(
        scrape.value("regionprobe_failover_best", &[("target_region", "near")]),
        Some(1.0)
    );
    assert_eq!(
        scrape.value("regionprobe_failover_best", &[("target_region", "far")]),
        Some(0.0)
    );
    assert!(
        scrape
            .find("regionprobe_failover_best", &[("target_region", "home")])
            .is_empty(),
        "the sidecar's own region is never a candidate"
    );
    assert!(
        scrape
            .value(
                "regionprobe_failover_last_change_timestamp_seconds",
                &[("source_region", "home")]
            )
            .unwrap()
            > 1.7e9
    );

    let (status, targets) = exporter.get("/api/v1/targets");
    assert_eq!(status, 200);
    let targets: Value = serde_json::from_str(&targets).unwrap();
    let down = targets["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "down-1")
        .unwrap();
    assert_eq!(down["up"], false);
    assert_eq!(down["last_error"]["reason"], "refused");
    assert!(
        down["last_error"]["error"]
            .as_str()
            .unwrap()
            .contains("Connection refused"),
        "{down}"
    );
    assert!(down["last_success"].is_null());
    let near = targets["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "near-1")
        .unwrap();
    assert_eq!(near["up"], true);
    assert!(near["last_success"].is_string());
}

#[test]
fn the_status_page_shows_the_ranking_in_order_with_charts() {
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let exporter = Exporter::start(&three_regions(closed));
    wait_for(WAIT, "a candidate and down-1's first failure", || {
        let (_, targets) = exporter.get("/api/v1/targets");
        let targets: Value = serde_json::from_str(&targets).ok()?;
        let down_failed = targets["targets"]
            .as_array()?
            .iter()
            .any(|t| t["name"] == "down-1" && t["last_error"].is_object());
        (down_failed && ranking(&exporter)["best"]["region"].is_string()).then_some(())
    });
    let (status, page) = exporter.get("/");
    assert_eq!(status, 200);
    let rows: Vec<&str> = page
        .split("<tr")
        .filter_map(|row| row.split("data-region=\"").nth(1))
        .map(|rest| rest.split('"').next().unwrap())
        .collect();
    assert_eq!(rows, order(&ranking(&exporter)), "table in rank order");
    assert_eq!(
        page.matches("<svg class=\"chart\"").count(),
        4,
        "a chart per region"
    );
    assert!(
        page.contains("<polyline class=\"latency\""),
        "latency is drawn"
    );
    assert!(page.contains("Failover candidate: <b>near</b>"));
    assert!(
        page.contains("refused: connect 127.0.0.1:"),
        "last errors in words"
    );
    assert!(
        !page.contains("src=") && !page.contains("<link") && !page.contains("<script"),
        "the page loads nothing"
    );
}
