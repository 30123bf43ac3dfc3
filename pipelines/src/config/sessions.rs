//! `[zenoh.<name>]`: zenoh sessions named once at the top of a configuration and shared.
//!
//! ```toml
//! [zenoh.robot]
//! mode = "client"
//! connect = ["tcp/10.0.0.2:7447"]
//!
//! [[source]]
//! name = "front"
//! zenoh = { topic = "/camera/image_raw", encoding = "ros2/image", session = "robot" }
//! ```
//!
//! Every entry with `session = "robot"` (a zenoh source, a zenoh sink, the agent's inbox, a
//! tracker's prompt topic) uses one zenoh session, opened by the first of them to start and
//! closed by the last to stop; so two entries may listen on the same endpoint. An entry that
//! names a session gives none of the session keys itself. The session's keys are copied into
//! each entry before it is validated, so each reports errors as before.
//!
//! The files a session names (`config`, `password_file`) are read from the pipeline file's
//! folder when their paths are relative, wherever `ocellus` runs.

use std::collections::BTreeMap;

use super::{ConfigError, KeyPath, Locator};

/// The keys a session gives.
pub const SESSION_KEYS: [&str; 9] = [
    "mode",
    "connect",
    "listen",
    "config",
    "multicast_scouting",
    "shared_memory",
    "user",
    "password_env",
    "password_file",
];

pub use ocellus_io::kinds::SessionEntry;

/// The `[zenoh]` table of sessions.
pub type SessionTable = BTreeMap<String, SessionEntry>;

/// The keys of a session that name files.
const FILE_KEYS: [&str; 2] = ["config", "password_file"];

/// Makes the relative file paths of a session's keys in `t` relative to `folder`.
fn anchor_files(t: &mut toml::Table, folder: &std::path::Path) {
    for key in FILE_KEYS {
        if let Some(toml::Value::String(path)) = t.get_mut(key)
            && std::path::Path::new(path.as_str()).is_relative()
        {
            *path = folder.join(path.as_str()).display().to_string();
        }
    }
}

/// Checks `[zenoh.*]` and copies each named session's keys into the entries that name it.
pub(super) fn resolve(root: &mut toml::Table, loc: &Locator<'_>) -> Result<(), ConfigError> {
    let at = KeyPath::root("zenoh");
    let folder = loc.file.parent().unwrap_or(std::path::Path::new("")).to_path_buf();
    let mut sessions: toml::Table = match root.remove("zenoh") {
        None => toml::Table::new(),
        Some(toml::Value::Table(t)) => t,
        Some(_) => return Err(loc.error(at, "expected a table of sessions (`[zenoh.<name>]`)")),
    };
    for (_, value) in sessions.iter_mut() {
        if let toml::Value::Table(t) = value {
            anchor_files(t, &folder);
        }
    }
    for (name, value) in &sessions {
        let entry: SessionEntry = loc.typed(&at.key(name), value.clone())?;
        if entry.session.is_some() {
            return Err(loc.error(at.key(name).key("session"), "a session cannot name another"));
        }
    }
    super::each_table(root, &mut |t, at| table(t, at, &sessions, loc))
}

fn table(t: &mut toml::Table, at: &KeyPath, sessions: &toml::Table, loc: &Locator<'_>) -> Result<(), ConfigError> {
    if t.contains_key("config") || t.contains_key("password_file") {
        anchor_files(t, loc.file.parent().unwrap_or(std::path::Path::new("")));
    }
    if let Some(value) = t.get("session") {
        let Some(name) = value.as_str() else {
            return Err(loc.error(at.key("session"), "expected the name of a `[zenoh.<name>]` session"));
        };
        let Some(toml::Value::Table(session)) = sessions.get(name) else {
            let names: Vec<&str> = sessions.keys().map(String::as_str).collect();
            let known = if names.is_empty() { "none is defined".to_owned() } else { names.join(", ") };
            return Err(loc.error(at.key("session"), format!("no session {name:?} in [zenoh] ({known})")));
        };
        if let Some(own) = SESSION_KEYS.iter().find(|k| t.contains_key(**k)) {
            return Err(loc.error(
                at.key(own),
                format!("`{own}` belongs to the session: give it in [zenoh.{name}], or leave out `session`"),
            ));
        }
        for (k, v) in session {
            t.insert(k.clone(), v.clone());
        }
    }
    Ok(())
}
