//! Link flags for the binary only.
//!
//! On Linux the executable is linked with packed relative relocations (DT_RELR): the
//! table of addresses the loader fixes up at start shrinks from about 94 KB to a few
//! hundred bytes, and the binary stays position-independent (ASLR kept). It needs
//! binutils 2.38 or later to link and glibc 2.36 or later to run (Debian 12 and later),
//! or a fully static build, whose self-relocation code is in the binary itself.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
