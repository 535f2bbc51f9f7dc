//! Asynchronous readback of device tensors to the host (`into_data_async`): the only kind that
//! works on WebGPU in wasm. Library code reads back only small results through here.

use burn::tensor::Tensor;

use crate::error::DeviceError;

/// Reads a tensor back to the host as f32 values (asynchronously: works on WebGPU too).
pub async fn read_f32<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>, DeviceError> {
    let data = t.into_data_async().await.map_err(|e| DeviceError::Readback { reason: format!("{e:?}") })?;
    data.convert::<f32>().try_into_vec::<f32>().map_err(|e| DeviceError::Readback { reason: format!("{e:?}") })
}
