//! The end of the pipeline: invalid UTF-8 replaced, `output_limit` applied with gitlab-runner's
//! message, CRC-32 and size of exactly the bytes kept, and storage that spills to disk.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

/// The bytes of a job's trace: in memory up to a threshold, then in an unlinked temporary file.
#[derive(Debug)]
pub struct TraceStore {
    memory: Vec<u8>,
    file: Option<File>,
    len: u64,
    spill_threshold: usize,
}

impl TraceStore {
    /// A store that keeps up to `spill_threshold` bytes in memory.
    pub fn new(spill_threshold: usize) -> Self {
        TraceStore {
            memory: Vec::new(),
            file: None,
            len: 0,
            spill_threshold,
        }
    }

    /// Bytes stored.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the bytes live on disk.
    pub fn spilled(&self) -> bool {
        self.file.is_some()
    }

    /// Appends bytes.
    pub fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.file.is_none() && self.memory.len() + bytes.len() > self.spill_threshold {
            // Unnamed (O_TMPFILE where available): nothing is left behind, whatever happens.
            let mut file = tempfile::tempfile()?;
            file.write_all(&self.memory)?;
            self.memory = Vec::new();
            self.file = Some(file);
        }
        match &mut self.file {
            Some(file) => {
                file.seek(SeekFrom::End(0))?;
                file.write_all(bytes)?;
            }
            None => self.memory.extend_from_slice(bytes),
        }
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Up to `max` bytes from `offset`.
    pub fn read(&self, offset: u64, max: usize) -> std::io::Result<Vec<u8>> {
        let end = self.len.min(offset.saturating_add(max as u64));
        if offset >= end {
            return Ok(Vec::new());
        }
        match &self.file {
            Some(file) => {
                let mut buffer = vec![0; (end - offset) as usize];
                file.read_exact_at(&mut buffer, offset)?;
                Ok(buffer)
            }
            None => Ok(self.memory[offset as usize..end as usize].to_vec()),
        }
    }
}

/// The message gitlab-runner appends once when the log reaches `output_limit`.
pub fn limit_message(limit_bytes: usize) -> String {
    format!(
        "\n\x1b[33;1mJob's log exceeded limit of {limit_bytes} bytes.\nJob execution will continue but no more output will be collected.\x1b[0;m\n"
    )
}

/// Where every stream's bytes end up.
#[derive(Debug)]
pub struct TraceSink {
    limit: usize,
    kept: u64,
    /// Bytes of the log kept elsewhere (the manager's lines the agent adopted): they count
    /// for the limit.
    outside: u64,
    truncated: bool,
    crc: crc32fast::Hasher,
    utf8_pending: Vec<u8>,
    store: TraceStore,
}

impl TraceSink {
    /// A sink that keeps at most `limit` bytes of output (plus the limit message).
    pub fn new(limit: usize, spill_threshold: usize) -> Self {
        TraceSink {
            limit,
            kept: 0,
            outside: 0,
            truncated: false,
            crc: crc32fast::Hasher::new(),
            utf8_pending: Vec::new(),
            store: TraceStore::new(spill_threshold),
        }
    }

    /// Accepts bytes; invalid UTF-8 becomes U+FFFD, an incomplete sequence at the end waits
    /// for the next write.
    pub fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.truncated {
            return Ok(());
        }
        if self.utf8_pending.is_empty() && std::str::from_utf8(bytes).is_ok() {
            return self.keep(bytes);
        }
        let mut input = std::mem::take(&mut self.utf8_pending);
        input.extend_from_slice(bytes);
        let mut valid = Vec::with_capacity(input.len());
        let mut rest = &input[..];
        loop {
            match std::str::from_utf8(rest) {
                Ok(_) => {
                    valid.extend_from_slice(rest);
                    break;
                }
                Err(e) => {
                    valid.extend_from_slice(&rest[..e.valid_up_to()]);
                    match e.error_len() {
                        Some(n) => {
                            valid.extend_from_slice("\u{FFFD}".as_bytes());
                            rest = &rest[e.valid_up_to() + n..];
                        }
                        None => {
                            self.utf8_pending = rest[e.valid_up_to()..].to_vec();
                            break;
                        }
                    }
                }
            }
        }
        self.keep(&valid)
    }

    /// Ends the trace: a dangling partial UTF-8 sequence becomes U+FFFD.
    pub fn finish(&mut self) -> std::io::Result<()> {
        if !self.utf8_pending.is_empty() {
            self.utf8_pending.clear();
            return self.keep("\u{FFFD}".as_bytes());
        }
        Ok(())
    }

    fn keep(&mut self, valid: &[u8]) -> std::io::Result<()> {
        if self.truncated || valid.is_empty() {
            return Ok(());
        }
        let room = (self.limit as u64).saturating_sub(self.kept + self.outside) as usize;
        if valid.len() <= room {
            return self.store_bytes(valid);
        }
        // Cut at a character boundary, then the message, once.
        let mut cut = room;
        while cut > 0 && (valid[cut] & 0xC0) == 0x80 {
            cut -= 1;
        }
        self.store_bytes(&valid[..cut])?;
        self.store_bytes(limit_message(self.limit).as_bytes())?;
        self.truncated = true;
        Ok(())
    }

    fn store_bytes(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.store.append(bytes)?;
        self.crc.update(bytes);
        self.kept += bytes.len() as u64;
        Ok(())
    }

    /// Counts `n` bytes of the log that are kept elsewhere toward the output limit.
    pub fn count_outside(&mut self, n: u64) {
        self.outside += n;
    }

    /// `crc32:` and 8 lowercase hex digits over every byte kept.
    pub fn checksum(&self) -> String {
        format!("crc32:{:08x}", self.crc.clone().finalize())
    }

    /// Bytes kept, including the limit message.
    pub fn bytesize(&self) -> u64 {
        self.kept
    }

    /// Whether the limit was reached.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// The stored bytes.
    pub fn store(&self) -> &TraceStore {
        &self.store
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_invalid_utf8_and_waits_for_split_sequences() {
        let mut sink = TraceSink::new(1 << 20, 1 << 20);
        sink.write(b"ok \xff x \xe2\x82").unwrap();
        sink.write(b"\xac!").unwrap();
        sink.finish().unwrap();
        let text = String::from_utf8(sink.store().read(0, 100).unwrap()).unwrap();
        assert_eq!(text, "ok \u{FFFD} x €!");
    }

    #[test]
    fn limit_cuts_at_a_character_boundary_and_appends_the_message_once() {
        let mut sink = TraceSink::new(5, 1 << 20);
        sink.write("abcé€".as_bytes()).unwrap();
        sink.write(b"more").unwrap();
        let kept = sink.store().read(0, 1000).unwrap();
        let expected = format!("abcé{}", limit_message(5));
        assert_eq!(String::from_utf8(kept.clone()).unwrap(), expected);
        assert!(sink.truncated());
        assert_eq!(sink.bytesize(), kept.len() as u64);
        assert_eq!(
            sink.checksum(),
            format!("crc32:{:08x}", crc32fast::hash(&kept))
        );
        assert!(limit_message(4_194_304).contains("Job's log exceeded limit of 4194304 bytes.\nJob execution will continue but no more output will be collected."));
    }

    #[test]
    fn store_spills_to_disk_and_reads_back() {
        let mut store = TraceStore::new(10);
        store.append(b"0123456").unwrap();
        assert!(!store.spilled());
        store.append(b"789abcdef").unwrap();
        assert!(store.spilled());
        assert_eq!(store.len(), 16);
        assert_eq!(store.read(5, 6).unwrap(), b"56789a");
        assert_eq!(store.read(14, 10).unwrap(), b"ef");
        assert!(store.read(16, 10).unwrap().is_empty());
    }
}
