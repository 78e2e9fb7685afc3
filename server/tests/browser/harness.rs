//! The browser tests' harness: chromedriver, browser windows on the real server, the
//! steps a user takes (type, click, wait for the page), and a relay whose connections a
//! test can cut. Shared by `browser.rs` (behaviour) and `render_bench.rs` (speed), each of
//! which uses part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use thirtyfour::prelude::*;
use thirtyfour::{ChromiumLikeCapabilities, LoggingPrefsLogLevel};

use crate::common::TestServer;

/// How long a step waits for the page to show what it expects.
pub const STEP: Duration = Duration::from_secs(20);
pub const PASSWORD: &str = "correct horse battery";

/// Browser tests run one at a time: each starts browsers, and the machines have 2 cores.
pub static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A chromedriver process, stopped on drop.
pub struct Chromedriver {
    process: Child,
    pub url: String,
}

impl Chromedriver {
    pub async fn start() -> Result<Chromedriver> {
        let binary = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let process = Command::new(&binary)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {binary} (install chromium-driver, or run scripts/test.sh)"))?;
        let driver = Chromedriver { process, url: format!("http://127.0.0.1:{port}") };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + STEP;
        while http.get(format!("{}/status", driver.url)).send().await.is_err() {
            if Instant::now() > deadline {
                bail!("chromedriver did not start");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(driver)
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// One browser window, with its own profile (so its own `localStorage` unless told).
pub struct Tab {
    pub name: &'static str,
    pub driver: WebDriver,
    pub base: String,
    _profile: tempfile::TempDir,
}

/// A test's server, chromedriver and browser windows.
pub struct Harness {
    pub server: TestServer,
    pub chromedriver: Chromedriver,
    pub tabs: Vec<Tab>,
    pub test: &'static str,
}

pub fn dist_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../client-yew/dist")
}

impl Harness {
    pub async fn start(test: &'static str, vars: &[(&'static str, &str)]) -> Result<Harness> {
        if !dist_dir().join("index.html").exists() {
            bail!("the browser client is not built: run `cargo xtask client` first");
        }
        let server = TestServer::with(vars).await;
        let chromedriver = Chromedriver::start().await?;
        Ok(Harness { server, chromedriver, tabs: Vec::new(), test })
    }

    /// Opens a new browser window on the app; returns its index.
    pub async fn open(&mut self, name: &'static str) -> Result<usize> {
        let base = self.server.url("");
        self.open_at(name, base).await
    }

    /// Opens a new browser window on the app at another address (e.g. through a [`Relay`]).
    pub async fn open_at(&mut self, name: &'static str, base: String) -> Result<usize> {
        let profile = tempfile::tempdir()?;
        let mut caps = DesiredCapabilities::chrome();
        caps.set_binary(&std::env::var("CHROME_BIN").unwrap_or_else(|_| "/usr/bin/chromium".into()))?;
        for arg in [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-background-timer-throttling",
            "--disable-renderer-backgrounding",
            "--disable-backgrounding-occluded-windows",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--window-size=1280,800",
        ] {
            caps.add_arg(arg)?;
        }
        caps.add_arg(&format!("--user-data-dir={}", profile.path().display()))?;
        // More flags for Chromium, to look into it: `--trace-startup=devtools.timeline
        // --trace-startup-file=/tmp/trace.pb` records what its threads did.
        for arg in std::env::var("RELAY_CHROME_ARGS").unwrap_or_default().split_whitespace() {
            caps.add_arg(arg)?;
        }
        caps.set_browser_log_level(LoggingPrefsLogLevel::All)?;
        let driver = WebDriver::new(&self.chromedriver.url, caps).await.context("starting chromium")?;
        let tab = Tab { name, driver, base, _profile: profile };
        tab.driver.goto(tab.base.clone()).await?;
        self.tabs.push(tab);
        Ok(self.tabs.len() - 1)
    }

    /// Runs the test's steps; on failure keeps a screenshot and the console of every window
    /// under the target directory, then fails with the step's error.
    pub async fn run<F>(mut self, steps: F)
    where
        F: AsyncFnOnce(&mut Harness) -> Result<()>,
    {
        let result = steps(&mut self).await;
        if let Err(error) = &result {
            let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser-failures");
            let _ = std::fs::create_dir_all(&dir);
            let mut notes = String::new();
            for tab in &self.tabs {
                let shot = dir.join(format!("{}-{}.png", self.test, tab.name));
                let _ = tab.driver.screenshot(&shot).await;
                let body = tab.js("return document.body.innerText").await.unwrap_or_default();
                let log = tab.driver.browser_log().await.unwrap_or_default();
                notes.push_str(&format!(
                    "\n--- {} ({})\n{}\n--- console:\n{}",
                    tab.name,
                    shot.display(),
                    body.as_str().unwrap_or_default(),
                    log.iter().map(|e| format!("{} {}", e.level, e.message)).collect::<Vec<_>>().join("\n")
                ));
            }
            for tab in self.tabs.drain(..) {
                let _ = tab.driver.quit().await;
            }
            panic!("{}: {error:#}{notes}", self.test);
        }
        for tab in self.tabs.drain(..) {
            let _ = tab.driver.quit().await;
        }
    }

    pub fn tab(&self, index: usize) -> &Tab {
        &self.tabs[index]
    }
}

impl Tab {
    /// Makes a share link of the open chat through its Share menu and returns the link.
    pub async fn create_share_link(&self) -> Result<String> {
        self.click("#share summary").await?;
        self.click("#share-create").await?;
        self.element("#share-url").await?;
        let url = self.js("return document.querySelector('#share-url').value").await?;
        url.as_str().map(str::to_owned).ok_or_else(|| anyhow!("the share link has no address"))
    }

    /// Chooses the option of value `value` in the `<select>` at `selector`, as a user does.
    pub async fn choose(&self, selector: &str, value: &str) -> Result<()> {
        let select = thirtyfour::components::SelectElement::new(&self.element(selector).await?).await?;
        Ok(select.select_by_value(value).await?)
    }

    /// Runs a script in the page and returns what it returns.
    pub async fn js(&self, script: &str) -> Result<Value> {
        Ok(self.driver.execute(script, Vec::new()).await?.json().clone())
    }

    /// Runs a script with arguments (`arguments[0]`, ...).
    pub async fn js_with(&self, script: &str, args: Vec<Value>) -> Result<Value> {
        Ok(self.driver.execute(script, args).await?.json().clone())
    }

    /// Waits until the script returns something other than `null`/`false`, and returns it.
    pub async fn wait(&self, what: &str, script: &str) -> Result<Value> {
        let deadline = Instant::now() + STEP;
        loop {
            let value = self.js(script).await?;
            if !matches!(value, Value::Null | Value::Bool(false)) {
                return Ok(value);
            }
            if Instant::now() > deadline {
                bail!("[{}] timed out waiting for {what}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for an element matching the selector and returns it.
    pub async fn element(&self, css: &str) -> Result<WebElement> {
        let script = "return document.querySelector(arguments[0])";
        let deadline = Instant::now() + STEP;
        loop {
            let found = self.driver.execute(script, vec![json!(css)]).await?;
            if !found.json().is_null() {
                return Ok(found.element()?);
            }
            if Instant::now() > deadline {
                bail!("[{}] no element {css}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn click(&self, css: &str) -> Result<()> {
        self.element(css).await?.click().await.with_context(|| format!("[{}] clicking {css}", self.name))
    }

    /// The text of an element (empty when missing).
    pub async fn text(&self, css: &str) -> Result<String> {
        let value = self
            .js_with("const e = document.querySelector(arguments[0]); return e ? e.innerText : ''", vec![json!(css)])
            .await?;
        Ok(value.as_str().unwrap_or_default().to_string())
    }

    pub async fn count(&self, css: &str) -> Result<u64> {
        let value = self.js_with("return document.querySelectorAll(arguments[0]).length", vec![json!(css)]).await?;
        Ok(value.as_u64().unwrap_or_default())
    }

    /// Waits until the element's text contains the given text.
    pub async fn wait_text(&self, css: &str, wanted: &str) -> Result<()> {
        let script = format!(
            "const e = document.querySelector({}); return !!e && e.innerText.includes({})",
            json!(css),
            json!(wanted)
        );
        self.wait(&format!("{css} to say {wanted:?}"), &script).await.map(drop)
    }

    /// Waits until nothing matches the selector.
    pub async fn wait_gone(&self, css: &str) -> Result<()> {
        self.wait(&format!("{css} to go"), &format!("return !document.querySelector({})", json!(css))).await.map(drop)
    }

    /// Registers through the form (the app must show the login screen).
    pub async fn register(&self, username: &str) -> Result<()> {
        self.click("#login-toggle").await?;
        self.wait_text("#login-submit", "Register").await?;
        self.element("#username").await?.send_keys(username).await?;
        self.element("#password").await?.send_keys(PASSWORD).await?;
        self.click("#login-submit").await?;
        self.wait_online().await
    }

    /// Logs in through the form.
    pub async fn login(&self, username: &str, password: &str) -> Result<()> {
        let name = self.element("#username").await?;
        name.clear().await?;
        name.send_keys(username).await?;
        let secret = self.element("#password").await?;
        secret.clear().await?;
        secret.send_keys(password).await?;
        self.click("#login-submit").await
    }

    pub async fn wait_online(&self) -> Result<()> {
        self.wait_text("#status", "Online").await
    }

    /// Becomes another tab of the same browser login (copies the saved login, reloads).
    pub async fn share_login(&self, other: &Tab) -> Result<()> {
        let auth = other.js("return localStorage.getItem('relay.auth')").await?;
        self.js_with("localStorage.setItem('relay.auth', arguments[0])", vec![auth]).await?;
        self.driver.refresh().await?;
        self.wait_online().await
    }

    /// Types into the composer as the user would (multi-line text is pasted: a typed newline
    /// would send) and presses Enter.
    pub async fn send(&self, text: &str) -> Result<()> {
        self.wait(
            "the composer to be enabled",
            "const c = document.querySelector('#composer'); return !!c && !c.disabled",
        )
        .await?;
        let composer = self.element("#composer").await?;
        if text.contains('\n') {
            self.fill_composer(text).await?;
        } else {
            composer.send_keys(text).await?;
        }
        composer.send_keys(Key::Enter).await?;
        Ok(())
    }

    /// Puts `text` in the composer as a paste would (one `input` event), without sending.
    pub async fn fill_composer(&self, text: &str) -> Result<()> {
        self.js_with(
            "const c = document.querySelector('#composer'); c.value = arguments[0]; \
             c.dispatchEvent(new InputEvent('input', {bubbles: true}));",
            vec![json!(text)],
        )
        .await
        .map(drop)
    }

    /// The open session's id, from the address bar.
    pub async fn session_id(&self) -> Result<uuid::Uuid> {
        let path =
            self.wait("a session to open", "return location.pathname.startsWith('/c/') && location.pathname").await?;
        let path = path.as_str().unwrap_or_default();
        Ok(path.trim_start_matches("/c/").parse()?)
    }

    /// The visible text of each settled message, in order, as (role, text).
    pub async fn messages(&self) -> Result<Vec<(String, String)>> {
        let value = self
            .js("return [...document.querySelectorAll('#messages article.message:not(.streaming)')]\
                 .map(a => [a.classList.contains('user') ? 'user' : 'assistant', a.querySelector('.content').innerText])")
            .await?;
        Ok(serde_json::from_value(value)?)
    }

    /// Waits for the reply to settle: nothing streaming, and the given number of messages.
    pub async fn wait_settled(&self, messages: u64) -> Result<()> {
        self.wait(
            &format!("{messages} settled messages"),
            &format!(
                "return !document.querySelector('#streaming') && \
                 document.querySelectorAll('#messages article.message').length === {messages}"
            ),
        )
        .await
        .map(drop)
    }

    /// Fails on any console error or failed request the page logged (except the wanted ones).
    pub async fn assert_clean_console(&self, allowed: &[&str]) -> Result<()> {
        let errors: Vec<String> = self
            .driver
            .browser_log()
            .await?
            .into_iter()
            .filter(|e| e.level == "SEVERE" && !allowed.iter().any(|a| e.message.contains(a)))
            .map(|e| e.message)
            .collect();
        if errors.is_empty() { Ok(()) } else { bail!("[{}] console errors: {errors:#?}", self.name) }
    }

    /// Saves a screenshot for the README when `RELAY_SCREENSHOTS` names a directory.
    pub async fn keep_screenshot(&self, name: &str) -> Result<()> {
        if let Ok(dir) = std::env::var("RELAY_SCREENSHOTS") {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(dir);
            std::fs::create_dir_all(&dir)?;
            self.driver.screenshot(&dir.join(format!("{name}.png"))).await?;
        }
        Ok(())
    }
}

/// A TCP relay in front of the server whose connections the test can cut, as a dropped
/// network would (the browser sees its WebSocket close abnormally).
pub struct Relay {
    pub url: String,
    /// Ends every connection open now: with a WebSocket close frame of that code first, or
    /// none (`None`: a dropped network).
    cut: tokio::sync::broadcast::Sender<Option<u16>>,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// While set, connections are dropped as soon as they are accepted (the server is
    /// unreachable).
    refusing: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Relay {
    pub async fn start(target: std::net::SocketAddr) -> Result<Relay> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let (cut, _) = tokio::sync::broadcast::channel::<Option<u16>>(4);
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let refusing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (on_cut, count, refuse) = (cut.clone(), accepted.clone(), refusing.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if refuse.load(std::sync::atomic::Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut cut = on_cut.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        how = cut.recv() => {
                            // A server's close frame: unmasked, the code in two bytes.
                            if let Ok(Some(code)) = how {
                                use tokio::io::AsyncWriteExt;
                                let [high, low] = code.to_be_bytes();
                                let _ = inbound.write_all(&[0x88, 2, high, low]).await;
                                let _ = inbound.flush().await;
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        }
                    }
                });
            }
        });
        Ok(Relay { url, cut, accepted, refusing })
    }

    /// Makes the server unreachable (or reachable again).
    pub fn refuse(&self, refusing: bool) {
        self.refusing.store(refusing, std::sync::atomic::Ordering::SeqCst);
    }

    /// Drops every connection open now.
    pub fn cut(&self) {
        let _ = self.cut.send(None);
    }

    /// Closes every connection open now as the server does, with `code`.
    pub fn close_with(&self, code: u16) {
        let _ = self.cut.send(Some(code));
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A stored message over REST: (role, content, status).
pub async fn stored(server: &TestServer, token: &str, session: uuid::Uuid) -> Vec<(String, String, String)> {
    let (status, body) = server.get(token, &format!("/api/v1/chat/sessions/{session}")).await;
    assert_eq!(status, 200, "{body}");
    body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["superseded"] != json!(true))
        .map(|m| {
            (
                m["role"].as_str().unwrap().to_string(),
                m["content"].as_str().unwrap().to_string(),
                m["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

pub async fn token_of(tab: &Tab) -> Result<String> {
    let auth = tab.js("return JSON.parse(localStorage.getItem('relay.auth'))").await?;
    auth[1].as_str().map(str::to_string).ok_or_else(|| anyhow!("no saved login"))
}

/// A slow echo: the reply repeats the message word by word, a few words a second.
pub fn slow(words: usize, tps: u32) -> String {
    let text: Vec<String> = (1..=words).map(|i| format!("word{i}")).collect();
    format!("{} [[mock echo tps={tps}]]", text.join(" "))
}
