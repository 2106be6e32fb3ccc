//! Decoding's attention launcher (`decode_attention.cu`): one query per row and head against the
//! cached keys, split over a cluster of blocks on sm_90, with the step's rotation and cache write
//! folded in where asked.

use std::sync::OnceLock;

use tch::{Kind, Tensor};

use super::{Loaded, launch_cluster, loaded, named, ptr, suffix, vec4};

/// Most warps per block of `decode_attention` (a warp per 8–32 keys; longer caches loop): its
/// `__launch_bounds__(512)`, under which a lane keeps its scores and value rows in registers (at
/// a 128-wide head 113 with 32 keys per warp, 98 with 16; 1,024 threads capped them at 64 and
/// spilled ~200 bytes a thread).
const DECODE_MAX_WARPS: i64 = 16;
/// Most blocks one (row, head) pair's keys are split over (a portable thread-block cluster;
/// `DECODE_MAX_SPLITS` in `decode_attention.cu`, whose merge holds that many per thread).
const DECODE_MAX_SPLITS: i64 = 8;

/// How many blocks of one cluster share a pair's `keys` (`decode_attention.cu`): with fewer pairs
/// than SMs about four blocks per SM, up to 8 (7B at batch 1: 32 heads × 8 on 132 SMs), at least
/// 32 keys each; 1 (one block per pair) where clusters are not available, when the pairs fill
/// the SMs already, or with `LLAMA_ATTN_SPLIT=off`; `LLAMA_ATTN_SPLIT=N` asks for N.
fn decode_splits(kern: &Loaded, pairs: i64, keys: i64) -> i64 {
    static SPLIT: OnceLock<&'static str> = OnceLock::new();
    let knob = *SPLIT.get_or_init(|| {
        crate::op_registry::env_choice("LLAMA_ATTN_SPLIT", &crate::op_registry::SPLIT_CHOICES)
            .unwrap_or("auto")
    });
    if !kern.sm90 || knob == "off" {
        return 1;
    }
    let sms = i64::try_from(kern.sms).unwrap_or(i64::MAX);
    // About four blocks per SM: 7B and 13B at batch 1 (32 and 40 heads on 132 SMs) take 8, which
    // beat one block per SM (4 and 3) by 1–2 % per decoded token (attempt 45).
    let most = match knob.parse::<i64>() {
        Ok(n) => n,
        Err(_) if pairs < sms => (4 * sms + pairs - 1) / pairs.max(1),
        Err(_) => 1,
    };
    most.min((keys + 31) / 32).clamp(1, DECODE_MAX_SPLITS)
}

/// Keys a warp of `decode_attention` scores per pass (`LLAMA_ATTN_KEYS=auto|8|16|32`): 8 when the
/// pairs fill the SMs (batch 8 of `1b`: 1.69–1.70 against 1.78–1.89 ms per token with 32), 16
/// when a pair's keys are split over a cluster (7B and 13B at batch 1: 3.72 and 6.85 against
/// 3.81 and 7.07 ms with 32; H200, docs/performance.md, attempt 45).
fn decode_keys_per_warp(kern: &Loaded, pairs: i64) -> i64 {
    static KEYS: OnceLock<&'static str> = OnceLock::new();
    let knob = KEYS.get_or_init(|| {
        crate::op_registry::env_choice("LLAMA_ATTN_KEYS", &crate::op_registry::KEYS_CHOICES)
            .unwrap_or("auto")
    });
    match knob.parse::<i64>() {
        Ok(n) => n,
        Err(_) if pairs < i64::try_from(kern.sms).unwrap_or(i64::MAX) => 16,
        Err(_) => 8,
    }
}

/// `LLAMA_ATTN_WARPS`: `None` for `auto` (the launcher takes no more warps a block than keep
/// every cluster of the launch resident at once), else the most warps a block gets (`off`: 16).
///
/// Why `auto`: a block's warps are otherwise sized by the cache's capacity, and at 103 registers
/// a lane an SM holds 19 warps; 7B at batch 1 after 1,536 tokens launched 256 blocks of 13 warps,
/// one per SM, in two waves (attention 26.6 instead of 9.4 µs a layer after 512; attempt 80).
/// The kernel already loops a warp over further keys. With the cap (5 warps there) a 7B token
/// after 1,536 took 3.965 instead of 4.107 ms pipelined, after 1,024 3.759 instead of 4.047,
/// and `1b` after 1,536 1.013 instead of 1.205; fixed caps of 3, 4, 6, 7 and 8 were slower than
/// 5 (H200, docs/performance.md, attempt 82).
fn decode_warps_cap() -> Option<i64> {
    static CAP: OnceLock<Option<i64>> = OnceLock::new();
    *CAP.get_or_init(|| {
        match crate::op_registry::env_choice("LLAMA_ATTN_WARPS", &crate::op_registry::WARPS_CHOICES)
        {
            Ok("off") => Some(DECODE_MAX_WARPS),
            Ok(n) => n.parse().ok(),
            Err(_) => None,
        }
    })
}

/// Floats of `decode_attention`'s shared memory before the preloaded rows (its `part`, `wm` and
/// `blk`), rounded up to 16 bytes: `decode_preload_offset` in `decode_attention.cu`.
fn decode_preload_offset(warps: i64, d: i64) -> i64 {
    ((warps + 1) * (d + 2) + d + 2 + 3) & !3
}

/// Most bytes of rows a `decode_attention` block is given shared memory for, to copy each warp's
/// first keys and values (or, where both do not fit, its first keys) before waiting for the
/// kernel ahead (the kernel copies what the room holds; 48 KB in all at most, the limit of a
/// launch without the driver's opt-in attribute). `LLAMA_ATTN_PRELOAD=auto`: up to 24 KB (`1b`
/// at batch 1, 20 KB of both: 0.904 against 0.937 ms per token; 7B's and 13B's 40 KB of both made
/// them 15–23 % slower, H200, docs/performance.md attempt 71); `all`: up to 48 KB; `off`: none.
fn decode_preload() -> i64 {
    static MOST: OnceLock<i64> = OnceLock::new();
    *MOST.get_or_init(|| {
        match crate::op_registry::env_choice(
            "LLAMA_ATTN_PRELOAD",
            &crate::op_registry::PRELOAD_CHOICES,
        ) {
            Ok("off") => -1,
            Ok("all") => 48 * 1024,
            _ => 24 * 1024,
        }
    })
}

/// The head dimensions with `decode_attention_k*_d*` kernels (`DECODE_ATTENTION_DIMS` in
/// `decode_attention.cu`, `KERNELS` in `mod.rs`).
const DECODE_HEAD_DIMS: [i64; 4] = [32, 64, 128, 256];

/// One query per row and head against cached keys: `q [b, h, 1, d]`, `k, v [b, h_kv, t, d]` (a
/// view of the cache is fine: unit stride within a key, `d` between keys), `hidden [b, 1, 1, t]`
/// (bool, `true` = not visible; `None`: all visible) → softmax(q·kᵀ/√d) v `[b, h, 1, d]` in q's
/// dtype, head `i` reading key/value head `i / (h / h_kv)`. Scores and softmax in f32; a warp
/// per 8–32 keys at a time ([`decode_keys_per_warp`]), one block per (row, head), or on sm_90
/// with fewer pairs than SMs a cluster of blocks per pair ([`decode_splits`]). Head dimensions
/// 32, 64, 128 and 256 (every preset's); `None` for others.
pub fn decode_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    hidden: Option<&Tensor>,
) -> Option<Tensor> {
    decode_attention_with(q, k, v, hidden, None, None)
}

/// A decode step's own key and value for [`decode_attention_with`], unrotated, and where they go:
/// `k, v [b, h_kv, 1, d]`, the rotary operation's full-width tables `c, s [b, 1, 1, d]`, and the
/// cache position `slot` (int64 `[1]` on the device).
pub struct StepKv<'a> {
    pub k: &'a Tensor,
    pub v: &'a Tensor,
    pub c: &'a Tensor,
    pub s: &'a Tensor,
    pub slot: &'a Tensor,
}

/// [`decode_attention`], and with `step` the rotation and cache write folded in (`rope_slot`
/// and this in one kernel): `q` is then the step's unrotated query, `k, v` the whole caches
/// (`[b, h_kv, capacity, d]`, contiguous), of which the positions below the slot are read and
/// the slot is written with the step's rotated key and its value. `keys_per_warp` picks the
/// keys a warp scores per pass (8, 16 or 32; `None`: as `LLAMA_ATTN_KEYS` and the launch's shape
/// choose), so tests reach every form.
pub fn decode_attention_with(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    hidden: Option<&Tensor>,
    step: Option<&StepKv>,
    keys_per_warp: Option<i64>,
) -> Option<Tensor> {
    suffix(q.kind())?;
    let kern = loaded(q.device())?;
    let (qs, ks) = (q.size(), k.size());
    let ([b, h, 1, d], [kb, hkv, t, kd]) = (&qs[..], &ks[..]) else {
        return None;
    };
    let (b, h, d, kb, hkv, t, kd) = (*b, *h, *d, *kb, *hkv, *t, *kd);
    let same = |x: &Tensor| x.kind() == q.kind() && x.device() == q.device();
    if !same(k)
        || !same(v)
        || v.size() != k.size()
        || kb != b
        || kd != d
        || hkv == 0
        || h % hkv != 0
        || t == 0
        || !DECODE_HEAD_DIMS.contains(&d)
    {
        return None;
    }
    // The step's key and value, tables and slot, checked as rope_slot checks them; the caches it
    // writes must be the tensors themselves (contiguous), not copies.
    let step = match step {
        Some(st) => {
            let tables_ok = |t: &Tensor| same(t) && t.size() == [b, 1, 1, d];
            let new_ok = |t: &Tensor| same(t) && t.size() == [b, hkv, 1, d];
            if !new_ok(st.k)
                || !new_ok(st.v)
                || !tables_ok(st.c)
                || !tables_ok(st.s)
                || st.slot.kind() != Kind::Int64
                || st.slot.size() != [1]
                || st.slot.device() != q.device()
                || !k.is_contiguous()
                || !v.is_contiguous()
            {
                return None;
            }
            Some((
                [st.k, st.v, st.c, st.s].map(|t| t.contiguous()),
                ptr(st.slot),
            ))
        }
        None => None,
    };
    // Keys and values as the kernel indexes them: unit stride within a key, d between keys, the
    // same strides for both, and every row four-element aligned for its loads.
    let (k, v) = if k.stride()[2..] == [d, 1]
        && v.stride() == k.stride()
        && k.stride().iter().all(|s| s % 4 == 0)
        && vec4(&[k, v]) == 1
    {
        (k.shallow_clone(), v.shallow_clone())
    } else {
        (k.contiguous(), v.contiguous())
    };
    if vec4(&[&k, &v]) != 1 {
        return None;
    }
    let hidden = match hidden {
        Some(m) => {
            if m.size() != [b, 1, 1, t] || m.device() != q.device() {
                return None;
            }
            Some(m.to_kind(Kind::Bool).contiguous())
        }
        None => None,
    };
    let q = q.contiguous();
    let out = Tensor::empty([b, h, 1, d], (q.kind(), q.device()));
    let st = k.stride();
    let hidden_ptr = hidden.as_ref().map_or(0u64, ptr);
    let pairs = b * h;
    let splits = decode_splits(&kern, pairs, t);
    let kw = match keys_per_warp {
        None => decode_keys_per_warp(&kern, pairs),
        Some(kw @ (8 | 16 | 32)) => kw,
        Some(_) => return None,
    };
    let wanted = ((t + kw * splits - 1) / (kw * splits)).clamp(1, DECODE_MAX_WARPS);
    // Shared memory for the merge, then for the rows each warp copies before the wait: its
    // first keys and values, or the keys only, whichever fits `decode_preload`.
    let elt = q.kind().elt_size_in_bytes() as i64;
    let shared_for = |warps: i64| {
        let base = 4 * decode_preload_offset(warps, d);
        let rows = warps * kw * d * elt;
        let most = decode_preload().min(48 * 1024 - base);
        let preload = [2 * rows, rows].into_iter().find(|&r| r <= most);
        u32::try_from(base + preload.unwrap_or(0)).ok()
    };
    let name = named(&format!("decode_attention_k{kw}_d{d}"), q.kind())?;
    let warps = match decode_warps_cap() {
        Some(cap) => wanted.min(cap),
        // Fewer warps while the driver says the launch's clusters would not all be resident
        // (one cluster per pair); one block per pair already fills the SMs, so no cap there.
        None if splits > 1 => {
            let fits = |w: i64| {
                let shared = shared_for(w)?;
                let n = kern.resident_clusters(&name, 32 * w as usize, shared, splits as u32)?;
                Some(n as i64 >= pairs)
            };
            let mut w = wanted;
            while w > 1 && fits(w) == Some(false) {
                w -= 1;
            }
            w
        }
        None => wanted,
    };
    let shared = shared_for(warps)?;
    let scale = 1.0 / (d as f32).sqrt();
    let (heads, rep, keys) = (
        i32::try_from(h).ok()?,
        i32::try_from(h / hkv).ok()?,
        i32::try_from(t).ok()?,
    );
    launch_cluster(
        &kern,
        name,
        usize::try_from(pairs * splits).ok()?,
        32 * warps as usize,
        shared,
        u32::try_from(splits).ok()?,
        &[
            &ptr(&q),
            &ptr(&k),
            &ptr(&v),
            &hidden_ptr,
            &ptr(&out),
            &heads,
            &rep,
            &keys,
            &st[0],
            &st[1],
            &scale,
            &step.as_ref().map_or(0, |(t, _)| ptr(&t[0])),
            &step.as_ref().map_or(0, |(t, _)| ptr(&t[1])),
            &step.as_ref().map_or(0, |(t, _)| ptr(&t[2])),
            &step.as_ref().map_or(0, |(t, _)| ptr(&t[3])),
            &step.as_ref().map_or(0, |(_, slot)| *slot),
        ],
    )?;
    Some(out)
}
