//! `ocellus curate`: a MetaCLIP-balanced subset of frames and captions from `.rrd` recordings.
//!
//! Captions come from text entities whose path ends in `caption` (`agent/caption`,
//! `world/<camera>/caption`; `TextLog` or `TextDocument`), paired with the image of the same
//! `frame` on that camera (`world/<camera>/image`; a caption outside `world/` pairs with every
//! camera's image of that frame), and/or from a sidecar JSONL file (`{"recording": "a.rrd",
//! "camera": "front", "frame": 12, "text": "..."}`, `recording` optional). The pool is matched
//! against the metadata and balanced (`ocellus_perception::clip::curation`); a second pass
//! over the recordings writes the selected frames as PNG and `curated.jsonl` (one line per
//! pair: recording, camera, frame, caption, image path, matched entries), plus
//! `entry_counts.json`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use ocellus_io::recording;
use ocellus_perception::clip::curation::{Metadata, balance};
use rerun::components::Text;

/// `ocellus curate` options.
#[derive(Debug, Clone, clap::Args)]
pub struct CurateArgs {
    /// Recordings to read.
    #[arg(required = true)]
    pub recordings: Vec<PathBuf>,
    /// Metadata: one entry per line, or a JSON array (MetaCLIP's `metadata.json`).
    #[arg(long)]
    pub metadata: PathBuf,
    /// Threshold t: entries matched more often are sampled down to about t pairs.
    #[arg(long, default_value_t = ocellus_perception::clip::curation::T_400M)]
    pub t: u64,
    /// Seed of the sampling draws.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Extra captions (JSONL: recording?, camera, frame, text).
    #[arg(long)]
    pub captions: Option<PathBuf>,
    /// Output folder.
    #[arg(long, short)]
    pub out: PathBuf,
}

/// One (frame, caption) pair of the pool.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Pair {
    recording: usize,
    camera: String,
    frame: i64,
    caption: String,
}

/// A caption as read, before pairing with frames.
struct Caption {
    camera: Option<String>,
    frame: i64,
    text: String,
}

fn progress(
    path: &Path,
    pass: &str,
) -> anyhow::Result<(ProgressBar, std::io::BufReader<indicatif::ProgressBarIter<std::fs::File>>)> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let bar = ProgressBar::new(file.metadata()?.len());
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} ({eta})")
            .context("progress template")?
            .progress_chars("=> "),
    );
    bar.set_message(format!("{pass} {}", path.display()));
    let reader = std::io::BufReader::new(bar.wrap_read(file));
    Ok((bar, reader))
}

/// The (camera, frame) of every image of a recording.
type ImageIndex = HashSet<(String, i64)>;

/// First pass: captions and the (camera, frame) of every image.
fn scan(path: &Path) -> anyhow::Result<(Vec<Caption>, ImageIndex)> {
    let (bar, reader) = progress(path, "scan")?;
    let (mut captions, mut images) = (Vec::new(), HashSet::new());
    let text_components =
        [rerun::TextLog::descriptor_text().component, rerun::TextDocument::descriptor_text().component];
    for chunk in recording::chunks_from(reader, path) {
        let chunk = chunk?;
        let entity = recording::entity_of(&chunk);
        let frames = recording::times(&chunk, recording::TIMELINE_FRAME).unwrap_or_default();
        if entity.ends_with("caption") {
            let camera = recording::camera_of(&entity).map(str::to_owned);
            for component in text_components {
                for (row, texts) in chunk.iter_component::<Text>(component).enumerate() {
                    let (Some(frame), Some(text)) = (frames.get(row), texts.first()) else { continue };
                    captions.push(Caption { camera: camera.clone(), frame: *frame, text: text.as_str().to_owned() });
                }
            }
        } else if let Some(camera) = recording::camera_of_image(&entity) {
            images.extend(frames.iter().map(|f| (camera.to_owned(), *f)));
        }
    }
    bar.finish_and_clear();
    Ok((captions, images))
}

/// Second pass: writes the images of `wanted` (camera, frame) → file name.
fn write_frames(path: &Path, wanted: &HashMap<(String, i64), PathBuf>) -> anyhow::Result<usize> {
    let (bar, reader) = progress(path, "write")?;
    let (mut written, mut skipped) = (0, 0);
    for chunk in recording::chunks_from(reader, path) {
        let chunk = chunk?;
        let entity = recording::entity_of(&chunk);
        let Some(camera) = recording::camera_of_image(&entity) else { continue };
        for image in recording::images_of(&chunk, &mut skipped) {
            let Some(out) = i64::try_from(image.seq).ok().and_then(|f| wanted.get(&(camera.to_owned(), f))) else {
                continue;
            };
            let rgb = image.layout.to_rgb8(&image.pixels)?;
            let (w, h) = (image.layout.width as u32, image.layout.height as u32);
            let img = image::RgbImage::from_raw(w, h, rgb).context("image size")?;
            img.save(out).with_context(|| format!("writing {}", out.display()))?;
            written += 1;
        }
    }
    if skipped > 0 {
        tracing::warn!(skipped, recording = %path.display(), "images not written (not 8-bit RGB, BGR, L or NV12)");
    }
    bar.finish_and_clear();
    Ok(written)
}

fn sidecar(path: &Path, recordings: &[PathBuf]) -> anyhow::Result<Vec<(usize, Caption)>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("{}:{}: not JSON", path.display(), n + 1))?;
        let field = |k: &str| v.get(k).with_context(|| format!("{}:{}: missing `{k}`", path.display(), n + 1));
        let text = field("text")?.as_str().context("`text` is a string")?.to_owned();
        let frame = field("frame")?.as_i64().context("`frame` is an integer")?;
        let camera = field("camera")?.as_str().context("`camera` is a string")?.to_owned();
        let recs: Vec<usize> = match v.get("recording").and_then(|r| r.as_str()) {
            Some(r) => recordings.iter().enumerate().filter(|(_, p)| p.ends_with(r)).map(|(i, _)| i).collect(),
            None => (0..recordings.len()).collect(),
        };
        out.extend(recs.into_iter().map(|i| (i, Caption { camera: Some(camera.clone()), frame, text: text.clone() })));
    }
    Ok(out)
}

/// Runs `ocellus curate`.
pub fn run(args: &CurateArgs) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(&args.metadata).with_context(|| format!("reading {}", args.metadata.display()))?;
    let metadata = Metadata::parse(&text)?;
    anyhow::ensure!(args.t > 0, "--t must be positive");
    let extra = match &args.captions {
        Some(path) => sidecar(path, &args.recordings)?,
        None => Vec::new(),
    };
    // Pool: every caption paired with each image of its frame, in recording, camera, frame order.
    let mut pool = Vec::new();
    for (r, path) in args.recordings.iter().enumerate() {
        let (captions, images) = scan(path)?;
        let cameras: Vec<String> =
            images.iter().map(|(c, _)| c.clone()).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
        let extra = extra.iter().filter(|(i, _)| *i == r).map(|(_, c)| c);
        for c in captions.iter().chain(extra) {
            for camera in cameras.iter().filter(|cam| c.camera.as_ref().is_none_or(|x| x == *cam)) {
                if images.contains(&(camera.clone(), c.frame)) {
                    pool.push(Pair { recording: r, camera: camera.clone(), frame: c.frame, caption: c.text.clone() });
                }
            }
        }
    }
    pool.sort();
    pool.dedup();
    let matched: Vec<Vec<usize>> = pool.iter().map(|p| metadata.matches(&p.caption)).collect();
    let curation = balance(matched, metadata.entries().len(), args.t, args.seed);
    std::fs::create_dir_all(args.out.join("frames"))?;
    let mut wanted: BTreeMap<usize, HashMap<(String, i64), PathBuf>> = BTreeMap::new();
    let mut lines = std::io::BufWriter::new(std::fs::File::create(args.out.join("curated.jsonl"))?);
    for &k in &curation.selected {
        let Some(p) = pool.get(k) else { continue };
        let stem = args
            .recordings
            .get(p.recording)
            .and_then(|r| r.file_stem())
            .map_or_else(|| format!("rec{}", p.recording), |s| s.to_string_lossy().into_owned());
        let name = format!("frames/{stem}-{}-{:06}.png", p.camera, p.frame);
        wanted.entry(p.recording).or_default().insert((p.camera.clone(), p.frame), args.out.join(&name));
        let entries: Vec<&str> =
            curation.matched[k].iter().filter_map(|&e| metadata.entries().get(e)).map(String::as_str).collect();
        let line = serde_json::json!({
            "recording": args.recordings[p.recording].display().to_string(),
            "camera": p.camera, "frame": p.frame, "caption": p.caption, "image": name, "matched": entries,
        });
        writeln!(lines, "{line}")?;
    }
    lines.flush()?;
    let counts: BTreeMap<&str, u64> = metadata
        .entries()
        .iter()
        .map(String::as_str)
        .zip(curation.counts.iter().copied())
        .filter(|(_, c)| *c > 0)
        .collect();
    std::fs::write(args.out.join("entry_counts.json"), serde_json::to_string_pretty(&counts)?)?;
    let mut written = 0;
    for (r, frames) in &wanted {
        written += write_frames(&args.recordings[*r], frames)?;
    }
    let unmatched = curation.matched.iter().filter(|m| m.is_empty()).count();
    println!(
        "{} pairs in the pool ({unmatched} match no entry), {} selected (t = {}), {written} frames written to {}",
        pool.len(),
        curation.selected.len(),
        args.t,
        args.out.display()
    );
    Ok(())
}
