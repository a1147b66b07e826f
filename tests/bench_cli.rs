//! `gshn bench` (issue 20): a small CPU run writes a complete report — the schema, every case,
//! every number finite and positive — and bad arguments are errors. Timing is never asserted.

use gshn::bench::{cases, parse_dtype, Numerics, Overrides, Pass, Size};
use serde_json::Value;
use std::process::Command;

fn gshn(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_gshn"))
        .args(args)
        .output()
        .expect("running gshn")
}

fn positive(v: &Value, what: &str) -> f64 {
    let x = v
        .as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"));
    assert!(x.is_finite() && x > 0.0, "{what} = {x}");
    x
}

#[test]
fn small_cpu_bench_writes_a_complete_report() {
    let dir = std::env::temp_dir().join(format!("gshn-bench-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("report.json");
    let out = gshn(&[
        "bench",
        "--shapes",
        "small",
        "--device",
        "cpu",
        "--dtype",
        "f32,f64,bf16,f16,tf32",
        "--budget-ms",
        "5",
        "--json",
        json.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for key in ["gshn", "commit", "kernels", "device"] {
        assert!(r[key].as_str().is_some_and(|s| !s.is_empty()), "{key}");
    }
    assert_eq!(r["size"], "small");
    positive(&r["floors"]["copy_gbps"], "copy_gbps");
    let gemm = r["floors"]["gemm"].as_array().unwrap();
    assert_eq!(gemm.len(), 4, "one GEMM floor per storage dtype");
    for g in gemm {
        positive(&g["tflops"], "gemm tflops");
        let (n, k) = (g["n"].as_u64().unwrap(), g["k"].as_u64().unwrap());
        assert!(
            k > 0 && k <= n.min(512),
            "the CPU's floor has depth ≤ 512: {g}"
        );
    }

    // Every case of every op in every storage dtype, once (the optimizer and the step, which
    // take f32 master weights, not in half), and InfoNCE in its TF32 mode; each with its floor
    // and a positive rate.
    let all: Vec<String> = gshn::bench::OPS.iter().map(|s| s.to_string()).collect();
    let none = Overrides::new();
    let dtypes = ["f32", "f64", "bf16", "f16", "tf32"].map(|d| parse_dtype(d).unwrap());
    let want = cases(Size::Small, &none, &all, &dtypes).unwrap();
    let rows = r["rows"].as_array().unwrap();
    assert_eq!(rows.len(), want.len());
    assert_eq!(
        want.len(),
        2 * (6 * 2 + 2 + 1) + 2 * (6 * 2 + 1) + 2,
        "8 kernels (6 with a backward) and the training step in f32 and f64, the kernels but \
         the optimizer in bf16 and f16, InfoNCE fwd and bwd in TF32"
    );
    for (row, case) in rows.iter().zip(&want) {
        let id = row["id"].as_str().unwrap();
        assert_eq!(id, case.id);
        for k in ["ms", "ms_min", "ms_max"] {
            positive(&row[k], &format!("{id} {k}"));
        }
        assert!(row["ms_min"].as_f64() <= row["ms"].as_f64());
        assert!(row["ms"].as_f64() <= row["ms_max"].as_f64());
        assert!(row["calls"].as_u64().unwrap() >= 3, "{id}: calls");
        let (bytes, flops) = (
            row["bytes"].as_f64().unwrap(),
            row["flops"].as_f64().unwrap(),
        );
        if case.op == "step" {
            positive(&row["items_per_s"], &format!("{id} graphs/s"));
        } else {
            assert!((bytes > 0.0) != (flops > 0.0), "{id}: one of bytes / flops");
            positive(&row["of_floor"], &format!("{id} of_floor"));
        }
        if bytes > 0.0 {
            positive(&row["gbps"], &format!("{id} gbps"));
        } else if flops > 0.0 {
            positive(&row["tflops"], &format!("{id} tflops"));
        }
        assert!(stdout.contains(&case.label()), "table row {}", case.label());
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_arguments_are_errors() {
    for (args, msg) in [
        (
            &["bench", "--ops", "nope", "--device", "cpu"][..],
            "unknown op",
        ),
        (
            &["bench", "--dtype", "f8", "--device", "cpu"][..],
            "f32, f64, bf16 and f16",
        ),
        (
            &["bench", "--shapes", "huge", "--device", "cpu"][..],
            "small, default or large",
        ),
    ] {
        let out = gshn(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(msg),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn byte_and_flop_counts_follow_the_documented_formulas() {
    let ops: Vec<String> = ["lif", "infonce", "adamw", "matmul"]
        .map(String::from)
        .to_vec();
    let c = cases(Size::Default, &Overrides::new(), &ops, &[Numerics::F32]).unwrap();
    let find = |id: &str| c.iter().find(|c| c.id == id).unwrap();
    // LIF: 4 tensors of T·N f32 per pass (T = 8, N = 2^20).
    assert_eq!(find("lif_fwd_f32").bytes, 16.0 * 8.0 * (1 << 20) as f64);
    assert_eq!(find("lif_bwd_f32").pass, Pass::Bwd);
    // InfoNCE B = 4096, D = 256: 2·B²·D forward, 3× that backward.
    let gemm = 2.0 * 4096f64 * 4096.0 * 256.0;
    assert_eq!(find("infonce_fwd_f32").flops, gemm);
    assert_eq!(find("infonce_bwd_f32").flops, 3.0 * gemm);
    assert_eq!(find("adamw_fwd_f32").bytes, 7.0 * 4.0 * (1 << 24) as f64);
    assert_eq!(find("matmul_fwd_f32").flops, 2.0 * 2048f64.powi(3));
}

#[test]
fn a_shapes_file_sets_dims_and_picks_the_ops() {
    let dir = std::env::temp_dir().join(format!("gshn-bench-shapes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (toml, json) = (dir.join("shapes.toml"), dir.join("r.json"));
    std::fs::write(
        &toml,
        "base = \"small\"\n[lif]\nN = 1000\n[matmul]\nM = 64\n",
    )
    .unwrap();
    let out = gshn(&[
        "bench",
        "--device",
        "cpu",
        "--budget-ms",
        "2",
        "--shapes",
        toml.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let ids: Vec<&str> = r["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["lif_fwd_f32", "lif_bwd_f32", "matmul_fwd_f32"]);
    assert_eq!(r["rows"][0]["dims"]["N"], 1000);
    assert_eq!(r["rows"][0]["dims"]["T"], 4, "the rest from base = small");
    assert_eq!(r["rows"][2]["dims"]["M"], 64);
    // A dim the op does not have, and a file with no op, are errors naming the problem.
    std::fs::write(&toml, "[lif]\nB = 3\n").unwrap();
    let out = gshn(&[
        "bench",
        "--device",
        "cpu",
        "--shapes",
        toml.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no dim \"B\""),
        "{err}"
    );
    std::fs::write(&toml, "base = \"small\"\n").unwrap();
    let out = gshn(&[
        "bench",
        "--device",
        "cpu",
        "--shapes",
        toml.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    std::fs::remove_dir_all(&dir).ok();
}
