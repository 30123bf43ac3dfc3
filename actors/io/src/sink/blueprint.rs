//! The default Rerun layout sent with every recording and live stream: per camera its image
//! with the segmentation, boxes and discovery layers (2D) and, with 3D people, the camera's
//! space (3D); beside them the metrics over time (fps, latency, drops per node), the agent's
//! caption, and its decisions and alerts as text logs, and the actions per person.

use rerun::blueprint::{
    Blueprint, BlueprintActivation, ContainerLike, Horizontal, Spatial2DView, Spatial3DView, Tabs, TextDocumentView,
    TextLogView, TimeSeriesView, Vertical,
};

use crate::recording::path;

/// What the pipeline produces, which decides the views.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    /// The cameras (source names), each a `world/<camera>` space.
    pub cameras: Vec<String>,
    /// 3D people (a pose actor): a 3D view per camera.
    pub people: bool,
    /// Actions per person (an actions actor).
    pub actions: bool,
    /// The agent's captions, decisions and alerts.
    pub agent: bool,
    /// Metrics are logged.
    pub metrics: bool,
    /// The run substitutes something (seeded weights, a fallback source): a notices view
    /// heads the side panel.
    pub notices: bool,
}

impl Layout {
    /// The blueprint of this layout.
    pub fn blueprint(&self) -> Blueprint {
        let camera = |c: &String| -> ContainerLike {
            let space = format!("world/{c}");
            let image = Spatial2DView::new(c.clone()).with_origin(space.clone());
            if self.people {
                let people = Spatial3DView::new(format!("{c} 3D")).with_origin(space);
                Horizontal::new([image.into(), people.into()]).with_name(c.clone()).into()
            } else {
                image.into()
            }
        };
        let cameras: Vec<ContainerLike> = self.cameras.iter().map(camera).collect();
        let main: ContainerLike = match cameras.len() {
            1 => cameras.into_iter().next().unwrap_or_else(|| Tabs::new([]).into()),
            _ => Tabs::new(cameras).with_name("cameras").into(),
        };
        let mut side: Vec<ContainerLike> = Vec::new();
        if self.notices {
            side.push(TextLogView::new("notices").with_origin(path::NOTICES).into());
        }
        if self.metrics {
            side.push(TimeSeriesView::new("metrics").with_origin("metrics").into());
        }
        if self.agent {
            side.push(TextDocumentView::new("caption").with_origin(path::CAPTION).into());
            side.push(TextLogView::new("decisions").with_origin(path::DECISIONS).into());
            side.push(TextLogView::new("alerts").with_origin(path::ALERTS).into());
        }
        if self.actions {
            let contents: Vec<String> = self.cameras.iter().map(|c| path::actions(c)).collect();
            side.push(TextLogView::new("actions").with_contents(contents).into());
        }
        let root: ContainerLike = match side.is_empty() {
            true => main,
            false => Horizontal::new([main, Vertical::new(side).into()]).with_column_shares([3.0, 1.0]).into(),
        };
        match root {
            ContainerLike::View(_) => Blueprint::new(Horizontal::new([root])),
            other => Blueprint::new(other),
        }
    }

    /// Sends the blueprint to `rec`, active and the application's default.
    pub fn send(&self, rec: &rerun::RecordingStream) -> rerun::RecordingStreamResult<()> {
        self.blueprint().send(rec, BlueprintActivation { make_active: true, make_default: true })
    }
}
