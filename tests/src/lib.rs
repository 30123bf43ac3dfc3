//! Helpers shared by the end-to-end tests: a collecting stage and an `.rrd` reader built on
//! Rerun's own decoder.
#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use ocellus_actors::frame::Packet;
use ocellus_actors::stage::{Outputs, Processor};
use parking_lot::Mutex;

/// A stage that keeps every packet it receives, with the upstream push count at that moment.
#[derive(Clone, Default)]
pub struct Collected(pub Arc<Mutex<Vec<(Packet, u64)>>>);

impl Collected {
    /// A processor appending to this collection.
    pub fn processor(&self) -> Box<dyn Processor> {
        Box::new(Collector(self.clone()))
    }

    /// A copy of what was collected.
    pub fn take(&self) -> Vec<(Packet, u64)> {
        std::mem::take(&mut *self.0.lock())
    }
}

struct Collector(Collected);

impl Processor for Collector {
    fn process(&mut self, input: Packet, out: &mut Outputs) -> ocellus_actors::Result<()> {
        out.record_consumed(input.meta().map(|m| m.capture_ns));
        self.0.0.lock().push((input, out.upstream_pushed()));
        Ok(())
    }
}

/// One logged row of an entity.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Value on the `frame` timeline.
    pub frame: Option<i64>,
    /// Value on the camera's own timeline `frame/<camera>` (entities `world/<camera>/...`).
    pub camera_frame: Option<i64>,
    /// Value on the `capture_time` timeline (ns).
    pub capture_ns: Option<i64>,
    /// Component names of the chunk.
    pub components: Vec<String>,
    /// Timelines of the chunk.
    pub timelines: Vec<String>,
}

/// What a recording holds, per entity path.
#[derive(Debug, Default)]
pub struct RrdSummary {
    /// Temporal rows per entity.
    pub rows: BTreeMap<String, Vec<Row>>,
    /// Components logged static per entity.
    pub statics: BTreeMap<String, Vec<String>>,
}

impl RrdSummary {
    /// Rows of `entity` (empty if none).
    pub fn rows_of(&self, entity: &str) -> &[Row] {
        self.rows.get(entity).map_or(&[], Vec::as_slice)
    }
}

/// Reads an `.rrd` file with Rerun's decoder.
pub fn read_rrd(path: &Path) -> anyhow::Result<RrdSummary> {
    let file = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut summary = RrdSummary::default();
    for msg in re_log_encoding::DecoderApp::decode_lazy(file) {
        let re_log_types::LogMsg::ArrowMsg(_, arrow) = msg? else { continue };
        let chunk = re_chunk::Chunk::from_arrow_msg(&arrow)?;
        let entity = chunk.entity_path().to_string().trim_start_matches('/').to_owned();
        let components: Vec<String> = chunk.component_descriptors().map(|d| d.display_name().to_owned()).collect();
        if chunk.is_static() {
            summary.statics.entry(entity).or_default().extend(components);
            continue;
        }
        let column = |name: &str| {
            chunk.timelines().iter().find(|(n, _)| n.as_str() == name).map(|(_, c)| c.times_raw().to_vec())
        };
        let (frames, captures) = (column("frame"), column("capture_time"));
        let camera_frames = camera_of(&entity).and_then(|c| column(&format!("frame/{c}")));
        let timelines: Vec<String> = chunk.timelines().keys().map(|n| n.as_str().to_owned()).collect();
        let rows = summary.rows.entry(entity).or_default();
        for i in 0..chunk.num_rows() {
            rows.push(Row {
                frame: frames.as_ref().and_then(|f| f.get(i).copied()),
                camera_frame: camera_frames.as_ref().and_then(|f| f.get(i).copied()),
                capture_ns: captures.as_ref().and_then(|c| c.get(i).copied()),
                components: components.clone(),
                timelines: timelines.clone(),
            });
        }
    }
    for rows in summary.rows.values_mut() {
        rows.sort_by_key(|r| (r.frame, r.capture_ns));
    }
    Ok(summary)
}

/// The camera of an entity `world/<camera>/...`.
fn camera_of(entity: &str) -> Option<String> {
    let mut parts = entity.split('/');
    (parts.next() == Some("world")).then(|| parts.next().map(str::to_owned)).flatten()
}

/// The bytes of `component` (an image or segmentation buffer, say) logged at `entity`, by
/// the camera's frame number (`frame/<camera>`, else `frame`).
pub fn buffers_of(
    path: &Path,
    entity: &str,
    component: rerun::ComponentIdentifier,
) -> anyhow::Result<BTreeMap<i64, Vec<u8>>> {
    let file = std::io::BufReader::new(std::fs::File::open(path)?);
    let camera_timeline = camera_of(entity).map(|c| format!("frame/{c}"));
    let mut out = BTreeMap::new();
    for msg in re_log_encoding::DecoderApp::decode_lazy(file) {
        let re_log_types::LogMsg::ArrowMsg(_, arrow) = msg? else { continue };
        let chunk = re_chunk::Chunk::from_arrow_msg(&arrow)?;
        if chunk.is_static() || chunk.entity_path().to_string().trim_start_matches('/') != entity {
            continue;
        }
        let column = |name: &str| {
            chunk.timelines().iter().find(|(n, _)| n.as_str() == name).map(|(_, c)| c.times_raw().to_vec())
        };
        let frames = camera_timeline.as_deref().and_then(column).or_else(|| column("frame"));
        for (row, buffers) in chunk.iter_component::<rerun::components::ImageBuffer>(component).enumerate() {
            let (Some(frame), Some(buffer)) = (frames.as_ref().and_then(|f| f.get(row)), buffers.first()) else {
                continue;
            };
            out.insert(*frame, buffer.0.0.to_vec());
        }
    }
    Ok(out)
}

/// A fresh folder `base/test` for one test's files (pass `env!("CARGO_TARGET_TMPDIR")`).
pub fn scratch_dir(base: &str, test: &str) -> std::path::PathBuf {
    let dir = Path::new(base).join(test);
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// The golden fixtures folder (`OCELLUS_FIXTURES`, set by `scripts/test` after
/// `scripts/fixtures` generated them). Missing fixtures fail the test: never a skip.
pub fn fixtures_dir() -> std::path::PathBuf {
    let dir = std::env::var_os("OCELLUS_FIXTURES").map(std::path::PathBuf::from).unwrap_or_else(|| {
        panic!("OCELLUS_FIXTURES is not set: run `make test` (or `export OCELLUS_FIXTURES=$(scripts/fixtures)`)")
    });
    assert!(dir.join(".complete").exists(), "fixtures in {} are incomplete: run scripts/fixtures", dir.display());
    dir
}

/// The tensors of a fixture's `<case>.io.safetensors`.
pub fn fixture_io(case: &str) -> std::collections::HashMap<String, tch::Tensor> {
    let path = fixtures_dir().join(format!("{case}.io.safetensors"));
    tch::Tensor::read_safetensors(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .into_iter()
        .collect()
}

/// Largest absolute difference between two tensors of the same shape.
pub fn max_abs_diff(a: &tch::Tensor, b: &tch::Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a.to_kind(tch::Kind::Double) - b.to_kind(tch::Kind::Double)).abs().max().double_value(&[])
}

/// Asserts `|ours - reference| ≤ tol` elementwise, naming the output.
pub fn assert_close(name: &str, ours: &tch::Tensor, reference: &tch::Tensor, tol: f64) {
    let diff = max_abs_diff(ours, reference);
    let scale = reference.abs().max().to_kind(tch::Kind::Double).double_value(&[]);
    println!("{name}: max abs error {diff:.3e} (max |reference| {scale:.3e})");
    assert!(diff <= tol, "{name}: max abs error {diff:.3e} > {tol:.0e}");
}

/// Asserts, elementwise, `|ours - reference| ≤ tol` or within one bf16 ulp (8-bit mantissa) of
/// the reference value (for tensors stored at bf16 precision, where a tiny difference before
/// rounding can move a value by one ulp), and that such one-ulp differences are rare (≤ 0.1 %).
pub fn assert_close_bf16(name: &str, ours: &tch::Tensor, reference: &tch::Tensor, tol: f64) {
    let diff = (ours - reference).abs();
    let ulp = reference.abs().clamp_min(1e-30).log2().floor().g_sub_scalar(7.0).exp2();
    let allowed = ulp.clamp_min(tol);
    let within = diff.le_tensor(&allowed).all().int64_value(&[]) == 1;
    let differing = diff.gt(tol).to_kind(tch::Kind::Float).mean(tch::Kind::Float).double_value(&[]);
    println!(
        "{name}: max abs error {:.3e}, {:.5}% beyond {tol:.0e} (bf16 rounding)",
        max_abs_diff(ours, reference),
        differing * 100.0
    );
    assert!(within, "{name}: a difference beyond one bf16 ulp");
    assert!(differing <= 1e-3, "{name}: {differing:e} of the elements differ");
}

/// Writes a pipeline configuration to `dir/name` and loads it (errors keep the file's path).
pub fn config_file(dir: &Path, name: &str, text: &str) -> ocellus_pipelines::PipelineConfig {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    ocellus_pipelines::PipelineConfig::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// Config text of a `cam` source (a 320 × 240 ball test pattern of `frames` frames) and a
/// `tracker` actor (SAM 2 tiny on the fixture's weights, `block` edge) with `tracker_lines`
/// appended (prompts, prompt topic, ...).
pub fn cam_and_tracker_toml(frames: usize, tracker_lines: &str) -> String {
    let weights = fixtures_dir().join("sam2_video_tiny.weights.safetensors");
    format!(
        r#"
[[source]]
name = "cam"
preset = {{ kind = "test_pattern", pattern = "ball", width = 320, height = 240, frames = {frames} }}

[[actor]]
name = "tracker"
kind = "sam2"
model = "sam2.1_hiera_tiny"
weights = "{}"
inputs = ["cam"]
edge = {{ policy = "block" }}
{tracker_lines}
"#,
        weights.display()
    )
}

/// Publishes each of `payloads` on `key` every `every`, from a zenoh peer that connects to
/// `tcp/127.0.0.1:port` (on its own runtime thread), until dropped. Repeating matters: a put
/// before the peers have met is lost.
pub struct ZenohPublisher {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ZenohPublisher {
    /// Starts publishing.
    pub fn start(port: u16, key: &str, payloads: &[&str], every: std::time::Duration) -> Self {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let (key, payloads) = (key.to_owned(), payloads.iter().map(|p| (*p).to_owned()).collect::<Vec<_>>());
        let thread = std::thread::spawn(move || {
            let rt =
                tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
            rt.block_on(async move {
                let spec = ocellus_actors::transport::SessionSpec::loopback(&[], &[&format!("tcp/127.0.0.1:{port}")]);
                let session = zenoh::open(spec.to_config().expect("zenoh config")).await.expect("zenoh session");
                while !flag.load(Ordering::Acquire) {
                    for p in &payloads {
                        session.put(&key, p.as_str()).await.expect("put");
                    }
                    tokio::time::sleep(every).await;
                }
                session.close().await.expect("close");
            });
        });
        Self { stop, thread: Some(thread) }
    }
}

impl Drop for ZenohPublisher {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.join().ok();
        }
    }
}

/// Drives a processor by hand: its outputs go into a bounded edge whose receiver is returned.
pub fn test_outputs() -> (Outputs, ocellus_actors::EdgeReceiver<Packet>) {
    let (tx, rx) = ocellus_actors::edge("test", ocellus_actors::EdgePolicy::Block { depth: 64 });
    let metrics = Arc::new(ocellus_actors::metrics::StageMetrics::default());
    (Outputs::new(Arc::from("test"), vec![tx], metrics), rx)
}

/// Config text of a Rerun sink saving `inputs` to `path` over a `block` edge of depth 32.
pub fn rerun_sink_toml(inputs: &[&str], path: &Path) -> String {
    format!(
        "[[sink]]\nkind = \"rerun\"\ninputs = {inputs:?}\nedge = {{ policy = \"block\", depth = 32 }}\nsave = \"{}\"\n",
        path.display()
    )
}
