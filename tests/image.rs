//! The container image's runtime, without a container engine: the static binary built
//! exactly as the Dockerfile builds it, run the way the image runs it — as PID 1 of a new
//! PID namespace, chrooted into a directory holding only the binary, `/etc/hosts`,
//! `/etc/resolv.conf`, `/tmp` and the state directory owned by 65532, as uid 65532 —
//! against the stand-in services, the Order Service reached by a name from that
//! `/etc/hosts`, the Stock Service by a name only a DNS server on loopback knows.
//!
//! Runs only when asked for, as `.ci/run` does: `ORDERMANAGEMENT_IMAGE_TEST=1 cargo test
//! --test image`, because it builds a third, static release tree (about a minute and
//! 200 MB in `target/image`). Needs root (for `unshare --pid` and `chroot`). When not
//! asked for, or not root, it says so on stderr and how to run it.

mod common;

use std::fs;
use std::net::UdpSocket;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::Running;
use standin::{Knobs, Stack, WOODS};

/// The Dockerfile's build command, as its RUN line has it.
const TARGET: &str = "x86_64-unknown-linux-gnu";
const RUSTFLAGS: &str = "-C target-feature=+crt-static";
const BUILD_LIMIT: Duration = Duration::from_secs(1_800);
const UID: &str = "65532";
const HOST: &str = "shop.test";
/// A name only the DNS server below resolves.
const DNS_HOST: &str = "stock.dns.test";
/// A loopback address of its own for that server (all of 127/8 is loopback on Linux),
/// so that a local resolver on 127.0.0.1:53 or 127.0.0.53:53 is no obstacle.
const DNS_ADDR: &str = "127.0.0.77";

/// The variable that asks for this test.
const ASK: &str = "ORDERMANAGEMENT_IMAGE_TEST";

fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Builds the static binary in its own target directory (as the image's builder stage
/// does) and returns its path.
fn build_static() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target_dir = root.join("target").join("image");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .env("RUSTFLAGS", RUSTFLAGS)
        .env("CARGO_TARGET_DIR", &target_dir)
        .args(["build", "--release", "--locked", "--target", TARGET])
        .args(["--bin", "ordermanagement"]);
    let out = Running::start(&mut cmd)
        .wait_for(BUILD_LIMIT)
        .expect("the static build finished in time");
    assert!(
        out.status.success(),
        "static build failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    target_dir
        .join(TARGET)
        .join("release")
        .join("ordermanagement")
}

/// The image's file system: `/ordermanagement`, `/etc/hosts`, `/tmp` (1777).
struct Root(PathBuf);

impl Root {
    fn new(binary: &Path) -> Root {
        let dir = std::env::temp_dir().join(format!("om-image-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("etc")).unwrap();
        fs::create_dir_all(dir.join("tmp")).unwrap();
        let state = dir.join("var/lib/ordermanagement");
        fs::create_dir_all(&state).unwrap();
        std::os::unix::fs::chown(&state, Some(65532), Some(65532)).unwrap();
        fs::set_permissions(&state, fs::Permissions::from_mode(0o750)).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(dir.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
        fs::copy(binary, dir.join("ordermanagement")).unwrap();
        fs::write(
            dir.join("etc/hosts"),
            format!("127.0.0.1 {HOST} localhost\n"),
        )
        .unwrap();
        fs::write(
            dir.join("etc/resolv.conf"),
            format!("nameserver {DNS_ADDR}\noptions timeout:1 attempts:2\n"),
        )
        .unwrap();
        Root(dir)
    }

    /// The binary, chrooted here as uid 65532, with an empty environment plus `env`.
    fn command(&self, env: &[(&str, String)], args: &[&str], pid_namespace: bool) -> Command {
        let mut cmd = Command::new("unshare");
        // A container engine sets PATH too; here it lets unshare find chroot.
        cmd.env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        if pid_namespace {
            // --fork: the chrooted binary is PID 1 of the new namespace; --kill-child:
            // it dies with `unshare` if the test is cut short.
            cmd.args(["--pid", "--fork", "--kill-child"]);
        }
        cmd.args(["--", "chroot", &format!("--userspec={UID}:{UID}")])
            .arg(&self.0)
            .arg("/ordermanagement")
            .args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A DNS server on `DNS_ADDR:53` that answers `A` queries for `DNS_HOST` with 127.0.0.1,
/// other types for it with no records, and other names with NXDOMAIN; it counts the
/// queries it answered for `DNS_HOST`. Stops when dropped.
struct Dns {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicUsize>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Dns {
    fn start() -> Dns {
        let socket = UdpSocket::bind((DNS_ADDR, 53)).expect("bind the test DNS server");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let (stop, answered) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicUsize::new(0)),
        );
        let (stopping, counter) = (stop.clone(), answered.clone());
        let thread = thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !stopping.load(Ordering::Relaxed) {
                let Ok((len, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                if let Some((reply, ours)) = dns_reply(&buf[..len]) {
                    if ours {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = socket.send_to(&reply, from);
                }
            }
        });
        Dns {
            stop,
            answered,
            thread: Some(thread),
        }
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The reply to one query, and whether it asked for `DNS_HOST`.
fn dns_reply(query: &[u8]) -> Option<(Vec<u8>, bool)> {
    if query.len() < 12 {
        return None;
    }
    // The question's name: length-prefixed labels up to a zero byte.
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = *query.get(at)? as usize;
        at += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(at..at + len)?).to_lowercase());
        at += len;
    }
    let question_end = at + 4;
    let qtype = u16::from_be_bytes([*query.get(at)?, *query.get(at + 1)?]);
    let ours = labels.join(".") == DNS_HOST;
    let answer = ours && qtype == 1;
    let mut reply = Vec::with_capacity(question_end + 16);
    reply.extend_from_slice(&query[..2]); // id
    reply.extend_from_slice(&[0x81, if ours { 0x80 } else { 0x83 }]); // response, NOERROR / NXDOMAIN
    reply.extend_from_slice(&[0, 1, 0, u8::from(answer), 0, 0, 0, 0]);
    reply.extend_from_slice(query.get(12..question_end)?);
    if answer {
        // A pointer to the question's name, A, IN, TTL 60, 4 bytes: 127.0.0.1.
        reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 1]);
    }
    Some((reply, ours))
}

fn port(url: &str) -> &str {
    url.rsplit(':').next().expect("a port in the URL")
}

/// The host pid of `parent`'s only child (the namespace's PID 1).
fn only_child(parent: u32) -> Option<i32> {
    let children = fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")).ok()?;
    children.split_whitespace().next()?.parse().ok()
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn the_image_runtime_processes_orders_reports_health_and_stops_on_sigterm() {
    if std::env::var(ASK).as_deref() != Ok("1") {
        eprintln!(
            "NOT RUN: the image runtime test builds a static release tree (about a minute, \
             200 MB in target/image); ask for it with `{ASK}=1 cargo test --test image` \
             (as root); .ci/run does"
        );
        return;
    }
    if !is_root() {
        eprintln!(
            "SKIPPED: the image runtime test needs root (unshare --pid, chroot); run `cargo test --test image` as root"
        );
        return;
    }
    eprintln!("building the static binary as the Dockerfile does (about a minute)...");
    let binary = build_static();
    let size = fs::metadata(&binary).unwrap().len();
    eprintln!("static binary (the image's only file): {size} bytes");

    let dns = Dns::start();
    let stack = Stack::start(0, 0, Knobs::default()).expect("start the stand-in services");
    for wood in WOODS {
        stack.add_stock(wood, 1_000_000);
    }
    stack.seed_orders(50, &mut fastrand::Rng::with_seed(3));
    let root = Root::new(&binary);
    let env = [
        (
            "API_URL_ORDERS",
            format!("http://{HOST}:{}", port(&stack.orders_url())),
        ),
        (
            "API_URL_STOCKS",
            format!("http://{DNS_HOST}:{}", port(&stack.stocks_url())),
        ),
        (
            "STATE_FILE",
            "/var/lib/ordermanagement/state.jsonl".to_string(),
        ),
        ("ERROR_RATE", "0".to_string()),
        ("INTERVAL_SECONDS", "0.2".to_string()),
        (
            "HEARTBEAT_FILE",
            "/tmp/ordermanagement.heartbeat".to_string(),
        ),
    ];
    let healthcheck = |args: &[&str]| {
        Running::start(&mut root.command(&env, &[&["healthcheck"], args].concat(), false))
            .wait_for(Duration::from_secs(10))
            .expect("healthcheck answered within 10 s")
    };

    let mut worker = Running::start(&mut root.command(&env, &["run"], true));
    let deadline = Instant::now() + Duration::from_secs(30);
    while stack.count_by_status().get("ready").copied().unwrap_or(0) < 50 {
        if worker.child.try_wait().unwrap().is_some() {
            let out = worker.wait_for(Duration::ZERO).unwrap();
            panic!("the worker exited early: {}", text(&out));
        }
        assert!(
            Instant::now() < deadline,
            "orders not all ready within 30 s: {:?}",
            stack.count_by_status()
        );
        thread::sleep(Duration::from_millis(50));
    }
    assert!(stack.violations().is_empty(), "{:?}", stack.violations());
    assert!(
        dns.answered.load(Ordering::Relaxed) > 0,
        "the Stock Service's name was resolved through DNS"
    );
    let journal = root.0.join("var/lib/ordermanagement/state.jsonl");
    assert_eq!(fs::metadata(&journal).expect("the state file").uid(), 65532);

    // PID 1 of its own namespace, running as 65532.
    let pid = only_child(worker.child.id()).expect("unshare's child");
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    assert_eq!(nspid.split_whitespace().last(), Some("1"), "{nspid}");
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(uid.split_whitespace().skip(1).all(|u| u == UID), "{uid}");
    let beat = root.0.join("tmp/ordermanagement.heartbeat");
    assert_eq!(fs::metadata(&beat).unwrap().uid(), 65532);

    let out = healthcheck(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("healthy: last beat"),
        "{}",
        text(&out)
    );

    // SIGTERM to PID 1 (from outside its namespace, as a container engine sends it).
    // SAFETY: kill(2) on a pid read from the live child's /proc entry a moment ago.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let sent = Instant::now();
    let out = worker
        .wait_for(Duration::from_secs(2))
        .expect("PID 1 exits within 2 s of SIGTERM");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(sent.elapsed() < Duration::from_secs(2));

    // Stopped: unhealthy, saying so, however fresh the last beat.
    let out = healthcheck(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.starts_with("unhealthy: stopped at ") && said.contains("(SIGTERM)"),
        "{}",
        text(&out)
    );
}
