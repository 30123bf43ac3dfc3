//! `ocellus weights fetch | list`: the official checkpoints from where their authors publish
//! them, converted and checked as `ocellus weights import` does.
//!
//! Hugging Face-hosted files go through `hf-hub` (its cache and layout; `HF_ENDPOINT`,
//! `HF_HOME`, `HF_TOKEN` for gated repositories, `HF_HUB_OFFLINE=1` for the cache alone).
//! Files published at a plain URL are downloaded with `ureq` into
//! `$OCELLUS_CACHE/downloads` (default `~/.cache/ocellus`): a partial download is kept as
//! `<file>.part` and resumed with an HTTP range request, a published SHA-256 is checked, and
//! nothing reaches its final name before it is complete. `OCELLUS_MIRROR` replaces the scheme
//! and host of those URLs (a local mirror; the tests' server). Each fetch records the
//! downloaded file's SHA-256 in the manifest.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use ocellus_perception::weights::{self, Manifest};

/// Where a model's checkpoint is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Files of a Hugging Face model repository (the first is the checkpoint, or all of them
    /// together a Hugging Face folder).
    Hub {
        /// `owner/name`.
        repo: &'static str,
        /// Files to download.
        files: &'static [&'static str],
        /// Whether the repository is gated (its licence accepted on the Hub, then `HF_TOKEN`).
        gated: bool,
    },
    /// A file at a URL, or a member of the `.tar.gz` archive there.
    Url {
        /// The URL.
        url: &'static str,
        /// The publisher's SHA-256 of the file at the URL, when given.
        sha256: Option<&'static str>,
        /// The checkpoint's path inside the archive.
        member: Option<&'static str>,
    },
}

/// A file fetched beside a model (e.g. LART's pose statistics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Companion {
    /// Its URL.
    pub url: &'static str,
    /// Saved as `<weights stem>.<suffix>`.
    pub suffix: &'static str,
}

/// A model `ocellus weights fetch` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Known {
    /// The model name (as `import` and the configurations take it).
    pub name: &'static str,
    /// Where it is published.
    pub source: Source,
    /// The licence of the weights.
    pub licence: &'static str,
    /// Files fetched with it.
    pub companions: &'static [Companion],
}

const SAM2_LICENCE: &str = "Apache-2.0";
const HIERA_LICENCE: &str = "CC-BY-NC-4.0";
const METACLIP_LICENCE: &str = "CC-BY-NC-4.0";
const MAWS_LICENCE: &str = "CC-BY-NC-4.0";
const LLAMA_LICENCE: &str = "Llama 3.2 Community License (gated: accept it on the Hub)";
const HF_FOLDER: &[&str] = &["config.json", "model.safetensors", "tokenizer.json"];
const HF_FOLDER_2: &[&str] =
    &["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "tokenizer.json"];

macro_rules! hub {
    ($name:literal, $repo:literal, $file:literal, $licence:expr) => {
        Known {
            name: $name,
            source: Source::Hub { repo: $repo, files: &[$file], gated: false },
            licence: $licence,
            companions: &[],
        }
    };
}
macro_rules! url {
    ($name:literal, $url:literal, $licence:expr) => {
        Known {
            name: $name,
            source: Source::Url { url: $url, sha256: None, member: None },
            licence: $licence,
            companions: &[],
        }
    };
}

/// Every model `fetch` knows, with the locations the official packages download from
/// (`sam2/build_sam.py`, `hiera/hiera.py`, `hiera/hiera_mae.py`, MAWS's `maws/model_builder.py`, `open_clip/pretrained.py`, 4D-Humans'
/// `hmr2/models/__init__.py`, LART's `scripts/download_checkpoints.sh`, PHALP's tracker).
pub const KNOWN: &[Known] = &[
    hub!("sam2.1_hiera_tiny", "facebook/sam2.1-hiera-tiny", "sam2.1_hiera_tiny.pt", SAM2_LICENCE),
    hub!("sam2.1_hiera_small", "facebook/sam2.1-hiera-small", "sam2.1_hiera_small.pt", SAM2_LICENCE),
    hub!("sam2.1_hiera_base_plus", "facebook/sam2.1-hiera-base-plus", "sam2.1_hiera_base_plus.pt", SAM2_LICENCE),
    hub!("sam2.1_hiera_large", "facebook/sam2.1-hiera-large", "sam2.1_hiera_large.pt", SAM2_LICENCE),
    url!("hiera_tiny_224", "https://dl.fbaipublicfiles.com/hiera/hiera_tiny_224.pth", HIERA_LICENCE),
    url!("hiera_small_224", "https://dl.fbaipublicfiles.com/hiera/hiera_small_224.pth", HIERA_LICENCE),
    url!("hiera_base_224", "https://dl.fbaipublicfiles.com/hiera/hiera_base_224.pth", HIERA_LICENCE),
    url!("hiera_base_plus_224", "https://dl.fbaipublicfiles.com/hiera/hiera_base_plus_224.pth", HIERA_LICENCE),
    url!("hiera_large_224", "https://dl.fbaipublicfiles.com/hiera/hiera_large_224.pth", HIERA_LICENCE),
    url!("hiera_huge_224", "https://dl.fbaipublicfiles.com/hiera/hiera_huge_224.pth", HIERA_LICENCE),
    url!("hiera_base_16x224", "https://dl.fbaipublicfiles.com/hiera/hiera_base_16x224.pth", HIERA_LICENCE),
    url!("hiera_base_plus_16x224", "https://dl.fbaipublicfiles.com/hiera/hiera_base_plus_16x224.pth", HIERA_LICENCE),
    url!("hiera_large_16x224", "https://dl.fbaipublicfiles.com/hiera/hiera_large_16x224.pth", HIERA_LICENCE),
    url!("hiera_huge_16x224", "https://dl.fbaipublicfiles.com/hiera/hiera_huge_16x224.pth", HIERA_LICENCE),
    url!("mae_hiera_tiny_224", "https://dl.fbaipublicfiles.com/hiera/mae_hiera_tiny_224.pth", HIERA_LICENCE),
    url!("mae_hiera_small_224", "https://dl.fbaipublicfiles.com/hiera/mae_hiera_small_224.pth", HIERA_LICENCE),
    url!("mae_hiera_base_224", "https://dl.fbaipublicfiles.com/hiera/mae_hiera_base_224.pth", HIERA_LICENCE),
    url!("mae_hiera_base_plus_224", "https://dl.fbaipublicfiles.com/hiera/mae_hiera_base_plus_224.pth", HIERA_LICENCE),
    url!("mae_hiera_large_224", "https://dl.fbaipublicfiles.com/hiera/mae_hiera_large_224.pth", HIERA_LICENCE),
    url!("mae_hiera_huge_224", "https://dl.fbaipublicfiles.com/hiera/mae_hiera_huge_224.pth", HIERA_LICENCE),
    url!("mae_hiera_base_16x224", "https://dl.fbaipublicfiles.com/hiera/mae_hiera_base_16x224.pth", HIERA_LICENCE),
    url!(
        "mae_hiera_base_plus_16x224",
        "https://dl.fbaipublicfiles.com/hiera/mae_hiera_base_plus_16x224.pth",
        HIERA_LICENCE
    ),
    url!("mae_hiera_large_16x224", "https://dl.fbaipublicfiles.com/hiera/mae_hiera_large_16x224.pth", HIERA_LICENCE),
    url!("mae_hiera_huge_16x224", "https://dl.fbaipublicfiles.com/hiera/mae_hiera_huge_16x224.pth", HIERA_LICENCE),
    url!("maws_vit_b16", "https://dl.fbaipublicfiles.com/maws/pretrain/maws/vit_b16.pt", MAWS_LICENCE),
    url!("maws_vit_l16", "https://dl.fbaipublicfiles.com/maws/pretrain/maws/vit_l16.pt", MAWS_LICENCE),
    url!("maws_vit_h14", "https://dl.fbaipublicfiles.com/maws/pretrain/maws/vit_h14.pt", MAWS_LICENCE),
    url!("maws_vit_2b14", "https://dl.fbaipublicfiles.com/maws/pretrain/maws/vit_2b14.pt", MAWS_LICENCE),
    url!("mae_vit_b16", "https://dl.fbaipublicfiles.com/maws/pretrain/mae/vit_b16.pt", MAWS_LICENCE),
    url!("mae_vit_l16", "https://dl.fbaipublicfiles.com/maws/pretrain/mae/vit_l16.pt", MAWS_LICENCE),
    url!("mae_vit_h14", "https://dl.fbaipublicfiles.com/maws/pretrain/mae/vit_h14.pt", MAWS_LICENCE),
    url!("mae_vit_2b14", "https://dl.fbaipublicfiles.com/maws/pretrain/mae/vit_2b14.pt", MAWS_LICENCE),
    url!("maws_vit_b16_ft_in1k", "https://dl.fbaipublicfiles.com/maws/finetune/in1k/maws/vit_b16_512.pt", MAWS_LICENCE),
    url!("maws_vit_l16_ft_in1k", "https://dl.fbaipublicfiles.com/maws/finetune/in1k/maws/vit_l16_512.pt", MAWS_LICENCE),
    url!("maws_vit_h14_ft_in1k", "https://dl.fbaipublicfiles.com/maws/finetune/in1k/maws/vit_h14_518.pt", MAWS_LICENCE),
    url!(
        "maws_vit_2b14_ft_in1k",
        "https://dl.fbaipublicfiles.com/maws/finetune/in1k/maws/vit_2b14_518.pt",
        MAWS_LICENCE
    ),
    // open_clip's `metaclip_fullcc` tags (MetaCLIP 2.5B).
    hub!(
        "ViT-B-32-quickgelu",
        "timm/vit_base_patch32_clip_224.metaclip_2pt5b",
        "open_clip_pytorch_model.bin",
        METACLIP_LICENCE
    ),
    hub!(
        "ViT-B-16-quickgelu",
        "timm/vit_base_patch16_clip_224.metaclip_2pt5b",
        "open_clip_pytorch_model.bin",
        METACLIP_LICENCE
    ),
    hub!(
        "ViT-L-14-quickgelu",
        "timm/vit_large_patch14_clip_224.metaclip_2pt5b",
        "open_clip_pytorch_model.bin",
        METACLIP_LICENCE
    ),
    hub!(
        "ViT-H-14-quickgelu",
        "timm/vit_huge_patch14_clip_224.metaclip_2pt5b",
        "open_clip_pytorch_model.bin",
        METACLIP_LICENCE
    ),
    Known {
        name: "llama-3.2-1b-instruct",
        source: Source::Hub { repo: "meta-llama/Llama-3.2-1B-Instruct", files: HF_FOLDER, gated: true },
        licence: LLAMA_LICENCE,
        companions: &[],
    },
    Known {
        name: "llama-3.2-3b-instruct",
        source: Source::Hub { repo: "meta-llama/Llama-3.2-3B-Instruct", files: HF_FOLDER_2, gated: true },
        licence: LLAMA_LICENCE,
        companions: &[],
    },
    Known {
        name: "llama-guard-3-1b",
        source: Source::Hub { repo: "meta-llama/Llama-Guard-3-1B", files: HF_FOLDER, gated: true },
        licence: LLAMA_LICENCE,
        companions: &[],
    },
    Known {
        name: "hmr2",
        source: Source::Url {
            url: "https://people.eecs.berkeley.edu/~jathushan/projects/4dhumans/hmr2_data.tar.gz",
            sha256: None,
            member: Some("logs/train/multiruns/hmr2/0/checkpoints/epoch=35-step=1000000.ckpt"),
        },
        licence: "MIT (4D-Humans); the SMPL body model is separate and licensed",
        companions: &[],
    },
    Known {
        name: "lart",
        source: Source::Url {
            url: "https://www.dropbox.com/s/aja2sfo9ge8hqxf/lart_hiera_001.tar.gz?dl=1",
            sha256: None,
            member: Some("logs/LART_Hiera/0/checkpoints/epoch_002-EMA.ckpt"),
        },
        licence: "MIT (LART)",
        companions: &[Companion {
            url: "https://www.cs.utexas.edu/~pavlakos/phalp/3D/mean_std.npy",
            suffix: "mean_std.npy",
        }],
    },
];

/// The model `name` fetch knows.
pub fn known(name: &str) -> anyhow::Result<&'static Known> {
    KNOWN.iter().find(|k| k.name == name).with_context(|| {
        let names: Vec<&str> = KNOWN.iter().map(|k| k.name).collect();
        format!("no published checkpoint known for {name:?} (known: {})", names.join(", "))
    })
}

/// Where the source of `k` is, for `weights list`.
pub fn location(k: &Known) -> String {
    match k.source {
        Source::Hub { repo, files, gated } => {
            format!("huggingface.co/{repo} ({}){}", files.join(", "), if gated { ", gated" } else { "" })
        }
        Source::Url { url, member: Some(m), .. } => format!("{url} ({m})"),
        Source::Url { url, .. } => url.to_owned(),
    }
}

/// What `fetch` did.
#[derive(Debug)]
pub struct Fetched {
    /// The manifest of the converted weights.
    pub manifest: Manifest,
    /// SHA-256 of the downloaded checkpoint.
    pub source_sha256: String,
}

/// How long a connection to a publisher may take to open (an unreachable network fails
/// within this, instead of the system's minutes).
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);
/// How long a publisher may take to answer a request.
const RESPONSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Ocellus's cache: `$OCELLUS_CACHE`, else `~/.cache/ocellus`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("OCELLUS_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default().join(".cache").join("ocellus")
    })
}

/// The cache of plain downloads: `$OCELLUS_CACHE/downloads`.
pub fn downloads_dir() -> PathBuf {
    cache_dir().join("downloads")
}

/// Downloads model `name`, converts it to `out` (checked as `import` checks), fetches its
/// companions next to it, and records the download's SHA-256 in the manifest.
pub fn fetch(name: &str, out: &Path, progress: bool) -> anyhow::Result<Fetched> {
    let k = known(name)?;
    let (checkpoint, origin) = match k.source {
        Source::Hub { repo, files, gated } => {
            let paths = hub_files(repo, files, gated, progress)?;
            let first = paths.first().cloned().context("no files")?;
            // A Hugging Face folder (Llama) is imported as a folder.
            let from =
                if files.len() > 1 { first.parent().map(Path::to_path_buf).unwrap_or_default() } else { first.clone() };
            (from, (first, format!("huggingface.co/{repo}")))
        }
        Source::Url { url, sha256, member } => {
            let file = download(url, sha256, progress)?;
            let checkpoint = match member {
                Some(m) => extract_member(&file, m)?,
                None => file.clone(),
            };
            (checkpoint, (file, url.to_owned()))
        }
    };
    let manifest = crate::tools::import(name, &checkpoint, out)?;
    for c in k.companions {
        let file = download(c.url, None, progress)?;
        std::fs::copy(&file, out.with_extension(c.suffix)).with_context(|| format!("copying {}", file.display()))?;
    }
    let source_sha256 = weights::sha256_file(&origin.0)?;
    let manifest = weights::write_manifest(
        out,
        &manifest.model,
        manifest.config.clone(),
        format!("fetch {} sha256={source_sha256}", origin.1),
    )?;
    Ok(Fetched { manifest, source_sha256 })
}

/// The files of a Hub repository, from the cache or downloaded (`HF_HUB_OFFLINE=1`: the cache
/// alone).
fn hub_files(repo: &str, files: &[&str], gated: bool, progress: bool) -> anyhow::Result<Vec<PathBuf>> {
    let offline = std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if offline {
        let cache = hf_hub::Cache::from_env().repo(hf_hub::Repo::model(repo.to_owned()));
        return files
            .iter()
            .map(|f| {
                cache.get(f).with_context(|| {
                    format!(
                        "offline (HF_HUB_OFFLINE=1) and {repo}/{f} is not in the Hugging Face cache ({})",
                        hf_hub::Cache::from_env().path().display()
                    )
                })
            })
            .collect();
    }
    let mut builder = hf_hub::api::sync::ApiBuilder::from_env().with_progress(progress).with_retries(0);
    if let Some(token) = std::env::var("HF_TOKEN").ok().filter(|t| !t.trim().is_empty()) {
        builder = builder.with_token(Some(token.trim().to_owned()));
    }
    let api = builder.build().context("the Hugging Face client")?;
    let handle = api.model(repo.to_owned());
    files
        .iter()
        .map(|f| {
            let path = handle.get(f).map_err(|e| {
                let text = e.to_string();
                let endpoint = std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".into());
                // hf-hub reports HTTP errors as ureq's "status code N".
                let status = |code: u16| text.contains(&format!("status code {code}"));
                if status(401) || status(403) {
                    anyhow::anyhow!(
                        "{repo}/{f}: access denied ({text}){}",
                        if gated {
                            format!(
                                "; this repository is gated: accept its licence at {endpoint}/{repo}, then set \
                                 HF_TOKEN to a token of that account"
                            )
                        } else {
                            String::new()
                        }
                    )
                } else if status(404) {
                    anyhow::anyhow!("{repo}/{f}: not found at {endpoint} ({text})")
                } else {
                    anyhow::anyhow!("{repo}/{f}: {text} (a partial download resumes on the next fetch)")
                }
            })?;
            verify_blob(repo, f, &path)?;
            Ok(path)
        })
        .collect()
}

/// A Hub file stored under its LFS object id (the blob's name is its SHA-256, which the Hub
/// publishes as the file's ETag) must hash to it; one that does not is removed.
fn verify_blob(repo: &str, file: &str, path: &Path) -> anyhow::Result<()> {
    let blob = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let Some(expected) =
        blob.file_name().and_then(|n| n.to_str()).filter(|n| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()))
    else {
        return Ok(()); // a small git-stored file: its id is not a SHA-256
    };
    let got = weights::sha256_file(&blob)?;
    if !got.eq_ignore_ascii_case(expected) {
        std::fs::remove_file(&blob).ok();
        std::fs::remove_file(path).ok();
        bail!(
            "{repo}/{file}: checksum mismatch: the Hub gives sha256 {expected}, the download has {got} (removed; fetch again)"
        );
    }
    Ok(())
}

/// `url` with `OCELLUS_MIRROR` in place of its scheme and host, when set.
pub fn mirrored(url: &str) -> String {
    match std::env::var("OCELLUS_MIRROR") {
        Ok(mirror) if !mirror.is_empty() => {
            let path = url.split_once("://").and_then(|(_, rest)| rest.find('/').map(|i| &rest[i..])).unwrap_or("/");
            format!("{}{path}", mirror.trim_end_matches('/'))
        }
        _ => url.to_owned(),
    }
}

/// The file name a URL is saved under in the downloads folder.
fn file_name(url: &str) -> String {
    let path = url.split('?').next().unwrap_or(url);
    let name = path.rsplit('/').next().unwrap_or("download");
    if name.is_empty() { "download".into() } else { name.to_owned() }
}

/// Downloads `url` into the downloads folder (resuming `<file>.part`), checks `sha256` when
/// given, and returns the complete file. A file already there is used as it is (checked).
pub fn download(url: &str, sha256: Option<&str>, progress: bool) -> anyhow::Result<PathBuf> {
    download_to(&mirrored(url), sha256, progress, &downloads_dir())
}

/// [`download`] from `url` (the published one, or its mirror) into `dir`.
pub fn download_to(url: &str, sha256: Option<&str>, progress: bool, dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(file_name(url));
    let part = path.with_file_name(format!("{}.part", file_name(url)));
    if !path.exists() {
        fetch_to(url, &part, progress)?;
        std::fs::rename(&part, &path).with_context(|| format!("moving {} into place", part.display()))?;
    }
    if let Some(expected) = sha256 {
        let got = weights::sha256_file(&path)?;
        if !got.eq_ignore_ascii_case(expected) {
            std::fs::remove_file(&path).ok();
            bail!(
                "{url}: checksum mismatch: the publisher gives sha256 {expected}, the download has {got} (removed; fetch again)"
            );
        }
    }
    Ok(path)
}

/// Appends the rest of `url` to `part` (from its current length), until the server's length.
fn fetch_to(url: &str, part: &Path, progress: bool) -> anyhow::Result<()> {
    let start = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_recv_response(Some(RESPONSE_TIMEOUT))
        .build()
        .into();
    let mut request = agent.get(url);
    if start > 0 {
        request = request.header("Range", format!("bytes={start}-"));
    }
    let response =
        request.call().map_err(|e| anyhow::anyhow!("{url}: {e} (a partial download resumes on the next fetch)"))?;
    let status = response.status().as_u16();
    let (append, offset) = match status {
        206 => (true, start),
        200 => (false, 0),
        416 if start > 0 => return Ok(()), // already complete
        401 | 403 => bail!("{url}: access denied ({status})"),
        404 => bail!("{url}: not found (404)"),
        other => bail!("{url}: the server answered {other}"),
    };
    let remaining =
        response.headers().get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let total = remaining.map(|r| r + offset);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(part)
        .with_context(|| format!("opening {}", part.display()))?;
    let bar = match (progress, total) {
        (true, Some(t)) => indicatif::ProgressBar::new(t),
        (true, None) => indicatif::ProgressBar::new_spinner(),
        (false, _) => indicatif::ProgressBar::hidden(),
    };
    bar.set_position(offset);
    bar.set_message(file_name(url));
    let mut body = response.into_body().into_reader();
    let mut buf = vec![0u8; 1 << 16];
    let mut written = offset;
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => bail!(
                "{url}: the connection broke after {written} bytes ({e}); {} is kept and the next fetch resumes it",
                part.display()
            ),
        };
        file.write_all(&buf[..n]).with_context(|| {
            format!("writing {} (the partial download is kept and resumes on the next fetch)", part.display())
        })?;
        written += n as u64;
        bar.set_position(written);
    }
    file.flush()?;
    bar.finish_and_clear();
    if let Some(t) = total.filter(|t| written < *t) {
        bail!(
            "{url}: the connection broke after {written} of {t} bytes; {} is kept and the next fetch resumes it",
            part.display()
        );
    }
    Ok(())
}

/// The member `member` of the `.tar.gz` at `archive`, extracted next to it (once).
fn extract_member(archive: &Path, member: &str) -> anyhow::Result<PathBuf> {
    let name = Path::new(member).file_name().context("member name")?.to_string_lossy().into_owned();
    let out = archive.with_file_name(format!("{}.{name}", file_name(&archive.to_string_lossy())));
    if out.exists() {
        return Ok(out);
    }
    let part = out.with_file_name(format!("{}.part", out.file_name().unwrap_or_default().to_string_lossy()));
    let file = std::fs::File::open(archive)?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    for entry in tar.entries().with_context(|| format!("reading {}", archive.display()))? {
        let mut entry = entry.with_context(|| format!("reading {}", archive.display()))?;
        let path = entry.path()?.to_string_lossy().trim_start_matches("./").to_owned();
        if path == member {
            let mut f = std::fs::File::create(&part)?;
            std::io::copy(&mut entry, &mut f).with_context(|| format!("writing {}", part.display()))?;
            std::fs::rename(&part, &out)?;
            return Ok(out);
        }
    }
    bail!("{}: no {member} in the archive", archive.display())
}

/// One row of `weights list`: the model, where it comes from, its licence, whether it is at
/// `dir`.
pub fn list(dir: &Path) -> Vec<(String, String, String, bool)> {
    KNOWN
        .iter()
        .map(|k| {
            let present = dir.join(format!("{}.safetensors", k.name)).exists();
            (k.name.to_owned(), location(k), k.licence.to_owned(), present)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_model_is_importable() {
        for k in KNOWN {
            assert!(crate::tools::knows(k.name), "{} is fetched but not imported", k.name);
        }
    }

    #[test]
    fn file_names_and_mirrors() {
        assert_eq!(file_name("https://www.dropbox.com/s/x/lart_hiera_001.tar.gz?dl=1"), "lart_hiera_001.tar.gz");
        assert_eq!(file_name("https://dl.fbaipublicfiles.com/hiera/hiera_tiny_224.pth"), "hiera_tiny_224.pth");
    }
}
