//! Discovery's MetaCLIP side, driven frame by frame on a camera frame (the 640×480 clip's
//! first PNG) with the fixtures' seeded weights (SAM 2.1 base_plus, MetaCLIP ViT-B-32): candidates
//! labelled zero-shot from their mask-aware crops, `keep` deciding which become tracks, and
//! text queries ranked by image–text similarity, answered with the chosen candidate or a
//! reason. The expectations are computed here, apart from the stage, from the same weights:
//! SAM 2's automatic mask generator on the frame (exact to the official one,
//! `sam2_amg_parity`) and the labeler's crops and towers (exact to open_clip,
//! `camera_actors`); the query's text embedding is the zero-shot class embedding of the query,
//! so the expected winner is the candidate whose crop that class scores highest.
#![allow(clippy::unwrap_used)] // tests may unwrap, helpers included

use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};

use bytes::Bytes;
use ocellus_kernels::masks::mask_to_bytes;
use ocellus_kernels::{DType, FrameLayout, PixelFormat};
use ocellus_model_actors::discovery::{
    DiscoveryCommand, DiscoverySpec, DiscoveryStage, Limits, QueryAnswer, QueryMatch,
};
use ocellus_model_actors::labeler::{Labeler, LabelerSpec};
use ocellus_model_actors::tracker::{FramePrompt, TrackerCommand};
use ocellus_perception::model::{ModelSpec, Sam2Options, WeightsSource};
use ocellus_perception::sam2::Sam2;
use ocellus_perception::sam2::automatic_mask_generator::{AmgConfig, AutomaticMaskGenerator};
use ocellus_perception::sam2::image_predictor::ImagePredictor;
use ocellus_runtime::control::{ControlReceiver, ControlSender, control_channel};
use ocellus_runtime::{Frame, FrameMeta, Input, Packet, Stage, Track, TrackOrigin, Tracks};
use ocellus_tests::{fixtures_dir, test_context};

const VOCABULARY: [&str; 4] = ["ball", "person", "robot", "floor"];
/// Class names the `keep` test plants its two classes from.
const POOL: [&str; 24] = [
    "ball", "person", "robot", "floor", "cup", "chair", "table", "wall", "door", "plant", "dog", "window", "car",
    "bicycle", "lamp", "book", "bottle", "shoe", "tree", "sky", "box", "phone", "bag", "clock",
];
const TEMPLATES: [&str; 2] = ["a photo of a {}.", "a blurry photo of a {}."];
const MIN_AREA: u64 = 100;
/// Masks over this fraction of the frame are not objects (discovery's default).
const MAX_AREA: f64 = 0.8;
/// Similarities and probabilities: the same computation on the same device.
const TOLERANCE: f32 = 1e-5;
/// The discovery's `tracks` input (joined with `frames`).
const TRACKS_PORT: usize = 1;

fn frame(seq: u64) -> Frame {
    let png = fixtures_dir().join("camera_640x480").join("00000.png");
    let rgb = image::open(&png).unwrap().to_rgb8();
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    let meta = FrameMeta { camera: Arc::from("cam"), seq, capture_ns: seq as i64, frame_id: None };
    Frame::new(meta, FrameLayout::packed(PixelFormat::Rgb, w, h), Bytes::from(rgb.into_raw())).unwrap()
}

fn generator() -> AmgConfig {
    AmgConfig { points_per_side: Some(6), pred_iou_thresh: 0.0, stability_score_thresh: 0.0, ..AmgConfig::default() }
}

/// SAM 2.1 base_plus with the fixtures' seeded weights (tiny's find one mask on this frame).
fn sam2() -> ModelSpec {
    ModelSpec {
        name: "sam2.1_hiera_base_plus".into(),
        weights: WeightsSource::File(fixtures_dir().join("sam2_image_base_plus.weights.safetensors")),
        device: tch::Device::Cpu,
        dtype: DType::F32,
    }
}

fn labels(vocabulary: &[&str]) -> LabelerSpec {
    LabelerSpec {
        name: "discovery.labels".into(),
        model: ModelSpec {
            name: "ViT-B-32-quickgelu".into(),
            weights: WeightsSource::File(fixtures_dir().join("clip_b32.weights.safetensors")),
            device: tch::Device::Cpu,
            dtype: DType::F32,
        },
        vocabulary: vocabulary.iter().map(|c| (*c).to_owned()).collect(),
        templates: TEMPLATES.iter().map(|t| (*t).to_owned()).collect(),
        bpe: None,
        smoothing: 1.0,
        padding: 0.1,
        image_encoder: None,
    }
}

fn spec(query_threshold: f64, max_tracks: usize, keep: &[&str], vocabulary: Option<&[&str]>) -> DiscoverySpec {
    DiscoverySpec {
        name: "discovery".into(),
        model: sam2(),
        tracker: "tracker".into(),
        every: 100,
        motion: None,
        generator: generator(),
        limits: Limits {
            match_iou: 0.5,
            max_tracks,
            min_area: MIN_AREA,
            max_area: MAX_AREA,
            max_new: 16,
            remember: 150,
            first_id: 2000,
        },
        labels: vocabulary.map(labels),
        keep: keep.iter().map(|k| (*k).to_owned()).collect(),
        query_threshold,
    }
}

/// What the stage should find on the frame, computed apart from it.
struct Expected {
    masks: Vec<Vec<u8>>,
    /// Unit-norm MetaCLIP embeddings of the candidates' crops `[N, embed]`.
    features: tch::Tensor,
    /// MetaCLIP's class (of `vocabulary`) and probability per candidate.
    labels: Vec<(String, f32)>,
    /// Cosine similarity of each candidate's crop with the query ([`Expected::ask`]).
    similarity: Vec<f32>,
}

impl Expected {
    fn compute(vocabulary: &[&str]) -> Self {
        let f = frame(0);
        let (w, h) = (f.layout.width, f.layout.height);
        let rgb = f.layout.to_rgb8(&f.pixels).unwrap();
        let sam = sam2().load_with::<Sam2>(&Sam2Options { image_size: None }).unwrap();
        let mut predictor = ImagePredictor::new(&sam, tch::Device::Cpu);
        let found = AutomaticMaskGenerator::new(generator()).unwrap().generate(&mut predictor, &rgb, w, h).unwrap();
        let masks: Vec<Vec<u8>> = found.iter().map(|m| mask_to_bytes(&m.segmentation).unwrap()).collect();
        assert!(masks.len() >= 3, "the generator finds several objects on the frame ({})", masks.len());
        let mut labeler = Labeler::new(labels(vocabulary)).unwrap();
        let views: Vec<&[u8]> = masks.iter().map(Vec::as_slice).collect();
        let features = labeler.embed_masks(&rgb, (w, h), &views).unwrap(); // [N, embed]
        let labels = labeler.classify(&features).unwrap().into_iter().map(|(c, p)| (c.to_string(), p)).collect();
        Self { masks, features, labels, similarity: vec![] }
    }

    /// Sets the query and each candidate's similarity with it.
    fn ask(&mut self, query: &str, labeler: &mut Labeler) {
        let text = labeler.embed_texts(&[query.to_owned()]).unwrap(); // [embed, 1]
        self.similarity = Vec::<f32>::try_from(self.features.matmul(&text).view([-1])).unwrap();
    }

    fn area(&self, i: usize) -> u64 {
        self.masks[i].iter().filter(|&&m| m != 0).count() as u64
    }

    /// Whether candidate `i` is an object by its size.
    fn sized(&self, i: usize) -> bool {
        let area = self.area(i);
        area >= MIN_AREA && area as f64 <= MAX_AREA * self.masks[i].len() as f64
    }

    /// The candidate a query should choose: the most similar of those sized as objects.
    fn best(&self) -> usize {
        (0..self.masks.len())
            .filter(|&i| self.sized(i))
            .max_by(|&a, &b| self.similarity[a].total_cmp(&self.similarity[b]))
            .unwrap()
    }
}

/// A discovery stage and the channels around it.
struct Harness {
    stage: DiscoveryStage,
    queries: ControlSender<DiscoveryCommand>,
    tracker: ControlReceiver<TrackerCommand>,
}

impl Harness {
    fn new(spec: DiscoverySpec) -> Self {
        let (tracker_tx, tracker) = control_channel(32);
        let (queries, rx) = control_channel(8);
        let mut stage = DiscoveryStage::new(spec, tracker_tx, Some(rx));
        stage.start(&mut test_context().0).unwrap();
        Self { stage, queries, tracker }
    }

    /// Frame `seq` with `occluded` tracks the tracker lost sight of (ids 1, 2, ...): they count
    /// as tracked. Returns the candidates emitted (when the generator ran).
    fn step(&mut self, seq: u64, occluded: u32) -> Option<Vec<Track>> {
        let f = frame(seq);
        let (w, h) = (f.layout.width, f.layout.height);
        let tracks = Tracks {
            meta: f.meta.clone(),
            width: w as u32,
            height: h as u32,
            labels: Bytes::from(vec![0u8; 2 * w * h]),
            tracks: (1..=occluded)
                .map(|id| Track { id, bbox: None, score: 0.1, occluded: true, area: 0, label: None, origin: None })
                .collect(),
        };
        let (mut ctx, mut rx) = test_context();
        let input = Input { port: TRACKS_PORT, packet: Packet::Tracks(tracks), with: Some(Packet::Frame(f)) };
        self.stage.process(input, &mut ctx).unwrap();
        drop(ctx);
        match rx.pop() {
            Some(Packet::Candidates(c)) => Some(c.tracks),
            None => None,
            Some(other) => panic!("discovery emitted {other:?}"),
        }
    }

    fn ask(&self, id: u32, camera: Option<&str>, text: &str) -> Receiver<QueryAnswer> {
        let (reply, answer) = sync_channel(1);
        let command = DiscoveryCommand::Query { camera: camera.map(Arc::from), id, text: text.into(), reply };
        self.queries.send(command).unwrap();
        answer
    }

    /// The objects handed to the tracker since the last call: (id, origin, mask).
    fn handed(&self) -> Vec<(u32, TrackOrigin, Vec<u8>)> {
        self.tracker
            .drain()
            .into_iter()
            .map(|c| match c {
                TrackerCommand::Add { id, origin, prompt: FramePrompt::Mask { mask, .. }, .. } => {
                    (id, origin, mask.to_vec())
                }
                other => panic!("discovery sent {other:?}"),
            })
            .collect()
    }
}

/// The verdict part of a candidate's label (`<class>: <verdict>`), checking the class.
fn verdict<'a>(c: &'a Track, expected: &(String, f32)) -> &'a str {
    let label = c.label.as_ref().unwrap();
    let (class, verdict) = label.name.split_once(": ").unwrap_or_else(|| panic!("{:?}", label.name));
    assert_eq!(class, expected.0, "candidate {}: MetaCLIP class", c.id);
    assert!((label.score - expected.1).abs() <= TOLERANCE, "candidate {}: {} vs {}", c.id, label.score, expected.1);
    verdict
}

/// Two classes that MetaCLIP tells apart on these candidates: `(a, b)` where candidate 1 is
/// closer to `a` and another candidate (big enough) closer to `b`. Seeded weights embed every
/// crop much alike, so the classes are planted from a pool by the weights themselves.
fn planted_classes(expected: &Expected) -> (String, String) {
    let pool: Vec<String> = POOL.iter().map(|c| (*c).to_owned()).collect();
    let mut labeler = Labeler::new(labels(&POOL)).unwrap();
    let text = labeler.embed_texts(&pool).unwrap(); // [embed, P]
    let s = expected.features.matmul(&text); // [N, P]
    let sim = |i: usize, c: usize| s.double_value(&[i as i64, c as i64]);
    for a in 0..pool.len() {
        for b in 0..pool.len() {
            let split = (1..expected.masks.len()).any(|j| expected.area(j) >= MIN_AREA && sim(j, b) > sim(j, a));
            if a != b && sim(0, a) > sim(0, b) && split {
                return (pool[a].clone(), pool[b].clone());
            }
        }
    }
    panic!("no two classes of the pool tell the candidates apart");
}

#[test]
fn candidates_are_labelled_and_only_kept_classes_become_tracks() {
    let mut expected = Expected::compute(&["object"]);
    let (a, b) = planted_classes(&expected);
    let vocabulary = [a.as_str(), b.as_str()];
    let mut labeler = Labeler::new(labels(&vocabulary)).unwrap();
    expected.labels =
        labeler.classify(&expected.features).unwrap().into_iter().map(|(c, p)| (c.to_string(), p)).collect();
    // Candidate 1 (the best) is an `a`: keeping only `b` makes it "not kept" and some other a track.
    assert_eq!(expected.labels[0].0, a);
    // Every mask may become a track here, the one covering most of the frame included.
    let mut whole = spec(0.2, 16, &[b.as_str()], Some(&vocabulary));
    whole.limits.max_area = 1.0;
    let mut h = Harness::new(whole);
    let candidates = h.step(0, 0).expect("the first frame is due a run");
    assert_eq!(candidates.len(), expected.masks.len(), "the generator's candidates, one entry each");
    let handed = h.handed();
    let mut not_kept = 0;
    for (i, c) in candidates.iter().enumerate() {
        let v = verdict(c, &expected.labels[i]);
        let kept = expected.labels[i].0 == b;
        println!("candidate {} ({} px): {:?} → {v}", c.id, expected.area(i), expected.labels[i]);
        if let Some(id) = v.strip_prefix("new track ") {
            assert!(kept, "candidate {} is not a {b}, yet it became a track", c.id);
            let id: u32 = id.parse().unwrap();
            let (_, origin, mask) = handed.iter().find(|(h, _, _)| *h == id).expect("handed to the tracker");
            assert_eq!(*origin, TrackOrigin::Discovery);
            assert_eq!(mask, &expected.masks[i], "candidate {}'s mask is the prompt", c.id);
        } else if v == "not kept" {
            assert!(!kept && expected.area(i) >= MIN_AREA, "candidate {} ({v})", c.id);
            not_kept += 1;
        } else if let Some(id) = v.strip_prefix("track ") {
            // The same object as one handed over in this run (IoU ≥ match_iou).
            let id: u32 = id.parse().unwrap();
            assert!(kept && handed.iter().any(|(h, _, _)| *h == id), "candidate {}: {v}", c.id);
        } else {
            assert!(["too small", "duplicate"].contains(&v), "candidate {}: {v}", c.id);
        }
    }
    let new = candidates.iter().filter(|c| c.label.as_ref().unwrap().name.contains("new track")).count();
    assert_eq!(handed.len(), new);
    assert!(new >= 1 && not_kept >= 1, "both sides of the filter: {new} tracks, {not_kept} not kept");
    println!("vocabulary {vocabulary:?}, keep [{b:?}]: {new} tracks, {not_kept} not kept");
}

#[test]
fn text_queries_pick_the_closest_candidate_or_say_why_not() {
    let mut expected = Expected::compute(&VOCABULARY);
    // The query: the first phrase of the pool whose closest candidate is not the first one of
    // object size (so that ranking, not order, decides).
    let mut labeler = Labeler::new(labels(&VOCABULARY)).unwrap();
    let phrase = POOL
        .iter()
        .map(|c| format!("a photo of the {c}"))
        .find(|q| {
            expected.ask(q, &mut labeler);
            expected.best() != (0..expected.masks.len()).find(|&i| expected.sized(i)).unwrap()
        })
        .expect("a phrase of the pool whose closest candidate is not the first one");
    let q = phrase.as_str();
    let best = expected.best();
    println!("similarities to {q:?}: {:?}; best candidate {}", expected.similarity, best + 1);

    // Two objects tracked (lost from sight) of max_tracks 2: the run hands nothing over, and
    // the query that chose a candidate is refused for the limit.
    let mut h = Harness::new(spec(-1.0, 2, &[], Some(&VOCABULARY)));
    let first = h.ask(1000, Some("cam"), q);
    let candidates = h.step(0, 2).unwrap();
    assert!(candidates.iter().all(|c| {
        let v = verdict(c, &expected.labels[c.id as usize - 1]);
        ["over the limit", "too small", "too large", "duplicate"].contains(&v)
    }));
    assert!(h.handed().is_empty());
    let why = first.try_recv().unwrap().unwrap_err();
    assert!(why.contains("max_tracks"), "{why}");

    // One track lost for good: room for one more. The query (no camera: the one with a frame)
    // chooses from frame 0's run, without running again.
    let second = h.ask(1000, None, q);
    assert!(h.step(1, 1).is_none(), "no run is due: the query uses the latest one");
    let m: QueryMatch = second.try_recv().unwrap().unwrap();
    println!("{m:?}");
    assert_eq!((m.id, m.already_tracked, m.seq, &*m.camera), (1000, false, 0, "cam"));
    assert_eq!(m.candidate as usize, best + 1, "the candidate whose crop is closest to the query");
    assert!((m.similarity - expected.similarity[best]).abs() <= TOLERANCE);
    let (class, p) = m.label.clone().unwrap();
    assert_eq!((class.to_string(), p), expected.labels[best].clone());
    let handed = h.handed();
    assert_eq!(handed.len(), 1);
    assert_eq!((handed[0].0, handed[0].1), (1000, TrackOrigin::Query));
    assert_eq!(handed[0].2, expected.masks[best], "the chosen candidate's mask is the prompt");

    // Asked again: it is tracked already.
    let third = h.ask(1001, Some("cam"), q);
    h.step(2, 1);
    let again = third.try_recv().unwrap().unwrap();
    assert_eq!((again.id, again.already_tracked, again.candidate), (1000, true, m.candidate));
    assert!(h.handed().is_empty());

    // A camera that never sends a frame: the query waits, and is answered when the stage stops.
    let elsewhere = h.ask(1002, Some("garden"), q);
    h.step(3, 1);
    assert!(elsewhere.try_recv().is_err(), "waits for a frame of its camera");
    h.stage.stop(&mut test_context().0).unwrap();
    assert!(elsewhere.try_recv().unwrap().unwrap_err().contains("stopped"));

    // A threshold nothing reaches: refused, naming the closest object and its similarity.
    let mut strict = Harness::new(spec(1.0, 2, &[], Some(&VOCABULARY)));
    let answer = strict.ask(1000, Some("cam"), q);
    strict.step(0, 2);
    let why = answer.try_recv().unwrap().unwrap_err();
    println!("{why}");
    assert!(why.contains("below the threshold 1.00"), "{why}");
    assert!(why.contains(&format!("candidate {} of frame 0", best + 1)), "{why}");
    assert!(why.contains(&format!("similarity {:.3}", expected.similarity[best])), "{why}");
    assert!(strict.handed().is_empty());

    // Without MetaCLIP there is nothing to compare text with (SAM 2 tiny: the masks do not matter).
    let tiny = ModelSpec {
        name: "sam2.1_hiera_tiny".into(),
        weights: WeightsSource::File(fixtures_dir().join("sam2_video_tiny.weights.safetensors")),
        ..sam2()
    };
    let mut blind = Harness::new(DiscoverySpec { model: tiny, ..spec(0.2, 16, &[], None) });
    let answer = blind.ask(1000, Some("cam"), q);
    blind.step(0, 0);
    let why = answer.try_recv().unwrap().unwrap_err();
    assert!(why.contains("no MetaCLIP model"), "{why}");
}
