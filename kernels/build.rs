//! Decides whether the x86 SIMD paths (AVX2, AVX-512) are compiled: on x86-64 targets, unless
//! `KERNELS_NO_X86_SIMD` is set, which builds the crate as a non-x86 target sees it (only the
//! portable path), so that configuration can be checked and tested on an x86 machine.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(x86_simd)");
    println!("cargo::rerun-if-env-changed=KERNELS_NO_X86_SIMD");
    let x86_64 = std::env::var("CARGO_CFG_TARGET_ARCH").is_ok_and(|a| a == "x86_64");
    if x86_64 && std::env::var_os("KERNELS_NO_X86_SIMD").is_none() {
        println!("cargo::rustc-cfg=x86_simd");
    }
}
