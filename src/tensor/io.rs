//! Named tensors in `.safetensors` files (checkpoints, `gshn op`, feature maps), and
//! atomic file writes.

use super::{DType, Storage, Tensor};
use crate::error::{Error, Result};
use safetensors::tensor::{Dtype as StDtype, TensorView};
use std::collections::HashMap;
use std::path::Path;

fn st_dtype(d: DType) -> StDtype {
    match d {
        DType::F32 => StDtype::F32,
        DType::F64 => StDtype::F64,
        DType::I32 => StDtype::I32,
        DType::BF16 => StDtype::BF16,
        DType::F16 => StDtype::F16,
        DType::U8 => StDtype::U8,
    }
}

/// Named tensors, in file order.
pub type NamedTensors = Vec<(String, Tensor)>;
/// A safetensors file's string metadata.
pub type Metadata = HashMap<String, String>;

fn bytes_of(t: &Tensor) -> &[u8] {
    match t.storage() {
        Storage::F32(v) => bytemuck::cast_slice(v),
        Storage::F64(v) => bytemuck::cast_slice(v),
        Storage::I32(v) => bytemuck::cast_slice(v),
        Storage::BF16(v) => bytemuck::cast_slice(v),
        Storage::F16(v) => bytemuck::cast_slice(v),
        Storage::U8(v) => v,
    }
}

/// Serialises named tensors (plus string metadata) to safetensors bytes.
pub fn to_safetensors(
    tensors: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<Vec<u8>> {
    let views = tensors
        .iter()
        .map(|(n, t)| {
            TensorView::new(st_dtype(t.dtype()), t.dims().to_vec(), bytes_of(t))
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::invalid("safetensors", format!("{n}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, metadata)
        .map_err(|e| Error::invalid("safetensors", e.to_string()))
}

/// Writes named tensors to `path` atomically.
pub fn save_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    write_atomic(path, &to_safetensors(tensors, metadata)?)
}

/// Tensors and metadata of a safetensors file, with errors that name the file. f16/bf16
/// tensors are widened to f32 (what checkpoints and feature files want); other dtypes are
/// refused.
pub fn load_safetensors(path: &Path) -> Result<(NamedTensors, Metadata)> {
    load(path, true)
}

/// [`load_safetensors`] keeping f16/bf16 tensors as they are stored (`gshn op` runs an op
/// in its inputs' dtype).
pub fn load_safetensors_as_stored(path: &Path) -> Result<(NamedTensors, Metadata)> {
    load(path, false)
}

fn load(path: &Path, widen: bool) -> Result<(NamedTensors, Metadata)> {
    let bytes = crate::util::bounded::read_safetensors(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse_safetensors(&bytes, widen).map_err(|msg| Error::Format {
        path: path.display().to_string(),
        msg,
    })
}

fn parse_safetensors(
    bytes: &[u8],
    widen: bool,
) -> std::result::Result<(NamedTensors, Metadata), String> {
    let (header_len, meta) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| format!("not a valid safetensors file: {e}"))?;
    let header = bytes
        .get(8..8 + header_len)
        .ok_or("not a valid safetensors file: truncated header")?;
    if let Some(name) = repeated_key(header)? {
        return Err(format!("the header names {name:?} twice"));
    }
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| format!("not a valid safetensors file: {e}"))?;
    let mut out = Vec::new();
    let mut names = st.names();
    names.sort();
    for name in names {
        let v = st.tensor(name).map_err(|e| format!("{name}: {e}"))?;
        let shape = v.shape().to_vec();
        let data = v.data();
        let storage = match v.dtype() {
            StDtype::F32 => Storage::F32(
                data.chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            ),
            StDtype::F64 => Storage::F64(
                data.chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            ),
            StDtype::I32 => Storage::I32(
                data.chunks_exact(4)
                    .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            ),
            StDtype::F16 | StDtype::BF16 => {
                let bits = data
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes(c.try_into().unwrap()));
                let stored = match v.dtype() {
                    StDtype::F16 => Storage::F16(bits.map(half::f16::from_bits).collect()),
                    _ => Storage::BF16(bits.map(half::bf16::from_bits).collect()),
                };
                match widen.then(|| stored.to_f32_vec()).flatten() {
                    Some(wide) => Storage::F32(wide),
                    None => stored,
                }
            }
            StDtype::U8 => Storage::U8(data.to_vec()),
            other => {
                return Err(format!(
                    "{name}: dtype {other:?} is not supported (use f32, f64, f16, bf16, i32 or u8)"
                ))
            }
        };
        out.push((
            name.to_string(),
            Tensor::from_storage(shape, storage).map_err(|e| format!("{name}: {e}"))?,
        ));
    }
    Ok((out, meta.metadata().clone().unwrap_or_default()))
}

/// Fault injection for the tests of lost work: with `GSHN_FAULT_WRITE=NAME`, every write of a
/// file called NAME fails (an atomic write halfway through), as on a full disk.
pub(crate) fn injected_failure(path: &Path) -> Option<std::io::Error> {
    // Read once: the metrics log asks on every line it writes.
    static NAME: std::sync::OnceLock<Option<std::ffi::OsString>> = std::sync::OnceLock::new();
    NAME.get_or_init(|| std::env::var_os("GSHN_FAULT_WRITE"))
        .as_deref()
        .is_some_and(|n| path.file_name() == Some(n))
        .then(|| {
            std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                "injected write failure (GSHN_FAULT_WRITE)",
            )
        })
}

/// Writes `bytes` to `path` atomically: a temporary file of a name no other writer uses, in
/// the same folder, flushed to disk, then renamed over `path`; on any failure the temporary
/// file is removed and `path` is left as it was. Only a regular file (or nothing) is replaced:
/// a link or a device at `path` is an error, never silently turned into a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let io = |source| Error::Io {
        path: path.display().to_string(),
        source,
    };
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if !m.file_type().is_file() {
            return Err(Error::invalid(
                "write",
                format!(
                    "{} is not a regular file (a link, a folder or a device): not replaced",
                    path.display()
                ),
            ));
        }
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let tmp = dir.join(format!(
        ".{}.{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        if let Some(e) = injected_failure(path) {
            f.write_all(&bytes[..bytes.len() / 2])?;
            return Err(e);
        }
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        std::fs::remove_file(&tmp).ok();
        return Err(io(e));
    }
    // The rename itself reaches the disk with the folder's entry.
    if let Ok(d) = std::fs::File::open(dir) {
        d.sync_all().ok();
    }
    Ok(())
}

/// A top-level key that the JSON header repeats, if any: JSON maps keep only the last of a
/// repeated key, so a file naming one tensor twice would otherwise load silently.
fn repeated_key(header: &[u8]) -> std::result::Result<Option<String>, String> {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
    struct FirstRepeat;
    impl<'de> Visitor<'de> for FirstRepeat {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(
            self,
            mut map: A,
        ) -> std::result::Result<Self::Value, A::Error> {
            let mut seen = std::collections::HashSet::new();
            let mut repeat = None;
            while let Some(key) = map.next_key::<String>()? {
                map.next_value::<IgnoredAny>()?;
                if !seen.insert(key.clone()) && repeat.is_none() {
                    repeat = Some(key);
                }
            }
            Ok(repeat)
        }
    }
    serde_json::Deserializer::from_slice(header)
        .deserialize_map(FirstRepeat)
        .map_err(|e| format!("not a valid safetensors header: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corrupt_file() {
        let dir = std::env::temp_dir().join(format!("gshn-io-{}", std::process::id()));
        let path = dir.join("t.safetensors");
        let ts = vec![
            (
                "a".to_string(),
                Tensor::new([2, 3], vec![1.0f32, -2.0, 3.5, 0.25, 9.0, -1e-3]).unwrap(),
            ),
            (
                "b".to_string(),
                Tensor::new([4], vec![1i32, 2, 3, -4]).unwrap(),
            ),
            (
                "c".to_string(),
                Tensor::new([1], vec![std::f64::consts::PI]).unwrap(),
            ),
        ];
        let meta = HashMap::from([("step".to_string(), "12".to_string())]);
        save_safetensors(&path, &ts, Some(meta.clone())).unwrap();
        let (back, m) = load_safetensors(&path).unwrap();
        assert_eq!(back, ts);
        assert_eq!(m, meta);
        std::fs::write(&path, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json").unwrap();
        let e = load_safetensors(&path).unwrap_err().to_string();
        assert!(
            e.contains("t.safetensors") && e.contains("not a valid"),
            "{e}"
        );
        // A link is not replaced by a file (its target stays as it was); no temporary file
        // is left behind by any write.
        #[cfg(unix)]
        {
            let target = dir.join("target.bin");
            std::fs::write(&target, b"keep").unwrap();
            let link = dir.join("link.safetensors");
            std::os::unix::fs::symlink(&target, &link).unwrap();
            let e = save_safetensors(&link, &ts, None).unwrap_err().to_string();
            assert!(e.contains("not a regular file"), "{e}");
            assert_eq!(std::fs::read(&target).unwrap(), b"keep");
            assert!(std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink());
            let e = write_atomic(&dir, b"x").unwrap_err().to_string();
            assert!(e.contains("not a regular file"), "{e}");
        }
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        // One tensor named twice: JSON keeps the last, the reader refuses the file.
        let header = br#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        bytes.extend_from_slice(&1.0f32.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let e = load_safetensors(&path).unwrap_err().to_string();
        assert!(e.contains("\"a\" twice"), "{e}");
        std::fs::remove_dir_all(dir).ok();
    }
}
