use super::*;

fn with(args: &[&str]) -> Result<Config, clap::Error> {
    Config::from_args(std::iter::once("chatgate").chain(args.iter().copied()))
}

/// The settings clap knows: (variable, default or `None`).
fn settings() -> Vec<(String, Option<String>)> {
    Config::command()
        .get_arguments()
        .filter_map(|a| {
            let var = a.get_env()?.to_string_lossy().into_owned();
            let default = a.get_default_values().first().map(|d| d.to_string_lossy().into_owned());
            Some((var, default))
        })
        .collect()
}

#[test]
fn defaults() {
    let c = with(&[]).unwrap();
    assert_eq!(c.listen.to_string(), "0.0.0.0:8080");
    assert_eq!(c.max_message_bytes, 65536);
    assert_eq!(c.rate_limit, 100);
    assert_eq!(c.rate_burst, 200);
    assert_eq!(c.heartbeat, Duration::from_secs(25));
    assert_eq!(c.log_format, LogFormat::Pretty);
    assert_eq!(c.log_filter, "info");
    assert!(c.shards >= 4);
    assert!(c.workers >= 1);
    assert!(crate::protocol::is_valid_name(&c.node_id), "{}", c.node_id);
    assert_ne!(c.node_id, with(&[]).unwrap().node_id, "a fresh id per start");
    assert!(c.api_key.is_none());
    assert_eq!(c.jwt_leeway, Duration::from_secs(5));
    assert!(!c.tokens_required());
    assert!(c.jwt_issuer.is_none() && c.jwt_audience.is_none());
    assert!(!c.is_cluster());
    assert_eq!(c.cluster.node_ttl, Duration::from_secs(10));
    assert!(c.cluster.persistent);
}

#[test]
fn errors_name_the_variable() {
    for (flag, value, var) in [
        ("--listen", "nope", "CHAT_LISTEN"),
        ("--rate-limit", "fast", "CHAT_RATE_LIMIT"),
        ("--rate-limit", "0", "CHAT_RATE_LIMIT"),
        ("--max-message-bytes", "-1", "CHAT_MAX_MESSAGE_BYTES"),
        ("--heartbeat-ms", "1", "CHAT_HEARTBEAT_MS"),
        ("--log-format", "xml", "CHAT_LOG_FORMAT"),
        ("--node-id", "a b", "CHAT_NODE_ID"),
        ("--api-key", "", "CHAT_API_KEY"),
        ("--log-filter", "chatgate=loud", "RUST_LOG"),
        // Cluster-only settings are checked in embedded mode too.
        ("--node-ttl-ms", "abc", "CHAT_NODE_TTL_MS"),
        ("--amqp-persistent", "maybe", "CHAT_AMQP_PERSISTENT"),
        ("--cluster", "a b", "CHAT_CLUSTER"),
        ("--jwt-public-key-file", "/nonexistent/key.pem", "CHAT_JWT_PUBLIC_KEY_FILE"),
        ("--jwt-leeway-s", "soon", "CHAT_JWT_LEEWAY_S"),
        ("--jwt-leeway-s", "86400", "CHAT_JWT_LEEWAY_S"),
        ("--jwt-issuer", "", "CHAT_JWT_ISSUER"),
        ("--jwt-audience", "", "CHAT_JWT_AUDIENCE"),
    ] {
        let e = with(&[&format!("{flag}={value}")]).unwrap_err();
        use clap::error::ErrorKind::{InvalidValue, ValueValidation};
        assert!(matches!(e.kind(), ValueValidation | InvalidValue), "{flag} {value}: {e}");
        assert!(e.to_string().contains(var), "{flag} {value}: {e}");
    }
}

#[test]
fn token_settings() {
    let c = with(&["--jwt-secret", "k", "--jwt-leeway-s", "0", "--jwt-issuer", "i", "--jwt-audience", "a"]).unwrap();
    assert!(c.tokens_required());
    assert_eq!(
        (c.jwt_leeway, c.jwt_issuer.as_deref(), c.jwt_audience.as_deref()),
        (Duration::ZERO, Some("i"), Some("a"))
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ec.pem");
    let key = p256::SecretKey::random(&mut rand::thread_rng()).public_key();
    std::fs::write(&path, rsa::pkcs8::EncodePublicKey::to_public_key_pem(&key, Default::default()).unwrap()).unwrap();
    let c = with(&["--jwt-public-key-file", path.to_str().unwrap()]).unwrap();
    assert!(c.tokens_required(), "a public key alone is token mode");
    let key = c.jwt_public_key_file.expect("parsed at start-up");
    assert_eq!(key.algorithm(), jsonwebtoken::Algorithm::ES256);
    std::fs::write(&path, "garbage").unwrap();
    let e = with(&["--jwt-public-key-file", path.to_str().unwrap()]).unwrap_err();
    assert!(e.to_string().contains("CHAT_JWT_PUBLIC_KEY_FILE") && e.to_string().contains("not a PEM"), "{e}");
}

#[test]
fn listen_takes_host_names() {
    let c = with(&["--listen", "localhost:8080"]).unwrap();
    assert_eq!(c.listen.port(), 8080);
    assert!(c.listen.ip().is_loopback());
}

#[test]
fn computed_defaults_can_be_given() {
    let c = with(&["--shards", "3", "--workers", "2", "--node-id", "n1", "--rate-limit", "7"]).unwrap();
    assert_eq!((c.shards, c.workers, c.node_id.as_str(), c.rate_burst), (3, 2, "n1", 14));
    assert_eq!(with(&["--rate-limit", "7", "--rate-burst", "9"]).unwrap().rate_burst, 9);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(with(&["--shards", "2 x cores"]).unwrap().shards, 2 * cores);
}

#[test]
fn cluster_mode_needs_both_backends() {
    let c = with(&["--rabbit-mq-url", "amqp://g:g@h:5672/%2f", "--redis-addr", "r:6379", "--redis-password", "p@ss w"])
        .unwrap();
    let e = c.cluster.endpoints().expect("cluster mode");
    assert_eq!(e.redis.redis_settings().password(), Some("p@ss w"), "no URL encoding to get wrong");
    assert_eq!(e.redis.addr().to_string(), "r:6379");
    assert_eq!(c.cluster.name, "chatgate");
    let c =
        with(&["--rabbit-mq-url", "amqp://h", "--redis-url", "redis://x:1/2", "--redis-addr", "ignored:1"]).unwrap();
    let e = c.cluster.endpoints().unwrap();
    assert_eq!((e.redis.addr().to_string(), e.redis.redis_settings().db()), ("x:1".into(), 2));
    for (args, var) in [
        (&["--rabbit-mq-url", "amqp://h"][..], "REDIS_ADDR"),
        (&["--redis-addr", "r:1"][..], "RABBIT_MQ_URL"),
        (&["--rabbit-mq-url", "http://h", "--redis-addr", "r:1"][..], "RABBIT_MQ_URL"),
        (&["--rabbit-mq-url", "amqp://h", "--redis-addr", "r"][..], "REDIS_ADDR"),
        (&["--rabbit-mq-url", "amqp://h", "--redis-url", "http://r"][..], "REDIS_URL"),
    ] {
        let e = with(args).unwrap_err();
        assert!(e.to_string().contains(var), "{args:?}: {e}");
    }
    assert!(!with(&["--rabbit-mq-url", "", "--redis-addr", ""]).unwrap().is_cluster(), "empty is unset");
}

#[test]
fn backend_ca_files_are_read_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let (empty, missing) = (dir.path().join("empty.pem"), dir.path().join("missing.pem"));
    std::fs::write(&empty, "no certificate here\n").unwrap();
    let (empty, missing) = (empty.to_str().unwrap(), missing.to_str().unwrap());
    let tls = ["--rabbit-mq-url", "amqps://h", "--redis-url", "rediss://r:6380/"];
    for (extra, var) in [
        (["--redis-ca-file", missing], "CHAT_REDIS_CA_FILE"),
        (["--redis-ca-file", empty], "CHAT_REDIS_CA_FILE"),
        (["--amqp-ca-file", missing], "CHAT_AMQP_CA_FILE"),
        (["--amqp-ca-file", empty], "CHAT_AMQP_CA_FILE"),
    ] {
        let e = with(&[&tls[..], &extra[..]].concat()).unwrap_err();
        assert!(e.to_string().contains(var), "{extra:?}: {e}");
    }
    let plain = ["--rabbit-mq-url", "amqp://h", "--redis-url", "redis://r:6379/", "--redis-ca-file", empty];
    let e = with(&plain).unwrap_err();
    assert!(e.to_string().contains("CHAT_REDIS_CA_FILE"), "{e}");
    let plain = ["--rabbit-mq-url", "amqp://h", "--redis-url", "redis://r:6379/", "--amqp-ca-file", empty];
    let e = with(&plain).unwrap_err();
    assert!(e.to_string().contains("CHAT_AMQP_CA_FILE"), "{e}");
    let c = with(&tls).unwrap();
    assert!(matches!(c.cluster.endpoints().unwrap().redis.addr(), redis::ConnectionAddr::TcpTls { .. }));
}

#[test]
fn help_and_version_come_from_clap() {
    let e = with(&["--help"]).unwrap_err();
    assert_eq!(e.kind(), clap::error::ErrorKind::DisplayHelp);
    let help = e.to_string();
    for (var, _) in settings() {
        assert!(help.contains(&var), "--help lacks {var}");
    }
    assert_eq!(with(&["--version"]).unwrap_err().kind(), clap::error::ErrorKind::DisplayVersion);
    assert_eq!(with(&["--bogus"]).unwrap_err().kind(), clap::error::ErrorKind::UnknownArgument);
}

/// The README's configuration tables list exactly the variables clap reads, with the same
/// defaults (`unset` where there is none).
#[test]
fn readme_table_matches_the_definitions() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme.split("## Configuration").nth(1).expect("a Configuration section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let mut documented: Vec<(String, String)> = Vec::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        documented.push((cells[1].trim_matches('`').to_owned(), cells[2].to_owned()));
    }
    let defined = settings();
    for (var, default) in &defined {
        let Some((_, doc)) = documented.iter().find(|(v, _)| v == var) else {
            panic!("README's configuration table lacks `{var}`");
        };
        match default {
            Some(d) => assert_eq!(doc, &format!("`{d}`"), "default of {var}"),
            None => assert!(doc.starts_with("unset"), "{var} has no default; README says {doc:?}"),
        }
    }
    for (var, _) in &documented {
        assert!(defined.iter().any(|(v, _)| v == var), "README documents `{var}`, which is not a setting");
    }
}
