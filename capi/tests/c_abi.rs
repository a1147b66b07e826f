//! The C ABI: compiles `capi/tests/c/capi_test.c` against `include/gshn.h` and the built
//! `libgshn_capi.so`, runs it (it also checks the error codes and messages), and compares every
//! result it wrote with the same op run through `gshn::opcli` (the eager ops) in Rust.
//! Skips with a message when no C compiler is found.

use gshn_core::opcli;
use gshn_core::{CpuBackend, Tensor};
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The folder holding libgshn_capi.so: the test executable is target/<profile>/deps/capi-<hash>.
fn lib_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let deps = exe.parent()?;
    let name = format!(
        "{}gshn_capi{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    // deps/ first: that copy is built with this test; `cargo build` leaves an older one above.
    let found = [deps, deps.parent()?]
        .into_iter()
        .find(|d| d.join(&name).exists())
        .map(Path::to_path_buf);
    found
}

fn compiler() -> Option<String> {
    let candidates = [
        std::env::var("CC").ok(),
        Some("cc".into()),
        Some("gcc".into()),
        Some("clang".into()),
    ];
    candidates.into_iter().flatten().find(|c| {
        Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

fn parse(text: &str) -> HashMap<String, Vec<f64>> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let name = it.next()?.to_string();
            let n: usize = it.next()?.parse().ok()?;
            let v: Vec<f64> = it.map(|x| x.parse().expect("number")).collect();
            assert_eq!(v.len(), n, "{name}: count");
            Some((name, v))
        })
        .collect()
}

struct Dump(HashMap<String, Vec<f64>>);

impl Dump {
    fn get(&self, k: &str) -> &[f64] {
        self.0
            .get(k)
            .unwrap_or_else(|| panic!("{k} missing from the C program's output"))
    }
    fn f32(&self, k: &str, shape: &[usize]) -> Tensor {
        let v: Vec<f32> = self.get(k).iter().map(|&x| x as f32).collect();
        Tensor::new(shape.to_vec(), v).unwrap()
    }
    fn i32(&self, k: &str) -> Tensor {
        let v: Vec<i32> = self.get(k).iter().map(|&x| x as i32).collect();
        Tensor::new([v.len()], v).unwrap()
    }
    /// The C result `k` equals the Rust tensor (same kernels: to f32 rounding of the dump).
    fn check(&self, k: &str, rust: &[(String, Tensor)], name: &str) {
        let c = self.get(k);
        let r = rust
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("opcli gave no {name}"))
            .1
            .to_f64_vec();
        assert_eq!(c.len(), r.len(), "{k}: length");
        let scale = r.iter().fold(1e-30f64, |m, x| m.max(x.abs()));
        let err = c
            .iter()
            .zip(&r)
            .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            err <= 1e-6 * scale,
            "{k}: C {c:?} vs Rust {r:?} (max err {err:e})"
        );
    }
}

#[test]
fn c_program_matches_the_rust_ops() {
    let Some(cc) = compiler() else {
        eprintln!("SKIPPED capi: no C compiler (cc, gcc, clang or $CC) found");
        return;
    };
    let lib = lib_dir().expect("libgshn_capi.so next to the test executable (crate-type cdylib)");
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = here.parent().expect("capi/ is inside the repository");
    let dir = std::env::temp_dir().join(format!("gshn-capi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let exe = dir.join("capi_test");
    let st = Command::new(&cc)
        .args(["-std=c99", "-Wall", "-Wextra", "-Werror", "-O1"])
        .arg("-I")
        .arg(root.join("include"))
        .arg(here.join("tests/c/capi_test.c"))
        .arg("-o")
        .arg(&exe)
        .arg(format!("-L{}", lib.display()))
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .args(["-lgshn_capi", "-lm"])
        .status()
        .expect("running the C compiler");
    assert!(
        st.success(),
        "the C program does not compile against include/gshn.h"
    );
    let out_file = dir.join("results.txt");
    let run = Command::new(&exe)
        .arg(&out_file)
        .env("LD_LIBRARY_PATH", &lib)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    println!("{stdout}");
    assert!(
        run.status.success(),
        "capi_test failed:\n{stdout}\n{stderr}"
    );
    // The hostile table ran, and no panic was caught at the boundary (its hook prints).
    assert!(stdout.contains("none reached a panic"), "{stdout}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let d = Dump(parse(&std::fs::read_to_string(&out_file).unwrap()));
    assert!(d.0.contains_key("done"));

    // LIF (PLIF gradient through a tau tensor).
    let (t, n) = (5, 7);
    let r = opcli::run(
        "lif",
        &[
            ("x".into(), d.f32("lif.x", &[t, n])),
            ("tau".into(), Tensor::scalar(2.5f32)),
            ("grad_spikes".into(), d.f32("lif.grad_spikes", &[t, n])),
            ("grad_v".into(), d.f32("lif.grad_v", &[t, n])),
        ],
        &json!({"v_reset": null, "surrogate": "sigmoid", "alpha": 4.0}),
        CpuBackend,
    )
    .unwrap();
    for k in ["spikes", "v", "h", "grad_x", "grad_tau"] {
        d.check(&format!("lif.{k}"), &r, k);
    }
    let spikes = d.get("lif.spikes");
    assert!(
        spikes.contains(&1.0) && spikes.contains(&0.0),
        "the LIF case must fire some spikes"
    );

    // GAT with edge bias.
    let (n, h, f, e) = (6, 2, 3, 10);
    let graph = [
        ("row_ptr".to_string(), d.i32("gat.row_ptr")),
        ("src".to_string(), d.i32("gat.src")),
    ];
    let mut ins = vec![
        ("z".to_string(), d.f32("gat.z", &[n, h, f])),
        ("a_src".into(), d.f32("gat.a_src", &[h, f])),
        ("a_dst".into(), d.f32("gat.a_dst", &[h, f])),
        ("edge_bias".into(), d.f32("gat.edge_bias", &[e, h])),
        ("grad_out".into(), d.f32("gat.grad_out", &[n, h, f])),
    ];
    ins.extend(graph.iter().cloned());
    let r = opcli::run("gat", &ins, &json!({"negative_slope": 0.2}), CpuBackend).unwrap();
    for k in [
        "out",
        "lse",
        "alpha",
        "grad_z",
        "grad_a_src",
        "grad_a_dst",
        "grad_edge_bias",
    ] {
        d.check(&format!("gat.{k}"), &r, k);
    }

    // Aggregation with GAT's alpha.
    let (t, c) = (2, 4);
    let mut ins = vec![
        ("alpha".to_string(), d.f32("gat.alpha", &[e, h])),
        ("s".into(), d.f32("agg.s", &[t, n, c])),
        ("grad_y".into(), d.f32("agg.grad_y", &[t, n, c])),
    ];
    ins.extend(graph.iter().cloned());
    let r = opcli::run("gat_aggregate", &ins, &json!({}), CpuBackend).unwrap();
    for k in ["y", "grad_alpha", "grad_s"] {
        d.check(&format!("agg.{k}"), &r, k);
    }

    // InfoNCE with an upstream gradient of 1.3 on the loss.
    let (b, dd) = (5, 4);
    let r = opcli::run(
        "infonce",
        &[
            ("a".into(), d.f32("nce.a", &[b, dd])),
            ("p".into(), d.f32("nce.p", &[b, dd])),
            ("logit_scale".into(), d.f32("nce.logit_scale", &[])),
            ("grad_loss".into(), d.f32("nce.grad_loss", &[])),
        ],
        &json!({}),
        CpuBackend,
    )
    .unwrap();
    for k in [
        "loss",
        "lse_row",
        "lse_col",
        "grad_a",
        "grad_p",
        "grad_logit_scale",
    ] {
        d.check(&format!("nce.{k}"), &r, k);
    }
    // Gathered negatives: a's rows 1..2 against every row of p, bf16 products.
    let a_rows = d.f32("nce.a", &[b, dd]).to_f64_vec()[dd..3 * dd].to_vec();
    let a_local = Tensor::new(
        [2, dd],
        a_rows.iter().map(|&x| x as f32).collect::<Vec<_>>(),
    );
    let r = opcli::run(
        "infonce_1d",
        &[
            ("a".into(), a_local.unwrap()),
            ("p".into(), d.f32("nce.p", &[b, dd])),
            ("logit_scale".into(), d.f32("nce.logit_scale", &[])),
            ("grad_loss".into(), d.f32("nce.grad_loss", &[])),
        ],
        &json!({"offset": 1, "precision": "bf16"}),
        CpuBackend,
    )
    .unwrap();
    for k in ["loss", "lse_row", "grad_a", "grad_p", "grad_logit_scale"] {
        d.check(&format!("nce1d.{k}"), &r, k);
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn c_surrogate_numbers_are_the_kernels_codes() {
    use gshn_core::capi::*;
    use gshn_core::ops::Surrogate;
    for (c, s) in [
        (GSHN_SURROGATE_ATAN, Surrogate::ATan(2.0)),
        (GSHN_SURROGATE_SIGMOID, Surrogate::Sigmoid(4.0)),
        (GSHN_SURROGATE_SUPER_SPIKE, Surrogate::SuperSpike(10.0)),
        (GSHN_SURROGATE_RECTANGULAR, Surrogate::Rectangular(1.0)),
    ] {
        assert_eq!(c, s.code());
        assert_eq!(Surrogate::from_code(c, s.alpha()), Some(s));
    }
    assert_eq!(Surrogate::from_code(4, 1.0), None);
}

/// One set of names: every tensor argument of the C entry points is named as in the fused-op
/// table of `gshn op` (an input or output, or `grad_` of one), and every entry is in the table.
#[test]
fn c_header_uses_the_fused_op_table_names() {
    let header =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../include/gshn.h")).unwrap();
    let mut covered = 0;
    for op in gshn_core::fused::OPS {
        let Some(prefix) = op.c_abi else { continue };
        let mut names: Vec<String> = Vec::new();
        for n in op
            .inputs
            .iter()
            .map(|i| i.name)
            .chain(op.outputs.iter().map(|o| o.name))
        {
            names.push(n.to_string());
            names.push(format!("grad_{n}"));
        }
        for (entry, required) in [
            ("forward_cpu", true),
            ("forward_cuda", true),
            ("backward_cpu", true),
            ("backward_cuda", true),
            // spikes as uint8_t (LIF's output, the aggregation's input)
            ("forward_u8_cpu", false),
            ("forward_u8_cuda", false),
            ("backward_u8_cpu", false),
            ("backward_u8_cuda", false),
            // tau read from memory (PLIF)
            ("forward_tau_cpu", false),
            ("forward_tau_cuda", false),
            ("forward_u8_tau_cpu", false),
            ("forward_u8_tau_cuda", false),
            ("backward_tau_cpu", false),
            ("backward_tau_cuda", false),
        ] {
            let func = format!("int {prefix}_{entry}(");
            let Some(start) = header.find(&func) else {
                assert!(!required, "{func} not in gshn.h");
                continue;
            };
            let args = &header[start + func.len()..];
            let args = &args[..args.find(");").unwrap()];
            for arg in args.split(',').map(str::trim) {
                let pointee = ["const void *", "void *", "const uint8_t *", "uint8_t *"];
                if let Some(name) = pointee.iter().find_map(|p| arg.strip_prefix(p)) {
                    if name != "stream" {
                        assert!(
                            names.iter().any(|n| n == name),
                            "{prefix}_{entry}: {name} is not a tensor of gshn op {}",
                            op.name
                        );
                    }
                }
            }
            covered += 1;
        }
    }
    // Every op entry point of the header (the rest are gshn_abi_version, gshn_cuda_available).
    let entries = header.matches("\nint gshn_").count() - 2;
    assert_eq!(
        covered, entries,
        "a C entry point is missing from gshn_core::fused::OPS"
    );
}

static RING_ROW_PTR: [i32; 4] = [0, 1, 2, 3];
static RING_SRC: [i32; 3] = [1, 2, 0];

/// A 3-node ring as the C ABI takes it.
fn ring() -> gshn_core::capi::GshnGraph {
    gshn_core::capi::GshnGraph {
        num_nodes: 3,
        num_edges: 3,
        row_ptr: RING_ROW_PTR.as_ptr(),
        src: RING_SRC.as_ptr(),
    }
}

/// Sizes whose element count or byte size overflows are argument errors, never a wrapped
/// small size that the kernels then read past (a segfault), nor an abort.
#[test]
fn overflowing_sizes_are_argument_errors() {
    use gshn_core::capi::*;
    use std::ffi::c_void;
    let buf = [0.5f32; 8];
    let mut out = [0f32; 8];
    let (p, o) = (
        buf.as_ptr() as *const c_void,
        out.as_mut_ptr() as *mut c_void,
    );
    let big = (1i64 << 62) + 1;
    // SAFETY: every call below is refused before any pointer is read or written.
    unsafe {
        let rc = gshn_infonce_forward_cpu(GSHN_F32, 4, big, 1, p, p, p, o, o, o);
        assert_eq!(rc, GSHN_ERR_INVALID_ARGUMENT);
        let rc = gshn_infonce_forward_cpu(GSHN_F32, 4, 1 << 62, 1, p, p, p, o, o, o);
        assert_eq!(rc, GSHN_ERR_INVALID_ARGUMENT);
        let params = gshn_lif_params_default();
        let rc = gshn_lif_forward_cpu(&params, GSHN_F32, 1 << 32, 1 << 32, p, o, o, o);
        assert_eq!(rc, GSHN_ERR_INVALID_ARGUMENT);
        let rc = gshn_lif_forward_cpu(&params, GSHN_F32, 4, big, p, o, o, o);
        assert_eq!(rc, GSHN_ERR_INVALID_ARGUMENT);
        let g = ring();
        let null = std::ptr::null();
        let rc = gshn_gat_forward_cpu(
            GSHN_F32,
            &g,
            1 << 62,
            2,
            0.2,
            p,
            p,
            p,
            null,
            o,
            o,
            o.cast_const().cast_mut(),
        );
        assert_eq!(rc, GSHN_ERR_INVALID_ARGUMENT);
        let rc = gshn_aggregate_forward_cpu(GSHN_F32, &g, 2, 1 << 62, 4, p, p, o);
        assert_eq!(rc, GSHN_ERR_INVALID_ARGUMENT);
        let msg = std::ffi::CStr::from_ptr(gshn_last_error()).to_string_lossy();
        assert!(msg.contains("larger than any memory"), "{msg}");
    }
}

/// GAT forward with alpha re-reads its inputs after writing out and lse: aliasing them is a
/// clear error (it gave a wrong alpha), and without alpha it is left to the caller as before.
#[test]
fn gat_alpha_refuses_outputs_that_alias_inputs() {
    use gshn_core::capi::*;
    use std::ffi::c_void;
    let g = ring();
    let (h, f) = (2usize, 2usize);
    let mut z: Vec<f32> = (0..3 * h * f).map(|i| (i as f32 * 0.37).sin()).collect();
    let a: Vec<f32> = (0..h * f).map(|i| (i as f32 * 0.11).cos()).collect();
    let (mut lse, mut alpha) = (vec![0f32; 3 * h], vec![0f32; 3 * h]);
    let ap = a.as_ptr() as *const c_void;
    let null = std::ptr::null();
    // SAFETY: every buffer holds the elements the header asks for; `z` doubles as `out`.
    let rc = unsafe {
        gshn_gat_forward_cpu(
            GSHN_F32,
            &g,
            h as i64,
            f as i64,
            0.2,
            z.as_ptr() as *const c_void,
            ap,
            ap,
            null,
            z.as_mut_ptr() as *mut c_void,
            lse.as_mut_ptr() as *mut c_void,
            alpha.as_mut_ptr() as *mut c_void,
        )
    };
    assert_eq!(rc, GSHN_ERR_INVALID_ARGUMENT);
    // SAFETY: as above.
    let msg = unsafe { std::ffi::CStr::from_ptr(gshn_last_error()) }.to_string_lossy();
    assert!(msg.contains("z shares memory"), "{msg}");
}

/// A buffer's address for the C ABI.
fn ptr(s: &mut gshn_core::tensor::Storage) -> *mut std::ffi::c_void {
    use gshn_core::tensor::Storage;
    match s {
        Storage::F32(v) => v.as_mut_ptr().cast(),
        Storage::F64(v) => v.as_mut_ptr().cast(),
        Storage::I32(v) => v.as_mut_ptr().cast(),
        Storage::BF16(v) => v.as_mut_ptr().cast(),
        Storage::F16(v) => v.as_mut_ptr().cast(),
        Storage::U8(v) => v.as_mut_ptr().cast(),
    }
}

/// The `_u8` entries in every dtype: LIF's u8 spikes are its float spikes (and v, h the same
/// bits), and the aggregation and its backward on u8 spikes give the bits they give on the
/// same spikes as floats. (capi_test.c checks the f32 case from C.)
#[test]
fn u8_spike_entries_equal_float_spikes_in_every_dtype() {
    use gshn_core::capi::*;
    use gshn_core::tensor::{DType, Storage};
    let (t, n) = (3usize, 37usize);
    let wave = |len: usize, k: f64, scale: f64, shift: f64| -> Vec<f64> {
        (0..len)
            .map(|i| ((i as f64 + 1.0) * k).sin() * scale + shift)
            .collect()
    };
    let g = ring();
    let (heads, c) = (2usize, 4usize);
    let spikes: Vec<u8> = (0..t * 3 * c).map(|i| ((i * 7) % 3 == 0) as u8).collect();
    let spikes_f64: Vec<f64> = spikes.iter().map(|&b| f64::from(b)).collect();
    for (dt, code) in [
        (DType::F32, GSHN_F32),
        (DType::F64, GSHN_F64),
        (DType::BF16, GSHN_BF16),
        (DType::F16, GSHN_F16),
    ] {
        let float = |v: &[f64]| Storage::from_f64(dt, v).unwrap();
        let stat = if dt.is_half() { DType::F32 } else { dt };
        // LIF
        let mut x = float(&wave(t * n, 0.7, 1.5, 0.9));
        let params = gshn_lif_params_default();
        let [mut s, mut v, mut h] = [dt, dt, stat].map(|d| Storage::zeros(d, t * n));
        let (mut s8, mut v8, mut h8) = (
            vec![7u8; t * n],
            Storage::zeros(dt, t * n),
            Storage::zeros(stat, t * n),
        );
        let (ti, ni) = (t as i64, n as i64);
        // SAFETY: every buffer holds T·N elements of its dtype.
        unsafe {
            let rc = gshn_lif_forward_cpu(
                &params,
                code,
                ti,
                ni,
                ptr(&mut x),
                ptr(&mut s),
                ptr(&mut v),
                ptr(&mut h),
            );
            assert_eq!(rc, GSHN_OK, "{dt:?}");
            let rc = gshn_lif_forward_u8_cpu(
                &params,
                code,
                ti,
                ni,
                ptr(&mut x),
                s8.as_mut_ptr(),
                ptr(&mut v8),
                ptr(&mut h8),
            );
            assert_eq!(rc, GSHN_OK, "{dt:?}");
        }
        let fired: Vec<u8> = s.to_f32_vec().unwrap().iter().map(|&x| x as u8).collect();
        assert_eq!(s8, fired, "{dt:?}: u8 spikes");
        assert!(
            s8.contains(&1) && s8.contains(&0),
            "{dt:?}: the case must fire some spikes"
        );
        assert!((v8 == v) && (h8 == h), "{dt:?}: v or h differ");
        // the aggregation on the ring (3 nodes, 3 edges)
        let mut alpha = float(&wave(3 * heads, 0.9, 0.5, 0.5));
        let mut gy = float(&wave(t * 3 * c, 1.3, 1.0, 0.0));
        let mut sf = float(&spikes_f64);
        let mut s8 = spikes.clone();
        let [mut y, mut y8, mut gs, mut gs8] = [0; 4].map(|_| Storage::zeros(dt, t * 3 * c));
        let [mut ga, mut ga8] = [0; 2].map(|_| Storage::zeros(dt, 3 * heads));
        let (hi, ci) = (heads as i64, c as i64);
        let s8p = s8.as_mut_ptr();
        // SAFETY: alpha [E=3, H], s / y / grad_y / grad_s [T, 3, C] in their dtypes.
        unsafe {
            for rc in [
                gshn_aggregate_forward_cpu(
                    code,
                    &g,
                    hi,
                    ti,
                    ci,
                    ptr(&mut alpha),
                    ptr(&mut sf),
                    ptr(&mut y),
                ),
                gshn_aggregate_forward_u8_cpu(
                    code,
                    &g,
                    hi,
                    ti,
                    ci,
                    ptr(&mut alpha),
                    s8p,
                    ptr(&mut y8),
                ),
                gshn_aggregate_backward_cpu(
                    code,
                    &g,
                    hi,
                    ti,
                    ci,
                    ptr(&mut alpha),
                    ptr(&mut sf),
                    ptr(&mut gy),
                    ptr(&mut ga),
                    ptr(&mut gs),
                ),
                gshn_aggregate_backward_u8_cpu(
                    code,
                    &g,
                    hi,
                    ti,
                    ci,
                    ptr(&mut alpha),
                    s8p,
                    ptr(&mut gy),
                    ptr(&mut ga8),
                    ptr(&mut gs8),
                ),
            ] {
                assert_eq!(rc, GSHN_OK, "{dt:?}");
            }
        }
        assert!(
            y8 == y && ga8 == ga && gs8 == gs,
            "{dt:?}: the aggregation differs on u8 spikes"
        );
        assert!(
            y.to_f32_vec().unwrap().iter().any(|&v| v != 0.0),
            "{dt:?}: y is all zeros"
        );
    }
}
