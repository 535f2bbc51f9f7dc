//! Training checkpoints: the trained rows, AdamW's moments and step, the unfinished
//! gradient-accumulation sum and the run's settings, in one safetensors file (bytes in, bytes
//! out, so the browser can keep it in IndexedDB/OPFS and the CLI on disk).
//!
//! Layout: tensors `rows` F32 `[n, D]`, `exp_avg` / `exp_avg_sq` F64 `[n, D]`,
//! `accumulated_grad` F32 `[n, D]`; metadata `format` = `pseudoword-ti-checkpoint`, `version`,
//! `run` = JSON of [`CheckpointInfo`]. A checkpoint is not an embedding file: export one with
//! [`crate::embedding_files::write_embedding`] (the CLI writes both at every save).

use std::collections::HashMap;

use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};

use super::{AdamWState, TrainError, TrainerState};

/// `format` metadata value of a checkpoint file.
pub const CHECKPOINT_FORMAT: &str = "pseudoword-ti-checkpoint";
const VERSION: &str = "1";

/// Everything about a run a checkpoint keeps besides the tensors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    /// Optimizer steps done when the checkpoint was taken (the next step is `step + 1`).
    pub step: u64,
    /// Micro-batches consumed so far (drives the data sampler, so resuming continues the same
    /// random sequence).
    pub micro_batches: u64,
    /// Multiplier on the learning rate after divergence roll-backs (1 when none happened).
    pub lr_scale: f64,
    /// The settings the run was started with (JSON object, e.g. the CLI's `TrainSettings`).
    pub settings: serde_json::Value,
    pub placeholder_tokens: Vec<String>,
    pub accumulated_micro_steps: usize,
    pub optimizer_step: u64,
}

/// A training checkpoint: [`TrainerState`] + [`CheckpointInfo`].
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    pub state: TrainerState,
    pub info: CheckpointInfo,
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f64_bytes(v: &[f64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl Checkpoint {
    /// Serialises to safetensors bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let s = &self.state;
        let shape = vec![s.n_vectors, s.dim];
        let blobs: Vec<(&str, Dtype, Vec<u8>)> = vec![
            ("rows", Dtype::F32, f32_bytes(&s.rows)),
            ("exp_avg", Dtype::F64, f64_bytes(&s.optimizer.exp_avg)),
            ("exp_avg_sq", Dtype::F64, f64_bytes(&s.optimizer.exp_avg_sq)),
            ("accumulated_grad", Dtype::F32, f32_bytes(&s.accumulated_grad)),
        ];
        let views: HashMap<String, TensorView<'_>> = blobs
            .iter()
            .map(|(k, dt, b)| ((*k).to_string(), TensorView::new(*dt, shape.clone(), b).expect("checkpoint tensor sizes are consistent")))
            .collect();
        let mut info = self.info.clone();
        info.placeholder_tokens = s.placeholder_tokens.clone();
        info.accumulated_micro_steps = s.accumulated_micro_steps;
        info.optimizer_step = s.optimizer.step;
        let meta = HashMap::from([
            ("format".to_string(), CHECKPOINT_FORMAT.to_string()),
            ("version".to_string(), VERSION.to_string()),
            ("run".to_string(), serde_json::to_string(&info).expect("checkpoint info serialises")),
        ]);
        safetensors::serialize(views, Some(meta)).expect("checkpoint serialises")
    }

    /// Reads a checkpoint written by [`Self::to_bytes`]; `name` is used in messages.
    pub fn from_bytes(bytes: &[u8], name: &str) -> Result<Self, TrainError> {
        let bad = |m: String| TrainError::State(format!("`{name}` is not a usable training checkpoint: {m}"));
        let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| bad(e.to_string()))?;
        let meta = meta.metadata().clone().unwrap_or_default();
        if meta.get("format").map(String::as_str) != Some(CHECKPOINT_FORMAT) {
            return Err(bad(format!(
                "its metadata has no `format: {CHECKPOINT_FORMAT}` (an embedding file? load it as an embedding, or start a new run)"
            )));
        }
        if meta.get("version").map(String::as_str) != Some(VERSION) {
            return Err(bad(format!("unsupported checkpoint version {:?}", meta.get("version"))));
        }
        let info: CheckpointInfo =
            serde_json::from_str(meta.get("run").ok_or_else(|| bad("no `run` metadata".into()))?).map_err(|e| bad(e.to_string()))?;
        let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| bad(e.to_string()))?;
        let tensor = |key: &str, dtype: Dtype| -> Result<(Vec<usize>, Vec<u8>), TrainError> {
            let t = st.tensor(key).map_err(|_| bad(format!("tensor `{key}` is missing")))?;
            if t.dtype() != dtype {
                return Err(bad(format!("tensor `{key}` is {:?}, expected {dtype:?}", t.dtype())));
            }
            Ok((t.shape().to_vec(), t.data().to_vec()))
        };
        let (shape, rows) = tensor("rows", Dtype::F32)?;
        let [n, dim] = shape[..] else { return Err(bad(format!("`rows` has shape {shape:?}, expected [n, D]"))) };
        let f32s = |b: Vec<u8>| b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect::<Vec<f32>>();
        let f64s = |b: Vec<u8>| b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect::<Vec<f64>>();
        let same = |key: &str, dtype: Dtype| -> Result<Vec<u8>, TrainError> {
            let (s, b) = tensor(key, dtype)?;
            if s != shape {
                return Err(bad(format!("`{key}` has shape {s:?} but `rows` {shape:?}")));
            }
            Ok(b)
        };
        let exp_avg = f64s(same("exp_avg", Dtype::F64)?);
        let exp_avg_sq = f64s(same("exp_avg_sq", Dtype::F64)?);
        let accumulated_grad = f32s(same("accumulated_grad", Dtype::F32)?);
        if info.placeholder_tokens.len() != n {
            return Err(bad(format!("{} placeholder tokens for {n} rows", info.placeholder_tokens.len())));
        }
        let state = TrainerState {
            placeholder_tokens: info.placeholder_tokens.clone(),
            n_vectors: n,
            dim,
            rows: f32s(rows),
            optimizer: AdamWState { step: info.optimizer_step, exp_avg, exp_avg_sq },
            accumulated_grad,
            accumulated_micro_steps: info.accumulated_micro_steps,
        };
        Ok(Self { state, info })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_exactly() {
        let state = TrainerState {
            placeholder_tokens: vec!["<a>".into(), "<a>_1".into()],
            n_vectors: 2,
            dim: 3,
            rows: vec![0.1, -2.5, 3.0, 1e-7, f32::MIN_POSITIVE, 7.0],
            optimizer: AdamWState { step: 17, exp_avg: vec![0.1, 0.2, 0.3, 0.4, 0.5, 1.0 / 3.0], exp_avg_sq: vec![1e-300, 2.0, 3.0, 4.0, 5.0, 6.0] },
            accumulated_grad: vec![0.5; 6],
            accumulated_micro_steps: 1,
        };
        let info = CheckpointInfo {
            step: 17,
            micro_batches: 35,
            lr_scale: 0.5,
            settings: serde_json::json!({"seed": 3, "lr": 0.005}),
            placeholder_tokens: vec![],
            accumulated_micro_steps: 0,
            optimizer_step: 0,
        };
        let ck = Checkpoint { state: state.clone(), info };
        let back = Checkpoint::from_bytes(&ck.to_bytes(), "x").unwrap();
        assert_eq!(back.state, state);
        assert_eq!(back.info.micro_batches, 35);
        assert_eq!(back.info.settings["seed"], 3);
        // an embedding file is refused with a hint
        let emb = safetensors::serialize(
            HashMap::from([("<a>".to_string(), TensorView::new(Dtype::F32, vec![1, 2], &[0u8; 8]).unwrap())]),
            None,
        )
        .unwrap();
        let e = Checkpoint::from_bytes(&emb, "learned_embeds.safetensors").unwrap_err().to_string();
        assert!(e.contains("embedding file"), "{e}");
        assert!(Checkpoint::from_bytes(b"garbage", "g").is_err());
    }
}
