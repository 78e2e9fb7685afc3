//! `direct`: the baseline without the server. Concurrent streaming requests straight to
//! the model's `POST {upstream}/chat/completions` (OpenAI SSE: `data: {json}` lines, then
//! `data: [DONE]`), measuring TTFT and delivery the way `chat` does.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};

use super::{Measured, Replies, Reply, join_all, live, secs_since};
use crate::report::line;
use crate::{Errors, Live};

/// What the `direct` scenario does.
#[derive(Clone, Debug, Serialize)]
pub struct DirectConfig {
    /// Concurrent streams.
    pub streams: usize,
    /// Requests each stream makes, one after another.
    pub requests: usize,
    /// The user message.
    pub content: String,
    /// Longest a request may take (s).
    pub reply_timeout_secs: u64,
}

impl Default for DirectConfig {
    fn default() -> Self {
        DirectConfig { streams: 10, requests: 1, content: super::DEFAULT_CONTENT.into(), reply_timeout_secs: 60 }
    }
}

/// The figures of a `direct` run.
#[derive(Clone, Debug, Serialize)]
pub struct DirectReport {
    /// What ran.
    pub config: DirectConfig,
    /// The model's base URL.
    pub upstream: String,
    /// From the first request to the last `[DONE]` (s).
    pub duration_secs: f64,
    /// The replies (TTFT: request sent to the first non-empty content delta).
    pub replies: Replies,
    /// Errors by code.
    pub errors: Errors,
}

impl fmt::Display for DirectReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        writeln!(f, "direct: {} streams × {} requests to {}", c.streams, c.requests, self.upstream)?;
        self.replies.write(f, &[])?;
        line(f, "duration", format!("{:.2} s", self.duration_secs))?;
        line(f, "errors", &self.errors)
    }
}

/// Runs the streams against `upstream` (an OpenAI base URL such as `http://127.0.0.1:PORT/v1`).
pub async fn run(upstream: &str, config: &DirectConfig, progress: bool) -> anyhow::Result<DirectReport> {
    let (m, duration) = drive(upstream, config, progress).await?;
    Ok(DirectReport {
        config: config.clone(),
        upstream: upstream.into(),
        duration_secs: duration,
        replies: m.replies(duration),
        errors: m.errors.clone(),
    })
}

/// Runs the streams: their measurements and the run's length in seconds.
pub(crate) async fn drive(upstream: &str, config: &DirectConfig, progress: bool) -> anyhow::Result<(Measured, f64)> {
    let http = reqwest::Client::builder().tcp_nodelay(true).build()?;
    let url = Arc::new(format!("{}/chat/completions", upstream.trim_end_matches('/')));
    let (live, _progress) = live(progress);
    let config = Arc::new(config.clone());
    let start = Instant::now();
    let results = join_all(config.streams, |_| {
        let (http, url, config, live) = (http.clone(), url.clone(), config.clone(), live.clone());
        async move {
            let mut m = Measured::default();
            for _ in 0..config.requests {
                let limit = Duration::from_secs(config.reply_timeout_secs);
                Live::add(&live.streams, 1);
                let result = tokio::time::timeout(limit, request(&http, &url, &config.content, &live, &mut m)).await;
                Live::add(&live.streams, -1);
                match result {
                    Ok(Ok(())) => m.completed += 1,
                    Ok(Err(key)) => m.error(key, &live),
                    Err(_) => m.error("timeout", &live),
                }
            }
            m
        }
    })
    .await;
    let duration = secs_since(start);
    let mut all = Measured::default();
    for result in results {
        match result {
            Ok(m) => all.merge(m),
            Err(_) => all.errors.add("panic"),
        }
    }
    Ok((all, duration))
}

/// One streamed completion; the error is its key in [`Errors`].
async fn request(
    http: &reqwest::Client,
    url: &str,
    content: &str,
    live: &Live,
    m: &mut Measured,
) -> Result<(), String> {
    let body = json!({
        "model": "relay-loadtest",
        "stream": true,
        "messages": [{"role": "user", "content": content}],
    });
    let mut reply = Reply::new();
    let response = http.post(url).json(&body).send().await.map_err(|_| "upstream_request".to_string())?;
    if !response.status().is_success() {
        return Err(format!("upstream_http_{}", response.status().as_u16()));
    }
    let mut body = response.bytes_stream();
    let mut buffer: Vec<u8> = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|_| "upstream_broken".to_string())?;
        let at = Instant::now();
        buffer.extend_from_slice(&chunk);
        while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            let Some(data) = std::str::from_utf8(&line).ok().and_then(|l| l.trim().strip_prefix("data:")) else {
                continue;
            };
            let data = data.trim();
            if data == "[DONE]" {
                return Ok(());
            }
            let value: Value = serde_json::from_str(data).map_err(|_| "upstream_bad_json".to_string())?;
            let text = value.pointer("/choices/0/delta/content").and_then(Value::as_str).unwrap_or_default();
            if !text.is_empty() {
                m.delta(Some(&mut reply), at, text, live);
            }
        }
    }
    Err("upstream_no_done".into())
}
