//! A reader of server-sent events over a real HTTP response, for the share streams.

use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;

/// One event: its name (`message` when unnamed), its data, and its id.
#[derive(Clone, Debug)]
pub struct SseMessage {
    pub event: String,
    pub data: String,
    pub id: Option<String>,
}

impl SseMessage {
    /// The data as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("{e}: {}", self.data))
    }
}

/// Reads events from a streamed response.
pub struct SseReader {
    body: BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
}

impl SseReader {
    /// Reads `response`'s body as an event stream (the caller checked its status).
    pub fn new(response: reqwest::Response) -> SseReader {
        SseReader { body: response.bytes_stream().boxed(), buffer: String::new() }
    }

    /// The next event (comments and keep-alives skipped); `None` when the stream ends.
    /// Panics after `wait` without one.
    pub async fn next_within(&mut self, wait: Duration) -> Option<SseMessage> {
        tokio::time::timeout(wait, self.next()).await.expect("no server-sent event in time")
    }

    /// The next event, or `None` when the stream ends.
    pub async fn next(&mut self) -> Option<SseMessage> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut event, mut data, mut id) = ("message".to_owned(), Vec::new(), None);
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim_start().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push(v.strip_prefix(' ').unwrap_or(v).to_owned());
                    } else if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim_start().to_owned());
                    }
                }
                if data.is_empty() {
                    continue;
                }
                return Some(SseMessage { event, data: data.join("\n"), id });
            }
            match self.body.next().await {
                Some(Ok(bytes)) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// Events until one named `name` (included).
    pub async fn until(&mut self, name: &str) -> Vec<SseMessage> {
        let mut seen = Vec::new();
        loop {
            let event = self.next_within(super::WAIT).await.unwrap_or_else(|| panic!("ended before {name}: {seen:?}"));
            let done = event.event == name;
            seen.push(event);
            if done {
                return seen;
            }
        }
    }
}
