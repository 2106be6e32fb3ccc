//! The block shape of the row kernels in `cuda_kernels/kernels.cu` (RMSNorm and its relatives),
//! which both the libtorch path (`cuda_kernels`) and CubeCL's (`cubecl_fused`) launch.

/// Columns per thread the row kernels keep in registers (`RMS_COLS` in the source; with 1,024
/// threads a block then fits the 64 K registers of an SM).
const ROW_COLS: usize = 8;

/// Threads per block of a row kernel over `dim` columns (eight per thread, two runs of four: each
/// thread's loads are two 16-byte pieces where a row allows), or `None` when a row does not fit
/// the registers.
pub(crate) fn row_block(dim: usize) -> Option<usize> {
    let block = dim.div_ceil(ROW_COLS).next_multiple_of(32).clamp(32, 1024);
    (dim > 0 && dim <= ROW_COLS * block).then_some(block)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_blocks_fit_the_registers() {
        assert_eq!(row_block(768), Some(96));
        assert_eq!(row_block(2048), Some(256));
        assert_eq!(row_block(8192), Some(1024)); // 65B's width
        assert_eq!(row_block(8192 + 1), None);
        assert_eq!(row_block(0), None);
        assert_eq!(row_block(5), Some(32));
    }
}
