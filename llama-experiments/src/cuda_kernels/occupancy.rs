//! How many blocks or clusters of a loaded kernel the device holds at once, as the driver
//! computes it (cached per launch shape): the launchers size their grids by it.

use super::Loaded;

impl Loaded {
    /// How many blocks of `block` threads of kernel `full` the whole device holds at once
    /// (the driver's occupancy for one SM times the SMs); `None` if the query fails.
    pub(super) fn resident_blocks(&self, full: &'static str, block: usize) -> Option<usize> {
        let mut map = self.resident.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&n) = map.get(&(full, block)) {
            return Some(n);
        }
        let f = self.functions.get(full)?;
        let per_sm = f
            .occupancy_max_active_blocks_per_multiprocessor(u32::try_from(block).ok()?, 0, None)
            .ok()?;
        let n = (per_sm as usize * self.sms).max(1);
        map.insert((full, block), n);
        Some(n)
    }

    /// How many clusters of `cluster` blocks of `block` threads and `shared` bytes of dynamic
    /// shared memory of kernel `full` the whole device holds at once
    /// (`cuOccupancyMaxActiveClusters`: it knows that a cluster's blocks share one GPC, which
    /// blocks per SM times SMs does not); `None` if the query fails.
    pub(super) fn resident_clusters(
        &self,
        full: &str,
        block: usize,
        shared: u32,
        cluster: u32,
    ) -> Option<usize> {
        use cudarc::driver::sys;
        let f = self.functions.get(full)?;
        // Keyed by the function's handle: a launch looks this up each time, without allocating.
        let key = (f.cu_function() as usize, block, shared, cluster);
        let mut map = self.clusters.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&n) = map.get(&key) {
            return Some(n);
        }
        let mut attr = super::cluster_attribute(cluster);
        let config = sys::CUlaunchConfig {
            gridDimX: cluster,
            gridDimY: 1,
            gridDimZ: 1,
            blockDimX: u32::try_from(block).ok()?,
            blockDimY: 1,
            blockDimZ: 1,
            sharedMemBytes: shared,
            hStream: std::ptr::null_mut(),
            attrs: &mut attr,
            numAttrs: 1,
        };
        let mut n: std::ffi::c_int = 0;
        self.ctx.bind_to_thread().ok()?;
        // SAFETY: a query of a loaded function with a config and out-pointer that outlive it.
        let r = unsafe { sys::cuOccupancyMaxActiveClusters(&mut n, f.cu_function(), &config) };
        if r != sys::CUresult::CUDA_SUCCESS {
            return None;
        }
        let n = usize::try_from(n).ok()?;
        map.insert(key, n);
        Some(n)
    }
}
