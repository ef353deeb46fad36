//! The HIP backend of [`crate::linear::QuantLinear`]: the layer's repacked weights, scales and bias live in device
//! memory, each bundle kernel of the layer is loaded once (arch and `.args` checked), and a forward selects the kernel
//! by M and launches it.
//!
//! Written against the real HIP API (through [`crate::hip`], which loads libamdhip64 at run time) and compiled in CI;
//! **not run on an AMD GPU** — none is available to this project. Without a device, [`HipBackend::open`] fails with
//! "no HIP device found".

use crate::bundle;
use crate::checkpoint::LayerData;
use crate::hip::{Device, DeviceBuffer, HipError, Stream};
use crate::launch::{ArgValue, BufferArg, Kernel, LaunchError};
use crate::linear::{Backend, Half16Host, LinearError, PreparedLayer};
use crate::manifest::ArgRole;
use crate::numerics::DType;

/// Runs layers on one HIP device.
#[derive(Debug, Clone)]
pub struct HipBackend {
    device: Device,
}

impl HipBackend {
    /// Opens HIP device `index`.
    pub fn open(index: usize) -> Result<HipBackend, HipError> {
        Ok(HipBackend {
            device: Device::open(index)?,
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }
}

/// A device buffer of 16-bit floats of either type.
pub enum Half16Device {
    Bf16(DeviceBuffer<half::bf16>),
    F16(DeviceBuffer<half::f16>),
}

impl Half16Device {
    pub fn upload(device: &Device, dtype: DType, bits: &[u16]) -> Result<Half16Device, HipError> {
        Ok(match dtype {
            DType::Bf16 => Half16Device::Bf16(
                device.upload(
                    &bits
                        .iter()
                        .map(|b| half::bf16::from_bits(*b))
                        .collect::<Vec<_>>(),
                )?,
            ),
            DType::F16 => Half16Device::F16(
                device.upload(
                    &bits
                        .iter()
                        .map(|b| half::f16::from_bits(*b))
                        .collect::<Vec<_>>(),
                )?,
            ),
        })
    }

    pub fn zeros(device: &Device, dtype: DType, len: usize) -> Result<Half16Device, HipError> {
        Half16Device::upload(device, dtype, &vec![0; len])
    }

    pub fn as_arg(&self) -> BufferArg<'_> {
        match self {
            Half16Device::Bf16(b) => b.as_arg(),
            Half16Device::F16(b) => b.as_arg(),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Half16Device::Bf16(b) => b.len(),
            Half16Device::F16(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The contents as bit patterns.
    pub fn to_bits(&self) -> Result<Vec<u16>, HipError> {
        Ok(match self {
            Half16Device::Bf16(b) => b.to_vec()?.into_iter().map(|v| v.to_bits()).collect(),
            Half16Device::F16(b) => b.to_vec()?.into_iter().map(|v| v.to_bits()).collect(),
        })
    }
}

/// [`HipBackend`]'s per-layer state: loaded kernels and device copies of each packing and the bias.
pub struct HipLayer {
    kernels: Vec<Kernel>,
    weights: Vec<DeviceBuffer<u32>>,
    scales: Vec<DeviceBuffer<f32>>,
    bias: Option<Half16Device>,
    stream: Stream,
}

fn hip_err(layer: &PreparedLayer, e: impl std::fmt::Display) -> LinearError {
    LinearError::Backend {
        layer: layer.prefix.clone(),
        message: e.to_string(),
    }
}

impl HipBackend {
    /// `y = layer(x)` on device buffers: `x` `[M, K]` and `y` `[M, N]` in the layer's dtypes. The kernel for M is
    /// chosen by the bundle's rule; shapes are checked before the launch. Enqueued on the layer's stream and waited
    /// for.
    pub fn forward_device(
        &self,
        layer: &PreparedLayer,
        state: &HipLayer,
        x: &Half16Device,
        y: &Half16Device,
        m: usize,
    ) -> Result<(), LinearError> {
        if x.len() != m * layer.k || y.len() != m * layer.n {
            return Err(hip_err(
                layer,
                format!(
                    "x has {} and y {} elements; M={m} needs {} and {}",
                    x.len(),
                    y.len(),
                    m * layer.k,
                    m * layer.n
                ),
            ));
        }
        let i = bundle::choose(&layer.kernels, m).ok_or_else(|| LinearError::NoKernelForM {
            layer: layer.prefix.clone(),
            m,
            ranges: bundle::ranges(&layer.kernels),
        })?;
        let p = layer.kernel_packing[i];
        let mut values = vec![
            (ArgRole::X, ArgValue::Buffer(x.as_arg())),
            (ArgRole::Weight, ArgValue::Buffer(state.weights[p].as_arg())),
            (ArgRole::Scales, ArgValue::Buffer(state.scales[p].as_arg())),
            (ArgRole::Y, ArgValue::Buffer(y.as_arg())),
        ];
        if let Some(b) = &state.bias {
            values.push((ArgRole::Bias, ArgValue::Buffer(b.as_arg())));
        }
        if let Some(t) = layer.tensor_scale {
            values.push((ArgRole::TensorScale, ArgValue::F32(t)));
        }
        // Split-K scratch for this M: partials, and counters that start (and are left) at zero.
        let (ws_bytes, counter_bytes) = layer.kernels[i].manifest.split_k_bytes(m as u32);
        let scratch = if ws_bytes > 0 {
            let ws = self
                .device
                .alloc::<f32>((ws_bytes / 4) as usize)
                .map_err(|e| hip_err(layer, e))?;
            let counters = self
                .device
                .upload(&vec![0i32; (counter_bytes / 4) as usize])
                .map_err(|e| hip_err(layer, e))?;
            Some((ws, counters))
        } else {
            None
        };
        if let Some((workspace, counters)) = &scratch {
            values.push((ArgRole::Workspace, ArgValue::Buffer(workspace.as_arg())));
            values.push((ArgRole::Counters, ArgValue::Buffer(counters.as_arg())));
        }
        let m32 =
            u32::try_from(m).map_err(|_| hip_err(layer, format!("M={m} does not fit 32 bits")))?;
        state.kernels[i]
            .launch(&state.stream, m32, &values)
            .map_err(|e: LaunchError| hip_err(layer, e))?;
        state.stream.synchronize().map_err(|e| hip_err(layer, e))
    }
}

impl crate::linear::QuantLinear<HipBackend> {
    /// `y = layer(x)` on device tensors (`x` `[M, K]`, `y` `[M, N]` in the layer's dtypes); see
    /// [`HipBackend::forward_device`].
    pub fn forward_device(
        &self,
        x: &Half16Device,
        y: &Half16Device,
        m: usize,
    ) -> Result<(), LinearError> {
        self.backend()
            .forward_device(self.layer(), self.backend_state(), x, y, m)
    }
}

impl Backend for HipBackend {
    type Layer = HipLayer;

    fn name(&self) -> &'static str {
        "hip"
    }

    fn prepare(
        &self,
        layer: &PreparedLayer,
        _data: &LayerData<'_>,
    ) -> Result<HipLayer, LinearError> {
        let mut kernels = vec![];
        for k in &layer.kernels {
            let code = k.code_object().map_err(|e| hip_err(layer, e))?;
            kernels.push(
                Kernel::load(&self.device, &k.manifest, &code).map_err(|e| hip_err(layer, e))?,
            );
        }
        let mut weights = vec![];
        let mut scales = vec![];
        for p in &layer.packings {
            weights.push(
                self.device
                    .upload(&p.weight)
                    .map_err(|e| hip_err(layer, e))?,
            );
            let Some(f32_scales) = p.scales.as_f32() else {
                return Err(hip_err(
                    layer,
                    format!(
                        "scale layout {} is not an AMD layout (f32 scales)",
                        p.scale_layout.id
                    ),
                ));
            };
            scales.push(
                self.device
                    .upload(f32_scales)
                    .map_err(|e| hip_err(layer, e))?,
            );
        }
        let bias = match &layer.bias {
            Some((dt, bits)) => {
                Some(Half16Device::upload(&self.device, *dt, bits).map_err(|e| hip_err(layer, e))?)
            }
            None => None,
        };
        let stream = self.device.stream().map_err(|e| hip_err(layer, e))?;
        Ok(HipLayer {
            kernels,
            weights,
            scales,
            bias,
            stream,
        })
    }

    fn linear(
        &self,
        layer: &PreparedLayer,
        state: &HipLayer,
        x: &Half16Host<'_>,
        m: usize,
    ) -> Result<Vec<u16>, LinearError> {
        let xd =
            Half16Device::upload(&self.device, x.dtype, x.bits).map_err(|e| hip_err(layer, e))?;
        let yd = Half16Device::zeros(&self.device, layer.y_dtype, m * layer.n)
            .map_err(|e| hip_err(layer, e))?;
        self.forward_device(layer, state, &xd, &yd, m)?;
        yd.to_bits().map_err(|e| hip_err(layer, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_gpu_the_backend_reports_no_device_in_one_line() {
        // This machine (and CI) has no AMD GPU; libamdhip64 may or may not be installed.
        let e = HipBackend::open(0).expect_err("no GPU here");
        let text = e.to_string();
        assert!(text.contains("no HIP device found"), "{text}");
        assert_eq!(text.lines().count(), 1, "{text}");
    }

    // `QuantLinear<HipBackend>` is shared across threads like the CPU one.
    const _: () = {
        const fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<crate::linear::QuantLinear<HipBackend>>();
    };
}
