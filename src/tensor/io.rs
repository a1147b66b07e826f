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
/// tensors are widened to f32; other dtypes are refused.
pub fn load_safetensors(path: &Path) -> Result<(NamedTensors, Metadata)> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse_safetensors(&bytes).map_err(|msg| Error::Format {
        path: path.display().to_string(),
        msg,
    })
}

fn parse_safetensors(bytes: &[u8]) -> std::result::Result<(NamedTensors, Metadata), String> {
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
            StDtype::F16 => Storage::F32(
                data.chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes(c.try_into().unwrap()).to_f32())
                    .collect(),
            ),
            StDtype::BF16 => Storage::F32(
                data.chunks_exact(2)
                    .map(|c| half::bf16::from_le_bytes(c.try_into().unwrap()).to_f32())
                    .collect(),
            ),
            other => {
                return Err(format!(
                    "{name}: dtype {other:?} is not supported (use f32, f64, f16, bf16 or i32)"
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

/// Writes `bytes` to `path` via a temporary file in the same folder and a rename, so a
/// crash leaves either the old file or the new one, never a torn one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let io = |source| Error::Io {
        path: path.display().to_string(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io)
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
