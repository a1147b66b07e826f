//! libgshn_capi.so: the C ABI of gshn (`include/gshn.h`), implemented in `gshn::capi` and exported
//! from this shared library. Build it with `cargo build --release -p gshn-capi`.

pub use gshn_core::capi::*;
