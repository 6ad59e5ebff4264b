//! Cluster test harness: `chatgate` child processes against real Redis and RabbitMQ (the
//! shared ones, or a fault test's private ones), each test with its own cluster name (Redis
//! key hash tag, AMQP name prefix).

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use super::{Client, WAIT, eventually, http};

/// Where the backing services are.
#[derive(Debug, Clone)]
pub struct Services {
    pub redis_url: String,
    pub amqp_url: String,
}

/// The shared services from `CHAT_TEST_REDIS_URL` / `CHAT_TEST_AMQP_URL` (default
/// 127.0.0.1), or `None` with a loud message if one is unreachable. With
/// `CHAT_TEST_REQUIRE_SERVICES=1` an unreachable service fails the test instead. Tests use
/// them read-write and never stop them; fault tests bring their own (`services.rs`).
pub fn services() -> Option<Services> {
    let (redis_url, amqp_url) = (shared_redis_url(), shared_amqp_url());
    usable(&[&redis_url, &amqp_url]).then_some(Services { redis_url, amqp_url })
}

/// The shared Redis alone, for a test that brings its own broker.
pub fn shared_redis() -> Option<String> {
    let url = shared_redis_url();
    usable(&[&url]).then_some(url)
}

/// The shared RabbitMQ alone, for a test that brings its own Redis.
pub fn shared_amqp() -> Option<String> {
    let url = shared_amqp_url();
    usable(&[&url]).then_some(url)
}

fn shared_redis_url() -> String {
    std::env::var("CHAT_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into())
}

fn shared_amqp_url() -> String {
    std::env::var("CHAT_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Whether every URL answers; otherwise skip loudly, or fail under `CHAT_TEST_REQUIRE_SERVICES=1`.
fn usable(urls: &[&String]) -> bool {
    let down: Vec<&String> = urls.iter().copied().filter(|u| !reachable(u)).collect();
    if down.is_empty() {
        return true;
    }
    if std::env::var("CHAT_TEST_REQUIRE_SERVICES").as_deref() == Ok("1") {
        panic!("backing services unreachable: {down:?} (CHAT_TEST_REQUIRE_SERVICES=1)");
    }
    eprintln!(
        "\n!!!! SKIPPING: backing services unreachable: {down:?}. Start Redis and RabbitMQ \
         (see .ci/services.sh) or set CHAT_TEST_REDIS_URL / CHAT_TEST_AMQP_URL. !!!!\n"
    );
    false
}

fn reachable(url: &str) -> bool {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let hostport = rest.split('/').next().unwrap_or(rest);
    let hostport = hostport.rsplit('@').next().unwrap_or(hostport);
    let Ok(mut addrs) = hostport.to_socket_addrs() else { return false };
    addrs.any(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok())
}

/// One gateway process.
pub struct NodeProc {
    pub id: String,
    pub addr: SocketAddr,
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
}

impl NodeProc {
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().clone()
    }

    /// Log lines (JSON) that contain `needle`.
    pub fn logged(&self, needle: &str) -> Vec<String> {
        self.logs.lock().iter().filter(|l| l.contains(needle)).cloned().collect()
    }
}

/// Nodes of one test cluster.
pub struct TestCluster {
    pub name: String,
    pub svc: Services,
    pub nodes: Vec<NodeProc>,
    env: Vec<(String, String)>,
}

/// Node lease in tests: short, so sweeps happen within seconds.
pub const TEST_TTL_MS: u64 = 1500;

impl TestCluster {
    /// Starts `n` nodes (`n0`, `n1`, ...) and waits until each is ready.
    pub async fn start(svc: &Services, n: usize, env: &[(&str, &str)]) -> TestCluster {
        let name = format!("t{}-{:08x}", std::process::id(), fastrand::u32(..));
        let mut c = TestCluster {
            name,
            svc: svc.clone(),
            nodes: Vec::new(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        for i in 0..n {
            c.spawn(&format!("n{i}"));
        }
        for i in 0..n {
            c.ready(i).await;
        }
        c
    }

    /// Starts one more node with id `id`; returns its index.
    pub fn spawn(&mut self, id: &str) -> usize {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_chatgate"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CHAT_LISTEN", "127.0.0.1:0")
            .env("CHAT_NODE_ID", id)
            .env("CHAT_CLUSTER", &self.name)
            .env("REDIS_URL", &self.svc.redis_url)
            .env("RABBIT_MQ_URL", &self.svc.amqp_url)
            .env("CHAT_NODE_TTL_MS", TEST_TTL_MS.to_string())
            .env("CHAT_SHUTDOWN_GRACE_MS", "5000")
            .env("CHAT_RATE_LIMIT", "100000")
            .env("CHAT_LOG_FORMAT", "json")
            .env("RUST_LOG", std::env::var("CHAT_TEST_NODE_LOG").unwrap_or_else(|_| "info".into()));
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd.stderr(Stdio::piped()).stdout(Stdio::null()).spawn().expect("spawn chatgate");
        let stderr = child.stderr.take().expect("stderr");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let v = if sent { None } else { serde_json::from_str::<serde_json::Value>(&line).ok() };
                if let Some(v) = v.filter(|v| v["message"] == "listening") {
                    let _ = tx.send(v["addr"].as_str().unwrap_or_default().to_owned());
                    sent = true;
                }
                sink.lock().push(line);
            }
        });
        let addr = rx.recv_timeout(WAIT).expect("node logs 'listening'").parse().expect("addr");
        self.nodes.push(NodeProc { id: id.to_owned(), addr, child, logs });
        self.nodes.len() - 1
    }

    /// Waits until node `i` answers `/readyz` with 200.
    pub async fn ready(&self, i: usize) {
        let addr = self.nodes[i].addr;
        eventually(&format!("node {} ready", self.nodes[i].id), || async move {
            http(addr, "GET", "/readyz", &[], "").await.status == 200
        })
        .await;
    }

    pub fn url(&self, i: usize) -> String {
        format!("ws://{}/ws", self.nodes[i].addr)
    }

    pub async fn client(&self, i: usize) -> Client {
        Client::connect(&self.url(i)).await
    }

    pub async fn online(&self, i: usize) -> u64 {
        http(self.nodes[i].addr, "GET", "/api/online", &[], "").await.json()["count"].as_u64().expect("count")
    }

    pub async fn members(&self, i: usize, group: &str) -> Vec<String> {
        let r = http(self.nodes[i].addr, "GET", &format!("/api/groups/{group}/members"), &[], "").await;
        r.json()["users"].as_array().expect("users").iter().map(|u| u.as_str().unwrap().to_owned()).collect()
    }

    /// SIGKILL: no cleanup at all.
    pub fn kill(&mut self, i: usize) {
        let _ = self.nodes[i].child.kill();
        let _ = self.nodes[i].child.wait();
    }

    /// Sends SIGTERM (returns at once; see [`wait_exit`](Self::wait_exit)).
    pub fn sigterm(&self, i: usize) {
        let pid = self.nodes[i].child.id();
        assert!(Command::new("kill").arg("-TERM").arg(pid.to_string()).status().unwrap().success());
    }

    /// Waits for node `i` to exit.
    pub async fn wait_exit(&mut self, i: usize) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.nodes[i].child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "node {} did not exit", self.nodes[i].id);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A Redis key of this cluster.
    pub fn key(&self, suffix: &str) -> String {
        format!("chatgate:{{{}}}:{suffix}", self.name)
    }

    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.svc.redis_url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("redis connection")
    }

    /// Whether the broker still has node `id`'s queue.
    pub async fn queue_exists(&self, id: &str) -> bool {
        let conn =
            lapin::Connection::connect(&self.svc.amqp_url, lapin::ConnectionProperties::default()).await.unwrap();
        let ch = conn.create_channel().await.unwrap();
        let opts = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
        let exists = ch
            .queue_declare(
                format!("{}.node.{id}", self.name).as_str().into(),
                opts,
                lapin::types::FieldTable::default(),
            )
            .await
            .is_ok();
        let _ = conn.close(200, "".into()).await;
        exists
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            let _ = n.child.kill();
            let _ = n.child.wait();
        }
        if std::thread::panicking() {
            for n in &self.nodes {
                eprintln!("---- last log lines of node {} ----", n.id);
                let logs = n.logs();
                for line in logs.iter().skip(logs.len().saturating_sub(200)) {
                    eprintln!("{line}");
                }
            }
        }
        // Leave nothing behind in Redis. (Queues expire by themselves: x-expires.) Bounded:
        // a fault test's Redis may be dead or paused by now.
        let conn = redis::Client::open(self.svc.redis_url.as_str())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
            .and_then(|c| c.set_read_timeout(Some(Duration::from_secs(2))).map(|()| c));
        if let Ok(mut conn) = conn {
            let keys: Vec<String> = redis::cmd("KEYS").arg(self.key("*")).query(&mut conn).unwrap_or_default();
            if !keys.is_empty() {
                let _: Result<(), _> = redis::cmd("DEL").arg(keys).query(&mut conn);
            }
        }
    }
}
