//! The packaging files, read as text (Dockerfile) and YAML (compose.yaml,
//! deploy/kubernetes/*.yaml): the settings the worker relies on once it runs in an
//! image or a pod. Each assertion names the file and the field, so that a setting
//! removed or changed by mistake fails here with a message saying what it is for.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

use serde::Deserialize;
use serde_yaml::Value;

use common::DEMO_ENV;

/// `DECREASE_TIMEOUT_SECONDS`' default: the longest a decrease in flight may wait.
const DECREASE_TIMEOUT_S: u64 = 35;
/// `HTTP_TIMEOUT_SECONDS`' default: the status update after the decrease.
const STATUS_UPDATE_S: u64 = 5;
/// What a stop must allow for: the order in hand, decrease then status update.
const STOP_NEEDS_S: u64 = DECREASE_TIMEOUT_S + STATUS_UPDATE_S;

const HEALTHCHECK: [&str; 2] = ["/ordermanagement", "healthcheck"];
const STATE_DIR: &str = "/var/lib/ordermanagement";

/// The two settings the Kubernetes recipes set for OTLP over HTTP (the compose file
/// uses the demo's block as it is, OTLP over gRPC).
const HTTP_OVERRIDES: [(&str, &str); 2] = [
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel-collector:4318"),
    ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
];

/// The demo's Order and Stock services, as its compose files name them.
const DEMO_ORDERS_URL: &str = "http://ms-order:5000";
const DEMO_STOCKS_URL: &str = "http://ms-stock:5001";
/// The demo's network, created outside its compose files.
const DEMO_NETWORK: &str = "otel-network";

fn read(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

// ------------------------------------------------------------------ YAML helpers

/// The value at a dotted path of mapping keys (`spec.template.spec`), if there is one.
fn get<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |v, key| v.get(key))
}

/// The value at `path`, or a panic naming `what` and the missing path.
fn at<'a>(value: &'a Value, path: &str, what: &str) -> &'a Value {
    get(value, path).unwrap_or_else(|| panic!("{what}: `{path}` is missing"))
}

/// A scalar as the text a program would see in its environment.
fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn text_at(value: &Value, path: &str, what: &str) -> String {
    text(at(value, path, what)).unwrap_or_else(|| {
        panic!(
            "{what}: `{path}` is not a scalar: {:?}",
            at(value, path, what)
        )
    })
}

fn seq<'a>(value: &'a Value, path: &str, what: &str) -> &'a [Value] {
    at(value, path, what)
        .as_sequence()
        .unwrap_or_else(|| panic!("{what}: `{path}` is not a list"))
}

fn strings(values: &[Value]) -> Vec<String> {
    values.iter().filter_map(text).collect()
}

fn u64_at(value: &Value, path: &str, what: &str) -> u64 {
    at(value, path, what)
        .as_u64()
        .unwrap_or_else(|| panic!("{what}: `{path}` is not a whole number"))
}

/// The directory part of an absolute file path.
fn dir_of(path: &str) -> &str {
    path.rsplit_once('/')
        .map(|(dir, _)| dir)
        .unwrap_or_else(|| panic!("{path:?} is not an absolute path"))
}

// ------------------------------------------------------------------ Dockerfile

/// One instruction: its keyword in upper case and the rest of the line.
struct Instruction {
    keyword: String,
    args: String,
}

/// A build stage: its FROM arguments and its instructions.
struct Stage {
    from: String,
    instructions: Vec<Instruction>,
}

impl Stage {
    /// The image it starts from, without `--platform=...` and `AS name`.
    fn base(&self) -> &str {
        self.from
            .split_whitespace()
            .find(|w| !w.starts_with("--"))
            .unwrap_or("")
    }

    fn name(&self) -> Option<&str> {
        let words: Vec<&str> = self.from.split_whitespace().collect();
        words
            .iter()
            .position(|w| w.eq_ignore_ascii_case("as"))
            .and_then(|i| words.get(i + 1).copied())
    }

    fn all(&self, keyword: &str) -> Vec<&str> {
        self.instructions
            .iter()
            .filter(|i| i.keyword == keyword)
            .map(|i| i.args.as_str())
            .collect()
    }

    /// The last instruction with this keyword (the one that counts for USER, CMD, ...).
    fn last(&self, keyword: &str) -> &str {
        self.all(keyword).pop().unwrap_or_else(|| {
            panic!(
                "Dockerfile: stage `FROM {}` has no {keyword} instruction",
                self.from
            )
        })
    }
}

/// The Dockerfile's stages, with comment lines dropped and `\` continuations joined.
fn dockerfile() -> Vec<Stage> {
    let mut logical = Vec::new();
    let mut pending = String::new();
    for line in read("Dockerfile").lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && pending.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                pending.push_str(head);
                pending.push(' ');
            }
            None => {
                pending.push_str(trimmed);
                logical.push(std::mem::take(&mut pending));
            }
        }
    }
    assert!(pending.is_empty(), "Dockerfile ends in a `\\` continuation");

    let mut stages: Vec<Stage> = Vec::new();
    for line in logical.iter().filter(|l| !l.trim().is_empty()) {
        let (keyword, args) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let instruction = Instruction {
            keyword: keyword.to_ascii_uppercase(),
            args: args.trim().to_string(),
        };
        if instruction.keyword == "FROM" {
            stages.push(Stage {
                from: instruction.args,
                instructions: Vec::new(),
            });
        } else {
            stages
                .last_mut()
                .unwrap_or_else(|| panic!("Dockerfile: `{line}` comes before any FROM"))
                .instructions
                .push(instruction);
        }
    }
    assert!(!stages.is_empty(), "Dockerfile has no FROM");
    stages
}

/// An exec-form (JSON array) argument list.
fn exec_form(args: &str, what: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| {
        panic!("Dockerfile: {what} `{args}` is not a JSON array (exec form): {e}")
    })
}

/// `1.95` or `1.95.0` (or `"1.89"`) as numbers, for comparing versions.
fn version(text: &str) -> Vec<u64> {
    text.trim_matches('"')
        .split('.')
        .map(|part| {
            part.parse()
                .unwrap_or_else(|_| panic!("{text:?} is not a numeric version"))
        })
        .collect()
}

/// A `key = "value"` line of Cargo.toml's [package] table.
fn cargo_package_field(key: &str) -> String {
    read("Cargo.toml")
        .lines()
        .take_while(|l| !l.starts_with('[') || l.starts_with("[package]"))
        .find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == key).then(|| v.trim().trim_matches('"').to_string())
        })
        .unwrap_or_else(|| panic!("Cargo.toml: no `{key}` in [package]"))
}

#[test]
fn the_image_is_a_non_root_scratch_image_running_the_worker() {
    let stages = dockerfile();
    let last = stages.last().unwrap();
    assert_eq!(
        last.base(),
        "scratch",
        "Dockerfile: the last stage (the default target) must be FROM scratch, not `{}`",
        last.from
    );
    assert_eq!(
        last.last("USER"),
        "65532:65532",
        "Dockerfile: the worker must run as the numeric non-root user and group 65532"
    );
    assert_eq!(
        exec_form(last.last("ENTRYPOINT"), "ENTRYPOINT"),
        ["/ordermanagement"],
        "Dockerfile: ENTRYPOINT must be the binary in exec form (no shell in scratch)"
    );
    assert_eq!(
        exec_form(last.last("CMD"), "CMD"),
        ["run"],
        "Dockerfile: the default command must be `run`"
    );
    assert_eq!(
        last.last("STOPSIGNAL"),
        "SIGTERM",
        "Dockerfile: the worker finishes its order and exits on SIGTERM"
    );
    let binary = last
        .all("COPY")
        .into_iter()
        .find(|c| c.ends_with(" /ordermanagement"))
        .expect("Dockerfile: the last stage must COPY the binary to /ordermanagement");
    assert!(
        binary.contains("x86_64-unknown-linux-gnu/release/ordermanagement"),
        "Dockerfile: the binary copied must be the static release build, not `{binary}`"
    );
    assert_eq!(
        last.last("LABEL")
            .split_whitespace()
            .find_map(|w| w.strip_prefix("org.opencontainers.image.version="))
            .map(|v| v.trim_matches('"')),
        Some(cargo_package_field("version").as_str()),
        "Dockerfile: the org.opencontainers.image.version label must be Cargo.toml's version"
    );
}

#[test]
fn the_image_keeps_its_state_on_a_volume_and_its_heartbeat_in_tmp() {
    let stages = dockerfile();
    let last = stages.last().unwrap();
    let volumes = last.all("VOLUME");
    assert!(
        !volumes.is_empty(),
        "Dockerfile: the last stage needs a VOLUME for the state file"
    );
    let env: BTreeMap<&str, &str> = last
        .all("ENV")
        .into_iter()
        .flat_map(str::split_whitespace)
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let state_file = env
        .get("STATE_FILE")
        .expect("Dockerfile: ENV STATE_FILE is missing");
    let volume_paths: Vec<String> = volumes
        .iter()
        .flat_map(|v| {
            if v.starts_with('[') {
                exec_form(v, "VOLUME")
            } else {
                v.split_whitespace().map(str::to_string).collect()
            }
        })
        .collect();
    assert!(
        volume_paths.iter().any(|p| p == dir_of(state_file)),
        "Dockerfile: STATE_FILE {state_file} must be on a VOLUME (found {volume_paths:?})"
    );
    let heartbeat = env
        .get("HEARTBEAT_FILE")
        .expect("Dockerfile: ENV HEARTBEAT_FILE is missing");
    assert_eq!(
        dir_of(heartbeat),
        "/tmp",
        "Dockerfile: the heartbeat belongs in /tmp, the one directory the image makes writable"
    );
    assert!(
        read(".dockerignore")
            .lines()
            .any(|l| l.trim().trim_end_matches('/') == "target"),
        ".dockerignore: target/ must stay out of the build context"
    );
}

#[test]
fn the_image_healthcheck_is_exec_form() {
    let stages = dockerfile();
    let healthcheck = stages.last().unwrap().last("HEALTHCHECK");
    let (options, command) = healthcheck
        .split_once("CMD")
        .unwrap_or_else(|| panic!("Dockerfile: HEALTHCHECK `{healthcheck}` has no CMD"));
    for option in ["--interval=", "--timeout=", "--retries="] {
        assert!(
            options.contains(option),
            "Dockerfile: HEALTHCHECK should set {option}…"
        );
    }
    assert_eq!(
        exec_form(command.trim(), "HEALTHCHECK CMD"),
        HEALTHCHECK,
        "Dockerfile: HEALTHCHECK must run `/ordermanagement healthcheck` in exec form"
    );
}

#[test]
fn the_builder_pins_its_toolchain_and_links_statically() {
    let stages = dockerfile();
    let builder = stages
        .iter()
        .find(|s| s.name() == Some("builder"))
        .expect("Dockerfile: no stage named `builder`");
    let tag = builder.base().strip_prefix("rust:").unwrap_or_else(|| {
        panic!(
            "Dockerfile: the builder must be FROM rust:…, not `{}`",
            builder.from
        )
    });
    let pinned = tag.split('-').next().unwrap();
    assert!(
        pinned.split('.').count() >= 2,
        "Dockerfile: the builder's toolchain must be pinned to a version like 1.95, not `{tag}`"
    );
    let minimum = cargo_package_field("rust-version");
    assert!(
        version(pinned) >= version(&minimum),
        "Dockerfile: the builder's Rust {pinned} is older than Cargo.toml's rust-version {minimum}"
    );

    // Every cargo build, the dependency layer's too (with other flags its compiled
    // dependencies would not be reused).
    let builds: Vec<&str> = stages
        .iter()
        .flat_map(|s| s.all("RUN"))
        .filter(|r| r.contains("cargo build"))
        .collect();
    assert!(
        builds.iter().any(|r| r.contains("--bin ordermanagement")),
        "Dockerfile: no RUN builds `--bin ordermanagement`"
    );
    for run in builds {
        assert!(
            run.contains("+crt-static"),
            "Dockerfile: `{run}` must link statically (RUSTFLAGS=\"-C target-feature=+crt-static\")"
        );
        assert!(
            run.contains("--target x86_64-unknown-linux-gnu"),
            "Dockerfile: `{run}` must name --target x86_64-unknown-linux-gnu (so RUSTFLAGS spare build scripts)"
        );
        assert!(
            run.contains("--locked"),
            "Dockerfile: `{run}` must build --locked"
        );
    }
}

// ------------------------------------------------------------------ compose.yaml

fn compose() -> Value {
    let mut value: Value = serde_yaml::from_str(&read("compose.yaml"))
        .unwrap_or_else(|e| panic!("compose.yaml is not valid YAML: {e}"));
    value
        .apply_merge()
        .unwrap_or_else(|e| panic!("compose.yaml: a `<<` merge is invalid: {e}"));
    value
}

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    at(compose, &format!("services.{name}"), "compose.yaml")
}

/// A service's environment, in either of compose's forms (a map, or `KEY=VALUE` lines).
fn compose_env(service: &Value, what: &str) -> BTreeMap<String, String> {
    match at(service, "environment", what) {
        Value::Mapping(map) => map
            .iter()
            .map(|(k, v)| {
                let key = text(k).unwrap_or_default();
                let value = text(v).unwrap_or_else(|| panic!("{what}: {key} is not a scalar"));
                (key, value)
            })
            .collect(),
        Value::Sequence(lines) => strings(lines)
            .iter()
            .map(|l| {
                let (k, v) = l.split_once('=').unwrap_or((l, ""));
                (k.to_string(), v.to_string())
            })
            .collect(),
        other => panic!("{what}: environment is neither a map nor a list: {other:?}"),
    }
}

/// A compose duration (`60s`, `1m30s`, `1h`) in seconds.
fn duration_s(text: &str) -> f64 {
    let mut total = 0.0;
    let mut number = String::new();
    let mut chars = text.trim().chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            number.push(c);
            continue;
        }
        let mut unit = c.to_string();
        while let Some(&next) = chars.peek() {
            if next.is_ascii_digit() {
                break;
            }
            unit.push(next);
            chars.next();
        }
        let scale = match unit.as_str() {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            "us" => 0.000_001,
            _ => panic!("{text:?}: unknown duration unit {unit:?}"),
        };
        let n: f64 = number
            .parse()
            .unwrap_or_else(|_| panic!("{text:?} is not a duration"));
        total += n * scale;
        number.clear();
    }
    assert!(
        number.is_empty(),
        "{text:?}: a duration needs a unit (s, m, h)"
    );
    total
}

/// The names of the services in a compose profile.
fn in_profile(compose: &Value, profile: &str) -> Vec<String> {
    at(compose, "services", "compose.yaml")
        .as_mapping()
        .expect("compose.yaml: services is not a map")
        .iter()
        .filter(|(_, s)| {
            get(s, "profiles")
                .and_then(Value::as_sequence)
                .is_some_and(|p| strings(p).iter().any(|p| p == profile))
        })
        .filter_map(|(name, _)| text(name))
        .collect()
}

/// Stop, health and state settings every worker service needs.
fn check_compose_worker(compose: &Value, name: &str) {
    let what = format!("compose.yaml, service {name}");
    let s = service(compose, name);
    let grace = text_at(s, "stop_grace_period", &what);
    assert!(
        duration_s(&grace) >= STOP_NEEDS_S as f64,
        "{what}: stop_grace_period {grace} must exceed the {DECREASE_TIMEOUT_S} s decrease timeout plus a {STATUS_UPDATE_S} s status update"
    );
    assert_eq!(
        strings(seq(s, "healthcheck.test", &what)),
        ["CMD", HEALTHCHECK[0], HEALTHCHECK[1]],
        "{what}: healthcheck.test must be the CMD (exec) form of `/ordermanagement healthcheck`"
    );
    let env = compose_env(s, &what);
    let state_file = env
        .get("STATE_FILE")
        .unwrap_or_else(|| panic!("{what}: STATE_FILE is not set"));
    let state_dir = dir_of(state_file);
    let declared = get(compose, "volumes").and_then(Value::as_mapping);
    let on_named_volume = seq(s, "volumes", &what).iter().any(|v| {
        let (source, target) = match v {
            Value::String(short) => {
                let mut parts = short.split(':');
                (
                    parts.next().map(str::to_string),
                    parts.next().map(str::to_string),
                )
            }
            long => (
                get(long, "source").and_then(text),
                get(long, "target").and_then(text),
            ),
        };
        target.as_deref() == Some(state_dir)
            && source
                .as_deref()
                .is_some_and(|src| declared.is_some_and(|d| d.contains_key(src)))
    });
    assert!(
        on_named_volume,
        "{what}: STATE_FILE's directory {state_dir} must be a named volume declared under top-level volumes"
    );
}

#[test]
fn compose_demo_service_keeps_the_demo_environment_as_it_is() {
    let compose = compose();
    let what = "compose.yaml, service ordermanagement";
    assert!(
        in_profile(&compose, "demo")
            .iter()
            .any(|s| s == "ordermanagement"),
        "{what}: must be in the `demo` profile"
    );

    // The shared block is the demo's, unchanged, so that it can be compared with it.
    let block: BTreeMap<String, String> = at(&compose, "x-otel-env", "compose.yaml")
        .as_mapping()
        .expect("compose.yaml: x-otel-env is not a map")
        .iter()
        .filter_map(|(k, v)| Some((text(k)?, text(v)?)))
        .collect();
    let demo: BTreeMap<String, String> = DEMO_ENV
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(
        block, demo,
        "compose.yaml: x-otel-env must be the demo's block as it is"
    );

    // And the service uses it as it is: OTLP over gRPC to the collector's port 4317.
    let env = compose_env(service(&compose, "ordermanagement"), what);
    for (key, demo_value) in DEMO_ENV {
        assert_eq!(
            env.get(key).map(String::as_str),
            Some(demo_value),
            "{what}: {key} must be {demo_value:?}, the demo's value"
        );
    }
    assert_eq!(
        env.get("API_URL_ORDERS").map(String::as_str),
        Some(DEMO_ORDERS_URL),
        "{what}: API_URL_ORDERS must be the demo's Order Service"
    );
    assert_eq!(
        env.get("API_URL_STOCKS").map(String::as_str),
        Some(DEMO_STOCKS_URL),
        "{what}: API_URL_STOCKS must be the demo's Stock Service"
    );

    assert!(
        strings(seq(service(&compose, "ordermanagement"), "networks", what))
            .iter()
            .any(|n| n == DEMO_NETWORK),
        "{what}: must join the demo's network {DEMO_NETWORK}"
    );
    assert_eq!(
        get(&compose, &format!("networks.{DEMO_NETWORK}.external")).and_then(Value::as_bool),
        Some(true),
        "compose.yaml: network {DEMO_NETWORK} is the demo's own: it must be declared external"
    );
}

#[test]
fn compose_workers_stop_gracefully_report_health_and_keep_their_state() {
    let compose = compose();
    for name in ["ordermanagement", "ordermanagement-local"] {
        check_compose_worker(&compose, name);
    }
}

#[test]
fn compose_local_profile_runs_the_worker_against_the_stand_in() {
    let compose = compose();
    let local = in_profile(&compose, "local");
    for name in ["stand-in", "ordermanagement-local"] {
        assert!(
            local.iter().any(|s| s == name),
            "compose.yaml: service {name} must be in the `local` profile (found {local:?})"
        );
    }

    let target = text_at(
        service(&compose, "stand-in"),
        "build.target",
        "compose.yaml, service stand-in",
    );
    assert!(
        dockerfile()
            .iter()
            .any(|s| s.name() == Some(target.as_str())),
        "compose.yaml: stand-in builds Dockerfile target {target:?}, which is no stage of the Dockerfile"
    );

    let what = "compose.yaml, service ordermanagement-local";
    let worker = service(&compose, "ordermanagement-local");
    let env = compose_env(worker, what);
    // The stand-in listens on 127.0.0.1 only: the worker reaches it there by sharing its
    // network namespace, or by its service name if it ever listens on all interfaces.
    let shares_namespace =
        get(worker, "network_mode").and_then(text).as_deref() == Some("service:stand-in");
    let hosts: &[&str] = if shares_namespace {
        &["127.0.0.1", "localhost"]
    } else {
        &["stand-in"]
    };
    for key in ["API_URL_ORDERS", "API_URL_STOCKS"] {
        let url = env
            .get(key)
            .unwrap_or_else(|| panic!("{what}: {key} is not set"));
        let host = url
            .strip_prefix("http://")
            .and_then(|rest| rest.split([':', '/']).next())
            .unwrap_or_else(|| panic!("{what}: {key} {url:?} is not an http:// URL"));
        assert!(
            hosts.contains(&host),
            "{what}: {key} {url:?} must point to the stand-in (host one of {hosts:?})"
        );
    }
    assert_eq!(
        env.get("OTEL_SDK_DISABLED").map(String::as_str),
        Some("true"),
        "{what}: telemetry must be off (OTEL_SDK_DISABLED=true): the local profile has no collector"
    );
}

// ------------------------------------------------------------------ Kubernetes

/// Every document of a multi-document YAML file.
fn k8s(rel: &str) -> Vec<Value> {
    let text = read(rel);
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            Value::deserialize(doc).unwrap_or_else(|e| panic!("{rel} is not valid YAML: {e}"))
        })
        .filter(|doc| !doc.is_null())
        .collect()
}

fn kind<'a>(docs: &'a [Value], kind: &str, rel: &str) -> &'a Value {
    docs.iter()
        .find(|d| get(d, "kind").and_then(Value::as_str) == Some(kind))
        .unwrap_or_else(|| panic!("{rel}: no {kind}"))
}

/// The pod spec and its one container.
fn pod_and_container<'a>(pod: &'a Value, what: &str) -> (&'a Value, &'a Value) {
    let containers = seq(pod, "containers", what);
    assert_eq!(containers.len(), 1, "{what}: expected one container");
    (pod, &containers[0])
}

/// A container's environment variable: inline `value`, the `valueFrom` source, or a
/// value from a ConfigMap of the same file named in `envFrom`.
enum Env<'a> {
    Value(String),
    From(&'a Value),
}

fn env<'a>(docs: &'a [Value], container: &'a Value, name: &str) -> Option<Env<'a>> {
    let inline = get(container, "env")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
        .find(|e| get(e, "name").and_then(Value::as_str) == Some(name));
    if let Some(entry) = inline {
        return match (get(entry, "value"), get(entry, "valueFrom")) {
            (Some(v), _) => text(v).map(Env::Value),
            (None, Some(from)) => Some(Env::From(from)),
            _ => None,
        };
    }
    let config_maps: Vec<&str> = get(container, "envFrom")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
        .filter_map(|e| get(e, "configMapRef.name").and_then(Value::as_str))
        .collect();
    docs.iter()
        .filter(|d| get(d, "kind").and_then(Value::as_str) == Some("ConfigMap"))
        .filter(|d| {
            get(d, "metadata.name")
                .and_then(Value::as_str)
                .is_some_and(|n| config_maps.contains(&n))
        })
        .find_map(|d| get(d, &format!("data.{name}")).and_then(text))
        .map(Env::Value)
}

fn env_value(docs: &[Value], container: &Value, name: &str, what: &str) -> String {
    match env(docs, container, name) {
        Some(Env::Value(v)) => v,
        Some(Env::From(_)) => panic!("{what}: {name} must be a plain value"),
        None => panic!("{what}: {name} is not set"),
    }
}

/// A securityContext field: the container's, else the pod's.
fn security<'a>(pod: &'a Value, container: &'a Value, field: &str) -> Option<&'a Value> {
    get(container, &format!("securityContext.{field}"))
        .or_else(|| get(pod, &format!("securityContext.{field}")))
}

/// What every worker pod needs: non-root, read-only root with /tmp writable, a stop
/// long enough for the order in hand, memory requests, and the state file on a mounted
/// volume, whose name it returns.
fn check_pod(docs: &[Value], pod: &Value, container: &Value, what: &str) -> String {
    assert_eq!(
        security(pod, container, "runAsNonRoot").and_then(Value::as_bool),
        Some(true),
        "{what}: runAsNonRoot must be true"
    );
    for id in ["runAsUser", "runAsGroup"] {
        assert_eq!(
            security(pod, container, id).and_then(Value::as_u64),
            Some(65532),
            "{what}: {id} must be 65532, the image's user"
        );
    }
    assert_eq!(
        get(container, "securityContext.readOnlyRootFilesystem").and_then(Value::as_bool),
        Some(true),
        "{what}: the container's readOnlyRootFilesystem must be true"
    );
    assert_eq!(
        get(container, "securityContext.allowPrivilegeEscalation").and_then(Value::as_bool),
        Some(false),
        "{what}: the container's allowPrivilegeEscalation must be false"
    );
    assert!(
        get(container, "securityContext.capabilities.drop")
            .and_then(Value::as_sequence)
            .is_some_and(|d| strings(d).iter().any(|c| c == "ALL")),
        "{what}: the container must drop ALL capabilities"
    );
    assert_eq!(
        security(pod, container, "seccompProfile.type").and_then(Value::as_str),
        Some("RuntimeDefault"),
        "{what}: seccompProfile.type must be RuntimeDefault"
    );

    let grace = u64_at(pod, "terminationGracePeriodSeconds", what);
    assert!(
        grace > STOP_NEEDS_S,
        "{what}: terminationGracePeriodSeconds {grace} must exceed the {DECREASE_TIMEOUT_S} s decrease timeout plus a {STATUS_UPDATE_S} s status update"
    );
    at(container, "resources.requests.memory", what);

    let mounts = seq(container, "volumeMounts", what);
    let mount_of = |path: &str| {
        mounts
            .iter()
            .find(|m| get(m, "mountPath").and_then(Value::as_str) == Some(path))
            .and_then(|m| get(m, "name").and_then(text))
    };
    let tmp = mount_of("/tmp").unwrap_or_else(|| {
        panic!("{what}: nothing is mounted at /tmp (the heartbeat's directory)")
    });
    assert!(
        seq(pod, "volumes", what).iter().any(|v| {
            get(v, "name").and_then(Value::as_str) == Some(tmp.as_str())
                && get(v, "emptyDir").is_some()
        }),
        "{what}: /tmp must be an emptyDir volume (the root filesystem is read-only)"
    );

    let state_file = env_value(docs, container, "STATE_FILE", what);
    mount_of(dir_of(&state_file)).unwrap_or_else(|| {
        panic!(
            "{what}: STATE_FILE {state_file} must be on a mounted volume, at {}",
            dir_of(&state_file)
        )
    })
}

#[test]
fn cronjob_runs_once_a_minute_without_overlap_or_retries() {
    let rel = "deploy/kubernetes/cronjob.yaml";
    let docs = k8s(rel);
    let cron = kind(&docs, "CronJob", rel);
    let what = format!("{rel}, CronJob");
    assert_eq!(
        text_at(cron, "spec.concurrencyPolicy", &what),
        "Forbid",
        "{what}: two runs at once would handle the same orders"
    );
    at(cron, "spec.startingDeadlineSeconds", &what);
    at(cron, "spec.jobTemplate.spec.activeDeadlineSeconds", &what);
    assert_eq!(
        u64_at(cron, "spec.jobTemplate.spec.backoffLimit", &what),
        0,
        "{what}: exit 1 means work left for the next scheduled run, not a Job retry"
    );
    let (pod, container) = pod_and_container(
        at(cron, "spec.jobTemplate.spec.template.spec", &what),
        &what,
    );
    assert_eq!(
        text_at(pod, "restartPolicy", &what),
        "Never",
        "{what}: restartPolicy must be Never"
    );
    assert_eq!(
        strings(seq(container, "args", &what)),
        ["once"],
        "{what}: the container must run `once`"
    );

    let state = check_pod(&docs, pod, container, &what);
    let claim = seq(pod, "volumes", &what)
        .iter()
        .find(|v| get(v, "name").and_then(text).as_deref() == Some(state.as_str()))
        .and_then(|v| get(v, "persistentVolumeClaim.claimName").and_then(text))
        .unwrap_or_else(|| {
            panic!("{what}: the state volume {state:?} must be a persistentVolumeClaim")
        });
    assert!(
        docs.iter().any(|d| {
            get(d, "kind").and_then(Value::as_str) == Some("PersistentVolumeClaim")
                && get(d, "metadata.name").and_then(text).as_deref() == Some(claim.as_str())
        }),
        "{rel}: no PersistentVolumeClaim named {claim:?}"
    );
}

#[test]
fn statefulset_shards_by_pod_index_and_restarts_only_a_stuck_worker() {
    let rel = "deploy/kubernetes/statefulset.yaml";
    let docs = k8s(rel);
    let set = kind(&docs, "StatefulSet", rel);
    let what = format!("{rel}, StatefulSet");
    let (pod, container) = pod_and_container(at(set, "spec.template.spec", &what), &what);

    assert_eq!(
        strings(seq(container, "args", &what)),
        ["run"],
        "{what}: the container must run `run`"
    );
    let replicas = u64_at(set, "spec.replicas", &what);
    assert_eq!(
        env_value(&docs, container, "SHARD_COUNT", &what),
        replicas.to_string(),
        "{what}: SHARD_COUNT must equal spec.replicas, or orders are missed or shared"
    );
    match env(&docs, container, "SHARD_INDEX") {
        Some(Env::From(from)) => assert_eq!(
            get(from, "fieldRef.fieldPath").and_then(Value::as_str),
            Some("metadata.labels['apps.kubernetes.io/pod-index']"),
            "{what}: SHARD_INDEX must come from the pod-index label"
        ),
        _ => panic!("{what}: SHARD_INDEX must be set from the downward API (valueFrom.fieldRef)"),
    }
    assert_eq!(
        text_at(set, "spec.podManagementPolicy", &what),
        "Parallel",
        "{what}: the replicas are independent: podManagementPolicy Parallel"
    );
    let service = text_at(set, "spec.serviceName", &what);
    assert!(
        docs.iter().any(|d| {
            get(d, "kind").and_then(Value::as_str) == Some("Service")
                && get(d, "metadata.name").and_then(text).as_deref() == Some(service.as_str())
                && get(d, "spec.clusterIP").and_then(Value::as_str) == Some("None")
        }),
        "{rel}: spec.serviceName {service:?} must be a headless Service of the same file"
    );

    assert_eq!(
        strings(seq(container, "livenessProbe.exec.command", &what)),
        HEALTHCHECK,
        "{what}: the liveness probe must run `/ordermanagement healthcheck`"
    );
    assert!(
        get(container, "readinessProbe").is_none(),
        "{what}: no readinessProbe: no traffic comes to the worker"
    );

    let state = check_pod(&docs, pod, container, &what);
    assert!(
        seq(set, "spec.volumeClaimTemplates", &what)
            .iter()
            .any(|t| get(t, "metadata.name").and_then(text).as_deref() == Some(state.as_str())),
        "{what}: the state file's volume {state:?} must come from volumeClaimTemplates (one per replica)"
    );
    assert_eq!(
        dir_of(&env_value(&docs, container, "STATE_FILE", &what)),
        STATE_DIR,
        "{what}: STATE_FILE must be in {STATE_DIR}"
    );
}

#[test]
fn kubernetes_recipes_share_one_environment_for_otlp_over_http() {
    let mut maps = Vec::new();
    for rel in [
        "deploy/kubernetes/cronjob.yaml",
        "deploy/kubernetes/statefulset.yaml",
    ] {
        let docs = k8s(rel);
        let map = kind(&docs, "ConfigMap", rel).clone();
        for (key, value) in HTTP_OVERRIDES {
            assert_eq!(
                get(&map, &format!("data.{key}")).and_then(text).as_deref(),
                Some(value),
                "{rel}: ConfigMap {key} must be {value:?}"
            );
        }
        maps.push(map);
    }
    assert_eq!(
        maps[0], maps[1],
        "the ConfigMaps of cronjob.yaml and statefulset.yaml must be equal"
    );
}

// ------------------------------------------------------------------ names and types

/// The variables the binary reads, as its own `--help` lists them, plus the
/// OpenTelemetry SDK's (`OTEL_*`) and `RUST_LOG`.
fn variables_the_worker_reads() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for command in ["run", "once", "healthcheck"] {
        let out = common::worker_command()
            .args(["help", command])
            .output()
            .expect("the binary's help");
        // The help is wrapped: `[env:` and its name may stand on two lines.
        let help = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        for part in help.split("[env: ").skip(1) {
            let name: String = part
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || *c == '_')
                .collect();
            names.insert(name);
        }
    }
    assert!(names.contains("API_URL_ORDERS") && names.contains("HEALTHCHECK_MAX_AGE_SECONDS"));
    names
}

fn read_by_the_worker(name: &str, known: &BTreeSet<String>) -> bool {
    known.contains(name) || name.starts_with("OTEL_") || name == "RUST_LOG"
}

#[test]
fn every_variable_set_is_one_the_worker_reads_and_kubernetes_values_are_strings() {
    let known = variables_the_worker_reads();
    // compose.yaml: every worker service's environment.
    let compose = compose();
    for name in ["ordermanagement", "ordermanagement-local"] {
        for key in compose_env(service(&compose, name), name).keys() {
            assert!(
                read_by_the_worker(key, &known),
                "compose.yaml {name}: {key} is read by nothing"
            );
        }
    }
    // Kubernetes: ConfigMap data and container env, whose values must be strings (the
    // API refuses a YAML number or boolean there).
    for rel in [
        "deploy/kubernetes/cronjob.yaml",
        "deploy/kubernetes/statefulset.yaml",
    ] {
        let docs = k8s(rel);
        let mut checked = 0;
        for doc in &docs {
            if doc.get("kind").and_then(Value::as_str) == Some("ConfigMap") {
                for (k, v) in at(doc, "data", rel).as_mapping().expect("ConfigMap data") {
                    let key = k.as_str().unwrap_or_default();
                    assert!(
                        v.is_string(),
                        "{rel}: ConfigMap value of {key} must be a string: {v:?}"
                    );
                    assert!(
                        read_by_the_worker(key, &known),
                        "{rel}: {key} is read by nothing"
                    );
                    checked += 1;
                }
            }
        }
        let workload = docs
            .iter()
            .find(|d| {
                matches!(
                    d.get("kind").and_then(Value::as_str),
                    Some("CronJob" | "StatefulSet")
                )
            })
            .expect("a workload");
        let containers = walk_containers(workload);
        assert!(!containers.is_empty(), "{rel}: no container");
        for container in containers {
            for e in get(container, "env")
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
            {
                let key = at(e, "name", rel).as_str().unwrap_or_default();
                if let Some(v) = e.get("value") {
                    assert!(
                        v.is_string(),
                        "{rel}: env value of {key} must be a string: {v:?}"
                    );
                }
                assert!(
                    read_by_the_worker(key, &known) || key == "POD_NAME",
                    "{rel}: {key} is read by nothing"
                );
                checked += 1;
            }
        }
        assert!(checked >= 5, "{rel}: only {checked} variables found");
    }
}

/// Every `containers` entry anywhere under `value`.
fn walk_containers(value: &Value) -> Vec<&Value> {
    match value {
        Value::Mapping(map) => map
            .iter()
            .flat_map(|(k, v)| {
                if k.as_str() == Some("containers") {
                    v.as_sequence()
                        .map(|s| s.iter().collect())
                        .unwrap_or_default()
                } else {
                    walk_containers(v)
                }
            })
            .collect(),
        Value::Sequence(items) => items.iter().flat_map(walk_containers).collect(),
        _ => Vec::new(),
    }
}

// ------------------------------------------------------------------ Grafana: traces

/// The dashboard's JSON (`tests/telemetry.rs` checks its PromQL against the metrics the
/// worker exports; here, its Tempo side and its outcome panel, which need no worker).
fn dashboard() -> serde_json::Value {
    let rel = "deploy/grafana/dashboards/ordermanagement.json";
    serde_json::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not valid JSON: {e}"))
}

#[test]
fn the_outcome_panel_gives_every_outcome_a_colour_and_a_word() {
    let dashboard = dashboard();
    let panel = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .find(|p| p["title"] == "Orders per second by outcome")
        .expect("dashboard: no panel `Orders per second by outcome`");
    let coloured: BTreeSet<&str> = panel["fieldConfig"]["overrides"]
        .as_array()
        .expect("overrides")
        .iter()
        .filter(|o| o["matcher"]["id"] == "byName")
        .filter(|o| o["properties"].to_string().contains("fixedColor"))
        .filter_map(|o| o["matcher"]["options"].as_str())
        .collect();
    let description = panel["description"].as_str().unwrap_or_default();
    for name in ordermanagement::Outcome::NAMES {
        assert!(
            coloured.contains(name),
            "Orders per second by outcome: no fixed colour for outcome `{name}`"
        );
        assert!(
            description.contains(&format!(" {name} (")),
            "Orders per second by outcome: the description does not say what `{name}` is"
        );
    }
}

/// A TraceQL literal, as a comparison's right-hand side.
#[derive(Debug, Clone, PartialEq)]
enum Literal {
    Str(String),
    Int(i64),
    Float(f64),
    Duration(String),
    /// `error`, `ok`, `server`, `true`, `nil`, ...
    Keyword(String),
}

/// One `field op value` of a spanset filter.
#[derive(Debug, Clone, PartialEq)]
struct Condition {
    field: String,
    op: String,
    value: Literal,
}

/// What a query selects spans by, and the fields a `select(...)` adds to the results.
#[derive(Debug, Default)]
struct TraceQl {
    conditions: Vec<Condition>,
    selected: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Punct(&'static str),
    Word(String),
    Literal(Literal),
}

const PUNCTUATION: [&str; 19] = [
    "&&", "||", "!=", ">=", "<=", "=~", "!~", ">>", "<<", "=", ">", "<", "~", "{", "}", "(", ")",
    "|", ",",
];
const COMPARISONS: [&str; 8] = ["=", "!=", ">", ">=", "<", "<=", "=~", "!~"];
const SPANSET_OPERATORS: [&str; 7] = ["&&", "||", ">>", "<<", ">", "<", "~"];
const DURATION_UNITS: [&str; 6] = ["ns", "us", "ms", "s", "m", "h"];
/// Unscoped intrinsics, and the values of the enum ones.
const INTRINSICS: [&str; 5] = ["name", "status", "duration", "kind", "statusMessage"];
const STATUSES: [&str; 3] = ["error", "ok", "unset"];
const KINDS: [&str; 6] = [
    "server",
    "client",
    "producer",
    "consumer",
    "internal",
    "unspecified",
];

fn traceql_tokens(query: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = query.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '"' {
            let mut s = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err(format!("an unterminated string at {s:?}")),
                    Some('"') => break,
                    Some('\\') => {
                        match chars.get(i + 1) {
                            Some(&e @ ('"' | '\\')) => s.push(e),
                            other => return Err(format!("escape \\{other:?} in a string")),
                        }
                        i += 1;
                    }
                    Some(&c) => s.push(c),
                }
                i += 1;
            }
            i += 1;
            tokens.push(Token::Literal(Literal::Str(s)));
        } else if c.is_ascii_digit() {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            let text: String = chars[start..i].iter().collect();
            let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
            let unit = &text[digits.len()..];
            let literal = if !unit.is_empty() {
                if !DURATION_UNITS.contains(&unit) || digits.parse::<f64>().is_err() {
                    return Err(format!("{text:?} is not a duration"));
                }
                Literal::Duration(text.clone())
            } else if let Ok(n) = text.parse::<i64>() {
                Literal::Int(n)
            } else {
                Literal::Float(
                    text.parse()
                        .map_err(|_| format!("{text:?}: a bad number"))?,
                )
            };
            tokens.push(Token::Literal(literal));
        } else if c.is_ascii_alphabetic() || c == '_' || c == '.' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '_' | '.' | ':'))
            {
                i += 1;
            }
            tokens.push(Token::Word(chars[start..i].iter().collect()));
        } else {
            let rest: String = chars[i..].iter().take(2).collect();
            let punct = PUNCTUATION
                .iter()
                .find(|p| rest.starts_with(**p))
                .ok_or_else(|| format!("unexpected {c:?}"))?;
            i += punct.chars().count();
            tokens.push(Token::Punct(punct));
        }
    }
    Ok(tokens)
}

/// A field: a scoped attribute (`span.x`, `resource.x`) or an intrinsic (`name`,
/// `span:name`, `trace:duration`); an unscoped `.x` is refused, as it makes Tempo look
/// in every scope.
fn check_field(field: &str) -> Result<(), String> {
    let scoped = ["span.", "resource."].iter().any(|scope| {
        field
            .strip_prefix(scope)
            .is_some_and(|name| !name.is_empty() && name.split('.').all(|part| !part.is_empty()))
    });
    let intrinsic = INTRINSICS.contains(&field)
        || ["span:", "trace:"].iter().any(|scope| {
            field
                .strip_prefix(scope)
                .is_some_and(|name| name.chars().all(|c| c.is_ascii_alphabetic()))
        });
    if scoped || intrinsic {
        Ok(())
    } else {
        Err(format!(
            "{field:?} is neither a span./resource. attribute nor an intrinsic"
        ))
    }
}

/// The value an intrinsic compares with must be of its type.
fn check_value(field: &str, value: &Literal) -> Result<(), String> {
    let intrinsic = field.rsplit(':').next().unwrap_or(field);
    let fits = match (intrinsic, value) {
        ("duration", v) => matches!(v, Literal::Duration(_)),
        ("name" | "statusMessage" | "rootName" | "rootService", v) => matches!(v, Literal::Str(_)),
        ("status", Literal::Keyword(k)) => STATUSES.contains(&k.as_str()),
        ("kind", Literal::Keyword(k)) => KINDS.contains(&k.as_str()),
        ("status" | "kind", _) => false,
        _ => true,
    };
    if fits {
        Ok(())
    } else {
        Err(format!("{field} cannot be compared with {value:?}"))
    }
}

/// Parses the TraceQL this dashboard uses: spansets `{ field op value && ... }` joined by
/// spanset operators, then `| select(field, ...)` stages. Anything else is an error, so
/// a new construct in a panel fails here until this learns it.
fn parse_traceql(query: &str) -> Result<TraceQl, String> {
    let tokens = traceql_tokens(query)?;
    let mut at = 0;
    let mut out = TraceQl::default();
    let punct = |at: usize, p: &str| matches!(tokens.get(at), Some(Token::Punct(q)) if *q == p);
    let word = |at: usize| match tokens.get(at) {
        Some(Token::Word(w)) => Some(w.clone()),
        _ => None,
    };
    loop {
        if !punct(at, "{") {
            return Err(format!("a spanset must open with `{{` at token {at}"));
        }
        at += 1;
        while !punct(at, "}") {
            let field = word(at).ok_or_else(|| format!("a field expected at token {at}"))?;
            check_field(&field)?;
            let op = match tokens.get(at + 1) {
                Some(Token::Punct(p)) if COMPARISONS.contains(p) => p.to_string(),
                other => return Err(format!("a comparison after {field}, not {other:?}")),
            };
            let value = match tokens.get(at + 2) {
                Some(Token::Literal(l)) => l.clone(),
                Some(Token::Word(w))
                    if STATUSES.contains(&w.as_str())
                        || KINDS.contains(&w.as_str())
                        || ["true", "false", "nil"].contains(&w.as_str()) =>
                {
                    Literal::Keyword(w.clone())
                }
                other => return Err(format!("a value after {field} {op}, not {other:?}")),
            };
            check_value(&field, &value)?;
            out.conditions.push(Condition { field, op, value });
            at += 3;
            if punct(at, "&&") || punct(at, "||") {
                at += 1;
                if punct(at, "}") {
                    return Err("`&&` or `||` before `}`".into());
                }
            } else if !punct(at, "}") {
                return Err(format!("`&&`, `||` or `}}` expected at token {at}"));
            }
        }
        at += 1;
        match tokens.get(at) {
            Some(Token::Punct(p)) if SPANSET_OPERATORS.contains(p) => at += 1,
            _ => break,
        }
    }
    while punct(at, "|") {
        if word(at + 1).as_deref() != Some("select") || !punct(at + 2, "(") {
            return Err(format!(
                "only `| select(...)` stages are known, at token {at}"
            ));
        }
        at += 3;
        loop {
            let field = word(at).ok_or_else(|| format!("a field expected at token {at}"))?;
            check_field(&field)?;
            out.selected.push(field);
            at += 1;
            if punct(at, ",") {
                at += 1;
            } else if punct(at, ")") {
                at += 1;
                break;
            } else {
                return Err(format!("`,` or `)` expected at token {at}"));
            }
        }
    }
    match tokens.get(at) {
        None => Ok(out),
        Some(t) => Err(format!("unexpected {t:?} at token {at}")),
    }
}

/// Every value a dashboard variable can take, as Grafana would put it in a query.
fn variable_values(variable: &serde_json::Value) -> Vec<String> {
    match variable["type"].as_str() {
        Some("custom") => variable["query"]
            .as_str()
            .unwrap_or_default()
            .split(',')
            .map(|v| v.trim().to_string())
            .collect(),
        _ => vec![
            variable["current"]["value"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        ],
    }
}

/// A Tempo panel's TraceQL, with `$order_id` set to `order_id` and every other variable
/// to each of its values in turn; parsed, or a panic naming the panel.
fn tempo_queries(
    dashboard: &serde_json::Value,
    panel: &serde_json::Value,
    order_id: &str,
) -> Vec<TraceQl> {
    let title = panel["title"].as_str().unwrap_or_default();
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("variables");
    let mut parsed = Vec::new();
    for target in panel["targets"].as_array().expect("targets") {
        assert_eq!(
            (
                target["datasource"]["type"].as_str(),
                target["datasource"]["uid"].as_str()
            ),
            (Some("tempo"), Some("${traces}")),
            "{title}: a target's data source must be the `traces` variable's Tempo"
        );
        assert_eq!(
            target["queryType"], "traceql",
            "{title}: a Tempo target must be a TraceQL search"
        );
        let query = target["query"].as_str().expect("a TraceQL query");
        let mut expanded = vec![query.replace("$order_id", order_id)];
        for v in variables {
            let name = format!("${}", v["name"].as_str().unwrap_or_default());
            if query.contains(&name) && name != "$order_id" {
                expanded = expanded
                    .iter()
                    .flat_map(|q| variable_values(v).into_iter().map(|x| q.replace(&name, &x)))
                    .collect();
            }
        }
        for q in expanded {
            assert!(
                !q.contains('$'),
                "{title}: a variable the dashboard lacks in {query}"
            );
            parsed
                .push(parse_traceql(&q).unwrap_or_else(|e| panic!("{title}: TraceQL {q:?}: {e}")));
        }
    }
    assert!(!parsed.is_empty(), "{title}: no query");
    parsed
}

fn tempo_panels(dashboard: &serde_json::Value) -> Vec<&serde_json::Value> {
    dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .filter(|p| p["datasource"]["type"] == "tempo")
        .collect()
}

const ORDER_ID: &str = "span.ordermanagement.order.id";
const ORDER_OUTCOME: &str = "span.ordermanagement.order.outcome";

/// Whether the query selects the worker's `order` spans (the roots of the order traces).
fn selects_order_spans(q: &TraceQl) -> bool {
    let is = |field: &str, value: &str| {
        q.conditions
            .iter()
            .any(|c| c.field == field && c.op == "=" && c.value == Literal::Str(value.to_string()))
    };
    is("name", "order") && is("resource.service.name", "ordermanagement")
}

#[test]
fn every_tempo_panel_of_the_dashboard_is_traceql_this_test_can_parse() {
    let dashboard = dashboard();
    let panels = tempo_panels(&dashboard);
    assert!(panels.len() >= 4, "{} Tempo panels", panels.len());
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or_default();
        assert_eq!(panel["datasource"]["uid"], "${traces}", "{title}");
        for target in panel["targets"].as_array().expect("targets") {
            assert!(
                target["limit"]
                    .as_u64()
                    .is_some_and(|l| (1..=100).contains(&l)),
                "{title}: a search needs a `limit` of traces (1 to 100)"
            );
            assert!(
                ["traces", "spans"].contains(&target["tableType"].as_str().unwrap_or_default()),
                "{title}: tableType must be `traces` or `spans`: both link to the trace"
            );
        }
        tempo_queries(&dashboard, panel, "17");
    }
}

#[test]
fn the_dashboard_finds_an_order_trace_by_its_id() {
    let dashboard = dashboard();
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("variables");
    let variable = variables
        .iter()
        .find(|v| v["name"] == "order_id")
        .expect("dashboard: no `order_id` variable");
    assert_eq!(variable["type"], "textbox", "order_id must be a text box");
    assert_eq!(variable["label"], "Order id");
    assert_eq!(
        (
            variable["query"].as_str(),
            variable["current"]["value"].as_str()
        ),
        (Some(""), Some("")),
        "order_id must be empty by default"
    );
    assert_ne!(
        variable["skipUrlSync"], true,
        "order_id must stay in the URL (a link can name the order: ?var-order_id=17)"
    );

    let panels: Vec<_> = tempo_panels(&dashboard)
        .into_iter()
        .filter(|p| p.to_string().contains("$order_id"))
        .collect();
    assert_eq!(panels.len(), 1, "one Tempo panel reads $order_id");
    let panel = panels[0];
    let title = panel["title"].as_str().unwrap_or_default();
    assert_eq!(
        panel["targets"][0]["tableType"], "traces",
        "{title}: one row per trace, its trace ID a link to the trace"
    );
    for q in tempo_queries(&dashboard, panel, "17") {
        assert!(
            selects_order_spans(&q),
            "{title}: must select the worker's `order` spans: {q:?}"
        );
        assert!(
            q.conditions.contains(&Condition {
                field: ORDER_ID.into(),
                op: "=".into(),
                value: Literal::Int(17),
            }),
            "{title}: must compare {ORDER_ID} with $order_id as an integer (no quotes): {q:?}"
        );
    }
    // The box left empty makes no valid query (the panel says so).
    for target in panel["targets"].as_array().unwrap() {
        let query = target["query"].as_str().unwrap().replace("$order_id", "");
        assert!(parse_traceql(&query).is_err(), "{query}");
    }
}

#[test]
fn the_dashboard_lists_the_slowest_orders() {
    let dashboard = dashboard();
    let panel = tempo_panels(&dashboard)
        .into_iter()
        .find(|p| p["title"] == "Slowest orders")
        .expect("dashboard: no Tempo panel `Slowest orders`");
    let target = &panel["targets"][0];
    assert_eq!(
        target["tableType"], "spans",
        "Slowest orders: one row per order span, with its id, outcome and duration"
    );
    assert_eq!(
        panel["options"]["sortBy"][0],
        serde_json::json!({"displayName": "Duration", "desc": true}),
        "Slowest orders: longest first"
    );
    let threshold = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "slower_than")
        .expect("dashboard: no `slower_than` variable");
    assert!(
        variable_values(threshold)
            .contains(&threshold["current"]["value"].as_str().unwrap().into()),
        "slower_than's default must be one of its values"
    );
    let queries = tempo_queries(&dashboard, panel, "17");
    assert_eq!(queries.len(), variable_values(threshold).len());
    for q in queries {
        assert!(selects_order_spans(&q), "Slowest orders: {q:?}");
        assert!(
            q.conditions
                .iter()
                .any(|c| c.field == "duration" && c.op == ">"),
            "Slowest orders: must keep the order spans longer than $slower_than: {q:?}"
        );
        for field in [ORDER_ID, ORDER_OUTCOME] {
            assert!(
                q.selected.iter().any(|s| s == field),
                "Slowest orders: must select {field}: {q:?}"
            );
        }
    }
}

#[test]
fn the_traceql_check_refuses_what_tempo_would() {
    let ok = parse_traceql(
        r#"{ resource.service.name = "a\"b" && name = "order" && span.x.id = 17 } | select(span.x.id)"#,
    )
    .unwrap();
    assert_eq!(ok.conditions.len(), 3);
    assert_eq!(ok.conditions[0].value, Literal::Str("a\"b".into()));
    assert_eq!(ok.selected, ["span.x.id"]);
    parse_traceql("{resource.service.name=\"om\" && status=error}").unwrap();
    parse_traceql("{ duration>1.5s } && { kind = client }").unwrap();
    for bad in [
        "{ name = \"order\"",
        "name = \"order\" }",
        "{ name = \"order\" }}",
        "{ name = \"order }",
        "{ .ordermanagement.order.id = 17 }",
        "{ ordermanagement.order.id = 17 }",
        "{ span. = 17 }",
        "{ span.ordermanagement.order.id = }",
        "{ span.ordermanagement.order.id 17 }",
        "{ name = order }",
        "{ duration > 1 }",
        "{ duration > 1x }",
        "{ status = \"error\" }",
        "{ name = \"order\" && }",
        "{ name = \"order\" } | select()",
        "{ name = \"order\" } | select(span.a",
        "{ name = \"order\" } | count() > 2",
        "{ name = \"order\" } {}",
    ] {
        assert!(parse_traceql(bad).is_err(), "accepted: {bad}");
    }
}
