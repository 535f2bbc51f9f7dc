//! A deliberately naive f64 CLIP text encoder (transformers `CLIPTextModel` semantics), used as
//! an independent reference for configurations without PyTorch goldens (SD2-style: gelu, other
//! widths/heads/depths).

use std::collections::HashMap;

pub struct RefClip<'a> {
    pub w: &'a HashMap<String, Vec<f32>>,
    pub d: usize,
    pub heads: usize,
    pub inter: usize,
    pub layers: usize,
    pub gelu: bool,
    pub eps: f64,
}

fn ln(x: &[f64], g: &[f32], b: &[f32], eps: f64) -> Vec<f64> {
    let n = x.len() as f64;
    let m = x.iter().sum::<f64>() / n;
    let v = x.iter().map(|a| (a - m).powi(2)).sum::<f64>() / n;
    x.iter().enumerate().map(|(i, a)| (a - m) / (v + eps).sqrt() * g[i] as f64 + b[i] as f64).collect()
}

fn lin(x: &[f64], w: &[f32], b: &[f32], out: usize) -> Vec<f64> {
    let inp = x.len();
    (0..out).map(|o| b[o] as f64 + (0..inp).map(|i| w[o * inp + i] as f64 * x[i]).sum::<f64>()).collect()
}

fn erf(x: f64) -> f64 {
    // Abramowitz-Stegun 7.1.26 is too coarse; use a series/continued fraction via libm-free approach:
    // erf(x) = 2/sqrt(pi) * sum_{n} (-1)^n x^(2n+1) / (n! (2n+1)), converges fast for |x| < 6.
    if x.abs() > 6.0 {
        return x.signum();
    }
    let mut sum: f64 = 0.0;
    let mut term = x;
    let mut n = 0.0f64;
    while term.abs() > 1e-17 * sum.abs().max(1e-300) || n < 3.0 {
        sum += term / (2.0 * n + 1.0);
        n += 1.0;
        term *= -x * x / n;
        if n > 400.0 {
            break;
        }
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

impl RefClip<'_> {
    fn p(&self, k: &str) -> &[f32] {
        self.w.get(k).unwrap_or_else(|| panic!("{k}"))
    }

    /// `last_hidden_state` `[seq, d]` for one row of ids.
    pub fn forward(&self, ids: &[u32]) -> Vec<Vec<f64>> {
        let (d, h) = (self.d, self.heads);
        let hd = d / h;
        let tok = self.p("text_model.embeddings.token_embedding.weight");
        let pos = self.p("text_model.embeddings.position_embedding.weight");
        let mut x: Vec<Vec<f64>> =
            ids.iter().enumerate().map(|(s, &id)| (0..d).map(|j| tok[id as usize * d + j] as f64 + pos[s * d + j] as f64).collect()).collect();
        let n = ids.len();
        for l in 0..self.layers {
            let p = |s: &str| format!("text_model.encoder.layers.{l}.{s}");
            let hln: Vec<Vec<f64>> = x.iter().map(|r| ln(r, self.p(&p("layer_norm1.weight")), self.p(&p("layer_norm1.bias")), self.eps)).collect();
            let proj = |name: &str| -> Vec<Vec<f64>> {
                hln.iter().map(|r| lin(r, self.p(&p(&format!("self_attn.{name}.weight"))), self.p(&p(&format!("self_attn.{name}.bias"))), d)).collect()
            };
            let (q, k, v) = (proj("q_proj"), proj("k_proj"), proj("v_proj"));
            let mut att = vec![vec![0.0; d]; n];
            for head in 0..h {
                let r = head * hd..(head + 1) * hd;
                for i in 0..n {
                    let scores: Vec<f64> = (0..=i)
                        .map(|j| r.clone().map(|c| q[i][c] * k[j][c]).sum::<f64>() / (hd as f64).sqrt())
                        .collect();
                    let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for c in r.clone() {
                        att[i][c] = (0..=i).map(|j| e[j] / z * v[j][c]).sum();
                    }
                }
            }
            for i in 0..n {
                let o = lin(&att[i], self.p(&p("self_attn.out_proj.weight")), self.p(&p("self_attn.out_proj.bias")), d);
                for j in 0..d {
                    x[i][j] += o[j];
                }
                let h2 = ln(&x[i], self.p(&p("layer_norm2.weight")), self.p(&p("layer_norm2.bias")), self.eps);
                let f1 = lin(&h2, self.p(&p("mlp.fc1.weight")), self.p(&p("mlp.fc1.bias")), self.inter);
                let a: Vec<f64> = f1
                    .iter()
                    .map(|&z| if self.gelu { 0.5 * z * (1.0 + erf(z / std::f64::consts::SQRT_2)) } else { z / (1.0 + (-1.702 * z).exp()) })
                    .collect();
                let f2 = lin(&a, self.p(&p("mlp.fc2.weight")), self.p(&p("mlp.fc2.bias")), d);
                for j in 0..d {
                    x[i][j] += f2[j];
                }
            }
        }
        x.iter().map(|r| ln(r, self.p("text_model.final_layer_norm.weight"), self.p("text_model.final_layer_norm.bias"), self.eps)).collect()
    }
}
