//! Test support: a real Kafka-protocol broker (tansu) on a free loopback port.

#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A tansu broker with in-memory storage, killed on drop.
pub struct Tansu {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub brokers: String,
}

/// The tansu binary: `$FRAUDGRAPH_TANSU`, the set-up script's cache, or PATH.
fn tansu_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("FRAUDGRAPH_TANSU") {
        return PathBuf::from(path);
    }
    let cache = std::env::var_os("FRAUDGRAPH_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/fraudgraph")
        });
    let cached = cache.join("tansu-0.6.0/bin/tansu");
    if cached.exists() {
        return cached;
    }
    PathBuf::from("tansu")
}

impl Tansu {
    /// Starts a broker and waits until it accepts connections.
    pub fn start() -> Tansu {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let url = format!("tcp://127.0.0.1:{port}");
        let binary = tansu_binary();
        let child = Command::new(&binary)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start tansu ({}): {e}. Run `deploy/setup.sh --with-tansu` or set FRAUDGRAPH_TANSU",
                    binary.display()
                )
            });
        let brokers = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&brokers).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu did not start listening on {brokers}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Tansu { child, brokers }
    }
}

impl Tansu {
    /// Stops the broker process (SIGSTOP): it keeps its connections and its data but
    /// answers nothing, as a hung or partitioned broker does, until [`Tansu::resume`].
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Lets a paused broker run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs")
            .success();
        assert!(ok, "kill -{name} tansu failed");
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
