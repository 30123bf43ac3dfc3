//! Malformed configurations: every error names the file, the key path and the line.
#![allow(clippy::unwrap_used)] // tests may unwrap, helpers included

use std::path::Path;

use ocellus_io::kinds::ConfiguredSource;
use ocellus_pipelines::PipelineConfig;

const GOOD_SOURCE: &str = r#"
[[source]]
name = "front"
preset = { kind = "test_pattern", frames = 10 }
"#;

/// Parses `text`, expects an error at `path` on `line` whose message contains `needle`.
fn expect_error(text: &str, path: &str, line: usize, needle: &str) {
    let err = PipelineConfig::parse(Path::new("bad.toml"), text).expect_err("config must be rejected");
    let shown = err.to_string();
    assert_eq!(err.path.to_string(), path, "{shown}");
    assert_eq!(err.line, Some(line), "{shown}");
    assert!(err.message.contains(needle), "{shown}");
    assert!(shown.starts_with(&format!("bad.toml:{line}:")), "{shown}");
    assert!(shown.contains(path), "{shown}");
}

#[test]
fn unknown_key_in_an_actor() {
    let text = format!(
        "{GOOD_SOURCE}\n[[actor]]\nname = \"motion\"\nkind = \"motion\"\ninputs = [\"front\"]\nthreshhold = 0.1\n"
    );
    expect_error(&text, "actor[0].threshhold", 10, "unknown field `threshhold`");
}

#[test]
fn wrong_type_deep_in_an_inline_table() {
    let text = format!(
        "{GOOD_SOURCE}\n[[actor]]\nname = \"motion\"\nkind = \"motion\"\ninputs = [\"front\"]\nedge = {{ policy = \"queue\", depth = \"four\" }}\n"
    );
    expect_error(&text, "actor[0].edge.depth", 10, "invalid type");
}

#[test]
fn unknown_input() {
    let text = format!("{GOOD_SOURCE}\n[[sink]]\nkind = \"rerun\"\nsave = \"x.rrd\"\ninputs = [\"front\", \"back\"]\n");
    expect_error(&text, "sink[0].inputs[1]", 9, "unknown node \"back\"");
}

#[test]
fn unknown_edge_policy() {
    let text = format!(
        "{GOOD_SOURCE}\n[[actor]]\nname = \"m\"\nkind = \"motion\"\ninputs = [\"front\"]\nedge = {{ policy = \"fastest\" }}\n"
    );
    expect_error(&text, "actor[0].edge.policy", 10, "unknown variant `fastest`");
}

#[test]
fn bad_device() {
    expect_error(&format!("[runtime]\ndevice = \"tpu\"\n{GOOD_SOURCE}"), "runtime.device", 2, "unknown device \"tpu\"");
}

#[test]
fn bad_duration() {
    expect_error(
        &format!("[runtime]\nmetrics_every = \"soon\"\n{GOOD_SOURCE}"),
        "runtime.metrics_every",
        2,
        "not a duration",
    );
}

#[test]
fn unknown_actor_kind() {
    let text = format!("{GOOD_SOURCE}\n[[actor]]\nname = \"x\"\nkind = \"teleport\"\ninputs = [\"front\"]\n");
    expect_error(&text, "actor[0].kind", 8, "unknown kind \"teleport\"");
}

#[test]
fn duplicate_name() {
    let text = format!("{GOOD_SOURCE}\n[[actor]]\nname = \"front\"\nkind = \"motion\"\ninputs = [\"front\"]\n");
    expect_error(&text, "actor[0].name", 7, "already used by source[0].name");
}

#[test]
fn zero_depth() {
    let text = format!(
        "{GOOD_SOURCE}\n[[actor]]\nname = \"m\"\nkind = \"motion\"\ninputs = [\"front\"]\nedge = {{ policy = \"block\", depth = 0 }}\n"
    );
    expect_error(&text, "actor[0].edge.depth", 10, "at least 1");
}

#[test]
fn cycle() {
    let text = format!(
        "{GOOD_SOURCE}\n[[actor]]\nname = \"a\"\nkind = \"motion\"\ninputs = [\"b\"]\n\n[[actor]]\nname = \"b\"\nkind = \"motion\"\ninputs = [\"a\"]\n"
    );
    expect_error(&text, "actor[0].inputs", 9, "cycle");
}

#[test]
fn syntax_error_points_at_the_line() {
    let err =
        PipelineConfig::parse(Path::new("bad.toml"), "[runtime]\ndevice = \"cpu\nx = 1\n").expect_err("invalid TOML");
    assert_eq!(err.line, Some(2), "{err}");
    assert!(err.message.contains("invalid TOML"), "{err}");
}

#[test]
fn bad_gstreamer_element_names_the_element_and_line() {
    let dir = ocellus_tests::scratch_dir(env!("CARGO_TARGET_TMPDIR"), "config_errors");
    let path = dir.join("gst.toml");
    std::fs::write(&path, "[[source]]\nname = \"cam\"\ngstreamer = \"videotestsrc ! nosuchelement ! fakesink\"\n")
        .unwrap();
    let config = PipelineConfig::load(&path).unwrap();
    let err = ocellus_pipelines::check(&config).expect_err("unknown element");
    let shown = err.to_string();
    assert!(shown.contains("source[0].gstreamer"), "{shown}");
    assert!(shown.contains(":3:"), "{shown}");
    assert!(shown.contains("nosuchelement"), "{shown}");
}

#[test]
fn every_shipped_config_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let config = PipelineConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
            ocellus_pipelines::check(&config).unwrap_or_else(|e| panic!("{e}"));
            checked += 1;
        }
    }
    assert!(checked >= 4, "configs/ holds the demo and the examples");
    let demo = PipelineConfig::load(&dir.join("demo.toml")).unwrap();
    assert_eq!((demo.sources.len(), demo.actors.len(), demo.sinks.len()), (1, 5, 1));
    let motion = PipelineConfig::load(&dir.join("motion.toml")).unwrap();
    assert_eq!((motion.sources.len(), motion.actors.len(), motion.sinks.len()), (1, 1, 1));
}

#[test]
fn backbone_without_weights() {
    let text = format!(
        "{GOOD_SOURCE}\n[[actor]]\nname = \"b\"\nkind = \"backbone\"\nmodel = \"hiera_tiny_224\"\ninputs = [\"front\"]\n"
    );
    expect_error(&text, "actor[0]", 6, "needs `weights`");
}

#[test]
fn backbone_weights_file_missing() {
    let text = format!(
        "{GOOD_SOURCE}\n[[actor]]\nname = \"b\"\nkind = \"backbone\"\nmodel = \"hiera_tiny_224\"\ninputs = [\"front\"]\nweights = \"/nonexistent/w.safetensors\"\n"
    );
    expect_error(&text, "actor[0].weights", 11, "ocellus weights import --model hiera_tiny_224");
}

#[test]
fn backbone_unknown_model_and_fixed_resolution() {
    let base = format!(
        "{GOOD_SOURCE}\n[[actor]]\nname = \"b\"\nkind = \"backbone\"\ninputs = [\"front\"]\nallow_random_weights = true\n"
    );
    expect_error(
        &format!("{base}model = \"hiera_gigantic\"\n"),
        "actor[0].model",
        11,
        "unknown model \"hiera_gigantic\"",
    );
    expect_error(
        &format!("{base}model = \"hiera_tiny_224\"\nresolution = [256, 256]\n"),
        "actor[0].resolution",
        12,
        "runs at [224, 224] only",
    );
    expect_error(
        &format!("{base}model = \"sam2.1_hiera_tiny\"\nresolution = [250, 256]\n"),
        "actor[0].resolution",
        12,
        "multiples of 32",
    );
}

#[test]
fn sam2_prompt_errors() {
    let base = format!(
        "{GOOD_SOURCE}\n[[actor]]\nname = \"t\"\nkind = \"sam2\"\nmodel = \"sam2.1_hiera_tiny\"\ninputs = [\"front\"]\nallow_random_weights = true\n"
    );
    expect_error(&format!("{base}prompts = [{{ box = [10, 10, 5, 20] }}]\n"), "actor[0].prompts[0].box", 12, "x0 < x1");
    expect_error(
        &format!("{base}prompts = [{{ points = [[1, 2]], labels = [1, 0] }}]\n"),
        "actor[0].prompts[0].labels",
        12,
        "one label per point",
    );
    expect_error(
        &format!("{base}prompts = [{{ id = 3, box = [0, 0, 5, 5] }}, {{ id = 3, points = [[1, 2]] }}]\n"),
        "actor[0].prompts[1].id",
        12,
        "unique",
    );
    expect_error(
        &format!("{base}prompts = [{{ box = [0, 0, 5, 5], points = [[1, 2]] }}]\n"),
        "actor[0].prompts[0]",
        12,
        "either `box` or `points`",
    );
    expect_error(
        &format!("{base}prompts = [{{ box = [0, 0, 5, 5] }}, {{ box = [1, 1, 6, 6] }}]\nmax_tracks = 1\n"),
        "actor[0].max_tracks",
        13,
        "hold the 2 configured prompts",
    );
}

#[test]
fn zenoh_credentials_errors() {
    let source =
        |keys: &str| format!("[[source]]\nname = \"cam\"\nzenoh = {{ key = \"a/b\", encoding = \"raw\", {keys} }}\n");
    expect_error(&source("user = \"ocellus\""), "source[0].zenoh.user", 3, "needs its password");
    expect_error(&source("password_env = \"PW\""), "source[0].zenoh.password_env", 3, "needs its `user`");
    expect_error(
        &source("user = \"o\", password_env = \"PW\", password_file = \"/etc/hostname\""),
        "source[0].zenoh.password_file",
        3,
        "not both",
    );
    expect_error(
        &source("user = \"o\", password_file = \"/nonexistent/zenoh-password\""),
        "source[0].zenoh.password_file",
        3,
        "password file /nonexistent/zenoh-password not found",
    );
    // The session table takes them, and entries that name the session may not.
    let shared = "[zenoh.robot]\nmode = \"client\"\nuser = \"o\"\npassword_env = \"PW\"\n\n";
    let with = |keys: &str| {
        format!(
            "{shared}[[source]]\nname = \"cam\"\nzenoh = {{ key = \"a/b\", encoding = \"raw\", session = \"robot\"{keys} }}\n\
             [[sink]]\nkind = \"null\"\ninputs = [\"cam\"]\n"
        )
    };
    if let Err(e) = PipelineConfig::parse(Path::new("ok.toml"), &with("")) {
        panic!("{e}");
    }
    expect_error(&with(", user = \"x\""), "source[0].zenoh.user", 8, "`user` belongs to the session");
}

#[test]
fn zenoh_source_and_sink_errors() {
    let source = |zenoh: &str| format!("[[source]]\nname = \"cam\"\nzenoh = {{ {zenoh} }}\n");
    expect_error(
        &source("key = \"a/b\", encoding = \"h264\""),
        "source[0].zenoh.encoding",
        3,
        "unknown variant `h264`, expected one of `raw`, `jpeg`, `png`",
    );
    expect_error(&source("key = \"a//b\", encoding = \"raw\""), "source[0].zenoh.key", 3, "not a zenoh key expression");
    expect_error(
        &source("topic = \"/cam\", encoding = \"raw\""),
        "source[0].zenoh.topic",
        3,
        "needs a ros2/... encoding",
    );
    expect_error(
        &source("key = \"a\", encoding = \"raw\", config = \"/nonexistent/zenoh.json5\""),
        "source[0].zenoh.config",
        3,
        "not found",
    );
    expect_error(
        &source("key = \"a\", encoding = \"raw\", connect = [\"carrier-pigeon/1\"]"),
        "source[0].zenoh.connect[0]",
        3,
        "this build speaks tcp and tls",
    );
    expect_error(
        &source("key = \"a\", encoding = \"raw\", mode = \"router\""),
        "source[0].zenoh.mode",
        3,
        "unknown variant",
    );
    let ros = PipelineConfig::parse(
        Path::new("ok.toml"),
        &source("topic = \"/camera/image_raw/\", domain = 3, encoding = \"ros2/sensor_msgs/Image\""),
    )
    .unwrap();
    let ConfiguredSource::Zenoh(spec) = &ros.sources[0].kind else { panic!("a zenoh source") };
    assert_eq!(spec.key, "3/camera/image_raw/sensor_msgs::msg::dds_::Image_/*");

    let sink = |extra: &str| format!("{GOOD_SOURCE}\n[[sink]]\nkind = \"zenoh\"\ninputs = [\"front\"]\n{extra}\n");
    expect_error(&sink("prefix = \"x\"\nkeys = \"ros2\""), "sink[0].prefix", 9, "does not apply to keys = \"ros2\"");
    expect_error(&sink("shm_pool_mib = 64"), "sink[0].shm_pool_mib", 9, "set `frames = true`");
    expect_error(&sink("keys = \"dds\""), "sink[0].keys", 9, "unknown variant `dds`");
}

#[test]
fn agent_errors() {
    let tracker = "\n[[actor]]\nname = \"t\"\nkind = \"sam2\"\nmodel = \"sam2.1_hiera_tiny\"\ninputs = [\"front\"]\nallow_random_weights = true\n";
    // Lines: GOOD_SOURCE ends on line 4; the tracker spans 6-11; the agent 13-17, line 18 is added.
    let base = format!(
        "{GOOD_SOURCE}{tracker}\n[[actor]]\nname = \"a\"\nkind = \"agent\"\ninputs = [\"t\"]\nserver = {{ url = \"http://127.0.0.1:8080/v1\", model = \"m\" }}\n"
    );
    expect_error(
        &format!("{base}tools = [\"alert\", \"unlock\"]\n"),
        "actor[1].tools[1]",
        18,
        "unknown variant `unlock`, expected one of `track`",
    );
    expect_error(
        &format!("{base}guard = {{ model = \"llama-guard-2\" }}\n"),
        "actor[1].guard.model",
        18,
        "unknown guard",
    );
    expect_error(
        &format!("{base}guard = {{ server = {{ url = \"x\", model = \"g\" }}, exclude = [\"S14\"] }}\n"),
        "actor[1].guard.server.url",
        18,
        "http(s) URL",
    );
    expect_error(
        &format!("{base}guard = {{ server = {{ url = \"http://h/v1\", model = \"g\" }}, exclude = [\"S14\"] }}\n"),
        "actor[1].guard.exclude[0]",
        18,
        "S1..S13",
    );
    expect_error(&format!("{base}caption_every = \"soon\"\n"), "actor[1].caption_every", 18, "not a duration");
    expect_error(&format!("{base}model = \"llama-3.2-1b\"\n"), "actor[1].server", 17, "not both");
    let untracked = format!(
        "{GOOD_SOURCE}\n[[actor]]\nname = \"a\"\nkind = \"agent\"\ninputs = [\"front\"]\nserver = {{ url = \"http://h/v1\", model = \"m\" }}\ntools = [\"track\"]\n"
    );
    expect_error(&untracked, "actor[0].tools", 11, "need a sam2 actor");
    expect_error(&format!("{base}tools = [\"inpaint\"]\n"), "actor[1].tools", 18, "needs an inpainter actor");
    expect_error(&format!("{base}inpainter = \"t\"\n"), "actor[1].inpainter", 18, "is not an inpainter actor");
}

#[test]
fn inpainter_errors() {
    // Lines: GOOD_SOURCE ends on line 4; the inpainter spans 6-9, line 10 is added.
    let base = format!("{GOOD_SOURCE}\n[[actor]]\nname = \"p\"\nkind = \"inpainter\"\ninputs = [\"front\"]\n");
    expect_error(
        &format!("{base}method = \"smudge\"\n"),
        "actor[0].method",
        10,
        "unknown variant `smudge`, expected `diffmae` or `blur`",
    );
    expect_error(
        &format!("{base}model = \"diffmae_vit_tiny\"\n"),
        "actor[0].model",
        10,
        "unknown model \"diffmae_vit_tiny\" (known DiffMAE models: diffmae_vit_base_patch16",
    );
    expect_error(&format!("{base}allow_random_weights = true\nsteps = 0\n"), "actor[0].steps", 11, "1..=1000");
    expect_error(&format!("{base}blur_radius = 8\n"), "actor[0].blur_radius", 10, "only for `method = \"blur\"`");
    expect_error(&format!("{base}method = \"blur\"\nsteps = 4\n"), "actor[0].steps", 11, "only for");
    expect_error(&format!("{base}method = \"blur\"\nblur_radius = 0\n"), "actor[0].blur_radius", 11, "1..=256");
    expect_error(&format!("{base}method = \"blur\"\nlabels = [\"\"]\n"), "actor[0].labels[0]", 11, "non-empty");
    expect_error(&format!("{base}method = \"blur\"\ndilate = 1000\n"), "actor[0].dilate", 11, "at most 256");
    expect_error(&base, "actor[0]", 6, "needs `weights`");
}

#[test]
fn reconnect_settings() {
    let source = |extra: &str| {
        format!(
            "[[source]]\nname = \"cam\"\npreset = {{ kind = \"rtsp\", url = \"rtsp://127.0.0.1:8554/x\" }}\n{extra}"
        )
    };
    let reconnect = |text: &str| match &PipelineConfig::parse(Path::new("ok.toml"), text).unwrap().sources[0].kind {
        ConfiguredSource::Gstreamer(spec) => spec.reconnect,
        other => panic!("{other:?}"),
    };
    // RTSP reconnects by default; `false` turns it off; a table sets it.
    let default = reconnect(&source("")).expect("on by default for RTSP");
    assert_eq!(
        (default.initial.as_millis(), default.max.as_secs(), default.stall.map(|s| s.as_secs())),
        (500, 10, Some(5))
    );
    assert_eq!(reconnect(&source("reconnect = false\n")), None);
    let set = reconnect(&source("reconnect = { initial = \"100ms\", max = \"2s\", stall = \"0s\" }\n")).unwrap();
    assert_eq!((set.initial.as_millis(), set.max.as_secs(), set.stall), (100, 2, None));
    assert_eq!(reconnect(GOOD_SOURCE), None, "other sources only when told");
    expect_error(&source("reconnect = { initial = \"2s\", max = \"1s\" }\n"), "source[0].reconnect.max", 4, "at least");
    expect_error(&source("reconnect = { stall = \"often\" }\n"), "source[0].reconnect.stall", 4, "not a duration");
    expect_error(&source("reconnect = { backoff = \"1s\" }\n"), "source[0].reconnect.backoff", 4, "unknown field");
    expect_error(&source("reconnect = 3\n"), "source[0].reconnect", 4, "expected true, false");
}

#[test]
fn typed_ports() {
    // Lines: GOOD_SOURCE ends on line 4; the tracker spans 6-11; the labeler 13-19 (`inputs` on 19).
    let tracker = "\n[[actor]]\nname = \"t\"\nkind = \"sam2\"\nmodel = \"sam2.1_hiera_tiny\"\ninputs = [\"front\"]\nallow_random_weights = true\n";
    let labeler = |inputs: &str| {
        format!(
            "{GOOD_SOURCE}{tracker}\n[[actor]]\nname = \"l\"\nkind = \"labeler\"\nmodel = \"ViT-B-32-quickgelu\"\n\
             allow_random_weights = true\nvocabulary = [\"a\", \"b\"]\ninputs = {inputs}\n"
        )
    };
    // Both wired by name: valid (and the edges are the ports' own).
    let ok = PipelineConfig::parse(Path::new("ok.toml"), &labeler("{ frames = \"front\", tracks = \"t\" }")).unwrap();
    let wires: Vec<(&str, String)> =
        ok.node("l").unwrap().wires.iter().map(|w| (w.port, w.from[0].to_string())).collect();
    assert_eq!(wires, [("frames", "front".to_owned()), ("tracks", "t".to_owned())]);
    // A list for a node with two inputs.
    expect_error(&labeler("[\"front\", \"t\"]"), "actor[1].inputs", 19, "several inputs: wire them by name");
    // An input left unwired.
    expect_error(&labeler("{ frames = \"front\" }"), "actor[1].inputs", 19, "input `tracks` (tracks) is not wired");
    // The wrong type on an input: a camera's frames where tracks are expected.
    expect_error(
        &labeler("{ frames = \"front\", tracks = \"front\" }"),
        "actor[1].inputs.tracks",
        19,
        "input `tracks` takes tracks, but \"front\" emits frames",
    );
    expect_error(
        &labeler("{ frames = \"t\", tracks = \"t\" }"),
        "actor[1].inputs.frames",
        19,
        "input `frames` takes frames, but \"t\" emits tracks",
    );
    // An input the kind does not have, an output the upstream does not have.
    expect_error(&labeler("{ frams = \"front\", tracks = \"t\" }"), "actor[1].inputs.frams", 19, "no input `frams`");
    expect_error(
        &labeler("{ frames = \"front\", tracks = \"t.masks\" }"),
        "actor[1].inputs.tracks",
        19,
        "has no output `masks`",
    );
    // An edge per input, in the table form; on several lines, each error has its own line.
    let per_input = labeler(
        "{ frames = { from = \"front\", edge = { policy = \"queue\", depth = 4 } }, tracks = { from = \"t\", edge = { policy = \"warp\" } } }",
    );
    expect_error(&per_input, "actor[1].inputs.tracks.edge.policy", 19, "unknown variant `warp`");
    // A sink takes several types, but not every one: a zenoh sink reads no features.
    let backbone = "\n[[actor]]\nname = \"b\"\nkind = \"backbone\"\nmodel = \"hiera_tiny_224\"\ninputs = [\"front\"]\nallow_random_weights = true\n";
    expect_error(
        &format!("{GOOD_SOURCE}{backbone}\n[[sink]]\nkind = \"zenoh\"\ninputs = [\"front\", \"b\"]\n"),
        "sink[0].inputs[1]",
        15,
        "emits features",
    );
    // The agent reads tracks: a camera is refused.
    expect_error(
        &format!(
            "{GOOD_SOURCE}\n[[actor]]\nname = \"a\"\nkind = \"agent\"\ninputs = [\"front\"]\nserver = {{ url = \"http://h/v1\", model = \"m\" }}\n"
        ),
        "actor[0].inputs[0]",
        9,
        "takes tracks, but \"front\" emits frames",
    );
}

/// Shared zenoh sessions: an unknown name, and a session key given next to `session`.
#[test]
fn zenoh_session_table_errors() {
    let sessions = "[zenoh.robot]\nconnect = [\"tcp/127.0.0.1:7447\"]\n";
    let source = |extra: &str| {
        format!(
            "{sessions}\n[[source]]\nname = \"cam\"\nzenoh = {{ key = \"cam/frames\", encoding = \"raw\", {extra} }}\n"
        )
    };
    expect_error(&source("session = \"lab\""), "source[0].zenoh.session", 6, "no session \"lab\" in [zenoh] (robot)");
    expect_error(
        &source("session = \"robot\", mode = \"client\""),
        "source[0].zenoh.mode",
        6,
        "`mode` belongs to the session",
    );
    expect_error(
        &format!("[zenoh.robot]\nconect = [\"tcp/127.0.0.1:7447\"]\n{GOOD_SOURCE}"),
        "zenoh.robot.conect",
        2,
        "unknown field `conect`",
    );
    // Named and used: the source's session is the table's.
    let ok = PipelineConfig::parse(Path::new("ok.toml"), &source("session = \"robot\"")).unwrap();
    assert_eq!(ok.sources.len(), 1);
}

/// What a configuration asks to be fetched, and the other new keys' errors.
#[test]
fn fetched_weights_samples_and_qos_errors() {
    let actor = |model: &str| {
        format!(
            "{GOOD_SOURCE}\n[[actor]]\nname = \"b\"\nkind = \"backbone\"\nmodel = \"{model}\"\ninputs = [\"front\"]\nweights = \"official\"\n"
        )
    };
    expect_error(&actor("hiera_gigantic"), "actor[0].model", 9, "no published checkpoint known for \"hiera_gigantic\"");
    // Offline (checking) and nowhere to fall back to: named with its line (the tests' folder
    // holds no `weights/`).
    expect_error(
        &actor("hiera_tiny_224"),
        "actor[0].weights",
        11,
        "not fetched yet (`ocellus weights fetch hiera_tiny_224`)",
    );
    let sample = |preset: &str| format!("[[source]]\nname = \"cam\"\npreset = {preset}\n");
    expect_error(
        &sample("{ kind = \"sample\", name = \"kitchen\" }"),
        "source[0].preset.name",
        3,
        "no sample \"kitchen\"",
    );
    expect_error(
        &sample("{ kind = \"sample\", name = \"sam2-bedroom\", frames = 500 }"),
        "source[0].preset.frames",
        3,
        "has 1 to 200 frames",
    );
    expect_error(
        &sample("{ kind = \"file\", path = \"clip.mp4\", fps = 10 }"),
        "source[0].preset.fps",
        3,
        "for image sequences",
    );
    expect_error(
        "[[source]]\nname = \"cam\"\nzenoh = { key = \"cam/frames\", encoding = \"raw\", qos = { depth = 3 } }\n",
        "source[0].zenoh.qos",
        3,
        "QoS is for a ROS 2 `topic`",
    );
    let agent = |keys: &str| {
        format!(
            "{GOOD_SOURCE}\n[[actor]]\nname = \"t\"\nkind = \"sam2\"\nmodel = \"sam2.1_hiera_tiny\"\nallow_random_weights = true\ninputs = [\"front\"]\n\n[[actor]]\nname = \"a\"\nkind = \"agent\"\ninputs = [\"t\"]\n{keys}\n"
        )
    };
    expect_error(
        &agent("rules = true\nserver = { url = \"http://127.0.0.1:1/v1\", model = \"m\" }"),
        "actor[1].rules",
        17,
        "one of them",
    );
    expect_error(&agent("rules = true\naction_threshold = 2.0"), "actor[1].action_threshold", 18, "a probability");
}

/// Quantized weights are for the agent's Llama; a bad format is named.
#[test]
fn quantized_dtype_errors() {
    let backbone = format!(
        "{GOOD_SOURCE}\n[[actor]]\nname = \"b\"\nkind = \"backbone\"\nmodel = \"hiera_tiny_224\"\ninputs = [\"front\"]\nallow_random_weights = true\ndtype = \"int8\"\n"
    );
    expect_error(&backbone, "actor[0].dtype", 12, "a backbone node runs no quantized model");
    let agent = |dtype: &str| {
        format!(
            "{GOOD_SOURCE}\n[[actor]]\nname = \"t\"\nkind = \"sam2\"\nmodel = \"sam2.1_hiera_tiny\"\nallow_random_weights = true\ninputs = [\"front\"]\n\n[[actor]]\nname = \"a\"\nkind = \"agent\"\ninputs = [\"t\"]\nmodel = \"llama-3.2-1b-instruct\"\nallow_random_weights = true\ntokenizer = \"/dev/null\"\ndtype = \"{dtype}\"\n"
        )
    };
    expect_error(&agent("int4:48"), "actor[1].dtype", 20, "expected int8, int4 or int4:<32|64|128|256>");
    assert!(PipelineConfig::parse(Path::new("ok.toml"), &agent("int4:64")).is_ok());
}

/// The guard's own `dtype` is checked as the agent's is.
#[test]
fn guard_quantized_dtype_error() {
    let text = format!(
        "{GOOD_SOURCE}\n[[actor]]\nname = \"t\"\nkind = \"sam2\"\nmodel = \"sam2.1_hiera_tiny\"\nallow_random_weights = true\ninputs = [\"front\"]\n\n[[actor]]\nname = \"a\"\nkind = \"agent\"\ninputs = [\"t\"]\nrules = true\ntokenizer = \"/dev/null\"\nguard = {{ allow_random_weights = true, dtype = \"int9\" }}\n"
    );
    expect_error(&text, "actor[1].guard.dtype", 19, "expected int8, int4");
}

#[test]
fn source_limits_are_checked() {
    let source = |limits: &str| {
        format!(
            "[[source]]\nname = \"cam\"\nzenoh = {{ key = \"cams/front\", encoding = \"jpeg\", limits = {limits} }}\n"
        )
    };
    let text = source("{ max_message_mb = 16, max_pixels = 2073600 }");
    assert!(PipelineConfig::parse(Path::new("ok.toml"), &text).is_ok());
    for (limits, key, needle) in [
        ("{ max_message_mb = 0 }", "max_message_mb", "must be in (0, 4096]"),
        ("{ max_pixels = 0 }", "max_pixels", "at least 1"),
        ("{ max_pixel = 10 }", "max_pixel", "unknown field"),
    ] {
        expect_error(&source(limits), &format!("source[0].zenoh.limits.{key}"), 3, needle);
    }
}
