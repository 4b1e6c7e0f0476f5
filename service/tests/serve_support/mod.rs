//! Test support: `fraudgraph serve` as a child process on free loopback ports, with a
//! gRPC client, health checks and signals.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use fraudgraph_proto::v1::fraud_scoring_client::FraudScoringClient;
use fraudgraph_proto::v1::stream_record::Record;
use fraudgraph_proto::v1::{Label, StatusRequest, StatusResponse, Transaction, Typology};
use fraudgraph_simulator::{SimConfig, Simulation};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A running `fraudgraph serve`, killed on drop.
pub struct Serve {
    child: Option<Child>,
    /// `127.0.0.1:PORT` of the gRPC listener.
    pub grpc: String,
    /// `127.0.0.1:PORT` of `/metrics`.
    pub metrics: String,
    log: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl Serve {
    /// Starts `fraudgraph serve ARGS` on free ports; its stderr goes to a log file in `dir`.
    pub fn start(dir: &Path, args: &[&str]) -> Serve {
        let grpc = format!("127.0.0.1:{}", free_port());
        let metrics = format!("127.0.0.1:{}", free_port());
        let log = dir.join(format!("serve-{}.log", free_port()));
        let child = Command::new(env!("CARGO_BIN_EXE_fraudgraph"))
            .arg("serve")
            .args(["--listen", &grpc, "--metrics-listen", &metrics])
            .args(args)
            .env(
                "FRAUDGRAPH_LOG",
                std::env::var("FRAUDGRAPH_TEST_LOG").unwrap_or_else(|_| "info,rdkafka=warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("a log file"))
            .spawn()
            .expect("the fraudgraph binary starts");
        Serve {
            child: Some(child),
            grpc,
            metrics,
            log,
            _dir: None,
        }
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// A channel to the gRPC listener (connects lazily).
    pub fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.grpc))
            .expect("a valid URI")
            .connect_lazy()
    }

    /// A scoring client.
    pub fn client(&self) -> FraudScoringClient<Channel> {
        FraudScoringClient::new(self.channel())
    }

    /// The health status of the whole server (`""`), or `None` while it does not answer.
    pub async fn health(&self) -> Option<ServingStatus> {
        let mut h = HealthClient::new(self.channel());
        let r = h
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .ok()?;
        ServingStatus::try_from(r.into_inner().status).ok()
    }

    /// Waits until health reports SERVING; panics with the log after `timeout`.
    pub async fn wait_serving(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.health().await == Some(ServingStatus::Serving) {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("fraudgraph serve exited with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "not SERVING after {timeout:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The Status RPC.
    pub async fn status(&self) -> StatusResponse {
        self.client()
            .status(StatusRequest {})
            .await
            .expect("Status answers")
            .into_inner()
    }

    /// The Prometheus text of `/metrics`.
    pub async fn scrape(&self) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut s = tokio::net::TcpStream::connect(&self.metrics)
            .await
            .expect("metrics listener");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    /// Sends SIGTERM and waits for the exit (graceful shutdown).
    pub fn terminate(&mut self) -> ExitStatus {
        signal(self.pid(), "TERM");
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "no exit 60 s after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGKILL (a crash: no shutdown work at all).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill();
    }
}

fn signal(pid: u32, name: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("kill runs")
        .success();
    assert!(ok, "kill -{name} {pid} failed");
}

/// A simulated world, its transactions and labels.
pub struct World {
    /// Transactions in time order.
    pub transactions: Vec<Transaction>,
    /// Labels in report order.
    pub labels: Vec<Label>,
}

impl World {
    /// The simulation `fraudgraph serve --sim-seed SEED` (with `sim_transactions`) warms from.
    pub fn simulate(transactions: u64, seed: u64) -> World {
        let sim = Simulation::generate(&SimConfig {
            transactions,
            seed,
            ..SimConfig::default()
        })
        .expect("a valid simulation");
        let mut w = World {
            transactions: Vec::new(),
            labels: Vec::new(),
        };
        for r in sim.records() {
            match r.record {
                Some(Record::Transaction(t)) => w.transactions.push(t),
                Some(Record::Label(l)) => w.labels.push(l),
                None => {}
            }
        }
        w
    }

    /// txn_ids labelled fraud of `typology`.
    pub fn fraud_of(&self, typology: Typology) -> std::collections::HashSet<String> {
        self.labels
            .iter()
            .filter(|l| l.is_fraud && l.typology == typology as i32)
            .map(|l| l.txn_id.clone())
            .collect()
    }

    /// txn_ids labelled fraud of any typology.
    pub fn fraud(&self) -> std::collections::HashSet<String> {
        self.labels
            .iter()
            .filter(|l| l.is_fraud)
            .map(|l| l.txn_id.clone())
            .collect()
    }
}
