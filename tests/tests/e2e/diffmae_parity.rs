//! DiffMAE against the PyTorch reference of `tests/fixtures/generate_diffmae.py` (timm's
//! `PatchEmbed` / `Block` as MAE's `models_mae.py` uses them, MAE's sin-cos embeddings,
//! guided-diffusion's schedule, respacing and posterior) on the same seeded random weights at
//! `diffmae_vit_base_patch16`, 224: fp32 on the CPU, max abs error ≤ 1e-4 on the encoder latent,
//! the x0 prediction at several timesteps and a 4-step sampling run replaying the recorded
//! noise. There is no official DiffMAE code or checkpoint, so this is parity with a reference
//! of the same design, not with an official model. Then `inpaint`: unmasked pixels
//! bit-identical, masked ones changed, reproducible per seed, typed errors on bad inputs.
#![allow(clippy::unwrap_used)] // tests may unwrap, helpers included

use std::sync::{Mutex, OnceLock};

use ocellus_perception::diffmae::{
    BetaSchedule, DiffMae, DiffMaeConfig, Schedule, sincos_pos_embed, space_timesteps, timestep_embedding,
};
use ocellus_perception::weights::{self, Scope};
use ocellus_tests::{assert_close, fixture_io, fixtures_dir, max_abs_diff};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// The bound of the issue: fp32, CPU.
const TOL: f64 = 1e-4;
/// The fixture's case and model.
const CASE: &str = "diffmae_base";
const MODEL: &str = "diffmae_vit_base_patch16";

/// One model for every test (the weights are 450 MB); tests take turns.
fn model() -> std::sync::MutexGuard<'static, DiffMae> {
    static SHARED: OnceLock<Mutex<DiffMae>> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            tch::set_num_threads(2);
            let mut vs = VarStore::new(Device::Cpu);
            let model = DiffMae::new(&vs.root(), &DiffMaeConfig::by_name(MODEL).unwrap()).unwrap();
            weights::load(&mut vs, &fixtures_dir().join(format!("{CASE}.weights.safetensors")), Scope::Exact).unwrap();
            // The model's tensors share the variables' storage: they outlive the store.
            Mutex::new(model)
        })
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn f64s(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double)).unwrap()
}

fn assert_f64s(name: &str, ours: &[f64], reference: &Tensor, tol: f64) {
    let reference = f64s(reference);
    assert_eq!(ours.len(), reference.len(), "{name}: lengths differ");
    let diff = ours.iter().zip(&reference).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    println!("{name}: max abs error {diff:.3e}");
    assert!(diff <= tol, "{name}: max abs error {diff:.3e} > {tol:.0e}");
}

#[test]
fn schedule_and_embeddings_match_the_reference() {
    let io = fixture_io(CASE);
    // guided-diffusion's arrays, f64 (measured: 0, every array bit-identical to NumPy's).
    let schedule = Schedule::new(BetaSchedule::Cosine, 1000);
    assert_f64s("betas", &schedule.betas, &io["betas"], 1e-12);
    assert_f64s("alphas_cumprod", &schedule.alphas_cumprod, &io["alphas_cumprod"], 1e-12);
    assert_f64s("linear betas", &BetaSchedule::Linear.betas(1000), &io["linear_betas"], 1e-12);
    let spaced = schedule.respaced(4).unwrap();
    assert_eq!(spaced.timesteps, Vec::<i64>::try_from(&io["spaced.timesteps"]).unwrap());
    assert_eq!(spaced.timesteps, [0, 333, 666, 999]);
    assert_f64s("spaced betas", &spaced.betas, &io["spaced.betas"], 1e-12);
    assert_f64s("spaced coef1", &spaced.posterior_mean_coef1, &io["spaced.posterior_mean_coef1"], 1e-12);
    assert_f64s("spaced coef2", &spaced.posterior_mean_coef2, &io["spaced.posterior_mean_coef2"], 1e-12);
    let log_var = &io["spaced.posterior_log_variance_clipped"];
    assert_f64s("spaced log variance", &spaced.posterior_log_variance_clipped, log_var, 1e-12);
    // Respacing to every step is the training chain itself (full DDPM), up to the rounding of
    // β = 1 − ᾱᵢ / ᾱᵢ₋₁.
    let full = schedule.respaced(1000).unwrap();
    assert_eq!(full.timesteps, schedule.timesteps);
    for (name, a, b) in [
        ("betas", &full.betas, &schedule.betas),
        ("coef1", &full.posterior_mean_coef1, &schedule.posterior_mean_coef1),
        ("coef2", &full.posterior_mean_coef2, &schedule.posterior_mean_coef2),
    ] {
        let diff = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
        assert!(a.len() == b.len() && diff < 1e-9, "full respacing changes {name} by {diff:e}");
    }
    assert_eq!(space_timesteps(1000, 1000).unwrap(), (0..1000).collect::<Vec<i64>>());
    assert_eq!(space_timesteps(1000, 1).unwrap(), [0]);
    assert_eq!(space_timesteps(10, 4).unwrap(), [0, 3, 6, 9]);
    assert!(space_timesteps(1000, 0).is_err() && space_timesteps(10, 11).is_err());
    // timestep_embedding and MAE's sin-cos tables, which the checkpoint stores (measured: 0).
    let t = Tensor::from_slice(&[0i64, 1, 250, 999]);
    assert_close("time_embedding", &timestep_embedding(&t, 512).unwrap(), &io["time_embedding"], 1e-6);
    let w = Tensor::read_safetensors(fixtures_dir().join(format!("{CASE}.weights.safetensors"))).unwrap();
    let get = |k: &str| w.iter().find(|(n, _)| n == k).map(|(_, t)| t.shallow_clone()).unwrap();
    assert_close("pos_embed", &sincos_pos_embed(768, 14, true).unwrap().unsqueeze(0), &get("pos_embed"), 1e-6);
    let dec = sincos_pos_embed(512, 14, true).unwrap().unsqueeze(0);
    assert_close("decoder_pos_embed", &dec, &get("decoder_pos_embed"), 1e-6);
}

#[test]
fn encoder_denoiser_and_sampler_match_the_reference() {
    let model = model();
    let io = fixture_io(CASE);
    let (visible, masked) = (&io["ids_visible"], &io["ids_masked"]);
    let patches = model.patchify(&io["images"]).unwrap();
    assert!(patches.equal(&io["patches"]), "patchify differs from MAE's");
    assert!(model.unpatchify(&patches).unwrap().equal(&io["images"]), "unpatchify is not patchify's inverse");
    // Measured max abs error (2 threads): 0 on the latent, every x0 and the 4-step sample
    // (bit-identical: the same libtorch ops in the same order); 2.4e-6 with reversed ids.
    let latent = tch::no_grad(|| model.forward_encoder(&io["images"], visible)).unwrap();
    assert_close("latent", &latent, &io["latent"], TOL);
    for t in [0i64, 1, 250, 999] {
        let ts = Tensor::from_slice(&[t, t]);
        let x0 = tch::no_grad(|| model.denoise(&latent, &io["x_t"], visible, masked, &ts)).unwrap();
        assert_close(&format!("x0 at t={t}"), &x0, &io[&format!("x0.t{t}")], TOL);
    }
    let x0 = tch::no_grad(|| model.denoise(&latent, &io["x_t"], visible, masked, &io["t_mixed"])).unwrap();
    assert_close("x0 at t=[3, 777]", &x0, &io["x0.mixed"], TOL);
    let sample = tch::no_grad(|| model.sample(&latent, visible, masked, &io["sample_noise"])).unwrap();
    assert_close("4-step sample", &sample, &io["sample"], TOL);
    // The order of the ids does not matter (MAE's shuffled ids restore the same way).
    let (vis_rev, masked_rev) = (visible.flip([1]), masked.flip([1]));
    let latent_rev = tch::no_grad(|| model.forward_encoder(&io["images"], &vis_rev)).unwrap();
    let ts = Tensor::from_slice(&[250i64, 250]);
    let x0_rev = tch::no_grad(|| model.denoise(&latent_rev, &io["x_t"].flip([1]), &vis_rev, &masked_rev, &ts)).unwrap();
    assert_close("x0 with reversed ids", &x0_rev.flip([1]), &io["x0.t250"], TOL);
}

/// A smooth `[1, 3, 480, 640]` image in `[0, 1]` and a 200 × 200 mask at (220, 140).
fn scene() -> (Tensor, Tensor) {
    let low = ocellus_kernels::seeded(7, || Tensor::rand([1, 3, 12, 16], (Kind::Float, Device::Cpu)));
    let image = low.upsample_bilinear2d([480, 640], false, None, None);
    let mask = Tensor::zeros([1, 1, 480, 640], (Kind::Bool, Device::Cpu));
    let _ = mask.narrow(2, 140, 200).narrow(3, 220, 200).fill_(1);
    (image, mask)
}

#[test]
fn inpaint_pastes_only_the_masked_pixels_and_is_reproducible() {
    let model = model();
    let (image, mask) = scene();
    let started = std::time::Instant::now();
    let out = tch::no_grad(|| model.inpaint(&image, &mask, 10, 42)).unwrap();
    println!("inpaint 640x480, 200x200 mask, 10 steps: {:.2} s", started.elapsed().as_secs_f64());
    assert_eq!(out.size(), [1, 3, 480, 640]);
    assert_eq!(out.kind(), Kind::Float);
    let keep = mask.logical_not().expand([1, 3, 480, 640], false);
    assert!(out.masked_select(&keep).equal(&image.masked_select(&keep)), "unmasked pixels changed");
    let inside = mask.expand([1, 3, 480, 640], false);
    let changed = max_abs_diff(&out.masked_select(&inside), &image.masked_select(&inside));
    assert!(changed > 0.05, "masked pixels barely changed ({changed})");
    assert!(out.min().double_value(&[]) >= 0.0 && out.max().double_value(&[]) <= 1.0);
    let again = tch::no_grad(|| model.inpaint(&image, &mask, 10, 42)).unwrap();
    assert!(again.equal(&out), "the same seed gave another result");
    let other = tch::no_grad(|| model.inpaint(&image, &mask, 10, 43)).unwrap();
    assert!(!other.equal(&out), "another seed gave the same result");
    // Nothing masked: the input itself.
    let none = Tensor::zeros([1, 1, 480, 640], (Kind::Bool, Device::Cpu));
    assert!(tch::no_grad(|| model.inpaint(&image, &none, 10, 42)).unwrap().equal(&image));
    // A one-pixel mask at the model's own size: exactly that pixel may change.
    let small = Tensor::rand([1, 3, 224, 224], (Kind::Float, Device::Cpu));
    let dot = Tensor::zeros([1, 1, 224, 224], (Kind::Bool, Device::Cpu));
    let _ = dot.narrow(2, 100, 1).narrow(3, 37, 1).fill_(1);
    let out = tch::no_grad(|| model.inpaint(&small, &dot, 2, 1)).unwrap();
    let keep = dot.logical_not().expand([1, 3, 224, 224], false);
    assert!(out.masked_select(&keep).equal(&small.masked_select(&keep)));
}

#[test]
fn bad_inputs_are_errors() {
    let model = model();
    let (image, mask) = scene();
    let err = |r: ocellus_perception::Result<Tensor>| r.expect_err("expected an error").to_string();
    println!("{}", err(model.inpaint(&image.squeeze_dim(0), &mask, 10, 0)));
    err(model.inpaint(&image.repeat([2, 1, 1, 1]), &mask, 10, 0));
    err(model.inpaint(&Tensor::zeros([1, 4, 480, 640], (Kind::Float, Device::Cpu)), &mask, 10, 0));
    err(model.inpaint(&image.to_kind(Kind::Uint8), &mask, 10, 0));
    err(model.inpaint(&image, &mask.to_kind(Kind::Float), 10, 0));
    err(model.inpaint(&image, &mask.narrow(2, 0, 479), 10, 0));
    err(model.inpaint(&image, &mask, 0, 0));
    err(model.inpaint(&image, &mask, 1001, 0));
    let io = fixture_io(CASE);
    let (visible, masked) = (&io["ids_visible"], &io["ids_masked"]);
    let small = Tensor::zeros([2, 3, 112, 112], (Kind::Float, Device::Cpu));
    err(model.forward_encoder(&small, visible));
    err(model.forward_encoder(&io["images"], &visible.to_kind(Kind::Float)));
    err(model.forward_encoder(&io["images"], &(visible + 1000)));
    let latent = tch::no_grad(|| model.forward_encoder(&io["images"], visible)).unwrap();
    let ts = Tensor::from_slice(&[1i64, 1]);
    // Ids that do not partition the patches, a mismatched latent, noisy patches or timesteps.
    err(model.denoise(&latent, &io["x_t"], visible, &masked.narrow(1, 0, 146), &ts));
    let overlapping = masked.copy();
    overlapping.narrow(1, 0, 1).copy_(&visible.narrow(1, 0, 1));
    err(model.denoise(&latent, &io["x_t"], visible, &overlapping, &ts));
    err(model.denoise(&latent.narrow(1, 0, 40), &io["x_t"], visible, masked, &ts));
    err(model.denoise(&latent, &io["x_t"].narrow(2, 0, 10), visible, masked, &ts));
    err(model.denoise(&latent, &io["x_t"], visible, masked, &Tensor::from_slice(&[1i64])));
    err(model.sample(&latent, visible, masked, &io["sample_noise"].narrow(1, 0, 1)));
    err(model.sample(&latent, visible, masked, &Tensor::zeros([0], (Kind::Float, Device::Cpu))));
}

#[test]
fn presets_and_config() {
    let base = DiffMaeConfig::by_name("diffmae_vit_base_patch16").unwrap();
    assert_eq!((base.embed_dim, base.depth, base.num_heads), (768, 12, 12));
    let large = DiffMaeConfig::by_name("diffmae_vit_large_patch16").unwrap();
    assert_eq!((large.embed_dim, large.depth, large.num_heads), (1024, 24, 16));
    for c in [&base, &large] {
        assert_eq!((c.decoder_embed_dim, c.decoder_depth, c.decoder_num_heads), (512, 8, 16));
        assert_eq!((c.img_size, c.patch_size, c.num_patches(), c.patch_dim()), (224, 16, 196, 768));
        assert_eq!((c.num_timesteps, c.schedule), (1000, BetaSchedule::Cosine));
    }
    assert!(DiffMaeConfig::by_name("mae_vit_base_patch16").is_none());
    let json = r#"{"embed_dim": 64, "depth": 1, "num_heads": 4, "decoder_embed_dim": 32, "decoder_depth": 1,
                   "decoder_num_heads": 4, "img_size": 32, "patch_size": 8, "schedule": "linear"}"#;
    let tiny: DiffMaeConfig = serde_json::from_str(json).unwrap();
    assert_eq!(tiny.schedule, BetaSchedule::Linear);
    let vs = VarStore::new(Device::Cpu);
    let model = DiffMae::new(&vs.root(), &tiny).unwrap();
    // Every key is MAE's or one of the two DiffMAE additions.
    let mut keys: Vec<String> = vs.variables().into_keys().filter(|k| !k.contains("blocks.")).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "cls_token",
            "decoder_embed.bias",
            "decoder_embed.weight",
            "decoder_noisy_embed.bias",
            "decoder_noisy_embed.weight",
            "decoder_norm.bias",
            "decoder_norm.weight",
            "decoder_pos_embed",
            "decoder_pred.bias",
            "decoder_pred.weight",
            "decoder_time_embed.0.bias",
            "decoder_time_embed.0.weight",
            "decoder_time_embed.2.bias",
            "decoder_time_embed.2.weight",
            "norm.bias",
            "norm.weight",
            "patch_embed.proj.bias",
            "patch_embed.proj.weight",
            "pos_embed",
        ]
    );
    assert_eq!(model.schedule().len(), 1000);
    let bad = DiffMaeConfig { num_heads: 5, ..tiny.clone() };
    assert!(DiffMae::new(&VarStore::new(Device::Cpu).root(), &bad).is_err());
    let bad = DiffMaeConfig { img_size: 30, ..tiny };
    assert!(DiffMae::new(&VarStore::new(Device::Cpu).root(), &bad).is_err());
    assert!(serde_json::from_str::<DiffMaeConfig>(r#"{"embed_dims": 64}"#).is_err());
}
