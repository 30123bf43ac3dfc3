//! `ocellus weights fetch | list` against a server on loopback that serves files in the
//! Hugging Face Hub's layout and URL scheme (`/<repo>/resolve/main/<file>`, ETag and
//! `X-Repo-Commit` headers, range requests) and at publisher-style URLs; the files are
//! checkpoints written by the official code with seeded weights (the golden fixtures). Each
//! case checks the message and that nothing half-written is left as if complete: a fetch,
//! resume after a cut connection, a wrong checksum, a 401 for a gated repository without a
//! token, a 404, a file-size limit (a full disk), and offline mode.
#![allow(clippy::unwrap_used)] // tests may unwrap, helpers included

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

const TOKEN: &str = "hf_test_token";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn fixtures() -> PathBuf {
    let dir = PathBuf::from(std::env::var_os("OCELLUS_FIXTURES").expect("OCELLUS_FIXTURES: run `make test`"));
    assert!(dir.join(".complete").exists(), "incomplete fixtures in {}", dir.display());
    dir
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A file the server serves.
struct Served {
    body: Arc<Vec<u8>>,
    etag: String,
    gated: bool,
}

/// The loopback server: files by path, an optional cut of the next large response halfway,
/// and the `Range` headers it was asked for.
#[derive(Clone)]
struct Server {
    url: String,
    files: Arc<Mutex<HashMap<String, Served>>>,
    cut_next: Arc<AtomicBool>,
    ranges: Arc<Mutex<Vec<(String, String)>>>,
}

impl Server {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let server = Self {
            url: format!("http://{}", listener.local_addr().unwrap()),
            files: Arc::default(),
            cut_next: Arc::default(),
            ranges: Arc::default(),
        };
        let s = server.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || s.handle(stream));
            }
        });
        server
    }

    fn serve(&self, path: &str, body: Vec<u8>, gated: bool) {
        let etag = sha256(&body);
        self.files.lock().unwrap().insert(path.to_owned(), Served { body: Arc::new(body), etag, gated });
    }

    fn serve_with_etag(&self, path: &str, body: Vec<u8>, etag: &str) {
        self.files
            .lock()
            .unwrap()
            .insert(path.to_owned(), Served { body: Arc::new(body), etag: etag.into(), gated: false });
    }

    fn handle(&self, mut stream: TcpStream) {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        if reader.read_line(&mut line).is_err() {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
        }
        let files = self.files.lock().unwrap();
        let Some(file) = files.get(path.split('?').next().unwrap_or_default()) else {
            let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\nX-Error-Code: EntryNotFound\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found");
            return;
        };
        if file.gated && headers.get("authorization").map(String::as_str) != Some(&format!("Bearer {TOKEN}")) {
            let _ = stream.write_all(b"HTTP/1.1 401 Unauthorized\r\nX-Error-Code: GatedRepo\r\nContent-Length: 5\r\nConnection: close\r\n\r\ngated");
            return;
        }
        let size = file.body.len();
        let (start, end, partial) = match headers.get("range") {
            Some(r) => {
                self.ranges.lock().unwrap().push((path.clone(), r.clone()));
                let spec = r.trim_start_matches("bytes=");
                let (a, b) = spec.split_once('-').unwrap_or((spec, ""));
                let a: usize = a.parse().unwrap_or(0);
                let b: usize = b.parse().map_or(size - 1, |b: usize| b.min(size - 1));
                if a >= size {
                    let _ = write!(
                        stream,
                        "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{size}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    );
                    return;
                }
                (a, b, true)
            }
            None => (0, size - 1, false),
        };
        let len = end + 1 - start;
        let status = if partial { "206 Partial Content" } else { "200 OK" };
        let _ = write!(
            stream,
            "HTTP/1.1 {status}\r\nContent-Length: {len}\r\nContent-Range: bytes {start}-{end}/{size}\r\n\
             ETag: \"{}\"\r\nX-Repo-Commit: {COMMIT}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n",
            file.etag
        );
        let body = &file.body[start..=end];
        if len > 4096 && self.cut_next.swap(false, Ordering::SeqCst) {
            let _ = stream.write_all(&body[..len / 2]);
            let _ = stream.flush();
            let _ = stream.shutdown(std::net::Shutdown::Both);
            return;
        }
        let _ = stream.write_all(body);
    }
}

/// `ocellus weights ...` with the server as the Hub and as the publishers' mirror, the caches
/// in `dir`, and `env` on top.
fn ocellus(server: &Server, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ocellus"));
    c.args(args)
        .current_dir(dir)
        .env("HF_ENDPOINT", &server.url)
        .env("HF_HOME", dir.join("hf"))
        .env("OCELLUS_CACHE", dir.join("cache"))
        .env("OCELLUS_MIRROR", &server.url)
        .env_remove("HF_TOKEN")
        .env_remove("HF_HUB_OFFLINE")
        .env("RUST_LOG", "warn");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn manifest(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path.with_extension("manifest.json")).unwrap()).unwrap()
}

/// Files under `dir` whose name ends with `suffix`.
fn files_ending(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().ends_with(suffix) {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn fetches_a_publishers_file_resuming_a_cut_download() {
    let server = Server::start();
    let dir = scratch("fetch_url");
    let pth = std::fs::read(fixtures().join("hiera_tiny_224.pth")).unwrap();
    server.serve("/hiera/hiera_tiny_224.pth", pth.clone(), false);
    server.cut_next.store(true, Ordering::SeqCst);
    let out = dir.join("weights/hiera_tiny_224.safetensors");

    let first = ocellus(&server, &dir, &["weights", "fetch", "--quiet", "hiera_tiny_224"], &[]);
    assert!(!first.status.success());
    let err = stderr(&first);
    assert!(err.contains("connection broke") && err.contains("resumes"), "{err}");
    let part = dir.join("cache/downloads/hiera_tiny_224.pth.part");
    let kept = std::fs::metadata(&part).unwrap().len();
    assert!(kept > 0 && (kept as usize) < pth.len(), "the partial download is kept ({kept} bytes)");
    assert!(!dir.join("cache/downloads/hiera_tiny_224.pth").exists() && !out.exists(), "nothing as if complete");

    let second = ocellus(&server, &dir, &["weights", "fetch", "--quiet", "hiera_tiny_224"], &[]);
    assert!(second.status.success(), "{}", stderr(&second));
    let ranges = server.ranges.lock().unwrap().clone();
    assert!(ranges.iter().any(|(p, r)| p.ends_with(".pth") && *r == format!("bytes={kept}-")), "resumed: {ranges:?}");
    let m = manifest(&out);
    assert_eq!(m["model"], "hiera_tiny_224");
    let source = m["source"].as_str().unwrap();
    assert!(source.contains(&format!("sha256={}", sha256(&pth))), "{source}");
    assert!(source.contains("https://dl.fbaipublicfiles.com/hiera/hiera_tiny_224.pth"), "{source}");
    assert!(!part.exists());

    // Present now: listed, and not fetched again.
    let list = ocellus(&server, &dir, &["weights", "list"], &[]);
    let text = String::from_utf8_lossy(&list.stdout);
    let row = text.lines().find(|l| l.starts_with("hiera_tiny_224 ")).unwrap();
    assert!(row.contains("yes") && row.contains("CC-BY-NC-4.0") && row.contains("dl.fbaipublicfiles.com"), "{row}");
    assert!(text.lines().any(|l| l.starts_with("llama-3.2-1b-instruct ") && l.contains("gated")), "{text}");
    let again = ocellus(&server, &dir, &["weights", "fetch", "--quiet", "hiera_tiny_224"], &[]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("is there"));
}

#[test]
fn fetches_from_the_hub_then_works_offline_from_its_cache() {
    let server = Server::start();
    let dir = scratch("fetch_hub");
    let pt = std::fs::read(fixtures().join("hieradet_tiny_1024.pt")).unwrap();
    server.serve("/facebook/sam2.1-hiera-tiny/resolve/main/sam2.1_hiera_tiny.pt", pt.clone(), false);

    // Offline with an empty cache: a clear refusal.
    let offline =
        ocellus(&server, &dir, &["weights", "fetch", "--quiet", "sam2.1_hiera_tiny"], &[("HF_HUB_OFFLINE", "1")]);
    assert!(!offline.status.success());
    let err = stderr(&offline);
    assert!(err.contains("offline") && err.contains("not in the Hugging Face cache"), "{err}");

    // A cut connection: nothing in the cache as if complete; the next fetch completes it.
    server.cut_next.store(true, Ordering::SeqCst);
    let cut = ocellus(&server, &dir, &["weights", "fetch", "--quiet", "sam2.1_hiera_tiny"], &[]);
    assert!(!cut.status.success(), "a cut download fails");
    let snapshot =
        dir.join(format!("hf/hub/models--facebook--sam2.1-hiera-tiny/snapshots/{COMMIT}/sam2.1_hiera_tiny.pt"));
    assert!(!snapshot.exists(), "no half-written file in the cache");
    let ok = ocellus(&server, &dir, &["weights", "fetch", "--quiet", "sam2.1_hiera_tiny"], &[]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert_eq!(std::fs::read(&snapshot).unwrap(), pt, "the hub's layout, the whole file");
    let out = dir.join("weights/sam2.1_hiera_tiny.safetensors");
    assert!(manifest(&out)["source"].as_str().unwrap().contains(&sha256(&pt)));

    // Offline again, server or not: from the cache.
    let offline = ocellus(
        &server,
        &dir,
        &["weights", "fetch", "--quiet", "--force", "--dir", "again", "sam2.1_hiera_tiny"],
        &[("HF_HUB_OFFLINE", "1"), ("HF_ENDPOINT", "http://127.0.0.1:9")],
    );
    assert!(offline.status.success(), "{}", stderr(&offline));
    assert!(dir.join("again/sam2.1_hiera_tiny.safetensors").exists());
}

#[test]
fn refusals_say_why_and_leave_nothing_as_if_complete() {
    let server = Server::start();
    let dir = scratch("fetch_refusals");

    // A gated repository without a token: 401, and what to do.
    server.serve("/meta-llama/Llama-3.2-1B-Instruct/resolve/main/config.json", b"{}".to_vec(), true);
    let gated = ocellus(&server, &dir, &["weights", "fetch", "--quiet", "llama-3.2-1b-instruct"], &[]);
    assert!(!gated.status.success());
    let err = stderr(&gated);
    assert!(err.contains("401") && err.contains("gated") && err.contains("HF_TOKEN"), "{err}");
    // With the token the gate opens (the next file is then missing: a 404).
    let with_token =
        ocellus(&server, &dir, &["weights", "fetch", "--quiet", "llama-3.2-1b-instruct"], &[("HF_TOKEN", TOKEN)]);
    let err = stderr(&with_token);
    assert!(err.contains("model.safetensors") && err.contains("not found"), "{err}");

    // A 404.
    let missing = ocellus(&server, &dir, &["weights", "fetch", "--quiet", "ViT-B-32-quickgelu"], &[]);
    let err = stderr(&missing);
    assert!(!missing.status.success() && err.contains("not found"), "{err}");

    // A wrong checksum: the Hub's ETag (the file's SHA-256) does not match what arrived.
    let pt = std::fs::read(fixtures().join("hieradet_tiny_1024.pt")).unwrap();
    server.serve_with_etag("/facebook/sam2.1-hiera-small/resolve/main/sam2.1_hiera_small.pt", pt, &"ab".repeat(32));
    let wrong = ocellus(&server, &dir, &["weights", "fetch", "--quiet", "sam2.1_hiera_small"], &[]);
    let err = stderr(&wrong);
    assert!(!wrong.status.success() && err.contains("checksum mismatch") && err.contains("removed"), "{err}");
    assert!(files_ending(&dir.join("hf"), &"ab".repeat(32)).is_empty(), "the bad blob is removed");
    assert!(!dir.join("weights/sam2.1_hiera_small.safetensors").exists());

    // A wrong checksum at a publisher's URL.
    let pth = std::fs::read(fixtures().join("hiera_tiny_224.pth")).unwrap();
    server.serve("/hiera/hiera_small_224.pth", pth.clone(), false);
    let downloads = dir.join("downloads");
    let err = ocellus_pipelines::fetch::download_to(
        &format!("{}/hiera/hiera_small_224.pth", server.url),
        Some(&"cd".repeat(32)),
        false,
        &downloads,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("checksum mismatch") && err.contains(&sha256(&pth)), "{err}");
    assert!(!downloads.join("hiera_small_224.pth").exists(), "removed");
    // And the right one.
    let ok = ocellus_pipelines::fetch::download_to(
        &format!("{}/hiera/hiera_small_224.pth", server.url),
        Some(&sha256(&pth)),
        false,
        &downloads,
    )
    .unwrap();
    assert_eq!(std::fs::read(ok).unwrap(), pth);

    // An unknown name: refused before anything is downloaded.
    let unknown = ocellus(&server, &dir, &["weights", "fetch", "hiera_tiny_224", "sam3"], &[]);
    let err = stderr(&unknown);
    assert!(err.contains("no published checkpoint known for \"sam3\""), "{err}");
    assert!(!dir.join("cache/downloads/hiera_tiny_224.pth").exists());
}

/// A full disk, as a file-size limit on the process: a clear error, the partial download
/// kept for resuming, nothing at the final name.
#[test]
fn a_full_disk_fails_clearly_and_keeps_the_partial_download() {
    let server = Server::start();
    let dir = scratch("fetch_full");
    let pth = std::fs::read(fixtures().join("hiera_tiny_224.pth")).unwrap();
    server.serve("/hiera/hiera_tiny_224.pth", pth, false);
    let script = format!(
        "trap '' XFSZ; ulimit -f 1024; exec {} weights fetch --quiet hiera_tiny_224",
        env!("CARGO_BIN_EXE_ocellus")
    );
    let mut c = Command::new("sh");
    c.args(["-c", &script])
        .current_dir(&dir)
        .env("OCELLUS_CACHE", dir.join("cache"))
        .env("OCELLUS_MIRROR", &server.url)
        .env("RUST_LOG", "warn");
    let out = c.output().unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("writing") && err.contains("File too large") && err.contains("resumes"), "{err}");
    assert!(dir.join("cache/downloads/hiera_tiny_224.pth.part").exists());
    assert!(!dir.join("cache/downloads/hiera_tiny_224.pth").exists());
    assert!(!dir.join("weights/hiera_tiny_224.safetensors").exists());
}

/// A JPEG of `w`×`h` (a gradient), as a camera would write one.
fn jpeg(w: u32, h: u32, seed: u8) -> Vec<u8> {
    let rgb: Vec<u8> = (0..w * h).flat_map(|i| [(i % w) as u8, (i / w) as u8, seed]).collect();
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .encode(&rgb, w, h, image::ExtendedColorType::Rgb8)
        .unwrap();
    out
}

/// `weights = "official"` and a sample source: when they cannot be had, `ocellus run` runs on
/// seeded weights and the fallback source, never failing, and says so in a banner and in the
/// recording (a `notices` text and its view); once they are served, it fetches both (once),
/// converts the checkpoint into `weights/`, and runs on them with nothing to say.
#[test]
fn run_fetches_official_weights_and_the_sample_else_runs_seeded_and_says_so() {
    const FRAMES: usize = 3;
    let server = Server::start();
    let dir = scratch("run_official");
    std::fs::write(
        dir.join("demo.toml"),
        format!(
            r#"
[[source]]
name = "front"
preset = {{ kind = "sample", name = "sam2-bedroom", frames = {FRAMES}, fallback = {{ kind = "test_pattern", width = 64, height = 48, frames = {FRAMES} }} }}

[[actor]]
name = "features"
kind = "backbone"
model = "hiera_tiny_224"
weights = "official"
allow_random_weights = true
inputs = ["front"]
edge = {{ policy = "block" }}

[[sink]]
kind = "rerun"
inputs = ["front"]
edge = {{ policy = "block", depth = 16 }}
save = "out/run.rrd"
"#
        ),
    )
    .unwrap();
    let rrd = dir.join("out/run.rrd");
    let image_sizes = |rrd: &Path| -> Vec<usize> {
        let component = rerun::Image::descriptor_buffer().component;
        ocellus_io::recording::buffers_of(rrd, "world/front/image", component).unwrap().values().map(Vec::len).collect()
    };

    // Nothing served.
    let offline = ocellus(&server, &dir, &["run", "demo.toml"], &[]);
    let err = stderr(&offline);
    assert!(offline.status.success(), "{err}");
    assert!(err.contains("NOTICE: this run substitutes"), "{err}");
    assert!(
        err.contains("hiera_tiny_224: SEEDED RANDOM WEIGHTS (seed 0)") && err.contains("(actor[0].weights)"),
        "{err}"
    );
    assert!(err.contains("the sam2-bedroom sample could not be had"), "{err}");
    let notices = ocellus_io::recording::static_texts_of(&rrd, "notices").unwrap().join("\n");
    assert!(notices.contains("SEEDED RANDOM WEIGHTS") && notices.contains("sam2-bedroom"), "{notices}");
    let views = ocellus_io::recording::blueprint_views(&rrd).unwrap();
    assert!(views.iter().any(|v| v.name == "notices" && v.origin == "notices"), "{views:?}");
    assert_eq!(image_sizes(&rrd), vec![64 * 48 * 3; FRAMES], "the fallback test pattern ran");
    assert!(!dir.join("weights/hiera_tiny_224.safetensors").exists());

    // Served: the publisher's checkpoint and the sample's frames (under the published paths).
    server.serve("/hiera/hiera_tiny_224.pth", std::fs::read(fixtures().join("hiera_tiny_224.pth")).unwrap(), false);
    for i in 0..FRAMES {
        let path = format!("/facebookresearch/sam2/main/notebooks/videos/bedroom/{i:05}.jpg");
        server.serve(&path, jpeg(96, 64, i as u8), false);
    }
    let online = ocellus(&server, &dir, &["run", "demo.toml"], &[]);
    let err = stderr(&online);
    assert!(online.status.success(), "{err}");
    assert!(!err.contains("NOTICE"), "{err}");
    let weights = dir.join("weights/hiera_tiny_224.safetensors");
    assert!(manifest(&weights)["source"].as_str().unwrap().starts_with("fetch "), "{}", manifest(&weights));
    assert!(ocellus_io::recording::static_texts_of(&rrd, "notices").unwrap().is_empty());
    assert!(!ocellus_io::recording::blueprint_views(&rrd).unwrap().iter().any(|v| v.name == "notices"));
    assert_eq!(image_sizes(&rrd), vec![96 * 64 * 3; FRAMES], "the sample's frames ran");
    let frames = files_ending(&dir.join("cache/samples/sam2-bedroom"), ".jpg");
    assert_eq!(frames.len(), FRAMES);

    // Once: with the server gone, the next run takes both from where they were put.
    drop(server.files.lock().unwrap().drain());
    let again = ocellus(&server, &dir, &["run", "demo.toml"], &[]);
    assert!(again.status.success() && !stderr(&again).contains("NOTICE"), "{}", stderr(&again));
    assert_eq!(image_sizes(&rrd), vec![96 * 64 * 3; FRAMES]);

    // Without `allow_random_weights`, what cannot be had is an error naming the key and line.
    let strict = std::fs::read_to_string(dir.join("demo.toml")).unwrap().replace("allow_random_weights = true\n", "");
    std::fs::write(dir.join("strict.toml"), strict).unwrap();
    std::fs::remove_file(&weights).unwrap();
    std::fs::remove_dir_all(dir.join("cache/downloads")).unwrap();
    let refused = ocellus(&server, &dir, &["run", "strict.toml"], &[]);
    let err = stderr(&refused);
    assert!(!refused.status.success(), "{err}");
    assert!(err.contains(":10:") && err.contains("actor[0].weights: the official hiera_tiny_224 weights:"), "{err}");
}
