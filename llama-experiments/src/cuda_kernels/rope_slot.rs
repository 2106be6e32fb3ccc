//! The launcher of `rope_slot.cu`: a decoded token's rotation and cache write in one kernel.

use tch::{Kind, Tensor};

use super::{ELEMENT_BLOCK, element_grid, launch, loaded, named, ptr, suffix};

/// Rotates `q [b, h, 1, d]` and `k [b, hkv, 1, d]` with the full-width tables `c, s [b, 1, 1, d]`
/// (the rotary operation's), writes the rotated keys and `v [b, hkv, 1, d]` into the caches
/// `[b, hkv, capacity, d]` at position `slot` (int64 `[1]` on the device) in place, and returns
/// the rotated queries. One dtype (f32 or bf16) for all; `None` for anything else (the caller
/// rotates and writes with separate operations).
#[allow(clippy::too_many_arguments)]
pub fn rope_slot(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    c: &Tensor,
    s: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    slot: &Tensor,
) -> Option<Tensor> {
    suffix(q.kind())?;
    let (qs, ks, cs) = (q.size(), k.size(), k_cache.size());
    let (&[b, h, 1, d], &[kb, hkv, 1, kd], &[cb, ch, cap, cd]) = (&qs[..], &ks[..], &cs[..]) else {
        return None;
    };
    let same = |t: &Tensor| t.kind() == q.kind() && t.device() == q.device();
    let tables_ok = |t: &Tensor| same(t) && t.size() == [b, 1, 1, d];
    if ![k, v, k_cache, v_cache].iter().all(|t| same(t))
        || !tables_ok(c)
        || !tables_ok(s)
        || v.size() != ks
        || v_cache.size() != cs
        || (kb, kd, cb, ch, cd) != (b, d, b, hkv, d)
        || cap == 0
        || h == 0
        || d % 2 != 0
        || slot.kind() != Kind::Int64
        || slot.size() != [1]
        || slot.device() != q.device()
        || !k_cache.is_contiguous()
        || !v_cache.is_contiguous()
    {
        return None;
    }
    let kern = loaded(q.device())?;
    let [q, k, v, c, s] = [q, k, v, c, s].map(|t| t.contiguous());
    let q_out = q.empty_like();
    let st = k_cache.stride();
    let n = usize::try_from((b * h + 2 * b * hkv) * d).ok()?;
    let (bi, hi, hkvi, di) = (
        i32::try_from(b).ok()?,
        i32::try_from(h).ok()?,
        i32::try_from(hkv).ok()?,
        i32::try_from(d).ok()?,
    );
    launch(
        &kern,
        named("rope_slot", q.kind())?,
        element_grid(n),
        ELEMENT_BLOCK,
        &[
            &ptr(&q),
            &ptr(&k),
            &ptr(&v),
            &ptr(&c),
            &ptr(&s),
            &ptr(&q_out),
            &ptr(k_cache),
            &ptr(v_cache),
            &ptr(slot),
            &bi,
            &hi,
            &hkvi,
            &di,
            &st[0],
            &st[1],
        ],
    )?;
    Some(q_out)
}
