//! Fuzzing of every reader and entry point that hostile input reaches (issue 19): the COCO
//! reader, the safetensors loaders, the config parser, CSR / `edge_index` validation, `gshn op`
//! input decoding and every C ABI entry point.
//!
//! A mutational fuzzer on stable Rust, run by `cargo test`: each target replays its committed
//! inputs (`tests/fuzz/corpus/<target>/`, and crashes kept as `tests/fuzz/regressions/<target>/`),
//! then mutates them (bit flips, interesting integers, dictionary tokens, splices) until its
//! time is up, keeping as new corpus entries the inputs that reach an outcome (an error message,
//! digits removed) not seen before. Why not cargo-fuzz: libFuzzer's instrumentation needs a
//! nightly toolchain, and CI's machine has one stable toolchain.
//!
//! Every input must give an answer (`Ok` or a typed error) with no panic, at most `MEM_BOUND`
//! bytes of heap above what was live before (a counting global allocator), within
//! `TIME_BOUND`. A failing input is written to `target/fuzz-failures/<target>/`; copy it into
//! `tests/fuzz/regressions/<target>/` to keep it as a test once fixed.
//!
//! `GSHN_FUZZ_SECS` (default 2) sets each target's time, `GSHN_FUZZ_SEED` the mutation seed
//! (default: from the clock, printed). CI runs 20 s per target.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use gshn::capi::*;
use gshn::util::panic_message;
use gshn::util::rng::{mix64, SplitMix64};
use gshn::{CpuBackend, Tensor};

// ---- the harness --------------------------------------------------------------------------

/// Heap an input may take on top of what was live: the 500 MB resident bound.
const MEM_BOUND: usize = 500 << 20;
/// Time an input may take (a debug build, on a busy 2-core machine).
const TIME_BOUND: Duration = Duration::from_secs(5);
/// Longest mutated input.
const MAX_LEN: usize = 64 << 10;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let now = LIVE.fetch_add(n, Relaxed) + n;
    PEAK.fetch_max(now, Relaxed);
}

// SAFETY: every call forwards to System with the caller's layout; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = System.alloc(l);
        if !p.is_null() {
            grew(l.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(l);
        if !p.is_null() {
            grew(l.size());
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l);
        LIVE.fetch_sub(l.size(), Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = System.realloc(p, l, new);
        if !q.is_null() {
            if new >= l.size() {
                grew(new - l.size());
            } else {
                LIVE.fetch_sub(l.size() - new, Relaxed);
            }
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// One target at a time: the heap counters and the clock measure one input.
static SERIAL: Mutex<()> = Mutex::new(());

/// Tokens that parsers of JSON, TOML and safetensors headers treat specially.
const DICT: &[&[u8]] = &[
    b"-1",
    b"0",
    b"1e308",
    b"-1e308",
    b"NaN",
    b"nan",
    b"inf",
    b"2147483648",
    b"4294967296",
    b"9223372036854775807",
    b"18446744073709551616",
    b"null",
    b"true",
    b"[]",
    b"{}",
    b"\"\"",
    b"[[",
    b"{\"",
    b"\"id\"",
    b"\"image_id\"",
    b"\"segments_info\"",
    b"\"file_name\"",
    b"\"category_id\"",
    b"\"shape\"",
    b"\"dtype\"",
    b"\"data_offsets\"",
    b"\"F64\"",
    b"\"I32\"",
    b"\"BF16\"",
    b"\"U8\"",
    b" = ",
    b"\n[",
    b"]\n",
    b"\\u0000",
];

/// Little-endian integers at the edges of i32, i64 and usize.
const INTS: &[u64] = &[
    0,
    1,
    0xff,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    1 << 32,
    (1 << 62) + 1,
    1 << 60,
    u64::MAX,
    i64::MAX as u64,
];

fn mutate(rng: &mut SplitMix64, data: &mut Vec<u8>, corpus: &[Vec<u8>]) {
    for _ in 0..1 + rng.below(4) {
        let len = data.len();
        let at = rng.below(len + 1);
        match rng.below(9) {
            0 if len > 0 => data[at.min(len - 1)] ^= 1 << rng.below(8),
            1 if len > 0 => {
                data[at.min(len - 1)] = [0, 1, 0x7f, 0x80, 0xff, b'-', b'9', b'"'][rng.below(8)]
            }
            2 => {
                let n = rng.below(17).min(len - at);
                data.drain(at..at + n);
            }
            3 => {
                let bytes: Vec<u8> = (0..1 + rng.below(8))
                    .map(|_| rng.next_u64() as u8)
                    .collect();
                data.splice(at..at, bytes);
            }
            4 => {
                let t = DICT[rng.below(DICT.len())];
                data.splice(at..at, t.iter().copied());
            }
            5 => {
                let t = DICT[rng.below(DICT.len())];
                let end = (at + t.len()).min(len);
                data.splice(at..end, t.iter().copied());
            }
            6 => {
                let v = INTS[rng.below(INTS.len())].to_le_bytes();
                let w = [4, 8][rng.below(2)];
                let end = (at + w).min(len);
                data.splice(at..end, v[..w].iter().copied());
            }
            7 if len > 0 => {
                // Repeat a slice: long arrays, nested brackets, repeated keys.
                let from = rng.below(len);
                let n = (1 + rng.below(64)).min(len - from);
                let piece = data[from..from + n].to_vec();
                for _ in 0..1 + rng.below(4) {
                    data.splice(at..at, piece.iter().copied());
                }
            }
            8 => {
                // Splice: this input's head, another's tail.
                let other = &corpus[rng.below(corpus.len())];
                let from = rng.below(other.len() + 1);
                data.truncate(at);
                data.extend_from_slice(&other[from..]);
            }
            _ => data.truncate(at),
        }
    }
    data.truncate(MAX_LEN);
}

fn read_inputs(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().is_file())
                .map(|e| {
                    let p = e.path();
                    (p.display().to_string(), std::fs::read(&p).unwrap())
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Runs one input; `Err` says how it broke the rules.
fn check(run: &dyn Fn(&[u8]) -> String, data: &[u8]) -> Result<String, String> {
    let base = LIVE.load(Relaxed);
    PEAK.store(base, Relaxed);
    let t0 = Instant::now();
    let r = catch_unwind(AssertUnwindSafe(|| run(data)));
    let (dt, heap) = (t0.elapsed(), PEAK.load(Relaxed).saturating_sub(base));
    match r {
        Err(p) => Err(format!("panic: {}", panic_message(&*p))),
        Ok(_) if heap > MEM_BOUND => Err(format!("took {heap} bytes of heap")),
        Ok(_) if dt > TIME_BOUND => Err(format!("took {dt:?}")),
        Ok(outcome) => Ok(outcome),
    }
}

/// The classes an outcome reaches: each of its lines (one per step of a target) without its
/// numbers. An input that reaches a new class is kept as a corpus entry.
fn classes(outcome: &str) -> Vec<String> {
    outcome
        .lines()
        .map(|l| {
            l.chars()
                .filter(|c| !c.is_ascii_digit())
                .take(120)
                .collect()
        })
        .collect()
}

fn fuzz(target: &str, run: &dyn Fn(&[u8]) -> String) {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    std::panic::set_hook(Box::new(|_| {})); // panics are reported with their input below
    let env = |k: &str| std::env::var(k).ok();
    let secs: f64 = env("GSHN_FUZZ_SECS").map_or(2.0, |s| s.parse().expect("GSHN_FUZZ_SECS"));
    let seed: u64 = env("GSHN_FUZZ_SEED").map_or_else(
        || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        },
        |s| s.parse().expect("GSHN_FUZZ_SEED"),
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz");
    let mut committed = read_inputs(&root.join("corpus").join(target));
    assert!(!committed.is_empty(), "no seed corpus for {target}");
    committed.extend(read_inputs(&root.join("regressions").join(target)));

    // A failing input is kept for replay; the message says where.
    let keep = |data: &[u8], why: String| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target/fuzz-failures")
            .join(target);
        std::fs::create_dir_all(&dir).unwrap();
        let hash = data
            .iter()
            .fold(data.len() as u64, |a, &b| mix64(a ^ b as u64));
        std::fs::write(dir.join(format!("{hash:016x}")), data).unwrap();
        format!("{why} (input: target/fuzz-failures/{target}/{hash:016x})")
    };
    let mut failures = Vec::new();
    let mut seen = HashSet::new();
    let mut corpus = Vec::new();
    for (path, data) in committed {
        match check(run, &data) {
            Ok(o) => seen.extend(classes(&o)),
            Err(why) => failures.push(keep(&data, format!("{path}: {why}"))),
        }
        corpus.push(data);
    }
    let mut rng = SplitMix64::new(seed);
    let start = Instant::now();
    let mut execs = 0usize;
    while start.elapsed().as_secs_f64() < secs && failures.len() < 5 {
        let mut data = corpus[rng.below(corpus.len())].clone();
        mutate(&mut rng, &mut data, &corpus);
        execs += 1;
        match check(run, &data) {
            Ok(o) => {
                let new = classes(&o)
                    .into_iter()
                    .fold(false, |n, c| seen.insert(c) | n);
                if new {
                    corpus.push(data);
                }
            }
            Err(why) => failures.push(keep(&data, why)),
        }
    }
    let _ = std::panic::take_hook();
    println!(
        "fuzz {target}: {execs} inputs in {secs} s (seed {seed}), {} outcome classes, corpus {}",
        seen.len(),
        corpus.len()
    );
    assert!(
        failures.is_empty(),
        "fuzz {target} (GSHN_FUZZ_SEED={seed}):\n{}",
        failures.join("\n")
    );
}

/// A scratch folder per target (removed and made anew).
fn scratch(target: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gshn-fuzz-{}-{target}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// An outcome as text, without the scratch folder's name.
fn outcome<T>(r: Result<T, impl std::fmt::Display>, dir: &Path) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => e.to_string().replace(&dir.display().to_string(), ""),
    }
}

// ---- targets: files ------------------------------------------------------------------------

/// The four files of a one-image COCO split, in this order (see tests/fuzz/make_seeds.py).
const COCO_SEP: &[u8] = b"\n@@gshn-fuzz@@\n";

#[test]
fn fuzz_coco_reader() {
    use gshn::data::{graph_from_sample, Dataset, FeatureConfig, GraphConfig, LoadOptions};
    let dir = scratch("coco");
    let split = dir.join("train");
    for d in ["images", "panoptic"] {
        std::fs::create_dir_all(split.join(d)).unwrap();
    }
    let files = [
        "panoptic.json",
        "captions.json",
        "panoptic/000000000001.png",
        "images/000000000001.png",
    ];
    fuzz("coco", &|data| {
        let mut parts = Vec::new();
        let mut rest = data;
        while parts.len() < files.len() - 1 {
            match rest.windows(COCO_SEP.len()).position(|w| w == COCO_SEP) {
                Some(i) => {
                    parts.push(&rest[..i]);
                    rest = &rest[i + COCO_SEP.len()..];
                }
                None => break,
            }
        }
        parts.push(rest);
        for (i, f) in files.iter().enumerate() {
            std::fs::write(split.join(f), parts.get(i).copied().unwrap_or_default()).unwrap();
        }
        let paths = gshn::data::SplitPaths::standard(&dir, "train");
        let ds = match Dataset::open(&paths, &LoadOptions::default()) {
            Ok(ds) => ds,
            Err(e) => return outcome::<()>(Err(e), &dir),
        };
        let mut out = format!("opened {}", ds.len());
        for i in 0..ds.len().min(2) {
            let r = ds.get(i).and_then(|s| {
                graph_from_sample(
                    &s,
                    ds.num_categories(),
                    &GraphConfig::default(),
                    &FeatureConfig::default(),
                )
            });
            out += &format!("\n{}", outcome(r, &dir));
        }
        out
    });
}

#[test]
fn fuzz_safetensors_loaders() {
    let dir = scratch("safetensors");
    let (file, run) = (dir.join("x.safetensors"), dir.join("run"));
    std::fs::create_dir_all(&run).unwrap();
    fuzz("safetensors", &|data| {
        std::fs::write(&file, data).unwrap();
        std::fs::write(run.join("checkpoint.safetensors"), data).unwrap();
        [
            outcome(gshn::tensor::io::load_safetensors(&file), &dir),
            outcome(gshn::data::features::load_feature_map(&file, None), &dir),
            outcome(gshn::train::checkpoint::Checkpoint::load_latest(&run), &dir),
        ]
        .join("\n")
    });
}

#[test]
fn fuzz_config_parser() {
    let dir = scratch("config");
    let file = dir.join("run.toml");
    fuzz("config", &|data| {
        std::fs::write(&file, data).unwrap();
        // TOML errors quote the input between their first and last lines.
        let o = outcome(gshn::train::RunConfig::load(&file), &dir);
        let mut lines = o.lines();
        let first = lines.next().unwrap_or_default().to_string();
        first + " " + lines.last().unwrap_or_default()
    });
}

// ---- targets: graphs and gshn op -------------------------------------------------------------

fn i32s(bytes: &[u8]) -> Vec<i32> {
    bytes
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn gat_inputs(n: usize, index: Vec<(&str, Tensor)>) -> Vec<(String, Tensor)> {
    let vals = |len: usize, k: usize| -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 37 + k * 11) % 17) as f32 / 7.0 - 1.1)
            .collect()
    };
    let mut v = vec![
        (
            "z".to_string(),
            Tensor::new([n, 2, 3], vals(n * 6, 1)).unwrap(),
        ),
        ("a_src".into(), Tensor::new([2, 3], vals(6, 2)).unwrap()),
        ("a_dst".into(), Tensor::new([2, 3], vals(6, 3)).unwrap()),
    ];
    v.extend(index.into_iter().map(|(k, t)| (k.to_string(), t)));
    v
}

#[test]
fn fuzz_csr_and_edge_index_validation() {
    use gshn::opcli;
    use serde_json::json;
    // [num_nodes u8][num_edges u8][row_ptr: num_nodes + 1 × i32][src: the rest × i32]
    fuzz("csr", &|data| {
        let (n, e) = (
            *data.first().unwrap_or(&0) as usize,
            *data.get(1).unwrap_or(&0) as usize,
        );
        let ints = i32s(data.get(2..).unwrap_or_default());
        let (row_ptr, src) = ints.split_at((n + 1).min(ints.len()));
        let mut out = vec![outcome(
            gshn::ops::gat::validate_csr("fuzz", n, row_ptr, src),
            Path::new("/"),
        )];
        let csr = vec![
            (
                "row_ptr",
                Tensor::new([row_ptr.len()], row_ptr.to_vec()).unwrap(),
            ),
            ("src", Tensor::new([src.len()], src.to_vec()).unwrap()),
        ];
        let r = opcli::run("gat", &gat_inputs(n, csr), &json!({}), CpuBackend);
        out.push(outcome(r, Path::new("/")));
        // The same integers as a PyG edge_index [2, E].
        let e = e.min(ints.len() / 2);
        let ei = Tensor::new([2, e], ints[..2 * e].to_vec()).unwrap();
        let r = opcli::run(
            "gat",
            &gat_inputs(n, vec![("edge_index", ei)]),
            &json!({}),
            CpuBackend,
        );
        out.push(outcome(r, Path::new("/")));
        out.join("\n")
    });
}

/// Ops in the order of the first byte of an `op` input (see tests/fuzz/make_seeds.py).
const OPS: [&str; 6] = [
    "lif",
    "gat",
    "aggregate",
    "infonce",
    "infonce_1d",
    "segment_mean",
];

#[test]
fn fuzz_op_input_decoding() {
    let dir = scratch("op");
    let (inputs, out) = (dir.join("in.safetensors"), dir.join("out.safetensors"));
    // [op index u8][safetensors of the inputs, with the attributes as JSON in metadata "attrs"]
    fuzz("op", &|data| {
        let Some((&k, file)) = data.split_first() else {
            return "empty".into();
        };
        std::fs::write(&inputs, file).unwrap();
        let attrs = gshn::tensor::io::load_safetensors(&inputs)
            .ok()
            .and_then(|(_, meta)| meta.get("attrs").cloned());
        let r = gshn::opcli::run_files(
            OPS[k as usize % OPS.len()],
            &inputs,
            &out,
            attrs.as_deref(),
            CpuBackend,
            gshn::opcli::Finite::Required,
        );
        outcome(r, &dir)
    });
}

// ---- target: the C ABI -----------------------------------------------------------------------

/// Elements of every buffer the C ABI target hands out (f64-sized, plus a canary tail).
const BUF: usize = 512;
const CANARY: u64 = 0x5a5a_5a5a_a5a5_a5a5;

/// Reads a C ABI call program: each byte decides one argument; an exhausted program reads 0.
struct Program<'a>(&'a [u8]);

impl Program<'_> {
    fn byte(&mut self) -> u8 {
        let (&b, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        b
    }
    /// A size: mostly small, sometimes negative or overflowing.
    fn size(&mut self) -> i64 {
        match self.byte() % 16 {
            b @ 0..=9 => (b % 8) as i64,
            10 => -1,
            11 => i64::MAX,
            12 => 1 << 62,
            13 => (1 << 62) + 1,
            14 => 1 << 31,
            _ => 1 << 40,
        }
    }
    fn float(&mut self, usual: f64) -> f64 {
        [usual, usual, usual, 0.5, 1.0, f64::NAN, f64::INFINITY, -1.0][self.byte() as usize % 8]
    }
}

/// The buffers of one call: `BUF` elements each (f64-sized) then canaries.
struct Buffers {
    data: Vec<Vec<u64>>,
}

/// How the program points an argument at a buffer.
#[derive(Clone, Copy, PartialEq)]
enum Ptr {
    Null,
    Misaligned,
    Buffer(usize),
}

impl Buffers {
    fn new(slots: usize, p: &mut Program) -> Buffers {
        let data = (0..slots)
            .map(|s| {
                let mut v: Vec<u64> = (0..BUF)
                    .map(|i| {
                        // Finite, non-zero values whichever float type reads them.
                        let x = ((i * 31 + s * 7 + p.0.len()) % 23) as f32 / 11.0 - 0.95;
                        let (a, b) = (x.to_bits() as u64, (x as f64 * 0.5).to_bits());
                        if i % 2 == 0 {
                            a | (a << 32)
                        } else {
                            b
                        }
                    })
                    .collect();
                v.extend([CANARY; 8]);
                v
            })
            .collect();
        Buffers { data }
    }
    fn ptr(&mut self, which: Ptr) -> *mut std::ffi::c_void {
        match which {
            Ptr::Null => std::ptr::null_mut(),
            Ptr::Misaligned => (self.data[0].as_mut_ptr() as *mut u8)
                .wrapping_add(1)
                .cast(),
            Ptr::Buffer(i) => self.data[i].as_mut_ptr().cast(),
        }
    }
    fn canaries_intact(&self) -> bool {
        self.data
            .iter()
            .all(|v| v[BUF..].iter().all(|&c| c == CANARY))
    }
}

/// The graph a program describes: declared sizes and index arrays (`BUF` entries each).
fn graph(p: &mut Program, n: i64, e: i64) -> (Vec<i32>, Vec<i32>) {
    let (mut row_ptr, mut src) = (vec![0i32; BUF], vec![0i32; BUF]);
    let (nn, ee) = (n.clamp(0, 64) as usize, e.clamp(0, 64) as usize);
    // A valid CSR, then maybe one corruption.
    for (i, r) in row_ptr.iter_mut().enumerate().take(nn + 1) {
        *r = (ee * i / nn.max(1)) as i32;
    }
    row_ptr[nn] = ee as i32;
    for (k, s) in src.iter_mut().enumerate().take(ee) {
        *s = ((k * 7 + 3) % nn.max(1)) as i32;
    }
    match p.byte() % 6 {
        0 => row_ptr[p.byte() as usize % (nn + 1)] = p.byte() as i32 - 128,
        1 => src[p.byte() as usize % ee.max(1)] = nn as i32,
        2 => src[p.byte() as usize % ee.max(1)] = -1,
        _ => {}
    }
    (row_ptr, src)
}

/// Runs the program's calls; each checks the rules of include/gshn.h.
fn run_capi(data: &[u8]) -> String {
    let mut p = Program(data);
    let mut outcomes = Vec::new();
    for _ in 0..8 {
        if p.0.is_empty() {
            break;
        }
        outcomes.push(capi_call(&mut p));
    }
    outcomes.join("\n")
}

fn capi_call(p: &mut Program) -> String {
    let entry = p.byte() % 8;
    let dtype = [
        GSHN_F32, GSHN_F64, GSHN_F32, GSHN_F64, GSHN_BF16, GSHN_F16, 4, -1,
    ][p.byte() as usize % 8];
    // (half buffers get 4 bytes an element too: their statistics buffers are f32)
    let elem: u128 = if dtype == GSHN_F64 { 8 } else { 4 };
    let (s1, s2, s3) = (p.size(), p.size(), p.size());
    let (n, e) = (p.size(), p.size());
    let (row_ptr, src) = graph(p, n, e);
    let g = GshnGraph {
        num_nodes: n,
        num_edges: e,
        row_ptr: row_ptr.as_ptr(),
        src: src.as_ptr(),
    };
    let mut lp = gshn_lif_params_default();
    lp.tau = p.float(2.0);
    lp.alpha = p.float(2.0);
    lp.surrogate = [0, 1, 2, 3, 0, 1, 4, -1][p.byte() as usize % 8];
    lp.hard_reset = (p.byte() % 2) as i32;
    let slope = p.float(0.2);
    let flag = [0, 1, 1, 7][p.byte() as usize % 4];
    // Buffer slots: each argument points at its own buffer, unless the program says NULL, a
    // misaligned pointer, or the same buffer as argument 0 (aliasing).
    let mut bufs = Buffers::new(13, p);
    let mut ptrs = [Ptr::Null; 13];
    for (i, slot) in ptrs.iter_mut().enumerate() {
        *slot = match p.byte() % 16 {
            0 => Ptr::Null,
            1 => Ptr::Misaligned,
            2 => Ptr::Buffer(0),
            _ => Ptr::Buffer(i),
        };
    }
    let a: Vec<*mut std::ffi::c_void> = ptrs.iter().map(|&w| bufs.ptr(w)).collect();
    let graph_ptr = if p.byte().is_multiple_of(16) {
        std::ptr::null()
    } else {
        &g as *const GshnGraph
    };
    let lp_ptr = if p.byte().is_multiple_of(16) {
        std::ptr::null()
    } else {
        &lp as *const GshnLifParams
    };

    // What each buffer must hold for the declared sizes (elements), to tell a call the library
    // must refuse (a size no buffer can have) from one only a caller could get wrong.
    let prod = |xs: &[i64]| {
        xs.iter()
            .fold(1u128, |acc, &x| acc.saturating_mul(x.max(0) as u128))
    };
    let graph_sizes = [n, e];
    let (sizes, needs): (Vec<i64>, Vec<u128>) = match entry {
        0 | 1 => (vec![s1, s2], vec![prod(&[s1, s2]); 5]),
        2 | 3 => {
            let (h, f) = (s1, s2);
            let (nhf, hf) = (prod(&[n, h, f]), prod(&[h, f]));
            let (eh, nh) = (prod(&[e, h]), prod(&[n, h]));
            (
                vec![n, e, h, f],
                vec![nhf, hf, hf, eh, nhf, nh, eh, nhf, nhf, hf, hf, eh],
            )
        }
        4 | 5 => {
            let (h, t, c) = (s1, s2, s3);
            let (eh, tnc) = (prod(&[e, h]), prod(&[t, n, c]));
            (vec![n, e, h, t, c], vec![eh, tnc, tnc, eh, tnc])
        }
        _ => {
            let (b, d) = (s1, s2);
            let (bd, b) = (prod(&[b, d]), prod(&[b]));
            (vec![s1, s2], vec![bd, bd, 1, 1, b, b, 1, bd, bd, 1])
        }
    };
    let graph_used = (2..6).contains(&entry);
    let illegal = sizes.iter().any(|&s| s < 0)
        || (graph_used && graph_sizes.iter().any(|&s| s > i32::MAX as i64))
        || needs
            .iter()
            .any(|&k| k.saturating_mul(elem) > isize::MAX as u128);
    let fits = !illegal && needs.iter().all(|&k| k * elem <= BUF as u128 * 8);
    if !illegal && !fits {
        return "skipped: sizes a caller's buffers must back".into();
    }
    if graph_used && !illegal && (n as usize + 1 > BUF || e as usize > BUF) {
        return "skipped: graph larger than its arrays".into();
    }
    if std::env::var_os("GSHN_FUZZ_TRACE").is_some() {
        eprintln!("entry {entry} dtype {dtype} sizes {s1} {s2} {s3} graph {n} {e}");
    }
    let cp = |i: usize| a[i] as *const std::ffi::c_void;
    // SAFETY: every pointer is NULL, misaligned (the library must refuse it before reading) or
    // a live buffer holding at least what the declared sizes need; sizes that no buffer could
    // back must be refused before any read.
    let rc = unsafe {
        match entry {
            0 => gshn_lif_forward_cpu(lp_ptr, dtype, s1, s2, cp(0), a[1], a[2], a[3]),
            1 => gshn_lif_backward_cpu(lp_ptr, dtype, s1, s2, cp(0), cp(1), cp(2), a[3], a[4]),
            2 => gshn_gat_forward_cpu(
                dtype,
                graph_ptr,
                s1,
                s2,
                slope,
                cp(0),
                cp(1),
                cp(2),
                cp(3),
                a[4],
                a[5],
                a[6],
            ),
            3 => gshn_gat_backward_cpu(
                dtype,
                graph_ptr,
                s1,
                s2,
                slope,
                cp(0),
                cp(1),
                cp(2),
                cp(3),
                cp(4),
                cp(5),
                cp(7),
                a[8],
                a[9],
                a[10],
                a[11],
            ),
            4 => gshn_aggregate_forward_cpu(dtype, graph_ptr, s1, s2, s3, cp(0), cp(1), a[2]),
            5 => gshn_aggregate_backward_cpu(
                dtype,
                graph_ptr,
                s1,
                s2,
                s3,
                cp(0),
                cp(1),
                cp(2),
                a[3],
                a[4],
            ),
            6 => {
                gshn_infonce_forward_cpu(dtype, s1, s2, flag, cp(0), cp(1), cp(2), a[3], a[4], a[5])
            }
            _ => gshn_infonce_backward_cpu(
                dtype,
                s1,
                s2,
                flag,
                cp(0),
                cp(1),
                cp(2),
                cp(4),
                cp(5),
                cp(6),
                a[7],
                a[8],
                a[9],
            ),
        }
    };
    // SAFETY: gshn_last_error never returns NULL and its text lives until the next call.
    let msg = unsafe { std::ffi::CStr::from_ptr(gshn_last_error()) }
        .to_string_lossy()
        .into_owned();
    assert_ne!(
        rc, GSHN_ERR_PANIC,
        "entry {entry}: a panic reached the boundary: {msg}"
    );
    assert!(
        bufs.canaries_intact(),
        "entry {entry}: wrote past a buffer (rc {rc})"
    );
    assert_eq!(
        rc == GSHN_OK,
        msg.is_empty(),
        "entry {entry}: rc {rc} with message {msg:?}"
    );
    if illegal || !(0..=3).contains(&dtype) {
        assert_ne!(
            rc, GSHN_OK,
            "entry {entry}: sizes {sizes:?} dtype {dtype} accepted"
        );
    }
    format!("{entry}: {rc} {msg}")
}

#[test]
fn fuzz_c_abi_arguments() {
    fuzz("capi", &run_capi);
}
