//! The soak of `make test`: the demo's actors (`configs/soak.toml`) under overload from a live
//! test pattern at 1 frame/s, one minute measured once every actor has taken its first input
//! (however long loading the models takes on the machine). The bench itself fails when memory
//! drifts (the RSS peaks of 30-second windows beyond ±5 % of their median), when the sources do
//! not offer at least twice what the slowest actor takes, or when a drop counter does not add
//! up; the report is checked here too.
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::path::Path;
use std::process::Command;

#[test]
fn a_minute_of_overload_keeps_memory_flat_and_counts_every_drop() {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("soak");
    std::fs::remove_dir_all(&out).ok();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let run = Command::new(env!("CARGO_BIN_EXE_ocellus-bench"))
        .current_dir(&root)
        .args(["soak", "--config", "configs/soak.toml", "--minutes", "1", "--fps", "1", "--warmup-s", "5", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    println!("{stdout}");
    assert!(run.status.success(), "{stdout}{}", String::from_utf8_lossy(&run.stderr));

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("soak.json")).unwrap()).unwrap();
    assert!(report["overload"].as_f64().unwrap() >= 2.0, "{report}");
    assert!(report["rss_window_deviation_pct"].as_f64().unwrap() <= 5.0, "{report}");
    assert!(report["rss_window_peaks_mib"].as_array().unwrap().len() >= 2, "{report}");
    assert!(report["mismatches"].as_array().unwrap().is_empty(), "{report}");
    let nodes = report["nodes"].as_array().unwrap();
    for name in ["front", "tracker", "discovery", "people", "actions", "agent"] {
        assert!(nodes.iter().any(|n| n["name"] == name), "{name} in {nodes:?}");
    }
    // Overload shows up as drops on the models' `latest` edges, each one counted.
    let dropped: u64 = nodes.iter().map(|n| n["dropped"].as_u64().unwrap()).sum();
    assert!(dropped > 0, "{nodes:?}");
}
