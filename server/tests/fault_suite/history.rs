//! What happened during a schedule, as the suite recorded it: the faults the nemesis
//! injected, the operations the clients invoked and how each ended, and every frame every
//! tab received. The checker reads nothing else (besides the database and the mock's
//! journal).

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use relay_protocol::{Message, ServerFrame};

/// A moment, in wall-clock time (the mock's journal uses the same clock).
pub type At = DateTime<Utc>;

pub fn now() -> At {
    Utc::now()
}

/// A fault the nemesis injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// kill -9 of a node, then a restart.
    KillNode,
    /// SIGSTOP of a node, then SIGCONT: short (well within a lease) or long (past it).
    PauseNode { long: bool },
    /// A node cut off from everything: short or long.
    PartitionNode { long: bool },
    /// kill -9 of the SurrealDB server, then a restart on its data.
    KillDatabase,
    /// SIGSTOP of the SurrealDB server, then SIGCONT.
    PauseDatabase,
    /// Redis stopped and started again, empty.
    RestartRedis,
    /// `CLIENT KILL` of one node's Redis connections, or of every subscriber connection.
    KillRedisClients,
}

impl FaultKind {
    pub fn name(&self) -> &'static str {
        match self {
            FaultKind::KillNode => "kill node",
            FaultKind::PauseNode { long: false } => "pause node (short)",
            FaultKind::PauseNode { long: true } => "pause node (past the lease)",
            FaultKind::PartitionNode { long: false } => "partition node (short)",
            FaultKind::PartitionNode { long: true } => "partition node (past the lease)",
            FaultKind::KillDatabase => "kill database",
            FaultKind::PauseDatabase => "pause database",
            FaultKind::RestartRedis => "restart redis (empty)",
            FaultKind::KillRedisClients => "client kill (redis)",
        }
    }

    /// Whether the node it hits stops running what it ran (so a request it had open at
    /// the model counts as ended when the fault began).
    pub fn stops_the_node(&self) -> bool {
        matches!(
            self,
            FaultKind::KillNode | FaultKind::PauseNode { long: true } | FaultKind::PartitionNode { long: true }
        )
    }
}

/// One injected fault: what, on which node (if a node), from when to when.
#[derive(Clone, Debug)]
pub struct FaultRecord {
    pub kind: FaultKind,
    pub node: Option<usize>,
    pub started: At,
    pub ended: At,
}

/// What a client asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    Send,
    Edit,
    Regenerate,
    Stop,
}

/// One operation and how it ended.
#[derive(Clone, Debug)]
pub struct OpRecord {
    pub session: usize,
    pub kind: OpKind,
    /// Its idempotency key (every send, edit and regenerate has one; retries reuse it).
    pub key: Option<String>,
    /// The text sent (unique per operation), for sends and edits.
    pub content: Option<String>,
    pub invoked: At,
    /// The `ack` it got (the message it stored, or answered again) and when.
    pub acked: Option<(Message, At)>,
    /// How many times it was sent.
    pub attempts: u32,
    /// The errors its attempts got.
    pub errors: Vec<String>,
}

/// What a tab saw. (The nodes and request ids are read in failure dumps.)
#[derive(Clone, Debug)]
#[allow(dead_code)]
pub enum TabEvent {
    /// Connected to node `n`.
    Connected(usize),
    /// The connection ended (or could not be made).
    Disconnected,
    /// Asked for a snapshot of its session (this request id).
    Subscribing(String),
    /// A frame.
    Frame(ServerFrame),
}

/// Everything one tab saw, in order, with its user and session.
#[derive(Clone, Debug)]
pub struct Transcript {
    pub user: usize,
    pub session: usize,
    pub events: Vec<(At, TabEvent)>,
}

/// A transcript being written by its tab.
pub type SharedTranscript = Arc<Mutex<Transcript>>;
