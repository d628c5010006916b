//! TensorBoard event files (`events.out.tfevents.*`): TFRecord framing (a little-endian u64
//! length, its masked CRC32C, the bytes, their masked CRC32C) around `Event` protobufs, whose
//! `Summary` values are scalars either as `simple_value` (PyTorch's SummaryWriter, TRL's
//! `report_to="tensorboard"`, OpenRLHF, SkyRL) or as a one-element `tensor` (TF2, verl's
//! adapter through tensorboardX). The four messages are decoded by hand: the fields read are
//! few and fixed, and a protobuf crate would bring code generation into the build.
//!
//! Each file is tailed from where the last poll stopped; a record cut by the end of the file is
//! read when it is complete. A record whose CRC does not match is skipped and counted; a length
//! whose CRC does not match ends the file's reading (no later record can be found).

use super::{files_in, merge_same_steps, mtime};
use crate::runfs::metrics::{BadLines, MAX_STEP, MetricRow, MetricsPoll};
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

/// The largest record accepted (a scalar event is tens of bytes; images are skipped whole).
const MAX_RECORD: u64 = 64 << 20;

/// The event files of a folder, oldest first (their names start with the writer's start time).
pub fn event_files(dir: &Path) -> Vec<PathBuf> {
    files_in(dir, |n| n.starts_with("events.out.tfevents."))
}

/// CRC32C (Castagnoli), bitwise over a table built once.
fn crc32c(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0x82F6_3B78 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *e = c;
        }
        t
    });
    let mut crc = !0u32;
    for &b in data {
        crc = table[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// TFRecord's masked CRC.
fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c(data);
    (c.rotate_right(15)).wrapping_add(0xa282_ead8)
}

/// A protobuf field: its number and value.
enum Field<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// The fields of one protobuf message, in order; `None` on malformed bytes.
fn fields(mut b: &[u8]) -> Option<Vec<(u64, Field<'_>)>> {
    fn varint(b: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = b.split_first()?;
            *b = rest;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let key = varint(&mut b)?;
        let f = match key & 7 {
            0 => Field::Varint(varint(&mut b)?),
            1 => {
                let (x, rest) = b.split_first_chunk::<8>()?;
                b = rest;
                Field::Fixed64(u64::from_le_bytes(*x))
            }
            2 => {
                let n = usize::try_from(varint(&mut b)?).ok()?;
                if n > b.len() {
                    return None;
                }
                let (x, rest) = b.split_at(n);
                b = rest;
                Field::Bytes(x)
            }
            5 => {
                let (x, rest) = b.split_first_chunk::<4>()?;
                b = rest;
                Field::Fixed32(u32::from_le_bytes(*x))
            }
            _ => return None,
        };
        out.push((key >> 3, f));
    }
    Some(out)
}

/// A one-element numeric `TensorProto` as a number (float, double, half, bfloat16, int32,
/// int64, bool); `None` for anything else (strings, histograms, images).
fn tensor_scalar(b: &[u8]) -> Option<f64> {
    let mut dtype = 0;
    let mut values: Vec<f64> = Vec::new();
    let mut content: &[u8] = &[];
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Varint(d)) => dtype = d,
            (4, Field::Bytes(c)) => content = c,
            (5, Field::Bytes(p)) => values.extend(
                p.chunks_exact(4)
                    .map(|c| f64::from(f32::from_le_bytes(c.try_into().unwrap()))),
            ),
            (5, Field::Fixed32(x)) => values.push(f64::from(f32::from_bits(x))),
            (6, Field::Bytes(p)) => values.extend(
                p.chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap())),
            ),
            (6, Field::Fixed64(x)) => values.push(f64::from_bits(x)),
            (7 | 10 | 11 | 13, Field::Varint(x)) => values.push(match (n, dtype) {
                (13, 19) => f64::from(half::f16::from_bits(x as u16)),
                (13, 14) => f64::from(half::bf16::from_bits(x as u16)),
                _ => x as i64 as f64,
            }),
            (7 | 10 | 11 | 13, Field::Bytes(p)) => {
                // Packed varints.
                let mut rest = p;
                while !rest.is_empty() {
                    let (v, used) = packed_varint(rest)?;
                    rest = &rest[used..];
                    values.push(match (n, dtype) {
                        (13, 19) => f64::from(half::f16::from_bits(v as u16)),
                        (13, 14) => f64::from(half::bf16::from_bits(v as u16)),
                        _ => v as i64 as f64,
                    });
                }
            }
            _ => {}
        }
    }
    if !content.is_empty() {
        values.extend(match (dtype, content.len()) {
            (1, 4) => Some(f64::from(f32::from_le_bytes(content.try_into().ok()?))),
            (2, 8) => Some(f64::from_le_bytes(content.try_into().ok()?)),
            (3, 4) => Some(f64::from(i32::from_le_bytes(content.try_into().ok()?))),
            (9, 8) => Some(i64::from_le_bytes(content.try_into().ok()?) as f64),
            (19, 2) => Some(f64::from(half::f16::from_le_bytes(
                content.try_into().ok()?,
            ))),
            (14, 2) => Some(f64::from(half::bf16::from_le_bytes(
                content.try_into().ok()?,
            ))),
            _ => None,
        });
    }
    (values.len() == 1).then(|| values[0])
}

fn packed_varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, &byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// One `Event` as a row: its step, wall time and scalar values; `Ok(None)` for events without
/// scalars (the file-version header, graphs, images, text).
pub fn event_row(b: &[u8]) -> Result<Option<MetricRow>, String> {
    let mut step = 0i64;
    let mut time = None;
    let mut values = BTreeMap::new();
    for (n, f) in fields(b).ok_or("malformed Event")? {
        match (n, f) {
            (1, Field::Fixed64(t)) => time = Some(f64::from_bits(t)),
            (2, Field::Varint(s)) => step = s as i64,
            (5, Field::Bytes(summary)) => {
                for (sn, sf) in fields(summary).ok_or("malformed Summary")? {
                    let (1, Field::Bytes(value)) = (sn, sf) else {
                        continue;
                    };
                    let mut tag = None;
                    let mut x = None;
                    for (vn, vf) in fields(value).ok_or("malformed Summary.Value")? {
                        match (vn, vf) {
                            (1, Field::Bytes(t)) => {
                                tag = Some(String::from_utf8_lossy(t).into_owned())
                            }
                            (2, Field::Fixed32(v)) => x = Some(f64::from(f32::from_bits(v))),
                            (8, Field::Bytes(t)) => x = x.or(tensor_scalar(t)),
                            _ => {}
                        }
                    }
                    if let (Some(tag), Some(x)) = (tag, x) {
                        values.insert(tag, x.is_finite().then_some(x));
                    }
                }
            }
            _ => {}
        }
    }
    if values.is_empty() {
        return Ok(None);
    }
    if !(0..=MAX_STEP as i64).contains(&step) {
        return Err(format!("step {step} is out of range"));
    }
    Ok(Some(MetricRow {
        step: step as u64,
        time,
        values,
    }))
}

/// Where one event file's reading stands.
#[derive(Debug, Default)]
struct FileState {
    offset: u64,
    inode: Option<u64>,
    /// A length CRC failed: nothing after it can be framed.
    broken: bool,
}

/// Follows the event files of a folder.
#[derive(Debug)]
pub struct Tail {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
}

impl Tail {
    pub fn new(dir: &Path) -> Tail {
        Tail {
            dir: dir.to_path_buf(),
            files: BTreeMap::new(),
        }
    }

    pub fn poll(
        &mut self,
        deadline: Option<Instant>,
        bad: &mut BadLines,
    ) -> std::io::Result<MetricsPoll> {
        let mut out = MetricsPoll::default();
        let paths = event_files(&self.dir);
        let before = self.files.len();
        self.files.retain(|p, _| paths.contains(p));
        if self.files.len() != before {
            // A file went away: start over from the files there are.
            self.files.clear();
            *bad = BadLines::default();
            out.reset = true;
        }
        for path in paths {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                out.more = true;
                break;
            }
            let state = self.files.entry(path.clone()).or_default();
            match read_records(&path, state, bad, &mut out.rows) {
                Ok(Some(())) => {}
                Ok(None) => {
                    // Truncated or replaced: every file is read again.
                    self.files.clear();
                    *bad = BadLines::default();
                    out.rows.clear();
                    out.reset = true;
                    out.more = true;
                    return Ok(out);
                }
                Err(e) => return Err(crate::runfs::atomic::named(&path, e)),
            }
        }
        out.rows = merge_same_steps(std::mem::take(&mut out.rows));
        Ok(out)
    }

    pub fn newest_write(&self) -> Option<SystemTime> {
        self.files.keys().filter_map(|p| mtime(p)).max()
    }
}

/// Read the complete records of `path` after `state.offset`; `Ok(None)` when the file was
/// truncated or replaced since the last read.
fn read_records(
    path: &Path,
    state: &mut FileState,
    bad: &mut BadLines,
    rows: &mut Vec<MetricRow>,
) -> std::io::Result<Option<()>> {
    let mut f = crate::untrusted::open_regular(path)?;
    let meta = f.metadata()?;
    #[cfg(unix)]
    let inode = Some(std::os::unix::fs::MetadataExt::ino(&meta));
    #[cfg(not(unix))]
    let inode = None;
    if (state.inode.is_some() && state.inode != inode) || meta.len() < state.offset {
        return Ok(None);
    }
    state.inode = inode;
    if state.broken || meta.len() == state.offset {
        return Ok(Some(()));
    }
    f.seek(SeekFrom::Start(state.offset))?;
    let mut r = std::io::BufReader::new(f.take(meta.len() - state.offset));
    let mut note = |msg: String| {
        bad.count += 1;
        if bad.first.is_none() {
            bad.first = Some(format!("{}: {msg}", path.display()));
        }
    };
    loop {
        let mut head = [0u8; 12];
        match r.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(Some(())),
            Err(e) => return Err(e),
        }
        let len = u64::from_le_bytes(head[..8].try_into().unwrap());
        if masked_crc(&head[..8]) != u32::from_le_bytes(head[8..].try_into().unwrap())
            || len > MAX_RECORD
        {
            note(format!(
                "byte {}: a record length whose CRC does not match; the rest of the file is unreadable",
                state.offset
            ));
            state.broken = true;
            return Ok(Some(()));
        }
        let mut data = vec![0u8; len as usize + 4];
        match r.read_exact(&mut data) {
            Ok(()) => {}
            // Cut by the end of the file: read it when the writer has finished it.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(Some(())),
            Err(e) => return Err(e),
        }
        let at = state.offset;
        state.offset += 12 + len + 4;
        let (body, crc) = data.split_at(len as usize);
        if masked_crc(body) != u32::from_le_bytes(crc.try_into().unwrap()) {
            note(format!("byte {at}: a record whose CRC does not match"));
            continue;
        }
        match event_row(body) {
            Ok(Some(row)) => rows.push(row),
            Ok(None) => {}
            Err(e) => note(format!("byte {at}: {e}")),
        }
    }
}

/// One TFRecord holding an `Event` with scalar summaries (`simple_value`), as PyTorch's
/// SummaryWriter writes it: for tests, fixtures and `bench`.
pub fn scalar_record(step: i64, wall_time: f64, scalars: &[(&str, f32)]) -> Vec<u8> {
    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    fn bytes_field(n: u64, b: &[u8], out: &mut Vec<u8>) {
        varint(n << 3 | 2, out);
        varint(b.len() as u64, out);
        out.extend_from_slice(b);
    }
    let mut summary = Vec::new();
    for (tag, x) in scalars {
        let mut value = Vec::new();
        bytes_field(1, tag.as_bytes(), &mut value);
        varint(2 << 3 | 5, &mut value);
        value.extend_from_slice(&x.to_le_bytes());
        bytes_field(1, &value, &mut summary);
    }
    let mut event = Vec::new();
    varint(1 << 3 | 1, &mut event);
    event.extend_from_slice(&wall_time.to_le_bytes());
    varint(2 << 3, &mut event);
    varint(step as u64, &mut event);
    bytes_field(5, &summary, &mut event);
    let mut rec = Vec::with_capacity(event.len() + 16);
    let len = (event.len() as u64).to_le_bytes();
    rec.extend_from_slice(&len);
    rec.extend_from_slice(&masked_crc(&len).to_le_bytes());
    rec.extend_from_slice(&event);
    rec.extend_from_slice(&masked_crc(&event).to_le_bytes());
    rec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn a_tensor_scalar_reads_as_a_number() {
        // dtype DT_FLOAT (field 1 = 1), float_val (field 5, packed) = [2.5]
        let mut t = vec![0x08, 0x01, 0x2a, 0x04];
        t.extend_from_slice(&2.5f32.to_le_bytes());
        assert_eq!(tensor_scalar(&t), Some(2.5));
        // tensor_content of a double
        let mut t = vec![0x08, 0x02, 0x22, 0x08];
        t.extend_from_slice(&0.125f64.to_le_bytes());
        assert_eq!(tensor_scalar(&t), Some(0.125));
        // Two values are not a scalar.
        let mut t = vec![0x08, 0x01, 0x2a, 0x08];
        t.extend_from_slice(&[0; 8]);
        assert_eq!(tensor_scalar(&t), None);
    }

    #[test]
    fn records_are_tailed_and_a_bad_crc_is_skipped() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("events.out.tfevents.1.host");
        let mut bytes = scalar_record(1, 10.0, &[("loss", 2.0), ("reward", 0.5)]);
        let mut broken = scalar_record(2, 11.0, &[("loss", 1.5)]);
        let n = broken.len();
        broken[n - 5] ^= 1; // the event's last byte
        bytes.extend_from_slice(&broken);
        let third = scalar_record(3, 12.0, &[("loss", 1.0)]);
        bytes.extend_from_slice(&third[..10]); // cut mid-record
        std::fs::write(&p, &bytes).unwrap();
        let mut t = Tail::new(d.path());
        let mut bad = BadLines::default();
        let poll = t.poll(None, &mut bad).unwrap();
        assert_eq!(poll.rows.len(), 1);
        assert_eq!(poll.rows[0].values["reward"], Some(0.5));
        assert_eq!(poll.rows[0].time, Some(10.0));
        assert_eq!(bad.count, 1);
        // The writer finishes the third record.
        bytes.extend_from_slice(&third[10..]);
        std::fs::write(&p, &bytes).unwrap();
        let poll = t.poll(None, &mut bad).unwrap();
        assert_eq!(
            poll.rows.iter().map(|r| r.step).collect::<Vec<_>>(),
            vec![3]
        );
    }
}
