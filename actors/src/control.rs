//! Control channels: commands from one actor to another (the agent's `track` tool to the
//! tracker), outside the data edges. Each channel is bounded; a full channel refuses the
//! command (the sender reports it) and counts it. The receiving side is shared, so a
//! processor rebuilt by its supervisor goes on reading the same channel.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

struct Shared<T> {
    queue: Mutex<VecDeque<T>>,
    capacity: usize,
    sent: AtomicU64,
    refused: AtomicU64,
    closed: std::sync::atomic::AtomicBool,
}

/// The sending side (cloneable).
pub struct ControlSender<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for ControlSender<T> {
    fn clone(&self) -> Self {
        Self { shared: self.shared.clone() }
    }
}

impl<T> std::fmt::Debug for ControlSender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlSender").field("capacity", &self.shared.capacity).finish()
    }
}

/// The receiving side (cloneable: a restarted processor takes over the same queue).
pub struct ControlReceiver<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for ControlReceiver<T> {
    fn clone(&self) -> Self {
        Self { shared: self.shared.clone() }
    }
}

impl<T> std::fmt::Debug for ControlReceiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlReceiver").field("capacity", &self.shared.capacity).finish()
    }
}

impl<T> PartialEq for ControlReceiver<T> {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

/// A bounded control channel (policy: refuse when full).
pub fn control_channel<T>(capacity: usize) -> (ControlSender<T>, ControlReceiver<T>) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(VecDeque::with_capacity(capacity)),
        capacity: capacity.max(1),
        sent: AtomicU64::new(0),
        refused: AtomicU64::new(0),
        closed: std::sync::atomic::AtomicBool::new(false),
    });
    (ControlSender { shared: shared.clone() }, ControlReceiver { shared })
}

impl<T> ControlSender<T> {
    /// Queues `command`; gives it back when the channel is full.
    pub fn send(&self, command: T) -> Result<(), T> {
        let mut q = self.shared.queue.lock();
        if q.len() >= self.shared.capacity {
            self.shared.refused.fetch_add(1, Ordering::Relaxed);
            return Err(command);
        }
        q.push_back(command);
        self.shared.sent.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// (sent, refused) so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.shared.sent.load(Ordering::Relaxed), self.shared.refused.load(Ordering::Relaxed))
    }

    /// Whether the receiving actor has finished (feeders stop).
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }
}

impl<T> ControlReceiver<T> {
    /// Takes every queued command, oldest first.
    pub fn drain(&self) -> Vec<T> {
        self.shared.queue.lock().drain(..).collect()
    }

    /// Marks the channel finished: feeders (a zenoh prompt subscription) stop.
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
    }
}

/// Commands to a tracker.
#[derive(Debug, Clone, PartialEq)]
pub enum TrackerCommand {
    /// Track a new object from the next frame of `camera` (all cameras when `None`).
    Add {
        /// Camera.
        camera: Option<Arc<str>>,
        /// Track id to use.
        id: u32,
        /// Where the object is.
        prompt: crate::tracker::FramePrompt,
    },
    /// Stop tracking `id`.
    Remove {
        /// Track id.
        id: u32,
    },
}

/// Commands to a labeler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelerCommand {
    /// Label `track_id` over `candidates` from now on (empty: back to the vocabulary).
    Candidates {
        /// Track id.
        track_id: u32,
        /// Candidate class names.
        candidates: Vec<String>,
    },
}

/// Commands to an inpainter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InpainterCommand {
    /// Remove `track_id` from the frames from now on.
    Remove {
        /// Track id.
        track_id: u32,
    },
    /// Show `track_id` again.
    Restore {
        /// Track id.
        track_id: u32,
    },
}

/// One prompt message on a tracker's prompt topic (JSON):
/// `{"id": 5, "box": [x0, y0, x1, y1]}`, `{"id": 5, "points": [[x, y]], "labels": [1]}`,
/// `{"remove": 5}`; `"camera": "front"` limits it to one camera.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PromptMessage {
    id: Option<u32>,
    #[serde(rename = "box")]
    bbox: Option<[f64; 4]>,
    points: Option<Vec<[f64; 2]>>,
    labels: Option<Vec<i32>>,
    remove: Option<u32>,
    camera: Option<String>,
}

/// Reads a prompt message; the error says what is wrong.
pub fn parse_prompt_message(bytes: &[u8]) -> Result<TrackerCommand, String> {
    use crate::tracker::FramePrompt;
    let m: PromptMessage = serde_json::from_slice(bytes).map_err(|e| format!("not a prompt message: {e}"))?;
    let camera = m.camera.map(|c| Arc::<str>::from(c.as_str()));
    let id = |id: Option<u32>| id.filter(|i| *i != 0).ok_or_else(|| "needs a non-zero \"id\"".to_owned());
    match (m.remove, m.bbox, m.points) {
        (Some(remove), None, None) if remove != 0 => Ok(TrackerCommand::Remove { id: remove }),
        (None, Some([x0, y0, x1, y1]), None) => {
            let ok = [x0, y0, x1, y1].iter().all(|v| v.is_finite() && *v >= 0.0) && x0 < x1 && y0 < y1;
            if !ok {
                return Err("a box needs 0 <= x0 < x1 and 0 <= y0 < y1".into());
            }
            Ok(TrackerCommand::Add { camera, id: id(m.id)?, prompt: FramePrompt::Box([x0, y0, x1, y1]) })
        }
        (None, None, Some(points)) => {
            let labels = m.labels.unwrap_or_else(|| vec![1; points.len()]);
            if points.is_empty() || labels.len() != points.len() || labels.iter().any(|l| !matches!(l, 0 | 1)) {
                return Err("points need one label each, 1 (positive) or 0 (negative)".into());
            }
            if points.iter().flatten().any(|v| !v.is_finite() || *v < 0.0) {
                return Err("points must be finite and non-negative".into());
            }
            Ok(TrackerCommand::Add { camera, id: id(m.id)?, prompt: FramePrompt::Points(points, labels) })
        }
        _ => Err("give exactly one of \"box\", \"points\" or \"remove\"".into()),
    }
}

/// Where a tracker's prompts come from on zenoh.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptTopicSpec {
    /// Session.
    pub session: crate::transport::SessionSpec,
    /// Key of the prompt messages.
    pub key: String,
}

/// Feeds `tx` from the prompt topic, on a zenoh session living on its own runtime thread.
/// Malformed messages are counted in the log and skipped. Ends when the tracker finishes.
pub fn subscribe_prompts(
    spec: PromptTopicSpec,
    tx: ControlSender<TrackerCommand>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    crate::transport::spawn_host("tracker-prompts".into(), move || async move {
        let config = match spec.session.to_config() {
            Ok(c) => c,
            Err(e) => return tracing::error!(error = %e, "tracker prompts: bad zenoh config"),
        };
        let session = match zenoh::open(config).await {
            Ok(s) => s,
            Err(e) => return tracing::error!(error = %e, "tracker prompts: cannot open the zenoh session"),
        };
        let subscriber = match session.declare_subscriber(spec.key.clone()).await {
            Ok(s) => s,
            Err(e) => return tracing::error!(error = %e, key = %spec.key, "tracker prompts: cannot subscribe"),
        };
        let mut bad = 0u64;
        while !tx.is_closed() {
            match subscriber.try_recv() {
                Ok(Some(sample)) => match parse_prompt_message(&sample.payload().to_bytes()) {
                    Ok(command) => {
                        if tx.send(command).is_err() {
                            tracing::warn!("tracker prompts: the tracker's control queue is full, prompt dropped");
                        }
                    }
                    Err(e) => {
                        bad += 1;
                        tracing::warn!(error = %e, bad, "tracker prompts: malformed message skipped");
                    }
                },
                Ok(None) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
                Err(_) => break,
            }
        }
        drop(subscriber);
        if let Err(e) = session.close().await {
            tracing::warn!(error = %e, "tracker prompts: closing the session");
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_messages() {
        assert!(matches!(
            parse_prompt_message(br#"{"id": 4, "box": [1, 2, 30, 40]}"#),
            Ok(TrackerCommand::Add { id: 4, .. })
        ));
        assert!(matches!(parse_prompt_message(br#"{"remove": 4}"#), Ok(TrackerCommand::Remove { id: 4 })));
        assert!(matches!(
            parse_prompt_message(br#"{"id": 2, "points": [[5, 5]], "camera": "front"}"#),
            Ok(TrackerCommand::Add { camera: Some(_), .. })
        ));
        for bad in [
            &br#"{"box": [1, 2, 3, 4]}"#[..],
            br#"{"id": 1, "box": [5, 2, 3, 4]}"#,
            br#"{"id": 1}"#,
            b"\xff",
            br#"{"id": 1, "points": [[1, 1]], "labels": [2]}"#,
            br#"{"id": 1, "box": [1, 2, 3, 4], "extra": 1}"#,
        ] {
            assert!(parse_prompt_message(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
