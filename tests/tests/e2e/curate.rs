//! `ocellus curate` on a recording written here: 8-bit RGB frames and `agent/caption` text
//! logs, plus a sidecar caption; the selection equals the library's curation of the same pool,
//! and every selected frame is written as PNG.
#![allow(clippy::unwrap_used)] // tests may unwrap, helpers included

use ocellus_perception::clip::curation::{Metadata, curate};
use ocellus_pipelines::curate::{CurateArgs, run};
use ocellus_tests::scratch_dir;

const FRAMES: i64 = 40;

#[test]
fn curate_selects_and_writes_frames() {
    let dir = scratch_dir(env!("CARGO_TARGET_TMPDIR"), "curate");
    let rrd = dir.join("rec.rrd");
    let captions: Vec<String> = (0..FRAMES)
        .map(|f| match f % 4 {
            0 | 1 => format!("a person near a door, frame {f}."),
            2 => "a robot arm picking a red cup".to_owned(),
            _ => "nothing of interest".to_owned(),
        })
        .collect();
    {
        let rec = rerun::RecordingStreamBuilder::new("curate_test").save(&rrd).unwrap();
        for f in 0..FRAMES {
            rec.set_time_sequence("frame", f);
            let pixels: Vec<u8> = (0..16 * 8 * 3).map(|i| ((i as i64 * 7 + f) % 256) as u8).collect();
            rec.log("world/cam/image", &rerun::Image::from_rgb24(pixels, [16, 8])).unwrap();
            rec.log("agent/caption", &rerun::TextLog::new(captions[f as usize].clone())).unwrap();
        }
        rec.flush_blocking().unwrap();
    }
    let sidecar = dir.join("captions.jsonl");
    std::fs::write(&sidecar, "{\"camera\": \"cam\", \"frame\": 3, \"text\": \"a cup on a table\"}\n").unwrap();
    let metadata = dir.join("metadata.txt");
    std::fs::write(&metadata, "person\ndoor\nrobot arm\ncup\ntable\n").unwrap();
    let out = dir.join("out");
    let args = CurateArgs {
        recordings: vec![rrd.clone()],
        metadata: metadata.clone(),
        t: 5,
        seed: 3,
        captions: Some(sidecar),
        out: out.clone(),
    };
    run(&args).unwrap();
    // The same pool in the order `curate` sorts it: (recording, camera, frame, caption).
    let mut pool: Vec<(i64, String)> = captions.iter().cloned().enumerate().map(|(f, c)| (f as i64, c)).collect();
    pool.push((3, "a cup on a table".into()));
    pool.sort();
    let texts: Vec<&str> = pool.iter().map(|(_, c)| c.as_str()).collect();
    let expected = curate(&texts, &Metadata::parse(&std::fs::read_to_string(&metadata).unwrap()).unwrap(), 5, 3);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(out.join("curated.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), expected.selected.len());
    assert!(!lines.is_empty() && lines.len() < pool.len());
    for (line, &k) in lines.iter().zip(&expected.selected) {
        assert_eq!(line["frame"].as_i64(), Some(pool[k].0));
        assert_eq!(line["caption"].as_str(), Some(pool[k].1.as_str()));
        let png = out.join(line["image"].as_str().unwrap());
        let img = image::open(&png).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (16, 8));
        assert_eq!(img.get_pixel(0, 0).0[0], (pool[k].0 % 256) as u8);
    }
    println!("{} of {} pairs selected", lines.len(), pool.len());
}
