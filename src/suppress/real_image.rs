//! SuppressEOT on a real photo (the reference's real-image script): encode the photo, DDIM
//! inversion with the prompt, null-text inversion ([`super::inversion`]), then the two-branch
//! run ([`SuppressTxt2Img`]) from the inverted latent with the per-step optimised unconditional
//! embeddings and the real-image ITO step scale ([`SuppressParams::for_real_image`]: 5). The
//! original branch of that run is the reconstruction of the photo.
//!
//! Stepwise use (the browser): [`invert_photo`] (progress per step), then
//! [`SuppressTxt2Img::from_inverted`] and `step()` as for generated images.

use burn::tensor::Tensor;

use super::inversion::{InversionParams, NullText, ddim_invert, ddim_scheduler, encode_image, null_text_optimization};
use super::pipeline::{SuppressParams, SuppressTxt2Img};
use super::SuppressError;
use crate::error::{Error, InputError};
use crate::pipeline::{GenerateParams, StableDiffusion};
use crate::schedulers::SchedulerKind;

/// A photo inverted for editing.
#[derive(Clone, Debug)]
pub struct InvertedPhoto {
    /// `[x_0, ..., x_S]`, each `[1, C, h, w]`: `x_0` the encoded photo, `x_S` the start of the edit.
    pub latents: Vec<Tensor<4>>,
    /// The optimised unconditional embeddings, one per step.
    pub null_text: NullText,
}

fn check(p: &GenerateParams, pixels: &Tensor<4>) -> Result<(), Error> {
    let [n, c, h, w] = pixels.dims();
    if n != 1 || c != 3 || h != p.height || w != p.width {
        return Err(InputError::setting("size", format!("and the photo tensor must agree: [1, 3, {}, {}] wanted, got {:?} (prepare the photo at the edit's size)", p.height, p.width, pixels.dims())).into());
    }
    if p.num_images != 1 {
        return Err(InputError::setting("num_images", "must be 1: a photo edit makes one image").into());
    }
    if !p.do_cfg() {
        return Err(InputError::setting("guidance", "must be above 1: null-text inversion needs classifier-free guidance (7.5 is the reference's)").into());
    }
    if !matches!(p.scheduler, None | Some(SchedulerKind::Ddim)) {
        return Err(InputError::setting("scheduler", format!("must be DDIM for photo edits (the inversion is DDIM's), not {}", p.scheduler.map(|k| k.to_string()).unwrap_or_default())).into());
    }
    Ok(())
}

/// Encodes `pixels` (`[1, 3, H, W]` in [-1, 1], `H x W` = the edit's size), DDIM-inverts it with
/// `p.prompt` and runs null-text inversion starting from `p.negative_prompt`'s embedding.
/// `on_step(done, total)` after each null-text step; false cancels.
pub async fn invert_photo(
    sd: &StableDiffusion,
    pixels: Tensor<4>,
    p: &GenerateParams,
    inv: &InversionParams,
    on_step: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<InvertedPhoto, Error> {
    check(p, &pixels)?;
    let mut sched = ddim_scheduler(sd, &p.overrides, p.steps)?;
    let (_, out) = sd.prompt.encode(&[&p.negative_prompt, &p.prompt], false)?;
    let [_, seq, d] = out.last_hidden_state.dims();
    let uncond = out.last_hidden_state.clone().slice([0..1, 0..seq, 0..d]);
    let cond = out.last_hidden_state.slice([1..2, 0..seq, 0..d]);
    let latent = encode_image(sd, pixels);
    let latents = ddim_invert(sd, sched.as_ref(), latent, cond.clone());
    let null_text = null_text_optimization(sd, sched.as_mut(), &latents, uncond, cond, p.guidance, inv, on_step).await?;
    Ok(InvertedPhoto { latents, null_text })
}

impl SuppressTxt2Img {
    /// The two-branch run that edits an inverted photo: DDIM from `x_S` with the per-step
    /// unconditional embeddings (`p` must be the parameters the photo was inverted with).
    pub async fn from_inverted(sd: &StableDiffusion, p: &GenerateParams, s: &SuppressParams, inverted: &InvertedPhoto) -> Result<Self, Error> {
        let mut p = p.clone();
        p.scheduler = Some(SchedulerKind::Ddim);
        let start = inverted.latents.last().cloned().ok_or(SuppressError::Edit("needs the inverted latents: the inverted photo has none"))?;
        let mut run = Self::new(sd, &p, s, Some(start)).await?;
        run.set_uncond_per_step(inverted.null_text.uncond.clone())?;
        Ok(run)
    }
}
