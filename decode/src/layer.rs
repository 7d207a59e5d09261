//! A full attention layer: projections q = x·W_Q, k = x·W_K, v = x·W_V, optional RoPE, the
//! cache, attention, and the output projection W_O over the concatenated heads.

use crate::attention::{
    DecodeOptions, DecodeScratch, HeadConfig, PrefillScratch, decode_attention, prefill_attention,
};
use crate::cache::KvCache;
use crate::error::{DecodeError, Result, check_eq};
use crate::rope::Rope;
use kernels::{Exec, GemmWorkspace, MatMut, MatRef, PackedB, gemm, gemm_prepacked};

/// Shape of an attention layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerConfig {
    /// Embedding width.
    pub d_model: usize,
    /// Head counts and size.
    pub heads: HeadConfig,
    /// Rotary embeddings, if used.
    pub rope: Option<Rope>,
}

/// Row-major weights: `w_q` is `d_model × heads·head_dim`, `w_k` and `w_v` are
/// `d_model × kv_heads·head_dim`, `w_o` is `heads·head_dim × d_model` (or `None`: the output is
/// the concatenated heads, as in the single-head teaching example).
#[derive(Debug, Clone, PartialEq)]
pub struct LayerWeights {
    /// Query projection.
    pub w_q: Vec<f32>,
    /// Key projection.
    pub w_k: Vec<f32>,
    /// Value projection.
    pub w_v: Vec<f32>,
    /// Output projection.
    pub w_o: Option<Vec<f32>>,
}

/// A weight matrix as the layer holds it.
#[derive(Debug, Clone)]
enum Weight {
    /// Row-major, multiplied through `gemm` on any ISA path.
    Plain(Vec<f32>),
    /// Packed once for one ISA path, multiplied through `gemm_prepacked`.
    Packed(PackedB),
}

/// Attention layer with its weights.
#[derive(Debug, Clone)]
pub struct AttentionLayer {
    cfg: LayerConfig,
    w_q: Weight,
    w_k: Weight,
    w_v: Weight,
    w_o: Option<Weight>,
}

/// Buffers of one layer call, sized once; decode steps allocate nothing after the first.
pub struct LayerScratch {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    decode: DecodeScratch,
    prefill: PrefillScratch,
    ws: GemmWorkspace,
}

impl LayerScratch {
    /// Scratch for `cfg` on up to `threads` threads.
    pub fn new(cfg: &LayerConfig, threads: usize) -> Result<Self> {
        let h = &cfg.heads;
        h.validate()?;
        Ok(Self {
            q: vec![0.0; h.heads * h.head_dim],
            k: vec![0.0; h.kv_heads * h.head_dim],
            v: vec![0.0; h.kv_heads * h.head_dim],
            attn: vec![0.0; h.heads * h.head_dim],
            decode: DecodeScratch::for_threads(*h, threads)?,
            prefill: PrefillScratch::new(),
            ws: GemmWorkspace::new(),
        })
    }
}

/// `out (rows × n) = x (rows × k) · w (k × n)`, all row-major.
fn project(
    exec: &Exec,
    x: &[f32],
    rows: usize,
    w: &Weight,
    n: usize,
    out: &mut [f32],
    ws: &mut GemmWorkspace,
) -> Result<()> {
    if rows == 0 {
        // An empty chunk: nothing to project (and no k to read off an empty x).
        return Ok(());
    }
    let k = x.len() / rows;
    let x = MatRef::row_major(x, rows, k)?;
    let mut out = MatMut::row_major(out, rows, n)?;
    match w {
        Weight::Plain(w) => gemm(exec, 1.0, x, MatRef::row_major(w, k, n)?, 0.0, &mut out, ws)?,
        Weight::Packed(w) => gemm_prepacked(exec, 1.0, x, w, 0.0, &mut out, ws)?,
    }
    Ok(())
}

impl AttentionLayer {
    /// Checks every weight's length against the configuration.
    pub fn new(cfg: LayerConfig, w: LayerWeights) -> Result<Self> {
        Self::check(&cfg, &w)?;
        Ok(Self {
            cfg,
            w_q: Weight::Plain(w.w_q),
            w_k: Weight::Plain(w.w_k),
            w_v: Weight::Plain(w.w_v),
            w_o: w.w_o.map(Weight::Plain),
        })
    }

    /// The configuration, and every weight's length against it.
    pub(crate) fn check(cfg: &LayerConfig, w: &LayerWeights) -> Result<()> {
        cfg.heads.validate()?;
        if cfg.d_model == 0 {
            return Err(DecodeError::InvalidConfig(
                "d_model must be positive".into(),
            ));
        }
        if let Some(r) = &cfg.rope {
            r.check(cfg.heads.head_dim)?;
        }
        let (dm, h) = (cfg.d_model, &cfg.heads);
        // A weight of each size exists, so a product that overflows is a config no weights
        // can match.
        let weight_len = |heads: usize| {
            dm.checked_mul(heads)
                .and_then(|x| x.checked_mul(h.head_dim))
                .ok_or_else(|| {
                    DecodeError::InvalidConfig(format!(
                        "d_model ({dm}) × {heads} heads × head_dim ({}) overflows usize",
                        h.head_dim
                    ))
                })
        };
        let (q_len, kv_len) = (weight_len(h.heads)?, weight_len(h.kv_heads)?);
        check_eq(
            "w_q length vs d_model * heads * head_dim",
            q_len,
            w.w_q.len(),
        )?;
        check_eq(
            "w_k length vs d_model * kv_heads * head_dim",
            kv_len,
            w.w_k.len(),
        )?;
        check_eq(
            "w_v length vs d_model * kv_heads * head_dim",
            kv_len,
            w.w_v.len(),
        )?;
        if let Some(o) = &w.w_o {
            check_eq("w_o length vs heads * head_dim * d_model", q_len, o.len())?;
        }
        Ok(())
    }

    /// [`new`](Self::new), with every weight matrix packed once for `exec`'s ISA path (as
    /// `kernels::PackedB`; the row-major copies are dropped), so that no call packs weights
    /// again. Prefill's projections take `kernels::gemm_prepacked` (against `gemm`, one
    /// thread: 0.87–0.91× the time at 128×4096×4096 in-process, 0.73–0.85× in the harness
    /// with the weights streaming from DRAM); decode's one-row projections run as fast as
    /// `gemm`'s GEMV (0.9–1.2× its share of the same-bytes sum, paired in the harness). Calls
    /// must then run on that path: another is a `DecodeError::Kernel` (`PackedForOtherIsa`)
    /// before anything is written.
    pub fn new_packed(exec: &Exec, cfg: LayerConfig, w: LayerWeights) -> Result<Self> {
        Self::check(&cfg, &w)?;
        let (dm, h) = (cfg.d_model, &cfg.heads);
        let (qw, kw) = (h.heads * h.head_dim, h.kv_heads * h.head_dim);
        let pack = |v: &[f32], k: usize, n: usize| -> Result<Weight> {
            Ok(Weight::Packed(PackedB::new(
                exec,
                MatRef::row_major(v, k, n)?,
            )?))
        };
        Ok(Self {
            cfg,
            w_q: pack(&w.w_q, dm, qw)?,
            w_k: pack(&w.w_k, dm, kw)?,
            w_v: pack(&w.w_v, dm, kw)?,
            w_o: w.w_o.as_deref().map(|o| pack(o, qw, dm)).transpose()?,
        })
    }

    /// The ISA path the weights were packed for ([`new_packed`](Self::new_packed)), or
    /// `None` for row-major weights, which run on any path.
    pub fn packed_for(&self) -> Option<kernels::Isa> {
        match &self.w_q {
            Weight::Packed(p) => Some(p.isa()),
            Weight::Plain(_) => None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &LayerConfig {
        &self.cfg
    }

    /// Width of the layer's output: `d_model` with W_O, else `heads · head_dim`.
    pub fn out_dim(&self) -> usize {
        if self.w_o.is_some() {
            self.cfg.d_model
        } else {
            self.cfg.heads.heads * self.cfg.heads.head_dim
        }
    }

    /// One token: projects `x` (d_model), appends its k and v to `layer` of the cache, attends
    /// over the window and writes `out` ([`out_dim`](Self::out_dim)).
    pub fn decode(
        &self,
        exec: &Exec,
        cache: &mut KvCache,
        layer: usize,
        x: &[f32],
        out: &mut [f32],
        s: &mut LayerScratch,
    ) -> Result<()> {
        let h = self.cfg.heads;
        check_eq("x length vs d_model", self.cfg.d_model, x.len())?;
        check_eq(
            "out length vs layer output width",
            self.out_dim(),
            out.len(),
        )?;
        self.cfg.heads.check_cache(cache)?;
        // Everything that can fail is checked before the cache is written.
        s.decode.check(&h)?;
        let pos = cache.layer_position(layer)?;
        // One token's rows: a previous prefill resized these to its chunk (within capacity, so
        // this does not allocate after the first calls).
        let (qw, kw) = (h.heads * h.head_dim, h.kv_heads * h.head_dim);
        s.q.resize(qw, 0.0);
        s.k.resize(kw, 0.0);
        s.v.resize(kw, 0.0);
        s.attn.resize(qw, 0.0);
        project(
            exec,
            x,
            1,
            &self.w_q,
            h.heads * h.head_dim,
            &mut s.q,
            &mut s.ws,
        )?;
        project(
            exec,
            x,
            1,
            &self.w_k,
            h.kv_heads * h.head_dim,
            &mut s.k,
            &mut s.ws,
        )?;
        project(
            exec,
            x,
            1,
            &self.w_v,
            h.kv_heads * h.head_dim,
            &mut s.v,
            &mut s.ws,
        )?;
        if let Some(r) = &self.cfg.rope {
            r.apply(&mut s.q, h.head_dim, pos)?;
            r.apply(&mut s.k, h.head_dim, pos)?;
        }
        cache.append(layer, &s.k, &s.v)?;
        decode_attention(
            exec,
            &h,
            cache,
            layer,
            &s.q,
            &mut s.attn,
            &mut s.decode,
            DecodeOptions::default(),
        )?;
        self.output(exec, 1, out, s)
    }

    /// A chunk of `T` tokens (`xs`: `T × d_model`), causal within the window; `out`:
    /// `T × out_dim`. Equal to calling [`decode`](Self::decode) token by token.
    pub fn prefill(
        &self,
        exec: &Exec,
        cache: &mut KvCache,
        layer: usize,
        xs: &[f32],
        out: &mut [f32],
        s: &mut LayerScratch,
    ) -> Result<()> {
        let h = self.cfg.heads;
        let dm = self.cfg.d_model;
        if !xs.len().is_multiple_of(dm) {
            return Err(DecodeError::ShapeMismatch {
                what: "xs length vs a multiple of d_model",
                expected: xs.len().div_ceil(dm) * dm,
                got: xs.len(),
            });
        }
        let t = xs.len() / dm;
        check_eq(
            "out length vs T * layer output width",
            t * self.out_dim(),
            out.len(),
        )?;
        self.cfg.heads.check_cache(cache)?;
        let pos = cache.layer_position(layer)?;
        let (qw, kw) = (h.heads * h.head_dim, h.kv_heads * h.head_dim);
        s.q.resize(t * qw, 0.0);
        s.k.resize(t * kw, 0.0);
        s.v.resize(t * kw, 0.0);
        s.attn.resize(t * qw, 0.0);
        project(exec, xs, t, &self.w_q, qw, &mut s.q, &mut s.ws)?;
        project(exec, xs, t, &self.w_k, kw, &mut s.k, &mut s.ws)?;
        project(exec, xs, t, &self.w_v, kw, &mut s.v, &mut s.ws)?;
        if let Some(r) = &self.cfg.rope {
            for i in 0..t {
                r.apply(&mut s.q[i * qw..(i + 1) * qw], h.head_dim, pos + i)?;
                r.apply(&mut s.k[i * kw..(i + 1) * kw], h.head_dim, pos + i)?;
            }
        }
        prefill_attention(
            exec,
            &h,
            cache,
            layer,
            &s.q,
            &s.k,
            &s.v,
            &mut s.attn,
            &mut s.prefill,
        )?;
        self.output(exec, t, out, s)
    }

    fn output(&self, exec: &Exec, t: usize, out: &mut [f32], s: &mut LayerScratch) -> Result<()> {
        let qw = self.cfg.heads.heads * self.cfg.heads.head_dim;
        match &self.w_o {
            Some(w_o) => project(
                exec,
                &s.attn[..t * qw],
                t,
                w_o,
                self.cfg.d_model,
                out,
                &mut s.ws,
            ),
            None => {
                out.copy_from_slice(&s.attn[..t * qw]);
                Ok(())
            }
        }
    }
}
