//! Reads that cannot be made to take unbounded memory: a whole file is read only up to a limit
//! (checked from the metadata of a regular file, enforced while reading a pipe, a FIFO or
//! `/dev/zero`), and an image's pixel count is checked from its header before decoding.

use std::io::Read;
use std::path::Path;

/// The most bytes a whole-file read takes unless configured (`data.load.max_file_bytes` for
/// dataset files): twice COCO's largest annotation file (about 0.5 GB), and small enough that a
/// stream of whitespace is refused within seconds.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 1 << 30;

/// The most bytes of a config file or a metrics log: a config is a few kilobytes; a log line
/// is about 400 bytes, so this holds hundreds of thousands of them.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// The most bytes of a metrics log read back (for plots): 128 MiB.
pub const MAX_METRICS_BYTES: u64 = 128 << 20;

/// What an error says raises the limit of a file that has no setting of its own.
const FIXED_LIMIT: &str = "the limit for such files is fixed";

/// The most pixels an image may have unless configured (`data.load.max_image_pixels`):
/// 4 megapixels (2048 × 2048), ten times any COCO image (640 × 640). Decoding an image with its
/// panoptic PNG and features takes about 56 bytes per pixel, so the default keeps one sample
/// under 250 MB.
pub const DEFAULT_MAX_IMAGE_PIXELS: u64 = 1 << 22;

/// A reader that fails with "larger than the limit" once more than `limit` bytes come out
/// of `inner`, so a parser reading from it stops at the limit, whatever the source.
pub struct Bounded<R> {
    inner: R,
    left: u64,
    limit: u64,
    key: &'static str,
}

impl<R: Read> Bounded<R> {
    fn too_large(&self) -> std::io::Error {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "larger than the limit of {} bytes ({})",
                self.limit, self.key
            ),
        )
    }
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            // At the limit: the source must be at its end.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(self.too_large()),
            };
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n as u64;
        Ok(n)
    }
}

/// `path` opened for reading at most `limit` bytes (`key` names the setting that raises it):
/// a regular file is refused from its size at once; anything else stops at the limit.
pub fn open_bounded(
    path: &Path,
    limit: u64,
    key: &'static str,
) -> std::io::Result<(Bounded<std::fs::File>, Option<u64>)> {
    let file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    let size = meta.is_file().then_some(meta.len());
    let bounded = Bounded {
        inner: file,
        left: limit,
        limit,
        key,
    };
    if size.is_some_and(|n| n > limit) {
        return Err(bounded.too_large());
    }
    Ok((bounded, size))
}

/// The whole of `path`, refused when it is larger than `limit` bytes.
pub fn read_bounded(path: &Path, limit: u64, key: &'static str) -> std::io::Result<Vec<u8>> {
    let (mut reader, size) = open_bounded(path, limit, key)?;
    let mut buf = Vec::new();
    if let Some(n) = size {
        buf.try_reserve_exact(n as usize)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::OutOfMemory))?;
    }
    reader.read_to_end(&mut buf)?;
    Ok(buf)
}

/// A `.safetensors` file read in its own order: the 8-byte header length (at most 100 MB, the
/// format's own bound), the header, then exactly the bytes its tensors claim, and nothing after.
/// A device or a pipe costs no more than what its header claims (at most 128 MiB), and a header
/// that claims more than the limit is refused before its data is read.
pub fn read_safetensors(path: &Path) -> std::io::Result<Vec<u8>> {
    const MAX_HEADER: u64 = 100_000_000;
    let (mut reader, size) = open_bounded(path, DEFAULT_MAX_FILE_BYTES, FIXED_LIMIT)?;
    let bad = |msg: String| std::io::Error::new(std::io::ErrorKind::InvalidData, msg);
    let truncated = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => {
            bad("not a valid safetensors file (corrupt): it ends inside its header".into())
        }
        _ => e,
    };
    let mut buf = vec![0u8; 8];
    reader.read_exact(&mut buf).map_err(truncated)?;
    let n = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
    // The smallest header is "{}".
    if !(2..=MAX_HEADER).contains(&n) || size.is_some_and(|s| 8 + n > s) {
        return Err(bad(format!(
            "not a valid safetensors file: its header claims {n} bytes{}",
            size.map_or(String::new(), |s| format!(", the file has {s} in all"))
        )));
    }
    buf.resize(8 + n as usize, 0);
    reader.read_exact(&mut buf[8..]).map_err(truncated)?;
    // The data's length is the largest end offset; a header that does not parse is left to
    // the safetensors parser, which names what is wrong with it.
    let data: u64 = serde_json::from_slice::<serde_json::Value>(&buf[8..])
        .ok()
        .and_then(|h| {
            h.as_object().map(|o| {
                o.values()
                    .filter_map(|t| t.get("data_offsets")?.get(1)?.as_u64())
                    .max()
                    .unwrap_or(0)
            })
        })
        .unwrap_or(0);
    // A stream (pipe, FIFO, device) cannot show its size first: it may claim an eighth of the
    // limit, so a hostile one costs at most about 256 MB (its bytes, then the parsed tensors).
    let limit = if size.is_some() {
        DEFAULT_MAX_FILE_BYTES
    } else {
        DEFAULT_MAX_FILE_BYTES / 8
    };
    let total = (8 + n).saturating_add(data);
    if total > limit || size.is_some_and(|s| total > s) {
        return Err(bad(format!(
            "not a valid safetensors file: {} bytes of header and {data} of tensors{}",
            8 + n,
            size.map_or_else(
                || format!(" exceed the limit of {limit} bytes for a stream"),
                |s| format!(", but the file has {s} bytes")
            )
        )));
    }
    buf.try_reserve_exact(data as usize)
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::OutOfMemory))?;
    (&mut reader).take(data).read_to_end(&mut buf)?;
    // Trailing bytes stay for the parser to refuse (it checks the length); a stream is cut here.
    (&mut reader).take(1).read_to_end(&mut buf)?;
    Ok(buf)
}

/// [`read_bounded`] at the default limit, for files with no setting of their own
/// (vocabularies, the synthetic scenes file).
pub fn read_file(path: &Path) -> std::io::Result<Vec<u8>> {
    read_bounded(path, DEFAULT_MAX_FILE_BYTES, FIXED_LIMIT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_and_large_files_stop_at_the_limit() {
        let dir = std::env::temp_dir().join(format!("gshn-bounded-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("f.json");
        std::fs::write(&f, vec![b'x'; 100]).unwrap();
        assert_eq!(read_bounded(&f, 100, "k").unwrap().len(), 100);
        let e = read_bounded(&f, 99, "data.load.max_file_bytes")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("limit of 99 bytes (data.load.max_file_bytes)"),
            "{e}"
        );
        // A stream with no end (a link to /dev/zero): refused after `limit` bytes, at once.
        #[cfg(unix)]
        {
            let z = dir.join("zero.json");
            std::os::unix::fs::symlink("/dev/zero", &z).unwrap();
            let t = std::time::Instant::now();
            let e = read_bounded(&z, 1 << 20, "k").unwrap_err().to_string();
            assert!(e.contains("larger than the limit"), "{e}");
            assert!(t.elapsed().as_secs() < 5);
            // A safetensors "file" that never ends costs what its header claims: 8 bytes here.
            let e = read_safetensors(&z).unwrap_err().to_string();
            assert!(e.contains("not a valid safetensors file"), "{e}");
            // A FIFO fed without end: refused after `limit` bytes; the writer sees a closed pipe.
            let fifo = dir.join("fifo.json");
            if std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .is_ok_and(|s| s.success())
            {
                let path = fifo.clone();
                let writer = std::thread::spawn(move || {
                    use std::io::Write;
                    let mut w = std::fs::OpenOptions::new().write(true).open(path).unwrap();
                    while w.write_all(&[b' '; 4096]).is_ok() {}
                });
                let e = read_bounded(&fifo, 1 << 20, "k").unwrap_err().to_string();
                assert!(e.contains("larger than the limit"), "{e}");
                writer.join().unwrap();
                // A safetensors stream claiming more than a stream may is refused from its
                // header, before the claimed data is read.
                let path = fifo.clone();
                let writer = std::thread::spawn(move || {
                    use std::io::Write;
                    let h =
                        br#"{"x":{"dtype":"U8","shape":[536870912],"data_offsets":[0,536870912]}}"#;
                    let mut w = std::fs::OpenOptions::new().write(true).open(path).unwrap();
                    w.write_all(&(h.len() as u64).to_le_bytes()).ok();
                    w.write_all(h).ok();
                    while w.write_all(&[0; 4096]).is_ok() {}
                });
                let e = read_safetensors(&fifo).unwrap_err().to_string();
                assert!(e.contains("for a stream"), "{e}");
                writer.join().unwrap();
            } else {
                eprintln!("skipped the FIFO case: no mkfifo");
            }
        }
        // A header that claims more than the file holds is refused before any data is read.
        let st = dir.join("short.safetensors");
        let header = br#"{"x":{"dtype":"F32","shape":[1000000],"data_offsets":[0,4000000]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        bytes.extend_from_slice(&[0; 16]);
        std::fs::write(&st, &bytes).unwrap();
        let e = read_safetensors(&st).unwrap_err().to_string();
        assert!(
            e.contains("and 4000000 of tensors, but the file has"),
            "{e}"
        );
        std::fs::remove_dir_all(dir).ok();
    }
}
