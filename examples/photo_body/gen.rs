//! Job bodies that carry photos, for the benchmarks: the 3 KB reference body
//! (`tests/bench/s01-reference.json`) with its four photo fields filled with pseudo-random bytes,
//! base64 (standard alphabet, padded: the schema's photo format). Deterministic: the same
//! reference, photo size and seed give the same bytes on every machine, so nothing big is
//! committed. Shared by `examples/photo_body` (the files `bench/load.sh` posts) and
//! `benches/pipeline.rs` (criterion).

/// The four photo fields of a body: (block, field).
pub const PHOTO_FIELDS: [(&str, &str); 4] =
    [("job_execution", "pre_job_photo"), ("job_execution", "post_job_photo"), ("job_execution", "post_resealing_photo"), ("meter", "photo")];

/// Bytes of each photo in the ~8 MB body: 1.5 MiB decoded, 2 MiB of base64.
pub const PHOTO_8MB: usize = 1536 * 1024;
/// Bytes of each photo in the ~30 MB body: 5.5 MiB decoded (the schema allows 10 MiB).
pub const PHOTO_30MB: usize = 5632 * 1024;
/// The default seed ("flowgate" in ASCII).
pub const SEED: u64 = 0x666c_6f77_6761_7465;

/// `len` pseudo-random bytes from splitmix64 (fast, and the same everywhere).
pub fn photo_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Standard base64 with padding: the photo format. Written here (the bodies are generated once
/// per run) rather than kept as a dependency for the benchmarks alone.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The reference body with each of its four photos replaced by `photo_len` pseudo-random
/// bytes, base64; photo `i` (in `PHOTO_FIELDS` order) is seeded with `seed + i`, so no two
/// photos are alike. Keys come out in serde_json's order (sorted).
pub fn body_with_photos(reference: &[u8], photo_len: usize, seed: u64) -> Result<Vec<u8>, String> {
    let mut body: serde_json::Value = serde_json::from_slice(reference).map_err(|e| format!("reference body: {e}"))?;
    for (i, (block, field)) in (0u64..).zip(PHOTO_FIELDS) {
        let photo = base64(&photo_bytes(seed.wrapping_add(i), photo_len));
        let Some(block) = body.get_mut(block).and_then(|b| b.as_object_mut()) else {
            return Err(format!("reference body has no {block} object"));
        };
        block.insert(field.to_string(), photo.into());
    }
    serde_json::to_vec(&body).map_err(|e| e.to_string())
}
