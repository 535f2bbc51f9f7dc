//! The one builder of AUTOMATIC1111 `parameters` for every PNG the app writes (generated,
//! suppressed, edited, training previews), so the CLI and the page write the same keys.

use super::generation::EditedPhoto;
use crate::pipeline::png_out::{A1111Parameters, a1111_sampler};
use crate::pipeline::{GenerateParams, StableDiffusion};
use crate::schedulers::SchedulerKind;
use crate::suppress::SuppressParams;

/// `parameters` of an image made with `p` (its size, the model's name), plus the SuppressEOT
/// and null-text-inversion keys when they apply.
pub fn png_parameters(sd: &StableDiffusion, p: &GenerateParams, scheduler: SchedulerKind, suppress: Option<&SuppressParams>, edit: Option<&EditedPhoto>) -> A1111Parameters {
    let mut extra = suppress.map(suppress_extra).unwrap_or_default();
    if let Some(e) = edit {
        extra.push(("Null-text inversion".into(), format!("\"{}\", iters {}", e.name.replace('"', "'"), e.null_text_iters)));
    }
    A1111Parameters {
        prompt: p.prompt.clone(),
        negative_prompt: p.negative_prompt.clone(),
        steps: p.steps,
        sampler: a1111_sampler(scheduler).into(),
        cfg_scale: p.guidance,
        seed: p.seed,
        width: p.width,
        height: p.height,
        model: sd.name.clone(),
        extra,
    }
}

/// The SuppressEOT `key: value` pairs.
pub fn suppress_extra(s: &SuppressParams) -> Vec<(String, String)> {
    let ito = if s.optimize { format!("end {}, iters {}, scale {}", s.opt_end, s.opt_iters, s.opt_scale) } else { "off".into() };
    vec![
        ("SuppressEOT".to_string(), format!("\"{}\"", s.words.replace('"', "'"))),
        ("SuppressEOT alpha".into(), s.alpha.to_string()),
        ("SuppressEOT start".into(), s.start.to_string()),
        ("SuppressEOT ITO".into(), ito),
    ]
}
