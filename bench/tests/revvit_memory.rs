//! Peak training memory by depth (4, 8, 16, 32): flat for the reversible ViT and the reversible
//! Hiera (depth = blocks of its third stage), growing with depth under ordinary autograd (CPU
//! peak RSS of one step above the weights and gradients, one process per case; `ocellus-bench
//! revvit`).
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::process::Command;

/// Runs `ocellus-bench revvit` with `args` at depths 4, 8, 16 and 32 and checks the curves:
/// ordinary grows at each depth and by at least `per_block_mib` per block; reversible stays
/// within 15 % of its depth-4 peak and `ordinary_over_reversible` times below ordinary at 32.
fn memory_by_depth(args: &[&str], report: &str, per_block_mib: f64, ordinary_over_reversible: f64) {
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(report);
    let run = Command::new(env!("CARGO_BIN_EXE_ocellus-bench"))
        .args(["revvit", "--depths", "4,8,16,32", "--out"])
        .arg(&out)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    println!("{stdout}");
    assert!(run.status.success(), "{stdout}{}", String::from_utf8_lossy(&run.stderr));
    let all: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(out.join(format!("{report}.json"))).unwrap()).unwrap();
    let peak = |mode: &str, depth: u64| {
        all.iter().find(|m| m["mode"] == mode && m["depth"] == depth).unwrap()["step_peak_mib"].as_f64().unwrap()
    };
    let per_block = |mode: &str| (peak(mode, 32) - peak(mode, 4)) / 28.0;
    for (a, b) in [(4, 8), (8, 16), (16, 32)] {
        assert!(peak("vanilla", b) > peak("vanilla", a), "ordinary {a} → {b}: {all:?}");
    }
    assert!(per_block("vanilla") >= per_block_mib, "ordinary grows {:.1} MiB per block", per_block("vanilla"));
    assert!(peak("reversible", 32) <= 1.15 * peak("reversible", 4), "reversible {all:?}");
    assert!(peak("vanilla", 32) >= ordinary_over_reversible * peak("reversible", 32), "{all:?}");
}

/// One test, so that the two sweeps do not share the cores (each child takes both).
#[test]
fn reversible_training_memory_is_flat_in_depth_and_ordinary_grows() {
    // ViT: ordinary autograd keeps every block's activations, at least 10 MiB per block here
    // (batch 8 × 256 tokens × 192 wide); reversible keeps one block's.
    memory_by_depth(&[], "revvit", 10.0, 4.0);
    // Hiera: batch 8 × 64 third-stage tokens × 384 wide at 128 px, at least 5 MiB per block
    // ordinary; reversible keeps one block's activations plus the streams at stage boundaries.
    memory_by_depth(&["--arch", "hiera", "--embed-dim", "96", "--heads", "1", "--image", "128"], "rev_hiera", 5.0, 3.0);
}
