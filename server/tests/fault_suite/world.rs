//! The processes of one schedule: three server nodes, a SurrealDB server on disk, a
//! redis-server and the mock model, and the means to hurt each of them: kill, pause,
//! restart, cut off. Each node runs in a network namespace of its own when the machine
//! allows it (root, `ip netns`), so it can be cut off from everything by a blackhole
//! route on each side; otherwise everything runs on loopback and partitions are skipped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use relay_mock_llm::{MockLlm, MockSettings};

/// Lease time of the suite's clusters: failover happens within it.
pub const LEASE_MS: u64 = 2000;
/// JWT secret the nodes share (the suite mints tokens by registering).
const SECRET: &str = "fault-suite-secret-that-is-long-enough-0123";
/// The port every node listens on inside its own namespace.
const NODE_PORT: u16 = 18080;

/// Sends a signal (`STOP`, `CONT`, `KILL`, `TERM`) to a process.
pub fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("0.0.0.0:0").unwrap().local_addr().unwrap().port()
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip").args(args).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// One network namespace per node, joined to the host by a veth pair: node `i` is
/// `10.77.i.2`, and reaches the host (Redis, SurrealDB, the mock) at `10.77.i.1`.
pub struct Net {
    prefix: String,
    nodes: usize,
}

impl Net {
    /// Creates the namespaces, or `None` where the machine does not allow it.
    pub fn create(nodes: usize) -> Option<Net> {
        let prefix = format!("rf{}", std::process::id() % 100_000);
        Net::clean_leftovers();
        let net = Net { prefix, nodes };
        for i in 0..nodes {
            let (ns, host, inner) = (net.namespace(i), net.host_link(i), net.inner_link(i));
            let (host_ip, node_ip) = (format!("{}/24", net.host_ip(i)), format!("{}/24", net.node_ip(i)));
            let ok = ip(&["netns", "add", &ns])
                && ip(&["link", "add", &host, "type", "veth", "peer", "name", &inner])
                && ip(&["link", "set", &inner, "netns", &ns])
                && ip(&["addr", "add", &host_ip, "dev", &host])
                && ip(&["link", "set", &host, "up"])
                && ip(&["netns", "exec", &ns, "ip", "addr", "add", &node_ip, "dev", &inner])
                && ip(&["netns", "exec", &ns, "ip", "link", "set", &inner, "up"])
                && ip(&["netns", "exec", &ns, "ip", "link", "set", "lo", "up"]);
            if !ok {
                drop(net);
                return None;
            }
        }
        Some(net)
    }

    /// Namespaces and links an earlier run left behind (it was killed).
    fn clean_leftovers() {
        let listed = Command::new("ip").args(["netns", "list"]).output().map(|o| o.stdout).unwrap_or_default();
        for line in String::from_utf8_lossy(&listed).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            let ours = name.strip_prefix("rf").is_some_and(|rest| {
                rest.split_once('n').is_some_and(|(pid, i)| pid.chars().all(|c| c.is_ascii_digit()) && i.len() == 1)
            });
            if ours {
                ip(&["netns", "del", name]);
            }
        }
        let links = Command::new("ip").args(["-o", "link"]).output().map(|o| o.stdout).unwrap_or_default();
        for line in String::from_utf8_lossy(&links).lines() {
            let name = line.split(':').nth(1).unwrap_or("").trim().split('@').next().unwrap_or("");
            if name.starts_with("rf") && name.ends_with(|c: char| c.is_ascii_digit()) && name.contains('h') {
                ip(&["link", "del", name]);
            }
        }
    }

    pub fn namespace(&self, i: usize) -> String {
        format!("{}n{i}", self.prefix)
    }

    fn host_link(&self, i: usize) -> String {
        format!("{}h{i}", self.prefix)
    }

    fn inner_link(&self, i: usize) -> String {
        format!("{}s{i}", self.prefix)
    }

    pub fn host_ip(&self, i: usize) -> String {
        format!("10.77.{i}.1")
    }

    pub fn node_ip(&self, i: usize) -> String {
        format!("10.77.{i}.2")
    }

    /// Cuts node `i` off from everything (its packets go nowhere, both ways).
    pub fn partition(&self, i: usize) {
        ip(&["route", "add", "blackhole", &format!("{}/32", self.node_ip(i))]);
        ip(&[
            "netns",
            "exec",
            &self.namespace(i),
            "ip",
            "route",
            "add",
            "blackhole",
            &format!("{}/32", self.host_ip(i)),
        ]);
    }

    /// Joins node `i` to the network again.
    pub fn heal(&self, i: usize) {
        ip(&["route", "del", "blackhole", &format!("{}/32", self.node_ip(i))]);
        ip(&[
            "netns",
            "exec",
            &self.namespace(i),
            "ip",
            "route",
            "del",
            "blackhole",
            &format!("{}/32", self.host_ip(i)),
        ]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for i in 0..self.nodes {
            self.heal(i);
            ip(&["link", "del", &self.host_link(i)]);
            ip(&["netns", "del", &self.namespace(i)]);
        }
    }
}

/// A process started from a command line, killed when dropped.
struct Proc {
    child: Option<Child>,
}

impl Proc {
    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), "CONT");
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A redis-server on the host (every interface), without persistence.
pub struct Redis {
    pub port: u16,
    proc: Proc,
}

impl Redis {
    async fn start() -> Redis {
        let mut redis = Redis { port: free_port(), proc: Proc { child: None } };
        redis.resume().await;
        redis
    }

    /// Starts it again on its port (empty).
    pub async fn resume(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "0.0.0.0", "--protected-mode", "no"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs");
        self.proc.child = Some(child);
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        panic!("redis-server did not start");
    }

    pub fn stop(&mut self) {
        self.proc.kill();
    }

    /// `CLIENT KILL`s the connections from `addr` (an IP), or every subscriber connection.
    pub async fn kill_clients(&self, addr: Option<&str>) {
        let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{}", self.port)) else { return };
        let Ok(mut conn) = client.get_multiplexed_async_connection().await else { return };
        let list: String = redis::cmd("CLIENT").arg("LIST").query_async(&mut conn).await.unwrap_or_default();
        for line in list.lines() {
            let field =
                |name: &str| line.split(' ').find_map(|f| f.strip_prefix(&format!("{name}=")).map(str::to_owned));
            let (Some(id), Some(peer), Some(flags)) = (field("id"), field("addr"), field("flags")) else { continue };
            let hit = match addr {
                Some(addr) => peer.starts_with(&format!("{addr}:")),
                None => flags.contains('P'),
            };
            if hit {
                let _: Result<i64, _> = redis::cmd("CLIENT").arg("KILL").arg("ID").arg(id).query_async(&mut conn).await;
            }
        }
    }
}

/// A SurrealDB server on the host (every interface), keeping its data on disk.
pub struct Surreal {
    pub port: u16,
    path: PathBuf,
    proc: Proc,
}

impl Surreal {
    async fn start(dir: &Path) -> Surreal {
        let mut surreal = Surreal { port: free_port(), path: dir.join("surreal.db"), proc: Proc { child: None } };
        surreal.restart().await;
        surreal
    }

    /// Starts it (again) on its port, on its data.
    pub async fn restart(&mut self) {
        for _ in 0..3 {
            let child = Command::new(surreal_bin())
                .args(["start", "--bind", &format!("0.0.0.0:{}", self.port), "--user", "root", "--pass", "root-pass"])
                .arg(format!("surrealkv://{}", self.path.display()))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("surreal starts");
            self.proc.child = Some(child);
            let http = reqwest::Client::builder().no_proxy().build().unwrap();
            for _ in 0..300 {
                if !self.proc.is_running() {
                    break;
                }
                let version = http.get(format!("http://127.0.0.1:{}/version", self.port)).send().await;
                if let Ok(response) = version
                    && response.text().await.is_ok_and(|v| v.starts_with("surrealdb"))
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            self.proc.kill();
        }
        panic!("surreal did not come up on port {}", self.port);
    }

    pub fn kill(&mut self) {
        self.proc.kill();
    }

    pub fn pause(&self) {
        if let Some(pid) = self.proc.pid() {
            signal(pid, "STOP");
        }
    }

    pub fn resume(&self) {
        if let Some(pid) = self.proc.pid() {
            signal(pid, "CONT");
        }
    }

    /// Runs SurrealQL in the suite's namespace and database; the JSON answer.
    pub async fn sql(&self, query: &str) -> serde_json::Value {
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .post(format!("http://127.0.0.1:{}/sql", self.port))
            .basic_auth("root", Some("root-pass"))
            .header("surreal-ns", "relay")
            .header("surreal-db", "chat")
            .header("Accept", "application/json")
            .body(query.to_string())
            .send()
            .await
            .expect("surreal answers")
            .json()
            .await
            .expect("surreal answers JSON")
    }
}

fn surreal_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("RELAY_TEST_SURREAL_BIN") {
        return bin.into();
    }
    PathBuf::from(std::env::var("HOME").expect("HOME is set")).join(".cache/surreal-target/release/surreal")
}

/// A server node: the real binary, in its namespace when there is one.
pub struct Node {
    pub id: &'static str,
    /// Where clients reach it.
    pub addr: String,
    /// Where it reaches the host's services.
    host_ip: String,
    namespace: Option<String>,
    dir: PathBuf,
    log: PathBuf,
    proc: Proc,
}

impl Node {
    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    fn spawn(&mut self, services: &Services) {
        let port = self.addr.rsplit_once(':').map(|(_, p)| p.to_owned()).unwrap_or_default();
        let bind = match &self.namespace {
            Some(_) => self.addr.clone(),
            None => format!("127.0.0.1:{port}"),
        };
        let vars: Vec<(String, String)> = vec![
            ("PATH".into(), std::env::var("PATH").unwrap_or_default()),
            ("NODE_ID".into(), self.id.into()),
            ("BIND_ADDR".into(), bind),
            ("RELAY_DATA_DIR".into(), self.dir.display().to_string()),
            ("RUST_LOG".into(), "warn".into()),
            ("DATABASE_URL".into(), format!("ws://{}:{}", self.host_ip, services.surreal_port)),
            ("DATABASE_USER".into(), "root".into()),
            ("DATABASE_PASS".into(), "root-pass".into()),
            ("DATABASE_TIMEOUT_MS".into(), "2000".into()),
            ("REDIS_URL".into(), format!("redis://{}:{}", self.host_ip, services.redis_port)),
            ("JWT_SECRET".into(), SECRET.into()),
            ("SAMBANOVA_API_KEY".into(), "fault-suite".into()),
            ("SAMBANOVA_API_BASE".into(), format!("http://{}:{}/v1", self.host_ip, services.mock_port)),
            ("LLM_RETRY_BACKOFF_MS".into(), "20".into()),
            ("LLM_BREAKER_FAILURES".into(), "100000".into()),
            ("LLM_TIMEOUT_SECS".into(), "8".into()),
            ("CLUSTER_LEASE_MS".into(), LEASE_MS.to_string()),
            ("CHAT_CHECKPOINT_MS".into(), "200".into()),
            ("CHAT_CANCEL_GRACE_MS".into(), "6000".into()),
            ("CHAT_RATE_LIMIT_PER_MINUTE".into(), "0".into()),
            ("CHAT_DAILY_MESSAGE_QUOTA".into(), "0".into()),
            ("WS_SUBSCRIBES_PER_MINUTE".into(), "100000".into()),
            ("AUTH_REGISTRATIONS_PER_ADDRESS_PER_HOUR".into(), "100000".into()),
            ("METRICS_TOKEN".into(), "scrape".into()),
        ];
        let mut command = match &self.namespace {
            Some(ns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", ns]).arg(env!("CARGO_BIN_EXE_relay-server"));
                command
            }
            None => Command::new(env!("CARGO_BIN_EXE_relay-server")),
        };
        command.env_clear();
        for (k, v) in &vars {
            command.env(k, v);
        }
        if let Ok(profile) = std::env::var("LLVM_PROFILE_FILE") {
            command.env("LLVM_PROFILE_FILE", profile);
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("node log opens");
        let child = command.stdout(Stdio::null()).stderr(log).spawn().expect("the relay-server binary starts");
        self.proc.child = Some(child);
    }

    /// Waits until it answers `/readyz` 200 (false after `wait`).
    pub async fn ready(&self, http: &reqwest::Client, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        while tokio::time::Instant::now() < deadline {
            if let Ok(r) = http.get(format!("http://{}/readyz", self.addr)).send().await
                && r.status() == 200
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    pub fn kill(&mut self) {
        self.proc.kill();
    }

    pub fn pause(&self) {
        if let Some(pid) = self.pid() {
            signal(pid, "STOP");
        }
    }

    pub fn resume(&self) {
        if let Some(pid) = self.pid() {
            signal(pid, "CONT");
        }
    }

    /// The tail of its log, for a failure report.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// Where the host's services listen.
#[derive(Clone, Copy)]
struct Services {
    surreal_port: u16,
    redis_port: u16,
    mock_port: u16,
}

/// Everything one schedule runs on.
pub struct World {
    pub net: Option<Net>,
    pub redis: Redis,
    pub surreal: Surreal,
    pub mock: MockLlm,
    pub nodes: Vec<Node>,
    pub http: reqwest::Client,
    services: Services,
    /// Where the processes keep their data and logs (removed with the world).
    _dir: tempfile::TempDir,
}

impl World {
    /// Starts the services and `n` nodes, and waits until every node is ready.
    pub async fn start(n: usize, use_net: bool) -> World {
        let dir = tempfile::tempdir().unwrap();
        let net = if use_net { Net::create(n) } else { None };
        let mock = MockLlm::start(
            MockSettings {
                first_token_delay: Duration::from_millis(20),
                tokens_per_second: 50.0,
                reply_tokens: 20,
                journal: true,
                ..MockSettings::default()
            },
            "0.0.0.0:0".parse().unwrap(),
        )
        .await
        .expect("mock starts");
        let mock_port = mock.addr().port();
        let (surreal, redis) = (Surreal::start(dir.path()).await, Redis::start().await);
        let services = Services { surreal_port: surreal.port, redis_port: redis.port, mock_port };
        let nodes = (0..n)
            .map(|i| {
                let id = ["a", "b", "c", "d", "e"][i];
                let (addr, host_ip, namespace) = match &net {
                    Some(net) => (format!("{}:{NODE_PORT}", net.node_ip(i)), net.host_ip(i), Some(net.namespace(i))),
                    None => (format!("127.0.0.1:{}", free_port()), "127.0.0.1".to_owned(), None),
                };
                let node_dir = dir.path().join(format!("node-{id}"));
                std::fs::create_dir_all(&node_dir).unwrap();
                let log = dir.path().join(format!("node-{id}.log"));
                Node { id, addr, host_ip, namespace, dir: node_dir, log, proc: Proc { child: None } }
            })
            .collect();
        let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build().unwrap();
        let mut world = World { net, redis, surreal, mock, nodes, http, services, _dir: dir };
        for i in 0..n {
            world.nodes[i].spawn(&world.services);
        }
        for node in &world.nodes {
            assert!(node.ready(&world.http, Duration::from_secs(60)).await, "node {} became ready", node.id);
        }
        world
    }

    /// Starts node `i` again (after a kill).
    pub fn restart_node(&mut self, i: usize) {
        let services = self.services;
        self.nodes[i].spawn(&services);
    }

    /// Undoes every fault still in force: resumes paused processes, restarts killed ones,
    /// heals partitions.
    pub async fn heal_all(&mut self) {
        self.surreal.resume();
        if !self.surreal.proc.is_running() {
            self.surreal.restart().await;
        }
        if !self.redis.proc.is_running() {
            self.redis.resume().await;
        }
        for i in 0..self.nodes.len() {
            if let Some(net) = &self.net {
                net.heal(i);
            }
            self.nodes[i].resume();
            if !self.nodes[i].proc.is_running() {
                self.nodes[i].proc.child = None;
                self.restart_node(i);
            }
        }
    }

    /// Stops every node with SIGTERM (coverage runs need a normal exit), waiting a while.
    pub fn stop_nodes(&mut self) {
        for node in &self.nodes {
            if let Some(pid) = node.pid() {
                signal(pid, "CONT");
                signal(pid, "TERM");
            }
        }
        for node in &mut self.nodes {
            if let Some(child) = node.proc.child.as_mut() {
                for _ in 0..200 {
                    if child.try_wait().ok().flatten().is_some() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(25));
                }
            }
            node.proc.kill();
        }
    }
}
