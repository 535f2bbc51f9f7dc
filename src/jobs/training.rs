//! Starting a textual-inversion run as both front ends do: settings -> trainer (the token added
//! to a clone of the model), photos -> latent cache (or a recorded replay), optional resume.

use super::settings::TrainSettings;
use crate::error::Error;
use crate::photos::PreparedPhoto;
use crate::pipeline::StableDiffusion;
use crate::train::{AdamWConfig, Checkpoint, DataSource, LatentCache, LrSchedule, ReplayData, RunConfig, SamplerConfig, TextualInversionTrainer, TrainConfig, TrainingRun};

/// Where the training batches come from.
pub enum TrainData {
    /// Prepared photos (at the training resolution): latents cached once, batches sampled.
    Photos(Vec<PreparedPhoto>),
    /// Recorded batches (tests, parity with diffusers).
    Replay(ReplayData),
}

/// A started run and its step count.
pub struct StartedTraining {
    pub run: TrainingRun,
    pub steps: u64,
    /// The first template with the token: the preview prompt.
    pub preview_prompt: String,
}

/// Builds the run (see the module docs). `extra` is recorded with the settings in checkpoints.
pub async fn start_training(sd: StableDiffusion, s: &TrainSettings, data: TrainData, resume: Option<Checkpoint>, extra: serde_json::Value) -> Result<StartedTraining, Error> {
    s.validate()?;
    let config = TrainConfig {
        learning_rate: s.lr,
        adamw: AdamWConfig { weight_decay: s.weight_decay, ..AdamWConfig::default() },
        gradient_accumulation_steps: s.grad_accum,
        lr_schedule: if s.warmup > 0 { LrSchedule::ConstantWithWarmup { warmup_steps: s.warmup } } else { LrSchedule::Constant },
        gradient_checkpointing: !s.no_checkpointing,
    };
    let resolution = s.resolution(&sd);
    let model_name = sd.name.clone();
    let trainer = TextualInversionTrainer::new(sd, &s.token, &s.init_word, s.vectors, config).await?;
    let templates = s.templates.strings();
    let preview_prompt = templates[0].replace("{}", &trainer.placeholder_string());
    let (data, steps) = match data {
        TrainData::Replay(r) => {
            let recorded = (r.len() / s.grad_accum) as u64;
            let steps = s.steps.unwrap_or(recorded);
            if steps > recorded {
                return Err(crate::error::InputError::setting("steps", format!("{steps} needs {} micro-batches but the replay file holds {}", steps * s.grad_accum as u64, r.len())).into());
            }
            (DataSource::Replay(r), steps)
        }
        TrainData::Photos(photos) => {
            let cache = LatentCache::encode(&trainer.model().vae, &photos, s.flip_p > 0.0)?;
            let sampler = SamplerConfig {
                seed: s.seed,
                templates: templates.iter().map(|t| t.to_string()).collect(),
                placeholder_string: trainer.placeholder_string(),
                batch_size: s.batch,
                flip_p: s.flip_p,
                num_train_timesteps: trainer.num_train_timesteps(),
            };
            (DataSource::Sampled { cache, sampler }, s.steps.unwrap_or(TrainSettings::DEFAULT_STEPS))
        }
    };
    let mut settings = serde_json::to_value(s).unwrap_or_default();
    settings["model"] = model_name.into();
    settings["resolution"] = resolution.into();
    if let (Some(o), serde_json::Value::Object(e)) = (settings.as_object_mut(), extra) {
        o.extend(e);
    }
    let run_config = RunConfig { checkpoint_every: s.checkpoint_every.unwrap_or(TrainSettings::DEFAULT_CHECKPOINT_EVERY), settings, ..RunConfig::default() };
    let mut run = TrainingRun::new(trainer, data, run_config);
    if let Some(ck) = resume {
        run.resume(ck)?;
    }
    Ok(StartedTraining { run, steps, preview_prompt })
}

/// A preview of `run`'s current embedding: `prompt` (the first template with the token) at
/// `size` x `size`, `steps` denoising steps, fixed `seed`, the model's own scheduler. Returns the
/// image `[1, H, W, 3]` in [0, 1] and its PNG parameters.
pub fn training_preview(run: &mut TrainingRun, prompt: &str, size: usize, steps: usize, seed: u64) -> Result<(burn::tensor::Tensor<4>, crate::pipeline::png_out::A1111Parameters), Error> {
    run.trainer.write_rows_to_text_encoder();
    let sd = run.trainer.model();
    let mut p = crate::pipeline::GenerateParams::new(prompt, sd);
    (p.seed, p.steps, p.width, p.height) = (seed, steps.max(1), size, size);
    let out = crate::pipeline::generate(sd, &p, None, &mut |_, _, _| true)?;
    let parameters = super::png_parameters(sd, &p, sd.default_scheduler, None, None);
    Ok((out.image, parameters))
}
