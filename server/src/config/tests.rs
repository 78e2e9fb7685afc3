//! The configuration's tests.

use std::collections::HashMap;

use super::*;

#[test]
fn models_and_the_experiment() {
    let c = load(&[]).unwrap();
    assert_eq!(c.models.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["Llama-4-Maverick-17B-128E-Instruct"]);
    assert_eq!((c.context_tokens, c.max_tokens), (32_768, 2048));
    let c = load(&[("CHAT_MAX_TOKENS", "100000")]).unwrap();
    assert_eq!(c.context_tokens, 100_000 + 30_720, "unset, it grows with CHAT_MAX_TOKENS");
    assert_eq!(load(&[("CHAT_CONTEXT_TOKENS", "2200")]).unwrap_err().var, "CHAT_CONTEXT_TOKENS");
    let tight = r#"[{"name": "a", "context_tokens": 2100}]"#;
    assert_eq!(load(&[("CHAT_MODELS", tight)]).unwrap_err().var, "CHAT_MODELS");
    let list = r#"[{"name": "a", "label": "A"}, {"name": "b", "context_tokens": 9000}]"#;
    let c = load(&[("CHAT_MODELS", list), ("CHAT_DEFAULT_MODEL", "b"), ("CHAT_MODEL_EXPERIMENT", "a:25")]).unwrap();
    assert_eq!((c.model.as_str(), c.models[1].name.as_str()), ("b", "a"), "the default first");
    assert_eq!(c.model_experiment, Some(("a".into(), 25)));
    for (pairs, var) in [
        (vec![("CHAT_MODELS", "[]")], "CHAT_MODELS"),
        (vec![("CHAT_MODELS", "nope")], "CHAT_MODELS"),
        (vec![("CHAT_MODELS", r#"[{"name": "a"}, {"name": "a"}]"#)], "CHAT_MODELS"),
        (vec![("CHAT_MODELS", r#"[{"name": "a", "api_key_env": "NOT_SET_X"}]"#)], "CHAT_MODELS"),
        (vec![("CHAT_DEFAULT_MODEL", "zzz")], "CHAT_DEFAULT_MODEL"),
        (vec![("CHAT_MODEL_EXPERIMENT", "zzz:10")], "CHAT_MODEL_EXPERIMENT"),
        (vec![("CHAT_MODELS", list), ("CHAT_MODEL_EXPERIMENT", "b:101")], "CHAT_MODEL_EXPERIMENT"),
        (vec![("CHAT_MODELS", list), ("CHAT_MODEL_EXPERIMENT", "a:10")], "CHAT_MODEL_EXPERIMENT"),
    ] {
        assert_eq!(load(&pairs).unwrap_err().var, var, "{pairs:?}");
    }
}

fn load(pairs: &[(&'static str, &str)]) -> Result<Config, ConfigError> {
    let map: HashMap<&str, String> = pairs.iter().map(|(k, v)| (*k, v.to_string())).collect();
    Config::from_map(&map)
}

#[test]
fn defaults_run_anywhere() {
    let c = load(&[]).unwrap();
    assert_eq!(c.bind_addr.to_string(), "127.0.0.1:8080");
    assert!(c.database_url.starts_with("surrealkv://"));
    assert!(matches!(c.model_backend, ModelBackend::Mock(_)));
    assert_eq!(c.max_message_length, 4000);
    assert_eq!(c.max_context_messages, 20);
    assert_eq!(c.cancel_grace, Duration::from_millis(3000));
    assert_eq!(c.jwt.ttl, Duration::from_secs(86400));
    assert_eq!((c.http_header_timeout, c.http_idle_timeout), (Duration::from_secs(10), Duration::from_secs(60)));
    assert_eq!(c.http_max_connections_per_address, Some(256));
    assert_eq!(load(&[("HTTP_MAX_CONNECTIONS_PER_ADDRESS", "0")]).unwrap().http_max_connections_per_address, None);
    assert_eq!(
        load(&[("HTTP_MAX_CONNECTIONS_PER_ADDRESS", "many")]).map(|_| ()).unwrap_err().var,
        "HTTP_MAX_CONNECTIONS_PER_ADDRESS"
    );
}

#[test]
fn errors_name_the_variable() {
    assert_eq!(load(&[("BIND_ADDR", "nowhere")]).unwrap_err().var, "BIND_ADDR");
    assert_eq!(load(&[("CHAT_MAX_TOKENS", "0")]).unwrap_err().var, "CHAT_MAX_TOKENS");
    assert_eq!(load(&[("JWT_TTL", "3x")]).unwrap_err().var, "JWT_TTL");
    assert_eq!(load(&[("DATABASE_URL", "postgres://x")]).unwrap_err().var, "DATABASE_URL");
    assert_eq!(load(&[("MOCK_FAULT", "explode")]).unwrap_err().var, "MOCK_FAULT");
    assert_eq!(load(&[("CORS_ALLOWED_ORIGINS", "example.com")]).unwrap_err().var, "CORS_ALLOWED_ORIGINS");
    assert_eq!(load(&[("TRUSTED_PROXIES", "10.0.0.0/8, nonsense")]).unwrap_err().var, "TRUSTED_PROXIES");
    assert_eq!(load(&[("TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1")]).unwrap().trusted_proxies.len(), 2);
    assert_eq!(load(&[("REDIS_URL", "localhost:6379")]).unwrap_err().var, "REDIS_URL");
    assert_eq!(load(&[("FEATURE_CHAT_ENABLED", "maybe")]).unwrap_err().var, "FEATURE_CHAT_ENABLED");
    assert_eq!(load(&[("FEATURE_CHAT_ROLLOUT_PERCENT", "101")]).unwrap_err().var, "FEATURE_CHAT_ROLLOUT_PERCENT");
    for url in
        ["chat.example", "ftp://chat.example", "https://", "https:///x", "https://chat.example/?x=1", "https://a b"]
    {
        assert_eq!(load(&[("PUBLIC_URL", url)]).unwrap_err().var, "PUBLIC_URL", "{url}");
    }
    assert_eq!(
        load(&[("PUBLIC_URL", " https://chat.example/relay/ ")]).unwrap().public_url.as_deref(),
        Some("https://chat.example/relay")
    );
    assert_eq!(load(&[("PUBLIC_URL", "")]).unwrap().public_url, None, "empty is unset");
    assert_eq!(
        load(&[("CORS_ALLOWED_ORIGINS", "https://a.example, http://b.example/")]).unwrap().cors_allowed_origins,
        ["https://a.example", "http://b.example"]
    );
}

/// Values that would overflow a date or a timer later (and panic the task using them)
/// are refused at start, naming the variable.
#[test]
fn out_of_range_durations_are_refused_at_start() {
    for var in ["CHAT_ARCHIVE_AFTER_DAYS", "CHAT_PURGE_AFTER_DAYS"] {
        for huge in ["1000000000000", "18446744073709551615", "213503982334601"] {
            assert_eq!(load(&[(var, huge)]).map(|_| ()).unwrap_err().var, var, "{var}={huge}");
        }
        assert!(load(&[(var, "36500")]).is_ok(), "a century is fine");
    }
    for var in [
        "CHAT_RETENTION_INTERVAL_SECS",
        "WS_PING_INTERVAL_SECS",
        "WS_PING_TIMEOUT_SECS",
        "WS_AUTH_TIMEOUT_SECS",
        "LLM_TIMEOUT_SECS",
        "LLM_BREAKER_COOLDOWN_SECS",
        "AUTH_LOGIN_WINDOW_SECS",
        "CHAT_SESSION_IDLE_SECS",
    ] {
        assert_eq!(load(&[(var, "18446744073709551615")]).map(|_| ()).unwrap_err().var, var, "{var}");
    }
    assert_eq!(load(&[("JWT_TTL", "99999999999999999d")]).map(|_| ()).unwrap_err().var, "JWT_TTL");
    for var in ["HTTP_HEADER_TIMEOUT_SECS", "HTTP_IDLE_TIMEOUT_SECS"] {
        assert_eq!(load(&[(var, "0")]).map(|_| ()).unwrap_err().var, var);
        assert_eq!(load(&[(var, "18446744073709551615")]).map(|_| ()).unwrap_err().var, var);
    }
    assert_eq!(load(&[("JWT_TTL", "500000000000000000")]).map(|_| ()).unwrap_err().var, "JWT_TTL");
}

#[test]
fn a_shared_database_and_redis_make_a_cluster() {
    let (redis, ws) = (("REDIS_URL", "redis://127.0.0.1:6379"), ("DATABASE_URL", "ws://127.0.0.1:8000"));
    assert!(load(&[redis, ws]).unwrap().cluster, "auto: both shared");
    assert!(!load(&[redis]).unwrap().cluster, "an embedded database is one node's");
    assert!(!load(&[ws]).unwrap().cluster, "no Redis, no cluster");
    assert!(!load(&[redis, ws, ("CLUSTER", "off")]).unwrap().cluster);
    assert_eq!(load(&[ws, ("CLUSTER", "on")]).unwrap_err().var, "CLUSTER");
    assert_eq!(load(&[redis, ("CLUSTER", "on")]).unwrap_err().var, "CLUSTER");
    assert_eq!(load(&[("CLUSTER", "sometimes")]).unwrap_err().var, "CLUSTER");
    assert_eq!(load(&[("CLUSTER_LEASE_MS", "100")]).unwrap_err().var, "CLUSTER_LEASE_MS");
    assert_eq!(load(&[("NODE_ID", "a b")]).unwrap_err().var, "NODE_ID");
    assert_eq!(load(&[("NODE_ID", "node-7.eu_west")]).unwrap().node_id, "node-7.eu_west");
    let (one, two) = (load(&[]).unwrap().node_id, load(&[]).unwrap().node_id);
    assert_ne!(one, two, "a generated NODE_ID is unique per start");
    assert_eq!(load(&[]).unwrap().cluster_lease, Duration::from_secs(5));
    assert_eq!(load(&[]).unwrap().database_timeout, Duration::from_secs(5));
    assert_eq!(load(&[("DATABASE_TIMEOUT_MS", "0")]).unwrap_err().var, "DATABASE_TIMEOUT_MS");
    assert_eq!(load(&[]).unwrap().ws_subscribes_per_minute, 20);
    assert_eq!(load(&[("WS_SUBSCRIBES_PER_MINUTE", "0")]).unwrap_err().var, "WS_SUBSCRIBES_PER_MINUTE");
}

/// The embedded database's memory: bounded by default, set by two variables, and a memtable
/// too small for the largest transaction the server writes is refused at start.
#[test]
fn embedded_database_sizes() {
    use crate::store::EmbeddedSizes;
    assert_eq!(
        load(&[]).unwrap().database_embedded,
        EmbeddedSizes { cache_bytes: 256 << 20, memtable_bytes: 128 << 20 }
    );
    let set = load(&[("DATABASE_CACHE_BYTES", "1048576"), ("DATABASE_MEMTABLE_BYTES", "268435456")]).unwrap();
    assert_eq!(set.database_embedded, EmbeddedSizes { cache_bytes: 1 << 20, memtable_bytes: 256 << 20 });
    assert_eq!(load(&[("DATABASE_CACHE_BYTES", "0")]).unwrap_err().var, "DATABASE_CACHE_BYTES");
    assert_eq!(load(&[("DATABASE_CACHE_BYTES", "1GiB")]).unwrap_err().var, "DATABASE_CACHE_BYTES");
    let small = load(&[("DATABASE_MEMTABLE_BYTES", "134217727")]).unwrap_err();
    assert_eq!(small.var, "DATABASE_MEMTABLE_BYTES");
    assert!(small.to_string().contains("134217728"), "{small}");
    let huge = load(&[("DATABASE_MEMTABLE_BYTES", "4294967296")]).unwrap_err();
    assert_eq!(huge.var, "DATABASE_MEMTABLE_BYTES");
    // A larger reply cap needs a larger memtable: 128 × 2 MiB.
    let big_replies = [("CHAT_MAX_REPLY_BYTES", "2097152"), ("WS_OUTBOUND_QUEUE_BYTES", "8388608")];
    assert_eq!(load(&big_replies).unwrap_err().var, "DATABASE_MEMTABLE_BYTES");
    let fits = [big_replies[0], big_replies[1], ("DATABASE_MEMTABLE_BYTES", "268435456")];
    assert_eq!(load(&fits).unwrap().database_embedded.memtable_bytes, 256 << 20);
    // Nor does it apply where the server sizes no memtable: in memory, or a database server.
    let in_memory = [big_replies[0], big_replies[1], ("DATABASE_URL", "mem://")];
    assert_eq!(load(&in_memory).unwrap().max_reply_bytes, 2 << 20);
}

#[test]
fn production_demands_a_strong_secret() {
    assert_eq!(load(&[("RELAY_ENV", "production")]).unwrap_err().var, "JWT_SECRET");
    assert_eq!(load(&[("RELAY_ENV", "production"), ("JWT_SECRET", "short")]).unwrap_err().var, "JWT_SECRET");
    let strong = "x".repeat(32);
    assert!(load(&[("RELAY_ENV", "production"), ("JWT_SECRET", &strong)]).is_ok());
    assert!(load(&[("JWT_SECRET", "short")]).is_ok(), "dev mode accepts a weak secret");
}

#[test]
fn debug_output_redacts_every_secret() {
    let c = load(&[
        ("JWT_SECRET", "jwt-secret-0123456789-0123456789-xyz"),
        ("SAMBANOVA_API_KEY", "provider-key-abc"),
        ("DATABASE_URL", "ws://root:url-pass@db:8000"),
        ("DATABASE_USER", "root"),
        ("DATABASE_PASS", "db-pass-def"),
        ("METRICS_TOKEN", "metrics-token-ghi"),
        ("REDIS_URL", "redis://:redis-pass-jkl@cache:6379"),
    ])
    .unwrap();
    let shown = format!("{c:?} {c:#?}");
    for secret in
        ["jwt-secret-0123456789", "provider-key-abc", "url-pass", "db-pass-def", "metrics-token-ghi", "redis-pass-jkl"]
    {
        assert!(!shown.contains(secret), "{secret} leaked into {shown}");
    }
    assert!(shown.contains("ws_max_connections_per_user"));
}

/// A user and password written into `DATABASE_URL` move out of it: the URL the server
/// keeps, logs and shows in errors has none, and they sign in as `DATABASE_USER` /
/// `DATABASE_PASS` would (which win when set).
#[test]
fn database_credentials_leave_the_url() {
    let c = load(&[("DATABASE_URL", "ws://root:p%40ss%3Aword@db.internal:8000/rpc")]).unwrap();
    assert_eq!(c.database_url, "ws://db.internal:8000/rpc");
    assert_eq!(c.database_credentials, Some(("root".to_string(), "p@ss:word".to_string())));
    assert!(c.redact("connecting with p@ss:word failed").contains("<redacted>"));
    let c =
        load(&[("DATABASE_URL", "wss://u:url-pass@db:8000"), ("DATABASE_USER", "root"), ("DATABASE_PASS", "env-pass")])
            .unwrap();
    assert_eq!(c.database_url, "wss://db:8000");
    assert_eq!(c.database_credentials, Some(("root".to_string(), "env-pass".to_string())));
    let c = load(&[("DATABASE_URL", "ws://db:8000")]).unwrap();
    assert_eq!((c.database_url.as_str(), c.database_credentials), ("ws://db:8000", None::<(String, String)>));
    let bad = load(&[("DATABASE_URL", "postgres://u:secret-pw@db")]).map(|_| ()).unwrap_err();
    assert!(bad.var == "DATABASE_URL" && !bad.to_string().contains("secret-pw"), "{bad}");
}

#[test]
fn the_rollout_share_is_stable_and_admins_always_have_chat() {
    let half = Rollout { enabled: ChatEnabled::Yes, percent: 50 };
    let ids: Vec<uuid::Uuid> = (0..1000u128).map(|i| uuid::Uuid::from_u128(i * 7919)).collect();
    let allowed = ids.iter().filter(|id| half.allows(**id, false)).count();
    assert!((400..=600).contains(&allowed), "{allowed}");
    assert!(ids.iter().all(|id| half.allows(*id, false) == half.allows(*id, false)));
    assert!(ids.iter().all(|id| half.allows(*id, true)));
    let none = Rollout { enabled: ChatEnabled::Yes, percent: 0 };
    assert!(!none.allows(ids[1], false) && none.allows(ids[1], true));
    let admins = Rollout { enabled: ChatEnabled::Admins, percent: 100 };
    assert!(!admins.allows(ids[1], false) && admins.allows(ids[1], true));
    let off = Rollout { enabled: ChatEnabled::No, percent: 100 };
    assert!(!off.allows(ids[1], true) && !off.any());
}

#[test]
fn api_key_selects_the_real_provider_unless_mock_is_forced() {
    let c = load(&[("SAMBANOVA_API_KEY", "k")]).unwrap();
    assert!(
        matches!(c.model_backend, ModelBackend::Remote { ref api_base, .. } if api_base == "https://api.sambanova.ai/v1")
    );
    let c = load(&[("SAMBANOVA_API_KEY", "k"), ("LLM_MOCK", "1")]).unwrap();
    assert!(matches!(c.model_backend, ModelBackend::Mock(_)));
}

#[test]
fn the_built_in_mock_shows_its_demo_unless_told_not_to() {
    let mock = |pairs: &[(&'static str, &str)]| match load(pairs).unwrap().model_backend {
        ModelBackend::Mock(settings) => settings,
        other => panic!("not the mock: {other:?}"),
    };
    let demo = mock(&[]);
    assert!(demo.demo);
    assert_eq!(demo.reply_tokens, relay_mock_llm::demo_tokens().len(), "the whole demo by default");
    assert_eq!(mock(&[("MOCK_REPLY_TOKENS", "30")]).reply_tokens, 30);
    let words = mock(&[("MOCK_DEMO", "0")]);
    assert_eq!((words.demo, words.reply_tokens), (false, 40));
    assert_eq!(load(&[("MOCK_DEMO", "maybe")]).unwrap_err().var, "MOCK_DEMO");
    assert_eq!(load(&[("MOCK_STAMP", "maybe")]).unwrap_err().var, "MOCK_STAMP");
}
