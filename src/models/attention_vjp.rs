//! Memory-efficient backward passes (vector-Jacobian products) of diffusers' `Attention`,
//! `BasicTransformerBlock` and `Transformer2DModel`, for gradients with respect to the hidden
//! states and the text embedding (`encoder_hidden_states`); the weights are frozen.
//!
//! Plain autodiff keeps every attention probability matrix of a layer for backward
//! (`[batch, heads, 4096, 4096]` = 512 MiB per SD self-attention at 512x512). Here the forward
//! values are recomputed without a graph and the attention core is differentiated one query
//! chunk at a time (`softmax(q_c k^T) v` for chunk `c`, its own small graph), so at most one
//! chunk's probabilities exist at once, like flash-attention's recomputing backward. Each
//! function returns what autodiff through the `forward` of the same module would (same ops,
//! different summation order).

use burn::tensor::{Tensor, activation};

use super::attention::{Attention, BasicTransformerBlock, Projection, Transformer2DModel};

/// `d sum(f(x) * g) / d x` for a function `f` of one tensor, by a local autodiff graph.
fn vjp1<const D: usize, const E: usize>(x: Tensor<D>, g: Tensor<E>, f: impl FnOnce(Tensor<D>) -> Tensor<E>) -> Tensor<D> {
    let leaf = x.inner().autodiff().require_grad();
    let grads = (f(leaf.clone()) * g.inner().autodiff()).sum().backward();
    leaf.grad(&grads).unwrap_or_else(|| leaf.inner().zeros_like())
}

impl Attention {
    /// Backward of [`Attention::forward`] for `hidden_states` `h` (`[b, n, query_dim]`) and the
    /// optional `context` (`[b, s, context_dim]`; `None`: self-attention), given `g_out`
    /// (`[b, n, query_dim]`). Returns `(g_h, g_context)` (`g_context` only for a context).
    pub fn vjp(&self, h: Tensor<3>, context: Option<Tensor<3>>, g_out: Tensor<3>) -> (Tensor<3>, Option<Tensor<3>>) {
        let h = h.inner();
        let context = context.map(Tensor::inner);
        let [b, n, _] = h.dims();
        let heads = self.heads;
        let ctx = context.clone().unwrap_or_else(|| h.clone());
        let s = ctx.dims()[1];
        // g wrt the attention core output: to_out is linear, its input-gradient does not depend
        // on the input value
        let inner = self.to_q.weight.val().dims()[0];
        let g_o = vjp1(Tensor::<3>::zeros([b, n, inner], &h.device()), g_out, |o| self.to_out.forward(o));
        let hd = inner / heads;
        let split = |t: Tensor<3>, len: usize| t.reshape([b, len, heads, hd]).swap_dims(1, 2);
        let q = split(self.to_q.forward(h.clone()), n);
        let k = split(self.to_k.forward(ctx.clone()), s);
        let v = split(self.to_v.forward(ctx.clone()), s);
        let g_o = split(g_o, n);
        let chunk = self.query_chunk_size.unwrap_or(n).clamp(1, n.max(1));
        let mut g_q = Vec::with_capacity(n.div_ceil(chunk));
        let mut g_k: Option<Tensor<4>> = None;
        let mut g_v: Option<Tensor<4>> = None;
        let mut start = 0;
        while start < n {
            let len = chunk.min(n - start);
            let qc = q.clone().narrow(2, start, len).autodiff().require_grad();
            let kl = k.clone().autodiff().require_grad();
            let vl = v.clone().autodiff().require_grad();
            let p = activation::softmax(qc.clone().matmul(kl.clone().swap_dims(2, 3)) * self.scale, 3);
            let o = p.matmul(vl.clone());
            let grads = (o * g_o.clone().narrow(2, start, len).autodiff()).sum().backward();
            g_q.push(qc.grad(&grads).expect("queries reach the output"));
            let gk = kl.grad(&grads).expect("keys reach the output");
            let gv = vl.grad(&grads).expect("values reach the output");
            g_k = Some(match g_k {
                Some(a) => a + gk,
                None => gk,
            });
            g_v = Some(match g_v {
                Some(a) => a + gv,
                None => gv,
            });
            start += len;
        }
        let merge = |t: Tensor<4>, len: usize| t.swap_dims(1, 2).reshape([b, len, inner]);
        let g_q = merge(if g_q.len() == 1 { g_q.pop().unwrap() } else { Tensor::cat(g_q, 2) }, n);
        let g_k = merge(g_k.expect("at least one chunk"), s);
        let g_v = merge(g_v.expect("at least one chunk"), s);
        // through the projections (small graphs)
        let hl = h.autodiff().require_grad();
        match context {
            None => {
                let sur = (self.to_q.forward(hl.clone()) * g_q.autodiff()).sum()
                    + (self.to_k.forward(hl.clone()) * g_k.autodiff()).sum()
                    + (self.to_v.forward(hl.clone()) * g_v.autodiff()).sum();
                let grads = sur.backward();
                (hl.grad(&grads).expect("h reaches q, k, v"), None)
            }
            Some(c) => {
                let cl = c.autodiff().require_grad();
                let sur = (self.to_q.forward(hl.clone()) * g_q.autodiff()).sum()
                    + (self.to_k.forward(cl.clone()) * g_k.autodiff()).sum()
                    + (self.to_v.forward(cl.clone()) * g_v.autodiff()).sum();
                let grads = sur.backward();
                (hl.grad(&grads).expect("h reaches q"), Some(cl.grad(&grads).expect("the context reaches k, v")))
            }
        }
    }
}

impl BasicTransformerBlock {
    /// Backward of [`BasicTransformerBlock::forward`]: `x` `[b, n, dim]`, `ehs` `[b, s, ctx]`,
    /// `g_y` `[b, n, dim]` -> `(g_x, g_ehs)`.
    pub fn vjp(&self, x: Tensor<3>, ehs: &Tensor<3>, g_y: Tensor<3>) -> (Tensor<3>, Tensor<3>) {
        let x = x.inner();
        let ehs = ehs.clone().inner();
        let none = &mut super::attention::AttnCapture::default();
        let ctx1 = self.only_cross_attention.then(|| ehs.clone());
        // forward values (no graph)
        let h1 = self.norm1.forward(x.clone());
        let x1 = self.attn1.forward(h1.clone(), ctx1.clone(), none) + x.clone();
        let x2 = self.attn2.forward(self.norm2.forward(x1.clone()), Some(ehs.clone()), none) + x1.clone();
        // y = ff(norm3(x2)) + x2
        let g_x2 = g_y.clone() + vjp1(x2, g_y.inner(), |t| self.ff.forward(self.norm3.forward(t)));
        // x2 = attn2(norm2(x1), ehs) + x1: cross-attention has few keys, plain autodiff is small
        let (g_x1, g_ehs) = {
            let xl = x1.autodiff().require_grad();
            let el = ehs.clone().autodiff().require_grad();
            let out = self.attn2.forward(self.norm2.forward(xl.clone()), Some(el.clone()), none);
            let grads = (out * g_x2.clone().autodiff()).sum().backward();
            (g_x2.clone() + xl.grad(&grads).expect("x1 reaches attn2"), el.grad(&grads).expect("ehs reaches attn2"))
        };
        // x1 = attn1(norm1(x), ctx1) + x: chunked
        let (g_h1, g_ctx) = self.attn1.vjp(h1, ctx1, g_x1.clone());
        let g_x = g_x1 + vjp1(x, g_h1, |t| self.norm1.forward(t));
        let g_ehs = match g_ctx {
            Some(g) => g_ehs + g,
            None => g_ehs,
        };
        (g_x, g_ehs)
    }
}

impl Transformer2DModel {
    /// Backward of [`Transformer2DModel::forward`]: `x` `[b, c, h, w]`, `ehs` `[b, s, ctx]`,
    /// `g_y` `[b, c, h, w]` -> `(g_x, g_ehs)`. Peak memory: one attention chunk's
    /// probabilities plus a few `[b, h*w, dim]` tensors.
    pub fn vjp(&self, x: Tensor<4>, ehs: &Tensor<3>, g_y: Tensor<4>) -> (Tensor<4>, Tensor<3>) {
        let x = x.inner();
        let g_y = g_y.inner();
        let [b, _, h, w] = x.dims();
        let to_tokens = move |t: Tensor<4>| {
            let d = t.dims()[1];
            t.permute([0, 2, 3, 1]).reshape([b, h * w, d])
        };
        let to_map = move |t: Tensor<3>| {
            let d = t.dims()[2];
            t.reshape([b, h, w, d]).permute([0, 3, 1, 2])
        };
        let proj_in = |t: Tensor<4>| match &self.proj_in {
            Projection::Conv(conv) => to_tokens(conv.forward(self.norm.forward(t))),
            Projection::Linear(lin) => lin.forward(to_tokens(self.norm.forward(t))),
        };
        let proj_out = |t: Tensor<3>| match &self.proj_out {
            Projection::Conv(conv) => conv.forward(to_map(t)),
            Projection::Linear(lin) => to_map(lin.forward(t)),
        };
        let none = &mut super::attention::AttnCapture::default();
        let mut tokens = vec![proj_in(x.clone())];
        for block in &self.transformer_blocks {
            let next = block.forward(tokens.last().unwrap().clone(), ehs, none);
            tokens.push(next);
        }
        let mut g_t = vjp1(tokens.pop().unwrap(), g_y.clone(), proj_out);
        let mut g_ehs: Option<Tensor<3>> = None;
        for block in self.transformer_blocks.iter().rev() {
            let (g, ge) = block.vjp(tokens.pop().unwrap(), ehs, g_t);
            g_t = g;
            g_ehs = Some(match g_ehs {
                Some(a) => a + ge,
                None => ge,
            });
        }
        let g_x = g_y + vjp1(x, g_t, &proj_in);
        (g_x, g_ehs.unwrap_or_else(|| ehs.clone().inner().zeros_like()))
    }
}
