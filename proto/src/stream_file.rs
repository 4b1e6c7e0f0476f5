//! Stream files: sequences of [`StreamRecord`]s on disk.
//!
//! Two encodings, chosen by the file extension:
//! - `.jsonl`: one record per line in the JSON mapping of `docs/CONTRACT.md`.
//! - `.pb`: length-delimited protobuf (a varint length before each record,
//!   as `writeDelimitedTo` in Java or `prost::Message::encode_length_delimited`).
//!
//! `fraudgraph simulate` writes them; training, evaluation and benchmarks read them.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use prost::Message;

use crate::v1::StreamRecord;

/// The encoding of a stream file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamFormat {
    /// One JSON record per line (`.jsonl`).
    JsonLines,
    /// Length-delimited protobuf (`.pb`).
    DelimitedProtobuf,
}

/// Errors reading or writing stream files.
#[derive(Debug, thiserror::Error)]
pub enum StreamFileError {
    /// The extension is neither `.jsonl` nor `.pb`.
    #[error("{path}: unknown stream file extension; use .jsonl or .pb")]
    UnknownExtension {
        /// The offending path.
        path: PathBuf,
    },
    /// An I/O error on the file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A record that does not decode.
    #[error("{path}: record {index}: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The zero-based record index.
        index: u64,
        /// What was wrong.
        message: String,
    },
}

impl StreamFormat {
    /// The format named by a path's extension.
    pub fn from_path(path: &Path) -> Result<Self, StreamFileError> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("jsonl") => Ok(StreamFormat::JsonLines),
            Some("pb") => Ok(StreamFormat::DelimitedProtobuf),
            _ => Err(StreamFileError::UnknownExtension {
                path: path.to_owned(),
            }),
        }
    }
}

/// Writes records to a stream file, buffered.
pub struct StreamWriter {
    path: PathBuf,
    format: StreamFormat,
    out: BufWriter<File>,
    scratch: Vec<u8>,
    written: u64,
}

impl StreamWriter {
    /// Creates (or truncates) `path`, with the format its extension names.
    pub fn create(path: &Path) -> Result<Self, StreamFileError> {
        let format = StreamFormat::from_path(path)?;
        let file = File::create(path).map_err(|source| StreamFileError::Io {
            path: path.to_owned(),
            source,
        })?;
        Ok(StreamWriter {
            path: path.to_owned(),
            format,
            out: BufWriter::with_capacity(1 << 20, file),
            scratch: Vec::with_capacity(512),
            written: 0,
        })
    }

    /// Appends one record.
    pub fn write(&mut self, record: &StreamRecord) -> Result<(), StreamFileError> {
        self.scratch.clear();
        match self.format {
            StreamFormat::JsonLines => {
                serde_json::to_writer(&mut self.scratch, record)
                    .expect("pbjson serialization of a prost message cannot fail");
                self.scratch.push(b'\n');
            }
            StreamFormat::DelimitedProtobuf => record
                .encode_length_delimited(&mut self.scratch)
                .expect("a Vec grows as needed"),
        }
        self.out
            .write_all(&self.scratch)
            .map_err(|source| StreamFileError::Io {
                path: self.path.clone(),
                source,
            })?;
        self.written += 1;
        Ok(())
    }

    /// Flushes and closes the file; returns how many records were written.
    pub fn finish(mut self) -> Result<u64, StreamFileError> {
        let path = self.path.clone();
        let io = |source| StreamFileError::Io {
            path: path.clone(),
            source,
        };
        self.out.flush().map_err(io)?;
        self.out.get_ref().sync_all().map_err(io)?;
        Ok(self.written)
    }
}

/// Reads the records of a stream file in order.
pub struct StreamReader {
    path: PathBuf,
    format: StreamFormat,
    input: BufReader<File>,
    line: String,
    buf: Vec<u8>,
    index: u64,
}

impl StreamReader {
    /// Opens `path`, with the format its extension names.
    pub fn open(path: &Path) -> Result<Self, StreamFileError> {
        let format = StreamFormat::from_path(path)?;
        let file = File::open(path).map_err(|source| StreamFileError::Io {
            path: path.to_owned(),
            source,
        })?;
        Ok(StreamReader {
            path: path.to_owned(),
            format,
            input: BufReader::with_capacity(1 << 20, file),
            line: String::new(),
            buf: Vec::new(),
            index: 0,
        })
    }

    fn corrupt(&self, message: impl Into<String>) -> StreamFileError {
        StreamFileError::Corrupt {
            path: self.path.clone(),
            index: self.index,
            message: message.into(),
        }
    }

    fn io(&self, source: io::Error) -> StreamFileError {
        StreamFileError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn next_json(&mut self) -> Result<Option<StreamRecord>, StreamFileError> {
        loop {
            self.line.clear();
            let n = self
                .input
                .read_line(&mut self.line)
                .map_err(|e| self.io(e))?;
            if n == 0 {
                return Ok(None);
            }
            if self.line.trim().is_empty() {
                continue;
            }
            return serde_json::from_str(&self.line)
                .map(Some)
                .map_err(|e| self.corrupt(e.to_string()));
        }
    }

    fn next_protobuf(&mut self) -> Result<Option<StreamRecord>, StreamFileError> {
        // Read the varint length byte by byte so a clean EOF is told apart
        // from a truncated record.
        let mut len: u64 = 0;
        for shift in (0..64).step_by(7) {
            let mut byte = [0u8; 1];
            match self.input.read(&mut byte).map_err(|e| self.io(e))? {
                0 if shift == 0 => return Ok(None),
                0 => return Err(self.corrupt("file ends inside a length prefix")),
                _ => {}
            }
            len |= u64::from(byte[0] & 0x7f) << shift;
            if byte[0] & 0x80 == 0 {
                break;
            }
        }
        if len > 16 << 20 {
            return Err(self.corrupt(format!("record length {len} exceeds 16 MiB")));
        }
        self.buf.resize(len as usize, 0);
        self.input.read_exact(&mut self.buf).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                self.corrupt("file ends inside a record")
            } else {
                self.io(e)
            }
        })?;
        StreamRecord::decode(self.buf.as_slice())
            .map(Some)
            .map_err(|e| self.corrupt(e.to_string()))
    }
}

impl Iterator for StreamReader {
    type Item = Result<StreamRecord, StreamFileError>;

    fn next(&mut self) -> Option<Self::Item> {
        let next = match self.format {
            StreamFormat::JsonLines => self.next_json(),
            StreamFormat::DelimitedProtobuf => self.next_protobuf(),
        };
        self.index += 1;
        next.transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{Label, stream_record::Record};

    fn records() -> Vec<StreamRecord> {
        (0..50)
            .map(|i| StreamRecord {
                record: Some(Record::Label(Label {
                    txn_id: format!("t-{i}"),
                    is_fraud: i % 2 == 0,
                    typology: 0,
                    reported_at_ms: 1_700_000_000_000 + i,
                })),
            })
            .collect()
    }

    #[test]
    fn both_formats_round_trip_and_detect_truncation() {
        let dir = std::env::temp_dir().join(format!("fg-stream-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["s.jsonl", "s.pb"] {
            let path = dir.join(name);
            let mut w = StreamWriter::create(&path).unwrap();
            for r in records() {
                w.write(&r).unwrap();
            }
            assert_eq!(w.finish().unwrap(), 50);
            let back: Vec<_> = StreamReader::open(&path)
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(back, records(), "{name}");

            let bytes = std::fs::read(&path).unwrap();
            std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
            let last = StreamReader::open(&path).unwrap().last().unwrap();
            let err = last.unwrap_err().to_string();
            assert!(err.contains("record 49"), "{name}: {err}");
        }
        assert!(matches!(
            StreamWriter::create(&dir.join("s.csv")),
            Err(StreamFileError::UnknownExtension { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
