//! A reader for GGUF (version 3) files: metadata, tensor table and dequantized tensors.
//!
//! kaizen reads GGUF itself rather than through a crate: the format is small (header,
//! key/value metadata, tensor table, aligned data), and the crates available when this was
//! written either pull in a whole tensor framework (candle) or report failures without naming
//! the offending key, tensor or byte offset, which kaizen's error rules require. Every length
//! and offset read from the file is checked against the file's size before use, so malformed
//! files give errors, never panics (see the mutation test in `tests/gguf.rs`).
//!
//! Format: <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::dequant::{GgmlType, dequantize};
use crate::weights::HostTensor;
use crate::{Error, Result};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    /// `u8`
    U8(u8),
    /// `i8`
    I8(i8),
    /// `u16`
    U16(u16),
    /// `i16`
    I16(i16),
    /// `u32`
    U32(u32),
    /// `i32`
    I32(i32),
    /// `f32`
    F32(f32),
    /// `bool`
    Bool(bool),
    /// UTF-8 string
    String(String),
    /// Array of values of one type
    Array(Vec<MetaValue>),
    /// `u64`
    U64(u64),
    /// `i64`
    I64(i64),
    /// `f64`
    F64(f64),
}

impl MetaValue {
    /// The value as an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v as u64),
            MetaValue::U16(v) => Some(v as u64),
            MetaValue::U32(v) => Some(v as u64),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is numeric.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v as f64),
            MetaValue::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    /// The value as a string slice.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }
}

/// One entry of the tensor table.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions in ggml order (fastest-varying first): a `[rows, cols]` matrix has
    /// `dims = [cols, rows]`.
    pub dims: Vec<u64>,
    /// ggml type id.
    pub type_id: u32,
    /// Byte offset within the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// The row-major shape (ggml dims reversed).
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// A parsed GGUF file held in memory.
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    /// Format version (3).
    pub version: u32,
    /// Metadata, by key.
    pub metadata: BTreeMap<String, MetaValue>,
    /// The tensor table, in file order.
    pub tensors: Vec<TensorInfo>,
    bytes: Vec<u8>,
    data_start: usize,
}

/// Bounds-checked little-endian reader over the file bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn err(&self, what: impl std::fmt::Display) -> Error {
        Error::Gguf {
            path: self.path.to_path_buf(),
            message: format!("at byte {}: {what}", self.pos),
        }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| {
                self.err(format!(
                    "{what}: needs {n} bytes but the file ends at {} (truncated?)",
                    self.bytes.len()
                ))
            })?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        let b = self.take(8, what)?;
        let mut a = [0; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64(what)?;
        let len = usize::try_from(len).map_err(|_| self.err(format!("{what}: length {len}")))?;
        let raw = self.take(len, what)?;
        String::from_utf8(raw.to_vec()).map_err(|_| self.err(format!("{what}: not UTF-8")))
    }

    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<MetaValue> {
        let what = format!("value of `{key}`");
        Ok(match ty {
            0 => MetaValue::U8(self.take(1, &what)?[0]),
            1 => MetaValue::I8(self.take(1, &what)?[0] as i8),
            2 => {
                let b = self.take(2, &what)?;
                MetaValue::U16(u16::from_le_bytes([b[0], b[1]]))
            }
            3 => {
                let b = self.take(2, &what)?;
                MetaValue::I16(i16::from_le_bytes([b[0], b[1]]))
            }
            4 => MetaValue::U32(self.u32(&what)?),
            5 => MetaValue::I32(self.u32(&what)? as i32),
            6 => MetaValue::F32(f32::from_bits(self.u32(&what)?)),
            7 => match self.take(1, &what)?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => return Err(self.err(format!("{what}: bool byte {b} is not 0 or 1"))),
            },
            8 => MetaValue::String(self.string(&what)?),
            9 => {
                if depth > 2 {
                    return Err(self.err(format!("{what}: arrays nested too deeply")));
                }
                let item = self.u32(&what)?;
                let count = self.u64(&what)?;
                // Every element takes at least one byte: a count beyond the remaining bytes
                // is corrupt (and would otherwise allocate unbounded memory).
                let remaining = (self.bytes.len() - self.pos) as u64;
                if count > remaining {
                    return Err(self.err(format!(
                        "{what}: array of {count} elements cannot fit in the {remaining} bytes left"
                    )));
                }
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(item, key, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(self.u64(&what)?),
            11 => MetaValue::I64(self.u64(&what)? as i64),
            12 => MetaValue::F64(f64::from_bits(self.u64(&what)?)),
            other => return Err(self.err(format!("{what}: unknown metadata type {other}"))),
        })
    }
}

impl GgufFile {
    /// Reads and parses a GGUF file.
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be read; [`Error::Gguf`] naming the file, the byte
    /// offset and what was expected for anything malformed (bad magic, unsupported version,
    /// truncation, out-of-range tensor offsets, …).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::parse(path, bytes)
    }

    /// Parses GGUF bytes; `path` labels errors.
    ///
    /// # Errors
    /// As [`GgufFile::open`].
    pub fn parse(path: &Path, bytes: Vec<u8>) -> Result<Self> {
        let mut c = Cursor {
            bytes: &bytes,
            pos: 0,
            path,
        };
        if c.take(4, "magic")? != MAGIC {
            return Err(c.err("not a GGUF file (magic bytes are not `GGUF`)"));
        }
        let version = c.u32("version")?;
        if version != 3 {
            return Err(c.err(format!(
                "GGUF version {version} is not supported (expected 3)"
            )));
        }
        let tensor_count = c.u64("tensor count")?;
        let kv_count = c.u64("metadata count")?;
        let remaining = bytes.len() as u64;
        if tensor_count > remaining || kv_count > remaining {
            return Err(c.err(format!(
                "{tensor_count} tensors / {kv_count} metadata entries cannot fit in a {remaining}-byte file"
            )));
        }
        let mut metadata = BTreeMap::new();
        for _ in 0..kv_count {
            let key = c.string("metadata key")?;
            let ty = c.u32(&format!("type of `{key}`"))?;
            let value = c.value(ty, &key, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(c.err(format!("duplicate metadata key `{key}`")));
            }
        }
        let mut tensors = Vec::with_capacity(tensor_count as usize);
        for _ in 0..tensor_count {
            let name = c.string("tensor name")?;
            let n_dims = c.u32(&format!("dimension count of `{name}`"))?;
            if n_dims == 0 || n_dims > 4 {
                return Err(c.err(format!(
                    "tensor `{name}` has {n_dims} dimensions (expected 1-4)"
                )));
            }
            let dims = (0..n_dims)
                .map(|_| c.u64(&format!("dimensions of `{name}`")))
                .collect::<Result<Vec<_>>>()?;
            let type_id = c.u32(&format!("type of `{name}`"))?;
            let offset = c.u64(&format!("offset of `{name}`"))?;
            tensors.push(TensorInfo {
                name,
                dims,
                type_id,
                offset,
            });
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => return Err(c.err(format!("`general.alignment` {v:?} is not a power of two"))),
            },
        };
        let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
        if data_start > bytes.len() as u64 {
            return Err(c.err("the data section starts beyond the end of the file (truncated?)"));
        }
        let file = Self {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            data_start: data_start as usize,
            bytes,
        };
        for t in &file.tensors {
            file.tensor_bytes(t)?;
        }
        Ok(file)
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, message: String) -> Error {
        Error::Gguf {
            path: self.path.clone(),
            message,
        }
    }

    /// The raw bytes of a tensor, after checking its type, size and offset.
    fn tensor_bytes(&self, t: &TensorInfo) -> Result<(GgmlType, usize, &[u8])> {
        let ty = GgmlType::from_id(t.type_id).ok_or_else(|| {
            self.err(format!(
                "tensor `{}` has type {} ({}), which kaizen cannot dequantize (supported: F32, F16, BF16, Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K)",
                t.name,
                t.type_id,
                GgmlType::name_of(t.type_id)
            ))
        })?;
        let elements = t
            .dims
            .iter()
            .try_fold(1usize, |acc, &d| {
                usize::try_from(d).ok().and_then(|d| acc.checked_mul(d))
            })
            .ok_or_else(|| {
                self.err(format!(
                    "tensor `{}` dimensions {:?} overflow",
                    t.name, t.dims
                ))
            })?;
        let size = ty.byte_size(elements).ok_or_else(|| {
            self.err(format!(
                "tensor `{}` has {elements} elements, not a whole number of {:?} blocks of {}",
                t.name,
                ty,
                ty.block().0
            ))
        })?;
        let start = (self.data_start as u64)
            .checked_add(t.offset)
            .and_then(|s| usize::try_from(s).ok());
        let end = start.and_then(|s| s.checked_add(size));
        match (start, end) {
            (Some(s), Some(e)) if e <= self.bytes.len() => Ok((ty, elements, &self.bytes[s..e])),
            _ => Err(self.err(format!(
                "tensor `{}` ({size} bytes at data offset {}) extends beyond the end of the file ({} bytes; truncated?)",
                t.name,
                t.offset,
                self.bytes.len()
            ))),
        }
    }

    /// A tensor's info by name.
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Dequantizes a tensor to f32 with its row-major shape.
    ///
    /// # Errors
    /// [`Error::Gguf`] naming the tensor if it is absent.
    pub fn tensor_f32(&self, name: &str) -> Result<HostTensor> {
        let info = self
            .info(name)
            .ok_or_else(|| self.err(format!("missing tensor `{name}`")))?;
        let (ty, elements, raw) = self.tensor_bytes(info)?;
        let mut data = vec![0.0f32; elements];
        dequantize(ty, raw, &mut data);
        Ok(HostTensor::new(info.shape(), data))
    }

    /// A metadata value by key.
    ///
    /// # Errors
    /// [`Error::Gguf`] naming the missing key.
    pub fn get(&self, key: &str) -> Result<&MetaValue> {
        self.metadata
            .get(key)
            .ok_or_else(|| self.err(format!("missing metadata key `{key}`")))
    }

    /// A non-negative integer metadata value.
    ///
    /// # Errors
    /// [`Error::Gguf`] naming the key when it is missing or not an integer.
    pub fn get_usize(&self, key: &str) -> Result<usize> {
        let v = self.get(key)?;
        v.as_u64()
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| {
                self.err(format!(
                    "metadata `{key}` = {v:?} is not a non-negative integer"
                ))
            })
    }

    /// A numeric metadata value as f64.
    ///
    /// # Errors
    /// [`Error::Gguf`] naming the key when it is missing or not numeric.
    pub fn get_f64(&self, key: &str) -> Result<f64> {
        let v = self.get(key)?;
        v.as_f64()
            .ok_or_else(|| self.err(format!("metadata `{key}` = {v:?} is not a number")))
    }

    /// A string metadata value.
    ///
    /// # Errors
    /// [`Error::Gguf`] naming the key when it is missing or not a string.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        let v = self.get(key)?;
        v.as_str()
            .ok_or_else(|| self.err(format!("metadata `{key}` is not a string")))
    }

    /// An array metadata value.
    ///
    /// # Errors
    /// [`Error::Gguf`] naming the key when it is missing or not an array.
    pub fn get_array(&self, key: &str) -> Result<&[MetaValue]> {
        match self.get(key)? {
            MetaValue::Array(items) => Ok(items),
            _ => Err(self.err(format!("metadata `{key}` is not an array"))),
        }
    }
}
