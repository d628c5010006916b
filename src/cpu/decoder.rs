//! The CPU decoding fast path: the same function as the model's `forward_cached`, without burn's
//! per-op overhead. Weights are copied once and packed for small-batch products
//! ([`super::packed`]); each projection is one product over every new token of the batch;
//! RMSNorm, RoPE, attention and SwiGLU run over buffers allocated once per call; keys and values
//! are written in place into a cache preallocated for the whole context. Each row
//! keeps its own length, so prompts of different lengths need no padding or masks (RoPE is
//! relative, so the logits equal the padded reference's). `tests/it/model_decode.rs` checks logits,
//! log-probabilities and greedy tokens against the burn path.

use super::arena::{Floats, Spares};
use super::math::{exp, rope_table, rotate};
use super::packed::{Order, Packed, Threads};
use super::packed_bf16::Panels;
use super::pair::Pair;
use super::quant::QMatrix;
use super::rows::{rms_block, swiglu_block};
use super::shape::Shape;
use super::simd::{as_uninit, avx2_dispatch};

/// Weights of one block.
struct Layer {
    attn_norm: Vec<f32>,
    attn_eps: f32,
    /// `[d, q + 2·kv]`: queries, keys, values, each head-major.
    qkv: Matrix,
    extras: LayerExtras,
    /// `[q, d]`.
    out: Matrix,
    mlp_norm: Vec<f32>,
    mlp_eps: f32,
    /// `[d, 2·mlp]`: gate, then up.
    gate_up: Matrix,
    /// `[mlp, d]`.
    down: Matrix,
}

/// A weight matrix of the decoder, `[k, n]` (`k` inputs, `n` outputs): floats packed for
/// small-batch products, or quantised blocks read where they are.
pub enum Matrix {
    Floats(Packed),
    /// Rounded to bf16 once, multiplied with bf16 operands and f32 sums.
    Bf16(Panels),
    Blocks(QMatrix),
    /// A LoRA-adapted matrix kept apart: `x · W + (x · sA) · B`, the base `W` as it is held
    /// (quantised blocks keep their step; an update below it is not rounded away) and the
    /// factors `sA` `[k, r]`, `B` `[r, n]` as floats.
    Adapted {
        base: Box<Matrix>,
        a: Packed,
        b: Packed,
    },
}

impl Matrix {
    /// `dst[m, n] = a[m, k] · self` (`+=` when `accumulate`).
    fn matmul(&self, dst: &mut [f32], a: &[f32], m: usize, accumulate: bool, t: Threads<'_>) {
        match self {
            Matrix::Floats(p) => p.matmul(dst, a, m, accumulate, t),
            Matrix::Bf16(p) => p.matmul(dst, a, m, accumulate, t),
            Matrix::Blocks(q) => q.matmul(dst, a, m, accumulate, t),
            Matrix::Adapted { base, a: fa, b: fb } => {
                base.matmul(dst, a, m, accumulate, t);
                let mut xa = vec![0f32; m * fa.cols()];
                fa.matmul(&mut xa, a, m, false, t);
                fb.matmul(dst, &xa, m, true, t);
            }
        }
    }

    /// Inputs `k`.
    fn rows(&self) -> usize {
        match self {
            Matrix::Floats(p) => p.rows(),
            Matrix::Bf16(p) => p.rows(),
            Matrix::Blocks(q) => q.rows(),
            Matrix::Adapted { base, .. } => base.rows(),
        }
    }
}

/// The token embedding `[vocab, d]`: floats read in place, or quantised rows.
pub enum Embedding {
    Floats(Values),
    Blocks(QMatrix),
}

impl Embedding {
    /// Tokens.
    fn vocab(&self, d: usize) -> usize {
        match self {
            Embedding::Floats(v) => (**v).as_ref().len() / d,
            Embedding::Blocks(q) => q.cols(),
        }
    }

    /// Append token `t`'s `d` floats to `x`.
    fn push(&self, t: usize, d: usize, x: &mut Vec<f32>) {
        match self {
            Embedding::Floats(v) => x.extend_from_slice(&(**v).as_ref()[t * d..(t + 1) * d]),
            Embedding::Blocks(q) => {
                let at = x.len();
                x.resize(at + d, 0.0);
                q.row_f32(t, &mut x[at..]);
            }
        }
    }
}

/// A model's weights, laid out for decoding on the CPU.
pub struct Engine {
    d: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    mlp: usize,
    vocab: usize,
    ctx: usize,
    embed: Embedding,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    norm_eps: f32,
    /// `[d, vocab]`.
    head: Matrix,
    /// `[ctx, head_dim / 2]` tables.
    cos: Vec<f32>,
    sin: Vec<f32>,
}

/// What [`Engine::new`] needs besides the matrices: the architecture, every norm's gain and epsilon,
/// the embedding, and the `[k, n]` shape and value order of each matrix in order (per block
/// `qkv`, `out`, `gate_up`, `down`; then the head; for [`Engine::new`], which packs them).
pub struct Weights {
    pub shape: Shape,
    pub embed: Embedding,
    /// Per block, the attention's and the MLP's norm.
    pub norms: Vec<[(Vec<f32>, f32); 2]>,
    /// Per block, what pretrained architectures add (empty: none for any block).
    pub extras: Vec<LayerExtras>,
    pub norm: (Vec<f32>, f32),
    pub matrices: Vec<(usize, usize, Order)>,
}

/// Floats the decoder reads where they are (the embedding, in the model's own memory: a
/// copy of it at every build would be 113 MB at SmolLM2's size).
pub type Values = Box<dyn AsRef<[f32]> + Send + Sync>;

/// A block's optional parts: biases of the QKV projection (Qwen2), and RMSNorms (gain,
/// epsilon) over each query and key head before RoPE (Qwen3).
#[derive(Debug, Clone, Default)]
pub struct LayerExtras {
    pub qkv_bias: Option<Vec<f32>>,
    pub q_norm: Option<(Vec<f32>, f32)>,
    pub k_norm: Option<(Vec<f32>, f32)>,
}

/// The KV cache of a batch of sequences, allocated for the whole context in two buffers on
/// huge pages ([`Floats`]). A row's keys and values for every layer are laid out so that one
/// attention reads each as one contiguous run (short runs scattered over tens of MB are
/// what made attention slow): per layer, keys in blocks of [`KEY_BLOCK`] positions, every
/// head's transposed within the block (`[block][head][head_dim][KEY_BLOCK]`: a block's scores
/// are vector products with no horizontal sums), and values `[position][heads · head_dim]`.
/// Rows are independent, so a batch can be split between threads.
pub struct Cache {
    k: Floats,
    v: Floats,
    /// Positions filled, per row.
    lens: Vec<usize>,
    /// Floats of one row's keys and of its values.
    row_k: usize,
    row_v: usize,
    /// Positions a row has room for.
    ctx: usize,
    /// Layers in a row (each its keys, then each its values).
    layers: usize,
}

impl Cache {
    /// Positions filled in `row`.
    pub fn len(&self, row: usize) -> usize {
        self.lens[row]
    }

    /// Forget what `row` holds (it is refilled from its start).
    pub fn clear(&mut self, row: usize) {
        self.lens[row] = 0;
    }

    /// Make row `to` hold what row `from` holds (a prompt shared by several rows is prefilled
    /// once and copied). Only the filled positions of each layer are copied: the rest of a
    /// row's room is memory nobody has touched yet, and copying it would fault it all in.
    pub fn copy_row(&mut self, from: usize, to: usize) {
        if from == to {
            return;
        }
        let len = self.lens[from];
        let layers = self.layers.max(1);
        let (layer_k, layer_v) = (self.row_k / layers, self.row_v / layers);
        let kvd = layer_v / self.ctx.max(1);
        // Keys lie in whole blocks of positions, values position by position.
        let used_k = (len.div_ceil(KEY_BLOCK) * KEY_BLOCK * kvd).min(layer_k);
        let used_v = (len * kvd).min(layer_v);
        for l in 0..layers {
            let (k0, v0) = (l * layer_k, l * layer_v);
            let (fk, tk) = (from * self.row_k + k0, to * self.row_k + k0);
            self.k.copy_within(fk..fk + used_k, tk);
            let (fv, tv) = (from * self.row_v + v0, to * self.row_v + v0);
            self.v.copy_within(fv..fv + used_v, tv);
        }
        self.lens[to] = len;
    }

    /// Each row's part, for the rows to be fed.
    fn rows(&mut self) -> Vec<Option<RowCache<'_>>> {
        self.k
            .chunks_exact_mut(self.row_k)
            .zip(self.v.chunks_exact_mut(self.row_v))
            .zip(self.lens.iter_mut())
            .map(|((k, v), len)| {
                Some(RowCache {
                    k,
                    v,
                    len,
                    ctx: self.ctx,
                })
            })
            .collect()
    }
}

/// Kept KV-cache buffers (a key and a value buffer of the last size asked for).
static CACHE_SPARES: Spares = Spares::new();

/// Free the weight and cache buffers decoders keep for the next one (a training step that
/// needs the memory follows).
pub fn release_kept() {
    Floats::release_reused();
    CACHE_SPARES.release();
}

/// One row of a [`Cache`].
struct RowCache<'a> {
    k: &'a mut [f32],
    v: &'a mut [f32],
    len: &'a mut usize,
    /// Positions the row has room for.
    ctx: usize,
}

/// Rows of logits a forward pass over `jobs` returns: one per fed token when `all`, else one
/// per row.
fn outputs(jobs: &[(RowCache<'_>, &[u32])], all: bool) -> usize {
    if all {
        jobs.iter().map(|(_, t)| t.len()).sum()
    } else {
        jobs.len()
    }
}

/// One thread's share of a layer's per-token work ([`Engine::attend_share`]): some of the
/// rows, their tokens' `(job, position)` (jobs counted from `first`), and their tokens' rows
/// of the QKV projection and of the attention output.
struct Share<'s, 'c, 't> {
    jobs: &'s mut [(RowCache<'c>, &'t [u32])],
    tokens: &'s [(usize, usize)],
    first: usize,
    qkv: &'s mut [f32],
    att: &'s mut [f32],
}

/// Per-thread scratch of the per-token work: attention scores and a normed head.
struct Scratch {
    scores: Vec<f32>,
    normed: Vec<f32>,
}

/// Tokens fed at once from which a batch is split between threads (below it, waking a thread
/// costs more than it saves).
const SPLIT_TOKENS: usize = 8;

/// Rows fed at once from which a batch runs as two halves, one per thread, each streaming
/// every weight; below it the pair splits each product's panels (each thread streams half the
/// weights, for all rows) and the per-token work. Few rows are bound by reading the weights,
/// many by the products' arithmetic, where halves save the joins and the serial parts between
/// products (docs/PERF.md: 16 and 32 prompts faster split, 64 faster in halves).
const HALVES_ROWS: usize = 48;

/// Tokens per forward pass over the batch: larger feeds (a big prefill) run in consecutive
/// groups, so scratch memory stays bounded (~20 KB a token at the bench's shape).
const PASS_TOKENS: usize = 1024;

/// `out = x / sqrt(mean(x²) + eps) · g`, row by row: the training op's kernel.
fn rms_norm(x: &[f32], g: &[f32], eps: f32, out: &mut [f32]) {
    let mut rstd = vec![0.0f32; x.len() / g.len()];
    // SAFETY: the kernel stores only initialised floats through the view.
    rms_block(unsafe { as_uninit(out) }, &mut rstd, x, g, eps);
}

/// Attention of one query (all heads; `q` is `heads · head_dim`) over the first `len`
/// positions of a row's layer in the cache, laid out as in [`Cache`]: `keys`
/// `[block][kv_head][head_dim][KEY_BLOCK]` and `values` `[position][kv_heads · head_dim]`.
/// Query head `h` reads key/value head `h / (heads / kv_heads)` (grouped-query attention).
struct Query<'a> {
    q: &'a [f32],
    keys: &'a [f32],
    values: &'a [f32],
    len: usize,
    heads: usize,
    kv_heads: usize,
    scale: f32,
}

avx2_dispatch!(
    /// Attend with `a`, writing the result to `out` (`scores` is scratch of at least
    /// `heads · len`).
    fn attend(a: &Query<'_>, scores: &mut [f32], out: &mut [f32]) = attend_generic;
);

/// Positions per key block, whose scores are accumulated in registers at once (up to four
/// 8-wide vectors).
const KEY_BLOCK: usize = 32;

/// Scores of a key block's first `out.len()` positions (at most [`KEY_BLOCK`]) for one head:
/// `Σ_i q_i · block[i][p]`, `block` being the head's `[head_dim][KEY_BLOCK]` keys of the block.
#[inline(always)]
fn score_block(q: &[f32], block: &[f32], out: &mut [f32]) {
    let n = out.len();
    assert!(n <= KEY_BLOCK && block.len() >= q.len() * KEY_BLOCK);
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        let mut all = [0.0f32; KEY_BLOCK];
        // SAFETY: the CPU has AVX2 and FMA; the block holds q.len() rows of KEY_BLOCK
        // (asserted above).
        unsafe {
            match n.div_ceil(8) {
                0 | 1 => score_block_fma::<1>(q, block, &mut all),
                2 => score_block_fma::<2>(q, block, &mut all),
                3 => score_block_fma::<3>(q, block, &mut all),
                _ => score_block_fma::<4>(q, block, &mut all),
            }
        }
        out.copy_from_slice(&all[..n]);
        return;
    }
    out.fill(0.0);
    for (&qi, keys) in q.iter().zip(block.chunks_exact(KEY_BLOCK)) {
        for (o, k) in out.iter_mut().zip(keys) {
            *o += qi * k;
        }
    }
}

/// [`score_block`] for the block's first `8·V` positions with FMA: even and odd dimensions
/// into two sets of `V` vector accumulators, added at the end (only the rows' first `V`
/// vectors are read, so a block's unused cache lines are not fetched).
///
/// # Safety
/// The CPU must have AVX2 and FMA; `block` holds `q.len()` rows of [`KEY_BLOCK`]; `V ≤ 4`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn score_block_fma<const V: usize>(q: &[f32], block: &[f32], out: &mut [f32; KEY_BLOCK]) {
    use std::arch::x86_64::*;
    let k = block.as_ptr();
    let (mut even, mut odd) = ([_mm256_setzero_ps(); V], [_mm256_setzero_ps(); V]);
    // Row i's first V vectors into `acc`.
    macro_rules! row {
        ($acc:ident, $i:expr) => {
            let i = $i;
            let x = _mm256_set1_ps(q[i]);
            for v in 0..V {
                // SAFETY: row i's floats 0 .. 8·V ≤ KEY_BLOCK lie inside the block (the
                // caller's contract).
                let kv = unsafe { _mm256_loadu_ps(k.add(i * KEY_BLOCK + 8 * v)) };
                $acc[v] = _mm256_fmadd_ps(x, kv, $acc[v]);
            }
        };
    }
    let pairs = q.len() / 2;
    for c in 0..pairs {
        row!(even, 2 * c);
        row!(odd, 2 * c + 1);
    }
    if q.len() % 2 == 1 {
        row!(even, q.len() - 1);
    }
    for v in 0..V {
        let sum = _mm256_add_ps(even[v], odd[v]);
        // SAFETY: out holds KEY_BLOCK ≥ 8·V floats.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(8 * v), sum) };
    }
}

/// Positions whose values are summed in one pass over the heads (8 KB of a row's values at
/// the bench's shape, read in order while the pass lasts).
const VALUE_CHUNK: usize = 8;

/// # Safety
/// The CPU must have AVX2 and FMA; `values` holds `w.len()` rows of `stride ≥ 64` floats
/// (the last one only its first 64), `out` 64 floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn add_weighted_values_64_fma(w: &[f32], values: &[f32], stride: usize, out: &mut [f32]) {
    use std::arch::x86_64::*;
    let v = values.as_ptr();
    let mut acc = [_mm256_setzero_ps(); 8];
    for (j, a) in acc.iter_mut().enumerate() {
        // SAFETY: out holds 64 floats.
        *a = unsafe { _mm256_loadu_ps(out.as_ptr().add(8 * j)) };
    }
    for (p, &wp) in w.iter().enumerate() {
        let x = _mm256_set1_ps(wp);
        for (j, a) in acc.iter_mut().enumerate() {
            // SAFETY: row p's first 64 floats lie inside values (the caller's contract).
            let vv = unsafe { _mm256_loadu_ps(v.add(p * stride + 8 * j)) };
            *a = _mm256_fmadd_ps(x, vv, *a);
        }
    }
    for (j, a) in acc.iter().enumerate() {
        // SAFETY: as above.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(8 * j), *a) };
    }
}

/// `out += Σ_p w_p · values[p · stride ..][.. out.len()]` (a head size of 64 on the FMA kernel
/// where the CPU has it).
#[inline(always)]
fn add_weighted_values(w: &[f32], values: &[f32], stride: usize, out: &mut [f32]) {
    let hd = out.len();
    assert!(w.is_empty() || (stride >= hd && values.len() >= (w.len() - 1) * stride + hd));
    #[cfg(target_arch = "x86_64")]
    if hd == 64 && std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA; bounds asserted above.
        return unsafe { add_weighted_values_64_fma(w, values, stride, out) };
    }
    for (p, &wp) in w.iter().enumerate() {
        for (oi, vi) in out.iter_mut().zip(&values[p * stride..p * stride + hd]) {
            *oi += wp * vi;
        }
    }
}

#[inline(always)]
fn attend_generic(a: &Query<'_>, scores: &mut [f32], out: &mut [f32]) {
    let (len, heads) = (a.len, a.heads);
    let hd = a.q.len() / heads;
    let groups = heads / a.kv_heads;
    let kvd = a.kv_heads * hd;
    let q: Vec<f32> = a.q.iter().map(|x| x * a.scale).collect();
    let scores = &mut scores[..heads * len];
    // Scores in one pass over the keys: blocks in order, each head's part of a block in turn.
    let block = hd * KEY_BLOCK;
    for (b, keys) in a
        .keys
        .chunks_exact(a.kv_heads * block)
        .take(len.div_ceil(KEY_BLOCK))
        .enumerate()
    {
        let (p0, n) = (b * KEY_BLOCK, KEY_BLOCK.min(len - b * KEY_BLOCK));
        for (h, qh) in q.chunks_exact(hd).enumerate() {
            let kh = &keys[(h / groups) * block..(h / groups + 1) * block];
            score_block(qh, kh, &mut scores[h * len + p0..h * len + p0 + n]);
        }
    }
    // Softmax weights per head, left unnormalised; 1 / their sum scales the output.
    let mut inv = Vec::with_capacity(heads);
    for s in scores.chunks_exact_mut(len) {
        let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for sj in s.iter_mut() {
            *sj = exp(*sj - max);
            sum += *sj;
        }
        inv.push(1.0 / sum);
    }
    // Weighted values in one pass over them: chunks of positions in order, every head's part
    // of a chunk in turn.
    out.fill(0.0);
    for p0 in (0..len).step_by(VALUE_CHUNK) {
        let p1 = (p0 + VALUE_CHUNK).min(len);
        for (h, o) in out.chunks_exact_mut(hd).enumerate() {
            let w = &scores[h * len + p0..h * len + p1];
            add_weighted_values(w, &a.values[p0 * kvd + (h / groups) * hd..], kvd, o);
        }
    }
    for (o, inv) in out.chunks_exact_mut(hd).zip(inv) {
        o.iter_mut().for_each(|x| *x *= inv);
    }
}

/// Rotate pairs (i, i + half) of each head of `x` (`heads · head_dim` values) by the angles of
/// one position.
fn rope(x: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32]) {
    for h in x.chunks_exact_mut(head_dim) {
        rotate(h, cos, sin, false);
    }
}

impl Engine {
    /// A decoder for contexts up to `ctx` from a model's shape, its norms and embedding, and
    /// its matrices by index (`w.matrices`, in the order of [`Weights`]). Each matrix is read
    /// with `matrix(i)` on the thread that packs it, so only one per thread is held at once.
    /// Inside [`super::gemm::with_bf16`] (a bf16 run) they are packed as bf16, else as f32.
    pub fn new<V: AsRef<[f32]>>(
        w: Weights,
        ctx: usize,
        matrix: impl Fn(usize) -> V + Sync,
    ) -> Engine {
        let matrices = if super::gemm::bf16_on() {
            let panels = Panels::new_all(&w.matrices, matrix);
            panels.into_iter().map(Matrix::Bf16).collect()
        } else {
            let packed = Packed::new_all(&w.matrices, matrix);
            packed.into_iter().map(Matrix::Floats).collect()
        };
        Engine::with_matrices(w, ctx, matrices)
    }

    /// A decoder from matrices already made (`w.matrices` is not read): in the order of
    /// [`Weights`], packed floats or quantised blocks, a kind per matrix.
    pub fn with_matrices(w: Weights, ctx: usize, matrices: Vec<Matrix>) -> Engine {
        let s = w.shape;
        let (d, hd) = (s.d_model, s.head_dim);
        let (cos, sin) = rope_table(0, ctx, hd, s.rope);
        assert!(
            w.extras.iter().all(|e| e.qkv_bias.is_some() == s.qkv_bias
                && e.q_norm.is_some() == s.qk_norm
                && e.k_norm.is_some() == s.qk_norm),
            "every block's biases and q/k norms are as the shape says"
        );
        assert_eq!(
            matrices.len(),
            4 * w.norms.len() + 1,
            "4 matrices a block and a head"
        );
        let mut matrices = matrices.into_iter();
        let mut next = || matrices.next().expect("counted above");
        let mut extras = w.extras.into_iter();
        let layers: Vec<Layer> = w
            .norms
            .into_iter()
            .map(|[(attn_norm, attn_eps), (mlp_norm, mlp_eps)]| Layer {
                attn_norm,
                attn_eps,
                qkv: next(),
                extras: extras.next().unwrap_or_default(),
                out: next(),
                mlp_norm,
                mlp_eps,
                gate_up: next(),
                down: next(),
            })
            .collect();
        let head = next();
        let mlp = layers.first().map_or(0, |l| l.down.rows());
        Engine {
            d,
            heads: s.heads,
            kv_heads: s.kv_heads,
            head_dim: hd,
            mlp,
            vocab: w.embed.vocab(d),
            ctx,
            embed: w.embed,
            layers,
            norm: w.norm.0,
            norm_eps: w.norm.1,
            head,
            cos,
            sin,
        }
    }

    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// An empty cache for `rows` sequences of up to the whole context.
    pub fn cache(&self, rows: usize) -> Cache {
        self.cache_for(rows, self.ctx)
    }

    /// An empty cache for `rows` sequences of up to `positions` tokens (at most the context):
    /// sampling sizes it to the longest prompt plus the token budget, so the memory it
    /// touches is what the sequences use. Rounded up to whole key blocks, so that calls whose
    /// longest prompt differs by a few tokens (GRPO's steps) get the same size and reuse the
    /// kept buffers.
    pub fn cache_for(&self, rows: usize, positions: usize) -> Cache {
        let ctx = positions.max(1).next_multiple_of(KEY_BLOCK).min(self.ctx);
        let layers = self.layers.len();
        let (row_k, row_v) = (layers * self.layer_keys(ctx), layers * ctx * self.kv_dim());
        // Buffers of earlier calls are reused (GRPO samples the same number of rows every
        // step): their old contents are never read, as a row reads only its first `len`
        // positions.
        Cache {
            k: Floats::reused_from(&CACHE_SPARES, rows * row_k),
            v: Floats::reused_from(&CACHE_SPARES, rows * row_v),
            lens: vec![0; rows],
            row_k,
            row_v,
            ctx,
            layers,
        }
    }

    /// Floats of one layer's keys in a row of a [`Cache`] of `ctx` positions (whole blocks of
    /// [`KEY_BLOCK`]).
    fn layer_keys(&self, ctx: usize) -> usize {
        ctx.div_ceil(KEY_BLOCK) * KEY_BLOCK * self.kv_dim()
    }

    /// Width of the keys (or values) of one position: `kv_heads · head_dim`.
    fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// Feed `tokens` to each listed row of the cache (appended after what the row holds) and
    /// return logits, `[outputs, vocab]` row-major: for every fed token when `all`, else for the
    /// last token of each entry. With enough tokens the batch is split in two halves that run
    /// on two threads. Panics if a row is listed twice or would exceed the context.
    pub fn forward(&self, cache: &mut Cache, feed: &[(usize, &[u32])], all: bool) -> Vec<f32> {
        self.forward_on(cache, feed, all, None)
    }

    /// [`Self::forward`] on this thread and `pair`'s helper (rayon's pool when `None`): under
    /// [`HALVES_ROWS`] rows each product's panels and the per-token work are split between
    /// the two, from it the batch runs as two halves.
    pub fn forward_on(
        &self,
        cache: &mut Cache,
        feed: &[(usize, &[u32])],
        all: bool,
        pair: Option<&Pair>,
    ) -> Vec<f32> {
        let mut logits = Vec::new();
        self.forward_into(cache, feed, all, pair, &mut logits);
        logits
    }

    /// [`Self::forward_on`] into `logits` (resized to the outputs): a decoding loop passes the
    /// same buffer at every step, so tens of MB of logits are neither copied nor page-faulted
    /// afresh per token.
    pub fn forward_into(
        &self,
        cache: &mut Cache,
        feed: &[(usize, &[u32])],
        all: bool,
        pair: Option<&Pair>,
        logits: &mut Vec<f32>,
    ) {
        let mut slots = cache.rows();
        let mut jobs: Vec<(RowCache<'_>, &[u32])> = feed
            .iter()
            .map(|&(row, toks)| {
                let slot = slots[row]
                    .take()
                    .expect("each row is fed at most once per call");
                (slot, toks)
            })
            .collect();
        logits.clear();
        logits.resize(outputs(&jobs, all) * self.vocab, 0.0);
        // Rows in groups of at most PASS_TOKENS tokens (a row is never split), so that the
        // scratch buffers of a large prefill stay bounded.
        let mut rest = jobs.as_mut_slice();
        let mut out = logits.as_mut_slice();
        while !rest.is_empty() {
            let mut tokens = 0;
            let n = rest
                .iter()
                .position(|(_, t)| {
                    tokens += t.len();
                    tokens > PASS_TOKENS
                })
                .unwrap_or(rest.len())
                .max(1);
            let (group, tail) = rest.split_at_mut(n);
            let (here, later) = out.split_at_mut(outputs(group, all) * self.vocab);
            self.forward_group(group, all, pair, here);
            rest = tail;
            out = later;
        }
    }

    /// [`Self::forward`] over one group of rows into `out` (its logits). With a pair: fewer
    /// than [`HALVES_ROWS`] rows split each product and the per-token work between the two
    /// threads, more run as two halves. With rayon: two halves when there are enough tokens,
    /// else only large products split.
    fn forward_group(
        &self,
        jobs: &mut [(RowCache<'_>, &[u32])],
        all: bool,
        pair: Option<&Pair>,
        out: &mut [f32],
    ) {
        let total: usize = jobs.iter().map(|(_, t)| t.len()).sum();
        if let Some(pair) = pair.filter(|_| jobs.len() < HALVES_ROWS) {
            return self.forward_rows(jobs, all, Threads::Pair(pair), out);
        }
        if jobs.len() < 2 || total < SPLIT_TOKENS || rayon::current_num_threads() < 2 {
            return self.forward_rows(jobs, all, Threads::Rayon, out);
        }
        // Two halves of about equal token counts.
        let mut acc = 0;
        let cut = jobs
            .iter()
            .position(|(_, t)| {
                acc += t.len();
                2 * acc >= total
            })
            .map_or(jobs.len() / 2, |i| (i + 1).min(jobs.len() - 1));
        let (left, right) = jobs.split_at_mut(cut);
        let (out_left, out_right) = out.split_at_mut(outputs(left, all) * self.vocab);
        let mine = || self.forward_rows(left, all, Threads::One, out_left);
        let theirs = || self.forward_rows(right, all, Threads::One, out_right);
        match pair {
            Some(pair) => pair.join(mine, theirs),
            None => rayon::join(mine, theirs),
        };
    }

    /// Layer `li`'s per-token work for one share of the rows: for each token, q/k norms and
    /// RoPE on its query and key, its key and value into the row's cache, and causal
    /// attention over the row's cache into `share.att`.
    fn attend_share(
        &self,
        l: &Layer,
        li: usize,
        ctx: usize,
        share: &mut Share<'_, '_, '_>,
        scratch: &mut Scratch,
    ) {
        let (hd, qd, kvd) = (self.head_dim, self.heads * self.head_dim, self.kv_dim());
        let (row, half) = (qd + 2 * kvd, hd / 2);
        let (layer_keys, layer_values) = (self.layer_keys(ctx), ctx * kvd);
        let (keys, values) = (li * layer_keys, li * layer_values);
        let scale = 1.0 / (hd as f32).sqrt();
        for (t, &(job, pos)) in share.tokens.iter().enumerate() {
            let cs = &self.cos[pos * half..(pos + 1) * half];
            let sn = &self.sin[pos * half..(pos + 1) * half];
            let r = &mut share.qkv[t * row..(t + 1) * row];
            for (part, norm) in [(0..qd, &l.extras.q_norm), (qd..qd + kvd, &l.extras.k_norm)] {
                if let Some((g, eps)) = norm {
                    let out = &mut scratch.normed[..part.len()];
                    rms_norm(&r[part.clone()], g, *eps, out);
                    r[part].copy_from_slice(out);
                }
            }
            rope(&mut r[..qd + kvd], hd, cs, sn);
            let rc = &mut share.jobs[job - share.first].0;
            // Key dimension i of head h goes to row h·head_dim + i of its block.
            let at = keys + (pos / KEY_BLOCK) * kvd * KEY_BLOCK + pos % KEY_BLOCK;
            for (c, &kc) in r[qd..qd + kvd].iter().enumerate() {
                rc.k[at + c * KEY_BLOCK] = kc;
            }
            let at = values + pos * kvd;
            rc.v[at..at + kvd].copy_from_slice(&r[qd + kvd..]);
            // Causal attention over the row's cache, right after the writes, which have
            // brought the lines of the key's block into cache for it (a row's tokens come in
            // order, so its earlier ones are already written).
            let query = Query {
                q: &share.qkv[t * row..t * row + qd],
                keys: &rc.k[keys..keys + layer_keys],
                values: &rc.v[values..values + layer_values],
                len: pos + 1,
                heads: self.heads,
                kv_heads: self.kv_heads,
                scale,
            };
            attend(
                &query,
                &mut scratch.scores,
                &mut share.att[t * qd..(t + 1) * qd],
            );
        }
    }

    /// [`Self::forward`] over one group of rows into `logits`, on this thread (its products on
    /// `threads`).
    ///
    /// A kernel, kept as one function on purpose: the layer loop reads top to bottom as the
    /// model's block (norm, QKV, attention, output, norm, gate/up, SwiGLU, down) over buffers
    /// allocated once before it, and the split of the per-token work between the pair's threads
    /// is visible in one place.
    fn forward_rows(
        &self,
        jobs: &mut [(RowCache<'_>, &[u32])],
        all: bool,
        threads: Threads<'_>,
        logits: &mut [f32],
    ) {
        let (d, hd) = (self.d, self.head_dim);
        let (qd, kvd) = (self.heads * hd, self.kv_dim());
        let row = qd + 2 * kvd;
        // Where each fed token goes: (job, position).
        let mut at: Vec<(usize, usize)> = Vec::new();
        let mut x: Vec<f32> = Vec::new();
        for (job, (rc, toks)) in jobs.iter().enumerate() {
            assert!(!toks.is_empty(), "nothing to feed to a row");
            let start = *rc.len;
            assert!(
                start + toks.len() <= rc.ctx,
                "sequence longer than its cache ({} positions)",
                rc.ctx
            );
            for (i, &t) in toks.iter().enumerate() {
                at.push((job, start + i));
                let t = t as usize;
                self.embed.push(t, d, &mut x);
            }
        }
        let n = at.len();
        let m = self.mlp;
        let mut h = vec![0.0f32; n * d];
        let mut qkv = vec![0.0f32; n * row];
        let mut att = vec![0.0f32; n * qd];
        let mut gu = vec![0.0f32; n * 2 * m];
        let mut act = vec![0.0f32; n * m];
        // Every row of a cache has the same room.
        let ctx = jobs.first().map_or(self.ctx, |(rc, _)| rc.ctx);
        // With a pair, the per-token work is split too: the first half of the rows (and their
        // tokens, which come first) on this thread, the rest on the helper.
        let pair = match threads {
            Threads::Pair(p) if jobs.len() >= 2 => Some(p),
            _ => None,
        };
        let cut = if pair.is_some() {
            jobs.len() / 2
        } else {
            jobs.len()
        };
        let cut_tokens: usize = jobs[..cut].iter().map(|(_, t)| t.len()).sum();
        let mut scratch = [(); 2].map(|_| Scratch {
            scores: vec![0.0; self.heads * ctx],
            normed: vec![0.0; qd],
        });
        let both = |mine: &mut (dyn FnMut() + Send), theirs: &mut (dyn FnMut() + Send)| match pair {
            Some(p) => {
                p.join(mine, theirs);
            }
            None => {
                mine();
                theirs();
            }
        };
        for (li, l) in self.layers.iter().enumerate() {
            rms_norm(&x, &l.attn_norm, l.attn_eps, &mut h);
            l.qkv.matmul(&mut qkv, &h, n, false, threads);
            if let Some(bias) = &l.extras.qkv_bias {
                for r in qkv.chunks_exact_mut(row) {
                    r.iter_mut().zip(bias).for_each(|(x, b)| *x += b);
                }
            }
            {
                let (jobs_a, jobs_b) = jobs.split_at_mut(cut);
                let (at_a, at_b) = at.split_at(cut_tokens);
                let (qkv_a, qkv_b) = qkv.split_at_mut(cut_tokens * row);
                let (att_a, att_b) = att.split_at_mut(cut_tokens * qd);
                let [sa, sb] = &mut scratch;
                let mut a = Share {
                    jobs: jobs_a,
                    tokens: at_a,
                    first: 0,
                    qkv: qkv_a,
                    att: att_a,
                };
                let mut b = Share {
                    jobs: jobs_b,
                    tokens: at_b,
                    first: cut,
                    qkv: qkv_b,
                    att: att_b,
                };
                both(
                    &mut || self.attend_share(l, li, ctx, &mut a, sa),
                    &mut || self.attend_share(l, li, ctx, &mut b, sb),
                );
            }
            l.out.matmul(&mut x, &att, n, true, threads);
            rms_norm(&x, &l.mlp_norm, l.mlp_eps, &mut h);
            l.gate_up.matmul(&mut gu, &h, n, false, threads);
            {
                let (gu_a, gu_b) = gu.split_at(cut_tokens * 2 * m);
                let (act_a, act_b) = act.split_at_mut(cut_tokens * m);
                // SAFETY: the kernel stores only initialised floats through the views.
                both(
                    &mut || swiglu_block(unsafe { as_uninit(act_a) }, gu_a, m),
                    &mut || swiglu_block(unsafe { as_uninit(act_b) }, gu_b, m),
                );
            }
            l.down.matmul(&mut x, &act, n, true, threads);
        }
        for (rc, toks) in jobs.iter_mut() {
            *rc.len += toks.len();
        }
        // Only the positions whose logits are wanted go through the head.
        let picked: Vec<f32> = if all {
            x
        } else {
            let mut end = 0;
            let mut v = Vec::with_capacity(jobs.len() * d);
            for (_, toks) in jobs.iter() {
                end += toks.len();
                v.extend_from_slice(&x[(end - 1) * d..end * d]);
            }
            v
        };
        let rows = picked.len() / d;
        let mut hn = vec![0.0f32; rows * d];
        rms_norm(&picked, &self.norm, self.norm_eps, &mut hn);
        self.head.matmul(logits, &hn, rows, false, threads);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attention of one query written out directly from the definition, over a layer of a
    /// cache laid out as in [`Cache`].
    fn naive(a: &Query<'_>) -> Vec<f32> {
        let d = a.q.len();
        let hd = d / a.heads;
        let kvd = a.kv_heads * hd;
        let g = a.heads / a.kv_heads;
        let key = |h: usize, i: usize, p: usize| {
            a.keys[((p / KEY_BLOCK) * kvd + (h / g) * hd + i) * KEY_BLOCK + p % KEY_BLOCK]
        };
        let mut out = vec![0.0f32; d];
        for h in 0..a.heads {
            let s: Vec<f32> = (0..a.len)
                .map(|p| (0..hd).map(|i| a.q[h * hd + i] * key(h, i, p)).sum::<f32>() * a.scale)
                .collect();
            let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = s.iter().map(|x| (x - max).exp()).collect();
            let sum: f32 = e.iter().sum();
            for i in 0..hd {
                out[h * hd + i] = (0..a.len)
                    .map(|p| e[p] * a.values[p * kvd + (h / g) * hd + i])
                    .sum::<f32>()
                    / sum;
            }
        }
        out
    }

    #[test]
    fn attention_kernels_match_the_definition() {
        // Head sizes with and without the dedicated kernels; lengths that end in each quarter
        // of a block (the kernels read one to four vectors of the last one), on a block edge,
        // and in a last block that runs past the context.
        for (heads, kv_heads, hd, ctx, len) in [
            (2, 2, 64, 80usize, 5),
            (2, 2, 64, 80, 50),
            (2, 2, 64, 80, 64),
            (2, 2, 64, 80, 75),
            (2, 2, 64, 128, 128),
            (3, 3, 8, 40, 7),
            (1, 1, 33, 70, 69),
            (6, 2, 64, 80, 75),
            (4, 1, 8, 40, 33),
        ] {
            let d = heads * hd;
            let kvd = kv_heads * hd;
            let val = |i: usize, m: usize| ((i * m) % 23) as f32 / 11.0 - 1.0;
            let q: Vec<f32> = (0..d).map(|i| val(i, 7)).collect();
            let blocks = ctx.div_ceil(KEY_BLOCK);
            let keys: Vec<f32> = (0..blocks * KEY_BLOCK * kvd).map(|i| val(i, 13)).collect();
            let values: Vec<f32> = (0..ctx * kvd).map(|i| val(i, 17)).collect();
            let query = Query {
                q: &q,
                keys: &keys,
                values: &values,
                len,
                heads,
                kv_heads,
                scale: 0.3,
            };
            let mut scores = vec![0.0f32; heads * ctx];
            let mut got = vec![f32::NAN; d];
            attend(&query, &mut scores, &mut got);
            for (x, y) in naive(&query).iter().zip(&got) {
                assert!((x - y).abs() < 1e-5, "hd {hd}, len {len}: {x} vs {y}");
            }
        }
    }
}
