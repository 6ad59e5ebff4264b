//! Private backends for fault tests: a `redis-server` on a free port and a RabbitMQ node of
//! its own (own node name, ports, data folder, cookie), which a test may kill, pause or
//! restart. The machine's shared Redis (6379) and RabbitMQ (5672) are never touched here.
//!
//! Every server runs in its own process group, watched by a reaper process that kills the
//! group and removes the data folder when the test process goes away, however it goes (a
//! panic, Ctrl-C, SIGKILL): a fault test must not leave servers behind on a shared machine.

use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{self, pki_types::ServerName};

use super::tls::TestPki;

/// How long a server may take to come up; the shared machine can be slow.
const BOOT_WAIT: Duration = Duration::from_secs(120);

/// `N` distinct ports that were free a moment ago, as the kernel picks them for port 0.
/// Someone can take one before the server binds it: callers retry with others.
pub fn free_ports<const N: usize>() -> [u16; N] {
    // All held at once, so the kernel cannot hand out the same port twice.
    let held: Vec<TcpListener> = (0..N).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")).collect();
    std::array::from_fn(|i| held[i].local_addr().expect("local addr").port())
}

/// `name` on `PATH` (or in one of `extra` directories first).
fn find_tool(name: &str, extra: &[&str]) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    extra.iter().map(PathBuf::from).chain(std::env::split_paths(&path)).map(|dir| dir.join(name)).find(|p| p.is_file())
}

/// The tool, or `None` after a loud message; with `CHAT_TEST_REQUIRE_SERVICES=1` a missing
/// tool fails the test instead (CI must not pass by skipping).
fn require_tool(name: &str, extra: &[&str]) -> Option<PathBuf> {
    if let Some(p) = find_tool(name, extra) {
        return Some(p);
    }
    if std::env::var("CHAT_TEST_REQUIRE_SERVICES").as_deref() == Ok("1") {
        panic!("{name} not found (CHAT_TEST_REQUIRE_SERVICES=1); .ci/services.sh installs it");
    }
    eprintln!("\n!!!! SKIPPING: {name} not found; install it (see .ci/services.sh) to run fault tests !!!!\n");
    None
}

/// Sends `sig` (`STOP`, `CONT`, `KILL`) to a process.
fn signal(sig: &str, pid: u32) {
    let ok = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status().is_ok_and(|s| s.success());
    assert!(ok, "kill -{sig} {pid}");
}

/// Whether something accepts connections on `port` of 127.0.0.1.
async fn port_open(port: u16) -> bool {
    TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).await.is_ok()
}

/// Last lines of a log file, for failure messages.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Kills the process group whose id is in `<dir>/pgid` and removes `dir` once its stdin
/// closes, which happens when the test process ends: the kernel closes our end of the pipe
/// whatever killed us. It runs in its own group so a Ctrl-C aimed at the test does not end
/// it first.
struct Reaper {
    stdin: Option<ChildStdin>,
    child: Child,
}

impl Reaper {
    fn spawn(dir: &Path) -> Reaper {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r#"read _ ; pg=$(cat "$1/pgid" 2>/dev/null) && kill -KILL "-$pg" 2>/dev/null ; rm -rf "$1""#)
            .arg("reaper")
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn reaper shell");
        Reaper { stdin: child.stdin.take(), child }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

/// Spawns `cmd` as the leader of a new process group, recorded for the reaper.
fn spawn_group(cmd: &mut Command, dir: &Path) -> Child {
    let child = cmd.process_group(0).spawn().expect("spawn server");
    std::fs::write(dir.join("pgid"), child.id().to_string()).expect("write pgid");
    child
}

/// Kills a server's process group, reaps its leader and waits until `member` (a process of
/// the group that is not our child) has exited and `ports` refuse connections: a caller
/// that asserts "the server is gone" must not meet a socket still being torn down.
fn kill_group(child: &mut Child, dir: &Path, member: Option<u32>, ports: &[u16]) {
    let _ = Command::new("kill").arg("-KILL").arg("--").arg(format!("-{}", child.id())).status();
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(dir.join("pgid"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let listening = |port: &u16| std::net::TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], *port))).is_ok();
    while (member.is_some_and(alive) || ports.iter().any(listening)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether `pid` still runs (a zombie has exited, though under gVisor its sockets may take
/// a moment longer to close: hence the port check beside it).
fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

/// A `redis-server` of this test's own: free port, own folder, no persistence (a restart
/// loses every key, as a crash of a cache-only Redis would).
pub struct PrivateRedis {
    port: u16,
    /// Serve TLS only (`--port 0 --tls-port`), with this identity.
    tls: Option<TlsIdentity>,
    server: Option<Child>,
    reaper: Reaper,
    dir: TempDir,
}

impl PrivateRedis {
    /// Starts one, or returns `None` (loudly) if `redis-server` is not installed.
    pub async fn start() -> Option<PrivateRedis> {
        Self::start_with(None).await
    }

    /// [`start`](Self::start) with a TLS port only (`rediss://`), serving `pki`'s certificate.
    pub async fn start_tls(pki: &TestPki) -> Option<PrivateRedis> {
        Self::start_with(Some(TlsIdentity::of(pki))).await
    }

    async fn start_with(tls: Option<TlsIdentity>) -> Option<PrivateRedis> {
        let bin = require_tool("redis-server", &[])?;
        let dir = tempfile::Builder::new().prefix("chatgate-redis-").tempdir().expect("temp dir");
        let reaper = Reaper::spawn(dir.path());
        let mut redis = PrivateRedis { port: 0, tls, server: None, reaper, dir };
        for _ in 0..5 {
            [redis.port] = free_ports();
            match redis.boot(&bin).await {
                Ok(()) => return Some(redis),
                // Most likely the port was taken between our probe and its bind.
                Err(e) => eprintln!("private redis on port {} did not start, retrying: {e}", redis.port),
            }
        }
        panic!("private redis-server would not start; log:\n{}", tail(&redis.dir.path().join("redis.log"), 20));
    }

    async fn boot(&mut self, bin: &Path) -> Result<(), String> {
        let dir = self.dir.path();
        let mut cmd = Command::new(bin);
        match &self.tls {
            None => cmd.args(["--port", &self.port.to_string()]),
            Some(tls) => cmd
                .args(["--port", "0", "--tls-port", &self.port.to_string(), "--tls-auth-clients", "no"])
                .arg("--tls-cert-file")
                .arg(&tls.cert)
                .arg("--tls-key-file")
                .arg(&tls.key),
        };
        cmd.args(["--bind", "127.0.0.1", "--daemonize", "no"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let server = self.server.insert(spawn_group(&mut cmd, dir));
        let deadline = Instant::now() + BOOT_WAIT;
        loop {
            if let Ok(Some(status)) = server.try_wait() {
                self.server = None;
                return Err(format!("redis-server exited: {status}"));
            }
            let answered = match &self.tls {
                None => ping(self.port).await,
                Some(tls) => tls_ping(self.port, tls.client.clone()).await,
            };
            if answered {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err("no PONG in time".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT/`, or `rediss://localhost:PORT/` when it serves TLS.
    pub fn url(&self) -> String {
        match self.tls {
            None => format!("redis://127.0.0.1:{}/", self.port),
            Some(_) => format!("rediss://localhost:{}/", self.port),
        }
    }

    /// SIGKILL: no shutdown, connections reset, data gone.
    pub fn kill9(&mut self) {
        if let Some(mut server) = self.server.take() {
            kill_group(&mut server, self.dir.path(), None, &[self.port]);
        }
    }

    /// Starts it again on the same port, empty (after [`kill9`](Self::kill9), or killing it now).
    pub async fn restart(&mut self) {
        self.kill9();
        let bin = find_tool("redis-server", &[]).expect("redis-server");
        if let Err(e) = self.boot(&bin).await {
            panic!(
                "private redis did not restart on port {}: {e}; log:\n{}",
                self.port,
                tail(&self.dir.path().join("redis.log"), 20)
            );
        }
    }

    /// SIGSTOP: connections stay open and nothing answers, like a hung server.
    pub fn pause(&mut self) {
        let server = self.server.as_ref().expect("redis is running");
        signal("STOP", server.id());
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub fn resume(&mut self) {
        if let Some(server) = &self.server {
            signal("CONT", server.id());
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        // The reaper (dropped after this) removes the folder.
        self.kill9();
    }
}

/// Whether a Redis on `port` answers PING.
async fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).await else { return false };
    let mut buf = [0u8; 7];
    let exchange = async {
        s.write_all(b"PING\r\n").await?;
        s.read_exact(&mut buf).await
    };
    matches!(tokio::time::timeout(Duration::from_secs(2), exchange).await, Ok(Ok(_))) && &buf == b"+PONG\r\n"
}

/// [`ping`] over TLS, trusting what `client` trusts.
async fn tls_ping(port: u16, client: Arc<rustls::ClientConfig>) -> bool {
    let exchange = async {
        let tcp = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).await?;
        let name = ServerName::try_from("localhost").map_err(std::io::Error::other)?;
        let mut s = TlsConnector::from(client).connect(name, tcp).await?;
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").await?;
        s.read_exact(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    matches!(tokio::time::timeout(Duration::from_secs(2), exchange).await, Ok(Ok(buf)) if &buf == b"+PONG\r\n")
}

/// Whether an `amqps://` URL opens with the CA in the file beside it (true without one).
async fn tls_ready(tls: Option<&(String, PathBuf)>) -> bool {
    let Some((url, ca)) = tls else { return true };
    let ca = std::fs::read_to_string(ca).expect("CA file");
    let tls = lapin::tcp::OwnedTLSConfig { identity: None, cert_chain: Some(ca) };
    let runtime = lapin::runtime::default_runtime().expect("runtime");
    let connect = lapin::Connection::connect_with_config(url, lapin::ConnectionProperties::default(), tls, runtime);
    match tokio::time::timeout(Duration::from_secs(5), connect).await {
        Ok(Ok(conn)) => {
            let _ = conn.close(200, "".into()).await;
            true
        }
        _ => false,
    }
}

/// A server's certificate and key files (see [`TestPki`]), and a client that trusts them.
#[derive(Clone)]
struct TlsIdentity {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
    client: Arc<rustls::ClientConfig>,
}

impl TlsIdentity {
    fn of(pki: &TestPki) -> TlsIdentity {
        TlsIdentity { cert: pki.cert.clone(), key: pki.key.clone(), ca: pki.ca.clone(), client: pki.client() }
    }
}

/// Whether an AMQP connection opens (and closes) at `url` within a few seconds.
pub async fn amqp_handshake(url: &str) -> bool {
    let connect = lapin::Connection::connect(url, lapin::ConnectionProperties::default());
    match tokio::time::timeout(Duration::from_secs(5), connect).await {
        Ok(Ok(conn)) => {
            let _ = conn.close(200, "".into()).await;
            true
        }
        _ => false,
    }
}

/// Where Debian puts the real RabbitMQ scripts: its `/usr/sbin` wrappers re-run them as the
/// `rabbitmq` user through `su`, which would drop the environment that makes the node ours.
const RABBIT_LIB_BIN: &str = "/usr/lib/rabbitmq/bin";

/// A RabbitMQ node of this test's own, beside the machine's: its own node name, AMQP and
/// distribution ports, data and log folders, config (no plugins, so no second management
/// listener) and Erlang cookie. Only epmd is shared, which is a name registry, not a broker.
pub struct PrivateRabbit {
    node: String,
    port: u16,
    dist_port: u16,
    /// An `amqps://` listener besides the plain one, on this port with this identity.
    tls: Option<(u16, TlsIdentity)>,
    server: Option<Child>,
    paused: bool,
    scripts: PathBuf,
    reaper: Reaper,
    dir: TempDir,
    /// How long the first start took, until it completed an AMQP handshake.
    pub startup: Duration,
}

impl PrivateRabbit {
    /// Starts a node and waits until it accepts AMQP connections; `None` (loudly) if RabbitMQ
    /// is not installed.
    pub async fn start() -> Option<PrivateRabbit> {
        Self::start_with(None).await
    }

    /// [`start`](Self::start) with an `amqps://` listener too, serving `pki`'s certificate.
    pub async fn start_tls(pki: &TestPki) -> Option<PrivateRabbit> {
        Self::start_with(Some(TlsIdentity::of(pki))).await
    }

    async fn start_with(tls: Option<TlsIdentity>) -> Option<PrivateRabbit> {
        let server = require_tool("rabbitmq-server", &[RABBIT_LIB_BIN])?;
        let scripts = server.parent().expect("scripts dir").to_path_buf();
        let dir = tempfile::Builder::new().prefix("chatgate-rabbit-").tempdir().expect("temp dir");
        let path = dir.path();
        // Erlang refuses a cookie file that others can read.
        let cookie = path.join(".erlang.cookie");
        std::fs::write(&cookie, format!("chatgate{:016x}", fastrand::u64(..))).expect("cookie");
        std::fs::set_permissions(&cookie, std::fs::Permissions::from_mode(0o400)).expect("cookie mode");
        std::fs::write(path.join("rabbitmq-env.conf"), "").expect("env conf");
        std::fs::write(path.join("enabled_plugins"), "[].\n").expect("plugins file");
        let reaper = Reaper::spawn(path);
        let node = format!("chatgate-t{}-{:08x}@localhost", std::process::id(), fastrand::u32(..));
        let mut rabbit = PrivateRabbit {
            node,
            port: 0,
            dist_port: 0,
            tls: tls.map(|t| (0, t)),
            server: None,
            paused: false,
            scripts,
            reaper,
            dir,
            startup: Duration::ZERO,
        };
        let started = Instant::now();
        for _ in 0..3 {
            let [port, dist_port, tls_port] = free_ports();
            (rabbit.port, rabbit.dist_port) = (port, dist_port);
            if let Some((p, _)) = &mut rabbit.tls {
                *p = tls_port;
            }
            match rabbit.boot().await {
                Ok(()) => {
                    rabbit.startup = started.elapsed();
                    eprintln!(
                        "private RabbitMQ node {} up on port {} in {:.1} s",
                        rabbit.node,
                        rabbit.port,
                        rabbit.startup.as_secs_f64()
                    );
                    return Some(rabbit);
                }
                Err(e) => eprintln!("private RabbitMQ node did not start (ports may be taken), retrying: {e}"),
            }
        }
        panic!("private RabbitMQ node would not start; see the log above");
    }

    /// Environment of the node and of the CLI tools that talk to it. Inherited `RABBITMQ_*`
    /// and `ERL_*` variables are dropped so nothing points it at the shared node's files.
    fn command(&self, script: &str) -> Command {
        let dir = self.dir.path();
        let mut cmd = Command::new(self.scripts.join(script));
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("RABBITMQ_") || k.starts_with("ERL_") {
                cmd.env_remove(&*k);
            }
        }
        cmd.current_dir(dir)
            .env("HOME", dir)
            .env("RABBITMQ_CONF_ENV_FILE", dir.join("rabbitmq-env.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .stdin(Stdio::null());
        cmd
    }

    async fn boot(&mut self) -> Result<(), String> {
        let dir = self.dir.path().to_path_buf();
        let mut conf = format!("listeners.tcp.local = 127.0.0.1:{}\n", self.port);
        if let Some((port, tls)) = &self.tls {
            conf.push_str(&format!(
                "listeners.ssl.local = 127.0.0.1:{port}\nssl_options.certfile = {}\nssl_options.keyfile = {}\n\
                 ssl_options.verify = verify_none\nssl_options.fail_if_no_peer_cert = false\n",
                tls.cert.display(),
                tls.key.display()
            ));
        }
        std::fs::write(dir.join("rabbitmq.conf"), conf).expect("rabbitmq.conf");
        let _ = std::fs::remove_file(dir.join("pid"));
        let console = std::fs::File::options().create(true).append(true).open(dir.join("console.log")).expect("log");
        let mut cmd = self.command("rabbitmq-server");
        cmd.env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", dir.join("advanced.config"))
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_PID_FILE", dir.join("pid"))
            .env("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS", "-kernel inet_dist_use_interface {127,0,0,1}")
            .stdout(console.try_clone().expect("log"))
            .stderr(console);
        let (port, url) = (self.port, self.amqp_url());
        let tls = self.amqps_url().zip(self.tls.as_ref().map(|(_, t)| t.ca.clone()));
        let server = self.server.insert(spawn_group(&mut cmd, &dir));
        let deadline = Instant::now() + BOOT_WAIT;
        // The AMQP listener opens last in the boot sequence. A real AMQP handshake then says
        // what tests need, a few seconds sooner than `await_startup` (a CLI run costs that).
        loop {
            if let Ok(Some(status)) = server.try_wait() {
                self.server = None;
                return Err(format!("rabbitmq-server exited ({status}):\n{}", tail(&dir.join("console.log"), 30)));
            }
            if port_open(port).await && amqp_handshake(&url).await && tls_ready(tls.as_ref()).await {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("not up in {BOOT_WAIT:?}:\n{}", tail(&dir.join("console.log"), 30)));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs `rabbitmqctl` with this node's cookie; `args` name the node (`-n`).
    pub async fn ctl(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = tokio::process::Command::from(self.command("rabbitmqctl"));
        cmd.arg("-q").args(args).output().await.expect("run rabbitmqctl")
    }

    async fn ctl_ok(&self, args: &[&str]) {
        let out = self.ctl(args).await;
        assert!(out.status.success(), "rabbitmqctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The `amqps://` URL (guest/guest, as `localhost`), when started with TLS.
    pub fn amqps_url(&self) -> Option<String> {
        self.tls.as_ref().map(|(port, _)| format!("amqps://guest:guest@localhost:{port}/%2f"))
    }

    /// guest/guest, which RabbitMQ accepts from localhost only (that is where we are).
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// `rabbitmqctl -n NODE stop_app`: the broker application stops (connections close, the
    /// port refuses), the Erlang node stays up.
    pub async fn app_stop(&self) {
        self.ctl_ok(&["-n", &self.node, "stop_app"]).await;
    }

    /// `rabbitmqctl -n NODE start_app`; the node accepts connections when this returns.
    pub async fn app_start(&self) {
        self.ctl_ok(&["-n", &self.node, "start_app"]).await;
    }

    /// OS pid of the node's `beam.smp` (from the pid file the node writes at boot).
    pub fn beam_pid(&self) -> u32 {
        let pid = std::fs::read_to_string(self.dir.path().join("pid")).expect("node pid file");
        pid.trim().parse().expect("pid")
    }

    /// SIGKILL of the whole node: no shutdown, queues left as the disk has them.
    pub fn kill9(&mut self) {
        if let Some(mut server) = self.server.take() {
            let beam = std::fs::read_to_string(self.dir.path().join("pid")).ok().and_then(|p| p.trim().parse().ok());
            kill_group(&mut server, self.dir.path(), beam, &[self.port, self.dist_port]);
        }
        self.paused = false;
    }

    /// Boots the node again on the same ports and data folder (killing it first if it runs):
    /// durable queues and persistent messages survive. It returns once the node takes AMQP
    /// connections: poll for a queue you expect rather than assume it is back at that
    /// instant (one early run saw a durable queue NOT_FOUND right after a restart).
    pub async fn restart(&mut self) {
        self.kill9();
        if let Err(e) = self.boot().await {
            panic!("private RabbitMQ node {} did not restart: {e}", self.node);
        }
    }

    /// SIGSTOP of `beam.smp`: sockets stay open, nothing answers (a hung broker, a partition).
    pub fn pause(&mut self) {
        signal("STOP", self.beam_pid());
        self.paused = true;
    }

    pub fn resume(&mut self) {
        if self.paused {
            signal("CONT", self.beam_pid());
        }
        self.paused = false;
    }

    /// Brings the node back to running with its application started, whatever a test left.
    pub async fn heal(&mut self) {
        self.resume();
        let exited = self.server.as_mut().is_none_or(|s| !matches!(s.try_wait(), Ok(None)));
        if exited {
            self.restart().await;
        } else if !port_open(self.port).await {
            self.app_start().await;
        }
    }
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        self.resume();
        if self.server.is_some() {
            // A clean stop first (`stop` with the pid file waits until the VM has exited),
            // bounded, then the group is killed in any case.
            let pid = self.dir.path().join("pid");
            let mut cmd = self.command("rabbitmqctl");
            cmd.arg("-q").args(["-n", &self.node, "stop"]).arg(pid).stdout(Stdio::null()).stderr(Stdio::null());
            if let Ok(mut stop) = cmd.spawn() {
                let deadline = Instant::now() + Duration::from_secs(30);
                while matches!(stop.try_wait(), Ok(None)) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = stop.kill();
                let _ = stop.wait();
            }
        }
        self.kill9();
    }
}

/// The binary's one private RabbitMQ node, started by the first test that asks and shared
/// one test at a time (a node takes seconds to boot). The reaper stops it when the test
/// process ends, since a static is never dropped.
static SHARED_RABBIT: tokio::sync::Mutex<Option<PrivateRabbit>> = tokio::sync::Mutex::const_new(None);

/// Exclusive use of the shared private node, healed to running on entry. Tests still give
/// their clusters their own names, so nothing one test left in the broker meets another.
pub struct RabbitLease(tokio::sync::MutexGuard<'static, Option<PrivateRabbit>>);

impl RabbitLease {
    /// Waits for the node (and starts it on first use); `None` if RabbitMQ is not installed.
    pub async fn acquire() -> Option<RabbitLease> {
        let mut guard = SHARED_RABBIT.lock().await;
        match guard.as_mut() {
            Some(rabbit) => rabbit.heal().await,
            None => *guard = Some(PrivateRabbit::start().await?),
        }
        Some(RabbitLease(guard))
    }
}

impl std::ops::Deref for RabbitLease {
    type Target = PrivateRabbit;
    fn deref(&self) -> &PrivateRabbit {
        self.0.as_ref().expect("started on acquire")
    }
}

impl std::ops::DerefMut for RabbitLease {
    fn deref_mut(&mut self) -> &mut PrivateRabbit {
        self.0.as_mut().expect("started on acquire")
    }
}
