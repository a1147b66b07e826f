//! Every launch checked against the parameter list of the kernel it calls, as its PTX declares
//! it. `cuLaunchKernel` copies each parameter by the size the kernel declares, from whatever the
//! caller's pointer points at: one argument too few, an `int` where the kernel takes a `float`,
//! or a 4-byte value where it takes 8 bytes, runs the kernel on garbage without an error. Here it
//! is an error naming the kernel and the argument, before anything is queued.

use super::launch::{Arg, PermMeta};
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::sync::Arc;

/// One kernel parameter as the PTX declares it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Param {
    /// `.u32` / `.s32` / `.b32`: an `int` or `unsigned`.
    Int32,
    /// `.u64` / `.s64` / `.b64`: a pointer or a `long long`.
    Word64,
    F32,
    F64,
    /// `.align A .b8 name[N]`: a struct passed by value, of N bytes.
    Bytes(usize),
    /// Any other declaration (e.g. `.u8` for a `bool`): no argument matches it.
    Other,
}

impl Param {
    fn of(decl: &str) -> Param {
        let words: Vec<&str> = decl.split_whitespace().collect();
        match words.as_slice() {
            [".param", ".u32" | ".s32" | ".b32", _] => Param::Int32,
            [".param", ".u64" | ".s64" | ".b64", _] => Param::Word64,
            [".param", ".f32", _] => Param::F32,
            [".param", ".f64", _] => Param::F64,
            [".param", ".align", _, ".b8", name] => name
                .split_once('[')
                .and_then(|(_, n)| n.strip_suffix(']'))
                .and_then(|n| n.parse().ok())
                .map_or(Param::Other, Param::Bytes),
            _ => Param::Other,
        }
    }

    fn takes(self, arg: &Arg) -> bool {
        match arg {
            Arg::Ptr(_) | Arg::I64(_) => self == Param::Word64,
            Arg::I32(_) | Arg::U32(_) => self == Param::Int32,
            Arg::F32(_) => self == Param::F32,
            Arg::F64(_) => self == Param::F64,
            Arg::Perm(_) => self == Param::Bytes(std::mem::size_of::<PermMeta>()),
        }
    }
}

/// The parameter lists of every `.entry` in a PTX module, by kernel name.
pub(super) fn entries(ptx: &str) -> HashMap<String, Arc<[Param]>> {
    let mut found = HashMap::new();
    let mut rest = ptx;
    while let Some(at) = rest.find(".entry ") {
        rest = &rest[at + ".entry ".len()..];
        let Some(open) = rest.find('(') else { break };
        let name = rest[..open].trim().to_string();
        let Some(close) = rest[open..].find(')') else {
            break;
        };
        let list = &rest[open + 1..open + close];
        let params = list
            .split(',')
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(Param::of)
            .collect();
        found.insert(name, params);
        rest = &rest[open + close..];
    }
    found
}

/// Ok when `args` are what `kernel`'s `params` take, one for one; else an error naming the
/// first argument that is not.
pub(super) fn check(kernel: &str, params: &[Param], args: &[Arg]) -> Result<()> {
    if params.len() != args.len() {
        return Err(Error::graph(format!(
            "launch of {kernel}: {} arguments for its {} parameters",
            args.len(),
            params.len()
        )));
    }
    match params.iter().zip(args).position(|(p, a)| !p.takes(a)) {
        None => Ok(()),
        Some(i) => Err(Error::graph(format!(
            "launch of {kernel}: argument {i} is {} but the kernel declares {:?}",
            describe(&args[i]),
            params[i]
        ))),
    }
}

fn describe(arg: &Arg) -> &'static str {
    match arg {
        Arg::Ptr(_) => "a pointer",
        Arg::I32(_) => "an i32",
        Arg::U32(_) => "a u32",
        Arg::I64(_) => "an i64",
        Arg::F32(_) => "an f32",
        Arg::F64(_) => "an f64",
        Arg::Perm(_) => "a PermMeta",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PTX: &str = "
.visible .entry permute_b4(
\t.param .u64 permute_b4_param_0,
\t.param .u64 permute_b4_param_1,
\t.param .u32 permute_b4_param_2,
\t.param .align 8 .b8 permute_b4_param_3[80]
)
{
\tld.param.u64 \t%rd1, [permute_b4_param_0];
}
.func  (.param .b64 func_retval0) __internal_accurate_pow
(
\t.param .b64 __internal_accurate_pow_param_0
)
.visible .entry ew_fill_f32(
\t.param .u64 ew_fill_f32_param_0,
\t.param .f32 ew_fill_f32_param_1,
\t.param .f64 ew_fill_f32_param_2,
\t.param .u8 ew_fill_f32_param_3
)
.visible .entry no_params()
{
}
";

    #[test]
    fn every_entry_of_a_module_is_read_with_its_parameters_and_device_functions_are_not() {
        let e = entries(PTX);
        assert_eq!(e.len(), 3, "{:?}", e.keys());
        let perm_bytes = std::mem::size_of::<PermMeta>();
        assert_eq!(
            perm_bytes, 80,
            "PermMeta no longer matches layout.cu's struct"
        );
        assert_eq!(
            &*e["permute_b4"],
            [Param::Word64, Param::Word64, Param::Int32, Param::Bytes(80)]
        );
        assert_eq!(
            &*e["ew_fill_f32"],
            [Param::Word64, Param::F32, Param::F64, Param::Other]
        );
        assert!(e["no_params"].is_empty());
    }

    #[test]
    fn a_launch_must_pass_what_the_kernel_declares_one_for_one() {
        let e = entries(PTX);
        let perm = PermMeta::default();
        let good = [Arg::Ptr(1), Arg::I64(2), Arg::U32(3), Arg::Perm(perm)];
        check("permute_b4", &e["permute_b4"], &good).unwrap();
        check("no_params", &e["no_params"], &[]).unwrap();

        let short = check("permute_b4", &e["permute_b4"], &good[..3]).unwrap_err();
        assert!(
            short.to_string().contains("3 arguments for its 4"),
            "{short}"
        );
        let mut swapped = good;
        swapped.swap(2, 3);
        let e2 = check("permute_b4", &e["permute_b4"], &swapped).unwrap_err();
        assert!(e2.to_string().contains("argument 2 is a PermMeta"), "{e2}");
        // A float where an int is declared, an int where a pointer is, f32 for f64, and a
        // parameter no argument kind matches: each the error it is.
        for (params, args, at) in [
            (
                &e["permute_b4"],
                [Arg::Ptr(1), Arg::Ptr(2), Arg::F32(3.0), Arg::Perm(perm)],
                2,
            ),
            (
                &e["permute_b4"],
                [Arg::I32(1), Arg::Ptr(2), Arg::I32(3), Arg::Perm(perm)],
                0,
            ),
            (
                &e["ew_fill_f32"],
                [Arg::Ptr(1), Arg::F32(1.0), Arg::F32(2.0), Arg::I32(1)],
                2,
            ),
            (
                &e["ew_fill_f32"],
                [Arg::Ptr(1), Arg::F32(1.0), Arg::F64(2.0), Arg::I32(1)],
                3,
            ),
        ] {
            let err = check("k", params, &args).unwrap_err().to_string();
            assert!(err.contains(&format!("argument {at} ")), "{err}");
        }
    }

    /// The PTX this build embeds (when nvcc was there): every `.entry` is read, every
    /// parameter is of a kind some launch argument can match, and no kernel name is in two
    /// files (the backend finds a kernel by its name alone).
    #[test]
    fn the_embedded_ptx_declares_only_parameters_a_launch_can_pass() {
        let mut seen: HashMap<String, &str> = HashMap::new();
        for (file, ptx, _) in super::super::ptx::KERNEL_SOURCES {
            let Some(ptx) = ptx else { continue };
            let e = entries(ptx);
            assert_eq!(e.len(), ptx.matches(".entry ").count(), "{file}.ptx");
            assert!(!e.is_empty(), "{file}.ptx has no kernels");
            for (name, params) in e {
                assert!(
                    !params.contains(&Param::Other),
                    "{file}.ptx: {name} declares {params:?}"
                );
                if let Some(other) = seen.insert(name.clone(), file) {
                    panic!("{name} is a kernel of both {other}.cu and {file}.cu");
                }
            }
        }
    }
}
