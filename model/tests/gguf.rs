//! The GGUF reader: dequantizers against the `gguf` Python package, round trip of a file written
//! here, clear errors, and a mutation test over the header and tensor table (no panics).

use std::path::Path;

use kaizen_model::{GgmlType, GgufFile, MetaValue, dequantize};

#[test]
fn dequantizers_match_the_gguf_python_package() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/gguf_quants.json"
    );
    let fixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut seen = Vec::new();
    for case in fixture["cases"].as_array().unwrap() {
        let name = case["type"].as_str().unwrap();
        let ty = GgmlType::from_id(case["type_id"].as_u64().unwrap() as u32).unwrap();
        let hex = case["hex"].as_str().unwrap();
        let raw: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let expected: Vec<f32> = case["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let mut got = vec![0.0; expected.len()];
        dequantize(ty, &raw, &mut got);
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            let tol = 1e-6 * e.abs().max(1.0);
            assert!((g - e).abs() <= tol, "{name}[{i}]: {g} vs gguf {e}");
        }
        seen.push(name.to_string());
    }
    assert_eq!(
        seen,
        [
            "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"
        ]
    );
}

/// Writes a GGUF v3 file (the test's own writer, independent of the reader).
struct Writer {
    kv: Vec<u8>,
    kv_count: u64,
    tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
}

impl Writer {
    fn new() -> Self {
        Self {
            kv: Vec::new(),
            kv_count: 0,
            tensors: Vec::new(),
        }
    }

    fn string(buf: &mut Vec<u8>, s: &str) {
        buf.extend((s.len() as u64).to_le_bytes());
        buf.extend(s.as_bytes());
    }

    fn kv(&mut self, key: &str, ty: u32, value: &[u8]) -> &mut Self {
        Self::string(&mut self.kv, key);
        self.kv.extend(ty.to_le_bytes());
        self.kv.extend(value);
        self.kv_count += 1;
        self
    }

    fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, data: Vec<u8>) -> &mut Self {
        self.tensors.push((name.into(), dims.to_vec(), ty, data));
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend(self.kv_count.to_le_bytes());
        out.extend(&self.kv);
        let mut offset = 0u64;
        let mut offsets = Vec::new();
        for (name, dims, ty, data) in &self.tensors {
            Self::string(&mut out, name);
            out.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(ty.to_le_bytes());
            out.extend(offset.to_le_bytes());
            offsets.push(offset);
            offset += (data.len() as u64).div_ceil(32) * 32;
        }
        while !out.len().is_multiple_of(32) {
            out.push(0);
        }
        for ((_, _, _, data), off) in self.tensors.iter().zip(offsets) {
            let start = out.len() as u64;
            assert_eq!(start % 32, 0);
            let _ = off;
            out.extend(data);
            while !out.len().is_multiple_of(32) {
                out.push(0);
            }
        }
        out
    }
}

fn sample_file() -> Vec<u8> {
    let mut tokens = Vec::new();
    tokens.extend(8u32.to_le_bytes());
    tokens.extend(3u64.to_le_bytes());
    for t in ["a", "bb", "ccc"] {
        Writer::string(&mut tokens, t);
    }
    let mut name = Vec::new();
    Writer::string(&mut name, "tiny");
    let f32s: Vec<u8> = (0..6)
        .flat_map(|i| (i as f32 * 0.5).to_le_bytes())
        .collect();
    let mut q8 = vec![0x00, 0x3C]; // d = 1.0
    q8.extend((0..32).map(|i| (i as i8 - 16) as u8));
    let mut w = Writer::new();
    w.kv("general.architecture", 8, &name)
        .kv("llama.block_count", 4, &2u32.to_le_bytes())
        .kv("llama.rope.freq_base", 6, &100000f32.to_le_bytes())
        .kv("flag", 7, &[1])
        .kv("tokenizer.ggml.tokens", 9, &tokens)
        .kv("big", 10, &u64::MAX.to_le_bytes())
        .tensor("m.weight", &[3, 2], 0, f32s)
        .tensor("q.weight", &[32], 8, q8);
    w.bytes()
}

#[test]
fn a_written_file_reads_back() {
    let file = GgufFile::parse(Path::new("sample.gguf"), sample_file()).unwrap();
    assert_eq!(file.version, 3);
    assert_eq!(file.get_str("general.architecture").unwrap(), "tiny");
    assert_eq!(file.get_usize("llama.block_count").unwrap(), 2);
    assert_eq!(file.get_f64("llama.rope.freq_base").unwrap(), 100000.0);
    assert_eq!(file.metadata["flag"], MetaValue::Bool(true));
    assert_eq!(file.get_array("tokenizer.ggml.tokens").unwrap().len(), 3);
    let m = file.tensor_f32("m.weight").unwrap();
    assert_eq!(m.shape, vec![2, 3], "ggml dims [3, 2] are a 2 × 3 matrix");
    assert_eq!(m.data, vec![0.0, 0.5, 1.0, 1.5, 2.0, 2.5]);
    let q = file.tensor_f32("q.weight").unwrap();
    assert_eq!(q.data[0], -16.0);
    assert_eq!(q.data[31], 15.0);
    let err = file.get_str("llama.block_count").unwrap_err().to_string();
    assert!(
        err.contains("`llama.block_count`") && err.contains("sample.gguf"),
        "{err}"
    );
    let err = file.tensor_f32("nope").unwrap_err().to_string();
    assert!(err.contains("missing tensor `nope`"), "{err}");
}

#[test]
fn malformed_files_give_errors_that_say_what_is_wrong() {
    let good = sample_file();
    let parse = |bytes: Vec<u8>| {
        GgufFile::parse(Path::new("x.gguf"), bytes)
            .unwrap_err()
            .to_string()
    };
    let mut bad = good.clone();
    bad[0] = b'X';
    assert!(parse(bad).contains("magic"));
    let mut bad = good.clone();
    bad[4] = 2;
    assert!(parse(bad).contains("version 2"));
    let err = parse(good[..good.len() - 40].to_vec());
    assert!(
        err.contains("q.weight") && err.contains("truncated"),
        "{err}"
    );
    let err = parse(good[..30].to_vec());
    assert!(err.contains("truncated"), "{err}");

    // An unsupported quantization type names the tensor and the type.
    let mut w = Writer::new();
    w.tensor("blk.0.attn_q.weight", &[256], 11, vec![0; 110]);
    let err = parse(w.bytes());
    assert!(
        err.contains("blk.0.attn_q.weight") && err.contains("Q3_K"),
        "{err}"
    );
    // A huge array count does not allocate: it is rejected.
    let mut w = Writer::new();
    let mut arr = 4u32.to_le_bytes().to_vec();
    arr.extend(u64::MAX.to_le_bytes());
    w.kv("huge", 9, &arr);
    assert!(parse(w.bytes()).contains("cannot fit"));
}

/// xorshift64*, so the mutation test needs no extra crate.
fn next(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

#[test]
fn mutated_headers_and_tensor_tables_never_panic() {
    let good = sample_file();
    // Bytes before the data section: header, metadata and tensor table.
    let table_end = good.len() - 64;
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut errors = 0;
    for _ in 0..3000 {
        let mut bytes = good.clone();
        let flips = 1 + next(&mut state) % 4;
        for _ in 0..flips {
            let at = (next(&mut state) as usize) % table_end;
            bytes[at] = next(&mut state) as u8;
        }
        if next(&mut state).is_multiple_of(5) {
            let keep = (next(&mut state) as usize) % bytes.len();
            bytes.truncate(keep);
        }
        let result = std::panic::catch_unwind(move || {
            let file = GgufFile::parse(Path::new("m.gguf"), bytes)?;
            for t in file.tensors.clone() {
                file.tensor_f32(&t.name)?;
            }
            Ok::<_, kaizen_model::Error>(())
        });
        match result {
            Ok(Ok(())) => {}
            Ok(Err(_)) => errors += 1,
            Err(_) => panic!("the GGUF reader panicked on a mutated file"),
        }
    }
    assert!(errors > 1000, "most mutations must be caught ({errors})");
}
