//! Parsing of list-valued sweep options (`1,2`, `256..32768*2`, `64..256+64`, `512,2048x2048x128`),
//! byte sizes (`32MiB`), and the model presets.
//!
//! Every parser returns a message that names the offending text and says what was expected;
//! the CLI turns it into `error: ...` and a non-zero exit.

use kernels::KvDtype;

/// Longest list a range may expand to (guards against `1..1000000000`).
pub const MAX_LIST_LEN: usize = 4096;

/// Parses one non-negative integer, allowing `_` separators and a binary `k`/`m` suffix
/// (`32k` = 32768).
pub fn parse_count(item: &str) -> Result<usize, String> {
    let t = item.trim().replace('_', "");
    if t.is_empty() {
        return Err("empty number".into());
    }
    let (digits, mult) = match t.as_bytes()[t.len() - 1].to_ascii_lowercase() {
        b'k' => (&t[..t.len() - 1], 1usize << 10),
        b'm' => (&t[..t.len() - 1], 1usize << 20),
        _ => (t.as_str(), 1),
    };
    let v: usize = digits
        .parse()
        .map_err(|_| format!("`{}` is not a non-negative integer", item.trim()))?;
    v.checked_mul(mult)
        .ok_or_else(|| format!("`{}` is too large", item.trim()))
}

/// Parses a comma-separated list of integers and ranges.
///
/// * `a..b` — every integer from `a` to `b`, inclusive;
/// * `a..b+s` — `a, a+s, a+2s, ...` up to `b`;
/// * `a..b*f` — `a, a·f, a·f², ...` up to `b` (geometric, `f ≥ 2`).
///
/// The list may not be empty and no item may be empty.
pub fn parse_usize_list(text: &str) -> Result<Vec<usize>, String> {
    if text.trim().is_empty() {
        return Err("empty list (expected e.g. `1,2` or `256..4096*2`)".into());
    }
    let mut out = Vec::new();
    for item in text.split(',') {
        let item = item.trim();
        if item.is_empty() {
            return Err(format!("empty item in list `{text}`"));
        }
        if item.contains("..") {
            out.extend(parse_range(item)?);
        } else {
            out.push(parse_count(item)?);
        }
        if out.len() > MAX_LIST_LEN {
            return Err(format!(
                "list `{text}` expands to more than {MAX_LIST_LEN} values"
            ));
        }
    }
    Ok(out)
}

fn parse_range(item: &str) -> Result<Vec<usize>, String> {
    let malformed = || {
        format!(
            "malformed range `{item}`: expected START..END, START..END+STEP or START..END*FACTOR \
             (e.g. `256..32768*2`, `64..256+64`)"
        )
    };
    let (start, rest) = item.split_once("..").ok_or_else(malformed)?;
    let rest = rest.strip_prefix('=').unwrap_or(rest);
    if start.trim().is_empty() || rest.trim().is_empty() {
        return Err(malformed());
    }
    let start = parse_count(start).map_err(|e| format!("{}: {e}", malformed()))?;
    let (end, step) = if let Some((end, f)) = rest.split_once('*') {
        let f = parse_count(f).map_err(|e| format!("{}: {e}", malformed()))?;
        if f < 2 {
            return Err(format!(
                "range `{item}`: geometric factor must be at least 2"
            ));
        }
        (end, Step::Mul(f))
    } else if let Some((end, s)) = rest.split_once('+') {
        let s = parse_count(s).map_err(|e| format!("{}: {e}", malformed()))?;
        if s == 0 {
            return Err(format!("range `{item}`: step must be at least 1"));
        }
        (end, Step::Add(s))
    } else {
        (rest, Step::Add(1))
    };
    if end.trim().is_empty() {
        return Err(malformed());
    }
    let end = parse_count(end).map_err(|e| format!("{}: {e}", malformed()))?;
    if start > end {
        return Err(format!(
            "range `{item}`: start {start} is greater than end {end}"
        ));
    }
    if matches!(step, Step::Mul(_)) && start == 0 {
        return Err(format!(
            "range `{item}`: a geometric range cannot start at 0"
        ));
    }
    let mut v = Vec::new();
    let mut x = start;
    while x <= end {
        v.push(x);
        if v.len() > MAX_LIST_LEN {
            return Err(format!(
                "range `{item}` expands to more than {MAX_LIST_LEN} values"
            ));
        }
        x = match step {
            Step::Add(s) => match x.checked_add(s) {
                Some(n) => n,
                None => break,
            },
            Step::Mul(f) => match x.checked_mul(f) {
                Some(n) => n,
                None => break,
            },
        };
    }
    Ok(v)
}

#[derive(Clone, Copy)]
enum Step {
    Add(usize),
    Mul(usize),
}

/// Parses a list of positive integers (`--threads`, `--heads`, ...): like
/// [`parse_usize_list`], but 0 is refused with a message naming `what`.
pub fn parse_positive_list(what: &str, text: &str) -> Result<Vec<usize>, String> {
    let v = parse_usize_list(text).map_err(|e| format!("{what}: {e}"))?;
    if v.contains(&0) {
        return Err(format!(
            "{what}: values must be at least 1 (got 0 in `{text}`)"
        ));
    }
    Ok(v)
}

/// Parses a comma list of items with `parse`, refusing empty lists and empty items.
pub fn parse_list<T>(
    what: &str,
    text: &str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, String> {
    if text.trim().is_empty() {
        return Err(format!("{what}: empty list"));
    }
    text.split(',')
        .map(|item| {
            let item = item.trim();
            if item.is_empty() {
                Err(format!("{what}: empty item in list `{text}`"))
            } else {
                parse(item).map_err(|e| format!("{what}: {e}"))
            }
        })
        .collect()
}

/// Parses a byte size: a count with an optional `K`, `M`, `G` suffix (binary: `K` = 1024),
/// optionally followed by `iB` or `B` (`1M`, `32MiB`, `1GB`, `4096`).
pub fn parse_bytes(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let lower = t.to_ascii_lowercase();
    let body = lower
        .strip_suffix("ib")
        .or_else(|| lower.strip_suffix('b'))
        .unwrap_or(&lower);
    let (digits, mult) = match body.chars().last() {
        Some('k') => (&body[..body.len() - 1], 1usize << 10),
        Some('m') => (&body[..body.len() - 1], 1usize << 20),
        Some('g') => (&body[..body.len() - 1], 1usize << 30),
        _ => (body, 1),
    };
    let v: usize = digits
        .trim()
        .parse()
        .map_err(|_| format!("`{t}` is not a byte size (expected e.g. 64K, 32MiB, 1G)"))?;
    let b = v
        .checked_mul(mult)
        .ok_or_else(|| format!("`{t}` is too large"))?;
    if b == 0 {
        return Err(format!("byte size `{t}` must be positive"));
    }
    Ok(b)
}

/// One matrix-multiply shape: `C (m×n) = A (m×k) · B (k×n)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatShape {
    /// A short label for reports: `square`, `gemv`, `skinny`, `prefill`, `q·Kᵀ`, `custom`.
    pub label: String,
    /// Rows of A and C.
    pub m: usize,
    /// Columns of B and C.
    pub n: usize,
    /// Columns of A, rows of B.
    pub k: usize,
    /// B is the transposed view of a row-major `n × k` matrix (how q·Kᵀ reads a key cache).
    pub b_transposed: bool,
}

impl MatShape {
    /// A shape with row-major B.
    pub fn new(label: &str, m: usize, n: usize, k: usize) -> Self {
        Self {
            label: label.into(),
            m,
            n,
            k,
            b_transposed: false,
        }
    }
    /// `2·m·n·k`.
    pub fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.n as f64 * self.k as f64
    }
    /// Bytes of A, B and C, each touched once (the compulsory traffic).
    pub fn bytes(&self) -> u64 {
        4 * (self.m as u64 * self.k as u64
            + self.k as u64 * self.n as u64
            + self.m as u64 * self.n as u64)
    }
    /// Bytes of B alone, which a GEMV streams.
    pub fn b_bytes(&self) -> u64 {
        4 * self.k as u64 * self.n as u64
    }
    /// One output row: streaming B dominates, so the bandwidth roof applies.
    pub fn is_gemv(&self) -> bool {
        self.m == 1 || self.n == 1
    }
}

/// The default matmul shapes: square 256/512/1024, GEMV 1×4096×4096, skinny 16×4096×4096,
/// prefill 128×2048×2048 and a q·Kᵀ score product 1×4096×128.
pub fn default_matmul_shapes() -> Vec<MatShape> {
    vec![
        MatShape::new("square", 256, 256, 256),
        MatShape::new("square", 512, 512, 512),
        MatShape::new("square", 1024, 1024, 1024),
        MatShape::new("gemv", 1, 4096, 4096),
        MatShape::new("skinny", 16, 4096, 4096),
        MatShape::new("prefill", 128, 2048, 2048),
        MatShape {
            label: "q·Kᵀ".into(),
            m: 1,
            n: 4096,
            k: 128,
            b_transposed: true,
        },
    ]
}

/// Parses `--sizes`: items `N` (square N×N×N, ranges allowed), `MxNxK`, or `qk:MxNxK` (B read
/// as the transpose of a row-major n×k key matrix).
pub fn parse_sizes(text: &str) -> Result<Vec<MatShape>, String> {
    if text.trim().is_empty() {
        return Err("--sizes: empty list (expected e.g. `512,1024` or `1x4096x4096`)".into());
    }
    let mut out = Vec::new();
    for item in text.split(',') {
        let item = item.trim();
        if item.is_empty() {
            return Err(format!("--sizes: empty item in list `{text}`"));
        }
        let (qk, body) = match item.strip_prefix("qk:") {
            Some(rest) => (true, rest),
            None => (false, item),
        };
        if body.contains(['x', 'X']) {
            let parts: Vec<&str> = body.split(['x', 'X']).collect();
            if parts.len() != 3 {
                return Err(format!(
                    "--sizes: `{item}` is not MxNxK (three dimensions separated by `x`)"
                ));
            }
            let dims: Vec<usize> = parts
                .iter()
                .map(|p| parse_count(p).map_err(|e| format!("--sizes: `{item}`: {e}")))
                .collect::<Result<_, _>>()?;
            if dims.contains(&0) {
                return Err(format!("--sizes: `{item}`: dimensions must be at least 1"));
            }
            check_operand_bytes(item, dims[0], dims[1], dims[2])?;
            let label = if qk {
                "q·Kᵀ"
            } else if dims[0] == 1 {
                "gemv"
            } else if dims[0] == dims[1] && dims[1] == dims[2] {
                "square"
            } else {
                "custom"
            };
            out.push(MatShape {
                label: label.into(),
                m: dims[0],
                n: dims[1],
                k: dims[2],
                b_transposed: qk,
            });
        } else {
            if qk {
                return Err(format!("--sizes: `{item}`: `qk:` needs MxNxK"));
            }
            for n in parse_positive_list("--sizes", body)? {
                check_operand_bytes(item, n, n, n)?;
                out.push(MatShape::new("square", n, n, n));
            }
        }
        if out.len() > MAX_LIST_LEN {
            return Err(format!("--sizes: more than {MAX_LIST_LEN} shapes"));
        }
    }
    Ok(out)
}

/// Refuses a shape whose operands' sizes in bytes overflow (the memory check then compares
/// honest sizes with the free memory).
fn check_operand_bytes(item: &str, m: usize, n: usize, k: usize) -> Result<(), String> {
    let bytes = |a: usize, b: usize| a.checked_mul(b).and_then(|e| e.checked_mul(4));
    let total = [bytes(m, k), bytes(k, n), bytes(m, n)]
        .into_iter()
        .try_fold(0usize, |sum, b| sum.checked_add(b?));
    match total {
        Some(t) if t <= isize::MAX as usize => Ok(()),
        _ => Err(format!(
            "--sizes: `{item}`: the operands' sizes overflow (no machine holds them)"
        )),
    }
}

/// A real model's attention shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preset {
    /// The name accepted by `--preset`.
    pub name: &'static str,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (fewer than `heads` with grouped-query attention).
    pub kv_heads: usize,
    /// Elements per head.
    pub head_dim: usize,
    /// Transformer layers.
    pub layers: usize,
    /// Sliding attention window, if any: the cache never holds more tokens.
    pub window: Option<usize>,
    /// Model (residual stream) width, for the K/V projections of `kv-vs-recompute`.
    pub d_model: usize,
}

/// Every preset, in report order.
pub const PRESETS: [Preset; 5] = [
    Preset {
        name: "llama2-7b",
        heads: 32,
        kv_heads: 32,
        head_dim: 128,
        layers: 32,
        window: None,
        d_model: 4096,
    },
    Preset {
        name: "llama3-8b",
        heads: 32,
        kv_heads: 8,
        head_dim: 128,
        layers: 32,
        window: None,
        d_model: 4096,
    },
    Preset {
        name: "mistral-7b",
        heads: 32,
        kv_heads: 8,
        head_dim: 128,
        layers: 32,
        window: Some(4096),
        d_model: 4096,
    },
    Preset {
        name: "gpt3-175b",
        heads: 96,
        kv_heads: 96,
        head_dim: 128,
        layers: 96,
        window: None,
        d_model: 12288,
    },
    Preset {
        name: "tiny",
        heads: 4,
        kv_heads: 2,
        head_dim: 16,
        layers: 2,
        window: None,
        d_model: 64,
    },
];

/// Looks a preset up by name (case-insensitive; `_` and `-` are interchangeable).
pub fn preset(name: &str) -> Result<Preset, String> {
    let want = name.trim().to_ascii_lowercase().replace('_', "-");
    PRESETS
        .iter()
        .find(|p| p.name == want)
        .copied()
        .ok_or_else(|| {
            let names: Vec<&str> = PRESETS.iter().map(|p| p.name).collect();
            format!(
                "unknown preset `{}` (expected one of: {})",
                name.trim(),
                names.join(", ")
            )
        })
}

/// Parses `--kv-dtype` (`f32,bf16`).
pub fn parse_dtypes(text: &str) -> Result<Vec<KvDtype>, String> {
    parse_list("--kv-dtype", text, |s| s.parse::<KvDtype>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_ranges() {
        assert_eq!(parse_usize_list("1,2").unwrap(), vec![1, 2]);
        assert_eq!(
            parse_usize_list("256..32768*2").unwrap(),
            vec![256, 512, 1024, 2048, 4096, 8192, 16384, 32768]
        );
        assert_eq!(
            parse_usize_list("64..256+64").unwrap(),
            vec![64, 128, 192, 256]
        );
        assert_eq!(parse_usize_list("1..4").unwrap(), vec![1, 2, 3, 4]);
        assert_eq!(parse_usize_list("1..=3").unwrap(), vec![1, 2, 3]);
        assert_eq!(
            parse_usize_list(" 8 , 16..64*2 ").unwrap(),
            vec![8, 16, 32, 64]
        );
        assert_eq!(parse_usize_list("32k").unwrap(), vec![32768]);
        assert_eq!(parse_usize_list("256..1000*2").unwrap(), vec![256, 512]);
    }

    #[test]
    fn list_errors() {
        for bad in [
            "", " ", "1,,2", "1..", "..4", "a", "1..4*1", "1..4+0", "8..4", "0..8*2", "1..2*x",
        ] {
            let e = parse_usize_list(bad).unwrap_err();
            assert!(!e.is_empty(), "{bad}");
        }
        assert!(
            parse_usize_list("1..")
                .unwrap_err()
                .contains("malformed range")
        );
        assert!(
            parse_usize_list("1..100000000")
                .unwrap_err()
                .contains("more than")
        );
        assert!(
            parse_positive_list("--threads", "0,1")
                .unwrap_err()
                .contains("at least 1")
        );
    }

    #[test]
    fn sizes() {
        let s = parse_sizes("512,2x3x4,qk:1x4096x128").unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!((s[0].m, s[0].n, s[0].k), (512, 512, 512));
        assert_eq!((s[1].m, s[1].n, s[1].k), (2, 3, 4));
        assert!(s[2].b_transposed && s[2].k == 128);
        assert_eq!(parse_sizes("256..1024*2").unwrap().len(), 3);
        assert!(parse_sizes("2x3").is_err());
        assert!(parse_sizes("0x3x3").is_err());
        assert!(parse_sizes("").is_err());
        assert!(parse_sizes("qk:8").is_err());
    }

    #[test]
    fn bytes_and_presets() {
        assert_eq!(parse_bytes("64K").unwrap(), 65536);
        assert_eq!(parse_bytes("32MiB").unwrap(), 32 << 20);
        assert_eq!(parse_bytes("1G").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert!(parse_bytes("x").is_err());
        assert!(parse_bytes("0").is_err());
        let p = preset("Mistral_7B").unwrap();
        assert_eq!((p.heads, p.kv_heads, p.window), (32, 8, Some(4096)));
        assert_eq!(preset("gpt3-175b").unwrap().layers, 96);
        assert!(preset("gpt5").unwrap_err().contains("llama2-7b"));
        assert_eq!(
            parse_dtypes("f32,bf16").unwrap(),
            vec![KvDtype::F32, KvDtype::Bf16]
        );
        assert!(parse_dtypes("f16").is_err());
    }
}
