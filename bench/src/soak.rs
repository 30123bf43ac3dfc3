//! `ocellus-bench soak`: a whole pipeline under overload for minutes, to show that memory
//! stays flat, that every dropped frame is counted, and what the end-to-end latency is.
//!
//! The pipeline is a configuration file whose sources are test patterns (`configs/soak.toml`:
//! the demo's actors). Its test-pattern sources are paced live at `--fps`, endless; the
//! pipeline's own metrics reports (every second) and this process's RSS (sampled every second)
//! are recorded. The warm-up lasts until every actor has taken its first input (its models
//! loaded, however long that takes on the machine, up to `--max-warmup-s`), then `--warmup-s`
//! more seconds; `--minutes` are measured after it, then the pipeline is shut down as Ctrl-C
//! does (it drains). Measured:
//!
//! - **overload**: the frames/s the sources offer over the frames/s the slowest actor takes;
//! - **memory**: the RSS peak of each `--window-s` window (several cycles of the slowest
//!   actor), each within `--rss-tolerance-pct` of their median, and the drift from the first
//!   to the last (single samples are reported too: a forward pass's activations come and go);
//! - **drops**: for every node, what was offered to its inputs equals what it took plus what
//!   its edges' policies dropped (nothing left waiting at the end);
//! - **latency**: each node's capture-to-output p50 / p99 over its last 1,024 outputs.
//!
//! The run fails (non-zero exit) when memory drifts out of the tolerance, the overload is
//! under `--min-overload`, or a counter does not add up.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use ocellus_pipelines::{PipelineConfig, build};
use ocellus_runtime::metrics::MetricsSnapshot;
use ocellus_runtime::monitor::NodeKind;
use ocellus_runtime::pipeline::sink_ports;
use ocellus_runtime::{
    Context, DropPolicy, EdgePolicy, Input, Packet, PipelineReport, PortType, Stage, Wire, stage_factory,
};
use parking_lot::Mutex;

/// Smallest window of the RSS peaks, seconds (`--window-s` may make it longer).
const RSS_WINDOW_S: usize = 10;
/// Seconds measured beyond `--minutes`, so that the last RSS window is whole.
const MEASURE_MARGIN_S: f64 = 3.0;
/// The probe's name in the pipeline.
const PROBE: &str = "soak-probe";

/// Metrics reports as they came: seconds since the start, node, figures.
type Reports = Vec<(f64, Arc<str>, MetricsSnapshot)>;

/// Options of `ocellus-bench soak`.
#[derive(clap::Args, Debug, Clone)]
pub struct SoakArgs {
    /// The pipeline; its `test_pattern` sources are paced by the soak.
    #[arg(long, default_value = "configs/soak.toml")]
    pub config: PathBuf,
    /// Minutes measured after the warm-up.
    #[arg(long, default_value_t = 10.0)]
    pub minutes: f64,
    /// The run fails when an actor has taken no input this many seconds after the start.
    #[arg(long, default_value_t = 600.0)]
    pub max_warmup_s: f64,
    /// Frames per second of the test-pattern sources (default: as configured).
    #[arg(long)]
    pub fps: Option<u32>,
    /// Seconds not measured once every actor has taken its first input (its models loaded).
    #[arg(long, default_value_t = 20.0)]
    pub warmup_s: f64,
    /// Largest deviation of a window's RSS peak from the median peak, percent.
    #[arg(long, default_value_t = 5.0)]
    pub rss_tolerance_pct: f64,
    /// Length of the RSS windows, seconds: several frames of the slowest actor, so each
    /// window's peak holds a whole cycle of its activations.
    #[arg(long, default_value_t = 30)]
    pub window_s: usize,
    /// Smallest overload accepted: offered frames/s over the slowest actor's.
    #[arg(long, default_value_t = 2.0)]
    pub min_overload: f64,
    /// Writes `soak.json` here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// One node's figures over the measured part of the run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeFigures {
    /// Node name.
    pub name: String,
    /// Source, actor or sink.
    pub role: &'static str,
    /// Inputs taken per second (outputs for a source).
    pub rate: f64,
    /// Items its input edges dropped, in the whole run.
    pub dropped: u64,
    /// Inputs offered to its edges, in the whole run.
    pub offered: u64,
    /// Inputs it took, in the whole run.
    pub taken: u64,
    /// Capture-to-output latency, median, ms.
    pub latency_p50_ms: f64,
    /// 99th percentile, ms.
    pub latency_p99_ms: f64,
}

/// What a soak measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SoakResult {
    /// The configuration.
    pub config: String,
    /// Wall time of the run, s.
    pub seconds: f64,
    /// When measuring started, s after the start.
    pub warm_at_s: f64,
    /// Frames/s offered by the sources.
    pub offered_fps: f64,
    /// The slowest actor and its frames/s.
    pub slowest: (String, f64),
    /// Offered over the slowest actor's rate.
    pub overload: f64,
    /// RSS after the warm-up: median, smallest and largest sample, MiB.
    pub rss_mib: (f64, f64, f64),
    /// Length of the RSS windows, s.
    pub window_s: usize,
    /// Each window's RSS peak, MiB.
    pub rss_window_peaks_mib: Vec<f64>,
    /// Largest deviation of a window's peak from the median peak, percent.
    pub rss_window_deviation_pct: f64,
    /// Largest deviation of a single sample from the median sample, percent.
    pub rss_sample_deviation_pct: f64,
    /// RSS peak change from the first to the last window, percent.
    pub rss_drift_pct: f64,
    /// The RSS samples after the warm-up: (s, MiB).
    pub rss_samples: Vec<(f64, f64)>,
    /// Every node.
    pub nodes: Vec<NodeFigures>,
    /// Counters that do not add up (empty when all do).
    pub mismatches: Vec<String>,
}

/// Records every metrics report and counts the frames it is also given.
struct Probe {
    reports: Arc<Mutex<Reports>>,
    started: Instant,
}

impl Stage for Probe {
    fn process(&mut self, input: Input, _ctx: &mut Context) -> ocellus_runtime::Result<()> {
        if let Packet::Metrics(m) = input.packet {
            self.reports.lock().push((self.started.elapsed().as_secs_f64(), m.stage, m.snapshot));
        }
        Ok(())
    }
}

/// The configuration's text with its test-pattern sources paced live at `fps`, endless.
fn paced(text: &str, fps: Option<u32>) -> anyhow::Result<String> {
    let mut doc: toml_edit::DocumentMut = text.parse().context("the configuration is not TOML")?;
    let mut paced = 0;
    if let Some(sources) = doc.get_mut("source").and_then(|s| s.as_array_of_tables_mut()) {
        for source in sources.iter_mut() {
            let Some(preset) = source.get_mut("preset").and_then(|p| p.as_inline_table_mut()) else { continue };
            if preset.get("kind").and_then(|k| k.as_str()) != Some("test_pattern") {
                continue;
            }
            let rate = match fps {
                Some(f) => f,
                None => preset.get("fps").and_then(|f| f.as_integer()).map_or(30, |f| f.max(1) as u32),
            };
            preset.insert("fps", i64::from(rate).into());
            preset.remove("frames");
            preset.insert("live", true.into());
            paced += 1;
        }
    }
    if paced == 0 {
        bail!("the configuration has no `test_pattern` source to pace");
    }
    Ok(doc.to_string())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

/// Runs the soak.
pub fn run(args: &SoakArgs) -> anyhow::Result<SoakResult> {
    let text = std::fs::read_to_string(&args.config).with_context(|| format!("reading {}", args.config.display()))?;
    let config = PipelineConfig::parse(&args.config, &paced(&text, args.fps)?)?;
    let roles = Roles {
        sources: config.sources.iter().map(|s| s.name.clone()).collect(),
        actors: config.actors.iter().map(|a| a.name.clone()).collect(),
    };
    let mut pipeline = build(&config)?;
    let reports = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let probe_reports = reports.clone();
    let first = roles.sources.first().context("no source")?.clone();
    pipeline
        .node(
            PROBE,
            sink_ports(&[PortType::Frame, PortType::Metrics], EdgePolicy::Latest),
            vec![Wire::new("in", &[first.as_str()], EdgePolicy::Queue { depth: 4096, drop: DropPolicy::Oldest })],
            stage_factory(move || Probe { reports: probe_reports.clone(), started }),
        )
        .metrics_every(Duration::from_secs(1))
        .metrics_to(PROBE);

    let done = Arc::new(AtomicBool::new(false));
    let sampling = {
        let done = done.clone();
        let (reports, actors, shutdown) = (reports.clone(), roles.actors.clone(), pipeline.stop_handle());
        // A few seconds past `--minutes`, so that the last RSS window is whole.
        let measure_s = args.minutes * 60.0 + MEASURE_MARGIN_S;
        let (warmup_s, max_warmup_s) = (args.warmup_s, args.max_warmup_s);
        std::thread::spawn(move || {
            let mut samples = Vec::new();
            // Once every actor has taken an input, when to stop; then whether it was asked.
            let (mut stop_at, mut stopping) = (None, false);
            while !done.load(Ordering::Acquire) {
                let now = started.elapsed().as_secs_f64();
                samples.push((now, crate::rss_mib()));
                if stop_at.is_none() {
                    stop_at = ready_at(&reports.lock(), &actors).map(|t| t + warmup_s + measure_s);
                }
                if !stopping && stop_at.map_or(now > max_warmup_s, |t| now >= t) {
                    shutdown.stop();
                    stopping = true;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            samples
        })
    };
    let report = pipeline.run()?;
    done.store(true, Ordering::Release);
    println!("{report}");
    let rss = sampling.join().map_err(|_| anyhow::anyhow!("the RSS sampler panicked"))?;
    let reports = std::mem::take(&mut *reports.lock());
    analyse(args, &report, &roles, &reports, &rss)
}

/// When the last of `actors` took its first input (seconds after the start), once all have.
fn ready_at(reports: &Reports, actors: &[String]) -> Option<f64> {
    actors.iter().map(|a| first_input(reports, a)).try_fold(0.0f64, |at, t| Some(at.max(t?)))
}

/// When `name` took its first input.
fn first_input(reports: &Reports, name: &str) -> Option<f64> {
    reports.iter().find(|(_, s, m)| &**s == name && m.received > 0).map(|(t, _, _)| *t)
}

/// Which nodes are sources and actors (the rest are sinks).
struct Roles {
    sources: Vec<String>,
    actors: Vec<String>,
}

impl Roles {
    fn of(&self, name: &str) -> &'static str {
        if self.sources.iter().any(|s| s == name) {
            "source"
        } else if self.actors.iter().any(|a| a == name) {
            "actor"
        } else {
            "sink"
        }
    }
}

fn analyse(
    args: &SoakArgs,
    report: &PipelineReport,
    roles: &Roles,
    reports: &Reports,
    rss: &[(f64, f64)],
) -> anyhow::Result<SoakResult> {
    let failed: Vec<String> = report.failures().map(|n| format!("{}: {:?}", n.name, n.error)).collect();
    if !failed.is_empty() {
        bail!("nodes failed: {}", failed.join("; "));
    }
    let nodes: Vec<_> = report.nodes.iter().filter(|n| &*n.name != PROBE).collect();
    // Warm: every actor has loaded its models and taken its first input.
    let readiness: Vec<String> = roles
        .actors
        .iter()
        .map(|a| match first_input(reports, a) {
            Some(t) => format!("{a} {t:.0} s"),
            None => format!("{a} never"),
        })
        .collect();
    let window = args.window_s.max(RSS_WINDOW_S);
    let end = reports.last().map_or(0.0, |r| r.0);
    let Some(warm_at) = ready_at(reports, &roles.actors).map(|t| t + args.warmup_s) else {
        bail!(
            "an actor took no input in {:.0} s (first input taken: {})",
            args.max_warmup_s.min(end),
            readiness.join(", ")
        );
    };
    if warm_at + 2.0 * window as f64 > end {
        bail!(
            "the run ended at {end:.0} s, before {warm_at:.0} s of warm-up and two measuring windows (first input \
taken: {})",
            readiness.join(", ")
        );
    }
    // Rates between the first report after the warm-up and the last one.
    let rate = |name: &str, of: fn(&MetricsSnapshot) -> u64| -> f64 {
        let series: Vec<_> = reports.iter().filter(|(t, s, _)| &**s == name && *t >= warm_at).collect();
        match (series.first(), series.last()) {
            (Some(a), Some(b)) if b.0 > a.0 => (of(&b.2) - of(&a.2)) as f64 / (b.0 - a.0),
            _ => 0.0,
        }
    };
    let mut figures = Vec::new();
    let mut mismatches = Vec::new();
    for n in &nodes {
        let m = &n.metrics;
        let r = roles.of(&n.name);
        let node_rate = if r == "source" { rate(&n.name, |m| m.emitted) } else { rate(&n.name, |m| m.received) };
        if n.kind == NodeKind::Stage {
            let i = &m.input;
            if i.pushed != i.delivered + i.dropped + i.depth {
                mismatches.push(format!(
                    "{}: {} offered != {} taken + {} dropped + {} waiting",
                    n.name, i.pushed, i.delivered, i.dropped, i.depth
                ));
            }
        }
        figures.push(NodeFigures {
            name: n.name.to_string(),
            role: r,
            rate: node_rate,
            dropped: m.input.dropped,
            offered: m.input.pushed,
            taken: m.input.delivered,
            latency_p50_ms: m.latency_p50_ms,
            latency_p99_ms: m.latency_p99_ms,
        });
    }
    let offered_fps: f64 = figures.iter().filter(|f| f.role == "source").map(|f| f.rate).sum();
    let slowest = figures
        .iter()
        .filter(|f| f.role == "actor")
        .min_by(|a, b| a.rate.total_cmp(&b.rate))
        .map(|f| (f.name.clone(), f.rate))
        .context("no actor in the pipeline")?;
    let overload = if slowest.1 > 0.0 { offered_fps / slowest.1 } else { f64::INFINITY };

    let measured: Vec<(f64, f64)> = rss.iter().copied().filter(|(t, _)| *t >= warm_at && *t <= end).collect();
    let mut values: Vec<f64> = measured.iter().map(|s| s.1).collect();
    let rss_median = median(&mut values);
    // `median` sorted the samples: the first and last are the extremes.
    let (lo, hi) = (values.first().copied().unwrap_or(0.0), values.last().copied().unwrap_or(0.0));
    let peaks: Vec<f64> = measured
        .chunks(window)
        .filter(|c| c.len() == window)
        .map(|c| c.iter().map(|s| s.1).fold(0.0, f64::max))
        .collect();
    if peaks.len() < 2 {
        bail!("{:.0} s measured: fewer than two {window}-second windows", end - warm_at);
    }
    let drift = 100.0 * (peaks[peaks.len() - 1] - peaks[0]) / peaks[0];
    let peak_median = median(&mut peaks.clone());
    let window_dev = peaks.iter().map(|w| 100.0 * (w - peak_median).abs() / peak_median).fold(0.0, f64::max);
    let sample_dev = if rss_median > 0.0 { 100.0 * (hi - rss_median).max(rss_median - lo) / rss_median } else { 0.0 };

    let result = SoakResult {
        config: args.config.display().to_string(),
        seconds: report.elapsed.as_secs_f64(),
        warm_at_s: warm_at,
        offered_fps,
        slowest,
        overload,
        rss_mib: (rss_median, lo, hi),
        window_s: window,
        rss_window_peaks_mib: peaks,
        rss_window_deviation_pct: window_dev,
        rss_sample_deviation_pct: sample_dev,
        rss_drift_pct: drift,
        rss_samples: measured,
        nodes: figures,
        mismatches,
    };
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("soak.json"), serde_json::to_string_pretty(&result)?)?;
    }
    println!("{}", markdown(&result));
    if !result.mismatches.is_empty() {
        bail!("counters do not add up: {}", result.mismatches.join("; "));
    }
    if result.rss_window_deviation_pct > args.rss_tolerance_pct {
        bail!(
            "RSS peaks moved {:.1} % ({}-second windows), over the {:.1} % tolerance",
            result.rss_window_deviation_pct,
            result.window_s,
            args.rss_tolerance_pct
        );
    }
    if result.overload < args.min_overload {
        bail!("the sources offered {:.2}× the slowest actor's rate, under {:.1}×", result.overload, args.min_overload);
    }
    Ok(result)
}

/// The result as a Markdown table.
pub fn markdown(r: &SoakResult) -> String {
    let mut out = format!(
        "Soak of {} for {:.0} s (measured from {:.0} s): sources {:.2} frames/s, slowest actor {} {:.3} frames/s \
(overload {:.1}×); RSS median {:.0} MiB (samples {:.0}–{:.0}), peaks of {} s windows within {:.2} % of their median \
(single samples {:.2} %), first to last peak {:+.2} %\n\n| node | role | frames/s | offered | taken | dropped | p50 ms | p99 ms |\n|---|---|---|---|---|---|---|---|\n",
        r.config,
        r.seconds,
        r.warm_at_s,
        r.offered_fps,
        r.slowest.0,
        r.slowest.1,
        r.overload,
        r.rss_mib.0,
        r.rss_mib.1,
        r.rss_mib.2,
        r.window_s,
        r.rss_window_deviation_pct,
        r.rss_sample_deviation_pct,
        r.rss_drift_pct
    );
    for n in &r.nodes {
        out.push_str(&format!(
            "| {} | {} | {:.3} | {} | {} | {} | {:.0} | {:.0} |\n",
            n.name, n.role, n.rate, n.offered, n.taken, n.dropped, n.latency_p50_ms, n.latency_p99_ms
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_test_patterns_are_paced() {
        let text = "[[source]]\nname = \"a\"\npreset = { kind = \"test_pattern\", fps = 5 }\n\
                    [[source]]\nname = \"b\"\npreset = { kind = \"rtsp\", url = \"rtsp://x\" }\n";
        let out = paced(&text.replace("fps = 5", "fps = 5, frames = 50"), Some(8)).unwrap();
        assert!(out.contains("fps = 8") && !out.contains("frames") && out.contains("live = true"), "{out}");
        assert!(out.contains("url = \"rtsp://x\" }"), "{out}");
        assert!(paced("[[source]]\nname = \"b\"\npreset = { kind = \"rtsp\", url = \"x\" }\n", None).is_err());
    }
}
