use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rankmysteps_dataflow::event::{Epoch, Micros};

use rankmysteps_dataflow::output::Position;

use crate::chunk::{wall_clock, Chunk, ChunkSource, Pull};
use crate::error::SourceError;
use crate::parse::is_blank;

/// Most lines in one chunk: small enough to spread an epoch over the workers.
const CHUNK_LINES: u64 = 4096;

/// The most a chunk's buffer is sized for in advance (a chunk may still grow past it).
const MAX_CHUNK_RESERVE: usize = 8 << 20;

/// Reads lines from a sequence of inputs, in order, cutting them into per-epoch chunks.
pub struct FileInput {
    /// Inputs still to open, in reverse order (next at the end).
    pending: Vec<PathBuf>,
    current: Option<(PathBuf, Box<dyn BufRead + Send>)>,
    epoch_events: u64,
    /// Global index of the next line.
    next_line: u64,
    /// The first error met; reading stops there.
    error: Option<SourceError>,
    /// The start of a line that runs past the reader's buffer (empty otherwise).
    line: Vec<u8>,
    /// Bytes per record of the last chunk, to size the next one's buffer at once (grown by
    /// doubling, a 400 KB chunk was copied about twenty times, into fresh pages).
    record_bytes: usize,
    /// Bytes read from the inputs as they are on disk (compressed or not), for progress.
    bytes_read: Arc<AtomicU64>,
    /// The inputs' total size, when every one is a regular file (not stdin).
    total_bytes: Option<u64>,
}

/// A reader that counts the bytes it hands out (beneath any decompression).
struct Counting<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// A [`FileInput`] shared by the workers of a process: each pulls the next chunk when ready.
///
/// Chunks are handed out in order, so a worker that pulled a chunk of epoch e knows that every
/// chunk of an earlier epoch was handed out already: its capability may move to e.
#[derive(Clone)]
pub struct SharedFileInput(Arc<Mutex<FileInput>>, Arc<Mutex<Progress>>);

/// Which chunks have been parsed, for a sound upper bound of the watermark.
///
/// Chunks are handed out in epoch order, so every event of an epoch before e is in a chunk
/// numbered below the first chunk of e. Once all those chunks are parsed, the largest event
/// time among the chunks parsed so far (a superset) bounds W(e−1) from above.
#[derive(Default)]
struct Progress {
    handed_out: u64,
    first_of_epoch: BTreeMap<Epoch, u64>,
    /// Chunks parsed beyond the contiguous prefix, with their largest event time.
    reported: BTreeMap<u64, Option<Micros>>,
    /// All chunks below this were parsed...
    prefix: u64,
    /// ...and this is the largest event time among them.
    prefix_max: Option<Micros>,
}

impl FileInput {
    /// Opens `path`: `-` for stdin, a file (gzip detected by its magic bytes), or a directory
    /// (its regular, non-hidden files in name order, not recursing).
    pub fn open(path: &Path, epoch_events: u64) -> Result<FileInput, SourceError> {
        if epoch_events == 0 {
            return Err(SourceError::Invalid(
                "epoch_events must be at least 1".into(),
            ));
        }
        let io = |source| SourceError::Io {
            path: path.to_owned(),
            source,
        };
        let mut files = Vec::new();
        if path == Path::new("-") {
            files.push(path.to_owned());
        } else if std::fs::metadata(path).map_err(io)?.is_dir() {
            for entry in std::fs::read_dir(path).map_err(io)? {
                let entry = entry.map_err(io)?;
                let hidden = entry.file_name().to_string_lossy().starts_with('.');
                if !hidden && entry.file_type().map_err(io)?.is_file() {
                    files.push(entry.path());
                }
            }
            files.sort();
            if files.is_empty() {
                return Err(SourceError::EmptyDirectory(path.to_owned()));
            }
        } else {
            files.push(path.to_owned());
        }
        let total_bytes = files
            .iter()
            .map(|f| match f == Path::new("-") {
                true => None,
                false => std::fs::metadata(f)
                    .ok()
                    .filter(|m| m.is_file())
                    .map(|m| m.len()),
            })
            .sum::<Option<u64>>();
        files.reverse();
        Ok(FileInput {
            pending: files,
            current: None,
            epoch_events,
            next_line: 0,
            error: None,
            line: Vec::new(),
            record_bytes: 128,
            bytes_read: Arc::default(),
            total_bytes,
        })
    }

    /// Shares this input among the workers of a process.
    pub fn shared(self) -> SharedFileInput {
        SharedFileInput(Arc::new(Mutex::new(self)), Arc::default())
    }

    /// The inputs' total size in bytes, when known (regular files; not stdin).
    pub fn total_bytes(&self) -> Option<u64> {
        self.total_bytes
    }

    /// The count of bytes read so far from the inputs as they are on disk.
    pub fn bytes_read(&self) -> Arc<AtomicU64> {
        self.bytes_read.clone()
    }

    fn open_reader(
        path: &Path,
        count: Arc<AtomicU64>,
    ) -> Result<Box<dyn BufRead + Send>, SourceError> {
        const BUFFER: usize = 1 << 20;
        if path == Path::new("-") {
            let stdin = Counting {
                inner: std::io::stdin(),
                count,
            };
            return Ok(Box::new(BufReader::with_capacity(BUFFER, stdin)));
        }
        let io = |source| SourceError::Io {
            path: path.to_owned(),
            source,
        };
        let file = Counting {
            inner: File::open(path).map_err(io)?,
            count,
        };
        let mut file = BufReader::with_capacity(BUFFER, file);
        let gzip = file.fill_buf().map_err(io)?.starts_with(&[0x1f, 0x8b]);
        Ok(if gzip {
            Box::new(BufReader::with_capacity(
                BUFFER,
                flate2::bufread::MultiGzDecoder::new(file),
            ))
        } else {
            Box::new(file)
        })
    }

    /// The next chunk: at most [`CHUNK_LINES`] lines, all of one epoch. `None` at the end of
    /// input or after an error (see [`FileInput::take_error`]).
    pub fn next_chunk(&mut self) -> Option<Chunk> {
        if self.error.is_some() {
            return None;
        }
        let epoch = self.next_line / self.epoch_events;
        let epoch_end = (epoch + 1) * self.epoch_events;
        let last = epoch_end.min(self.next_line + CHUNK_LINES);
        let mut chunk = Chunk::new(epoch, wall_clock());
        let lines = (last - self.next_line) as usize;
        chunk.records.reserve(lines);
        // Capped: a chunk of a few huge lines must not make the next one reserve gigabytes.
        chunk
            .data
            .reserve((lines * self.record_bytes).min(MAX_CHUNK_RESERVE));
        let start = self.next_line;
        while self.next_line < last {
            if self.current.is_none() {
                let Some(path) = self.pending.pop() else {
                    break;
                };
                match Self::open_reader(&path, self.bytes_read.clone()) {
                    Ok(reader) => self.current = Some((path, reader)),
                    Err(e) => {
                        self.error = Some(e);
                        return None;
                    }
                }
            }
            let (path, reader) = self.current.as_mut().expect("opened above");
            // Lines are taken straight from the reader's buffer; only a line that runs past
            // its end is put together in `line` first.
            let buffer = match reader.fill_buf() {
                Ok(buffer) => buffer,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    self.error = Some(SourceError::Io {
                        path: path.clone(),
                        source,
                    });
                    break;
                }
            };
            let (line, used) = match memchr::memchr(b'\n', buffer) {
                Some(end) if self.line.is_empty() => (&buffer[..=end], end + 1),
                Some(end) => {
                    self.line.extend_from_slice(&buffer[..=end]);
                    (&self.line[..], end + 1)
                }
                None if buffer.is_empty() => {
                    // The end of this input; a last line without a newline is a line too.
                    self.current = None;
                    if !self.line.is_empty() {
                        push_line(&mut chunk, self.next_line, &self.line);
                        self.line.clear();
                        self.next_line += 1;
                    }
                    if self.pending.is_empty() {
                        break;
                    }
                    continue;
                }
                None => {
                    self.line.extend_from_slice(buffer);
                    let n = buffer.len();
                    reader.consume(n);
                    continue;
                }
            };
            push_line(&mut chunk, self.next_line, line);
            reader.consume(used);
            self.line.clear();
            self.next_line += 1;
        }
        if self.next_line == start {
            return None;
        }
        if !chunk.records.is_empty() {
            self.record_bytes = chunk.data.len().div_ceil(chunk.records.len()) + 16;
        }
        chunk.positions.push(Position {
            partition: 0,
            next: self.next_line,
        });
        Some(chunk)
    }

    /// The error that stopped reading, if any.
    pub fn take_error(&mut self) -> Option<SourceError> {
        self.error.take()
    }

    /// Lines read so far.
    pub fn lines_read(&self) -> u64 {
        self.next_line
    }
}

/// Adds one line (its newline, and a `\r` before it, removed) to `chunk` unless it is blank.
fn push_line(chunk: &mut Chunk, index: u64, mut line: &[u8]) {
    if let Some(rest) = line.strip_suffix(b"\n") {
        line = rest.strip_suffix(b"\r").unwrap_or(rest);
    }
    if !is_blank(line) {
        chunk.push(index, line);
    }
}

impl SharedFileInput {
    /// The error that stopped reading, if any.
    pub fn take_error(&self) -> Option<SourceError> {
        self.0.lock().expect("file input lock").take_error()
    }

    /// Lines read so far.
    pub fn lines_read(&self) -> u64 {
        self.0.lock().expect("file input lock").lines_read()
    }

    /// The inputs' total size in bytes, when known (regular files; not stdin).
    pub fn total_bytes(&self) -> Option<u64> {
        self.0.lock().expect("file input lock").total_bytes()
    }

    /// The count of bytes read so far from the inputs as they are on disk.
    pub fn bytes_read(&self) -> Arc<AtomicU64> {
        self.0.lock().expect("file input lock").bytes_read()
    }
}

impl ChunkSource for SharedFileInput {
    fn pull(&mut self) -> Pull {
        let mut input = self.0.lock().expect("file input lock");
        match input.next_chunk() {
            Some(mut chunk) => {
                // Numbered under the input's lock, so numbers follow the hand-out order.
                let mut progress = self.1.lock().expect("progress lock");
                chunk.seq = progress.handed_out;
                progress.handed_out += 1;
                progress
                    .first_of_epoch
                    .entry(chunk.epoch)
                    .or_insert(chunk.seq);
                Pull::Chunk(chunk)
            }
            None => Pull::Done,
        }
    }

    fn watermark_bound(&self, chunk: &Chunk) -> Option<Option<Micros>> {
        let progress = self.1.lock().expect("progress lock");
        let first = *progress.first_of_epoch.get(&chunk.epoch)?;
        (progress.prefix >= first).then_some(progress.prefix_max)
    }

    fn parsed(&mut self, chunk: &Chunk, max_time: Option<Micros>) {
        let mut progress = self.1.lock().expect("progress lock");
        progress.reported.insert(chunk.seq, max_time);
        loop {
            let next = progress.prefix;
            let Some(max) = progress.reported.remove(&next) else {
                break;
            };
            progress.prefix_max = progress.prefix_max.max(max);
            progress.prefix += 1;
        }
        // Epochs whose first chunk is below the prefix are settled; keep the map small.
        let settled: Vec<Epoch> = progress
            .first_of_epoch
            .iter()
            .rev()
            .skip(1)
            .filter(|(_, &first)| first < progress.prefix)
            .map(|(&e, _)| e)
            .collect();
        for e in settled.into_iter().skip(2) {
            progress.first_of_epoch.remove(&e);
        }
    }
}
