//! Whole-model weight transfer: one versioned, checksummed payload per version, streamed in
//! buckets.
//!
//! A version is encoded once per publish ([`EncodedWeights::encode`]): a payload (every tensor's
//! f32 values, little-endian, concatenated in `Llama::to_named` order), its CRC-32C, and a
//! header naming each tensor and its shape. The payload is held as one buffer per tensor, the
//! host copies `Llama::to_named` makes (in parallel), never copied again. Every actor is sent
//! the header chunk, then data chunks ("buckets") of at most `chunk_bytes`: large tensors go as
//! zero-copy slices of their buffer, runs of small ones (norms, biases) are packed together, so
//! a model is never sent as one message per tensor ([`EncodedWeights::chunks`]).
//!
//! The receiving side feeds chunks to a [`WeightsAssembler`], which checks sizes as they arrive,
//! writes each byte straight into its tensor's f32 buffer, updates the checksum chunk by chunk
//! and compares it at the last byte, and hands back [`AssembledWeights`];
//! [`AssembledWeights::into_model`] rebuilds the model on a device without another copy.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use bytes::{Bytes, BytesMut};
use kaizen_core::WeightsVersion;
use kaizen_model::{HostTensor, Llama, LlamaConfig};

use super::proto::{self, WeightsChunk, WeightsHeader, weights_chunk};
use crate::Error;

/// Bytes per value on the wire (f32).
const F32_BYTES: usize = std::mem::size_of::<f32>();

/// Pieces of a tensor shorter than this are packed with their neighbours into one chunk
/// (a copy); longer ones are sent as zero-copy slices even when shorter than a chunk.
const PACK_BELOW_BYTES: usize = 64 << 10;

/// One weights version, encoded for the wire.
#[derive(Debug, Clone)]
pub struct EncodedWeights {
    header: WeightsHeader,
    /// One little-endian buffer per tensor, in header order; concatenated they are the payload.
    segments: Vec<Bytes>,
}

/// A tensor's values as little-endian bytes without a copy (on little-endian hosts).
struct LeBytes(Vec<f32>);

impl AsRef<[u8]> for LeBytes {
    fn as_ref(&self) -> &[u8] {
        bytemuck::cast_slice(&self.0)
    }
}

impl EncodedWeights {
    /// Encodes `model` as `version`: one host copy of each tensor (made in parallel by
    /// `Llama::to_named`), then the CRC-32C over them.
    ///
    /// # Errors
    /// [`Error::Weights`] if the model's config cannot be serialised.
    pub fn encode(model: &Llama, version: WeightsVersion) -> Result<Self, Error> {
        let config_json = serde_json::to_string(model.config())
            .map_err(|e| Error::Weights(format!("model config as JSON: {e}")))?;
        let named = model.to_named();
        let mut segments = Vec::with_capacity(named.len());
        let mut tensors = Vec::with_capacity(named.len());
        let (mut payload_bytes, mut crc) = (0u64, 0u32);
        for (name, tensor) in named {
            tensors.push(proto::TensorInfo {
                name,
                shape: tensor.shape.iter().map(|&d| d as u64).collect(),
            });
            let segment = if cfg!(target_endian = "little") {
                Bytes::from_owner(LeBytes(tensor.data))
            } else {
                let mut le = Vec::with_capacity(tensor.data.len() * F32_BYTES);
                extend_le(&mut le, &tensor.data);
                Bytes::from(le)
            };
            crc = crc32c::crc32c_append(crc, &segment);
            payload_bytes += segment.len() as u64;
            segments.push(segment);
        }
        Ok(Self {
            header: WeightsHeader {
                version: version.0,
                config_json,
                tensors,
                payload_bytes,
                crc32c: crc,
                group_generation: 0,
            },
            segments,
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

    /// The header chunk of a version delivered by weights group `generation`'s broadcast (no
    /// data chunks follow it).
    pub fn group_header(&self, generation: u64) -> WeightsChunk {
        WeightsChunk {
            body: Some(weights_chunk::Body::Header(WeightsHeader {
                group_generation: generation,
                ..self.header.clone()
            })),
        }
    }

    /// The payload as one buffer of f32 values (what a weights group broadcasts): every
    /// tensor's values in header order.
    pub fn payload(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.header.payload_bytes as usize / F32_BYTES);
        for segment in &self.segments {
            out.extend(read_le(segment));
        }
        out
    }

    /// The header chunk, then data chunks of at most `chunk_bytes` (at least 1) that together
    /// are the payload in order. A tensor's pieces of [`PACK_BELOW_BYTES`] or more are zero-copy
    /// slices of its buffer; shorter pieces are packed into one chunk with their neighbours.
    pub fn chunks(&self, chunk_bytes: usize) -> impl Iterator<Item = WeightsChunk> + '_ {
        let header = WeightsChunk {
            body: Some(weights_chunk::Body::Header(self.header.clone())),
        };
        let data = DataChunks {
            segments: &self.segments,
            next: 0,
            offset: 0,
            step: chunk_bytes.max(1),
        }
        .map(|data| WeightsChunk {
            body: Some(weights_chunk::Body::Data(data)),
        });
        std::iter::once(header).chain(data)
    }
}

/// The data chunks of [`EncodedWeights::chunks`].
struct DataChunks<'a> {
    segments: &'a [Bytes],
    /// The segment the next chunk starts in, and the offset in it.
    next: usize,
    offset: usize,
    /// The most bytes in one chunk (at least 1).
    step: usize,
}

impl DataChunks<'_> {
    /// The rest of the current segment (empty segments are skipped).
    fn rest(&mut self) -> Option<Bytes> {
        while let Some(segment) = self.segments.get(self.next) {
            if self.offset < segment.len() {
                return Some(segment.slice(self.offset..));
            }
            self.next += 1;
            self.offset = 0;
        }
        None
    }
}

impl Iterator for DataChunks<'_> {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        let rest = self.rest()?;
        if rest.len() >= PACK_BELOW_BYTES.min(self.step) {
            let piece = rest.slice(..rest.len().min(self.step));
            self.offset += piece.len();
            return Some(piece);
        }
        // Pack short pieces until the chunk is full or a long piece comes.
        let mut packed = BytesMut::with_capacity(self.step.min(PACK_BELOW_BYTES * 2));
        while let Some(rest) = self.rest() {
            let room = self.step - packed.len();
            if room == 0 || (!packed.is_empty() && rest.len() >= PACK_BELOW_BYTES.min(self.step)) {
                break;
            }
            let take = rest.len().min(room);
            packed.extend_from_slice(&rest[..take]);
            self.offset += take;
        }
        Some(packed.freeze())
    }
}

/// A complete, checksummed weights version received from a peer.
#[derive(Debug)]
pub struct AssembledWeights {
    /// The version.
    pub version: WeightsVersion,
    /// The model's configuration (validated).
    pub config: LlamaConfig,
    /// Every tensor in payload order, with its name; sizes checked against the shapes.
    tensors: Vec<(String, HostTensor)>,
}

impl AssembledWeights {
    /// Builds the model on `device`.
    ///
    /// # Errors
    /// [`Error::Weights`] naming a tensor the model does not accept (missing, misshaped,
    /// unexpected).
    pub fn into_model(self, device: &burn::tensor::Device) -> Result<Llama, Error> {
        let label = format!("version {}", self.version.0);
        let mut named: HashMap<String, HostTensor> = self.tensors.into_iter().collect();
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
    /// Every tensor, allocated at the header (zeroed lazily by the allocator) and filled as data
    /// arrives.
    tensors: Vec<(String, HostTensor)>,
    /// Payload bytes received so far.
    received: u64,
    /// The tensor the next byte belongs to, and the byte offset in it.
    tensor: usize,
    offset: usize,
    /// CRC-32C of the bytes received so far.
    crc: u32,
}

impl Partial {
    /// Writes `data` into the tensors at the current position (its length was checked against
    /// the bytes still expected).
    fn write(&mut self, mut data: &[u8]) {
        self.crc = crc32c::crc32c_append(self.crc, data);
        self.received += data.len() as u64;
        while !data.is_empty() {
            let Some((_, tensor)) = self.tensors.get_mut(self.tensor) else {
                return;
            };
            let buf: &mut [u8] = bytemuck::cast_slice_mut(&mut tensor.data);
            let take = (buf.len() - self.offset).min(data.len());
            buf[self.offset..self.offset + take].copy_from_slice(&data[..take]);
            data = &data[take..];
            self.offset += take;
            if self.offset == buf.len() {
                self.tensor += 1;
                self.offset = 0;
            }
        }
    }
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
                        header.version, p.header.version, p.received, p.header.payload_bytes
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
            Some(weights_chunk::Body::Invite(invite)) => Err(self.refuse(format!(
                "a weights group invite (generation {}) in the middle of the weights data",
                invite.generation
            ))),
            Some(weights_chunk::Body::Data(data)) => {
                let Some(p) = &mut self.current else {
                    return Err(self.refuse(format!(
                        "a weights data chunk ({} bytes) before any header",
                        data.len()
                    )));
                };
                if p.header.group_generation != 0 {
                    let message = format!(
                        "weights version {}: a data chunk, but its header said the payload comes \
                         by weights group {}'s broadcast",
                        p.header.version, p.header.group_generation
                    );
                    return Err(self.refuse(message));
                }
                let announced = p.header.payload_bytes;
                let have = p.received;
                if data.len() as u64 > announced.saturating_sub(have) {
                    let message = format!(
                        "weights version {}: more data than the {announced} bytes announced \
                         ({have} received, then a chunk of {})",
                        p.header.version,
                        data.len()
                    );
                    return Err(self.refuse(message));
                }
                p.write(&data);
                self.complete()
            }
        }
    }

    /// The version being received by a weights group's broadcast, if any: its group
    /// generation, version and number of f32 values (the buffer the broadcast fills).
    pub fn awaiting_group(&self) -> Option<(u64, u64, usize)> {
        let p = self.current.as_ref()?;
        (p.header.group_generation != 0 && p.received == 0).then(|| {
            (
                p.header.group_generation,
                p.header.version,
                (p.header.payload_bytes / F32_BYTES as u64) as usize,
            )
        })
    }

    /// Takes the whole payload of a version whose header named a weights group (the values
    /// its broadcast delivered); checks the size and the CRC-32C as for chunks.
    ///
    /// # Errors
    /// [`Error::Protocol`] naming the peer: no such version is awaited, the size differs from
    /// the header's, or the checksum does not match.
    pub fn push_payload(&mut self, values: &[f32]) -> Result<Option<AssembledWeights>, Error> {
        let Some((generation, version, expected)) = self.awaiting_group() else {
            return Err(self.refuse(format!(
                "a broadcast payload ({} values) while no version awaits one",
                values.len()
            )));
        };
        if values.len() != expected {
            return Err(self.refuse(format!(
                "weights version {version}: weights group {generation} delivered {} values, the \
                 header announced {expected}",
                values.len()
            )));
        }
        let Some(p) = &mut self.current else {
            return Ok(None);
        };
        if cfg!(target_endian = "little") {
            p.write(bytemuck::cast_slice(values));
        } else {
            let mut le = Vec::with_capacity(values.len() * F32_BYTES);
            extend_le(&mut le, values);
            p.write(&le);
        }
        self.complete()
    }

    /// Drops the version being received (a weights group's broadcast failed: the coordinator
    /// sends it again as chunks); returns its version, if there was one.
    pub fn abandon(&mut self) -> Option<u64> {
        self.current.take().map(|p| p.header.version)
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
        let mut shapes = Vec::with_capacity(header.tensors.len());
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
            let bytes = t
                .shape
                .iter()
                .try_fold(F32_BYTES as u64, |acc, &d| acc.checked_mul(d));
            match (
                shape,
                bytes.and_then(|n| Some((n, expected.checked_add(n)?))),
            ) {
                (Some(shape), Some((bytes, sum))) => {
                    expected = sum;
                    shapes.push((t.name.clone(), shape, bytes));
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
        // Each size is bounded by `max_payload_bytes` (their sum was checked above).
        let mut tensors = Vec::with_capacity(shapes.len());
        for (name, shape, bytes) in shapes {
            let values = usize::try_from(bytes / F32_BYTES as u64).map_err(|_| {
                format!("weights version {version}: tensor `{name}` does not fit in memory")
            })?;
            tensors.push((name, HostTensor::new(shape, vec![0.0; values])));
        }
        Ok(Partial {
            header,
            config,
            tensors,
            received: 0,
            tensor: 0,
            offset: 0,
            crc: 0,
        })
    }

    /// The weights if their last byte has arrived and the checksum matches.
    fn complete(&mut self) -> Result<Option<AssembledWeights>, Error> {
        let done = matches!(
            &self.current,
            Some(p) if p.received == p.header.payload_bytes
        );
        if !done {
            return Ok(None);
        }
        let Some(mut p) = self.current.take() else {
            return Ok(None);
        };
        if p.crc != p.header.crc32c {
            return Err(self.refuse(format!(
                "weights version {}: checksum mismatch (expected CRC-32C {:08x}, found {:08x})",
                p.header.version, p.header.crc32c, p.crc
            )));
        }
        if cfg!(target_endian = "big") {
            for (_, t) in &mut p.tensors {
                for x in &mut t.data {
                    *x = f32::from_bits(u32::from_le(x.to_bits()));
                }
            }
        }
        Ok(Some(AssembledWeights {
            version: WeightsVersion(p.header.version),
            config: p.config,
            tensors: p.tensors,
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
        assert!(
            header_of(&mut chunks[0].clone()).version == 7,
            "the header comes first"
        );
        let sizes: Vec<usize> = chunks[1..].iter().map(|c| data_of(c).len()).collect();
        assert!(sizes.iter().all(|&n| (1..=1000).contains(&n)), "{sizes:?}");
        assert_eq!(sizes.iter().sum::<usize>() as u64, encoded.payload_bytes());
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
        let data: Vec<u8> = chunks.flat_map(|c| data_of(&c).to_vec()).collect();
        assert_eq!(
            data, payload,
            "the data chunks, concatenated, are the payload"
        );
        assert_eq!(header.payload_bytes, payload.len() as u64);
        assert_eq!(header.crc32c, crc32c::crc32c(&payload));
        assert_eq!(header.version, 1);
        let config = LlamaConfig::from_json_str(&header.config_json).unwrap();
        assert_eq!(&config, m.config());
    }

    #[test]
    fn large_pieces_are_zero_copy_slices_and_small_ones_are_packed() {
        // Tensors of 40×32 values and more are 5,120+ bytes; norms and biases are 128–192.
        let encoded = encoded(1);
        let step = 4096;
        let slices_of_a_tensor = |d: &Bytes| {
            encoded.segments.iter().any(|s| {
                let (base, p) = (s.as_ptr() as usize, d.as_ptr() as usize);
                p >= base && p + d.len() <= base + s.len()
            })
        };
        let chunks: Vec<Bytes> = encoded
            .chunks(step)
            .skip(1)
            .map(|c| data_of(&c).clone())
            .collect();
        let mut copied = 0;
        for d in &chunks {
            assert!(!d.is_empty() && d.len() <= step, "{} bytes", d.len());
            if !slices_of_a_tensor(d) {
                copied += d.len();
            }
        }
        // With chunks no larger than the packing threshold, every whole chunk of a tensor is a
        // slice and only each tensor's tail (its size modulo the chunk) is copied.
        assert!(step <= PACK_BELOW_BYTES);
        let tails: usize = encoded.segments.iter().map(|s| s.len() % step).sum();
        assert!(tails > 0);
        assert_eq!(copied, tails, "only the tails are packed (copied)");
        let messages = chunks.len();
        assert!(
            messages < encoded.segments.len(),
            "fewer messages ({messages}) than tensors ({})",
            encoded.segments.len()
        );
        let total: usize = chunks.iter().map(Bytes::len).sum();
        assert_eq!(total as u64, encoded.payload_bytes());
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
