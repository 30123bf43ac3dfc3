//! Peak training memory of the reversible Hiera by depth of its third stage (4, 8, 16, 32):
//! flat when its stages run as reversible blocks, growing under ordinary autograd (CPU peak RSS
//! of one step above the weights and gradients, one process per case; `ocellus-bench revvit
//! --arch hiera`).
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::process::Command;

#[test]
fn reversible_hiera_training_memory_is_flat_in_depth_and_ordinary_grows() {
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("rev_hiera");
    let run = Command::new(env!("CARGO_BIN_EXE_ocellus-bench"))
        .args(["revvit", "--arch", "hiera", "--embed-dim", "96", "--heads", "1", "--image", "128"])
        .args(["--depths", "4,8,16,32", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    println!("{stdout}");
    assert!(run.status.success(), "{stdout}{}", String::from_utf8_lossy(&run.stderr));
    let all: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(out.join("rev_hiera.json")).unwrap()).unwrap();
    let peak = |mode: &str, depth: u64| {
        all.iter().find(|m| m["mode"] == mode && m["depth"] == depth).unwrap()["step_peak_mib"].as_f64().unwrap()
    };
    let per_block = |mode: &str| (peak(mode, 32) - peak(mode, 4)) / 28.0;
    for (a, b) in [(4, 8), (8, 16), (16, 32)] {
        assert!(peak("vanilla", b) > peak("vanilla", a), "ordinary {a} → {b}: {all:?}");
    }
    assert!(per_block("vanilla") >= PER_BLOCK_MIB, "ordinary grows {:.1} MiB per block", per_block("vanilla"));
    // Reversible: one block's activations plus the streams kept at stage boundaries.
    assert!(peak("reversible", 32) <= 1.15 * peak("reversible", 4), "reversible {all:?}");
    assert!(peak("vanilla", 32) >= 3.0 * peak("reversible", 32), "{all:?}");
}

/// Growth per third-stage block under ordinary autograd that the test requires (batch 8 × 64
/// tokens × 384 wide at 128 px).
const PER_BLOCK_MIB: f64 = 5.0;
