//! The launcher of the few-row products (`gemv.cu`): decoding's projections.

use tch::{Kind, Tensor};

use super::{launch, loaded, ptr};

/// Most rows a product takes (the kernels keep every row's sums in registers).
pub const GEMV_MAX_ROWS: i64 = 8;
/// Columns per block and threads per block, as in `gemv.cu`.
const COLS: usize = 64;
const THREADS: usize = 256;
/// Most column tiles (`GEMV_MAX_TILES` in `gemv.cu`: its arrival counters).
const MAX_TILES: usize = 4096;
/// Blocks per multiprocessor a product aims for (two of 256 threads fit at eight rows).
const BLOCKS_PER_SM: usize = 4;
/// Fewest rows of `w` per block: below this the slices' sums cost more than they spread.
const MIN_CHUNK: usize = 128;

/// `x [rows, k] · w [k, n]` for 1 to [`GEMV_MAX_ROWS`] rows, bf16 in and out (f32 sums), in one
/// kernel that streams `w` at close to the memory bandwidth; `w` may be a column slice of a wider
/// matrix (unit column stride). `None` for anything else (the caller multiplies with torch).
pub fn gemv(x: &Tensor, w: &Tensor) -> Option<Tensor> {
    if x.kind() != Kind::BFloat16 || w.kind() != Kind::BFloat16 || x.device() != w.device() {
        return None;
    }
    let (xs, ws) = (x.size(), w.size());
    let (&[rows, k], &[wk, n]) = (&xs[..], &ws[..]) else {
        return None;
    };
    let ldw = w.stride()[0];
    if !(1..=GEMV_MAX_ROWS).contains(&rows)
        || wk != k
        || k <= 0
        || n <= 0
        || n % 8 != 0
        || w.stride()[1] != 1
        || ldw < n
        || ldw % 8 != 0
        || !ptr(w).is_multiple_of(16)
    {
        return None;
    }
    let kern = loaded(x.device())?;
    let (ku, nu) = (usize::try_from(k).ok()?, usize::try_from(n).ok()?);
    let tiles = nu.div_ceil(COLS);
    if tiles > MAX_TILES {
        return None;
    }
    // Slices of k so that the grid fills the card, each a multiple of 32 rows (one pass of the
    // block) and at least MIN_CHUNK.
    let want = (BLOCKS_PER_SM * kern.sms).div_ceil(tiles);
    let splits = want.clamp(1, (ku / MIN_CHUNK).max(1));
    let chunk = ku.div_ceil(splits).next_multiple_of(32);
    let splits = ku.div_ceil(chunk);
    let x = x.contiguous();
    let y = Tensor::empty([rows, n], (Kind::BFloat16, x.device()));
    let r = [1, 2, 4, 8].into_iter().find(|&r| r >= rows)?;
    let partial = (splits > 1)
        .then(|| Tensor::empty([splits as i64, r, n], (Kind::Float, x.device())));
    let partial_ptr = partial.as_ref().map_or(0u64, ptr);
    let (rows, k, n, tiles32, chunk) = (
        i32::try_from(rows).ok()?,
        i32::try_from(k).ok()?,
        i32::try_from(n).ok()?,
        i32::try_from(tiles).ok()?,
        i32::try_from(chunk).ok()?,
    );
    launch(
        &kern,
        format!("gemv_r{r}_bf16"),
        tiles * splits,
        THREADS,
        &[
            &ptr(&x),
            &ptr(w),
            &ptr(&y),
            &partial_ptr,
            &rows,
            &k,
            &n,
            &ldw,
            &tiles32,
            &chunk,
        ],
    )?;
    Some(y)
}
