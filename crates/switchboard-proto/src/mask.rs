//! Client-to-server payload masking (RFC 6455 §5.3).
//!
//! Masking XORs every payload byte with a 4-byte key. It runs on every byte a
//! client sends, so it works eight bytes at a time on `u64` words (which the
//! compiler turns into SIMD) rather than byte by byte. Safe code only: the
//! word-at-a-time loop uses `chunks_exact_mut`, which needs no `unsafe`.

/// XORs `buf` in place with `key`, as if `buf` started `offset` bytes into the
/// masked payload. Applying the same call twice restores the input.
///
/// ```
/// use switchboard_proto::apply_mask;
/// let mut data = *b"hello";
/// apply_mask(&mut data, [1, 2, 3, 4], 0);
/// assert_ne!(&data, b"hello");
/// apply_mask(&mut data, [1, 2, 3, 4], 0);
/// assert_eq!(&data, b"hello");
/// ```
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    let shift = offset % 4;
    let rotated = [
        key[shift],
        key[(shift + 1) % 4],
        key[(shift + 2) % 4],
        key[(shift + 3) % 4],
    ];
    let mut wide = [0u8; 8];
    wide[..4].copy_from_slice(&rotated);
    wide[4..].copy_from_slice(&rotated);
    let key64 = u64::from_ne_bytes(wide);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let masked = u64::from_ne_bytes(word) ^ key64;
        chunk.copy_from_slice(&masked.to_ne_bytes());
    }
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= rotated[i % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(buf: &mut [u8], key: [u8; 4], offset: usize) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b ^= key[(i + offset) % 4];
        }
    }

    #[test]
    fn matches_bytewise_for_all_lengths_and_offsets() {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        for len in 0..40 {
            for offset in 0..8 {
                let orig: Vec<u8> = (0..len as u8).map(|x| x.wrapping_mul(31)).collect();
                let mut fast = orig.clone();
                let mut slow = orig.clone();
                apply_mask(&mut fast, key, offset);
                naive(&mut slow, key, offset);
                assert_eq!(fast, slow, "len {len} offset {offset}");
            }
        }
    }

    #[test]
    fn split_masking_equals_whole() {
        let key = [1, 2, 3, 4];
        let orig: Vec<u8> = (0..100u8).collect();
        let mut whole = orig.clone();
        apply_mask(&mut whole, key, 0);
        let mut parts = orig.clone();
        let (a, b) = parts.split_at_mut(13);
        apply_mask(a, key, 0);
        apply_mask(b, key, 13);
        assert_eq!(whole, parts);
    }

    #[test]
    fn rfc_example() {
        // RFC 6455 §5.7: "Hello" masked with 37 fa 21 3d.
        let mut data = *b"Hello";
        apply_mask(&mut data, [0x37, 0xfa, 0x21, 0x3d], 0);
        assert_eq!(data, [0x7f, 0x9f, 0x4d, 0x51, 0x58]);
    }
}
