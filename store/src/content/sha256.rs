//! A SHA-256 whose state can be saved between requests: an upload's chunks may reach
//! different replicas, so the hash state travels in the upload record, not in memory.

use serde::{Deserialize, Serialize};
use sha2::digest::generic_array::GenericArray;

use crate::digest::Digest;

const H0: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

/// SHA-256 midstate: the chaining value after every whole 64-byte block so far, the bytes
/// of the block still open, and the total length. Serialises to a few dozen bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumableSha256 {
    state: [u32; 8],
    #[serde(with = "hex_bytes")]
    open: Vec<u8>,
    len: u64,
}

impl Default for ResumableSha256 {
    fn default() -> Self {
        ResumableSha256 {
            state: H0,
            open: Vec::with_capacity(64),
            len: 0,
        }
    }
}

impl ResumableSha256 {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if !self.open.is_empty() {
            let take = (64 - self.open.len()).min(data.len());
            self.open.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.open.len() < 64 {
                return;
            }
            let block = std::mem::take(&mut self.open);
            sha2::compress256(&mut self.state, &[*GenericArray::from_slice(&block)]);
            self.open = block;
            self.open.clear();
        }
        let whole = data.len() / 64 * 64;
        // Block by block, in place: no copy of the data.
        for block in data[..whole].chunks_exact(64) {
            sha2::compress256(
                &mut self.state,
                std::slice::from_ref(GenericArray::from_slice(block)),
            );
        }
        self.open.extend_from_slice(&data[whole..]);
    }

    pub fn finish(&self) -> Digest {
        let mut state = self.state;
        let mut tail = self.open.clone();
        tail.push(0x80);
        while tail.len() % 64 != 56 {
            tail.push(0);
        }
        tail.extend_from_slice(&(self.len * 8).to_be_bytes());
        let blocks: Vec<GenericArray<u8, _>> = tail
            .chunks_exact(64)
            .map(|c| *GenericArray::from_slice(c))
            .collect();
        sha2::compress256(&mut state, &blocks);
        let mut out = [0u8; 32];
        for (o, w) in out.chunks_exact_mut(4).zip(state) {
            o.copy_from_slice(&w.to_be_bytes());
        }
        Digest::from_bytes(out)
    }
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        let v = hex::decode(s).map_err(serde::de::Error::custom)?;
        if v.len() >= 64 {
            return Err(serde::de::Error::custom("open SHA-256 block longer than a block"));
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_answers() {
        assert_eq!(ResumableSha256::new().finish(), Digest::of(b""));
        let mut h = ResumableSha256::new();
        h.update(b"abc");
        assert_eq!(
            h.finish().hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    proptest! {
        #[test]
        fn split_and_saved_anywhere_it_hashes_the_same(
            data in proptest::collection::vec(any::<u8>(), 0..700),
            cuts in proptest::collection::vec(0usize..700, 0..6),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
            cuts.sort_unstable();
            let mut h = ResumableSha256::new();
            let mut at = 0;
            for c in cuts.into_iter().chain([data.len()]) {
                h.update(&data[at..c]);
                at = c;
                // Saved and restored between chunks, as between two replicas.
                let saved = serde_json::to_vec(&h).unwrap();
                h = serde_json::from_slice(&saved).unwrap();
            }
            prop_assert_eq!(h.len(), data.len() as u64);
            prop_assert_eq!(h.finish(), Digest::of(&data));
        }
    }
}
