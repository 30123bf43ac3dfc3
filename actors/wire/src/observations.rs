//! Observations as JSON (one object per message, `"type"` first), and as ROS 2
//! `std_msgs/String` where no standard ROS 2 type fits (the same JSON, or a caption's text).
//!
//! ```json
//! {"type":"tracks","camera":"front","seq":12,"capture_ns":1700000000000000000,"width":640,"height":480,
//!  "tracks":[{"id":1,"bbox":[10,20,110,220],"score":0.97,"occluded":false,"area":12000,"origin":"config"}]}
//! {"type":"motion","camera":"front","seq":12,"capture_ns":...,"width":640,"height":480,"coverage":0.02}
//! {"type":"actions","camera":"front","seq":12,"capture_ns":...,"people":[{"id":1,"detected":true,
//!  "actions":[{"ava_id":12,"name":"stand","score":0.91}]}]}
//! {"type":"metrics","stage":"tracker","at_ns":...,"fps":29.8,"latency_p50_ms":31.2,...}
//! {"type":"caption","camera":"front","seq":12,"capture_ns":...,"text":"a person walks in"}
//! ```

use serde::Serialize;

use crate::{CodecError, CodecResult};

/// The frame an observation is about.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FrameRef<'a> {
    /// Camera.
    pub camera: &'a str,
    /// Sequence number.
    pub seq: u64,
    /// Capture time, ns since the epoch.
    pub capture_ns: i64,
}

/// One track in JSON.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TrackJson {
    /// Track id.
    pub id: u32,
    /// `[x0, y0, x1, y1]` in pixels, absent when not visible.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bbox: Option<[u32; 4]>,
    /// Presence probability.
    pub score: f32,
    /// Not visible on this frame.
    pub occluded: bool,
    /// Mask area, pixels.
    pub area: u64,
    /// Label from a labeler (MetaCLIP), when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// The label's probability.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label_score: Option<f32>,
    /// How the track started: `config`, `operator`, `discovery` or `query`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<&'static str>,
}

/// One person's 3D body in JSON.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PersonJson<'a> {
    /// Track id.
    pub id: u32,
    /// Translation in the camera frame (metres; x right, y down, z forward).
    pub translation: [f32; 3],
    /// SMPL root rotation, row-major 3×3.
    pub global_orient: &'a [f32; 9],
    /// SMPL body-joint rotations, 23 row-major 3×3.
    pub body_pose: &'a [f32],
    /// SMPL shape.
    pub betas: &'a [f32; 10],
    /// The weak-perspective crop camera `(s, tx, ty)`.
    pub crop_cam: [f32; 3],
    /// 45 joints in the camera frame; absent without a body model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub joints: Option<&'a [[f32; 3]]>,
}

/// One action and its score in JSON.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ActionJson<'a> {
    /// AVA's id of the action.
    pub ava_id: u16,
    /// Its name.
    pub name: &'a str,
    /// Probability.
    pub score: f32,
}

/// One person's actions in JSON.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PersonActionsJson<'a> {
    /// Track id.
    pub id: u32,
    /// Whether the person was detected on this frame.
    pub detected: bool,
    /// The best actions, best first.
    pub actions: Vec<ActionJson<'a>>,
}

/// What kind of text an observation carries.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TextKind {
    /// A description of what a camera sees.
    Caption,
    /// A decision taken.
    Decision,
    /// Something that needs attention.
    Alert,
}

/// Every observation Ocellus publishes.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Observation<'a> {
    /// Tracked objects of a frame.
    Tracks {
        /// The frame.
        #[serde(flatten)]
        frame: FrameRef<'a>,
        /// Frame width.
        width: u32,
        /// Frame height.
        height: u32,
        /// The tracks.
        tracks: Vec<TrackJson>,
    },
    /// Motion on a frame.
    Motion {
        /// The frame.
        #[serde(flatten)]
        frame: FrameRef<'a>,
        /// Frame width.
        width: u32,
        /// Frame height.
        height: u32,
        /// Fraction of the frame that moved.
        coverage: f64,
    },
    /// 3D people of a frame (HMR 2.0), in the frame camera.
    Poses {
        /// The frame.
        #[serde(flatten)]
        frame: FrameRef<'a>,
        /// Frame width.
        width: u32,
        /// Frame height.
        height: u32,
        /// Focal length, pixels.
        focal_length: f64,
        /// Principal point, pixels.
        principal_point: [f64; 2],
        /// One entry per person.
        people: Vec<PersonJson<'a>>,
    },
    /// Actions of the people of a frame (LART, AVA classes).
    Actions {
        /// The frame the actions are about.
        #[serde(flatten)]
        frame: FrameRef<'a>,
        /// One entry per person.
        people: Vec<PersonActionsJson<'a>>,
    },
    /// A stage's figures.
    Metrics {
        /// The stage.
        stage: &'a str,
        /// When (ns since the epoch).
        at_ns: i64,
        /// Outputs per second.
        fps: f64,
        /// Median latency, ms.
        latency_p50_ms: f64,
        /// 99th percentile latency, ms.
        latency_p99_ms: f64,
        /// Outputs.
        emitted: u64,
        /// Inputs dropped by its edge.
        dropped: u64,
        /// Malformed inputs skipped.
        skipped: u64,
        /// Restarts.
        restarts: u64,
    },
    /// A caption, decision or alert.
    #[serde(untagged)]
    Text {
        /// Which.
        #[serde(rename = "type")]
        kind: TextKind,
        /// The frame it is about, if any.
        #[serde(flatten, skip_serializing_if = "Option::is_none")]
        frame: Option<FrameRef<'a>>,
        /// The text.
        text: &'a str,
    },
}

impl<'a> Observation<'a> {
    /// The topic suffix this observation goes to (`tracks`, `motion`, `metrics`, `captions`, ...).
    pub fn topic(&self) -> &'static str {
        match self {
            Self::Tracks { .. } => "tracks",
            Self::Motion { .. } => "motion",
            Self::Poses { .. } => "people",
            Self::Actions { .. } => "actions",
            Self::Metrics { .. } => "metrics",
            Self::Text { kind: TextKind::Caption, .. } => "captions",
            Self::Text { kind: TextKind::Decision, .. } => "decisions",
            Self::Text { kind: TextKind::Alert, .. } => "alerts",
        }
    }

    /// The JSON text.
    pub fn to_json(&self) -> CodecResult<Vec<u8>> {
        serde_json::to_vec(self).map_err(|e| CodecError::Encode(e.to_string()))
    }

    /// A ROS 2 `std_msgs/String`: a caption's (decision's, alert's) text as is, anything
    /// else as its JSON.
    pub fn to_ros_string(&self) -> CodecResult<Vec<u8>> {
        match self {
            Self::Text { text, .. } => crate::ros2::encode_string(text),
            other => {
                let json = serde_json::to_string(other).map_err(|e| CodecError::Encode(e.to_string()))?;
                crate::ros2::encode_string(&json)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shapes() {
        let frame = FrameRef { camera: "front", seq: 3, capture_ns: 9 };
        let caption = Observation::Text { kind: TextKind::Caption, frame: Some(frame.clone()), text: "a cat" };
        let json: serde_json::Value = serde_json::from_slice(&caption.to_json().expect("json")).expect("parse");
        assert_eq!(
            json,
            serde_json::json!({"type": "caption", "camera": "front", "seq": 3, "capture_ns": 9, "text": "a cat"})
        );
        assert_eq!(caption.topic(), "captions");
        let alert = Observation::Text { kind: TextKind::Alert, frame: None, text: "smoke" };
        let json: serde_json::Value = serde_json::from_slice(&alert.to_json().expect("json")).expect("parse");
        assert_eq!(json, serde_json::json!({"type": "alert", "text": "smoke"}));
        let motion = Observation::Motion { frame, width: 2, height: 1, coverage: 0.5 };
        let json: serde_json::Value = serde_json::from_slice(&motion.to_json().expect("json")).expect("parse");
        assert_eq!(json["type"], "motion");
        assert_eq!(json["coverage"], 0.5);
        let ros = caption.to_ros_string().expect("cdr");
        assert_eq!(&ros[..4], &crate::ros2::CDR_LE);
        assert_eq!(&ros[4..8], &6u32.to_le_bytes());
        assert_eq!(&ros[8..], b"a cat\0");
    }

    #[test]
    fn poses_json() {
        let frame = FrameRef { camera: "front", seq: 3, capture_ns: 9 };
        let (orient, pose, betas) = ([1.0f32, 0., 0., 0., 1., 0., 0., 0., 1.], vec![0.5f32; 207], [0.1f32; 10]);
        let joints = vec![[1.0f32, 2.0, 3.0]; 45];
        let person = |joints| PersonJson {
            id: 7,
            translation: [0.0, 0.1, 4.0],
            global_orient: &orient,
            body_pose: &pose,
            betas: &betas,
            crop_cam: [0.9, 0.0, 0.1],
            joints,
        };
        let poses = Observation::Poses {
            frame,
            width: 640,
            height: 480,
            focal_length: 12500.0,
            principal_point: [320.0, 240.0],
            people: vec![person(Some(&joints)), person(None)],
        };
        assert_eq!(poses.topic(), "people");
        let json: serde_json::Value = serde_json::from_slice(&poses.to_json().expect("json")).expect("parse");
        assert_eq!(json["type"], "poses");
        assert_eq!(json["camera"], "front");
        assert_eq!(json["people"][0]["id"], 7);
        assert_eq!(json["people"][0]["body_pose"].as_array().map(Vec::len), Some(207));
        assert_eq!(json["people"][0]["joints"].as_array().map(Vec::len), Some(45));
        assert!(json["people"][1].get("joints").is_none(), "no joints without a body model, not zeros");
    }
}
