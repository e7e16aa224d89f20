//! The status page in a real browser: headless Chromium loads `/` from the running binary.
//! From the DOM the browser built (`--dump-dom`) the test checks the ranking table's order
//! against /api/v1/ranking, the unreachable region last and marked, the failover candidate,
//! and a chart per region with a latency line for the reachable ones. From a screenshot
//! (`--screenshot`, saved to `tests/artifacts/status_page.png`) it checks that the charts are
//! really drawn: one chart box per region, top to bottom in rank order, with pixels of the
//! latency stroke in each reachable region's box and failure marks in the unreachable one's.
//!
//! Skips without a `chromium` (or `chromium-browser`) on PATH, unless CI demands it
//! (`REGIONPROBE_REQUIRE_PRIVILEGED_TESTS=1`; Debian: `apt-get install chromium`).

// Blocking helpers on real time: there is no tokio clock to pause here.
#![allow(clippy::disallowed_types)]

mod common;

use std::io::Read;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Exporter, TempDir, skip_unless, wait_for};
use regionprobe_testkit::scrape::{order, ranking};

const WAIT: Duration = Duration::from_secs(30);
/// A browser run that takes longer than this is killed and fails the test.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(60);
const WINDOW: (u32, u32) = (1280, 1000);

/// The chart's colours and size, as src/status_page.rs draws them.
const LATENCY_STROKE: [u8; 3] = [0x25, 0x63, 0xeb];
const FAILURE_FILL: [u8; 3] = [0xdc, 0x26, 0x26];
const CHART_BACKGROUND: [u8; 3] = [0xf7, 0xf7, 0xf7];
const CHART_HEIGHT: usize = 60;

/// The sidecar in `home` probes `near` (at once), `mid` (80 ms), `far` (200 ms) and `down`
/// (a closed port): far enough apart that a loaded machine does not reorder them. A 10 s
/// window, so a few seconds of samples draw a visible line.
fn four_regions() -> String {
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let http = |name: &str, region: &str, delay: u64| {
        let addr = common::http_server(Duration::from_millis(delay));
        format!(
            "[[target]]\nname = \"{name}\"\nregion = \"{region}\"\nprobe = \"http\"\nurl = \"http://{addr}/\"\n"
        )
    };
    format!(
        "[exporter]\nregion = \"home\"\nlisten = \"127.0.0.1:0\"\n\
         [defaults]\ninterval = \"400ms\"\ntimeout = \"400ms\"\n\
         [ranking]\nwindow = \"10s\"\nhold = \"1s\"\n\
         {}{}{}\
         [[target]]\nname = \"down-1\"\nregion = \"down\"\nprobe = \"tcp\"\naddress = \"127.0.0.1:{closed}\"\n",
        http("near-1", "near", 0),
        http("mid-1", "mid", 80),
        http("far-1", "far", 200),
    )
}

/// `chromium` or `chromium-browser` on PATH.
fn find_chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| ["chromium", "chromium-browser"].map(|name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// A headless Chromium run in its own process group with a fresh profile; the whole group is
/// killed on drop, so a hung browser (or its renderers) never outlives the test.
struct BrowserRun {
    child: Child,
}

impl Drop for BrowserRun {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// Runs Chromium headless on `url` with `mode` (`--dump-dom` or `--screenshot=PATH`) and
/// returns its stdout; panics with its stderr if it fails or times out.
fn chromium(browser: &Path, profile: &Path, mode: &str, url: &str) -> String {
    let mut command = Command::new(browser);
    command
        .args([
            "--headless",
            // As root (CI), and in containers, Chromium's sandbox cannot start.
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-extensions",
            "--disable-sync",
            "--mute-audio",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            // The page must load nothing from anywhere: no proxy, and no host but loopback
            // resolves, so a stray external reference fails instead of waiting on a network.
            "--no-proxy-server",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        ])
        .arg(format!("--window-size={},{}", WINDOW.0, WINDOW.1))
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(mode)
        .arg(url)
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut run = BrowserRun {
        child: command.spawn().expect("start chromium"),
    };
    let mut stdout = run.child.stdout.take().unwrap();
    let mut stderr = run.child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + BROWSER_TIMEOUT;
    let status = loop {
        if let Some(status) = run.child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Ends the renderers too, so the pipes close and the readers finish.
    drop(run);
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    match status {
        // A page that did not load still exits 0, with nothing on stdout.
        Some(status) if status.success() && (mode != "--dump-dom" || out.contains("<html")) => out,
        Some(status) if status.success() => {
            panic!("chromium {mode} printed no DOM; stdout:\n{out}\nstderr:\n{err}")
        }
        Some(status) => panic!("chromium {mode} failed ({status}); stderr:\n{err}"),
        None => panic!("chromium {mode} hung for {BROWSER_TIMEOUT:?}; killed; stderr:\n{err}"),
    }
}

// The serialized DOM is read with string cuts, enough for the markup Chromium writes: it
// always quotes attribute values with `"` (escaping `"` inside them as `&quot;`).

/// The value of attribute `name` in the start tag `start_tag` begins with (after the tag name).
fn attribute(start_tag: &str, name: &str) -> Option<String> {
    let tag_end = start_tag.find('>').unwrap_or(start_tag.len());
    let tag = &start_tag[..tag_end];
    let at = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    Some(tag[at..].split('"').next()?.to_owned())
}

/// The text in `html`, tags stripped (entities left alone).
fn text(html: &str) -> String {
    let mut text = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    text
}

/// The part of `html` from the start tag of the `tag` element with `id` to its end tag
/// (`tag` must not nest inside itself, true of `p` and `table` here).
fn element<'a>(html: &'a str, tag: &str, id: &str) -> &'a str {
    // The start tag that holds the id attribute (in whatever place among its attributes).
    let start = html
        .find(&format!(" id=\"{id}\""))
        .and_then(|at| {
            let start = html[..at].rfind('<')?;
            let name = html[start + 1..at].split(' ').next();
            (name == Some(tag)).then_some(start)
        })
        .unwrap_or_else(|| panic!("no <{tag} id={id}> in the DOM:\n{html}"));
    let close = format!("</{tag}>");
    let end = html[start..]
        .find(&close)
        .unwrap_or_else(|| panic!("<{tag} id={id}> is not closed"));
    &html[start..start + end + close.len()]
}

#[derive(Debug)]
struct Row {
    region: String,
    class: String,
    cells: Vec<String>,
    /// The `points` of each `polyline.latency` inside a `svg.chart` in this row.
    lines: Vec<usize>,
    charts: usize,
    failures: usize,
}

/// The `data-region` rows of `#ranking`'s body, in document order.
fn ranking_rows(dom: &str) -> Vec<Row> {
    let table = element(dom, "table", "ranking");
    let body = table
        .split_once("<tbody>")
        .unwrap_or_else(|| panic!("#ranking has no tbody:\n{table}"))
        .1;
    body.split("<tr")
        .skip(1)
        .filter_map(|row| {
            let row = &row[..row.find("</tr>")?];
            let region = attribute(row, "data-region")?;
            let cells = row
                .split("<td")
                .skip(1)
                .map(|cell| text(&cell[cell.find('>').unwrap() + 1..]))
                .collect();
            let charts: Vec<&str> = row.split("<svg").skip(1).collect();
            let charts: Vec<&str> = charts
                .into_iter()
                .filter(|svg| attribute(svg, "class").as_deref() == Some("chart"))
                .map(|svg| &svg[..svg.find("</svg>").unwrap_or(svg.len())])
                .collect();
            let lines = charts
                .iter()
                .flat_map(|svg| svg.split("<polyline").skip(1))
                .filter(|line| attribute(line, "class").as_deref() == Some("latency"))
                .map(|line| {
                    attribute(line, "points")
                        .unwrap_or_default()
                        .split_whitespace()
                        .count()
                })
                .collect();
            let failures = charts
                .iter()
                .flat_map(|svg| svg.split("<rect").skip(1))
                .filter(|rect| attribute(rect, "class").as_deref() == Some("failure"))
                .count();
            Some(Row {
                region,
                class: attribute(row, "class").unwrap_or_default(),
                cells,
                lines,
                charts: charts.len(),
                failures,
            })
        })
        .collect()
}

/// A decoded screenshot, RGB.
struct Image {
    width: usize,
    height: usize,
    rgb: Vec<u8>,
}

impl Image {
    fn decode(png: &[u8]) -> Self {
        let mut decoder = png::Decoder::new(std::io::Cursor::new(png));
        decoder.set_transformations(png::Transformations::normalize_to_color8());
        let mut reader = decoder.read_info().expect("a PNG");
        let mut buf = vec![0; reader.output_buffer_size().expect("PNG size")];
        let info = reader.next_frame(&mut buf).expect("PNG frame");
        let channels = match info.color_type {
            png::ColorType::Rgb => 3,
            png::ColorType::Rgba => 4,
            other => panic!("unexpected screenshot colour type {other:?}"),
        };
        let (width, height) = (info.width as usize, info.height as usize);
        let mut rgb = Vec::with_capacity(width * height * 3);
        for y in 0..height {
            let line = &buf[y * info.line_size..][..width * channels];
            for pixel in line.chunks_exact(channels) {
                rgb.extend_from_slice(&pixel[..3]);
            }
        }
        Image { width, height, rgb }
    }

    fn pixel(&self, x: usize, y: usize) -> [u8; 3] {
        let at = (y * self.width + x) * 3;
        [self.rgb[at], self.rgb[at + 1], self.rgb[at + 2]]
    }
}

/// Within `tolerance` per channel (anti-aliasing, colour management).
fn near(pixel: [u8; 3], colour: [u8; 3], tolerance: u8) -> bool {
    pixel
        .iter()
        .zip(colour)
        .all(|(p, c)| p.abs_diff(c) <= tolerance)
}

/// Whether `pixel` is at least half `colour` over `background`: a line that falls between two
/// pixel rows is drawn anti-aliased across both, at about half its colour each, and no pixel
/// of it is the colour itself. Text (grey) blends no single channel ratio and is not counted.
fn blended(pixel: [u8; 3], colour: [u8; 3], background: [u8; 3]) -> bool {
    let alphas: Vec<f64> = (0..3)
        .filter(|&i| background[i].abs_diff(colour[i]) > 20)
        .map(|i| {
            (f64::from(background[i]) - f64::from(pixel[i]))
                / (f64::from(background[i]) - f64::from(colour[i]))
        })
        .collect();
    let (low, high) = alphas
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), a| (lo.min(*a), hi.max(*a)));
    !alphas.is_empty() && low >= 0.4 && high <= 1.1 && high - low <= 0.1
}

/// A chart as drawn: its box, and how many of its pixels are latency stroke and failure fill.
#[derive(Debug)]
struct DrawnChart {
    top: usize,
    left: usize,
    right: usize,
    stroke: usize,
    failure: usize,
}

/// Finds the chart boxes by their background (only the charts fill large areas with
/// #f7f7f7; anti-aliased text has a few such pixels): runs of at least 40 image rows with 100
/// or more background pixels each (gaps of up to 3 rows bridged), top to bottom; a box spans
/// the columns that are background in at least half of its rows.
fn drawn_charts(image: &Image) -> Vec<DrawnChart> {
    let background = |x: usize, y: usize| image.pixel(x, y) == CHART_BACKGROUND;
    let mut bands: Vec<(usize, usize)> = Vec::new(); // first and last row
    for y in 0..image.height {
        if (0..image.width).filter(|&x| background(x, y)).count() < 100 {
            continue;
        }
        match bands.last_mut() {
            // A flat latency line crosses the whole chart: its few rows have almost no
            // background, and must not split the box in two.
            Some((_, last)) if y - *last <= 4 => *last = y,
            _ => bands.push((y, y)),
        }
    }
    bands
        .into_iter()
        .filter(|(top, last)| last - top + 1 >= 40)
        .map(|(top, last)| {
            let rows = last - top + 1;
            let columns: Vec<usize> = (0..image.width)
                .filter(|&x| (top..=last).filter(|&y| background(x, y)).count() * 2 >= rows)
                .collect();
            let (left, right) = (columns[0], columns[columns.len() - 1]);
            // The whole chart height: failure marks can cover its bottom rows entirely.
            let bottom = (top + CHART_HEIGHT).min(image.height);
            let count = |colour, tolerance| {
                (top..bottom)
                    .flat_map(|y| (left..=right).map(move |x| (x, y)))
                    .filter(|&(x, y)| near(image.pixel(x, y), colour, tolerance))
                    .count()
            };
            DrawnChart {
                top,
                left,
                right,
                stroke: (top..bottom)
                    .flat_map(|y| (left..=right).map(move |x| (x, y)))
                    .filter(|&(x, y)| {
                        let pixel = image.pixel(x, y);
                        near(pixel, LATENCY_STROKE, 24)
                            || blended(pixel, LATENCY_STROKE, CHART_BACKGROUND)
                    })
                    .count(),
                failure: count(FAILURE_FILL, 16),
            }
        })
        .collect()
}

fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_status_page_in_a_browser_shows_the_ranking_in_order_and_draws_the_charts() {
    let browser = find_chromium();
    if skip_unless(
        browser.is_some(),
        "chromium not installed (apt-get install chromium)",
    ) {
        return;
    }
    let browser = browser.unwrap();
    let started = Instant::now();
    for stale in ["status_page.png", "status_page.dom.html"] {
        let _ = std::fs::remove_file(artifacts().join(stale));
    }

    let exporter = Exporter::start(&four_regions());
    let before = wait_for(WAIT, "samples in every region and a candidate", || {
        let ranked = ranking(&exporter);
        let regions = ranked["regions"].as_array()?;
        let enough = regions.len() == 4
            && regions.iter().all(|r| {
                let wanted = if r["region"] == "down" {
                    "samples"
                } else {
                    "successes"
                };
                r[wanted].as_u64().unwrap_or(0) >= 10
            });
        (enough && ranked["best"]["region"].is_string()).then_some(ranked)
    });
    assert_eq!(
        order(&before),
        ["near", "mid", "far", "down"],
        "the ranking itself (before the browser): {before:#}"
    );

    let url = format!("http://{}/", exporter.addr);
    let profile = TempDir::new("chromium");
    let dom = chromium(&browser, &profile.0.join("dom"), "--dump-dom", &url);
    let after = ranking(&exporter);
    std::fs::write(artifacts().join("status_page.dom.html"), &dom).unwrap();

    // The DOM as Chromium built it: rows in rank order, down last and marked.
    let rows = ranking_rows(&dom);
    let regions: Vec<&str> = rows.iter().map(|r| r.region.as_str()).collect();
    // The ranking is recomputed every second: the page shows the one before or after the load.
    assert!(
        regions == order(&before) || regions == order(&after),
        "rows in rank order: {regions:?}, API before {:?}, after {:?}; DOM:\n{dom}",
        order(&before),
        order(&after),
    );
    assert_eq!(regions, ["near", "mid", "far", "down"], "DOM:\n{dom}");
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row.cells[0], (i + 1).to_string(), "rank column: {row:?}");
        assert_eq!(row.cells[1], row.region, "region column: {row:?}");
        assert_eq!(row.charts, 1, "one svg.chart per row: {row:?}");
    }
    let down = rows.last().unwrap();
    assert!(
        down.class.split(' ').any(|c| c == "unreachable"),
        "{down:?}"
    );
    assert_eq!(down.cells[2], "down", "state column: {down:?}");
    assert_eq!(down.cells[3], "unreachable", "score column: {down:?}");
    assert!(down.lines.is_empty(), "nothing answered, no line: {down:?}");
    assert!(down.failures >= 1, "failures are marked: {down:?}");
    for row in &rows[..3] {
        assert!(!row.class.split(' ').any(|c| c == "unreachable"), "{row:?}");
        assert_eq!(row.lines.len(), 1, "one latency line: {row:?}");
        assert!(row.lines[0] >= 2, "the line has at least 2 points: {row:?}");
    }

    // The candidate, named in #best and highlighted in the table.
    let best = before["best"]["region"].as_str().unwrap();
    assert_eq!(best, "near");
    let best_p = element(&dom, "p", "best");
    let named = best_p
        .split_once("<b>")
        .and_then(|(_, rest)| rest.split_once("</b>"))
        .map(|(name, _)| name);
    assert_eq!(named, Some(best), "#best names the candidate: {best_p}");
    assert!(text(best_p).starts_with("Failover candidate:"), "{best_p}");
    let chosen: Vec<&str> = rows
        .iter()
        .filter(|r| r.class.split(' ').any(|c| c == "chosen"))
        .map(|r| r.region.as_str())
        .collect();
    assert_eq!(chosen, [best]);

    // The screenshot: one chart box per region, top to bottom; the latency stroke in each
    // reachable region's chart, failure marks (and no line) in the unreachable one's.
    let shot = profile.0.join("status_page.png");
    chromium(
        &browser,
        &profile.0.join("shot"),
        &format!("--screenshot={}", shot.display()),
        &url,
    );
    let png = std::fs::read(&shot).expect("chromium wrote the screenshot");
    let artifact = artifacts().join("status_page.png");
    std::fs::write(&artifact, &png).unwrap();
    println!("screenshot: {}", artifact.display());
    let image = Image::decode(&png);
    assert_eq!((image.width, image.height), (1280, 1000));
    let charts = drawn_charts(&image);
    println!("charts drawn: {charts:?}");
    assert_eq!(
        charts.len(),
        4,
        "a chart box per region in {}: {charts:?}",
        artifact.display()
    );
    for chart in &charts {
        assert!(
            (280..=320).contains(&(chart.right - chart.left + 1)),
            "a chart is 300 px wide: {chart:?}"
        );
    }
    for chart in &charts[..3] {
        assert!(
            chart.stroke >= 20,
            "the latency line (#2563eb) is drawn in {}: {charts:?}",
            artifact.display()
        );
    }
    assert_eq!(charts[3].stroke, 0, "no line for down: {charts:?}");
    assert!(
        charts[3].failure >= 10,
        "failure marks (#dc2626) for down in {}: {charts:?}",
        artifact.display()
    );
    assert!(charts.windows(2).all(|w| w[0].top < w[1].top), "{charts:?}");
    println!("browser test took {:?}", started.elapsed());
}
