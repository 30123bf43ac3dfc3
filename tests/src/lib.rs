//! Helpers shared by the end-to-end tests: a collecting stage, fixtures, camera clips, config
//! snippets; recordings are read back with `ocellus_io::recording` (Rerun's own decoder).
#![warn(missing_docs)]

use std::path::Path;
use std::sync::Arc;

use ocellus_runtime::metrics::StageMetrics;
use ocellus_runtime::{Clock, Context, EdgeReceiver, Input, Packet, Stage};
use parking_lot::Mutex;

pub use ocellus_io::recording::{LoggedBox, Row, Summary as RrdSummary, boxes_of, buffers_of, components_of, texts_of};

/// A stage that keeps every packet it receives, with the upstream push count at that moment.
#[derive(Clone, Default)]
pub struct Collected(pub Arc<Mutex<Vec<(Packet, u64)>>>);

impl Collected {
    /// A stage appending to this collection.
    pub fn stage(&self) -> Collector {
        Collector(self.clone())
    }

    /// The factory of such stages, for [`ocellus_runtime::Pipeline::stage`].
    pub fn factory(&self) -> ocellus_runtime::node::StageFactory {
        let me = self.clone();
        ocellus_runtime::stage_factory(move || me.stage())
    }

    /// A copy of what was collected.
    pub fn take(&self) -> Vec<(Packet, u64)> {
        std::mem::take(&mut *self.0.lock())
    }
}

/// The stage of a [`Collected`].
pub struct Collector(Collected);

impl Stage for Collector {
    fn process(&mut self, input: Input, ctx: &mut Context) -> ocellus_runtime::Result<()> {
        ctx.record_consumed(input.packet.meta().map(|m| m.capture_ns));
        self.0.0.lock().push((input.packet, ctx.upstream_pushed()));
        Ok(())
    }
}

/// Reads an `.rrd` file with Rerun's decoder: what each entity holds.
pub fn read_rrd(path: &Path) -> anyhow::Result<RrdSummary> {
    Ok(ocellus_io::recording::summary(path)?)
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

/// Golden data made from official code that is not on the package registry (HMR 2.0, LART),
/// as shipped beside the repository: `$OCELLUS_SHARED_FIXTURES/<model>`, by default
/// `../shared/fixtures/<model>` from the repository root.
pub fn shared_fixtures(model: &str) -> std::path::PathBuf {
    let root = std::env::var_os("OCELLUS_SHARED_FIXTURES").map(std::path::PathBuf::from).unwrap_or_else(|| {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("..").join("shared").join("fixtures")
    });
    let dir = root.join(model);
    assert!(
        dir.join("README.md").exists(),
        "the {model} golden data are missing from {} (set OCELLUS_SHARED_FIXTURES)",
        dir.display()
    );
    dir
}

/// The tensors of a safetensors file, by name.
pub fn read_tensors(path: &std::path::Path) -> std::collections::HashMap<String, tch::Tensor> {
    tch::Tensor::read_safetensors(path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .into_iter()
        .collect()
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

/// Every variable's gradient after `step` (gradients zeroed before it), sorted by name.
pub fn gradients_after(vs: &tch::nn::VarStore, step: impl FnOnce()) -> Vec<(String, tch::Tensor)> {
    let mut vars: Vec<(String, tch::Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (_, v) in &mut vars {
        v.zero_grad();
    }
    step();
    vars.into_iter().map(|(name, v)| (name, v.grad().copy())).collect()
}

/// Asserts that two sets of gradients (from [`gradients_after`]) agree within `tol` and that
/// none of the reference ones is zero or missing (a zero gradient tests nothing); returns the
/// worst error and its variable.
pub fn assert_same_gradients(
    ours: &[(String, tch::Tensor)],
    reference: &[(String, tch::Tensor)],
    tol: f64,
) -> (f64, String) {
    assert_eq!(ours.len(), reference.len(), "not the same variables");
    let mut worst = (0.0, String::new());
    for ((name, grad), (reference_name, reference)) in ours.iter().zip(reference) {
        assert_eq!(name, reference_name);
        assert!(grad.defined() && reference.defined(), "no gradient for {name}");
        assert!(reference.abs().max().double_value(&[]) > 0.0, "{name}: a zero gradient tests nothing");
        let diff = max_abs_diff(grad, reference);
        assert!(diff <= tol, "{name}: gradient off by {diff:.3e}");
        if diff > worst.0 {
            worst = (diff, name.clone());
        }
    }
    worst
}

/// Checks a reversible network's training pass against the same network under ordinary
/// autograd: `ordinary` returns the logits with their graph (`loss_of` then backward), and
/// `reversible` runs the reversible pass with the loss function it is given, returning the loss.
/// Asserts the same logits and loss, bit for bit, and every gradient within `tol`; returns the
/// number of gradients and the worst error with its variable.
pub fn assert_reversible_equals_ordinary(
    vs: &tch::nn::VarStore,
    loss_of: &dyn Fn(&tch::Tensor) -> tch::Tensor,
    ordinary: impl FnOnce() -> tch::Tensor,
    reversible: impl FnOnce(&dyn Fn(&tch::Tensor) -> tch::Tensor) -> tch::Tensor,
    tol: f64,
) -> (usize, f64, String) {
    let mut seen = None;
    let ordinary_grads = gradients_after(vs, || {
        let logits = ordinary();
        let loss = loss_of(&logits);
        loss.backward();
        seen = Some((logits.detach(), loss.double_value(&[])));
    });
    let (logits, loss) = seen.unwrap_or_else(|| panic!("the ordinary pass ran"));
    let rev_logits = std::cell::RefCell::new(None);
    let mut rev_loss = None;
    let reversible_grads = gradients_after(vs, || {
        let traced = |l: &tch::Tensor| {
            *rev_logits.borrow_mut() = Some(l.detach().copy());
            loss_of(l)
        };
        rev_loss = Some(reversible(&traced).double_value(&[]));
    });
    let rev_logits = rev_logits.into_inner().unwrap_or_else(|| panic!("the reversible pass computed no logits"));
    assert!(rev_logits.equal(&logits), "logits differ: {:.3e}", max_abs_diff(&rev_logits, &logits));
    assert_eq!(rev_loss, Some(loss), "losses differ");
    let (worst, name) = assert_same_gradients(&reversible_grads, &ordinary_grads, tol);
    (ordinary_grads.len(), worst, name)
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

/// A real HTTP server on loopback (the OpenAI protocol's side in tests): every request's JSON
/// body (`null` when it is not JSON) and path go to `answer`, whose value is the JSON reply.
/// Returns the `http://127.0.0.1:<port>/v1` base URL; the server lives as long as the process.
pub fn json_server(answer: impl Fn(&str, &serde_json::Value) -> serde_json::Value + Send + 'static) -> String {
    let server = tiny_http::Server::http("127.0.0.1:0").expect("a loopback HTTP server");
    let url = format!("http://{}/v1", server.server_addr().to_ip().expect("an IP address"));
    std::thread::spawn(move || {
        for mut request in server.incoming_requests() {
            let mut body = String::new();
            std::io::Read::read_to_string(request.as_reader(), &mut body).ok();
            let body: serde_json::Value = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
            let reply = answer(request.url(), &body);
            request.respond(tiny_http::Response::from_string(reply.to_string())).ok();
        }
    });
    url
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// Config text of a `cam` source (a 320 × 240 ball test pattern of `frames` frames) and a
/// `tracker` actor (SAM 2 tiny on the fixture's weights, `block` edge) with `tracker_lines`
/// appended (prompts, prompt topic, ...). The tracker runs at a 256-pixel input: these
/// pipelines test what surrounds the model, whose numerics the parity tests check at 1024.
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
image_size = 256
{tracker_lines}
"#,
        weights.display()
    )
}

/// Held by the tests that must not overlap: the timing-sensitive (a viewer process pulling
/// a live stream) and the heaviest (full-size HMR 2.0 on the CPU). Poisoning is ignored: a
/// failed test must not fail the others.
pub fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A test session listening on a free loopback endpoint (opened on the test thread: no
/// runtime there), and that endpoint. A port found free can be taken before zenoh binds it
/// (tests run in parallel): then another one is tried.
pub fn listening_session() -> (zenoh::Session, String) {
    use zenoh::Wait as _;
    let mut last = String::new();
    for _ in 0..5 {
        let endpoint = format!("tcp/127.0.0.1:{}", free_port());
        let spec = ocellus_io::session::SessionSpec::loopback(&[&endpoint], &[]);
        match zenoh::open(spec.to_config().expect("zenoh config")).wait() {
            Ok(session) => return (session, endpoint),
            Err(e) => last = e.to_string(),
        }
    }
    panic!("no free loopback endpoint: {last}");
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
        Self::start_bytes(port, key, payloads.iter().map(|p| p.as_bytes().to_vec()).collect(), every)
    }

    /// [`ZenohPublisher::start`] with binary payloads (CDR).
    pub fn start_bytes(port: u16, key: &str, payloads: Vec<Vec<u8>>, every: std::time::Duration) -> Self {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let key = key.to_owned();
        let thread = std::thread::spawn(move || {
            let rt =
                tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
            rt.block_on(async move {
                let spec = ocellus_io::session::SessionSpec::loopback(&[], &[&format!("tcp/127.0.0.1:{port}")]);
                let session = zenoh::open(spec.to_config().expect("zenoh config")).await.expect("zenoh session");
                while !flag.load(Ordering::Acquire) {
                    for p in &payloads {
                        session.put(&key, p.clone()).await.expect("put");
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

/// The synthetic SMPL model (with the 19-joint regressor) imported as a user imports theirs,
/// at `dir/smpl.safetensors`.
pub fn imported_smpl(dir: &Path) -> std::path::PathBuf {
    let out = dir.join("smpl.safetensors");
    ocellus_pipelines::tools::import_with_extra(
        "smpl",
        &fixtures_dir().join("smpl_synthetic.pkl"),
        Some(&fixtures_dir().join("smpl_j19.pkl")),
        &out,
    )
    .unwrap_or_else(|e| panic!("importing the synthetic SMPL model: {e}"));
    out
}

/// Every message published on `key` seen by `session`, as JSON (the subscriber lives as long
/// as the returned handle).
pub fn json_messages(
    session: &zenoh::Session,
    key: &str,
) -> (zenoh::pubsub::Subscriber<()>, Arc<parking_lot::Mutex<Vec<serde_json::Value>>>) {
    use zenoh::Wait as _;
    let messages = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let sink = messages.clone();
    let subscriber = session
        .declare_subscriber(key.to_owned())
        .callback(move |s| sink.lock().push(serde_json::from_slice(&s.payload().to_bytes()).unwrap_or_default()))
        .wait()
        .unwrap_or_else(|e| panic!("subscribing to {key}: {e}"));
    (subscriber, messages)
}

/// Drives a stage by hand: its context, whose first output goes into a bounded edge whose
/// receiver is returned.
pub fn test_context() -> (Context, EdgeReceiver<Packet>) {
    let (tx, rx) = ocellus_runtime::edge("test", ocellus_runtime::EdgePolicy::Block { depth: 64 });
    (Context::new(Arc::from("test"), vec![vec![tx]], Arc::new(StageMetrics::default()), Clock::Live), rx)
}

/// Config text of a Rerun sink saving `inputs` to `path` over a `block` edge of depth 32.
pub fn rerun_sink_toml(inputs: &[&str], path: &Path) -> String {
    format!(
        "[[sink]]\nkind = \"rerun\"\ninputs = {inputs:?}\nedge = {{ policy = \"block\", depth = 32 }}\nsave = \"{}\"\n",
        path.display()
    )
}

/// A camera-sized clip of the fixtures (`camera_<W>x<H>`, written by `generate.py` from
/// `tests/fixtures/camera.py`): PNG frames, ground-truth label images and the official
/// pipelines' outputs.
#[derive(Debug, Clone)]
pub struct CameraClip {
    /// `640x480`, `1280x720` or `641x479`.
    pub size: &'static str,
    /// Frame width.
    pub width: usize,
    /// Frame height.
    pub height: usize,
    /// Frames run through the actors.
    pub tracked: usize,
    /// The case's JSON (prompts, sizes).
    pub meta: serde_json::Value,
}

/// The camera sizes of the actor-level tests: VGA, HD, and an odd size with padded rows.
pub const CAMERA_SIZES: [&str; 3] = ["640x480", "1280x720", "641x479"];

impl CameraClip {
    /// The clip of `size`.
    pub fn new(size: &'static str) -> Self {
        let path = fixtures_dir().join(format!("camera_{size}.json"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let meta: serde_json::Value = serde_json::from_str(&text).expect("camera fixture JSON");
        let get = |k: &str| meta[k].as_u64().unwrap_or_else(|| panic!("{k} in {}", path.display())) as usize;
        Self { size, width: get("width"), height: get("height"), tracked: get("tracked"), meta }
    }

    /// A `[[source]]` named `name` reading the first `frames` PNG frames through GStreamer.
    pub fn source_toml(&self, name: &str, frames: usize) -> String {
        let dir = fixtures_dir().join(format!("camera_{}", self.size));
        format!(
            "[[source]]\nname = \"{name}\"\ngstreamer = \"multifilesrc location={}/%05d.png index=0 stop-index={} \
             caps=image/png,framerate=30/1 ! pngdec\"\n",
            dir.display(),
            frames - 1
        )
    }

    /// The tensors of the case (`camera_<size>.io.safetensors`).
    pub fn io(&self) -> std::collections::HashMap<String, tch::Tensor> {
        fixture_io(&format!("camera_{}", self.size))
    }

    /// Ground-truth label images of the tracked frames, as the tracker's little-endian u16.
    pub fn labels(&self) -> Vec<Vec<u8>> {
        let io = self.io();
        (0..self.tracked)
            .map(|f| {
                let t = io[&format!("frame{f}.labels")].to_kind(tch::Kind::Int).flatten(0, -1);
                Vec::<i32>::try_from(&t).expect("labels").iter().flat_map(|&l| (l as u16).to_le_bytes()).collect()
            })
            .collect()
    }
}

/// The first `frames` PNG frames of `clip` as packed 8-bit RGB.
pub fn png_frames(clip: &CameraClip, frames: usize) -> Vec<Vec<u8>> {
    let dir = fixtures_dir().join(format!("camera_{}", clip.size));
    (0..frames)
        .map(|f| {
            let path = dir.join(format!("{f:05}.png"));
            image::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_rgb8().into_raw()
        })
        .collect()
}

/// A stage that answers each frame with the ground-truth tracks of its sequence number (from
/// `labels`, little-endian u16 label images): the known tracks a labeler or inpainter is
/// tested with.
pub struct GroundTruthTracks {
    labels: Vec<Vec<u8>>,
    width: usize,
}

impl GroundTruthTracks {
    /// Tracks from `labels` of `width`-wide frames.
    pub fn new(labels: Vec<Vec<u8>>, width: usize) -> Self {
        Self { labels, width }
    }
}

impl Stage for GroundTruthTracks {
    fn process(&mut self, input: Input, ctx: &mut Context) -> ocellus_runtime::Result<()> {
        let Packet::Frame(frame) = input.packet else {
            return Err(ocellus_runtime::RuntimeError::BadInput("ground truth: not a frame".into()));
        };
        let Some(labels) = self.labels.get(frame.meta.seq as usize) else { return Ok(()) };
        let ids: std::collections::BTreeSet<u16> =
            labels.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).filter(|&l| l != 0).collect();
        let tracks = ids
            .into_iter()
            .map(|id| {
                let mask: Vec<u8> =
                    labels.chunks_exact(2).map(|b| u8::from(u16::from_le_bytes([b[0], b[1]]) == id)).collect();
                let area = mask.iter().map(|&m| u64::from(m)).sum();
                ocellus_runtime::Track {
                    id: u32::from(id),
                    bbox: ocellus_kernels::masks::mask_box(&mask, self.width),
                    score: 1.0,
                    occluded: false,
                    area,
                    label: None,
                    origin: None,
                }
            })
            .collect();
        ctx.emit(Packet::Tracks(ocellus_runtime::Tracks {
            meta: frame.meta.clone(),
            width: self.width as u32,
            height: (labels.len() / 2 / self.width) as u32,
            labels: bytes::Bytes::from(labels.clone()),
            tracks,
        }));
        Ok(())
    }
}

/// The factory of a GStreamer source running `spec`.
pub fn gst_source(spec: ocellus_io::source::GstSourceSpec) -> ocellus_runtime::node::SourceFactory {
    ocellus_io::kinds::ConfiguredSource::Gstreamer(spec).factory()
}
