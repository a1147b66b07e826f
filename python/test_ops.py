"""Tests of the torch.library ops (torch.ops.gshn.*) behind gshn_torch: `torch.library.opcheck`
of every op, gradients in float64 against the pure-PyTorch references (and
`torch.autograd.gradcheck`), `torch.compile(fullgraph=True)` with no graph break, InfoNCE with
gathered negatives and in its tf32 / bf16 precision modes, every op on bfloat16 and float16
tensors (float32 statistics), and where the library is looked for. The class `Cuda` (skipped
without a CUDA device and a CUDA build of the library; scripts/gpu_run.sh runs it) holds every
op on CUDA tensors to its CPU path, runs opcheck and torch.compile there.
Run: bash python/run_tests.sh
"""
from __future__ import annotations

import math
import os
import sys
import unittest
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import ddp_example  # noqa: E402
import gshn_torch as gt  # noqa: E402
from test_bridge import leaves, lif_x, no_call, rand_graph  # noqa: E402

F32, F64, BF16, F16 = torch.float32, torch.float64, torch.bfloat16, torch.float16
OPS = torch.ops.gshn
LIF_CFG = (1.0, 0.0, True, False, "atan", 2.0)  # v_th, v_reset, decay_input, detach_reset, ...


def unit_rows(*shape, dtype=F64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=dtype), dim=-1).requires_grad_()


def log_scale(value=1 / 0.07, dtype=F64):
    return torch.tensor(math.log(value), dtype=dtype, requires_grad=True)


def rel_err(a, b):
    """max |a - b| / max |b|."""
    return ((a - b).abs().max() / b.abs().max()).item()


def forward_cases(dtype):
    """(name, op, args) for every forward op, inputs requiring gradients."""
    ei, g = rand_graph(6, 10)
    e = ei.shape[1]
    z, a_s, a_d, eb, al, s = leaves((6, 2, 3), (2, 3), (2, 3), (e, 2), (e, 2), (3, 6, 4),
                                    dtype=dtype)
    x = lif_x(4, 10).detach().to(dtype).view(4, 2, 5).requires_grad_()
    tau = torch.tensor(2.5, dtype=dtype, requires_grad=True)
    a, p = unit_rows(5, 8, dtype=dtype), unit_rows(12, 8, dtype=dtype, seed=1)
    ls = log_scale(dtype=dtype)
    gr = (g.row_ptr, g.src)
    return [
        ("lif", OPS.lif, (x, 2.0, *LIF_CFG)),
        ("plif", OPS.plif, (x, tau, 1.0, None, True, True, "sigmoid", 4.0)),
        ("gat", OPS.gat, (z, a_s, a_d, g.to_csr(eb.detach()).requires_grad_(), *gr, 0.2)),
        ("gat without edge_bias", OPS.gat, (z, a_s, a_d, None, *gr, 0.2)),
        ("aggregate", OPS.aggregate, (g.to_csr(al.detach()).requires_grad_(), s, *gr)),
        ("infonce", OPS.infonce, (a, p[:5], ls)),
        ("infonce_1d", OPS.infonce_1d, (a, p, ls, 4, "f32")),
        ("infonce_1d bf16", OPS.infonce_1d, (a, p, ls, 0, "bf16")),
        ("infonce_1d tf32", OPS.infonce_1d, (a, p, ls, 7, "tf32")),
    ]


def u8_cases(dtype):
    """(name, op, args) of the ops on uint8 spikes: LIF writing them (no backward), the
    aggregation and its backward reading them (alpha requires gradients)."""
    ei, g = rand_graph(6, 10)
    gen = torch.Generator().manual_seed(2)
    x = lif_x(4, 10).detach().to(dtype).view(4, 2, 5)
    (al,) = leaves((ei.shape[1], 2), dtype=dtype)
    alpha = g.to_csr(al.detach()).requires_grad_()
    s8 = (torch.rand(3, 6, 4, generator=gen) < 0.4).to(torch.uint8)
    gy = torch.randn(3, 6, 4, generator=gen, dtype=dtype)
    gr = (g.row_ptr, g.src)
    return [("lif_u8", OPS.lif_u8, (x, 2.0, *LIF_CFG)),
            ("plif_u8", OPS.plif_u8, (x, torch.tensor(2.5, dtype=dtype), *LIF_CFG)),
            ("aggregate u8", OPS.aggregate, (alpha, s8, *gr))] + [
            (f"aggregate_backward u8 need={need}", OPS.aggregate_backward,
             (alpha.detach(), s8, *gr, gy, *need))
            for need in ((True, True), (True, False), (False, True))]


def backward_cases(dtype):
    """(name, op, args) for every backward op, with the saved tensors of a forward run."""
    cases = []
    for name, op, args in forward_cases(dtype):
        args = tuple(t.detach() if torch.is_tensor(t) else t for t in args)
        outs = op(*args)
        if name in ("lif", "plif"):
            x, tau, *cfg = args
            h = outs[2]  # float32 in a half call: the gradients are in the call's dtype
            gs, gv = torch.randn(h.shape, dtype=dtype), torch.randn(h.shape, dtype=dtype)
            bwd = OPS.lif_backward if name == "lif" else OPS.plif_backward
            cases.append((name, bwd, (h, gs, gv, tau, *cfg)))
        elif name.startswith("gat"):
            out, lse = outs
            cases.append((name, OPS.gat_backward, args + (out, lse, torch.randn_like(out))))
        elif name == "aggregate":
            gy = torch.randn_like(outs)
            for need in ((True, True), (True, False), (False, True)):
                cases.append((f"aggregate need={need}", OPS.aggregate_backward,
                              args + (gy, *need)))
        elif name == "infonce":
            cases.append((name, OPS.infonce_backward,
                          args + tuple(outs[1:]) + (torch.full_like(outs[0], 1.5),)))
        else:
            a, p, ls, offset, precision = args
            cases.append((name, OPS.infonce_1d_backward,
                          (a, p, ls, outs[1], torch.ones_like(outs[0]), offset, precision)))
    return cases


class OpCheck(unittest.TestCase):
    def test_forward_ops(self):
        for dtype in (F32, F64, BF16, F16):
            for name, op, args in forward_cases(dtype):
                with self.subTest(op=name, dtype=dtype):
                    torch.library.opcheck(op, args)

    def test_backward_ops(self):
        for dtype in (F32, F64, BF16, F16):
            for name, op, args in backward_cases(dtype):
                with self.subTest(op=name, dtype=dtype):
                    torch.library.opcheck(op, args)

    def test_the_ops_validate_their_own_arguments(self):
        """The ops are public (torch.ops.gshn.*): what the library would read past a buffer's
        end is refused by the op itself, not only by the gshn_torch functions."""
        ei, g = rand_graph(5, 4)
        z, a = torch.randn(3, 2, 4), torch.randn(2, 4)
        with no_call(), self.assertRaisesRegex(ValueError, r"gat: z must have shape \[N=5"):
            OPS.gat(z, a, a, None, g.row_ptr, g.src, 0.2)
        with no_call(), self.assertRaisesRegex(TypeError, "gat: row_ptr must be a 1-D int32 CPU"):
            OPS.gat(z, a, a, None, g.row_ptr.long(), g.src, 0.2)
        with no_call(), self.assertRaisesRegex(ValueError, r"aggregate_backward: grad_y must have shape \[T=1"):
            OPS.aggregate_backward(torch.rand(ei.shape[1], 2), torch.randn(1, 5, 2), g.row_ptr,
                                   g.src, torch.randn(2, 5, 2), True, True)
        a, p = torch.randn(4, 3), torch.randn(6, 3)
        with no_call(), self.assertRaisesRegex(ValueError, r"infonce_1d: offset must be in \[0, P - B\] = \[0, 2\]"):
            OPS.infonce_1d(a, p, torch.tensor(1.0), 3, "f32")
        with no_call(), self.assertRaisesRegex(ValueError, r"lif_backward: grad_v must have shape \[4, 3\]"):
            OPS.lif_backward(a, a, p, 2.0, *LIF_CFG)


class U8Spikes(unittest.TestCase):
    """uint8 spikes (issue 15's compact spikes, through the C ABI's _u8 entries): LIF writes
    them for inference, the aggregation reads them; the same bits as float spikes."""

    def test_opcheck(self):
        for dtype in (F32, F64, BF16, F16):
            for name, op, args in u8_cases(dtype):
                with self.subTest(op=name, dtype=dtype):
                    torch.library.opcheck(op, args)

    def test_same_bits_as_float_spikes(self):
        for dtype in (F32, F64, BF16, F16):
            with self.subTest(dtype=dtype):
                x = lif_x(5, 12).detach().to(dtype).view(5, 3, 4)
                with torch.no_grad():
                    s8, v8 = gt.lif(x, tau=torch.tensor(2.5), u8_spikes=True)
                s, v = gt.lif(x, tau=2.5)
                self.assertEqual(s8.dtype, torch.uint8)
                self.assertTrue(bool(s8.max() == 1) and bool(s8.min() == 0))
                self.assertTrue(torch.equal(s8.to(dtype), s) and torch.equal(v8, v))
                ei, g = rand_graph(6, 10)
                (al,) = leaves((ei.shape[1], 2), dtype=dtype)
                spikes = (torch.rand(3, 6, 4, generator=torch.Generator().manual_seed(4))
                          < 0.4).to(torch.uint8)
                w = torch.randn(3, 6, 4, dtype=dtype)
                y8, yf = gt.aggregate(al, spikes, g), gt.aggregate(al, spikes.to(dtype), g)
                self.assertEqual(y8.dtype, dtype)
                self.assertTrue(torch.equal(y8, yf))
                (g8,) = torch.autograd.grad((y8 * w).sum(), al)
                (gf,) = torch.autograd.grad((yf * w).sum(), al)
                self.assertTrue(torch.equal(g8, gf))
                csr = (g.row_ptr, g.src)
                a = g.to_csr(al.detach())
                got = OPS.aggregate_backward(a, spikes, *csr, w, True, True)
                want = OPS.aggregate_backward(a, spikes.to(dtype), *csr, w, True, True)
                self.assertEqual(got[1].dtype, dtype)
                self.assertTrue(torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]))

    def test_refused_where_a_gradient_is_needed_or_the_type_is_wrong(self):
        x = lif_x(3, 4).detach().float().requires_grad_()
        with self.assertRaisesRegex(ValueError, "carry no gradient.*torch.no_grad"):
            gt.lif(x, u8_spikes=True)
        with torch.inference_mode():
            self.assertEqual(gt.lif(x, u8_spikes=True)[0].dtype, torch.uint8)
        ei, g = rand_graph(5, 4)
        al = torch.rand(ei.shape[1], 2)
        for bad in (torch.int8, torch.bool, torch.int32):
            with self.subTest(dtype=bad), no_call(), self.assertRaisesRegex(
                    TypeError, r"s must be float32, float64, bfloat16 or float16 \(or uint8 spikes\)"):
                gt.aggregate(al, torch.zeros(2, 5, 4, dtype=bad), g)
        with no_call(), self.assertRaisesRegex(TypeError, "alpha must be float32"):
            gt.aggregate(al.to(torch.uint8), torch.zeros(2, 5, 4, dtype=torch.uint8), g)

    def test_compile_inference_with_u8_spikes(self):
        torch._dynamo.reset()
        ei, g = rand_graph(6, 10)
        al = torch.rand(ei.shape[1], 2)
        x = lif_x(4, 24).detach().float().view(4, 6, 4)

        def f(x, al):
            s8, _ = gt.lif(x, u8_spikes=True)
            return gt.aggregate(al, s8, g)
        with torch.no_grad():
            explained = torch._dynamo.explain(f)(x, al)
            self.assertEqual(explained.graph_break_count, 0, explained.break_reasons)
            torch._dynamo.reset()
            out = torch.compile(f, fullgraph=True, backend="aot_eager")(x, al)
            self.assertTrue(torch.equal(out, f(x, al)))


class HalfPrecision(unittest.TestCase):
    """Every op on bfloat16 and float16 tensors: computed in float32 from the half inputs, so
    its outputs and gradients are those of the float32 op on the same (rounded) inputs, to the
    half type's rounding of the results; the statistics it saves are float32."""

    # max |half - f32| / max |f32| in units of the type's epsilon, the bounds of tests/half.rs:
    # outputs a few roundings; gradients more, as the backward reads rounded forward outputs
    # and the softmax derivative's sums cancel (GAT's a_dst the worst)
    OUT_EPS, GRAD_EPS = 4, 16
    # the outputs that are statistics (float32 in a half call), by op
    STATS = {"lif": {2}, "plif": {2}, "gat": {1}, "aggregate": set(), "infonce": {0, 1, 2},
             "infonce_1d": {0, 1}}

    def test_every_op_against_float32(self):
        for dtype in (BF16, F16):
            eps = torch.finfo(dtype).eps
            for name, op, args in forward_cases(dtype):
                with self.subTest(op=name, dtype=dtype):
                    # the f32 op on the half inputs, widened exactly
                    wide = tuple(a.detach().float().requires_grad_(a.requires_grad)
                                 if torch.is_tensor(a) and a.is_floating_point() else a
                                 for a in args)
                    got, want = op(*args), op(*wide)
                    got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
                    stats = self.STATS[name.split()[0]]
                    for k, (g, w) in enumerate(zip(got, want)):
                        self.assertEqual(g.dtype, F32 if k in stats else dtype, f"out {k}")
                        self.assertLessEqual(rel_err(g.float(), w), self.OUT_EPS * eps,
                                             f"out {k}")
                    # gradients through the first output (the spikes, out, y or the loss)
                    leaves_h = [a for a in args if torch.is_tensor(a) and a.requires_grad]
                    leaves_f = [a for a in wide if torch.is_tensor(a) and a.requires_grad]
                    weight = torch.randn(got[0].shape, generator=torch.Generator().manual_seed(3))
                    gh = torch.autograd.grad((got[0].float() * weight).sum(), leaves_h)
                    gf = torch.autograd.grad((want[0] * weight).sum(), leaves_f)
                    for k, (a, b) in enumerate(zip(gh, gf)):
                        self.assertEqual(a.dtype, dtype, f"grad {k}")
                        self.assertLessEqual(rel_err(a.float(), b), self.GRAD_EPS * eps,
                                             f"grad {k}")

    def test_statistics_must_be_float32_in_a_half_call(self):
        h = torch.randn(3, 4, dtype=BF16)
        with no_call(), self.assertRaisesRegex(
                TypeError, r"lif_backward: h is torch.bfloat16 but must be torch.float32"):
            OPS.lif_backward(h, h, h, 2.0, *LIF_CFG)
        a = unit_rows(4, 3, dtype=F16).detach()
        with no_call(), self.assertRaisesRegex(
                TypeError, r"infonce_backward: lse_row is torch.float16 but must be torch.float32"):
            OPS.infonce_backward(a, a, torch.tensor(1.0, dtype=F16), a[:, 0], a[:, 0],
                                 torch.tensor(1.0))
        with no_call(), self.assertRaisesRegex(TypeError, "all tensors of a call share one dtype"):
            OPS.gat(torch.randn(2, 1, 3, dtype=BF16), torch.randn(1, 3), torch.randn(1, 3),
                    None, *(lambda g: (g.row_ptr, g.src))(rand_graph(2, 1)[1]), 0.2)


class Gradients(unittest.TestCase):
    """Every op in float64: the values and gradients of the reference, and gradcheck."""

    def same_as_ref(self, f, ref, inputs):
        out, r = f(*inputs), ref(*inputs)
        outs, rs = (out, r) if isinstance(out, tuple) else ((out,), (r,))
        ws = [torch.randn_like(o) for o in outs]
        for o, ro in zip(outs, rs):
            torch.testing.assert_close(o, ro)
        g = torch.autograd.grad(sum((o * w).sum() for o, w in zip(outs, ws)), inputs)
        rg = torch.autograd.grad(sum((o * w).sum() for o, w in zip(rs, ws)), inputs)
        for a, b in zip(g, rg):
            torch.testing.assert_close(a, b)
        self.assertTrue(torch.autograd.gradcheck(f, inputs))

    def test_lif_and_plif(self):
        # the rectangular window misses every h (lif_x keeps h 0.1 from v_th): there the
        # surrogate gradient is the true one, so gradcheck's finite differences agree
        kw = dict(surrogate="rectangular", alpha=0.1)
        x = lif_x(4, 6)
        with self.subTest(op="lif"):
            self.same_as_ref(lambda x: gt.lif(x, **kw), lambda x: gt.ref_lif(x, **kw), (x,))
        tau = torch.tensor(2.0, dtype=F64, requires_grad=True)
        with self.subTest(op="plif"):
            self.same_as_ref(lambda x, tau: gt.lif(x, tau=tau, **kw),
                             lambda x, tau: gt.ref_lif(x, tau=tau, **kw), (x, tau))

    def test_gat(self):
        ei, g = rand_graph(5, 8)
        inputs = leaves((5, 2, 3), (2, 3), (2, 3), (ei.shape[1], 2))
        self.same_as_ref(lambda *t: gt.gat(*t[:3], g, edge_bias=t[3]),
                         lambda *t: gt.ref_gat(*t[:3], ei, edge_bias=t[3]), inputs)

    def test_aggregate(self):
        ei, g = rand_graph(5, 8)
        inputs = leaves((ei.shape[1], 2), (2, 5, 4))
        self.same_as_ref(lambda al, s: gt.aggregate(al, s, g),
                         lambda al, s: gt.ref_aggregate(al, s, ei), inputs)

    def test_infonce(self):
        inputs = (unit_rows(6, 4), unit_rows(6, 4, seed=1), log_scale(10.0))
        for sym in (True, False):
            with self.subTest(symmetric=sym):
                self.same_as_ref(lambda *t: gt.infonce(*t, symmetric=sym),
                                 lambda *t: gt.ref_infonce(*t, symmetric=sym), inputs)

    def test_infonce_1d_gathered_negatives(self):
        inputs = (unit_rows(3, 4), unit_rows(8, 4, seed=1), log_scale(10.0))
        for offset in (0, 2, 5):
            with self.subTest(offset=offset):
                self.same_as_ref(lambda *t: gt.infonce_1d(*t, offset=offset),
                                 lambda *t: gt.ref_infonce_1d(*t, offset=offset), inputs)

    def test_infonce_gathered_is_the_global_loss(self):
        """Over 3 'ranks' of 2 rows, the mean of infonce_gathered is the symmetric infonce of
        the 6 rows (with the gradients that a gather with gradients delivers)."""
        ranks, local = 3, 2

        def mean_of_ranks(a_all, p_all, ls):
            return sum(gt.infonce_gathered(a_all[r * local:(r + 1) * local],
                                           p_all[r * local:(r + 1) * local], a_all, p_all,
                                           r * local, ls) for r in range(ranks)) / ranks
        inputs = (unit_rows(6, 4), unit_rows(6, 4, seed=1), log_scale(10.0))
        self.same_as_ref(mean_of_ranks, gt.ref_infonce, inputs)

    def test_scale_clamped_at_100(self):
        a, p = unit_rows(4, 3), unit_rows(6, 3, seed=1)
        ls = log_scale(200.0)  # s = min(200, 100): no gradient reaches logit_scale
        loss = gt.infonce_1d(a, p, ls, offset=1)
        torch.testing.assert_close(loss, gt.ref_infonce_1d(a, p, ls, offset=1))
        self.assertEqual(torch.autograd.grad(loss, ls)[0].item(), 0.0)


class Precision(unittest.TestCase):
    """tf32 / bf16 products: within 5e-3 / 2e-2 of f32 (max relative error of the loss and of
    every gradient), and equal to f32 products of operands rounded as the modes say."""

    @staticmethod
    def loss_and_grads(a, p, ls, precision, offset=16):
        loss = gt.infonce_1d(a, p, ls, offset, precision)
        return (loss,) + torch.autograd.grad(loss, (a, p, ls))

    @staticmethod
    def rounded(x, precision):
        """x (f32) rounded: bf16 to nearest even (torch's conversion); tf32 keeps 10 mantissa
        bits, to nearest, ties away from zero (cvt.rna.tf32.f32), on the bits."""
        if precision == "bf16":
            return x.bfloat16().float()
        return ((x.view(torch.int32) + 0x1000) & ~0x1FFF).view(F32)

    def test_modes_against_f32(self):
        a, p = unit_rows(64, 32, dtype=F32), unit_rows(160, 32, dtype=F32, seed=1)
        ls = log_scale(dtype=F32)
        exact = self.loss_and_grads(a, p, ls, "f32")
        for precision, tol in (("tf32", 5e-3), ("bf16", 2e-2)):
            with self.subTest(precision=precision):
                got = self.loss_and_grads(a, p, ls, precision)
                for name, x, y in zip(("loss", "grad_a", "grad_p", "grad_logit_scale"), got, exact):
                    self.assertLessEqual(rel_err(x, y), tol, name)
                self.assertGreater(rel_err(got[0], exact[0]), 0)  # the mode did round something

    def test_modes_round_the_operands(self):
        a, p = unit_rows(64, 32, dtype=F32), unit_rows(160, 32, dtype=F32, seed=1)
        ls = log_scale(dtype=F32)
        for precision in ("tf32", "bf16"):
            with self.subTest(precision=precision):
                ref = gt.ref_infonce_1d(self.rounded(a, precision), self.rounded(p, precision),
                                        ls, offset=16)
                self.assertLessEqual(rel_err(self.loss_and_grads(a, p, ls, precision)[0], ref), 1e-5)

    def test_gathered_in_bf16(self):
        a, p = unit_rows(8, 16, dtype=F32), unit_rows(8, 16, dtype=F32, seed=1)
        ls = log_scale(dtype=F32)
        loss = gt.infonce_gathered(a[4:], p[4:], a, p, 4, ls, precision="bf16")
        exact = gt.infonce_gathered(a[4:], p[4:], a, p, 4, ls)
        self.assertLessEqual(rel_err(loss, exact), 2e-2)

    def test_invalid_arguments(self):
        a, p = torch.randn(4, 3), torch.randn(6, 3)
        cases = [(ValueError, r"infonce_1d: precision must be one of 'f32', 'tf32', 'bf16', got 'fp16'",
                  lambda: gt.infonce_1d(a, p, 1.0, precision="fp16")),
                 (TypeError, "infonce_1d: precision must be a str, got int",
                  lambda: gt.infonce_1d(a, p, 1.0, precision=2)),
                 (TypeError, "infonce_1d: offset must be an int, got float",
                  lambda: gt.infonce_1d(a, p, 1.0, offset=1.0)),
                 (ValueError, r"infonce_1d: offset must be in \[0, P - B\] = \[0, 2\] .* got -1",
                  lambda: gt.infonce_1d(a, p, 1.0, offset=-1)),
                 (ValueError, r"infonce_1d: p must have shape \[P=6, D=3\], got \[6, 2\]",
                  lambda: gt.infonce_1d(a, torch.randn(6, 2), 1.0)),
                 (ValueError, r"infonce_1d: a is empty \(B = 0\)",
                  lambda: gt.infonce_1d(torch.zeros(0, 3), p, 1.0)),
                 (ValueError, r"infonce_gathered: p_local must have shape \[B=4, D=3\], got \[3, 3\]",
                  lambda: gt.infonce_gathered(a, p[:3], p, p, 0, 1.0)),
                 (ValueError, r"infonce_gathered: p_all must have shape \[P=6, D=3\], got \[5, 3\]",
                  lambda: gt.infonce_gathered(a, a, p, p[:5], 0, 1.0))]
        for err, msg, f in cases:
            with self.subTest(msg=msg), no_call(), self.assertRaisesRegex(err, msg):
                f()


def compiled_matches_eager(test, f, inputs):
    """f traced by dynamo with no graph break, and compiled (aot_eager) equal to eager in its
    output and in the gradients of the inputs that require them."""
    explained = torch._dynamo.explain(f)(*inputs)
    test.assertEqual(explained.graph_break_count, 0, explained.break_reasons)
    torch._dynamo.reset()
    cf = torch.compile(f, fullgraph=True, backend="aot_eager")
    out, ref = cf(*inputs), f(*inputs)
    torch.testing.assert_close(out, ref)
    params = [t for t in inputs if torch.is_tensor(t) and t.requires_grad]
    for g, rg in zip(torch.autograd.grad(out, params), torch.autograd.grad(ref, params)):
        torch.testing.assert_close(g, rg)


def toy_model_loss(device):
    """(loss, inputs): the DDP example's LIF + GAT + InfoNCE model on `device`, its
    parameters among the inputs so that the check sees their gradients."""
    cfg = ddp_example.Config(batch=4)
    torch.manual_seed(0)
    model = ddp_example.ToyGSHN(cfg).to(device)
    graph = ddp_example.ring_graph(cfg.nodes, 2 * cfg.batch)
    x = torch.cat(ddp_example.batch(cfg, 0)).to(device)

    def loss(x, *params):
        a, p = model(x, graph).split(cfg.batch)
        return gt.infonce(a, p, model.logit_scale)
    return loss, [x, *model.parameters()]


class Compile(unittest.TestCase):
    """torch.compile(fullgraph=True) traces the gshn functions and ops with no graph break
    (backend aot_eager: dynamo + AOTAutograd with the fake kernels and the backward ops; no
    C++ code generation)."""

    def setUp(self):
        torch._dynamo.reset()

    def test_tiny_model_lif_gat_infonce(self):
        compiled_matches_eager(self, *toy_model_loss("cpu"))

    def test_every_function(self):
        ei, g = rand_graph(6, 10)
        x = lif_x(4, 6).detach().float().requires_grad_()
        tau = torch.tensor(2.5, requires_grad=True)
        z, a_s, a_d, be, al, s = leaves((6, 2, 3), (2, 3), (2, 3), (ei.shape[1], 2),
                                        (ei.shape[1], 2), (4, 6, 2), dtype=F32)
        a, p = unit_rows(4, 5, dtype=F32), unit_rows(8, 5, dtype=F32, seed=1)
        ls = log_scale(dtype=F32)

        def f(x, tau, z, a_s, a_d, be, al, s, a, p, ls):
            spikes, v = gt.lif(x, tau=2.0)
            _, v2 = gt.lif(x, tau=tau, v_reset=None, surrogate="sigmoid")
            out = gt.gat(z, a_s, a_d, g, edge_bias=be)
            y = gt.aggregate(al, s, g)
            nce = (gt.infonce(a, p[:4], ls) + gt.infonce_1d(a, p, ls, offset=3, precision="bf16")
                   + gt.infonce_gathered(a[2:], p[2:4], a, p[:4], 2, 2.0, precision="tf32"))
            return (spikes * v).sum() + v2.sum() + out.sum() + (y * s).sum() + nce
        compiled_matches_eager(self, f, [x, tau, z, a_s, a_d, be, al, s, a, p, ls])


def on(device, args):
    """args with every tensor copied to `device` (leaves stay leaves) but the int32 CSR arrays,
    which stay in host memory on every path."""
    return tuple(t.detach().to(device).requires_grad_(t.requires_grad)
                 if torch.is_tensor(t) and t.dtype != torch.int32 else t for t in args)


def leaves_of(args):
    return [a for a in args if torch.is_tensor(a) and a.requires_grad]


def gshn_cuda():
    """Whether the CUDA tests can run; with GSHN_REQUIRE_CUDA=1 (the GPU session's script) they
    must: a library or driver that fails to load is an error, not a skipped class."""
    ok = torch.cuda.is_available() and bool(gt.library().gshn_cuda_available())
    if not ok and os.environ.get("GSHN_REQUIRE_CUDA") == "1":
        raise RuntimeError("GSHN_REQUIRE_CUDA=1, but torch or libgshn_capi sees no CUDA device")
    return ok


@unittest.skipUnless(gshn_cuda(), "no CUDA device, or a library built without CUDA")
class Cuda(unittest.TestCase):
    """Every op on CUDA tensors (the `*_cuda` entry points on PyTorch's current stream) against
    the same op on the same inputs on the CPU: outputs, autograd gradients and every backward
    op. float32: within 1e-5 of the CPU (sums in another order); bfloat16 / float16: within the
    bounds of HalfPrecision in units of the type's epsilon (each side rounds its float32 result
    once). float64 InfoNCE is CPU only: a RuntimeError naming GSHN_ERR_UNSUPPORTED (4)."""

    DEVICE = "cuda"

    def bounds(self, dtype):
        if dtype in (BF16, F16):
            eps = torch.finfo(dtype).eps
            return HalfPrecision.OUT_EPS * eps, HalfPrecision.GRAD_EPS * eps
        return 1e-5, 1e-5

    def assert_same(self, got, want, tol, what):
        got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
        self.assertEqual(len(got), len(want), what)
        for k, (g, w) in enumerate(zip(got, want)):
            self.assertEqual((g.device.type, g.dtype, g.shape), (self.DEVICE, w.dtype, w.shape),
                             f"{what} {k}")
            if w.numel():
                self.assertLessEqual(rel_err(g.cpu().double(), w.double()), tol, f"{what} {k}")

    @staticmethod
    def unsupported(name, dtype):
        return dtype == F64 and name.startswith("infonce")

    def test_forward_and_gradients_match_the_cpu(self):
        for dtype in (F32, F64, BF16, F16):
            out_tol, grad_tol = self.bounds(dtype)
            for name, op, args in forward_cases(dtype) + self.zero_in_degree_cases(dtype):
                with self.subTest(op=name, dtype=dtype):
                    dev = on(self.DEVICE, args)
                    if self.unsupported(name, dtype):
                        with self.assertRaisesRegex(RuntimeError, "gshn error 4"):
                            op(*dev)
                        continue
                    got, want = op(*dev), op(*args)
                    self.assert_same(got, want, out_tol, "out")
                    # gradients through the first output (spikes, out, y or the loss)
                    y_dev, y_cpu = (o[0] if isinstance(o, tuple) else o for o in (got, want))
                    w = torch.randn(y_cpu.shape, generator=torch.Generator().manual_seed(3))
                    gg = torch.autograd.grad((y_dev.float() * w.to(self.DEVICE)).sum(), leaves_of(dev))
                    gc = torch.autograd.grad((y_cpu.float() * w).sum(), leaves_of(args))
                    self.assert_same(gg, gc, grad_tol, "grad")

    def test_u8_spikes_match_the_cpu(self):
        for dtype in (F32, F64, BF16, F16):
            _, tol = self.bounds(dtype)
            for name, op, args in u8_cases(dtype):
                with self.subTest(op=name, dtype=dtype):
                    self.assert_same(op(*on(self.DEVICE, args)), op(*args), tol, name)

    def test_backward_ops_match_the_cpu(self):
        for dtype in (F32, F64, BF16, F16):
            _, tol = self.bounds(dtype)
            for name, op, args in backward_cases(dtype):
                if self.unsupported(name, dtype):
                    continue
                with self.subTest(op=name, dtype=dtype):
                    self.assert_same(op(*on(self.DEVICE, args)), op(*args), tol, "grad")

    @staticmethod
    def zero_in_degree_cases(dtype):
        """GAT and the aggregation where nodes 3..5 have no in-edge (out = 0 there)."""
        ei = torch.tensor([[0, 1, 2, 4, 5, 0], [0, 0, 1, 2, 2, 1]])
        g = gt.Graph.from_edge_index(ei, 6)
        z, a_s, a_d, al, s = leaves((6, 2, 3), (2, 3), (2, 3), (6, 2), (2, 6, 4), dtype=dtype,
                                    seed=5)
        gr = (g.row_ptr, g.src)
        return [("gat zero in-degree", OPS.gat, (z, a_s, a_d, None, *gr, 0.2)),
                ("aggregate zero in-degree", OPS.aggregate,
                 (g.to_csr(al.detach()).requires_grad_(), s, *gr))]

    def test_opcheck_on_cuda(self):
        for dtype in (F32, BF16):
            for name, op, args in forward_cases(dtype) + backward_cases(dtype) + u8_cases(dtype):
                with self.subTest(op=name, dtype=dtype):
                    torch.library.opcheck(op, on(self.DEVICE, args))

    def test_ops_run_on_the_current_stream(self):
        """On a side stream, with work queued before the call on that stream only: the result
        is right when read after that stream alone is synchronised."""
        x = lif_x(8, 4099).detach().float()
        want = OPS.lif(x, 2.0, *LIF_CFG)
        xc, big = x.cuda(), torch.zeros(1 << 26, device="cuda")
        torch.cuda.synchronize()
        side = torch.cuda.Stream()
        with torch.cuda.stream(side):
            for _ in range(20):  # milliseconds of work queued on the side stream first
                big.add_(1.0)
            xd = xc * 1.0  # written only after them
            got = OPS.lif(xd, 2.0, *LIF_CFG)
        side.synchronize()
        self.assert_same(got, want, 0.0, "lif on a side stream")

    def test_plif_does_not_synchronise(self):
        """A learnable tau on the GPU goes to the library by pointer (the `_tau` entries), so
        PLIF's forward and backward make no synchronising PyTorch call (such as `.item()`):
        PyTorch's sync debug mode makes one an error here. (It does not see the library's own
        calls; `tests/cuda_parity.rs` checks those.) InfoNCE with a Python-number scale and an
        edge bias permuted to CSR order likewise."""
        x = lif_x(8, 4099).detach().float()
        tau = torch.tensor(2.5, requires_grad=True)
        xc = x.cuda().requires_grad_()
        tc = tau.detach().cuda().requires_grad_()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        a, p = (unit_rows(9, 6, dtype=F32, seed=k).detach().cuda() for k in (1, 2))
        ei, g = rand_graph(6, 10)
        z, a_s, a_d, eb = (t.detach().cuda() for t in leaves((6, 2, 3), (2, 3), (2, 3),
                                                               (ei.shape[1], 2), dtype=F32))
        g.to_csr(eb)  # the permutation's one copy to the device
        torch.cuda.synchronize()
        try:
            _, v = gt.lif(xc, tau=tc)
            got = torch.autograd.grad(v.sum(), [xc, tc])
            gt.infonce(a, p, 2.0)
            gt.gat(z, a_s, a_d, g, edge_bias=eb)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        _, v = gt.lif(x.requires_grad_(), tau=tau)
        want = torch.autograd.grad(v.sum(), [x, tau])
        self.assert_same(got, want, 1e-5, "plif gradients")

    def test_compile_fullgraph_on_cuda(self):
        torch._dynamo.reset()
        compiled_matches_eager(self, *toy_model_loss(self.DEVICE))


class LibrarySearch(unittest.TestCase):
    def test_search_order(self):
        here = Path(gt.__file__).resolve().parent
        repo = here.parent
        self.assertEqual(gt._SEARCH, [here / "libgshn_capi.so",
                                      repo / "target" / "release" / "libgshn_capi.so",
                                      repo / "target" / "debug" / "libgshn_capi.so"])

    def test_missing_gshn_lib_names_it_and_the_build(self):
        with mock.patch.dict(os.environ, {"GSHN_LIB": "/nonexistent/libgshn_capi.so"}), \
                mock.patch.object(gt, "_lib", None), self.assertRaises(FileNotFoundError) as e:
            gt.library()
        self.assertIn("GSHN_LIB=/nonexistent/libgshn_capi.so is not a file", str(e.exception))
        self.assertIn("cargo build --release -p gshn-capi", str(e.exception))


if __name__ == "__main__":
    unittest.main()
