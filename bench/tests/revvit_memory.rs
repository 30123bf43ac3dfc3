//! Peak training memory by depth (4, 8, 16, 32): flat for the reversible ViT, growing with depth
//! under ordinary autograd (CPU peak RSS of one step above the weights and gradients, one
//! process per case; `ocellus-bench revvit`).
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::process::Command;

#[test]
fn reversible_training_memory_is_flat_in_depth_and_ordinary_grows() {
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("revvit");
    let run = Command::new(env!("CARGO_BIN_EXE_ocellus-bench"))
        .args(["revvit", "--depths", "4,8,16,32", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    println!("{stdout}");
    assert!(run.status.success(), "{stdout}{}", String::from_utf8_lossy(&run.stderr));
    let all: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(out.join("revvit.json")).unwrap()).unwrap();
    let peak = |mode: &str, depth: u64| {
        all.iter().find(|m| m["mode"] == mode && m["depth"] == depth).unwrap()["step_peak_mib"].as_f64().unwrap()
    };
    let per_block = |mode: &str| (peak(mode, 32) - peak(mode, 4)) / 28.0;
    // Ordinary autograd keeps every block's activations: the peak grows at each depth and by
    // at least 10 MiB per block here (batch 8 × 256 tokens × 192 wide).
    for (a, b) in [(4, 8), (8, 16), (16, 32)] {
        assert!(peak("vanilla", b) > peak("vanilla", a), "ordinary {a} → {b}: {all:?}");
    }
    assert!(per_block("vanilla") >= 10.0, "ordinary grows {:.1} MiB per block", per_block("vanilla"));
    // Reversible: one block's activations whatever the depth (within 15 % of depth 4's peak).
    assert!(peak("reversible", 32) <= 1.15 * peak("reversible", 4), "reversible {all:?}");
    assert!(peak("vanilla", 32) >= 4.0 * peak("reversible", 32), "{all:?}");
}
