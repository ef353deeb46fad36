//! The one way nibble times a kernel on an NVIDIA GPU: `nibble-rt bench` and `stream`, and the compiler's
//! `nibble bench --device cuda` and `nibble tune --device cuda`, all measure through [`Timer`], so a tuned choice
//! and the benchmark table agree on what "faster" means.
//!
//! A decode layer's weights are read once per forward pass and other layers evict them from L2 in between, so the
//! reported time is the **flushed** one: before every timed launch a 256 MB read ([`L2Flush`]) evicts L2 with clean
//! lines, and only the launch sits between the two events. The flush also keeps the GPU busy between launches, so
//! its clocks do not fall back while the host prepares the next one; untimed warmup launches come first.

use super::{CudaError, Device, Event, L2Flush, Stream};
use crate::launch::LaunchError;
use crate::numerics::median;

/// Bytes the flush reads before each timed launch: five times the H100's 50 MB L2.
pub const FLUSH_BYTES: usize = 256 << 20;

/// A stream, two events and the L2 flush.
pub struct Timer {
    stream: Stream,
    start: Event,
    end: Event,
    flush: L2Flush,
}

/// Flushed launch times, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FlushedTimes {
    pub median_us: f64,
    pub min_us: f64,
}

impl Timer {
    pub fn new(device: &Device) -> Result<Timer, CudaError> {
        Ok(Timer {
            stream: device.stream()?,
            start: device.event()?,
            end: device.event()?,
            flush: L2Flush::new(device, FLUSH_BYTES)?,
        })
    }

    /// `warmup` untimed launches.
    pub fn warm_up(
        &self,
        warmup: u32,
        launch: &dyn Fn(&Stream) -> Result<(), LaunchError>,
    ) -> Result<(), LaunchError> {
        for _ in 0..warmup {
            launch(&self.stream)?;
        }
        Ok(())
    }

    /// `iters` launches back to back between two events, in microseconds per launch (warm L2 where the inputs fit).
    pub fn back_to_back(
        &self,
        iters: u32,
        launch: &dyn Fn(&Stream) -> Result<(), LaunchError>,
    ) -> Result<f64, LaunchError> {
        let iters = iters.max(1);
        self.start.record(&self.stream)?;
        for _ in 0..iters {
            launch(&self.stream)?;
        }
        self.end.record(&self.stream)?;
        self.end.synchronize()?;
        Ok(f64::from(self.start.elapsed_ms(&self.end)?) * 1000.0 / f64::from(iters))
    }

    /// `iters` times (at least once): the flush, then `launch` alone between the two events.
    pub fn flushed(
        &self,
        iters: u32,
        launch: &dyn Fn(&Stream) -> Result<(), LaunchError>,
    ) -> Result<FlushedTimes, LaunchError> {
        let mut t = vec![];
        for _ in 0..iters.max(1) {
            self.flush.run(&self.stream)?;
            self.start.record(&self.stream)?;
            launch(&self.stream)?;
            self.end.record(&self.stream)?;
            self.end.synchronize()?;
            t.push(f64::from(self.start.elapsed_ms(&self.end)?) * 1000.0);
        }
        let min_us = t.iter().copied().fold(f64::INFINITY, f64::min);
        Ok(FlushedTimes {
            median_us: median(&mut t),
            min_us,
        })
    }
}
