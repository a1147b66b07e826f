"""Tests of the PyTorch bridge (gshn_torch.py) against its pure-PyTorch references, and one test
per defect of the bridge's validation issue (P1..P9). Needs libgshn_capi.so ($GSHN_LIB, else
target/release). Run: bash python/run_tests.sh  (plain unittest; no pytest needed).

Calls that would crash or read out of bounds are never made: `no_call()` replaces the library
call, so those tests show that the error comes before it.
"""
from __future__ import annotations

import math
import os
import sys
import tempfile
import unittest
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402

import gshn_torch as gt  # noqa: E402

F64 = torch.float64


def no_call():
    """Fails the test if the library is called (the validation must refuse first)."""
    def refuse(name, *_):
        raise AssertionError(f"gshn_{name} was called with invalid arguments")
    return mock.patch.object(gt, "_call", refuse)


def rand_graph(n, extra, seed=0):
    """Self-loops plus `extra` random edges, shuffled: (edge_index [2, E], Graph)."""
    g = torch.Generator().manual_seed(seed)
    src = torch.cat([torch.arange(n), torch.randint(0, n, (extra,), generator=g)])
    dst = torch.cat([torch.arange(n), torch.randint(0, n, (extra,), generator=g)])
    ei = torch.stack([src, dst])[:, torch.randperm(n + extra, generator=g)]
    return ei, gt.Graph.from_edge_index(ei, n)


def leaves(*shapes, dtype=F64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g, dtype=dtype).requires_grad_() for s in shapes]


def lif_x(t, n, margin=0.1, tau=2.0, seed=0):
    """x[t, n] (f64) whose pre-spike potential h stays `margin` away from v_th = 1 (hard reset
    to 0, decay_input): there a narrow rectangular surrogate is the exact gradient."""
    x = torch.rand(t, n, generator=torch.Generator().manual_seed(seed), dtype=F64) * 3
    v = torch.zeros(n, dtype=F64)
    for k in range(t):
        near = ((v + (x[k] - v) / tau) - 1).abs() < margin
        x[k][near] += 2 * margin * tau  # lifts h by 2 margin: over the threshold by >= margin
        h = v + (x[k] - v) / tau
        v = torch.where(h >= 1, torch.zeros_like(h), h)
    return x.requires_grad_()


class Case(unittest.TestCase):
    def close(self, a, b, **kw):
        torch.testing.assert_close(a, b, **kw)

    def same_grads(self, f, ref, inputs, weights=None):
        """f and ref agree in value and in the gradient of sum(out * weight) for every input."""
        outs, routs = f(*inputs), ref(*inputs)
        outs = outs if isinstance(outs, tuple) else (outs,)
        routs = routs if isinstance(routs, tuple) else (routs,)
        ws = weights or [torch.randn_like(o) for o in outs]
        for o, r in zip(outs, routs):
            self.close(o, r)
        g = torch.autograd.grad(sum((o * w).sum() for o, w in zip(outs, ws)), inputs)
        rg = torch.autograd.grad(sum((o * w).sum() for o, w in zip(routs, ws)), inputs)
        for a, b in zip(g, rg):
            self.close(a, b)


# ---- correctness against the references ----------------------------------------------------------

class Correctness(Case):
    def test_lif_2d_against_ref(self):
        x = lif_x(6, 40)
        for kw in (dict(), dict(v_reset=None, surrogate="sigmoid"),
                   dict(decay_input=False, detach_reset=True, surrogate="super_spike"),
                   dict(surrogate="rectangular", alpha=0.5, v_th=0.8)):
            with self.subTest(**kw):
                self.same_grads(lambda x: gt.lif(x, **kw), lambda x: gt.ref_lif(x, **kw), [x])

    def test_lif_f32_against_ref(self):
        x = lif_x(5, 30).detach().float().requires_grad_()
        self.same_grads(gt.lif, gt.ref_lif, [x])

    def test_plif_against_ref(self):
        x, tau = lif_x(5, 20), torch.tensor(2.7, dtype=F64, requires_grad=True)
        self.same_grads(lambda x, tau: gt.lif(x, tau=tau, v_reset=None),
                        lambda x, tau: gt.ref_lif(x, tau=tau, v_reset=None), [x, tau])

    def test_plif_never_reads_tau_on_the_host(self):
        # tau goes to the library by pointer (on a GPU, a host read would synchronise the
        # stream at every call): forward and backward with every host read of a tensor refused
        x, tau = lif_x(5, 20), torch.tensor(2.7, dtype=F64, requires_grad=True)
        want = torch.autograd.grad(gt.lif(x, tau=tau)[1].sum(), [x, tau])

        def refuse(*_):
            raise AssertionError("a tensor was read on the host")
        saved = {k: getattr(torch.Tensor, k) for k in ("item", "__float__", "tolist")}
        try:
            for k in saved:
                setattr(torch.Tensor, k, refuse)
            got = torch.autograd.grad(gt.lif(x, tau=tau)[1].sum(), [x, tau])
        finally:
            for k, f in saved.items():
                setattr(torch.Tensor, k, f)
        for g, w in zip(got, want):
            self.assertTrue(torch.equal(g, w))
        # and a tau the neuron cannot have is the library's clear error (on the CPU)
        for bad in (1.0, 0.5, math.nan):
            with self.subTest(tau=bad), self.assertRaisesRegex(RuntimeError,
                                                               "tau must be finite and > 1"):
                gt.lif(x, tau=torch.tensor(bad, dtype=F64))

    def test_gat_with_edge_bias_against_ref(self):
        ei, g = rand_graph(12, 30)
        z, a_s, a_d, be = leaves((12, 2, 3), (2, 3), (2, 3), (ei.shape[1], 2))
        self.same_grads(lambda *t: gt.gat(*t[:3], g, edge_bias=t[3]),
                        lambda *t: gt.ref_gat(*t[:3], ei, edge_bias=t[3]), [z, a_s, a_d, be])

    def test_gat_f32_without_bias(self):
        ei, g = rand_graph(10, 20, seed=1)
        z, a_s, a_d = leaves((10, 2, 4), (2, 4), (2, 4), dtype=torch.float32)
        self.same_grads(lambda *t: gt.gat(*t, g), lambda *t: gt.ref_gat(*t, ei), [z, a_s, a_d])

    def test_infonce_against_ref(self):
        a, p = (torch.nn.functional.normalize(t, dim=1).detach().requires_grad_()
                for t in leaves((7, 5), (7, 5)))
        ls = torch.tensor(math.log(1 / 0.07), dtype=F64, requires_grad=True)
        for sym in (True, False):
            with self.subTest(symmetric=sym):
                self.same_grads(lambda *t: gt.infonce(*t, symmetric=sym),
                                lambda *t: gt.ref_infonce(*t, symmetric=sym), [a, p, ls])

    def test_gradcheck_f64(self):
        x, tau = lif_x(4, 3), torch.tensor(2.0, dtype=F64, requires_grad=True)
        ei, g = rand_graph(4, 5)
        z, a_s, a_d, be = leaves((4, 2, 3), (2, 3), (2, 3), (ei.shape[1], 2))
        al, s = leaves((ei.shape[1], 2), (2, 4, 4))
        a, p = leaves((3, 4), (3, 4))
        ls = torch.tensor(math.log(5.0), dtype=F64, requires_grad=True)
        cases = {
            # the rectangular window misses every h: the surrogate gradient is the true one
            "lif": (lambda x, tau: gt.lif(x, tau=tau, surrogate="rectangular", alpha=0.1), (x, tau)),
            "gat": (lambda *t: gt.gat(*t[:3], g, edge_bias=t[3]), (z, a_s, a_d, be)),
            "aggregate": (lambda al, s: gt.aggregate(al, s, g), (al, s)),
            "infonce": (gt.infonce, (a, p, ls)),
        }
        for op, (f, inputs) in cases.items():
            with self.subTest(op=op):
                self.assertTrue(torch.autograd.gradcheck(f, inputs))


# ---- one test per defect of the issue ------------------------------------------------------------

class P1HeapCrash(Case):
    def test_fewer_z_rows_than_nodes_is_refused_before_the_call(self):
        _, g = rand_graph(5, 4)
        z, a = torch.randn(3, 2, 4), torch.randn(2, 4)
        with no_call(), self.assertRaisesRegex(ValueError,
                                               r"gat: z must have shape \[N=5, H, F\], got \[3, 2, 4\]"):
            gt.gat(z, a, a, g)


class P2Garbage(Case):
    def test_more_z_rows_than_nodes_is_refused(self):
        _, g = rand_graph(5, 4)
        z, a = torch.randn(8, 2, 4), torch.randn(2, 4)
        with no_call(), self.assertRaisesRegex(ValueError, r"z must have shape \[N=5, H, F\], got \[8"):
            gt.gat(z, a, a, g)


class P3SecondaryShapes(Case):
    def test_gat_secondary_shapes(self):
        ei, g = rand_graph(5, 4)
        z, a = torch.randn(5, 2, 3), torch.randn(2, 3)
        bad = {"a_src": (lambda: gt.gat(z, a.T.contiguous(), a, g), r"\[H=2, F=3\], got \[3, 2\]"),
               "a_dst": (lambda: gt.gat(z, a, a[:1], g), r"\[H=2, F=3\], got \[1, 3\]"),
               "edge_bias": (lambda: gt.gat(z, a, a, g, edge_bias=torch.randn(ei.shape[1])),
                             rf"\[E={ei.shape[1]}, H=2\], got \[{ei.shape[1]}\]")}
        for name, (f, shapes) in bad.items():
            with self.subTest(arg=name), no_call(), \
                    self.assertRaisesRegex(ValueError, rf"gat: {name} must have shape {shapes}"):
                f()

    def test_infonce_secondary_shapes(self):
        a = torch.randn(20, 16)
        for p in (torch.randn(3, 16), a[:1], torch.randn(20, 8)):
            with self.subTest(p=list(p.shape)), no_call(), \
                    self.assertRaisesRegex(ValueError, r"infonce: p must have shape \[B=20, D=16\]"):
                gt.infonce(a, p, torch.tensor(1.0))
        with no_call(), self.assertRaisesRegex(ValueError, r"logit_scale .* got \[2\]"):
            gt.infonce(a, a, torch.ones(2))

    def test_aggregate_secondary_shapes(self):
        ei, g = rand_graph(5, 4)
        s = torch.randn(2, 5, 4)
        with no_call(), self.assertRaisesRegex(ValueError, r"aggregate: alpha must have shape \[E="):
            gt.aggregate(torch.randn(ei.shape[1] + 1, 2), s, g)
        with no_call(), self.assertRaisesRegex(ValueError, r"aggregate: s must have shape \[T=2, N=5, C\], got \[2, 4, 4\]"):
            gt.aggregate(torch.randn(ei.shape[1], 2), torch.randn(2, 4, 4), g)


class P4MixedDtypes(Case):
    def test_f32_logit_scale_is_promoted_for_f64_features(self):
        a, p = leaves((6, 8), (6, 8))
        ls = torch.tensor(2.0, requires_grad=True)  # float32
        loss = gt.infonce(a, p, ls)
        ref = gt.ref_infonce(a, p, ls.detach().double())
        self.assertEqual(loss.dtype, F64)
        self.close(loss, ref)
        (g,) = torch.autograd.grad(loss, ls)
        self.assertEqual(g.dtype, torch.float32)
        ls64 = ls.detach().double().requires_grad_()
        self.close(g.double(), torch.autograd.grad(gt.ref_infonce(a, p, ls64), ls64)[0])

    def test_mixed_tensor_dtypes_are_refused(self):
        ei, g = rand_graph(4, 3)
        z, a = torch.randn(4, 2, 3, dtype=F64), torch.randn(2, 3, dtype=F64)
        cases = {"p": lambda: gt.infonce(torch.randn(4, 3), torch.randn(4, 3, dtype=F64), 1.0),
                 "a_src": lambda: gt.gat(z, a.float(), a, g),
                 "edge_bias": lambda: gt.gat(z, a, a, g, edge_bias=torch.randn(ei.shape[1], 2)),
                 "s": lambda: gt.aggregate(torch.rand(ei.shape[1], 2), torch.randn(1, 4, 2, dtype=F64), g)}
        for name, f in cases.items():
            with self.subTest(arg=name), no_call(), \
                    self.assertRaisesRegex(TypeError, rf"{name} is torch.float(32|64) but"):
                f()
        with no_call(), self.assertRaisesRegex(
                TypeError, "x must be float32, float64, bfloat16 or float16, got torch.int32"):
            gt.lif(torch.ones(2, 3, dtype=torch.int32))


class P5SecondOrder(Case):
    def test_second_order_backward_raises(self):
        ei, g = rand_graph(4, 4)
        cases = {
            "lif": (lambda x: sum((o * w).sum() for o, w in zip(gt.lif(x), (1.5, 0.5))), [lif_x(3, 4)]),
            "gat": (lambda z, a, b: (gt.gat(z, a, b, g) * torch.arange(24.).view(4, 2, 3)).sum(),
                    leaves((4, 2, 3), (2, 3), (2, 3))),
            "aggregate": (lambda al, s: gt.aggregate(al, s, g).sum(),
                          leaves((ei.shape[1], 2), (2, 4, 2))),
            "infonce": (lambda a, p: gt.infonce(a, p, 1.0), leaves((3, 4), (3, 4))),
        }
        for op, (f, inputs) in cases.items():
            with self.subTest(op=op):
                torch.autograd.grad(f(*inputs), inputs)  # first order is fine
                with self.assertRaisesRegex(RuntimeError, f"gshn {op}: second-order gradients"):
                    torch.autograd.grad(f(*inputs), inputs, create_graph=True)


class P6Empty(Case):
    def test_empty_lif_forward_and_backward(self):
        for shape in ((0, 5), (3, 0), (0, 0), (0, 2, 3), (4, 0, 3)):
            with self.subTest(shape=shape):
                x = torch.zeros(shape, requires_grad=True)
                tau = torch.tensor(2.0, requires_grad=True)
                s, v = gt.lif(x, tau=tau)
                self.assertEqual((s.shape, v.shape), (x.shape, x.shape))
                gx, gtau = torch.autograd.grad(s.sum() + v.sum(), (x, tau))
                self.assertEqual(gx.shape, x.shape)
                self.assertEqual(gtau.item(), 0.0)

    def test_empty_gat_and_aggregate(self):
        g0 = gt.Graph.from_edge_index(torch.zeros(2, 0, dtype=torch.long), 0)
        _, g = rand_graph(4, 3)
        for z, a, graph in ((torch.zeros(0, 2, 3), torch.randn(2, 3), g0),
                            (torch.zeros(4, 2, 0), torch.randn(2, 0), g)):
            with self.subTest(z=list(z.shape)):
                z, a = z.requires_grad_(), a.requires_grad_()
                out = gt.gat(z, a, a, graph)
                self.assertEqual(out.shape, z.shape)
                gz, ga = torch.autograd.grad(out.sum(), (z, a))
                self.assertEqual((gz.shape, ga.shape), (z.shape, a.shape))
        al = torch.rand(g.num_edges, 2, requires_grad=True)
        s = torch.zeros(0, 4, 2, requires_grad=True)
        y = gt.aggregate(al, s, g)
        self.assertEqual(y.shape, s.shape)
        gal, _ = torch.autograd.grad(y.sum(), (al, s))
        self.assertEqual(gal.abs().sum().item(), 0.0)

    def test_infonce_empty_batch_is_an_error_and_d0_is_defined(self):
        with no_call(), self.assertRaisesRegex(ValueError, r"B = 0"):
            gt.infonce(torch.zeros(0, 4), torch.zeros(0, 4), 1.0)
        a = torch.zeros(3, 0, dtype=F64)
        self.close(gt.infonce(a, a, 1.0), torch.tensor(math.log(3), dtype=F64))


class P7GraphIndices(Case):
    def test_indices_must_be_integers_that_fit_in_int32(self):
        with self.assertRaisesRegex(TypeError, "edge_index must be an integer tensor, got torch.float32"):
            gt.Graph.from_edge_index(torch.tensor([[0.0, 1.7], [1.0, 0.0]]), 2)
        with self.assertRaisesRegex(TypeError, "row_ptr must be an integer tensor"):
            gt.Graph(torch.tensor([0.0, 1.0]), torch.tensor([0]))
        with self.assertRaisesRegex(ValueError, "row_ptr has values in .*outside"):
            gt.Graph(torch.tensor([0, 2**31 + 1], dtype=torch.long), torch.tensor([0]))
        with self.assertRaisesRegex(ValueError, "src has values in .*outside"):
            gt.Graph(torch.tensor([0, 1]), torch.tensor([2**32], dtype=torch.long))
        with self.assertRaisesRegex(ValueError, r"edge_index has values in \[0, 3\], outside \[0, 2\]"):
            gt.Graph.from_edge_index(torch.tensor([[0, 3], [1, 0]]), 3)
        g = gt.Graph.from_edge_index([[0, 1], [1, 0]], 2)  # lists of ints are fine
        self.assertEqual(g.src.dtype, torch.int32)


class P8ClearErrors(Case):
    def test_lif_takes_any_t_leading_shape(self):
        x = lif_x(5, 24).detach().view(5, 2, 3, 4).requires_grad_()
        self.same_grads(gt.lif, gt.ref_lif, [x])
        with no_call(), self.assertRaisesRegex(ValueError, r"lif: x must have shape \[T, \.\.\.\], got \[\]"):
            gt.lif(torch.tensor(1.0))

    def test_surrogate_names(self):
        x = lif_x(4, 6)
        for name in ("ATan", "SuperSpike", "Sigmoid", "RECTANGULAR"):
            with self.subTest(name=name):
                canon = gt.surrogate_name(name)
                self.close(gt.lif(x, surrogate=name), gt.lif(x, surrogate=canon))
        with self.assertRaisesRegex(ValueError, "unknown surrogate 'foo'; valid .*atan, sigmoid, "
                                                "super_spike, rectangular"):
            gt.lif(x, surrogate="foo")

    def test_python_float_logit_scale(self):
        a, p = leaves((4, 3), (4, 3))
        self.close(gt.infonce(a, p, 2.5), gt.ref_infonce(a, p, torch.tensor(2.5, dtype=F64)))

    def test_tau_shapes(self):
        x = lif_x(4, 6)
        tau = torch.tensor([2.5], dtype=F64, requires_grad=True)
        self.same_grads(lambda x, tau: gt.lif(x, tau=tau), lambda x, tau: gt.ref_lif(x, tau=tau),
                        [x, tau])
        self.assertEqual(torch.autograd.grad(gt.lif(x, tau=tau)[1].sum(), tau)[0].shape, (1,))
        with no_call(), self.assertRaisesRegex(ValueError, r"lif: tau must be a number or a tensor "
                                                           r"of shape \[\] or \[1\], got \[2\]"):
            gt.lif(x, tau=torch.tensor([2.0, 3.0]))

    def test_meta_tensors_are_refused(self):
        cases = {"x": lambda: gt.lif(torch.empty(2, 3, device="meta")),
                 "z": lambda: gt.gat(torch.empty(2, 1, 1, device="meta"), torch.ones(1, 1),
                                     torch.ones(1, 1), gt.Graph([0, 0, 0], [])),
                 "p": lambda: gt.infonce(torch.ones(2, 2), torch.empty(2, 2, device="meta"), 1.0),
                 "logit_scale": lambda: gt.infonce(torch.ones(2, 2), torch.ones(2, 2),
                                                   torch.empty((), device="meta"))}
        for name, f in cases.items():
            with self.subTest(arg=name), no_call(), \
                    self.assertRaisesRegex(TypeError, rf"{name} is on device 'meta'"):
                f()

    def test_missing_library_lists_the_paths_tried(self):
        with tempfile.TemporaryDirectory() as d:
            tried = [Path(d) / "release" / "libgshn_capi.so", Path(d) / "debug" / "libgshn_capi.so"]
            env = {k: v for k, v in os.environ.items() if k != "GSHN_LIB"}
            with mock.patch.dict(os.environ, env, clear=True), \
                    mock.patch.object(gt, "_SEARCH", tried), mock.patch.object(gt, "_lib", None), \
                    self.assertRaises(OSError) as e:
                gt.library()
            for path in tried:
                self.assertIn(str(path), str(e.exception))


class P9Aggregate(Case):
    def test_aggregate_against_ref(self):
        ei, g = rand_graph(9, 20)
        for h, c in ((1, 3), (2, 4), (3, 6)):
            with self.subTest(heads=h, channels=c):
                al, s = leaves((ei.shape[1], h), (3, 9, c))
                self.same_grads(lambda al, s: gt.aggregate(al, s, g, h),
                                lambda al, s: gt.ref_aggregate(al, s, ei), [al, s])

    def test_aggregate_f32_and_node_without_in_edges(self):
        ei = torch.tensor([[0, 1, 1], [1, 2, 0]])  # node 3 has no in-edge
        g = gt.Graph.from_edge_index(ei, 4)
        al, s = leaves((3, 2), (2, 4, 4), dtype=torch.float32)
        self.same_grads(lambda al, s: gt.aggregate(al, s, g),
                        lambda al, s: gt.ref_aggregate(al, s, ei), [al, s])

    def test_aggregate_heads_contract(self):
        ei, g = rand_graph(4, 3)
        with no_call(), self.assertRaisesRegex(ValueError, r"multiple of the heads of alpha \(H=2"):
            gt.aggregate(torch.rand(ei.shape[1], 2), torch.randn(1, 4, 3), g)
        with no_call(), self.assertRaisesRegex(ValueError, r"alpha must have shape \[E=\d+, H=3\]"):
            gt.aggregate(torch.rand(ei.shape[1], 2), torch.randn(1, 4, 6), g, heads=3)


if __name__ == "__main__":
    unittest.main()
