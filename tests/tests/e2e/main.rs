//! The end-to-end and parity tests of Ocellus, one module per subject, in one test binary
//! (one link instead of one per file). `cargo test --test e2e <module>::` runs one subject.

mod agent;
mod backbone_actor;
mod backpressure;
mod camera_actors;
mod clip_parity;
mod config_errors;
mod config_schema;
mod curate;
mod diffmae_parity;
mod discovery_actor;
mod discovery_query;
mod end_to_end;
mod hiera_parity;
mod hieradet_parity;
mod hmr2_parity;
mod inpainter;
mod labeler_actor;
mod llama_backends;
mod llama_parity;
mod llama_tokenizer;
mod preprocess_parity;
mod replay;
mod rerun_targets;
mod rtsp_reconnect;
mod sam2_amg_parity;
mod sam2_image_parity;
mod sam2_streaming;
mod sam2_video_parity;
mod smpl_parity;
mod source_errors;
mod stride;
mod supervision;
mod tracker_actor;
mod transport_fuzz;
mod zenoh_transport;
