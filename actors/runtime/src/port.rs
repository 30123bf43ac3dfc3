//! Typed, named ports.
//!
//! Each node kind declares its inputs and outputs by name and message type: a labeler reads
//! `frames` (frames) and `tracks` (tracks) and writes `tracks`. A pipeline wires an input to
//! the outputs of other nodes (`{ frames = "front", tracks = "tracker" }`), each input with its
//! own edge; a wire whose upstream does not emit what the input takes, or an input left
//! unwired, is refused before anything runs. An input may take several upstreams (a sink
//! reading every camera); each input has one bounded edge all its upstreams push into.

use std::fmt;
use std::sync::Arc;

use crate::edge::EdgePolicy;
use crate::message::PortType;

/// An input port of a node kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputPort {
    /// Its name in the configuration (`frames`).
    pub name: &'static str,
    /// The message types it takes.
    pub accepts: Vec<PortType>,
    /// Its edge unless the configuration says otherwise.
    pub default_edge: EdgePolicy,
    /// Whether a pipeline must wire it.
    pub required: bool,
}

impl InputPort {
    /// A required input taking `accepts`, with `default_edge`.
    pub fn new(name: &'static str, accepts: &[PortType], default_edge: EdgePolicy) -> Self {
        Self { name, accepts: accepts.to_vec(), default_edge, required: true }
    }

    /// The same input, optional.
    pub fn optional(self) -> Self {
        Self { required: false, ..self }
    }

    /// Whether it takes messages of type `ty`.
    pub fn takes(&self, ty: PortType) -> bool {
        self.accepts.contains(&ty)
    }

    /// What it takes, for errors: `frames or tracks`.
    pub fn accepts_text(&self) -> String {
        let names: Vec<&str> = self.accepts.iter().map(|t| t.name()).collect();
        match names.as_slice() {
            [] => "nothing".into(),
            [one] => (*one).into(),
            [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
        }
    }
}

/// An output port of a node kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputPort {
    /// Its name (`tracks`).
    pub name: &'static str,
    /// What it emits.
    pub ty: PortType,
}

/// A join: messages on input `primary` are delivered with the message of input `with` that
/// derives from the same frame (same camera and sequence number), which the runtime holds
/// until then (at most `capacity` per camera, the oldest dropped and counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Join {
    /// The input whose messages drive the node (`tracks`).
    pub primary: &'static str,
    /// The input whose messages wait for them (`frames`).
    pub with: &'static str,
    /// Messages of `with` held per camera.
    pub capacity: usize,
}

/// The ports of a node kind.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ports {
    /// Inputs, in the order the node is handed their messages when several wait.
    pub inputs: Vec<InputPort>,
    /// Outputs; the first is where [`crate::node::Context::emit`] sends.
    pub outputs: Vec<OutputPort>,
    /// A join of two inputs, if the node has one.
    pub join: Option<Join>,
}

impl Ports {
    /// A source's ports: one `frames` output.
    pub fn source() -> Self {
        Self { inputs: Vec::new(), outputs: vec![OutputPort { name: "frames", ty: PortType::Frame }], join: None }
    }

    /// The input named `name`, with its index.
    pub fn input(&self, name: &str) -> Option<(usize, &InputPort)> {
        self.inputs.iter().enumerate().find(|(_, p)| p.name == name)
    }

    /// The output named `name` (the only one when `None`), with its index.
    pub fn output(&self, name: Option<&str>) -> Result<(usize, OutputPort), String> {
        match name {
            Some(n) => self.outputs.iter().copied().enumerate().find(|(_, p)| p.name == n).ok_or_else(|| {
                let names: Vec<&str> = self.outputs.iter().map(|p| p.name).collect();
                format!("has no output `{n}` (outputs: {})", names.join(", "))
            }),
            None => match self.outputs.as_slice() {
                [only] => Ok((0, *only)),
                [] => Err("has no outputs".into()),
                many => {
                    let names: Vec<&str> = many.iter().map(|p| p.name).collect();
                    Err(format!("has several outputs: name one ({})", names.join(", ")))
                }
            },
        }
    }
}

/// Where an input reads from: a node and one of its outputs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Upstream {
    /// The node.
    pub node: Arc<str>,
    /// Its output (its only one when `None`).
    pub port: Option<Arc<str>>,
}

impl Upstream {
    /// `node` or `node.port`.
    pub fn parse(text: &str) -> Self {
        match text.split_once('.') {
            Some((node, port)) if !port.is_empty() => Self { node: node.into(), port: Some(port.into()) },
            _ => Self { node: text.into(), port: None },
        }
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.port {
            Some(p) => write!(f, "{}.{p}", self.node),
            None => f.write_str(&self.node),
        }
    }
}

/// One input of a node, wired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wire {
    /// The input's name.
    pub port: &'static str,
    /// What feeds it.
    pub from: Vec<Upstream>,
    /// Its edge.
    pub edge: EdgePolicy,
}

impl Wire {
    /// Input `port` reading from `from` (`node` or `node.port` each) through an edge with
    /// `edge`'s policy.
    pub fn new(port: &'static str, from: &[&str], edge: EdgePolicy) -> Self {
        Self { port, from: from.iter().map(|f| Upstream::parse(f)).collect(), edge }
    }
}
