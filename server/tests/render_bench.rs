//! How the browser client keeps up with a long reply: headless Chromium streams a markdown
//! reply of 150 KB, then one of 1 MB (the server's cap is 1 MiB), at 1,000 tokens a
//! second, and reports the main thread's long tasks (`PerformanceObserver` `longtask`, over
//! 50 ms) and how long each piece took from its arrival on the WebSocket to the page.
//!
//! After each reply it prints the page's elements and heaps (`Runtime.getHeapUsage`: the
//! JavaScript heap, Blink's heap with the DOM, array buffers).
//!
//! A benchmark, not a test: it prints figures (BENCHMARKS.md keeps them) and fails only if
//! the reply does not arrive. Run it with `scripts/render-bench.sh` (or
//! `cargo test -p relay-server --test render_bench -- --ignored --nocapture`)
//! after `cargo xtask client`.
//!
//! - `RENDER_BENCH_BYTES=150000,1000000`: the reply sizes streamed.
//! - `RENDER_BENCH_SCRIPTS=1`: also prints each long task, and what ran in the long
//!   animation frames (Long Animation Frames API: scripts, style and layout).
//! - `RENDER_BENCH_PROFILE=dir`: keeps a CPU profile of each reply there (`.cpuprofile`,
//!   opens in the DevTools' Performance panel).

mod common;
#[path = "browser/harness.rs"]
mod harness;

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use harness::*;
use serde_json::{Value, json};

/// Installed in the page before the app: notes when each `delta` frame arrives (before the
/// app sees it), when the page changes, and every long task.
const PROBE: &str = r#"
(() => {
  const bench = window.__bench = { deltas: [], mutations: [], longtasks: [], login_ms: null, since: 0 };
  const Native = window.WebSocket;
  function Probed(url, protocols) {
    const ws = protocols === undefined ? new Native(url) : new Native(url, protocols);
    ws.addEventListener('message', e => {
      if (typeof e.data === 'string' && e.data.startsWith('{"type":"delta"')) bench.deltas.push(performance.now());
    });
    return ws;
  }
  Probed.prototype = Native.prototype;
  Object.assign(Probed, { CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3 });
  window.WebSocket = Probed;
  new PerformanceObserver(list => {
    // Entries are delivered late: one that began before the reply was asked for is not its.
    for (const e of list.getEntries())
      if (e.startTime >= bench.since) bench.longtasks.push([e.startTime, e.duration, bench.deltas.length]);
  }).observe({ type: 'longtask', buffered: true });
  bench.frames = []; bench.invokers = {};
  try {
    new PerformanceObserver(list => {
      for (const f of list.getEntries()) {
        if (f.startTime < bench.since) continue;
        const scripts = f.scripts.reduce((t, s) => t + s.duration, 0);
        for (const s of f.scripts) {
          const key = s.invoker + ' ' + s.invokerType;
          const seen = bench.invokers[key] || (bench.invokers[key] = [0, 0, 0]);
          seen[0] += s.duration; seen[1] += s.forcedStyleAndLayoutDuration || 0; seen[2] += 1;
        }
        bench.frames.push([f.duration, scripts, f.renderStart ? f.styleAndLayoutStart - f.renderStart : 0,
          f.styleAndLayoutStart ? f.startTime + f.duration - f.styleAndLayoutStart : 0]);
      }
    }).observe({ type: 'long-animation-frame', buffered: true });
  } catch (e) {}
  const watch = () => new MutationObserver(() => {
      const now = performance.now();
      bench.mutations.push(now);
      if (bench.login_ms === null && document.querySelector('#login-submit')) bench.login_ms = now;
    }).observe(document.body, { subtree: true, childList: true, characterData: true });
  if (document.body) watch(); else document.addEventListener('DOMContentLoaded', watch);
})();
"#;

/// What one streamed reply measured.
struct Figures {
    bytes: usize,
    seconds: f64,
    deltas: usize,
    long_tasks: usize,
    longest_ms: f64,
    long_total_ms: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    last_ms: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Streams a demo reply of about `bytes` and measures it.
async fn stream(tab: &Tab, bytes: usize) -> Result<Figures> {
    let average = relay_mock_llm::demo_reply_text(1000).len() as f64 / 1000.0;
    let tokens = (bytes as f64 / average) as usize;
    let expected = relay_mock_llm::demo_reply_text(tokens);
    tab.js("window.__bench.deltas = []; window.__bench.mutations = []; window.__bench.longtasks = []; window.__bench.frames = []; window.__bench.invokers = {}; window.__bench.since = performance.now();").await?;
    let started = Instant::now();
    // Typed as a paste and sent by an Enter from the page: WebDriver's typing runs its own
    // scripts in the page, which are not the client's.
    tab.fill_composer(&format!("bench [[mock demo tokens={tokens} tps=1000]]")).await?;
    tab.js("document.querySelector('#composer').dispatchEvent(new KeyboardEvent('keydown', {key: 'Enter', bubbles: true, cancelable: true}))").await?;
    tab.element("#streaming").await?;
    let deadline = Instant::now() + Duration::from_secs(30 + (tokens / 500) as u64);
    while tab.js("return !!document.querySelector('#streaming')").await? == json!(true) {
        if Instant::now() > deadline {
            bail!("the reply did not finish");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let shown = tab.js("const a = [...document.querySelectorAll('#messages article.assistant')].pop(); return a.querySelector('.content').textContent.length").await?;
    let bench = tab.js("return window.__bench").await?;
    let times = |key: &str| -> Vec<f64> {
        bench[key].as_array().map(|a| a.iter().filter_map(Value::as_f64).collect()).unwrap_or_default()
    };
    let (deltas, mutations) = (times("deltas"), times("mutations"));
    let long: Vec<f64> =
        bench["longtasks"].as_array().map(|a| a.iter().filter_map(|t| t[1].as_f64()).collect()).unwrap_or_default();
    // Each piece is on the page at the first change of the page after it arrived.
    let mut delays: Vec<f64> = deltas
        .iter()
        .filter_map(|&arrived| {
            let i = mutations.partition_point(|&m| m < arrived);
            mutations.get(i).map(|m| m - arrived)
        })
        .collect();
    // Where the long frames' time went (Long Animation Frames: scripts, then the frame's
    // own rendering: requestAnimationFrame callbacks and the like, then style and layout).
    if let Some(frames) = bench["frames"].as_array().filter(|f| !f.is_empty()) {
        let sum = |i: usize| frames.iter().filter_map(|f| f[i].as_f64()).sum::<f64>();
        println!(
            "  {} long frames: {:.0} ms in all; scripts {:.0} ms, before style {:.0} ms, style and layout {:.0} ms",
            frames.len(),
            sum(0),
            sum(1),
            sum(2),
            sum(3)
        );
    }
    if std::env::var_os("RENDER_BENCH_SCRIPTS").is_some() {
        println!("  long tasks (start ms, duration ms, pieces arrived by then): {}", bench["longtasks"]);
        println!("  scripts of long frames (ms, of which forced style and layout, count): {}", bench["invokers"]);
    }
    let last_ms = delays.last().copied().unwrap_or(f64::NAN);
    delays.sort_by(f64::total_cmp);
    // Markdown's marks are not shown, but most of the text is.
    let shown = shown.as_u64().unwrap_or(0) as usize;
    if shown < expected.len() / 2 {
        bail!("{shown} characters shown of a {}-byte reply: it was cut short", expected.len());
    }
    Ok(Figures {
        bytes: expected.len(),
        seconds,
        deltas: deltas.len(),
        long_tasks: long.len(),
        longest_ms: long.iter().copied().fold(0.0, f64::max),
        long_total_ms: long.iter().sum(),
        p50_ms: percentile(&delays, 0.5),
        p99_ms: percentile(&delays, 0.99),
        max_ms: delays.last().copied().unwrap_or(f64::NAN),
        last_ms,
    })
}

#[tokio::test]
#[ignore = "a benchmark: scripts/render-bench.sh"]
async fn long_replies_stream_without_blocking_the_page() {
    let _one = ONE_AT_A_TIME.lock().await;
    // Replies of up to 200,000 tokens (the default asks the model for at most 2,048).
    let h = Harness::start("render_bench", &[("CHAT_MAX_TOKENS", "200000")]).await.unwrap();
    h.run(async |h| {
        let a = h.open("a").await?;
        let devtools = h.tab(a).driver.cdp();
        devtools.send_raw("Page.addScriptToEvaluateOnNewDocument", json!({ "source": PROBE })).await?;
        // First load, cold (the browser's cache emptied) and warm (a reload: the hashed files
        // come from the cache).
        for load in ["cold", "warm"] {
            if load == "cold" {
                devtools.send_raw("Network.clearBrowserCache", json!({})).await?;
            }
            h.tab(a).driver.refresh().await?;
            h.tab(a).element("#login-submit").await?;
            let paint = h
                .tab(a)
                .js("const p = performance.getEntriesByName('first-contentful-paint')[0]; \
                     const n = performance.getEntriesByType('navigation')[0]; \
                     const bytes = performance.getEntriesByType('resource').reduce((t, r) => t + r.transferSize, n ? n.transferSize : 0); \
                     return [p ? p.startTime : null, window.__bench.login_ms, bytes]")
                .await?;
            println!(
                "first load ({load}): first paint {:.0} ms, login form ready {:.0} ms, {} bytes over the wire",
                paint[0].as_f64().unwrap_or(f64::NAN),
                paint[1].as_f64().unwrap_or(f64::NAN),
                paint[2]
            );
        }
        h.tab(a).register("bench").await?;
        // Clients before the first message started a chat (to measure them too) need one made.
        if h.tab(a).count("#composer").await? == 0 {
            h.tab(a).click("#new-chat").await?;
        }
        println!(
            "{:>9} {:>7} {:>7} {:>6} {:>9} {:>10} {:>8} {:>8} {:>8} {:>9}",
            "bytes", "seconds", "deltas", "long", "longest", "long total", "p50 ms", "p99 ms", "max ms", "last ms"
        );
        // `RENDER_BENCH_BYTES=150000` streams one size only.
        let sizes: Vec<usize> = std::env::var("RENDER_BENCH_BYTES")
            .map(|v| v.split(',').filter_map(|b| b.trim().parse().ok()).collect())
            .unwrap_or_else(|_| vec![150_000, 1_000_000]);
        for bytes in sizes {
            // `RENDER_BENCH_PROFILE=dir` keeps a CPU profile of each reply (Chrome's
            // `.cpuprofile`, for the DevTools' Performance panel).
            let profile = std::env::var("RENDER_BENCH_PROFILE").ok();
            if profile.is_some() {
                devtools.send_raw("Profiler.enable", json!({})).await?;
                devtools.send_raw("Profiler.setSamplingInterval", json!({ "interval": 500 })).await?;
                devtools.send_raw("Profiler.start", json!({})).await?;
            }
            let f = stream(h.tab(a), bytes).await?;
            // What the page holds after the reply: the JavaScript heap, Blink's heap (the
            // DOM and its layout) and array buffers' backing stores.
            let heap = devtools.send_raw("Runtime.getHeapUsage", json!({})).await?;
            let elements = h.tab(a).js("return document.getElementsByTagName('*').length").await?;
            let mib = |key: &str| heap[key].as_f64().unwrap_or(f64::NAN) / 1048576.0;
            println!(
                "  after the reply: {elements} elements; heap: JavaScript {:.1} of {:.1} MiB, DOM {:.1} MiB, buffers {:.1} MiB",
                mib("usedSize"),
                mib("totalSize"),
                mib("embedderHeapUsedSize"),
                mib("backingStorageSize")
            );
            if let Some(dir) = &profile {
                let taken = devtools.send_raw("Profiler.stop", json!({})).await?;
                let path = std::path::Path::new(dir).join(format!("render-{bytes}.cpuprofile"));
                std::fs::write(&path, serde_json::to_vec(&taken["profile"])?)?;
                println!("  profile: {}", path.display());
            }
            println!(
                "{:>9} {:>7.1} {:>7} {:>6} {:>9.0} {:>10.0} {:>8.1} {:>8.1} {:>8.1} {:>9.1}",
                f.bytes,
                f.seconds,
                f.deltas,
                f.long_tasks,
                f.longest_ms,
                f.long_total_ms,
                f.p50_ms,
                f.p99_ms,
                f.max_ms,
                f.last_ms
            );
        }
        // Reopening the chat (a reload): the stored replies are drawn at once.
        h.tab(a).driver.refresh().await?;
        h.tab(a).element("#messages article.assistant .md-block").await?;
        h.tab(a).wait("the chat to open", "return !!document.querySelector('#composer')").await?;
        // Long tasks are reported after they end.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let opened = h
            .tab(a)
            .js("const t = window.__bench.longtasks.map(l => l[1]); \
                 return [t.length, Math.max(0, ...t), t.reduce((a, b) => a + b, 0), document.getElementsByTagName('*').length]")
            .await?;
        println!(
            "reopened: {} long tasks, longest {:.0} ms, {:.0} ms in all; {} elements",
            opened[0],
            opened[1].as_f64().unwrap_or(f64::NAN),
            opened[2].as_f64().unwrap_or(f64::NAN),
            opened[3]
        );
        Ok(())
    })
    .await;
}
