//! A whole training run on top of [`TextualInversionTrainer`]: where batches come from (sampled
//! from the latent cache, or replayed from a recording), optimizer steps made of
//! `gradient_accumulation_steps` micro-batches, in-memory "last good" checkpoints, and the
//! divergence guard (a non-finite loss, gradient or row, or a row that grew far beyond its
//! initial norm, rolls the run back to the last good checkpoint and halves the learning rate).
//!
//! Shared by the CLI and the browser worker: no file system, no clock, no synchronous readback.

use burn::tensor::{Device, Tensor, TensorData};
use safetensors::tensor::Dtype;
use serde::Serialize;

use super::checkpoint::{Checkpoint, CheckpointInfo};
use super::data::{LatentCache, SampleInfo, SamplerConfig, sample_batch};
use super::{Batch, TextualInversionTrainer, TrainError};

/// Recorded batches (`--replay`): micro-batch `g` uses index `g` of every tensor.
#[derive(Clone, Debug)]
pub struct ReplayData {
    /// `[S, B, C, h, w]` latents (already scaled), row-major.
    pub latents: Vec<f32>,
    pub noise: Vec<f32>,
    /// `[S, B]`
    pub timesteps: Vec<usize>,
    /// `[S, B, L]`
    pub input_ids: Vec<u32>,
    /// `[S, B, C, h, w]`
    pub shape: [usize; 5],
    /// Token sequence length L.
    pub seq_len: usize,
}

impl ReplayData {
    /// Reads a recording: safetensors with `latents` `[S,B,C,h,w]` (or `[S,C,h,w]` for B = 1),
    /// `noise` (same shape), `timesteps` `[S]` or `[S,B]` and `input_ids` `[S,L]` or `[S,B,L]`
    /// (integer dtypes I64/I32, floats F32/F16/BF16/F64).
    pub fn from_safetensors(bytes: &[u8], name: &str) -> Result<Self, TrainError> {
        let bad = |m: String| TrainError::Batch(format!("replay file `{name}`: {m}"));
        let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| bad(format!("not a safetensors file ({e})")))?;
        let get = |key: &str| st.tensor(key).map_err(|_| bad(format!("tensor `{key}` is missing (it needs latents, noise, timesteps, input_ids)")));
        let floats = |key: &str| -> Result<(Vec<usize>, Vec<f32>), TrainError> {
            let t = get(key)?;
            let d = t.data();
            let v: Vec<f32> = match t.dtype() {
                Dtype::F32 => d.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
                Dtype::F64 => d.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32).collect(),
                Dtype::F16 => d.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
                Dtype::BF16 => d.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
                other => return Err(bad(format!("`{key}` has dtype {other:?}; expected a float type"))),
            };
            Ok((t.shape().to_vec(), v))
        };
        let ints = |key: &str| -> Result<(Vec<usize>, Vec<i64>), TrainError> {
            let t = get(key)?;
            let d = t.data();
            let v: Vec<i64> = match t.dtype() {
                Dtype::I64 => d.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect(),
                Dtype::I32 => d.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64).collect(),
                other => return Err(bad(format!("`{key}` has dtype {other:?}; expected I64 or I32"))),
            };
            Ok((t.shape().to_vec(), v))
        };
        let (ls, latents) = floats("latents")?;
        let shape: [usize; 5] = match ls[..] {
            [s, b, c, h, w] => [s, b, c, h, w],
            [s, c, h, w] => [s, 1, c, h, w],
            _ => return Err(bad(format!("`latents` has shape {ls:?}; expected [S,B,C,h,w]"))),
        };
        let [s, b, ..] = shape;
        if s == 0 || b == 0 {
            return Err(bad("it holds no batches".into()));
        }
        let (ns, noise) = floats("noise")?;
        if noise.len() != latents.len() {
            return Err(bad(format!("`noise` has shape {ns:?} but `latents` {ls:?}")));
        }
        let (ts, t) = ints("timesteps")?;
        if t.len() != s * b || ts.first() != Some(&s) {
            return Err(bad(format!("`timesteps` has shape {ts:?}; expected [{s}] or [{s},{b}]")));
        }
        if let Some(x) = t.iter().find(|&&x| x < 0) {
            return Err(bad(format!("negative timestep {x}")));
        }
        let timesteps: Vec<usize> = if ts.len() == 1 && b > 1 {
            return Err(bad(format!("`timesteps` has shape {ts:?}; a batch of {b} needs [{s},{b}]")));
        } else {
            t.iter().map(|&x| x as usize).collect()
        };
        let (is, ids) = ints("input_ids")?;
        let seq_len = *is.last().unwrap_or(&0);
        let ok = match is[..] {
            [s2, l] => s2 == s && b == 1 && l > 0,
            [s2, b2, l] => s2 == s && b2 == b && l > 0,
            _ => false,
        };
        if !ok {
            return Err(bad(format!("`input_ids` has shape {is:?}; expected [{s},L] or [{s},{b},L]")));
        }
        if let Some(x) = ids.iter().find(|&&x| x < 0 || x > u32::MAX as i64) {
            return Err(bad(format!("token id {x} is invalid")));
        }
        Ok(Self { latents, noise, timesteps, input_ids: ids.iter().map(|&x| x as u32).collect(), shape, seq_len })
    }

    /// Number of recorded micro-batches S.
    pub fn len(&self) -> usize {
        self.shape[0]
    }

    pub fn is_empty(&self) -> bool {
        self.shape[0] == 0
    }

    /// Micro-batch `g` on `device`.
    pub fn batch(&self, g: usize, device: &Device) -> Batch {
        let [_, b, c, h, w] = self.shape;
        let per = b * c * h * w;
        let t = |v: &[f32]| Tensor::<4>::from_data(TensorData::new(v[g * per..(g + 1) * per].to_vec(), [b, c, h, w]), device);
        let l = self.seq_len;
        Batch {
            latents: t(&self.latents),
            noise: t(&self.noise),
            timesteps: self.timesteps[g * b..(g + 1) * b].to_vec(),
            input_ids: (0..b).map(|k| self.input_ids[(g * b + k) * l..(g * b + k + 1) * l].to_vec()).collect(),
        }
    }
}

/// Where a run's batches come from.
#[derive(Clone, Debug)]
pub enum DataSource {
    /// Drawn from the photos' latents.
    Sampled { cache: LatentCache, sampler: SamplerConfig },
    /// Replayed from a recording.
    Replay(ReplayData),
}

/// Run-level settings.
#[derive(Clone, Debug, PartialEq)]
pub struct RunConfig {
    /// Keep an in-memory "last good" checkpoint every this many optimizer steps (the CLI and the
    /// browser also save it then). 0: only the initial state.
    pub checkpoint_every: u64,
    /// A row whose L2 norm exceeds `divergence_factor` x the largest initial row norm counts as
    /// diverged.
    pub divergence_factor: f64,
    /// Give up after this many roll-backs without reaching a new checkpoint.
    pub max_rollbacks: u32,
    /// Recorded with checkpoints (the CLI's settings).
    pub settings: serde_json::Value,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self { checkpoint_every: 100, divergence_factor: 100.0, max_rollbacks: 3, settings: serde_json::Value::Null }
    }
}

/// A roll-back the divergence guard did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Rollback {
    /// What went wrong (`loss is NaN`, `row 0 norm 1.2e4 > ...`).
    pub reason: String,
    /// Optimizer step of the checkpoint the run went back to.
    pub to_step: u64,
    /// Learning-rate multiplier from now on.
    pub lr_scale: f64,
}

/// What one optimizer step did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StepLog {
    /// Optimizer steps done after this one (1-based; after a roll-back, the restored step).
    pub step: u64,
    /// Mean loss over the step's micro-batches.
    pub loss: f64,
    /// Loss of every micro-batch.
    pub micro_losses: Vec<f32>,
    /// Learning rate of the update.
    pub lr: f64,
    /// L2 norm of the (accumulated) gradient of the update.
    pub grad_norm: f64,
    /// L2 norm of each trained row after the update.
    pub row_norms: Vec<f64>,
    /// Timesteps of all micro-batches.
    pub timesteps: Vec<usize>,
    /// What the sampler drew (empty for replayed batches).
    pub samples: Vec<SampleInfo>,
    /// Set when this step diverged and the run went back to the last good checkpoint.
    pub rollback: Option<Rollback>,
}

/// A training run.
pub struct TrainingRun {
    pub trainer: TextualInversionTrainer,
    data: DataSource,
    config: RunConfig,
    base_lr: f64,
    lr_scale: f64,
    step: u64,
    micro_batches: u64,
    last_good: Checkpoint,
    rollbacks_since_good: u32,
    max_initial_norm: f64,
}

fn row_norms(rows: &[f32], dim: usize) -> Vec<f64> {
    rows.chunks(dim).map(|r| r.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>().sqrt()).collect()
}

impl TrainingRun {
    /// Starts a run from the trainer's current state.
    pub fn new(trainer: TextualInversionTrainer, data: DataSource, config: RunConfig) -> Self {
        let base_lr = trainer.config().learning_rate;
        let max_initial_norm = row_norms(trainer.rows(), trainer.dim()).into_iter().fold(0.0, f64::max);
        let mut run = Self {
            trainer,
            data,
            config,
            base_lr,
            lr_scale: 1.0,
            step: 0,
            micro_batches: 0,
            last_good: Checkpoint { state: super::TrainerState::empty(), info: empty_info() },
            rollbacks_since_good: 0,
            max_initial_norm,
        };
        run.last_good = run.checkpoint();
        run
    }

    /// Continues from a checkpoint (rows, optimizer, data position, lr scale).
    pub fn resume(&mut self, ck: Checkpoint) -> Result<(), TrainError> {
        self.trainer.restore(ck.state.clone())?;
        self.step = ck.info.step;
        self.micro_batches = ck.info.micro_batches;
        self.lr_scale = ck.info.lr_scale;
        self.trainer.set_learning_rate(self.base_lr * self.lr_scale);
        self.last_good = ck;
        self.rollbacks_since_good = 0;
        Ok(())
    }

    /// Optimizer steps done.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    pub fn micro_batches(&self) -> u64 {
        self.micro_batches
    }

    /// The run-level settings.
    pub fn config(&self) -> &RunConfig {
        &self.config
    }

    pub fn lr_scale(&self) -> f64 {
        self.lr_scale
    }

    pub fn data(&self) -> &DataSource {
        &self.data
    }

    /// The current state as a checkpoint.
    pub fn checkpoint(&self) -> Checkpoint {
        let state = self.trainer.state();
        Checkpoint {
            info: CheckpointInfo {
                step: self.step,
                micro_batches: self.micro_batches,
                lr_scale: self.lr_scale,
                settings: self.config.settings.clone(),
                placeholder_tokens: state.placeholder_tokens.clone(),
                accumulated_micro_steps: state.accumulated_micro_steps,
                optimizer_step: state.optimizer.step,
            },
            state,
        }
    }

    /// Records the current state as the last good checkpoint and returns it.
    pub fn mark_good(&mut self) -> Checkpoint {
        self.last_good = self.checkpoint();
        self.rollbacks_since_good = 0;
        self.last_good.clone()
    }

    /// The last good checkpoint (what a roll-back returns to).
    pub fn last_good(&self) -> &Checkpoint {
        &self.last_good
    }

    fn next_batch(&self, g: u64) -> Result<(Batch, Vec<SampleInfo>), TrainError> {
        match &self.data {
            DataSource::Replay(r) => {
                if g as usize >= r.len() {
                    return Err(TrainError::Batch(format!("the replay file holds {} micro-batches; micro-batch {} was asked for", r.len(), g + 1)));
                }
                Ok((r.batch(g as usize, &self.trainer.model().device()), Vec::new()))
            }
            DataSource::Sampled { cache, sampler } => {
                let trainer = &self.trainer;
                Ok(sample_batch(sampler, cache, g, &|p: &str| trainer.prompt_ids(p)))
            }
        }
    }

    /// One optimizer step (`gradient_accumulation_steps` micro-batches). On divergence the run
    /// returns to the last good checkpoint, halves the learning rate and says so in
    /// [`StepLog::rollback`]; after `max_rollbacks` in a row it fails with
    /// [`TrainError::Diverged`] (the last good checkpoint stays available).
    pub async fn step(&mut self) -> Result<StepLog, TrainError> {
        let a = self.trainer.config().gradient_accumulation_steps.max(1);
        let mut micro_losses = Vec::with_capacity(a);
        let mut timesteps = Vec::new();
        let mut samples = Vec::new();
        let mut grad_sum = vec![0f64; self.trainer.rows().len()];
        let mut lr = 0.0;
        let mut problem = None;
        for _ in 0..a {
            let (batch, info) = self.next_batch(self.micro_batches)?;
            self.micro_batches += 1;
            timesteps.extend(batch.timesteps.iter().copied());
            samples.extend(info);
            let report = self.trainer.step(&batch).await?;
            micro_losses.push(report.loss);
            for (s, g) in grad_sum.iter_mut().zip(&report.grad) {
                *s += *g as f64;
            }
            if !report.loss.is_finite() {
                problem = Some(format!("loss is {}", report.loss));
            } else if report.grad.iter().any(|g| !g.is_finite()) {
                problem = Some("the gradient is not finite".to_string());
            }
            if let Some(l) = report.lr {
                lr = l;
            }
            if problem.is_some() {
                break;
            }
        }
        let dim = self.trainer.dim();
        let norms = row_norms(self.trainer.rows(), dim);
        if problem.is_none() {
            let limit = self.config.divergence_factor * self.max_initial_norm.max(1e-6);
            if let Some((i, n)) = norms.iter().enumerate().find(|(_, n)| !n.is_finite() || **n > limit) {
                problem = Some(format!("row {i} has norm {n:.4e} (limit {limit:.4e})"));
            }
        }
        let loss = micro_losses.iter().map(|&l| l as f64).sum::<f64>() / micro_losses.len() as f64;
        let grad_norm = grad_sum.iter().map(|g| g * g).sum::<f64>().sqrt();
        if let Some(reason) = problem {
            self.rollbacks_since_good += 1;
            if self.rollbacks_since_good > self.config.max_rollbacks {
                return Err(TrainError::Diverged { reason, step: self.last_good.info.step, rollbacks: self.config.max_rollbacks });
            }
            let good = self.last_good.clone();
            self.trainer.restore(good.state)?;
            self.step = good.info.step;
            // keep drawing fresh batches (a bad batch is not replayed forever) but lower the lr
            self.lr_scale *= 0.5;
            self.trainer.set_learning_rate(self.base_lr * self.lr_scale);
            return Ok(StepLog {
                step: self.step,
                loss,
                micro_losses,
                lr,
                grad_norm,
                row_norms: row_norms(self.trainer.rows(), dim),
                timesteps,
                samples,
                rollback: Some(Rollback { reason, to_step: self.step, lr_scale: self.lr_scale }),
            });
        }
        self.step += 1;
        if self.config.checkpoint_every > 0 && self.step.is_multiple_of(self.config.checkpoint_every) {
            self.mark_good();
        }
        Ok(StepLog { step: self.step, loss, micro_losses, lr, grad_norm, row_norms: norms, timesteps, samples, rollback: None })
    }
}

fn empty_info() -> CheckpointInfo {
    CheckpointInfo {
        step: 0,
        micro_batches: 0,
        lr_scale: 1.0,
        settings: serde_json::Value::Null,
        placeholder_tokens: Vec::new(),
        accumulated_micro_steps: 0,
        optimizer_step: 0,
    }
}
