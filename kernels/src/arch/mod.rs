//! Everything that names an instruction set lives under this module.
//!
//! [`Isa`] says which path runs. `Simd` is the small vector vocabulary (splat, load, fmadd,
//! reduce, exp, ...) that every kernel is written against once; each ISA implements it in its
//! own file. The implementing types are zero-sized *tokens* that can only be constructed after
//! the CPU has been checked for their features, so holding one is the proof that makes the
//! intrinsics sound to call.

// The x86 paths exist only where they can run (see `build.rs`: `x86_simd` is set on x86-64,
// unless the build asks for the portable path alone).
#[cfg(x86_simd)]
mod avx2;
#[cfg(x86_simd)]
mod avx512;
mod portable;
mod probe;
mod simd;

#[cfg(x86_simd)]
pub(crate) use avx2::Avx2;
#[cfg(x86_simd)]
pub(crate) use avx512::Avx512;
pub(crate) use portable::Portable;
pub use probe::{fma_probe, sum_probe};
pub(crate) use simd::Simd;

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

/// An instruction-set path of the kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Isa {
    /// Plain Rust over `wide` vectors, whatever the build's baseline allows (SSE2 on x86-64,
    /// NEON on aarch64). Always available.
    Portable,
    /// 256-bit AVX2 with FMA, selected at run time.
    Avx2,
    /// 512-bit AVX-512 (F and DQ, which every AVX-512 CPU but the Xeon Phi line has), selected
    /// at run time.
    Avx512,
}

impl Isa {
    /// Every path, narrowest first.
    pub const ALL: [Isa; 3] = [Isa::Portable, Isa::Avx2, Isa::Avx512];

    /// Whether this CPU can run the path.
    pub fn is_available(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(x86_simd)]
            Isa::Avx2 => Avx2::try_new().is_some(),
            #[cfg(x86_simd)]
            Isa::Avx512 => Avx512::try_new().is_some(),
            #[cfg(not(x86_simd))]
            Isa::Avx2 | Isa::Avx512 => false,
        }
    }

    /// The widest available path, detected once per process. The environment variable
    /// `KERNELS_ISA=portable|avx2|avx512`, read at that moment, caps it (for comparisons and
    /// for reproducing a narrower machine); a value naming an unavailable path is ignored.
    pub fn detected() -> Isa {
        static DETECTED: OnceLock<Isa> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            let best = Isa::ALL
                .into_iter()
                .rev()
                .find(|isa| isa.is_available())
                .unwrap_or(Isa::Portable);
            match std::env::var("KERNELS_ISA")
                .ok()
                .and_then(|v| v.parse::<Isa>().ok())
            {
                Some(cap) if cap.is_available() => cap.min(best),
                _ => best,
            }
        })
    }

    /// Every path this CPU can run.
    pub fn available() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|i| i.is_available()).collect()
    }

    /// Lanes of f32 in one vector of this path.
    pub fn f32_lanes(self) -> usize {
        match self {
            Isa::Portable => Portable::LANES,
            Isa::Avx2 => 8,
            Isa::Avx512 => 16,
        }
    }

    /// Short lower-case name, as accepted by `FromStr`.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Isa {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "portable" | "scalar" | "fallback" => Ok(Isa::Portable),
            "avx2" | "avx2+fma" | "fma" => Ok(Isa::Avx2),
            "avx512" | "avx512f" | "avx-512" => Ok(Isa::Avx512),
            other => Err(format!(
                "unknown ISA `{other}` (expected portable, avx2 or avx512)"
            )),
        }
    }
}

/// A hint to bring the cache line holding `p` into L1 (`T0`) ahead of use; never faults, on
/// any address, so callers may prefetch past the end of a buffer.
#[inline(always)]
pub(crate) fn prefetch<T>(p: *const T) {
    #[cfg(x86_simd)]
    // SAFETY: PREFETCHT0 is baseline SSE on x86-64 and only a hint: it never faults, even on
    // invalid addresses, and reads nothing architecturally.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
    };
    #[cfg(not(x86_simd))]
    let _ = p;
}

/// A hint to bring the cache line holding `p` into L2 (`T1`): for data needed after the L1
/// has turned over. Never faults, on any address.
#[inline(always)]
pub(crate) fn prefetch_l2<T>(p: *const T) {
    #[cfg(x86_simd)]
    // SAFETY: PREFETCHT1 is baseline SSE on x86-64 and only a hint: it never faults, even on
    // invalid addresses, and reads nothing architecturally.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(p as *const i8)
    };
    #[cfg(not(x86_simd))]
    let _ = p;
}

/// CPU features the runtime detector sees, for reports (`"avx512f avx2 fma ..."`).
pub fn detected_cpu_features() -> Vec<&'static str> {
    let mut out = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! probe {
            ($($f:tt),*) => { $( if std::arch::is_x86_feature_detected!($f) { out.push($f); } )* };
        }
        probe!(
            "sse2",
            "avx",
            "avx2",
            "fma",
            "f16c",
            "avx512f",
            "avx512bw",
            "avx512dq",
            "avx512vl",
            "avx512bf16",
            "avx512fp16"
        );
    }
    out
}

/// Target features compiled into this build (`-C target-feature` / `target-cpu`), which only
/// the portable path depends on.
pub fn compiled_target_features() -> Vec<&'static str> {
    let mut out = Vec::new();
    macro_rules! check {
        ($($f:tt),*) => { $( if cfg!(target_feature = $f) { out.push($f); } )* };
    }
    check!("sse2", "avx", "avx2", "fma", "avx512f", "neon");
    out
}

/// Binds `$s` to the token of the ISA `$isa` and evaluates `$body`, which is generic code over
/// `S: Simd`. This is the single place where a runtime ISA value becomes a compile-time type;
/// the body calls `s.vectorize(..)` around its hot loops.
#[cfg(x86_simd)]
macro_rules! with_simd {
    ($isa:expr, |$s:ident| $body:expr) => {{
        match $isa {
            $crate::Isa::Avx512 => {
                let $s = $crate::arch::Avx512::try_new().expect("Exec holds only detected ISAs");
                $body
            }
            $crate::Isa::Avx2 => {
                let $s = $crate::arch::Avx2::try_new().expect("Exec holds only detected ISAs");
                $body
            }
            $crate::Isa::Portable => {
                let $s = $crate::arch::Portable;
                $body
            }
        }
    }};
}
/// [`with_simd`] where only the portable path is compiled: no `Exec` can hold another ISA.
#[cfg(not(x86_simd))]
macro_rules! with_simd {
    ($isa:expr, |$s:ident| $body:expr) => {{
        debug_assert_eq!($isa, $crate::Isa::Portable, "Exec holds only detected ISAs");
        let $s = $crate::arch::Portable;
        $body
    }};
}
pub(crate) use with_simd;
