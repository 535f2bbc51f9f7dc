//! Port of transformers' `CLIPTextModel` (`models/clip/modeling_clip.py`): token + position
//! embeddings, pre-LayerNorm transformer blocks with a causal mask, final LayerNorm.
//! Configured from `text_encoder/config.json` (any width, depth, head count, `hidden_act`).

use burn::module::{Module, Param};
use burn::tensor::{Bool, Device, Int, Tensor, TensorData, activation};
use serde::Deserialize;

use super::nn::{Activation, Embedding, LayerNorm, Linear};
use crate::error::ConfigError;
use crate::weights::{ParamSpec, TensorMap};

/// Large finite negative used for masked attention scores: `f16::MIN`, so it stays finite when
/// weights and activations are f16 (`f32::MIN` would overflow to -inf there). `mask_fill`
/// replaces scores rather than adding to them, so nothing can overflow.
pub const MASK_VALUE: f32 = -65504.0;

/// `CLIPTextConfig`, deserialized from `text_encoder/config.json` (unknown keys ignored).
#[derive(Clone, Debug, Deserialize)]
pub struct CLIPTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_eos")]
    pub eos_token_id: u32,
}

fn default_max_pos() -> usize {
    77
}
fn default_eps() -> f64 {
    1e-5
}
fn default_act() -> String {
    "quick_gelu".into()
}
fn default_eos() -> u32 {
    2
}

impl CLIPTextConfig {
    /// Parses and checks a `config.json`; `file` names it in errors.
    pub fn from_json(text: &str, file: &str) -> Result<Self, ConfigError> {
        let c: Self = serde_json::from_str(text).map_err(|e| ConfigError::Invalid { file: file.into(), reason: e.to_string() })?;
        let invalid = |reason: String| ConfigError::Invalid { file: file.into(), reason };
        if c.num_attention_heads == 0 || c.hidden_size % c.num_attention_heads != 0 {
            return Err(invalid(format!("hidden_size {} is not divisible by num_attention_heads {}", c.hidden_size, c.num_attention_heads)));
        }
        if Activation::parse(&c.hidden_act).is_none() {
            return Err(invalid(format!("unsupported hidden_act `{}` (supported: quick_gelu, gelu, gelu_new, gelu_pytorch_tanh)", c.hidden_act)));
        }
        Ok(c)
    }

    pub fn activation(&self) -> Activation {
        Activation::parse(&self.hidden_act).expect("checked in from_json")
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// `CLIPAttention`: multi-head self-attention with q/k/v/out projections.
#[derive(Module, Debug)]
pub struct CLIPAttention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub out_proj: Linear,
    pub num_heads: usize,
}

impl CLIPAttention {
    /// # Shapes
    /// - `x`: `[batch, seq, hidden]`, `mask`: `[batch, heads, seq, seq]` (true = masked)
    /// - output: `[batch, seq, hidden]`
    pub fn forward(&self, x: Tensor<3>, mask: Tensor<4, Bool>) -> Tensor<3> {
        let [b, s, d] = x.dims();
        let h = self.num_heads;
        let hd = d / h;
        let split = |t: Tensor<3>| t.reshape([b, s, h, hd]).swap_dims(1, 2);
        let q = split(self.q_proj.forward(x.clone()));
        let k = split(self.k_proj.forward(x.clone()));
        let v = split(self.v_proj.forward(x));
        let scores = q.matmul(k.swap_dims(2, 3)) * (hd as f64).powf(-0.5);
        let probs = activation::softmax(scores.mask_fill(mask, MASK_VALUE), 3);
        let out = probs.matmul(v).swap_dims(1, 2).reshape([b, s, d]);
        self.out_proj.forward(out)
    }
}

/// `CLIPMLP`: fc1 -> activation -> fc2.
#[derive(Module, Debug)]
pub struct CLIPMLP {
    pub fc1: Linear,
    pub fc2: Linear,
    #[module(skip)]
    pub activation: Activation,
}

impl CLIPMLP {
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.fc2.forward(self.activation.forward(self.fc1.forward(x)))
    }
}

/// `CLIPEncoderLayer`: pre-LayerNorm self-attention and MLP, each with a residual.
#[derive(Module, Debug)]
pub struct CLIPEncoderLayer {
    pub self_attn: CLIPAttention,
    pub layer_norm1: LayerNorm,
    pub mlp: CLIPMLP,
    pub layer_norm2: LayerNorm,
}

impl CLIPEncoderLayer {
    pub fn forward(&self, x: Tensor<3>, mask: Tensor<4, Bool>) -> Tensor<3> {
        let x = x.clone() + self.self_attn.forward(self.layer_norm1.forward(x), mask);
        x.clone() + self.mlp.forward(self.layer_norm2.forward(x))
    }
}

/// `CLIPEncoder`.
#[derive(Module, Debug)]
pub struct CLIPEncoder {
    pub layers: Vec<CLIPEncoderLayer>,
}

/// `CLIPTextEmbeddings`: token and absolute position embeddings.
#[derive(Module, Debug)]
pub struct CLIPTextEmbeddings {
    pub token_embedding: Embedding,
    pub position_embedding: Embedding,
}

/// `CLIPTextTransformer`.
#[derive(Module, Debug)]
pub struct CLIPTextTransformer {
    pub embeddings: CLIPTextEmbeddings,
    pub encoder: CLIPEncoder,
    pub final_layer_norm: LayerNorm,
}

/// `CLIPTextModel`. Its weights live under `text_model.` (files without that prefix load too).
#[derive(Module, Debug)]
pub struct CLIPTextModel {
    pub text_model: CLIPTextTransformer,
    #[module(skip)]
    pub eos_token_id: u32,
}

/// Outputs of [`CLIPTextModel::forward`].
#[derive(Debug, Clone)]
pub struct CLIPTextOutput {
    /// `[batch, seq, hidden]`: final LayerNorm of the last layer = SD's `encoder_hidden_states`.
    pub last_hidden_state: Tensor<3>,
    /// `[batch, hidden]`: `last_hidden_state` at the first EOS (argmax id for legacy configs).
    pub pooler_output: Tensor<2>,
    /// `num_hidden_layers + 1` tensors `[batch, seq, hidden]` when requested: the embedding
    /// output, then each layer's output before the final LayerNorm (clip-skip uses these).
    pub hidden_states: Vec<Tensor<3>>,
}

impl CLIPTextModel {
    /// Model type name used for key rules and error messages.
    pub const NAME: &'static str = "CLIPTextModel";

    /// Every parameter (canonical key, PyTorch shape) the config implies.
    pub fn param_specs(c: &CLIPTextConfig) -> Vec<ParamSpec> {
        let d = c.hidden_size;
        let mut s = Vec::new();
        Embedding::specs("text_model.embeddings.token_embedding", c.vocab_size, d, &mut s);
        Embedding::specs("text_model.embeddings.position_embedding", c.max_position_embeddings, d, &mut s);
        for i in 0..c.num_hidden_layers {
            let p = format!("text_model.encoder.layers.{i}");
            for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                Linear::specs(&format!("{p}.self_attn.{proj}"), d, d, true, &mut s);
            }
            LayerNorm::specs(&format!("{p}.layer_norm1"), d, &mut s);
            Linear::specs(&format!("{p}.mlp.fc1"), d, c.intermediate_size, true, &mut s);
            Linear::specs(&format!("{p}.mlp.fc2"), c.intermediate_size, d, true, &mut s);
            LayerNorm::specs(&format!("{p}.layer_norm2"), d, &mut s);
        }
        LayerNorm::specs("text_model.final_layer_norm", d, &mut s);
        s
    }

    /// Builds the model from loaded weights (see [`crate::weights::load_params`]).
    pub fn from_map(c: &CLIPTextConfig, map: &mut TensorMap) -> Self {
        let eps = c.layer_norm_eps;
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                let p = format!("text_model.encoder.layers.{i}");
                let lin = |n: &str, map: &mut TensorMap| Linear::from_map(&format!("{p}.{n}"), true, map);
                CLIPEncoderLayer {
                    self_attn: CLIPAttention {
                        q_proj: lin("self_attn.q_proj", map),
                        k_proj: lin("self_attn.k_proj", map),
                        v_proj: lin("self_attn.v_proj", map),
                        out_proj: lin("self_attn.out_proj", map),
                        num_heads: c.num_attention_heads,
                    },
                    layer_norm1: LayerNorm::from_map(&format!("{p}.layer_norm1"), eps, map),
                    mlp: CLIPMLP { fc1: lin("mlp.fc1", map), fc2: lin("mlp.fc2", map), activation: c.activation() },
                    layer_norm2: LayerNorm::from_map(&format!("{p}.layer_norm2"), eps, map),
                }
            })
            .collect();
        Self {
            text_model: CLIPTextTransformer {
                embeddings: CLIPTextEmbeddings {
                    token_embedding: Embedding::from_map("text_model.embeddings.token_embedding", map),
                    position_embedding: Embedding::from_map("text_model.embeddings.position_embedding", map),
                },
                encoder: CLIPEncoder { layers },
                final_layer_norm: LayerNorm::from_map("text_model.final_layer_norm", eps, map),
            },
            eos_token_id: c.eos_token_id,
        }
    }

    /// The device the weights live on.
    pub fn device(&self) -> Device {
        self.text_model.final_layer_norm.weight.val().device()
    }

    /// Width of the token embeddings (`hidden_size`).
    pub fn hidden_size(&self) -> usize {
        self.text_model.embeddings.token_embedding.weight.val().dims()[1]
    }

    /// Number of token-embedding rows (vocabulary + added tokens).
    pub fn num_tokens(&self) -> usize {
        self.text_model.embeddings.token_embedding.weight.val().dims()[0]
    }

    /// Appends rows `[n, hidden]` to the token-embedding matrix (`resize_token_embeddings` + set
    /// rows, as `load_textual_inversion` does); the new ids are `num_tokens()..num_tokens()+n`.
    pub fn add_token_rows(&mut self, rows: Tensor<2>) {
        let w = self.text_model.embeddings.token_embedding.weight.val();
        let rows = if rows.dtype() == w.dtype() { rows } else { rows.cast(w.dtype()) };
        self.text_model.embeddings.token_embedding.weight = Param::from_tensor(Tensor::cat(vec![w, rows], 0));
    }

    /// Runs the text encoder on token ids (host-side, one row per prompt, all the same length).
    ///
    /// # Shapes
    /// - `input_ids`: `batch` rows of `seq` ids (`seq <= max_position_embeddings`)
    pub fn forward(&self, input_ids: &[Vec<u32>], output_hidden_states: bool) -> CLIPTextOutput {
        let device = self.device();
        let b = input_ids.len();
        let s = input_ids.first().map_or(0, Vec::len);
        let flat: Vec<i32> = input_ids.iter().flatten().map(|&i| i as i32).collect();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(flat, [b, s]), &device);
        // pooler positions are known on the host: no readback needed
        let eos: Vec<i32> = input_ids.iter().map(|row| self.pooler_position(row) as i32).collect();
        let positions = Tensor::<2, Int>::from_data(TensorData::new((0..s as i32).collect::<Vec<_>>(), [1, s]), &device);

        // 1. embeddings
        let emb = &self.text_model.embeddings;
        let mut x = emb.token_embedding.forward(ids) + emb.position_embedding.forward(positions);
        // 2. causal mask: position j > i is masked
        let mask: Vec<bool> = (0..s).flat_map(|i| (0..s).map(move |j| j > i)).collect();
        let heads = self.text_model.encoder.layers.first().map_or(1, |l| l.self_attn.num_heads);
        let mask = Tensor::<2, Bool>::from_data(TensorData::new(mask, [s, s]), &device)
            .reshape([1, 1, s, s])
            .expand([b, heads, s, s]);
        // 3. encoder
        let mut hidden_states = Vec::new();
        for layer in &self.text_model.encoder.layers {
            if output_hidden_states {
                hidden_states.push(x.clone());
            }
            x = layer.forward(x, mask.clone());
        }
        if output_hidden_states {
            hidden_states.push(x.clone());
        }
        // 4. final layer norm, pooled output
        let last_hidden_state = self.text_model.final_layer_norm.forward(x);
        let d = last_hidden_state.dims()[2];
        let index = Tensor::<1, Int>::from_data(TensorData::new(eos, [b]), &device)
            .reshape([b, 1, 1])
            .expand([b, 1, d]);
        let pooler_output = last_hidden_state.clone().gather(1, index).reshape([b, d]);
        CLIPTextOutput { last_hidden_state, pooler_output, hidden_states }
    }

    /// transformers' pooling rule: legacy configs (`eos_token_id == 2`) take the position of the
    /// largest id, others the first position holding `eos_token_id`.
    fn pooler_position(&self, row: &[u32]) -> usize {
        if self.eos_token_id == 2 {
            row.iter().enumerate().max_by_key(|(i, v)| (**v, std::cmp::Reverse(*i))).map_or(0, |(i, _)| i)
        } else {
            row.iter().position(|&v| v == self.eos_token_id).unwrap_or(row.len().saturating_sub(1))
        }
    }
}
