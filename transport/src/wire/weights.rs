//! Whole-model weight transfer: one versioned, checksummed buffer per version, streamed in
//! buckets.
//!
//! A version is encoded once per publish ([`EncodedWeights::encode`]): a payload (every tensor's
//! f32 values, little-endian, concatenated in `Llama::to_named` order), its CRC-32C, and a
//! header naming each tensor and its shape. Every actor is sent the header chunk, then data
//! chunks of at most `chunk_bytes` ("buckets"), each a zero-copy slice of the one payload
//! ([`EncodedWeights::chunks`]), never one message per tensor.
//!
//! The receiving side feeds chunks to a [`WeightsAssembler`], which checks sizes as they arrive
//! and the checksum at the last byte, and hands back [`AssembledWeights`];
//! [`AssembledWeights::into_model`] rebuilds the model on a device.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use bytes::Bytes;
use kaizen_core::WeightsVersion;
use kaizen_model::{HostTensor, Llama, LlamaConfig};

use super::proto::{self, WeightsChunk, WeightsHeader, weights_chunk};
use crate::Error;

/// Bytes per value on the wire (f32).
const F32_BYTES: usize = std::mem::size_of::<f32>();

/// One weights version, encoded for the wire.
#[derive(Debug, Clone)]
pub struct EncodedWeights {
    header: WeightsHeader,
    payload: Bytes,
}

impl EncodedWeights {
    /// Encodes `model` as `version`.
    ///
    /// # Errors
    /// [`Error::Weights`] if the model's config cannot be serialised.
    pub fn encode(model: &Llama, version: WeightsVersion) -> Result<Self, Error> {
        let config_json = serde_json::to_string(model.config())
            .map_err(|e| Error::Weights(format!("model config as JSON: {e}")))?;
        let named = model.to_named();
        let total: usize = named.iter().map(|(_, t)| t.data.len() * F32_BYTES).sum();
        let mut payload = Vec::with_capacity(total);
        let mut tensors = Vec::with_capacity(named.len());
        for (name, tensor) in named {
            extend_le(&mut payload, &tensor.data);
            tensors.push(proto::TensorInfo {
                name,
                shape: tensor.shape.iter().map(|&d| d as u64).collect(),
            });
        }
        Ok(Self {
            header: WeightsHeader {
                version: version.0,
                config_json,
                tensors,
                payload_bytes: payload.len() as u64,
                crc32c: crc32c::crc32c(&payload),
            },
            payload: Bytes::from(payload),
        })
    }

    /// The version.
    pub fn version(&self) -> WeightsVersion {
        WeightsVersion(self.header.version)
    }

    /// Size of the payload (all tensors), bytes.
    pub fn payload_bytes(&self) -> u64 {
        self.header.payload_bytes
    }

    /// The header chunk, then data chunks of at most `chunk_bytes` (at least 1), each a
    /// zero-copy slice of the one payload.
    pub fn chunks(&self, chunk_bytes: usize) -> impl Iterator<Item = WeightsChunk> + '_ {
        let step = chunk_bytes.max(1);
        let len = self.payload.len();
        let header = WeightsChunk {
            body: Some(weights_chunk::Body::Header(self.header.clone())),
        };
        let data = (0..len).step_by(step).map(move |start| WeightsChunk {
            body: Some(weights_chunk::Body::Data(
                self.payload.slice(start..len.min(start + step)),
            )),
        });
        std::iter::once(header).chain(data)
    }
}

/// A complete, checksummed weights version received from a peer.
#[derive(Debug)]
pub struct AssembledWeights {
    /// The version.
    pub version: WeightsVersion,
    /// The model's configuration (validated).
    pub config: LlamaConfig,
    /// Names and shapes in payload order; their sizes sum to the payload's (checked).
    tensors: Vec<(String, Vec<usize>)>,
    payload: Vec<u8>,
}

impl AssembledWeights {
    /// Builds the model on `device`.
    ///
    /// # Errors
    /// [`Error::Weights`] naming a tensor the model does not accept (missing, misshaped,
    /// unexpected).
    pub fn into_model(self, device: &burn::tensor::Device) -> Result<Llama, Error> {
        let label = format!("version {}", self.version.0);
        let mut named: HashMap<String, HostTensor> = HashMap::with_capacity(self.tensors.len());
        let mut rest = self.payload.as_slice();
        for (name, shape) in self.tensors {
            // The assembler checked that the shapes' sizes sum to the payload's without
            // overflow, so neither the product nor the split can fail; they are still checked.
            let bytes = shape
                .iter()
                .try_fold(F32_BYTES, |acc, &d| acc.checked_mul(d))
                .filter(|&n| n <= rest.len())
                .ok_or_else(|| {
                    Error::Weights(format!(
                        "{label}: tensor `{name}` of shape {shape:?} runs past the payload"
                    ))
                })?;
            let (values, tail) = rest.split_at(bytes);
            rest = tail;
            let data = read_le(values);
            named.insert(name, HostTensor::new(shape, data));
        }
        Llama::from_named(&self.config, &mut named, Path::new(&label), device).map_err(|e| {
            match e {
                // The label is the "path"; say it once.
                kaizen_model::Error::Weights { message, .. } => {
                    Error::Weights(format!("{label}: {message}"))
                }
                e => Error::Weights(format!("{label}: {e}")),
            }
        })
    }
}

/// Appends `values` as little-endian bytes (one copy on little-endian hosts).
pub fn extend_le(out: &mut Vec<u8>, values: &[f32]) {
    if cfg!(target_endian = "little") {
        out.extend_from_slice(bytemuck::cast_slice(values));
    } else {
        for x in values {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
}

/// Little-endian bytes as f32 values; `bytes.len()` is a multiple of 4 (callers pass whole
/// tensors, sized from their shapes).
pub fn read_le(bytes: &[u8]) -> Vec<f32> {
    if cfg!(target_endian = "little") {
        // Copies into an aligned buffer; the payload's alignment is not guaranteed.
        bytemuck::pod_collect_to_vec(bytes)
    } else {
        bytes
            .chunks_exact(F32_BYTES)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }
}

/// The version being received.
#[derive(Debug)]
struct Partial {
    header: WeightsHeader,
    config: LlamaConfig,
    tensors: Vec<(String, Vec<usize>)>,
    payload: Vec<u8>,
}

/// Reassembles a weights stream (a header, then data chunks), checking sizes as chunks arrive and
/// the checksum at the last byte. After an error it drops the version it was receiving and
/// waits for the next header.
#[derive(Debug)]
pub struct WeightsAssembler {
    max_payload_bytes: u64,
    peer: String,
    current: Option<Partial>,
}

impl WeightsAssembler {
    /// An assembler accepting payloads of up to `max_payload_bytes` from `peer` (its name or
    /// address, for errors).
    pub fn new(max_payload_bytes: u64, peer: impl Into<String>) -> Self {
        Self {
            max_payload_bytes,
            peer: peer.into(),
            current: None,
        }
    }

    /// Drops the version being received and returns the protocol error.
    fn refuse(&mut self, message: String) -> Error {
        self.current = None;
        Error::Protocol {
            peer: self.peer.clone(),
            message,
        }
    }

    /// Takes the next chunk; returns the weights when their last byte arrives.
    ///
    /// # Errors
    /// [`Error::Protocol`] naming the peer: an empty chunk, data before a header, a header while
    /// another version is incomplete, a payload larger than allowed or than its tensors' shapes,
    /// duplicate tensor names, an invalid config, more data than announced, a checksum
    /// mismatch.
    pub fn push(&mut self, chunk: WeightsChunk) -> Result<Option<AssembledWeights>, Error> {
        match chunk.body {
            None => Err(self.refuse("a weights chunk with neither header nor data".into())),
            Some(weights_chunk::Body::Header(header)) => {
                if let Some(p) = &self.current {
                    let message = format!(
                        "a weights header for version {} while version {} is incomplete \
                         ({} of {} bytes)",
                        header.version,
                        p.header.version,
                        p.payload.len(),
                        p.header.payload_bytes
                    );
                    return Err(self.refuse(message));
                }
                match self.start(header) {
                    Ok(partial) => {
                        self.current = Some(partial);
                        self.complete()
                    }
                    Err(message) => Err(self.refuse(message)),
                }
            }
            Some(weights_chunk::Body::Data(data)) => {
                let Some(p) = &mut self.current else {
                    return Err(self.refuse(format!(
                        "a weights data chunk ({} bytes) before any header",
                        data.len()
                    )));
                };
                let announced = p.header.payload_bytes;
                let have = p.payload.len() as u64;
                if data.len() as u64 > announced.saturating_sub(have) {
                    let message = format!(
                        "weights version {}: more data than the {announced} bytes announced \
                         ({have} received, then a chunk of {})",
                        p.header.version,
                        data.len()
                    );
                    return Err(self.refuse(message));
                }
                p.payload.extend_from_slice(&data);
                self.complete()
            }
        }
    }

    /// Checks a header and prepares to receive its payload; the error says what is wrong.
    fn start(&self, header: WeightsHeader) -> Result<Partial, String> {
        let version = header.version;
        if header.payload_bytes > self.max_payload_bytes {
            return Err(format!(
                "weights version {version}: payload_bytes = {} is more than the {} allowed",
                header.payload_bytes, self.max_payload_bytes
            ));
        }
        let mut names = HashSet::with_capacity(header.tensors.len());
        let mut tensors = Vec::with_capacity(header.tensors.len());
        let mut expected: u64 = 0;
        for t in &header.tensors {
            if !names.insert(t.name.as_str()) {
                return Err(format!(
                    "weights version {version}: tensor `{}` is listed twice",
                    t.name
                ));
            }
            let shape = t
                .shape
                .iter()
                .map(|&d| usize::try_from(d).ok())
                .collect::<Option<Vec<usize>>>();
            let sum = t
                .shape
                .iter()
                .try_fold(F32_BYTES as u64, |acc, &d| acc.checked_mul(d))
                .and_then(|n| expected.checked_add(n));
            match (shape, sum) {
                (Some(shape), Some(sum)) => {
                    expected = sum;
                    tensors.push((t.name.clone(), shape));
                }
                _ => {
                    return Err(format!(
                        "weights version {version}: tensor `{}` has shape {:?}, whose size \
                         overflows",
                        t.name, t.shape
                    ));
                }
            }
        }
        if expected != header.payload_bytes {
            return Err(format!(
                "weights version {version}: the tensors' shapes need {expected} bytes but \
                 payload_bytes = {}",
                header.payload_bytes
            ));
        }
        let config = LlamaConfig::from_json_str(&header.config_json)
            .map_err(|e| format!("weights version {version}: config_json: {e}"))?;
        // Bounded by `max_payload_bytes` (checked above).
        let capacity = usize::try_from(header.payload_bytes).map_err(|_| {
            format!(
                "weights version {version}: payload_bytes = {} does not fit in memory",
                header.payload_bytes
            )
        })?;
        Ok(Partial {
            header,
            config,
            tensors,
            payload: Vec::with_capacity(capacity),
        })
    }

    /// The weights if their last byte has arrived and the checksum matches.
    fn complete(&mut self) -> Result<Option<AssembledWeights>, Error> {
        let done = matches!(
            &self.current,
            Some(p) if p.payload.len() as u64 == p.header.payload_bytes
        );
        if !done {
            return Ok(None);
        }
        let Some(p) = self.current.take() else {
            return Ok(None);
        };
        let found = crc32c::crc32c(&p.payload);
        if found != p.header.crc32c {
            return Err(self.refuse(format!(
                "weights version {}: checksum mismatch (expected CRC-32C {:08x}, found {found:08x})",
                p.header.version, p.header.crc32c
            )));
        }
        Ok(Some(AssembledWeights {
            version: WeightsVersion(p.header.version),
            config: p.config,
            tensors: p.tensors,
            payload: p.payload,
        }))
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::Device;

    use super::*;

    /// Smaller than `LlamaConfig::tiny` (fast in debug builds), with every kind of tensor:
    /// untied `lm_head`, q/k/v biases and a value head.
    fn tiny_config() -> LlamaConfig {
        LlamaConfig {
            hidden_size: 32,
            intermediate_size: 48,
            num_hidden_layers: 2,
            tie_word_embeddings: false,
            attention_bias: true,
            value_head: true,
            ..LlamaConfig::tiny(40)
        }
    }

    fn model(seed: u64) -> Llama {
        Llama::init(&tiny_config(), &Device::default(), seed).unwrap()
    }

    fn encoded(version: u64) -> EncodedWeights {
        EncodedWeights::encode(&model(11), WeightsVersion(version)).unwrap()
    }

    fn header_of(chunk: &mut WeightsChunk) -> &mut WeightsHeader {
        match &mut chunk.body {
            Some(weights_chunk::Body::Header(h)) => h,
            other => panic!("expected a header, got {other:?}"),
        }
    }

    fn data_of(chunk: &WeightsChunk) -> &Bytes {
        match &chunk.body {
            Some(weights_chunk::Body::Data(d)) => d,
            other => panic!("expected data, got {other:?}"),
        }
    }

    /// Feeds every chunk; the weights completed by the last one, if any.
    fn assemble(
        asm: &mut WeightsAssembler,
        chunks: Vec<WeightsChunk>,
    ) -> Result<Option<AssembledWeights>, Error> {
        let mut out = None;
        for c in chunks {
            assert!(out.is_none(), "chunks after the weights were complete");
            out = asm.push(c)?;
        }
        Ok(out)
    }

    /// The error message of a refused stream, checked to be a protocol error naming the peer.
    fn refused(result: Result<Option<AssembledWeights>, Error>) -> String {
        match result {
            Err(e @ Error::Protocol { .. }) => {
                let message = e.to_string();
                assert!(message.contains("coordinator"), "names the peer: {message}");
                message
            }
            Err(e) => panic!("expected a protocol error, got {e}"),
            Ok(w) => panic!("a bad stream was accepted: {w:?}"),
        }
    }

    fn assert_same_weights(a: &Llama, b: &Llama) {
        let (a, b) = (a.to_named(), b.to_named());
        assert_eq!(a.len(), b.len());
        for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
            assert_eq!(na, nb);
            assert_eq!(ta.shape, tb.shape, "{na}");
            let bits = |t: &HostTensor| t.data.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert!(bits(ta) == bits(tb), "{na} differs");
        }
    }

    #[test]
    fn weights_round_trip_bit_for_bit_in_small_chunks() {
        let m = model(11);
        let encoded = EncodedWeights::encode(&m, WeightsVersion(7)).unwrap();
        assert_eq!(encoded.version(), WeightsVersion(7));
        let chunks: Vec<WeightsChunk> = encoded.chunks(1000).collect();
        let expected = encoded.payload_bytes().div_ceil(1000) as usize;
        assert_eq!(
            chunks.len(),
            1 + expected,
            "a header, then 1000-byte buckets"
        );
        let mut asm = WeightsAssembler::new(encoded.payload_bytes(), "coordinator");
        let w = assemble(&mut asm, chunks).unwrap().expect("complete");
        assert_eq!(w.version, WeightsVersion(7));
        assert_eq!(&w.config, m.config());
        let back = w.into_model(&Device::default()).unwrap();
        assert_eq!(back.config(), m.config());
        assert_same_weights(&m, &back);
    }

    #[test]
    fn the_payload_is_every_tensor_little_endian_in_named_order() {
        let m = model(11);
        let encoded = EncodedWeights::encode(&m, WeightsVersion(1)).unwrap();
        let named = m.to_named();
        let mut chunks = encoded.chunks(usize::MAX);
        let mut header = chunks.next().unwrap();
        let header = header_of(&mut header).clone();
        let names: Vec<&str> = header.tensors.iter().map(|t| t.name.as_str()).collect();
        let expected: Vec<&str> = named.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, expected);
        assert!(names.contains(&"lm_head.weight") && names.contains(&"v_head.summary.bias"));
        for (info, (_, t)) in header.tensors.iter().zip(&named) {
            let shape: Vec<u64> = t.shape.iter().map(|&d| d as u64).collect();
            assert_eq!(info.shape, shape, "{}", info.name);
        }
        let payload: Vec<u8> = named
            .iter()
            .flat_map(|(_, t)| t.data.iter().flat_map(|x| x.to_le_bytes()))
            .collect();
        let data = chunks.next().unwrap();
        assert_eq!(
            data_of(&data).as_ref(),
            payload.as_slice(),
            "one chunk: the whole payload"
        );
        assert!(chunks.next().is_none());
        assert_eq!(header.payload_bytes, payload.len() as u64);
        assert_eq!(header.crc32c, crc32c::crc32c(&payload));
        assert_eq!(header.version, 1);
        let config = LlamaConfig::from_json_str(&header.config_json).unwrap();
        assert_eq!(&config, m.config());
    }

    #[test]
    fn data_chunks_are_bounded_zero_copy_slices_of_one_payload() {
        let encoded = encoded(1);
        let chunks: Vec<WeightsChunk> = encoded.chunks(4096).skip(1).collect();
        let base = encoded.payload.as_ptr() as usize;
        let mut offset = 0;
        for c in &chunks {
            let d = data_of(c);
            assert!(!d.is_empty() && d.len() <= 4096, "{} bytes", d.len());
            assert_eq!(
                d.as_ptr() as usize,
                base + offset,
                "a slice of the payload, not a copy"
            );
            offset += d.len();
        }
        assert_eq!(offset as u64, encoded.payload_bytes());
    }

    #[test]
    fn a_zero_chunk_size_still_makes_progress() {
        let encoded = encoded(1);
        let mut chunks = encoded.chunks(0).skip(1);
        assert_eq!(data_of(&chunks.next().unwrap()).len(), 1);
    }

    #[test]
    fn one_assembler_receives_version_after_version() {
        let mut asm = WeightsAssembler::new(u64::MAX, "coordinator");
        for version in [3, 4, 9] {
            let encoded = encoded(version);
            let w = assemble(&mut asm, encoded.chunks(7000).collect()).unwrap();
            assert_eq!(w.expect("complete").version, WeightsVersion(version));
        }
    }

    #[test]
    fn a_corrupted_byte_fails_the_checksum_naming_both_values() {
        let encoded = encoded(1);
        let mut chunks: Vec<WeightsChunk> = encoded.chunks(1000).collect();
        let last = chunks.len() - 1;
        let mut bytes = data_of(&chunks[last]).to_vec();
        bytes[0] ^= 0x10;
        chunks[last].body = Some(weights_chunk::Body::Data(Bytes::from(bytes)));
        let mut asm = WeightsAssembler::new(u64::MAX, "coordinator");
        let e = refused(assemble(&mut asm, chunks));
        let expected = format!(
            "expected CRC-32C {:08x}",
            header_of(&mut encoded.chunks(1).next().unwrap()).crc32c
        );
        assert!(
            e.contains("checksum mismatch") && e.contains(&expected),
            "{e}"
        );
        assert!(e.contains("found "), "{e}");
    }

    #[test]
    fn a_truncated_stream_is_not_complete() {
        let encoded = encoded(1);
        let mut chunks: Vec<WeightsChunk> = encoded.chunks(1000).collect();
        chunks.pop();
        let mut asm = WeightsAssembler::new(u64::MAX, "coordinator");
        assert!(assemble(&mut asm, chunks).unwrap().is_none());
        // A header only: not complete either.
        let mut asm = WeightsAssembler::new(u64::MAX, "coordinator");
        assert!(
            assemble(&mut asm, encoded.chunks(1000).take(1).collect())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_new_header_while_a_version_is_incomplete_is_refused() {
        let (v1, v2) = (encoded(1), encoded(2));
        let mut chunks: Vec<WeightsChunk> = v1.chunks(1000).take(3).collect();
        chunks.extend(v2.chunks(1000));
        let mut asm = WeightsAssembler::new(u64::MAX, "coordinator");
        let e = refused(assemble(&mut asm, chunks));
        assert!(
            e.contains("version 2 while version 1 is incomplete (2000 of"),
            "{e}"
        );
        // The assembler starts over at the next header.
        let w = assemble(&mut asm, v2.chunks(1000).collect()).unwrap();
        assert_eq!(w.expect("complete").version, WeightsVersion(2));
    }

    #[test]
    fn more_data_than_announced_is_refused() {
        let encoded = encoded(1);
        let mut chunks: Vec<WeightsChunk> = encoded.chunks(1000).collect();
        let extra = chunks[1].clone();
        let last = chunks.pop().unwrap();
        chunks.push(extra);
        chunks.push(last);
        let mut asm = WeightsAssembler::new(u64::MAX, "coordinator");
        let e = refused(assemble(&mut asm, chunks));
        let announced = format!(
            "more data than the {} bytes announced",
            encoded.payload_bytes()
        );
        assert!(e.contains(&announced), "{e}");
    }

    #[test]
    fn data_before_a_header_is_refused() {
        let encoded = encoded(1);
        let mut asm = WeightsAssembler::new(u64::MAX, "coordinator");
        let e = refused(assemble(&mut asm, encoded.chunks(1000).skip(1).collect()));
        assert!(
            e.contains("data chunk (1000 bytes) before any header"),
            "{e}"
        );
    }

    #[test]
    fn an_empty_chunk_is_refused() {
        let mut asm = WeightsAssembler::new(u64::MAX, "coordinator");
        let e = refused(asm.push(WeightsChunk { body: None }));
        assert!(e.contains("neither header nor data"), "{e}");
    }

    #[test]
    fn a_payload_over_the_limit_is_refused_at_the_header() {
        let encoded = encoded(1);
        let limit = encoded.payload_bytes() - 1;
        let mut asm = WeightsAssembler::new(limit, "coordinator");
        let e = refused(asm.push(encoded.chunks(1000).next().unwrap()));
        assert!(e.contains(&format!("more than the {limit} allowed")), "{e}");
    }

    #[test]
    fn shapes_that_disagree_with_the_payload_size_are_refused() {
        let mut header = encoded(1).chunks(1000).next().unwrap();
        header_of(&mut header).tensors[0].shape[0] += 1;
        let mut asm = WeightsAssembler::new(u64::MAX, "coordinator");
        let e = refused(asm.push(header));
        assert!(
            e.contains("the tensors' shapes need") && e.contains("payload_bytes = "),
            "{e}"
        );
    }

    #[test]
    fn overflowing_shapes_are_refused() {
        let mut header = encoded(1).chunks(1000).next().unwrap();
        header_of(&mut header).tensors[0].shape = vec![u64::MAX, 2];
        let mut asm = WeightsAssembler::new(u64::MAX, "coordinator");
        let e = refused(asm.push(header));
        assert!(
            e.contains("model.embed_tokens.weight") && e.contains("overflows"),
            "{e}"
        );
    }

    #[test]
    fn a_tensor_listed_twice_is_refused() {
        let mut header = encoded(1).chunks(1000).next().unwrap();
        let h = header_of(&mut header);
        h.tensors[2].name = h.tensors[1].name.clone();
        let mut asm = WeightsAssembler::new(u64::MAX, "coordinator");
        let e = refused(asm.push(header));
        assert!(e.contains("is listed twice"), "{e}");
    }

    #[test]
    fn an_invalid_config_is_refused() {
        let mut asm = WeightsAssembler::new(u64::MAX, "coordinator");
        for bad in ["{not json", "{\"vocab_size\": 0}"] {
            let mut header = encoded(1).chunks(1000).next().unwrap();
            header_of(&mut header).config_json = bad.into();
            let e = refused(asm.push(header));
            assert!(e.contains("config_json"), "{e}");
        }
    }

    #[test]
    fn a_tensor_the_model_does_not_have_fails_naming_it() {
        let encoded = encoded(1);
        let mut chunks: Vec<WeightsChunk> = encoded.chunks(1 << 20).collect();
        header_of(&mut chunks[0]).tensors[0].name = "model.embed_tokens.weights".into();
        let mut asm = WeightsAssembler::new(u64::MAX, "coordinator");
        let w = assemble(&mut asm, chunks).unwrap().expect("complete");
        match w.into_model(&Device::default()) {
            Err(Error::Weights(e)) => {
                assert!(e.contains("model.embed_tokens.weight"), "{e}");
                assert!(e.starts_with("version 1: missing tensor"), "{e}");
            }
            Err(e) => panic!("expected a weights error, got {e}"),
            Ok(_) => panic!("a model was built without its embedding"),
        }
    }
}
