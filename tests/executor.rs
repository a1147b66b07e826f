//! The executor and its memory plan: reuse, peak accounting, and clear errors on misuse.

use gshn::{CpuBackend, DType, Error, Executor, Graph, Tensor};

/// A chain x → tanh-free arithmetic of 20 steps: only two intermediates are ever alive.
fn chain(n: usize, steps: usize) -> (Graph, gshn::ValueId, gshn::ValueId) {
    let mut g = Graph::new();
    let x = g.input("x", [n], DType::F32);
    let mut h = x;
    for i in 0..steps {
        h = if i % 2 == 0 {
            g.scale(h, 1.01).unwrap()
        } else {
            g.add(h, x).unwrap()
        };
    }
    (g, x, h)
}

#[test]
fn memory_plan_reuses_dead_intermediates() {
    let (g, x, y) = chain(1000, 20);
    let ex = Executor::new(CpuBackend, g, &[y]).unwrap();
    let m = &ex.plan().memory;
    assert_eq!(m.total_intermediate_bytes, 20 * 1000 * 4);
    // An output never shares a buffer with a live input, so a chain needs two slots.
    assert_eq!(m.peak_intermediate_bytes, 2 * 1000 * 4, "{m:?}");
    assert!(m.peak_intermediate_bytes < m.total_intermediate_bytes);
    assert_eq!(m.input_bytes, 4000);
    let _ = x;
}

#[test]
fn reused_buffers_give_the_same_numbers_as_the_definition() {
    let (g, x, y) = chain(37, 9);
    let mut ex = Executor::new(CpuBackend, g, &[y]).unwrap();
    let xs: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin() + 0.1).collect();
    ex.set(x, &Tensor::new([37], xs.clone()).unwrap()).unwrap();
    for _ in 0..3 {
        ex.run().unwrap();
        let got = ex.get(y).unwrap();
        let mut h = xs.clone();
        for i in 0..9 {
            for (hj, xj) in h.iter_mut().zip(&xs) {
                *hj = if i % 2 == 0 {
                    *hj * 1.01f64 as f32
                } else {
                    *hj + xj
                };
            }
        }
        assert_eq!(got.data::<f32>().unwrap(), &h[..]);
    }
}

#[test]
fn misuse_is_a_typed_error_not_a_panic() {
    let (g, x, y) = chain(8, 3);
    let mut ex = Executor::new(CpuBackend, g.clone(), &[y]).unwrap();
    // running before the input is set
    assert!(matches!(ex.run(), Err(Error::Graph(_))));
    // wrong shape and wrong dtype
    assert!(matches!(
        ex.set(x, &Tensor::zeros([9], DType::F32)),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        ex.set(x, &Tensor::zeros([8], DType::F64)),
        Err(Error::Shape { .. })
    ));
    // a computed value cannot be set, and an unplanned one cannot be read
    assert!(ex.set(y, &Tensor::zeros([8], DType::F32)).is_err());
    let mut g2 = g.clone();
    let z = g2.scale(y, 2.0).unwrap();
    let mut ex2 = Executor::new(CpuBackend, g2, &[y]).unwrap();
    ex2.set(x, &Tensor::zeros([8], DType::F32)).unwrap();
    ex2.run().unwrap();
    assert!(ex2.get(z).is_err());
    // shape errors while building name the op
    let mut g3 = Graph::new();
    let a = g3.input("a", [2, 3], DType::F32);
    let b = g3.input("b", [4, 5], DType::F32);
    let e = g3.matmul(a, b).unwrap_err().to_string();
    assert!(e.contains("matmul") && e.contains("inner"), "{e}");
    let c = g3.input("c", [2, 3], DType::F64);
    assert!(g3.add(a, c).is_err());
    // backward of a non-scalar is refused
    assert!(g3.backward(a, &[a]).is_err());
}

#[test]
fn only_needed_nodes_are_scheduled() {
    let mut g = Graph::new();
    let x = g.input("x", [4], DType::F32);
    let used = g.scale(x, 2.0).unwrap();
    let _unused = g.scale(x, 3.0).unwrap();
    let ex = Executor::new(CpuBackend, g, &[used]).unwrap();
    assert_eq!(ex.plan().schedule.len(), 1);
}

/// Issue 24: `Backend::execute`, the fastest public path, refuses views that do not fit the op
/// (missing or extra outputs, a wrong shape or dtype, a buffer shorter than its view) with an
/// error before any kernel runs, where it used to panic inside one.
#[test]
fn direct_execute_checks_its_views() {
    use gshn::backend::{Backend, View, ViewMut};
    use gshn::ops::{LifConfig, Op};
    use gshn::tensor::Storage;
    use gshn::Shape;
    let be = CpuBackend;
    let op = Op::Lif(LifConfig::default());
    let shape = Shape::from([3, 4]);
    let x = Storage::F32(vec![0.7; 12]);
    let run = |outs: &mut [Storage], shapes: &[Shape], dtype: DType| {
        let input = [View {
            buf: &x,
            shape: &shape,
            dtype: DType::F32,
        }];
        let mut views: Vec<ViewMut<Storage>> = outs
            .iter_mut()
            .zip(shapes)
            .map(|(buf, shape)| ViewMut { buf, shape, dtype })
            .collect();
        be.execute(&op, &input, &mut views)
    };
    let full = || vec![Storage::F32(vec![0.0; 12]); 3];
    let three = vec![shape.clone(); 3];
    run(&mut full(), &three, DType::F32).unwrap();
    let e = |r: gshn::Result<()>| r.unwrap_err().to_string();
    assert!(e(run(&mut full()[..2], &three[..2], DType::F32)).contains("outputs"));
    let mut short = full();
    short[2] = Storage::F32(vec![0.0; 11]);
    assert!(e(run(&mut short, &three, DType::F32)).contains("its buffer holds 11"));
    let wrong = vec![shape.clone(), shape.clone(), Shape::from([4, 3])];
    assert!(e(run(&mut full(), &wrong, DType::F32)).contains("the op gives"));
    assert!(e(run(&mut full(), &three, DType::F64)).contains("the op gives"));
}

/// Issue 24: an id from another graph is an error in `Graph::backward` and the accessors.
#[test]
fn ids_from_another_graph_are_errors() {
    let (_, _, y) = chain(4, 6);
    let mut small = Graph::new();
    let x = small.input("x", [4], DType::F32);
    let loss = small.sum(x).unwrap();
    assert!(small.meta(y).is_err());
    assert!(small.shape(y).is_err());
    assert!(small.dtype(y).is_err());
    assert!(small.value(y).is_err());
    assert!(small.producer(y).is_none());
    // A builder handed a foreign id refuses it (reshape reads its shape before pushing).
    assert!(small.reshape(y, [2, 2]).is_err());
    assert!(small.node(gshn::graph::NodeId(9)).is_err());
    let e = small.backward(loss, &[y]).unwrap_err().to_string();
    assert!(e.contains("unknown value"), "{e}");
    let e = small.backward(y, &[x]).unwrap_err().to_string();
    assert!(e.contains("unknown value"), "{e}");
}

/// Issue 24: an axis beyond the rank is an error, not an index panic.
#[test]
fn shape_dim_out_of_range_is_an_error() {
    let s = gshn::Shape::from([2, 3]);
    assert_eq!(s.dim(1).unwrap(), 3);
    let e = s.dim(2).unwrap_err().to_string();
    assert!(e.contains("no axis 2") && e.contains("rank 2"), "{e}");
    assert!(gshn::Shape::scalar().dim(0).is_err());
}

/// Issue 24: anomaly mode stops at the first op that writes a NaN or infinity, naming it;
/// off (the default), the same run goes through.
#[test]
fn anomaly_mode_names_the_op_that_went_non_finite() {
    let mut g = Graph::new();
    let x = g.input("x", [3], DType::F32);
    let e = g.unary(gshn::ops::Unary::Exp, x).unwrap();
    let y = g.scale(e, 2.0).unwrap();
    let mut ex = Executor::new(CpuBackend, g, &[y]).unwrap();
    ex.set(x, &Tensor::new([3], vec![1.0f32, 100.0, 2.0]).unwrap())
        .unwrap();
    ex.run().unwrap();
    assert!(ex.get(y).unwrap().first_non_finite().is_some());
    ex.check_finite(true);
    let msg = ex.run().unwrap_err().to_string();
    assert!(
        msg.contains("anomaly: node 0") && msg.contains("[1]"),
        "{msg}"
    );
}

/// Issue 24: one executor evaluates and trains. `run_forward` computes the fetched loss with
/// the current parameters and leaves them and the optimizer state alone (no learning-rate
/// input needed); `run` then steps, and the next `run_forward` sees the new parameters.
#[test]
fn run_forward_evaluates_without_stepping() {
    use gshn::ops::AdamWConfig;
    let mut g = Graph::new();
    let x = g.input("x", [4, 3], DType::F64);
    let w = g.param("w", [3, 2], DType::F64);
    let y = g.matmul(x, w).unwrap();
    let sq = g.mul(y, y).unwrap();
    let loss = g.mean(sq).unwrap();
    let gw = g.backward(loss, &[w]).unwrap();
    let opt = g
        .adamw_step(&[w], &gw, AdamWConfig::default(), None)
        .unwrap();
    let mut ex = Executor::new(CpuBackend, g, &[loss]).unwrap();
    let w0 = Tensor::new([3, 2], vec![0.5, -0.2, 0.3, 0.8, -0.4, 0.1]).unwrap();
    ex.set(w, &w0).unwrap();
    ex.set(
        x,
        &Tensor::new(
            [4, 3],
            (0..12).map(|i| i as f64 / 7.0 - 0.6).collect::<Vec<_>>(),
        )
        .unwrap(),
    )
    .unwrap();
    // Neither the moments nor the learning rate are set: the forward does not need them.
    ex.run_forward().unwrap();
    let before = ex.get(loss).unwrap().to_f64_vec()[0];
    assert_eq!(ex.get(w).unwrap(), w0, "run_forward changed a parameter");
    ex.run_forward().unwrap();
    assert_eq!(ex.get(loss).unwrap().to_f64_vec()[0], before);
    opt.zero_state(&mut ex).unwrap();
    opt.set_hyper(&mut ex, 0.1, 1).unwrap();
    ex.run().unwrap();
    assert_ne!(ex.get(w).unwrap(), w0, "run did not step");
    ex.run_forward().unwrap();
    let after = ex.get(loss).unwrap().to_f64_vec()[0];
    assert!(after < before, "{after} !< {before}");
}

/// Issue 24: a user graph's parameters and optimizer state save and load through safetensors
/// by name, and training resumes exactly: 3 + 3 steps across two executors equal 6 steps.
#[test]
fn a_user_graph_resumes_exactly_from_its_persistent_values() {
    use gshn::ops::AdamWConfig;
    let build = || {
        let mut g = Graph::new();
        let x = g.input("x", [5, 3], DType::F32);
        let w = g.param("w", [3, 2], DType::F32);
        let b = g.param("b", [2], DType::F32);
        let y = g.matmul(x, w).unwrap();
        let y = g.add_bias(y, b).unwrap();
        let sq = g.mul(y, y).unwrap();
        let loss = g.mean(sq).unwrap();
        let grads = g.backward(loss, &[w, b]).unwrap();
        let opt = g
            .adamw_step(&[w, b], &grads, AdamWConfig::default(), Some(1.0))
            .unwrap();
        let mut ex = Executor::new(CpuBackend, g, &[loss]).unwrap();
        let xs: Vec<f32> = (0..15).map(|i| (i as f32 * 0.7).sin()).collect();
        ex.set(x, &Tensor::new([5, 3], xs).unwrap()).unwrap();
        (ex, opt, w, b)
    };
    let steps = |ex: &mut Executor<CpuBackend>, opt: &gshn::ops::OptimizerValues, from: u64| {
        for s in from..from + 3 {
            opt.set_hyper(ex, 0.05, s).unwrap();
            ex.run().unwrap();
        }
    };
    let (mut a, opt, w, b) = build();
    a.set(
        w,
        &Tensor::new([3, 2], vec![0.3f32, -0.5, 0.8, 0.1, -0.2, 0.6]).unwrap(),
    )
    .unwrap();
    a.set(b, &Tensor::new([2], vec![0.1f32, -0.1]).unwrap())
        .unwrap();
    opt.zero_state(&mut a).unwrap();
    steps(&mut a, &opt, 1);
    let dir = std::env::temp_dir().join(format!("gshn-exec-resume-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("state.safetensors");
    gshn::tensor::io::save_safetensors(&file, &a.persistent_values().unwrap(), None).unwrap();
    steps(&mut a, &opt, 4);

    let (mut resumed, opt2, _, _) = build();
    let (saved, _) = gshn::tensor::io::load_safetensors(&file).unwrap();
    assert_eq!(saved.len(), 6, "w, b and their two moments each");
    resumed.set_persistent_values(&saved).unwrap();
    steps(&mut resumed, &opt2, 4);
    let (x, y) = (
        a.persistent_values().unwrap(),
        resumed.persistent_values().unwrap(),
    );
    assert_eq!(x, y, "resumed training differs");
    // Missing or foreign names are errors, never a silently fresh state.
    let e = resumed
        .set_persistent_values(&saved[1..])
        .unwrap_err()
        .to_string();
    assert!(e.contains("no value given"), "{e}");
    let mut extra = saved.clone();
    extra.push(("nope".into(), Tensor::new([1], vec![0f32]).unwrap()));
    let e = resumed
        .set_persistent_values(&extra)
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"nope\" is not a parameter"), "{e}");
    std::fs::remove_dir_all(dir).ok();
}

/// A reshape of a computed value is not run: it aliases its input's buffer, which must then
/// live until the alias's last use (here long after, across a chain that reuses every dead
/// buffer), also when the alias is fetched or reshaped again. A reshape of an input copies.
#[test]
fn reshapes_alias_their_input_and_keep_it_alive() {
    let n = 12;
    let mut g = Graph::new();
    let x = g.input("x", [n], DType::F32);
    let y = g.scale(x, 3.0).unwrap();
    let r = g.reshape(y, [3, 4]).unwrap(); // alias of y
    let rr = g.reshape(r, [4, 3]).unwrap(); // alias of an alias
    let flat = g.reshape(rr, [n]).unwrap();
    let xr = g.reshape(x, [2, 6]).unwrap(); // of an input: a copy
    let mut h = x;
    for _ in 0..6 {
        h = g.scale(h, 0.5).unwrap(); // dead buffers to reuse
        h = g.add(h, x).unwrap();
    }
    let out = g.add(h, flat).unwrap(); // y's buffer is read here, after the chain
    let mut ex = Executor::new(CpuBackend, g.clone(), &[out, xr]).unwrap();
    let reshapes = ex
        .plan()
        .schedule
        .iter()
        .filter(|&&id| g.node(id).unwrap().op.name() == "reshape")
        .count();
    assert_eq!(reshapes, 1, "only the reshape of the input runs");
    let xs: Vec<f32> = (0..n).map(|i| i as f32 * 0.25 - 1.0).collect();
    ex.set(x, &Tensor::new([n], xs.clone()).unwrap()).unwrap();
    for _ in 0..2 {
        ex.run().unwrap();
        let mut want = xs.clone();
        for _ in 0..6 {
            for (w, xi) in want.iter_mut().zip(&xs) {
                *w = *w * 0.5 + xi;
            }
        }
        let want: Vec<f32> = want.iter().zip(&xs).map(|(w, xi)| w + xi * 3.0).collect();
        assert_eq!(ex.get(out).unwrap().data::<f32>().unwrap(), &want[..]);
        assert_eq!(ex.get(xr).unwrap().data::<f32>().unwrap(), &xs[..]);
    }
    // A fetched alias, also through evaluation only (`run_forward`, which reaches it
    // through its root).
    let mut ev = Executor::new(CpuBackend, g, &[r]).unwrap();
    ev.set(x, &Tensor::new([n], xs.clone()).unwrap()).unwrap();
    ev.run_forward().unwrap();
    let r_got = ev.get(r).unwrap();
    assert_eq!(r_got.dims(), [3, 4]);
    let y_want: Vec<f32> = xs.iter().map(|v| v * 3.0).collect();
    assert_eq!(r_got.data::<f32>().unwrap(), &y_want[..]);
}

/// A CPU backend that plays a recording device (issue 17's CUDA-graph replay, whose device
/// side needs a GPU): its `record` runs the calls and counts, its `replay` runs the host
/// pass — which on the CPU does the ops themselves — and counts.
struct Recorder {
    can_record: bool,
    records: std::cell::Cell<usize>,
    replays: std::cell::Cell<usize>,
}

impl Recorder {
    fn new(can_record: bool) -> Self {
        Recorder {
            can_record,
            records: Default::default(),
            replays: Default::default(),
        }
    }
    fn calls(&self) -> (usize, usize) {
        (self.records.get(), self.replays.get())
    }
}

impl gshn::backend::Backend for Recorder {
    type Buffer = gshn::tensor::Storage;
    type Recording = usize;
    fn name(&self) -> String {
        "recorder".into()
    }
    fn alloc(&self, dtype: DType, len: usize) -> gshn::Result<Self::Buffer> {
        CpuBackend.alloc(dtype, len)
    }
    fn write(&self, dst: &mut Self::Buffer, src: &Tensor) -> gshn::Result<()> {
        CpuBackend.write(dst, src)
    }
    fn read(&self, src: &Self::Buffer, shape: &gshn::Shape, dtype: DType) -> gshn::Result<Tensor> {
        CpuBackend.read(src, shape, dtype)
    }
    fn held(&self, buf: &Self::Buffer) -> (DType, usize) {
        CpuBackend.held(buf)
    }
    fn execute_planned(
        &self,
        op: &gshn::ops::Op,
        inputs: &[gshn::backend::View<Self::Buffer>],
        outputs: &mut [gshn::backend::ViewMut<Self::Buffer>],
    ) -> gshn::Result<()> {
        CpuBackend.execute_planned(op, inputs, outputs)
    }
    fn record(&self, run: &mut dyn FnMut() -> gshn::Result<()>) -> gshn::Result<Option<usize>> {
        run()?;
        self.records.set(self.records.get() + 1);
        Ok(self.can_record.then_some(self.records.get()))
    }
    fn replay(&self, _: &usize, host: &mut dyn FnMut() -> gshn::Result<()>) -> gshn::Result<()> {
        self.replays.set(self.replays.get() + 1);
        host()
    }
}

/// A small training step (x → linear → square → mean, AdamW) on any backend, with an input
/// the step never reads.
fn training_step<B: gshn::backend::Backend>(
    be: B,
) -> (Executor<B>, gshn::ops::OptimizerValues, [gshn::ValueId; 4]) {
    use gshn::ops::AdamWConfig;
    let mut g = Graph::new();
    let x = g.input("x", [6, 3], DType::F32);
    let unread = g.input("unread", [2], DType::F32);
    let w = g.param("w", [3, 2], DType::F32);
    let y = g.matmul(x, w).unwrap();
    let sq = g.mul(y, y).unwrap();
    let loss = g.mean(sq).unwrap();
    let gw = g.backward(loss, &[w]).unwrap();
    let opt = g
        .adamw_step(&[w], &gw, AdamWConfig::default(), Some(1.0))
        .unwrap();
    let mut ex = Executor::new(be, g, &[loss]).unwrap();
    let w0: Vec<f32> = (0..6).map(|i| (i as f32 * 1.3).cos()).collect();
    ex.set(w, &Tensor::new([3, 2], w0).unwrap()).unwrap();
    opt.zero_state(&mut ex).unwrap();
    (ex, opt, [x, w, loss, unread])
}

/// Steps `ex` with batch `k`'s input; its loss.
fn step_on<B: gshn::backend::Backend>(
    ex: &mut Executor<B>,
    opt: &gshn::ops::OptimizerValues,
    [x, _, loss, _]: [gshn::ValueId; 4],
    k: u64,
) -> Vec<f64> {
    let xs: Vec<f32> = (0..18)
        .map(|i| ((i as u64 * 7 + k * 3) as f32).sin())
        .collect();
    ex.set(x, &Tensor::new([6, 3], xs).unwrap()).unwrap();
    opt.set_hyper(ex, 0.05, k + 1).unwrap();
    ex.run().unwrap();
    ex.get(loss).unwrap().to_f64_vec()
}

#[test]
fn replayed_runs_record_once_and_give_the_op_by_op_numbers() {
    let (mut plain, opt_p, ids) = training_step(CpuBackend);
    let (mut ex, opt, ids_r) = training_step(Recorder::new(true));
    ex.replay_runs(true);
    assert!(!ex.replaying(), "nothing is recorded before the first run");
    for k in 0..6 {
        let want = step_on(&mut plain, &opt_p, ids, k);
        assert_eq!(step_on(&mut ex, &opt, ids_r, k), want, "step {k}");
        // the first run records, every later one replays
        assert_eq!(ex.backend().calls(), (1, k as usize), "step {k}");
        assert!(ex.replaying());
    }
    assert_eq!(ex.get(ids_r[1]).unwrap(), plain.get(ids[1]).unwrap());

    // a buffer allocated after the recording (a first set) is not in it: record again
    ex.set(ids_r[3], &Tensor::new([2], vec![1f32, 2.0]).unwrap())
        .unwrap();
    assert!(!ex.replaying());
    let want = step_on(&mut plain, &opt_p, ids, 6);
    assert_eq!(step_on(&mut ex, &opt, ids_r, 6), want);
    assert_eq!(ex.backend().calls(), (2, 5));
    // setting it again reuses its buffer: the recording stays
    ex.set(ids_r[3], &Tensor::new([2], vec![3f32, 4.0]).unwrap())
        .unwrap();
    assert!(ex.replaying());

    // off: op by op, the recording dropped
    ex.replay_runs(false);
    assert!(!ex.replaying());
    step_on(&mut ex, &opt, ids_r, 7);
    assert_eq!(ex.backend().calls(), (2, 5));
}

#[test]
fn profiling_and_anomaly_mode_run_op_by_op() {
    for mode in ["profile", "check_finite"] {
        let (mut ex, opt, ids) = training_step(Recorder::new(true));
        ex.replay_runs(true);
        match mode {
            "profile" => ex.profile(true),
            _ => ex.check_finite(true),
        }
        for k in 0..3 {
            step_on(&mut ex, &opt, ids, k);
        }
        assert_eq!(ex.backend().calls(), (0, 0), "{mode}");
        // and back to recording once they are off
        ex.profile(false);
        ex.check_finite(false);
        step_on(&mut ex, &opt, ids, 3);
        step_on(&mut ex, &opt, ids, 4);
        assert_eq!(ex.backend().calls(), (1, 1), "{mode}");
    }
}

#[test]
fn a_backend_that_cannot_record_is_asked_once() {
    let (mut ex, opt, ids) = training_step(Recorder::new(false));
    ex.replay_runs(true);
    for k in 0..4 {
        step_on(&mut ex, &opt, ids, k);
    }
    assert_eq!(ex.backend().calls(), (1, 0));
    assert!(!ex.replaying());
    // the CPU records nothing either: runs go on op by op
    let (mut cpu, opt, ids) = training_step(CpuBackend);
    cpu.replay_runs(true);
    step_on(&mut cpu, &opt, ids, 0);
    step_on(&mut cpu, &opt, ids, 1);
    assert!(!cpu.replaying());
}
