//! Snapshots: the whole graph on disk, with the Kafka offsets it reflects,
//! so a restart resumes from the snapshot instead of replaying the topic.
//!
//! Format (little-endian): magic `FGSNAPv1`, format version (u32), the
//! payload length (u64), the payload, and the SHA-256 of everything before
//! it. The payload holds the graph config it was built with, the offsets, the
//! de-duplication window, and every node of every shard in slot order, so
//! node addresses survive the round trip.
//!
//! Writing is atomic: a temporary file in the same directory is written,
//! synced and renamed over the target, then the directory is synced; a crash
//! leaves the previous snapshot intact. Reading refuses, with a clear error,
//! a file that is not a fraudgraph snapshot, of another format version, with a
//! wrong checksum (corrupt or truncated), or built with another graph config.
//!
//! Take a snapshot from the writer thread between applies (or with no writer
//! running): it reads shard by shard, so a concurrent writer would make it a
//! mix of two instants, and the offsets would not match.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use parking_lot::{Mutex, RwLock};
use rustc_hash::FxHashSet;
use sha2::{Digest, Sha256};

use crate::adjacency::Adjacency;
use crate::graph::{
    Aggregates, Dedupe, Edge, Graph, GraphConfig, Node, NodeRef, SHARDS, SeqItem, Shard,
};
use crate::id_index::{IdHash, IdIndex};
use crate::node_key::NodeKey;
use crate::schema::NodeType;

const MAGIC: &[u8; 8] = b"FGSNAPv1";
/// The snapshot format version this build writes and reads. The shard a
/// node id hashes to is part of the format (slots are restored in place), so
/// a change of that hash bumps it too. Version 3: adjacency lists ordered by
/// last sighting. Version 4: the count of applied transactions.
pub const FORMAT_VERSION: u32 = 4;

/// Kafka offsets a snapshot reflects: the next offset to consume per
/// (topic, partition).
pub type Offsets = BTreeMap<(String, i32), i64>;

/// Why a snapshot could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The file system said no.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Not a fraudgraph snapshot at all.
    #[error("{path}: not a fraudgraph snapshot (bad magic bytes)")]
    Foreign {
        /// The file.
        path: PathBuf,
    },
    /// Written by another format version.
    #[error("{path}: snapshot format version {found}, this build reads version {FORMAT_VERSION}")]
    Version {
        /// The file.
        path: PathBuf,
        /// The version in the file.
        found: u32,
    },
    /// The checksum does not match: the file is corrupt or truncated.
    #[error("{path}: snapshot is corrupt or truncated ({detail})")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What did not match.
        detail: String,
    },
    /// Built with a graph config other than the one asked for.
    #[error("{path}: snapshot was built with graph config {found:?}, expected {expected:?}")]
    ConfigMismatch {
        /// The file.
        path: PathBuf,
        /// The config in the file.
        found: GraphConfig,
        /// The config the caller runs with.
        expected: GraphConfig,
    },
}

struct Enc(Vec<u8>);

impl Enc {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn i16(&mut self, v: i16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn f32(&mut self, v: f32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u128(&mut self, v: u128) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn str(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.0.extend_from_slice(s.as_bytes());
    }
    fn agg(&mut self, a: &Aggregates) {
        self.i64(a.l_ms);
        for v in a.v {
            self.f32(v);
        }
    }
}

/// Reads the payload; every read checks bounds, so a lying length is an
/// error, never a panic.
struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Dec<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.buf.len());
        let end =
            end.ok_or_else(|| format!("payload ends at byte {} while reading {n} more", self.pos))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N], String> {
        Ok(self.take(N)?.try_into().expect("took N bytes"))
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.arr::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.arr()?))
    }
    fn i16(&mut self) -> Result<i16, String> {
        Ok(i16::from_le_bytes(self.arr()?))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.arr()?))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.arr()?))
    }
    fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_le_bytes(self.arr()?))
    }
    fn f32(&mut self) -> Result<f32, String> {
        Ok(f32::from_le_bytes(self.arr()?))
    }
    fn u128(&mut self) -> Result<u128, String> {
        Ok(u128::from_le_bytes(self.arr()?))
    }
    fn len(&mut self, what: &str) -> Result<usize, String> {
        let n = self.u32()? as usize;
        if n > self.buf.len() - self.pos {
            return Err(format!("{what} count {n} exceeds the remaining payload"));
        }
        Ok(n)
    }
    fn str(&mut self) -> Result<Box<str>, String> {
        let n = self.len("string")?;
        let bytes = self.take(n)?;
        std::str::from_utf8(bytes)
            .map(Into::into)
            .map_err(|e| format!("invalid UTF-8 id: {e}"))
    }
    fn agg(&mut self) -> Result<Aggregates, String> {
        let l_ms = self.i64()?;
        let mut v = [0f32; 8];
        for x in &mut v {
            *x = self.f32()?;
        }
        Ok(Aggregates { l_ms, v })
    }
}

fn encode_config(e: &mut Enc, c: &GraphConfig) {
    e.u64(c.adjacency_cap as u64);
    e.i64(c.late_window_ms);
    e.i64(c.dedupe_window_ms);
    e.u64(c.sequence_len as u64);
    e.u64(c.checkpoints as u64);
    e.i64(c.retention_ms);
}

fn decode_config(d: &mut Dec<'_>) -> Result<GraphConfig, String> {
    Ok(GraphConfig {
        adjacency_cap: d.u64()? as usize,
        late_window_ms: d.i64()?,
        dedupe_window_ms: d.i64()?,
        sequence_len: d.u64()? as usize,
        checkpoints: d.u64()? as usize,
        retention_ms: d.i64()?,
    })
}

fn encode_node(e: &mut Enc, n: &Node) {
    e.str(n.key.as_str());
    e.i64(n.first_ms);
    e.agg(&n.agg);
    e.agg(&n.prev);
    e.u32(n.history.len() as u32);
    for a in &n.history {
        e.agg(a);
    }
    e.u32(n.ports.port_count() as u32);
    for list in n.ports.iter() {
        e.u32(list.len() as u32);
        for x in list {
            e.u32(x.nbr.0);
            e.u32(x.first_s);
            e.u32(x.last_s);
            e.u32(x.prev_last_s);
            e.u32(x.count);
            e.f32(x.amount);
            e.f32(x.last_amount);
        }
    }
    e.u32(n.sequence.len() as u32);
    for s in &n.sequence {
        e.i64(s.time_ms);
        e.f32(s.amount);
        e.u16(s.mcc);
        e.u8(s.channel);
        e.i16(s.utc_offset_min);
        e.u32(s.merchant.0);
        e.u64(s.txn_hash);
    }
}

fn decode_node(d: &mut Dec<'_>) -> Result<Node, String> {
    let key = NodeKey::from(&*d.str()?);
    let first_ms = d.i64()?;
    let agg = d.agg()?;
    let prev = d.agg()?;
    let history = (0..d.len("checkpoint")?)
        .map(|_| d.agg())
        .collect::<Result<_, _>>()?;
    let n_ports = d.len("port")?;
    let mut lists = Vec::with_capacity(n_ports);
    for _ in 0..n_ports {
        let n = d.len("edge")?;
        let mut list = Vec::with_capacity(n);
        for _ in 0..n {
            list.push(Edge {
                nbr: NodeRef(d.u32()?),
                first_s: d.u32()?,
                last_s: d.u32()?,
                prev_last_s: d.u32()?,
                count: d.u32()?,
                amount: d.f32()?,
                last_amount: d.f32()?,
            });
        }
        lists.push(list);
    }
    let ports = Adjacency::from_lists(lists)
        .ok_or_else(|| format!("a node with {n_ports} relation sides or too many edges"))?;
    let n_seq = d.len("sequence")?;
    let mut sequence = VecDeque::with_capacity(n_seq);
    for _ in 0..n_seq {
        sequence.push_back(SeqItem {
            time_ms: d.i64()?,
            amount: d.f32()?,
            mcc: d.u16()?,
            channel: d.u8()?,
            utc_offset_min: d.i16()?,
            merchant: NodeRef(d.u32()?),
            txn_hash: d.u64()?,
        });
    }
    Ok(Node {
        key,
        first_ms,
        agg,
        prev,
        history,
        ports,
        sequence,
    })
}

impl Graph {
    /// Encodes the graph and `offsets` as snapshot bytes (see the module docs).
    pub fn snapshot_bytes(&self, offsets: &Offsets) -> Vec<u8> {
        let mut e = Enc(Vec::new());
        encode_config(&mut e, &self.config);
        e.u32(offsets.len() as u32);
        for ((topic, partition), offset) in offsets {
            e.str(topic);
            e.u32(*partition as u32);
            e.i64(*offset);
        }
        {
            let d = self.dedupe.lock();
            e.i64(d.watermark_ms);
            e.u64(d.applied);
            e.u32(d.order.len() as u32);
            for (t, id) in &d.order {
                e.i64(*t);
                e.u128(*id);
            }
        }
        for t in NodeType::ALL {
            for shard in self.shards[t.index()].iter() {
                let g = shard.read();
                e.u32(g.nodes.len() as u32);
                for n in &g.nodes {
                    encode_node(&mut e, n);
                }
                e.u32(g.free.len() as u32);
                for slot in &g.free {
                    e.u32(*slot);
                }
            }
        }
        let payload = e.0;
        let mut out = Vec::with_capacity(payload.len() + 52);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        out.extend_from_slice(&payload);
        let digest = Sha256::digest(&out);
        out.extend_from_slice(&digest);
        out
    }

    /// Writes a snapshot atomically to `path`. It reads the graph shard by shard: call it
    /// when nothing is being applied (from the writer, or holding whatever serialises the
    /// writers), or a transaction applied meanwhile may be recorded as applied while only
    /// some of its nodes are in the file. [`Graph::snapshot_bytes`] under that lock, then
    /// [`write_snapshot_bytes`] after it, keeps the writer waiting for the encoding only.
    pub fn write_snapshot(&self, path: &Path, offsets: &Offsets) -> Result<(), SnapshotError> {
        write_snapshot_bytes(path, &self.snapshot_bytes(offsets))
    }

    /// Reads a snapshot written by [`Graph::write_snapshot`] for a graph
    /// running with `config`; returns the graph and the offsets it reflects.
    pub fn read_snapshot(
        path: &Path,
        config: &GraphConfig,
    ) -> Result<(Graph, Offsets), SnapshotError> {
        let mut bytes = Vec::new();
        File::open(path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|source| SnapshotError::Io {
                path: path.to_owned(),
                source,
            })?;
        Self::from_snapshot_bytes(&bytes, config, path)
    }

    /// Decodes snapshot bytes; `path` only names the source in errors.
    pub fn from_snapshot_bytes(
        bytes: &[u8],
        config: &GraphConfig,
        path: &Path,
    ) -> Result<(Graph, Offsets), SnapshotError> {
        let corrupt = |detail: String| SnapshotError::Corrupt {
            path: path.to_owned(),
            detail,
        };
        if bytes.len() < 8 || &bytes[..8] != MAGIC {
            return Err(SnapshotError::Foreign {
                path: path.to_owned(),
            });
        }
        if bytes.len() < 20 + 32 {
            return Err(corrupt(format!("{} bytes is too short", bytes.len())));
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if version != FORMAT_VERSION {
            return Err(SnapshotError::Version {
                path: path.to_owned(),
                found: version,
            });
        }
        let (body, digest) = bytes.split_at(bytes.len() - 32);
        if Sha256::digest(body).as_slice() != digest {
            return Err(corrupt("SHA-256 mismatch".into()));
        }
        let len = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes")) as usize;
        if len != body.len() - 20 {
            return Err(corrupt(format!(
                "payload length {len} but {} bytes present",
                body.len() - 20
            )));
        }
        let mut d = Dec {
            buf: &body[20..],
            pos: 0,
        };
        let found = decode_config(&mut d).map_err(corrupt)?;
        if &found != config {
            return Err(SnapshotError::ConfigMismatch {
                path: path.to_owned(),
                found,
                expected: config.clone(),
            });
        }
        let decode = |d: &mut Dec<'_>| -> Result<(Graph, Offsets), String> {
            let mut offsets = Offsets::new();
            for _ in 0..d.len("offset")? {
                let topic = d.str()?.to_string();
                let partition = d.u32()? as i32;
                offsets.insert((topic, partition), d.i64()?);
            }
            let watermark_ms = d.i64()?;
            let applied = d.u64()?;
            let n = d.len("txn id")?;
            let mut order = VecDeque::with_capacity(n);
            let mut seen = FxHashSet::with_capacity_and_hasher(n, Default::default());
            for _ in 0..n {
                let (t, id) = (d.i64()?, d.u128()?);
                order.push_back((t, id));
                seen.insert(id);
            }
            let mut shards: [Vec<RwLock<Shard>>; NodeType::ALL.len()] = Default::default();
            for t in NodeType::ALL {
                for _ in 0..SHARDS {
                    let n = d.len("node")?;
                    let mut nodes = Vec::with_capacity(n);
                    for _ in 0..n {
                        nodes.push(decode_node(d)?);
                    }
                    let mut index = IdIndex::with_capacity(n);
                    for (slot, node) in nodes.iter().enumerate().filter(|(_, n)| n.is_live()) {
                        let h = IdHash::of(node.key.as_str());
                        if index.find(&nodes, h, node.key.as_str()).is_some() {
                            return Err("a node id appears twice in one shard".into());
                        }
                        index.insert(h, slot as u32);
                    }
                    let free = (0..d.len("free slot")?)
                        .map(|_| d.u32())
                        .collect::<Result<Vec<_>, _>>()?;
                    if free
                        .iter()
                        .any(|s| nodes.get(*s as usize).is_none_or(Node::is_live))
                    {
                        return Err("free list names a live or missing slot".into());
                    }
                    shards[t.index()].push(RwLock::new(Shard { index, nodes, free }));
                }
            }
            if d.pos != d.buf.len() {
                return Err(format!(
                    "{} bytes left after the last node",
                    d.buf.len() - d.pos
                ));
            }
            let graph = Graph {
                config: config.clone(),
                shards: shards.map(Vec::into_boxed_slice),
                hot: Default::default(),
                dedupe: Mutex::new(Dedupe {
                    seen,
                    order,
                    watermark_ms,
                    applied,
                }),
            };
            graph.publish_all();
            Ok((graph, offsets))
        };
        decode(&mut d).map_err(corrupt)
    }
}

/// Writes snapshot bytes ([`Graph::snapshot_bytes`]) to `path` atomically: a temporary file
/// in the same directory, synced, renamed over `path`, and the directory synced, so a crash
/// leaves the previous snapshot or the new one, never a torn file.
pub fn write_snapshot_bytes(path: &Path, bytes: &[u8]) -> Result<(), SnapshotError> {
    let io = |source| SnapshotError::Io {
        path: path.to_owned(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("snapshot"),
        std::process::id()
    ));
    let mut f = File::create(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    fs::rename(&tmp, path).map_err(io)?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot in which two live nodes of one shard carry the same id (a corrupt
    /// writer; the checksum is right) is refused, not loaded as a graph whose lookups
    /// find either node.
    #[test]
    fn an_id_held_by_two_nodes_is_refused() {
        let graph = Graph::new(GraphConfig::default());
        let mut by_shard: BTreeMap<usize, Vec<NodeRef>> = BTreeMap::new();
        for i in 0..200 {
            let key = format!("acct-{i}");
            let at = graph.intern(NodeType::Account, &key, 1_000);
            by_shard.entry(at.shard()).or_default().push(at);
        }
        let pair = by_shard
            .values()
            .find(|v| v.len() >= 2)
            .expect("a shared shard");
        {
            let mut shard = graph.shards[NodeType::Account.index()][pair[0].shard()].write();
            let key = shard.nodes[pair[0].slot()].key.clone();
            shard.nodes[pair[1].slot()].key = key;
        }
        let bytes = graph.snapshot_bytes(&Offsets::default());
        let err = Graph::from_snapshot_bytes(&bytes, &GraphConfig::default(), Path::new("x"))
            .err()
            .expect("refused");
        assert!(err.to_string().contains("appears twice"), "{err}");

        // The same graph without the duplicate loads.
        let fine = Graph::new(GraphConfig::default());
        fine.intern(NodeType::Account, "acct-0", 1_000);
        let bytes = fine.snapshot_bytes(&Offsets::default());
        Graph::from_snapshot_bytes(&bytes, &GraphConfig::default(), Path::new("x")).unwrap();
    }
}
