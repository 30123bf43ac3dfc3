//! zenoh sessions: how one is configured, and the only place one is opened.
//!
//! zenoh's synchronous paths (`zenoh::open`, dropping the last handle of a session) call
//! `block_in_place`, which panics on a current-thread tokio runtime, and every actix arbiter
//! is one. So a zenoh session is opened, used and closed only on a thread of its own running a
//! multi-thread tokio runtime ([`spawn_host`]); it meets the pipeline through bounded edges
//! only. Sessions open when their node starts, never while a configuration is read.

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use zenoh::Wait;
use zenoh::bytes::ZBytes;

use ocellus_wire::WireFormat;

/// The zenoh encoding a publisher of frames in `format` declares.
pub fn encoding_of(format: WireFormat) -> zenoh::bytes::Encoding {
    use zenoh::bytes::Encoding;
    match format {
        WireFormat::Raw => Encoding::VIDEO_RAW,
        WireFormat::Jpeg => Encoding::IMAGE_JPEG,
        WireFormat::Png => Encoding::IMAGE_PNG,
        WireFormat::Ros2Image | WireFormat::Ros2CompressedImage => Encoding::APPLICATION_CDR,
    }
}

/// The zenoh link protocols this build compiles in.
pub const LINK_PROTOCOLS: [&str; 2] = ["tcp", "tls"];

/// zenoh session mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionMode {
    /// A peer: talks to other peers directly (and to routers).
    Peer,
    /// A client: talks through one router or peer.
    Client,
}

/// How to open a zenoh session: a zenoh configuration file (TLS, user/password, access
/// control, QoS, ...) with the few settings a pipeline names laid over it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SessionSpec {
    /// A zenoh configuration file (JSON5), read first.
    pub config_file: Option<PathBuf>,
    /// Mode; `None`: the file's, else peer.
    pub mode: Option<SessionMode>,
    /// Endpoints to connect to (`tcp/127.0.0.1:7447`, `tls/host:7447`); empty: the file's.
    pub connect: Vec<String>,
    /// Endpoints to listen on; empty: the file's.
    pub listen: Vec<String>,
    /// Multicast scouting; `None`: the file's (zenoh's default: on).
    pub multicast_scouting: Option<bool>,
    /// Shared memory between local processes; `None`: the file's (zenoh's default: on).
    pub shared_memory: Option<bool>,
    /// User/password authentication; `None`: the file's, if any.
    pub credentials: Option<Credentials>,
    /// The name of a session of the configuration's `[zenoh.<name>]` table: every entry that
    /// names it uses one session, opened by the first and closed by the last.
    pub shared: Option<String>,
}

/// A zenoh user and where its password comes from (read when the session opens, never kept
/// in the configuration, never printed).
#[derive(Debug, Clone, PartialEq)]
pub struct Credentials {
    /// The user name.
    pub user: String,
    /// The password's source.
    pub password: PasswordSource,
}

/// Where a password comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum PasswordSource {
    /// An environment variable.
    Env(String),
    /// A file (one trailing line break ignored).
    File(PathBuf),
}

impl PasswordSource {
    /// Reads the password.
    pub fn read(&self) -> Result<String, String> {
        match self {
            Self::Env(var) => {
                std::env::var(var).map_err(|_| format!("the zenoh password's environment variable {var} is not set"))
            }
            Self::File(path) => std::fs::read_to_string(path)
                .map(|text| {
                    let line = text.strip_suffix('\n').unwrap_or(&text);
                    line.strip_suffix('\r').unwrap_or(line).to_owned()
                })
                .map_err(|e| format!("reading the zenoh password file {}: {e}", path.display())),
        }
    }
}

impl SessionSpec {
    /// A hermetic peer that listens on `listen` and connects to `connect`, without scouting
    /// (tests, benchmarks).
    pub fn loopback(listen: &[&str], connect: &[&str]) -> Self {
        Self {
            mode: Some(SessionMode::Peer),
            connect: connect.iter().map(|s| (*s).to_owned()).collect(),
            listen: listen.iter().map(|s| (*s).to_owned()).collect(),
            multicast_scouting: Some(false),
            ..Self::default()
        }
    }

    /// The zenoh configuration (reads the file and the password; opens nothing).
    pub fn to_config(&self) -> Result<zenoh::Config, String> {
        self.config_with(true)
    }

    /// Checks the configuration file and the settings laid over it without reading the
    /// password (`ocellus check` needs no secret).
    pub fn check(&self) -> Result<(), String> {
        self.config_with(false).map(|_| ())
    }

    fn config_with(&self, credentials: bool) -> Result<zenoh::Config, String> {
        let mut config = match &self.config_file {
            Some(path) => zenoh::Config::from_file(path).map_err(|e| format!("{}: {e}", path.display()))?,
            None => zenoh::Config::default(),
        };
        let mut set = |key: &str, json: String| {
            config.insert_json5(key, &json).map_err(|e| format!("zenoh setting {key} = {json}: {e}"))
        };
        if let Some(mode) = self.mode {
            set("mode", format!("{:?}", if mode == SessionMode::Peer { "peer" } else { "client" }))?;
        }
        for endpoint in self.connect.iter().chain(&self.listen) {
            let protocol = endpoint.split_once('/').map(|(p, _)| p);
            if !protocol.is_some_and(|p| LINK_PROTOCOLS.contains(&p)) {
                return Err(format!(
                    "endpoint {endpoint:?}: this build speaks {} (like \"tcp/127.0.0.1:7447\")",
                    LINK_PROTOCOLS.join(" and ")
                ));
            }
        }
        let list = |v: &[String]| format!("[{}]", v.iter().map(|e| format!("{e:?}")).collect::<Vec<_>>().join(","));
        if !self.connect.is_empty() {
            set("connect/endpoints", list(&self.connect))?;
        }
        if !self.listen.is_empty() {
            set("listen/endpoints", list(&self.listen))?;
        }
        if let Some(on) = self.multicast_scouting {
            set("scouting/multicast/enabled", on.to_string())?;
        }
        if let Some(on) = self.shared_memory {
            set("transport/shared_memory/enabled", on.to_string())?;
        }
        if let Some(credentials) = self.credentials.as_ref().filter(|_| credentials) {
            let password = credentials.password.read()?;
            let quoted = |s: &str| serde_json::Value::String(s.to_owned()).to_string();
            set("transport/auth/usrpwd/user", quoted(&credentials.user))?;
            // Not through `set`: its error would print the value.
            config
                .insert_json5("transport/auth/usrpwd/password", &quoted(&password))
                .map_err(|_| "the zenoh password could not be set".to_owned())?;
        }
        Ok(config)
    }
}

/// The next ROS 2 node id of this process (nodes that share a session stay apart).
pub fn next_node_id() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The open shared sessions: each with the number of its users.
static SHARED: std::sync::LazyLock<tokio::sync::Mutex<std::collections::HashMap<String, (zenoh::Session, usize)>>> =
    std::sync::LazyLock::new(Default::default);

/// Opens the session `spec` describes, or takes one more use of the shared session it names
/// (opened by its first user). Call from a session host thread ([`spawn_host`]); give it back
/// with [`close`].
pub async fn open(spec: &SessionSpec) -> Result<zenoh::Session, String> {
    let open_new = || async {
        let config = spec.to_config()?;
        zenoh::open(config).await.map_err(|e| format!("opening the zenoh session: {e}"))
    };
    let Some(name) = &spec.shared else { return open_new().await };
    // An async lock: two host threads opening the same session wait for one another.
    let mut shared = SHARED.lock().await;
    if let Some((session, users)) = shared.get_mut(name) {
        *users += 1;
        return Ok(session.clone());
    }
    let session = open_new().await.map_err(|e| format!("zenoh session {name:?}: {e}"))?;
    shared.insert(name.clone(), (session.clone(), 1));
    Ok(session)
}

/// Gives back a session from [`open`]: closes it, or a shared one when its last user gives it
/// back.
pub async fn close(session: zenoh::Session, spec: &SessionSpec) -> Result<(), String> {
    if let Some(name) = &spec.shared {
        let mut shared = SHARED.lock().await;
        match shared.get_mut(name) {
            Some((_, users)) if *users > 1 => {
                *users -= 1;
                return Ok(());
            }
            _ => {
                shared.remove(name);
            }
        }
    }
    session.close().await.map_err(|e| format!("closing the zenoh session: {e}"))
}

/// Checks a key expression without opening anything.
pub fn check_key_expr(key: &str) -> Result<(), String> {
    zenoh::key_expr::KeyExpr::try_from(key)
        .map(|_| ())
        .map_err(|e| format!("{key:?} is not a zenoh key expression: {e}"))
}

/// Runs `task` on a new thread named `name` with its own multi-thread tokio runtime: the
/// only place where Ocellus opens, uses and closes zenoh sessions.
pub fn spawn_host<F, Fut>(name: String, task: F) -> std::io::Result<std::thread::JoinHandle<()>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(format!("{name}-rt"))
        .enable_all()
        .build()?;
    std::thread::Builder::new().name(name).spawn(move || {
        runtime.block_on(task());
        runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    })
}

/// Nanoseconds since the epoch of a zenoh (uhlc) timestamp.
pub fn timestamp_ns(ts: &zenoh::time::Timestamp) -> i64 {
    let d = ts.get_time().to_duration();
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// A zenoh payload as [`Bytes`], without a copy when it is one contiguous slice (always
/// for shared memory and for messages that were not fragmented).
pub fn payload_bytes(payload: &ZBytes) -> Bytes {
    struct Contiguous(ZBytes);
    impl AsRef<[u8]> for Contiguous {
        fn as_ref(&self) -> &[u8] {
            self.0.slices().next().unwrap_or(&[])
        }
    }
    if payload.slices().count() == 1 {
        Bytes::from_owner(Contiguous(payload.clone()))
    } else {
        Bytes::from(payload.to_bytes().into_owned())
    }
}

/// Waits until `publisher` has a matching subscriber, at most `timeout` (tests and tools;
/// never on an actix arbiter).
pub fn wait_for_subscriber(publisher: &zenoh::pubsub::Publisher<'_>, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if publisher.matching_status().wait().is_ok_and(|s| s.matching()) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use ocellus_wire::ros2::{EntityKind, MsgType, NodeIdentity, Qos, TypeHashes};

    #[test]
    fn ros2_liveliness_tokens_are_key_expressions() {
        let node = NodeIdentity {
            domain: 0,
            zid: "abc".into(),
            node_id: 0,
            namespace: "/".into(),
            name: "ocellus".into(),
            enclave: String::new(),
        };
        let publisher = node.endpoint_token(
            3,
            EntityKind::Publisher,
            "/ocellus/captions",
            MsgType::String,
            TypeHashes::Rihs01,
            Qos::default(),
        );
        for key in [node.node_token(), publisher] {
            check_key_expr(&key).expect("a valid key expression");
        }
    }

    #[test]
    fn credentials_are_read_when_the_session_opens_and_never_shown() {
        let dir = std::env::temp_dir().join(format!("ocellus-session-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("password");
        std::fs::write(&file, "s3cret \"quoted\"\n").unwrap();
        let mut spec = SessionSpec::loopback(&["tcp/127.0.0.1:0"], &[]);
        spec.credentials = Some(Credentials { user: "ocellus".into(), password: PasswordSource::File(file.clone()) });
        let config = spec.to_config().unwrap();
        assert_eq!(config.get_json("transport/auth/usrpwd/user").unwrap(), "\"ocellus\"");
        assert_eq!(config.get_json("transport/auth/usrpwd/password").unwrap(), r#""s3cret \"quoted\"""#);
        assert!(!format!("{spec:?}").contains("s3cret"));
        let var = "OCELLUS_TEST_UNSET_ZENOH_PASSWORD";
        spec.credentials = Some(Credentials { user: "ocellus".into(), password: PasswordSource::Env(var.into()) });
        let error = spec.to_config().unwrap_err();
        assert!(error.contains(var) && error.contains("not set"), "{error}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn endpoints_must_be_links_this_build_speaks() {
        let mut spec = SessionSpec::loopback(&["tcp/127.0.0.1:0"], &[]);
        assert!(spec.to_config().is_ok());
        spec.connect = vec!["udp/127.0.0.1:7447".into()];
        assert!(spec.to_config().unwrap_err().contains("udp/127.0.0.1:7447"));
    }
}
