//! Prometheus metrics, served at `GET /metrics` in the text exposition format.
//!
//! Each server has its own registry (not the process-global one), so several servers in
//! one process, as in the tests, keep separate counts.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use relay_protocol::FinishReason;

/// The server's metrics and the registry they are exposed from.
pub struct Metrics {
    registry: Registry,
    /// HTTP responses by status class (`2xx`, `4xx`, ...).
    pub http_responses: IntCounterVec,
    /// Connections the server closed for their slowness, by reason (`header_timeout`,
    /// `idle_timeout`).
    pub http_connections_closed: IntCounterVec,
    /// Open WebSocket connections.
    pub ws_connections: IntGauge,
    /// WebSocket connections closed because they read too slowly (4429).
    pub ws_slow_closed: IntCounter,
    /// WebSocket connections the server closed, by close code.
    pub ws_closes: IntCounterVec,
    /// Requests refused by a cap, by limit (`sessions_per_user`, `connections_per_user`,
    /// `subscriptions_per_connection`, `password_queue`, `connections_per_address`, ...).
    pub limits_refused: IntCounterVec,
    /// Live session actors.
    pub session_actors: IntGauge,
    /// User messages stored.
    pub user_messages: IntCounter,
    /// Replies generating now.
    pub generations_active: IntGauge,
    /// Replies ended, by finish reason.
    pub generations: IntCounterVec,
    /// Replies cancelled because nobody was watching.
    pub generations_abandoned: IntCounter,
    /// Tokens reported by the provider, by kind (`prompt`, `completion`).
    pub tokens: IntCounterVec,
    /// Time from starting a reply to its first text.
    pub time_to_first_token: Histogram,
    /// Model requests retried (before their first token).
    pub llm_retries: IntCounter,
    /// The model provider's circuit breaker: 0 closed, 1 open, 2 half-open.
    pub llm_breaker_state: IntGauge,
    /// Whether limits are kept in Redis now (0 without `REDIS_URL` or while it is down).
    pub redis_up: IntGauge,
    /// Errors answered to clients, by protocol error code (REST, WebSocket, `done`).
    pub errors: IntCounterVec,
    /// Time from starting a reply to its end, whatever the end.
    pub reply_duration: Histogram,
    /// Messages a session held when a message was sent to it (conversation depth).
    pub session_depth: Histogram,
    /// Users with at least one WebSocket connection (set when `/metrics` is read).
    pub active_users: IntGauge,
    /// Deleted sessions archived or purged by the retention job, by action.
    pub retention_sessions: IntCounterVec,
    /// Messages archived or purged by the retention job, by action.
    pub retention_messages: IntCounterVec,
    /// Writes waiting in the write-behind queue.
    pub write_queue: IntGauge,
    /// Writes per write-behind transaction.
    pub write_batch: Histogram,
    /// Failed attempts at a write-behind batch (each batch is retried until stored).
    pub write_failures: IntCounter,
    /// Durable writes (a user message, a final reply) not confirmed within `DATABASE_TIMEOUT_MS`.
    pub write_timeouts: IntCounter,
    /// Sessions whose queued writes a batch refused: another actor holds the session now.
    pub write_fenced: IntCounter,
    /// Write-behind writers retrying a batch the database does not take now.
    pub write_stalled: IntGauge,
    /// Lone writes given up as larger than the embedded database's memtable.
    pub write_too_large: IntCounter,
    /// Checkpoints of replies in progress not queued because the write queue was full.
    pub checkpoints_skipped: IntCounter,
    /// Entries in the session registry: actors started or starting (set when `/metrics` is read).
    pub session_slots: IntGauge,
    /// Forwarded requests waiting for their answer (set when `/metrics` is read).
    pub cluster_pending_calls: IntGauge,
    /// Receivers here that owner nodes may address (set when `/metrics` is read).
    pub cluster_direct_receivers: IntGauge,
    /// Messages between nodes found lost (a numbering gap, or a failed publish), by channel kind (`session`, `node`).
    pub cluster_gaps: IntCounterVec,
    /// Sends, edits and regenerates that repeated an earlier idempotency key (answered as the first was; nothing stored or started).
    pub repeated_requests: IntCounter,
    /// Always 1, labelled with this node's `NODE_ID`.
    pub node_info: IntGaugeVec,
    /// Live node processes in the cluster, this one included (0 when not clustered).
    pub cluster_nodes: IntGauge,
    /// Sessions whose lease this node holds.
    pub cluster_owned_sessions: IntGauge,
    /// Session requests forwarded to the node that owns the session.
    pub cluster_forwarded: IntCounter,
    /// Sessions owned elsewhere that connections here watch (relayed from their owner).
    pub cluster_relayed_sessions: IntGauge,
    /// Replies ended, by model, experiment arm and finish reason (arms compared).
    pub model_replies: IntCounterVec,
    /// Tokens the provider reported, by model, arm and kind.
    pub model_tokens: IntCounterVec,
    /// Time from starting a reply to its first text, by model and arm.
    pub model_time_to_first_token: HistogramVec,
    /// Ratings users gave replies, by model, arm and rating (`up`, `down`).
    pub model_feedback: IntCounterVec,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some("relay".into()), None).expect("a valid prefix");
        let http_responses =
            IntCounterVec::new(Opts::new("http_responses_total", "HTTP responses by status class"), &["class"])
                .expect("valid metric");
        let http_connections_closed = IntCounterVec::new(
            Opts::new("http_connections_closed_total", "Connections closed for their slowness, by reason"),
            &["reason"],
        )
        .expect("valid metric");
        let ws_connections = IntGauge::new("ws_connections", "Open WebSocket connections").expect("valid metric");
        let ws_slow_closed =
            IntCounter::new("ws_slow_closed_total", "WebSocket connections closed for reading too slowly (4429)")
                .expect("valid metric");
        let ws_closes = IntCounterVec::new(
            Opts::new("ws_closes_total", "WebSocket connections the server closed, by close code"),
            &["code"],
        )
        .expect("valid metric");
        let limits_refused =
            IntCounterVec::new(Opts::new("limits_refused_total", "Requests refused by a cap, by limit"), &["limit"])
                .expect("valid metric");
        let session_actors = IntGauge::new("session_actors", "Live session actors").expect("valid metric");
        let user_messages = IntCounter::new("user_messages_total", "User messages stored").expect("valid metric");
        let generations_active = IntGauge::new("generations_active", "Replies generating now").expect("valid metric");
        let generations =
            IntCounterVec::new(Opts::new("generations_total", "Replies ended, by finish reason"), &["finish_reason"])
                .expect("valid metric");
        let generations_abandoned =
            IntCounter::new("generations_abandoned_total", "Replies cancelled because nobody was watching")
                .expect("valid metric");
        let tokens = IntCounterVec::new(Opts::new("llm_tokens_total", "Tokens reported by the provider"), &["kind"])
            .expect("valid metric");
        let model_replies = IntCounterVec::new(
            Opts::new("model_replies_total", "Replies ended, by model, experiment arm and finish reason"),
            &["model", "arm", "finish_reason"],
        )
        .expect("valid metric");
        let model_tokens = IntCounterVec::new(
            Opts::new("model_tokens_total", "Tokens the provider reported, by model, experiment arm and kind"),
            &["model", "arm", "kind"],
        )
        .expect("valid metric");
        let model_time_to_first_token = HistogramVec::new(
            HistogramOpts::new("model_time_to_first_token_seconds", "Time to a reply's first text, by model and arm")
                .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0]),
            &["model", "arm"],
        )
        .expect("valid metric");
        let model_feedback = IntCounterVec::new(
            Opts::new("model_feedback_total", "Ratings users gave replies, by model, experiment arm and rating"),
            &["model", "arm", "rating"],
        )
        .expect("valid metric");
        let time_to_first_token = Histogram::with_opts(
            HistogramOpts::new("llm_time_to_first_token_seconds", "Time from starting a reply to its first text")
                .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0]),
        )
        .expect("valid metric");
        let llm_retries = IntCounter::new("llm_retries_total", "Model requests retried before their first token")
            .expect("valid metric");
        let llm_breaker_state =
            IntGauge::new("llm_breaker_state", "Model provider circuit breaker: 0 closed, 1 open, 2 half-open")
                .expect("valid metric");
        let redis_up = IntGauge::new("redis_up", "1 while limits are kept in Redis, else 0").expect("valid metric");
        let retention_sessions = IntCounterVec::new(
            Opts::new("retention_sessions_total", "Deleted sessions archived or purged, by action"),
            &["action"],
        )
        .expect("valid metric");
        let retention_messages = IntCounterVec::new(
            Opts::new("retention_messages_total", "Messages archived or purged, by action"),
            &["action"],
        )
        .expect("valid metric");
        let errors = IntCounterVec::new(Opts::new("errors_total", "Errors answered to clients, by code"), &["code"])
            .expect("valid metric");
        let reply_duration = Histogram::with_opts(
            HistogramOpts::new("reply_duration_seconds", "Time from starting a reply to its end")
                .buckets(vec![0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]),
        )
        .expect("valid metric");
        let session_depth = Histogram::with_opts(
            HistogramOpts::new("session_depth_messages", "Messages a session held when a message was sent to it")
                .buckets(vec![0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
        )
        .expect("valid metric");
        let active_users =
            IntGauge::new("active_users", "Users with at least one WebSocket connection").expect("valid metric");
        let write_queue =
            IntGauge::new("write_queue", "Writes waiting in the write-behind queue").expect("valid metric");
        let write_batch = Histogram::with_opts(
            HistogramOpts::new("write_batch_size", "Writes applied per write-behind transaction")
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0]),
        )
        .expect("valid metric");
        let write_failures =
            IntCounter::new("write_failures_total", "Failed attempts at a write-behind batch (retried until stored)")
                .expect("valid metric");
        let write_timeouts = IntCounter::new(
            "write_timeouts_total",
            "Durable writes not confirmed within DATABASE_TIMEOUT_MS (they stay queued)",
        )
        .expect("valid metric");
        let write_fenced = IntCounter::new(
            "write_fenced_total",
            "Session write batches refused because another actor holds the session now",
        )
        .expect("valid metric");
        let write_stalled =
            IntGauge::new("write_stalled_writers", "Write-behind writers retrying a batch the database does not take")
                .expect("valid metric");
        let write_too_large = IntCounter::new(
            "write_too_large_total",
            "Writes given up because one alone is larger than DATABASE_MEMTABLE_BYTES can take",
        )
        .expect("valid metric");
        let checkpoints_skipped = IntCounter::new(
            "checkpoints_skipped_total",
            "Checkpoints of replies in progress not queued because the write queue was full",
        )
        .expect("valid metric");
        let session_slots =
            IntGauge::new("session_slots", "Entries in the session registry (started or starting actors)")
                .expect("valid metric");
        let cluster_pending_calls =
            IntGauge::new("cluster_pending_calls", "Forwarded requests waiting for their answer")
                .expect("valid metric");
        let cluster_direct_receivers =
            IntGauge::new("cluster_direct_receivers", "Receivers here that other nodes may address")
                .expect("valid metric");
        let cluster_gaps = IntCounterVec::new(
            Opts::new(
                "cluster_gaps_total",
                "Messages between nodes found lost (a gap in their numbering, or a failed publish), by channel kind",
            ),
            &["channel"],
        )
        .expect("valid metric");
        let repeated_requests = IntCounter::new("repeated_requests_total", "Sends, edits and regenerates that repeated an earlier idempotency key (answered as the first, nothing done)").expect("valid metric");
        let node_info = IntGaugeVec::new(Opts::new("node_info", "Always 1, labelled with NODE_ID"), &["node_id"])
            .expect("valid metric");
        let cluster_nodes = IntGauge::new("cluster_nodes", "Live node processes in the cluster, this one included")
            .expect("valid metric");
        let cluster_owned_sessions =
            IntGauge::new("cluster_owned_sessions", "Sessions whose lease this node holds").expect("valid metric");
        let cluster_forwarded =
            IntCounter::new("cluster_forwarded_total", "Session requests forwarded to the owning node")
                .expect("valid metric");
        let cluster_relayed_sessions =
            IntGauge::new("cluster_relayed_sessions", "Sessions owned elsewhere that connections here watch")
                .expect("valid metric");
        let metrics = Metrics {
            registry,
            http_responses,
            http_connections_closed,
            ws_connections,
            ws_slow_closed,
            ws_closes,
            limits_refused,
            session_actors,
            user_messages,
            generations_active,
            generations,
            generations_abandoned,
            tokens,
            time_to_first_token,
            llm_retries,
            llm_breaker_state,
            redis_up,
            errors,
            reply_duration,
            session_depth,
            active_users,
            retention_sessions,
            retention_messages,
            write_queue,
            write_batch,
            write_failures,
            write_timeouts,
            write_fenced,
            write_stalled,
            write_too_large,
            checkpoints_skipped,
            session_slots,
            cluster_pending_calls,
            cluster_direct_receivers,
            cluster_gaps,
            repeated_requests,
            node_info,
            cluster_nodes,
            cluster_owned_sessions,
            cluster_forwarded,
            cluster_relayed_sessions,
            model_replies,
            model_tokens,
            model_time_to_first_token,
            model_feedback,
        };
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(metrics.http_responses.clone()),
            Box::new(metrics.http_connections_closed.clone()),
            Box::new(metrics.ws_connections.clone()),
            Box::new(metrics.ws_slow_closed.clone()),
            Box::new(metrics.ws_closes.clone()),
            Box::new(metrics.limits_refused.clone()),
            Box::new(metrics.session_actors.clone()),
            Box::new(metrics.user_messages.clone()),
            Box::new(metrics.generations_active.clone()),
            Box::new(metrics.generations.clone()),
            Box::new(metrics.generations_abandoned.clone()),
            Box::new(metrics.tokens.clone()),
            Box::new(metrics.time_to_first_token.clone()),
            Box::new(metrics.llm_retries.clone()),
            Box::new(metrics.llm_breaker_state.clone()),
            Box::new(metrics.redis_up.clone()),
            Box::new(metrics.errors.clone()),
            Box::new(metrics.reply_duration.clone()),
            Box::new(metrics.session_depth.clone()),
            Box::new(metrics.active_users.clone()),
            Box::new(metrics.retention_sessions.clone()),
            Box::new(metrics.retention_messages.clone()),
            Box::new(metrics.write_queue.clone()),
            Box::new(metrics.write_batch.clone()),
            Box::new(metrics.write_failures.clone()),
            Box::new(metrics.write_timeouts.clone()),
            Box::new(metrics.write_fenced.clone()),
            Box::new(metrics.write_stalled.clone()),
            Box::new(metrics.write_too_large.clone()),
            Box::new(metrics.checkpoints_skipped.clone()),
            Box::new(metrics.session_slots.clone()),
            Box::new(metrics.cluster_pending_calls.clone()),
            Box::new(metrics.cluster_direct_receivers.clone()),
            Box::new(metrics.cluster_gaps.clone()),
            Box::new(metrics.repeated_requests.clone()),
            Box::new(metrics.node_info.clone()),
            Box::new(metrics.cluster_nodes.clone()),
            Box::new(metrics.cluster_owned_sessions.clone()),
            Box::new(metrics.cluster_forwarded.clone()),
            Box::new(metrics.cluster_relayed_sessions.clone()),
            Box::new(metrics.model_replies.clone()),
            Box::new(metrics.model_tokens.clone()),
            Box::new(metrics.model_time_to_first_token.clone()),
            Box::new(metrics.model_feedback.clone()),
        ];
        for collector in collectors {
            metrics.registry.register(collector).expect("metric names are unique");
        }
        metrics
    }

    /// Counts a reply that ended.
    pub fn generation_ended(&self, reason: FinishReason, model: &str, arm: &str) {
        let label = match reason {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
            FinishReason::Error => "error",
        };
        self.generations.with_label_values(&[label]).inc();
        self.model_replies.with_label_values(&[model, arm, label]).inc();
        self.generations_active.dec();
    }

    /// Counts a WebSocket close the server sent.
    pub fn ws_closed(&self, code: u16) {
        self.ws_closes.with_label_values(&[&code.to_string()]).inc();
    }

    /// Counts an error answered to a client.
    pub fn error(&self, code: relay_protocol::ErrorCode) {
        self.errors.with_label_values(&[code.as_str()]).inc();
    }

    /// Counts a request refused by a cap.
    pub fn limit_refused(&self, limit: &str) {
        self.limits_refused.with_label_values(&[limit]).inc();
    }

    /// Counts an HTTP response by its status class.
    pub fn http_response(&self, status: u16) {
        let class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.http_responses.with_label_values(&[class]).inc();
    }

    /// The metrics in Prometheus' text format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer).expect("text encoding does not fail");
        String::from_utf8(buffer).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
