//! The web page at `GET /` in a real browser: Debian's chromium driven over ChromeDriver.
//! Two users chat by typing and clicking; then the server restarts under them and the pages
//! reconnect by themselves; then a third page logs in with a token.
//!
//! Without chromium/chromedriver the test skips loudly, unless `CHAT_TEST_REQUIRE_BROWSER=1`
//! (`.ci/run` sets it and installs them with `.ci/browser.sh`).

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chatgate::{Backends, Config};
use common::Gateway;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// Upper bound for a browser-side condition; a page on a loaded 2-core machine is slower
/// than a tokio client, and reaching the bound is a failure, not a pacing.
const BROWSER_WAIT: Duration = Duration::from_secs(30);

struct Tools {
    chromium: PathBuf,
    chromedriver: PathBuf,
}

/// chromium and chromedriver (`CHAT_TEST_CHROMIUM` / `CHAT_TEST_CHROMEDRIVER`, else `PATH`),
/// or `None` after a loud message; with `CHAT_TEST_REQUIRE_BROWSER=1` a missing one fails.
fn tools() -> Option<Tools> {
    let find = |var: &str, names: &[&str]| -> Option<PathBuf> {
        if let Ok(p) = std::env::var(var) {
            return Some(PathBuf::from(p)).filter(|p| p.is_file());
        }
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path).flat_map(|dir| names.iter().map(move |n| dir.join(n))).find(|p| p.is_file())
    };
    let chromium = find("CHAT_TEST_CHROMIUM", &["chromium", "chromium-browser"]);
    let chromedriver = find("CHAT_TEST_CHROMEDRIVER", &["chromedriver"]);
    if let (Some(chromium), Some(chromedriver)) = (chromium.clone(), chromedriver.clone()) {
        return Some(Tools { chromium, chromedriver });
    }
    let missing = format!("chromium: {chromium:?}, chromedriver: {chromedriver:?}");
    if std::env::var("CHAT_TEST_REQUIRE_BROWSER").as_deref() == Ok("1") {
        panic!("browser tools missing ({missing}) and CHAT_TEST_REQUIRE_BROWSER=1");
    }
    eprintln!(
        "\n!!!! SKIPPING the browser test: {missing}. Install Debian's chromium and chromium-driver \
         (.ci/browser.sh) or set CHAT_TEST_CHROMIUM / CHAT_TEST_CHROMEDRIVER. !!!!\n"
    );
    None
}

/// A chromedriver child in its own process group, so that dropping it also ends every
/// chromium it started, even when the test fails half-way.
struct Driver {
    child: Child,
    port: u16,
    chromium: PathBuf,
    dir: PathBuf,
    sessions: usize,
}

impl Driver {
    async fn start(tools: &Tools) -> Driver {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("browser/run-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // A port that was free a moment ago; if someone takes it first, chromedriver exits
        // and we try another.
        for _ in 0..5 {
            let port = StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let log = std::fs::File::create(dir.join("chromedriver.log")).unwrap();
            let child = {
                use std::os::unix::process::CommandExt;
                Command::new(&tools.chromedriver)
                    .arg(format!("--port={port}"))
                    .process_group(0)
                    .stdin(Stdio::null())
                    .stdout(log.try_clone().unwrap())
                    .stderr(log)
                    .spawn()
                    .expect("spawn chromedriver")
            };
            let mut d = Driver { child, port, chromium: tools.chromium.clone(), dir: dir.clone(), sessions: 0 };
            if d.wait_ready().await {
                return d;
            }
        }
        panic!("chromedriver did not start; see {}", dir.join("chromedriver.log").display());
    }

    /// Polls `GET /status` until it says ready; false if chromedriver exited.
    async fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + BROWSER_WAIT;
        loop {
            if self.child.try_wait().unwrap().is_some() {
                return false;
            }
            if status_ready(self.port).await {
                return true;
            }
            assert!(Instant::now() < deadline, "chromedriver not ready within {BROWSER_WAIT:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A fresh headless chromium with its own profile.
    async fn open(&mut self, name: &str, width: u32, height: u32) -> Page {
        self.sessions += 1;
        let profile = self.dir.join(format!("profile-{name}-{}", self.sessions));
        // Without the background-networking flags chromium dials out to Google's services,
        // which this machine's closed network refuses.
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            "--disable-extensions",
            "--password-store=basic",
            &format!("--window-size={width},{height}"),
            &format!("--user-data-dir={}", profile.display()),
        ];
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": self.chromium, "args": args },
        });
        let Value::Object(caps) = caps else { unreachable!() };
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .unwrap_or_else(|e| panic!("new chromium session for {name}: {e}"));
        Page { name: name.to_owned(), client, shots: self.dir.parent().unwrap().to_path_buf() }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The whole group: chromedriver and the browsers it launched.
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.child.id())]).status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn status_ready(port: u16) -> bool {
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else { return false };
    let req = format!("GET /status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    // chromedriver may keep the connection open despite `Connection: close`: read until the
    // answer says ready, or EOF.
    let mut seen = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(BROWSER_WAIT, s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => {
                seen.extend_from_slice(&chunk[..n]);
                if String::from_utf8_lossy(&seen).contains("\"ready\":true") {
                    return true;
                }
            }
            _ => return false,
        }
    }
}

/// One browser session showing the chat page.
struct Page {
    name: String,
    client: Client,
    shots: PathBuf,
}

impl Page {
    async fn goto(&self, addr: SocketAddr) {
        self.client.goto(&format!("http://{addr}/")).await.unwrap();
    }

    /// Runs `body` (a JS function body; `arguments` are `args`) until it returns something
    /// other than null/false, and returns that. Each poll reads the live DOM.
    async fn until(&self, what: &str, body: &str, args: Vec<Value>) -> Value {
        let deadline = Instant::now() + BROWSER_WAIT;
        loop {
            let v = self.client.execute(body, args.clone()).await.unwrap();
            if !matches!(v, Value::Null | Value::Bool(false)) {
                return v;
            }
            if Instant::now() >= deadline {
                self.screenshot("failure").await;
                let log = self.client.execute("return document.body.innerText", vec![]).await.unwrap();
                panic!("{}: timed out waiting for {what}; the page shows:\n{}", self.name, log.as_str().unwrap_or(""));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until an element matches `css` (and, if given, some match has `text` as its
    /// text content).
    async fn until_shown(&self, what: &str, css: &str, text: Option<&str>) {
        let js = "const [css, text] = arguments; \
                  return [...document.querySelectorAll(css)].some(e => text === null || e.textContent === text);";
        self.until(what, js, vec![json!(css), json!(text)]).await;
    }

    async fn until_gone(&self, what: &str, css: &str) {
        self.until(what, "return document.querySelector(arguments[0]) === null;", vec![json!(css)]).await;
    }

    /// The user id the page shows once it is connected.
    async fn user(&self) -> String {
        let js = "return document.getElementById('state').dataset.state === 'open' \
                  && document.getElementById('me').textContent;";
        self.until("connected", js, vec![]).await.as_str().unwrap().to_owned()
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self.client.find(Locator::Css(css)).await.unwrap();
        e.clear().await.unwrap();
        e.send_keys(text).await.unwrap();
    }

    async fn click(&self, css: &str) {
        self.client.find(Locator::Css(css)).await.unwrap().click().await.unwrap();
    }

    async fn join(&self, group: &str) {
        self.type_into("#group-name", group).await;
        self.click("#join").await;
        let css = format!("#groups li[data-group=\"{group}\"][data-joined=\"true\"]");
        self.until_shown(&format!("joined {group}"), &css, None).await;
    }

    async fn send(&self, kind: &str, to: &str, text: &str) {
        self.client.find(Locator::Css("#kind")).await.unwrap().select_by_value(kind).await.unwrap();
        self.type_into("#to", to).await;
        self.type_into("#text", text).await;
        self.click("#send").await;
    }

    /// Waits for the ack of our message `text` to `to` to show `status`.
    async fn until_acked(&self, kind: &str, to: &str, text: &str, status: &str) {
        let js = "const [kind, to, text, status] = arguments; \
                  return [...document.querySelectorAll(`#log li[data-kind=\"out-${kind}\"]`)].some(li => \
                    li.dataset.to === to && li.querySelector('.body').textContent === text \
                    && li.querySelector('.status')?.dataset.status === status);";
        let what = format!("{status} ack of {kind} {text:?} to {to}");
        self.until(&what, js, vec![json!(kind), json!(to), json!(text), json!(status)]).await;
    }

    async fn members(&self, group: &str) -> Vec<String> {
        let js = "return [...document.querySelectorAll(`#groups li[data-group=\"${arguments[0]}\"] .members li`)]\
                  .map(li => li.dataset.user);";
        let v = self.client.execute(js, vec![json!(group)]).await.unwrap();
        serde_json::from_value(v).unwrap()
    }

    async fn until_members(&self, group: &str, want: &[&str]) {
        let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        want.sort();
        let js = "const [g, want] = arguments; \
                  const got = [...document.querySelectorAll(`#groups li[data-group=\"${g}\"] .members li`)]\
                  .map(li => li.dataset.user).sort(); \
                  return JSON.stringify(got) === JSON.stringify(want);";
        let what = format!("members of {group} = {want:?} (now {:?})", self.members(group).await);
        self.until(&what, js, vec![json!(group), json!(want)]).await;
    }

    async fn screenshot(&self, suffix: &str) -> PathBuf {
        let png = self.client.screenshot().await.unwrap();
        let path = self.shots.join(format!("{}{suffix}.png", self.name));
        std::fs::write(&path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
        path
    }

    async fn close(self) {
        let _ = self.client.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_page_in_chromium() {
    let Some(tools) = tools() else { return };
    let mut driver = Driver::start(&tools).await;
    let alice = driver.open("alice", 1000, 760).await;
    // Narrower than the page's 700 px breakpoint (500 px is headless chromium's minimum):
    // the phone layout gets exercised and photographed too.
    let bob = driver.open("bob", 500, 860).await;

    let gw = Gateway::start().await;
    let (a, b) = chat(&gw, &alice, &bob).await;
    let gw = reconnect(gw, &alice, &bob, &a, &b).await;
    alice.screenshot("").await;
    bob.screenshot("").await;
    alice.close().await;
    bob.close().await;
    gw.shutdown().await;

    token_login(&mut driver).await;
}

/// Two pages: presence, member lists, direct and group messages, acks, errors.
async fn chat(gw: &Gateway, alice: &Page, bob: &Page) -> (String, String) {
    alice.goto(gw.addr).await;
    let a = alice.user().await;
    bob.goto(gw.addr).await;
    let b = bob.user().await;
    assert_ne!(a, b);
    let node = gw.node.config.node_id.clone();
    alice.until_shown("own node id", "#node", Some(&node)).await;

    alice.join("lobby").await;
    alice.until_members("lobby", &[&a]).await;
    bob.join("lobby").await;
    bob.until_members("lobby", &[&a, &b]).await;
    let presence = |user: &str, event: &str| {
        format!("#log li[data-kind=\"presence\"][data-group=\"lobby\"][data-user=\"{user}\"][data-event=\"{event}\"]")
    };
    alice.until_shown("bob's join", &presence(&b, "join"), None).await;
    alice.until_members("lobby", &[&a, &b]).await;

    // Alice leaves and comes back: Bob sees both events, his member list follows.
    alice.click("#groups li[data-group=\"lobby\"] [data-testid=\"leave\"]").await;
    alice.until_gone("lobby left", "#groups li[data-group=\"lobby\"]").await;
    bob.until_shown("alice's leave", &presence(&a, "leave"), None).await;
    bob.until_members("lobby", &[&b]).await;
    alice.join("lobby").await;
    bob.until_shown("alice's join", &presence(&a, "join"), None).await;
    bob.until_members("lobby", &[&a, &b]).await;

    alice.send("once", &b, "hello bob").await;
    alice.until_acked("once", &b, "hello bob", "sent").await;
    let from = |kind: &str, user: &str| format!("#log li[data-kind=\"in-{kind}\"][data-from=\"{user}\"] .body");
    bob.until_shown("alice's direct message", &from("once", &a), Some("hello bob")).await;
    bob.send("once", &a, "hi alice").await;
    bob.until_acked("once", &a, "hi alice", "sent").await;
    alice.until_shown("bob's direct message", &from("once", &b), Some("hi alice")).await;

    alice.send("group", "lobby", "hello lobby").await;
    alice.until_acked("group", "lobby", "hello lobby", "sent").await;
    bob.until_shown("alice's group message", &from("group", &a), Some("hello lobby")).await;
    // Markup from another user is text, never HTML.
    let evil = "<img src=x onerror=\"document.title='owned'\"><b>bold?</b>";
    bob.send("group", "lobby", evil).await;
    bob.until_acked("group", "lobby", evil, "sent").await;
    alice.until_shown("bob's group message, as text", &from("group", &b), Some(evil)).await;
    let injected = alice.client.execute("return document.querySelectorAll('#log img, #log b').length", vec![]).await;
    assert_eq!(injected.unwrap(), json!(0), "message text was parsed as HTML");
    assert_eq!(alice.client.title().await.unwrap(), "chatgate");

    // Nobody is user 999: the ack says so. A group Bob never joined: the error frame shows.
    bob.send("once", "999", "anyone?").await;
    bob.until_acked("once", "999", "anyone?", "offline").await;
    bob.send("group", "elsewhere", "let me in").await;
    bob.until_acked("group", "elsewhere", "let me in", "error").await;
    bob.until_shown("the not_member error", "#log li[data-kind=\"error\"][data-code=\"not_member\"]", None).await;

    alice.click("#online-refresh").await;
    alice.until_shown("online count", "#online", Some("2")).await;
    (a, b)
}

/// The server goes away (close 1001) and comes back on the same address: both pages
/// reconnect with backoff, rejoin their groups and chat again.
async fn reconnect(gw: Gateway, alice: &Page, bob: &Page, a: &str, b: &str) -> Gateway {
    let addr = gw.addr;
    let first_node = gw.node.config.node_id.clone();
    gw.shutdown().await;
    for page in [alice, bob] {
        page.until_shown(
            "the server's close",
            "#log li[data-kind=\"info\"] .body",
            Some("disconnected (1001 server shutting down)"),
        )
        .await;
        // Requests in flight or new ones cannot pretend to succeed while the socket is gone.
        page.until(
            "the state to leave 'open'",
            "return document.getElementById('state').dataset.state !== 'open';",
            vec![],
        )
        .await;
    }
    let mut config = Config::for_tests();
    config.listen = addr;
    let backends = Backends::embedded(&config.node_id);
    let gw = Gateway::start_node(config, backends).await;
    let node = gw.node.config.node_id.clone();
    assert_ne!(node, first_node);
    for page in [alice, bob] {
        page.until_shown("the new node", "#node", Some(&node)).await;
    }
    // Anonymous ids come from the new node and may differ from before.
    let (a2, b2) = (alice.user().await, bob.user().await);
    eprintln!("ids before the restart: {a}, {b}; after: {a2}, {b2}");
    alice.until_members("lobby", &[&a2, &b2]).await;
    bob.until_members("lobby", &[&a2, &b2]).await;
    bob.send("group", "lobby", "back again").await;
    bob.until_acked("group", "lobby", "back again", "sent").await;
    let css = format!("#log li[data-kind=\"in-group\"][data-from=\"{b2}\"] .body");
    alice.until_shown("bob's message after the restart", &css, Some("back again")).await;
    alice.send("once", &b2, "welcome back").await;
    alice.until_acked("once", &b2, "welcome back", "sent").await;
    let css = format!("#log li[data-kind=\"in-once\"][data-from=\"{a2}\"] .body");
    bob.until_shown("alice's direct message after the restart", &css, Some("welcome back")).await;
    gw
}

/// Token mode: the anonymous attempt is refused and retried; the token field logs in.
async fn token_login(driver: &mut Driver) {
    use jsonwebtoken::{EncodingKey, Header, encode};
    const SECRET: &str = "browser-secret";
    let gw = Gateway::start_with(|c| c.jwt_secret = Some(SECRET.into())).await;
    let carol = driver.open("carol", 800, 600).await;
    carol.goto(gw.addr).await;
    carol.until_shown("the refused anonymous attempt", "#state[data-state=\"waiting\"]", None).await;
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600;
    let token = encode(
        &Header::default(),
        &json!({"sub": "carol@example", "exp": exp}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    carol.type_into("#token", &token).await;
    carol.click("#connect").await;
    assert_eq!(carol.user().await, "carol@example");
    carol.close().await;
    gw.shutdown().await;
}
