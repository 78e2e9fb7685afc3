//! A cluster of real processes for tests: a SurrealDB server, a redis-server, the real
//! binary two or three times, and one mock model they all call (so a test sees every
//! upstream request, and when one is closed).
#![allow(dead_code)]

use std::time::Duration;

use relay_mock_llm::{MockLlm, MockSettings};
use relay_protocol::{ServerFrame, SessionWithMessages};
use serde_json::json;
use uuid::Uuid;

use super::flow::{self, until_dones};
use super::{Process, RedisServer, SECRET, SurrealServer, Ws};

/// Lease time the test clusters run with: failover happens within it.
pub const LEASE_MS: u64 = 2000;

/// A cluster: the shared parts and its nodes (`None` while a node is down).
pub struct Cluster {
    pub nodes: Vec<Option<Process>>,
    pub extra: Vec<(String, String)>,
    pub mock: MockLlm,
    pub redis: RedisServer,
    pub surreal: SurrealServer,
    pub dirs: Vec<tempfile::TempDir>,
    pub http: reqwest::Client,
}

impl Cluster {
    /// `n` nodes (`a`, `b`, `c`), started at the same moment on a fresh database.
    pub async fn start(n: usize, extra: &[(&str, &str)]) -> Cluster {
        let mock = MockLlm::start(
            MockSettings {
                first_token_delay: Duration::from_millis(5),
                tokens_per_second: 1000.0,
                reply_tokens: 20,
                ..MockSettings::default()
            },
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .expect("mock starts");
        let (surreal, redis) = (SurrealServer::start().await, RedisServer::start().await);
        let mut cluster = Cluster {
            nodes: Vec::new(),
            extra: extra.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            mock,
            redis,
            surreal,
            dirs: Vec::new(),
            http: reqwest::Client::new(),
        };
        for i in 0..n {
            cluster.dirs.push(tempfile::tempdir().unwrap());
            let node = cluster.spawn(i);
            cluster.nodes.push(Some(node));
        }
        for node in cluster.nodes.iter().flatten() {
            node.ready(&cluster.http).await;
        }
        cluster
    }

    /// Starts node `i` with the cluster's variables.
    pub fn spawn(&self, i: usize) -> Process {
        self.spawn_with(i, &[])
    }

    /// Starts node `i` with the cluster's variables and some more (a fault knob, say).
    pub fn spawn_with(&self, i: usize, more: &[(&str, &str)]) -> Process {
        let node_id = ["a", "b", "c"][i];
        let db = format!("ws://127.0.0.1:{}", self.surreal.port);
        let (redis, api_base, lease) = (self.redis.url(), self.mock.base_url(), LEASE_MS.to_string());
        let mut vars: Vec<(&str, &str)> = vec![
            ("NODE_ID", node_id),
            ("DATABASE_URL", &db),
            ("DATABASE_USER", "root"),
            ("DATABASE_PASS", "root-pass"),
            ("DATABASE_NS", "relay_cluster"),
            ("DATABASE_DB", "chat"),
            ("REDIS_URL", &redis),
            ("JWT_SECRET", SECRET),
            ("SAMBANOVA_API_KEY", "test-key"),
            ("SAMBANOVA_API_BASE", &api_base),
            ("CLUSTER_LEASE_MS", &lease),
            ("CHAT_CHECKPOINT_MS", "100"),
            ("METRICS_TOKEN", "scrape"),
        ];
        vars.extend(self.extra.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        vars.extend_from_slice(more);
        Process::start_with(self.dirs[i].path(), &vars, std::process::Stdio::inherit())
    }

    /// Stops node `i` (SIGTERM) and starts it again with some more variables.
    pub async fn restart_with(&mut self, i: usize, more: &[(&str, &str)]) {
        if let Some(node) = self.nodes[i].take() {
            node.terminate();
        }
        let node = self.spawn_with(i, more);
        node.ready(&self.http).await;
        self.nodes[i] = Some(node);
    }

    pub fn node(&self, i: usize) -> &Process {
        self.nodes[i].as_ref().expect("the node is running")
    }

    pub async fn register(&self, i: usize, name: &str) -> String {
        self.node(i).register(&self.http, name).await.token
    }

    pub async fn session(&self, i: usize, token: &str) -> Uuid {
        self.node(i).create_session(&self.http, token, None).await.id
    }

    /// Renames a session through node `i`, which makes that node its owner when nobody is.
    pub async fn rename(&self, i: usize, token: &str, sid: Uuid, title: &str) -> reqwest::Response {
        self.http
            .patch(self.node(i).url(&format!("/api/v1/chat/sessions/{sid}")))
            .bearer_auth(token)
            .json(&json!({"title": title}))
            .send()
            .await
            .unwrap()
    }

    pub async fn stored(&self, i: usize, token: &str, sid: Uuid) -> SessionWithMessages {
        let body = self.node(i).get(&self.http, token, &format!("/api/v1/chat/sessions/{sid}")).await;
        serde_json::from_value(body.clone()).unwrap_or_else(|e| panic!("{e}: {body}"))
    }

    /// A new user's session that node `a` owns with nobody watching it there (a rename
    /// through `a` starts its actor, which takes the lease): the token and the session.
    pub async fn session_owned_by_a(&self, name: &str) -> (String, Uuid) {
        let token = self.register(0, name).await;
        let sid = self.session(0, &token).await;
        assert_eq!(self.rename(0, &token, sid, "owned by a").await.status(), 200);
        assert!(self.owner(sid).await.is_some_and(|o| o.starts_with("a#")));
        (token, sid)
    }

    /// Who holds a session's lease now, as Redis says.
    pub async fn owner(&self, sid: Uuid) -> Option<String> {
        let mut redis = self.redis.connection().await;
        redis::cmd("GET").arg(format!("relay:lease:{sid}")).query_async(&mut redis).await.unwrap()
    }
}

impl Drop for Cluster {
    /// Stops the nodes with SIGTERM, as an operator would (coverage runs also need their
    /// processes to exit normally to write their profiles); a node that does not stop in
    /// time is killed when its `Process` drops.
    fn drop(&mut self) {
        for node in self.nodes.iter().flatten() {
            let _ = std::process::Command::new("kill").arg("-TERM").arg(node.child.id().to_string()).status();
        }
        for node in self.nodes.iter_mut().flatten() {
            for _ in 0..200 {
                if node.child.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
        }
    }
}

/// Subscribes and returns the snapshot's `seq`.
pub async fn subscribe(ws: &mut Ws, sid: Uuid) -> u64 {
    flow::subscribe(ws, sid).await.0
}

pub async fn send(ws: &mut Ws, sid: Uuid, id: &str, content: &str) {
    flow::send(ws, sid, id, content).await;
}

/// Frames until `count` replies of the session ended, with the time it took.
pub async fn replies(ws: &mut Ws, sid: Uuid, count: usize) -> Vec<ServerFrame> {
    until_dones(ws, sid, count).await
}
