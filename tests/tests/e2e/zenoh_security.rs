#![allow(clippy::unwrap_used)] // tests may unwrap, helpers included
//! Authenticated and encrypted zenoh, live: a router run from the shipped
//! `configs/zenoh/router-secure.json5` (TLS with certificates made here, user/password, access
//! control), a camera, an operator and an Ocellus pipeline connecting through it with the
//! shipped `configs/zenoh/client-secure.json5` and their own credentials.
//!
//! A session without credentials, with a wrong password or in clear text is refused; frames
//! from the camera the access control makes private reach nothing; everything else flows.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ocellus_tests::{config_file, free_port, scratch_dir};
use ocellus_wire::{FrameLayout, PixelFormat, raw};
use parking_lot::Mutex;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use zenoh::Wait;

/// Users of the router's credentials file.
const USERS: [(&str, &str); 3] = [("camera", "lens-9f2"), ("ocellus", "eyes-41c"), ("operator", "desk-77a")];
/// Where the shipped configurations expect their files.
const SHIPPED_DIR: &str = "/etc/ocellus/zenoh/";

fn configs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/zenoh")
}

/// A certificate authority and a router certificate for `localhost` signed by it, with the
/// credentials file, in `dir` under the names the shipped configurations use.
fn make_secrets(dir: &Path) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "Ocellus test authority");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let router_key = KeyPair::generate().unwrap();
    let mut router = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    router.distinguished_name.push(DnType::CommonName, "localhost");
    let router_cert = router.signed_by(&router_key, &issuer).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("router.pem"), router_cert.pem()).unwrap();
    std::fs::write(dir.join("router.key"), router_key.serialize_pem()).unwrap();
    let dictionary: String = USERS.iter().map(|(u, p)| format!("{u}:{p}\n")).collect();
    std::fs::write(dir.join("credentials.txt"), dictionary).unwrap();
}

/// The shipped configuration `name`, its files moved to `dir`, written there.
fn shipped(name: &str, dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(configs_dir().join(name)).unwrap();
    assert!(text.contains(SHIPPED_DIR), "{name} names its files under {SHIPPED_DIR}");
    let path = dir.join(name);
    std::fs::write(&path, text.replace(SHIPPED_DIR, &format!("{}/", dir.display()))).unwrap();
    path
}

/// A client session config: the shipped client file, `endpoint`, and `user` when given.
fn client(dir: &Path, endpoint: &str, user: Option<(&str, &str)>) -> zenoh::Config {
    let mut config = zenoh::Config::from_file(shipped("client-secure.json5", dir)).unwrap();
    config.insert_json5("connect/endpoints", &format!("[{endpoint:?}]")).unwrap();
    if let Some((user, password)) = user {
        config.insert_json5("transport/auth/usrpwd/user", &format!("{user:?}")).unwrap();
        config.insert_json5("transport/auth/usrpwd/password", &format!("{password:?}")).unwrap();
    }
    config
}

fn credentials(user: &str) -> Option<(&'static str, &'static str)> {
    USERS.iter().copied().find(|(u, _)| *u == user)
}

/// Keys of the messages `session` receives on `key`.
fn keys_received(session: &zenoh::Session, key: &str) -> (zenoh::pubsub::Subscriber<()>, Arc<Mutex<Vec<String>>>) {
    let keys = Arc::new(Mutex::new(Vec::new()));
    let sink = keys.clone();
    let subscriber = session
        .declare_subscriber(key.to_owned())
        .callback(move |s| sink.lock().push(s.key_expr().to_string()))
        .wait()
        .unwrap();
    (subscriber, keys)
}

#[test]
fn tls_users_and_access_control_let_through_only_what_is_allowed() {
    let dir = scratch_dir(env!("CARGO_TARGET_TMPDIR"), "zenoh_security");
    make_secrets(&dir);
    let port = free_port();
    let endpoint = format!("tls/localhost:{port}");
    let mut router_config = zenoh::Config::from_file(shipped("router-secure.json5", &dir)).unwrap();
    router_config.insert_json5("listen/endpoints", &format!("[{endpoint:?}]")).unwrap();
    let router = zenoh::open(router_config).wait().unwrap();

    // Refused: no credentials, a wrong password, clear text on the TLS port.
    assert!(zenoh::open(client(&dir, &endpoint, None)).wait().is_err(), "a session without credentials");
    assert!(zenoh::open(client(&dir, &endpoint, Some(("ocellus", "guess")))).wait().is_err(), "a wrong password");
    let mut clear = client(&dir, &format!("tcp/localhost:{port}"), credentials("ocellus"));
    clear.insert_json5("transport/link/protocols", r#"["tcp"]"#).unwrap();
    assert!(zenoh::open(clear).wait().is_err(), "clear text");

    // The operator listens to what Ocellus publishes, and tries to read the cameras.
    let operator = zenoh::open(client(&dir, &endpoint, credentials("operator"))).wait().unwrap();
    let (_outputs, outputs) = keys_received(&operator, "ocellus/**");
    let (_cameras, cameras_seen) = keys_received(&operator, "cameras/**");

    // The camera publishes a public and a private stream until the pipeline is done.
    let camera = zenoh::open(client(&dir, &endpoint, credentials("camera"))).wait().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let publishing = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let layout = FrameLayout::packed(PixelFormat::Rgb, 32, 24);
            let pixels = vec![90u8; layout.required_len()];
            let mut seq = 0;
            while !stop.load(Ordering::Acquire) {
                let frame = raw::encode(&layout, &pixels, seq, seq as i64 * 1_000_000).unwrap();
                camera.put("cameras/front", frame.clone()).wait().unwrap();
                camera.put("cameras/private/bathroom", frame).wait().unwrap();
                seq += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            camera.close().wait().unwrap();
            seq
        })
    };

    // Ocellus, as the user `ocellus`, its password in a file.
    let password = dir.join("ocellus.password");
    std::fs::write(&password, format!("{}\n", credentials("ocellus").unwrap().1)).unwrap();
    let pipeline = |password: &Path| {
        format!(
            "[zenoh.router]\nmode = \"client\"\nconnect = [\"{endpoint}\"]\nconfig = \"{}\"\nuser = \"ocellus\"\n\
             password_file = \"{}\"\n\n\
             [[source]]\nname = \"front\"\nzenoh = {{ key = \"cameras/front\", encoding = \"raw\", session = \"router\", frames = 20, idle_timeout = \"10s\" }}\n\n\
             [[source]]\nname = \"bathroom\"\nzenoh = {{ key = \"cameras/private/bathroom\", encoding = \"raw\", session = \"router\", frames = 20, idle_timeout = \"3s\" }}\n\n\
             [[sink]]\nkind = \"zenoh\"\ninputs = [\"front\", \"bathroom\"]\nkeys = \"zenoh\"\nprefix = \"ocellus\"\nframes = true\nsession = \"router\"\n",
            dir.join("client-secure.json5").display(),
            password.display()
        )
    };
    let config = config_file(&dir, "secure.toml", &pipeline(&password));
    let report = ocellus_pipelines::build(&config).unwrap().run().unwrap();
    std::thread::sleep(Duration::from_millis(300)); // the last outputs cross the router
    stop.store(true, Ordering::Release);
    let published = publishing.join().unwrap();
    println!("{report}");
    assert_eq!(report.failures().count(), 0, "{report}");
    assert_eq!(report.node("front").unwrap().metrics.emitted, 20, "the public camera flows");
    assert_eq!(report.node("bathroom").unwrap().metrics.emitted, 0, "the private camera reaches nothing");
    let outputs = outputs.lock().clone();
    assert!(outputs.iter().any(|k| k == "ocellus/front/frames"), "the operator gets Ocellus's outputs: {outputs:?}");
    assert!(!outputs.iter().any(|k| k.contains("bathroom")), "{outputs:?}");
    assert!(cameras_seen.lock().is_empty(), "the operator may not read the cameras: {:?}", cameras_seen.lock());
    println!(
        "camera published {published} frames on each key; Ocellus took 20 of the public one and 0 of the private \
one; the operator got {} outputs, 0 camera frames",
        outputs.len()
    );

    // Ocellus with a wrong password: the pipeline fails, naming the session, not the password.
    let wrong = dir.join("wrong.password");
    std::fs::write(&wrong, "not-it\n").unwrap();
    let config = config_file(&dir, "wrong.toml", &pipeline(&wrong));
    let report = ocellus_pipelines::build(&config).unwrap().run().unwrap();
    let text = report.to_string();
    assert!(report.failures().count() > 0 && text.contains("zenoh session"), "{text}");
    assert!(!text.contains("not-it"), "{text}");

    operator.close().wait().unwrap();
    router.close().wait().unwrap();
}
