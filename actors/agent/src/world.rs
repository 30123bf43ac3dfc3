//! The agent's world state: what perception reports, summarized per track, with events and a
//! bounded history.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use ocellus_runtime::Actions;

use serde::Serialize;

use ocellus_runtime::Tracks;

use crate::untrusted::quoted;

/// Events kept (oldest dropped first).
pub const EVENT_HISTORY: usize = 256;
/// Frames a track may be unseen (occluded or absent) before it counts as gone.
pub const LEAVE_AFTER_FRAMES: u64 = 15;

/// What is known of one track.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrackState {
    /// Track id.
    pub id: u32,
    /// Camera.
    pub camera: String,
    /// Label, when a labeler or a tool gave one.
    pub label: Option<String>,
    /// Last box `[x0, y0, x1, y1]` in pixels.
    pub bbox: Option<[u32; 4]>,
    /// Last mask area, pixels.
    pub mask_area: u64,
    /// Action, when an action model gave one.
    pub action: Option<String>,
    /// First frame it was seen on.
    pub first_seen: u64,
    /// Last frame it was visible on.
    pub last_seen: u64,
    /// Visible on the latest frame.
    pub visible: bool,
}

/// Something that changed.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A track became visible for the first time.
    Appeared {
        /// Track id.
        id: u32,
        /// Frame.
        seq: u64,
    },
    /// A track has not been visible for [`LEAVE_AFTER_FRAMES`].
    Left {
        /// Track id.
        id: u32,
        /// Frame.
        seq: u64,
    },
    /// A track's label changed.
    LabelChanged {
        /// Track id.
        id: u32,
        /// New label.
        label: String,
    },
    /// A person's most likely action changed (an actions actor).
    ActionChanged {
        /// Track id.
        id: u32,
        /// The action (AVA's name).
        action: String,
    },
}

/// Tracks, events and the latest frame per camera.
#[derive(Debug, Default, Clone)]
pub struct WorldState {
    tracks: BTreeMap<u32, TrackState>,
    events: VecDeque<Event>,
    latest: BTreeMap<String, (u64, u32, u32)>,
    /// Tracks whose action changed since their camera's last caption.
    actions_changed: BTreeSet<u32>,
}

impl WorldState {
    /// Folds in one frame's tracks; returns the events it caused.
    pub fn update(&mut self, frame: &Tracks) -> Vec<Event> {
        let camera = frame.meta.camera.to_string();
        let seq = frame.meta.seq;
        self.latest.insert(camera.clone(), (seq, frame.width, frame.height));
        let mut events = Vec::new();
        for t in &frame.tracks {
            let visible = !t.occluded && t.area > 0;
            let state = self.tracks.entry(t.id).or_insert_with(|| TrackState {
                id: t.id,
                camera: camera.clone(),
                label: None,
                bbox: None,
                mask_area: 0,
                action: None,
                first_seen: seq,
                last_seen: seq,
                visible: false,
            });
            if visible {
                if !state.visible {
                    events.push(Event::Appeared { id: t.id, seq });
                }
                state.visible = true;
                state.last_seen = seq;
                state.bbox = t.bbox.map(|b| [b.x0, b.y0, b.x1, b.y1]);
                state.mask_area = t.area;
            }
        }
        for state in self.tracks.values_mut().filter(|s| s.camera == camera) {
            let seen_now = frame.tracks.iter().any(|t| t.id == state.id && !t.occluded && t.area > 0);
            if state.visible && !seen_now && seq.saturating_sub(state.last_seen) >= LEAVE_AFTER_FRAMES {
                state.visible = false;
                state.bbox = None;
                events.push(Event::Left { id: state.id, seq });
            }
        }
        for e in &events {
            self.push_event(e.clone());
        }
        // Labels from a labeler (MetaCLIP): what a track is, as data for the prompts.
        for t in &frame.tracks {
            if let Some(label) = &t.label {
                self.set_label(t.id, &label.name);
            }
        }
        events
    }

    fn push_event(&mut self, e: Event) {
        if self.events.len() == EVENT_HISTORY {
            self.events.pop_front();
        }
        self.events.push_back(e);
    }

    /// Sets a track's label (from a labeler or the `label` tool).
    pub fn set_label(&mut self, id: u32, label: &str) {
        if let Some(t) = self.tracks.get_mut(&id).filter(|t| t.label.as_deref() != Some(label)) {
            t.label = Some(label.to_owned());
            let e = Event::LabelChanged { id, label: label.to_owned() };
            self.push_event(e);
        }
    }

    /// Folds in the actions of one frame: each person's best action at or above `min_score`
    /// (none below it). Returns the changes.
    pub fn set_actions(&mut self, actions: &Actions, min_score: f32) -> Vec<Event> {
        let mut events = Vec::new();
        for person in &actions.people {
            let Some(t) = self.tracks.get_mut(&person.id) else { continue };
            let best =
                person.actions.iter().filter(|a| a.score >= min_score).max_by(|a, b| a.score.total_cmp(&b.score));
            let action = best.map(|a| a.name.clone());
            if t.action != action {
                t.action = action.clone();
                self.actions_changed.insert(person.id);
                if let Some(action) = action {
                    events.push(Event::ActionChanged { id: person.id, action });
                }
            }
        }
        for e in &events {
            self.push_event(e.clone());
        }
        events
    }

    /// The tracks of `camera` whose action changed since the last call (for its caption).
    pub fn take_actions_changed(&mut self, camera: &str) -> BTreeSet<u32> {
        let (mine, rest): (BTreeSet<u32>, BTreeSet<u32>) = std::mem::take(&mut self.actions_changed)
            .into_iter()
            .partition(|id| self.tracks.get(id).is_some_and(|t| t.camera == camera));
        self.actions_changed = rest;
        mine
    }

    /// Forgets a track (after `untrack`).
    pub fn remove(&mut self, id: u32) {
        self.tracks.remove(&id);
    }

    /// A track by id.
    pub fn track(&self, id: u32) -> Option<&TrackState> {
        self.tracks.get(&id)
    }

    /// Tracks visible now.
    pub fn visible(&self) -> impl Iterator<Item = &TrackState> {
        self.tracks.values().filter(|t| t.visible)
    }

    /// Recent events, oldest first.
    pub fn events(&self) -> impl Iterator<Item = &Event> {
        self.events.iter()
    }

    /// Latest frame `(seq, width, height)` of a camera.
    pub fn frame_of(&self, camera: &str) -> Option<(u64, u32, u32)> {
        self.latest.get(camera).copied()
    }

    /// The cameras seen so far.
    pub fn cameras(&self) -> impl Iterator<Item = &str> {
        self.latest.keys().map(String::as_str)
    }

    /// One line per visible track, for prompts: `track 3: person, box [..], area N px`.
    pub fn describe(&self) -> String {
        let lines: Vec<String> = self
            .visible()
            .map(|t| {
                // Labels and actions come from outside the agent: quoted, as data.
                let label = t.label.as_deref().map_or_else(|| "unlabelled object".to_owned(), quoted);
                let bbox =
                    t.bbox.map_or_else(String::new, |b| format!(", box [{}, {}, {}, {}]", b[0], b[1], b[2], b[3]));
                let action = t.action.as_deref().map_or_else(String::new, |a| format!(", action: {}", quoted(a)));
                format!(
                    "track {}: {label}{bbox}, area {} px, seen since frame {}{action}",
                    t.id, t.mask_area, t.first_seen
                )
            })
            .collect();
        if lines.is_empty() { "nothing is tracked".to_owned() } else { lines.join("\n") }
    }
}
