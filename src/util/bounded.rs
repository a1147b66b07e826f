//! Reads that cannot be made to take unbounded memory: a whole file is read only up to a limit
//! (checked from the metadata of a regular file, enforced while reading a pipe, a FIFO or
//! `/dev/zero`), and an image's pixel count is checked from its header before decoding.

use std::io::Read;
use std::path::Path;

/// The most bytes a whole-file read takes unless configured (`data.load.max_file_bytes` for
/// dataset files): far above COCO's largest annotation file (about 0.5 GB).
pub const DEFAULT_MAX_FILE_BYTES: u64 = 4 << 30;

/// The most pixels an image may have unless configured (`data.load.max_image_pixels`):
/// 64 megapixels, far above any COCO image (640 × 640).
pub const DEFAULT_MAX_IMAGE_PIXELS: u64 = 1 << 26;

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

/// [`read_bounded`] at the default limit, for files with no setting of their own
/// (checkpoints, `gshn op` inputs, configs, vocabularies).
pub fn read_file(path: &Path) -> std::io::Result<Vec<u8>> {
    read_bounded(
        path,
        DEFAULT_MAX_FILE_BYTES,
        "the limit for such files is fixed",
    )
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
        }
        std::fs::remove_dir_all(dir).ok();
    }
}
