//! The optimizer leaves alone what no rank's backward reached.
//!
//! A mixture of experts written with the common loop idiom
//! (`for (i, expert) in self.experts.iter().enumerate() { if mask[i] { … } }`)
//! is trained data-parallel on thread ranks with SGD with momentum and with
//! Adam. One expert is never selected by any rank: its parameters keep every
//! bit and the optimizer never holds state for it. Another is selected only
//! in the first steps: after that, neither its parameters nor its optimizer
//! state change (a zero gradient would let momentum or Adam's moments move
//! it). A probe head runs on every path (planned always) but reaches the loss
//! only in the first steps: afterwards it has no gradient on any rank, so it
//! gets none, and it settles like that expert. Used experts train, and the
//! replicas end bit-identical.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use burn::module::{AutodiffModule, ParamId};
use burn::nn::{Linear, LinearConfig};
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, GradientsParams, Optimizer, SgdConfig};
use burn::prelude::*;
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Record, Recorder};
use common::*;
use maskddp::{
    ParamLayout, Reducer, ReducerConfig, ThreadGroup, ThreadGroupConfig, ddp_model,
    parameter_checksum,
};

const WORLD: usize = 3;
const STEPS: usize = 12;
const EXPERTS: usize = 4;
/// Selected by rank 1 in steps `0..EARLY_STEPS` only.
const EARLY: usize = 2;
const EARLY_STEPS: usize = 3;
/// Never selected.
const IDLE: usize = 3;
const LIMIT: Duration = Duration::from_secs(180);

#[ddp_model]
#[derive(Module, Debug)]
pub struct LoopMoe<B: Backend> {
    encoder: Linear<B>,
    experts: Vec<Linear<B>>,
    /// Computed on every path (say, for logging); part of the loss only
    /// when asked.
    probe: Linear<B>,
}

#[ddp_model]
impl<B: Backend> LoopMoe<B> {
    pub fn new(device: &B::Device) -> Self {
        Self {
            encoder: LinearConfig::new(D_IN, HIDDEN).init(device),
            experts: (0..EXPERTS)
                .map(|_| LinearConfig::new(HIDDEN, HIDDEN).init(device))
                .collect(),
            probe: LinearConfig::new(HIDDEN, HIDDEN).init(device),
        }
    }

    pub fn forward(&self, x: Tensor<B, 2>, mask: &[bool], probe_in_loss: bool) -> Tensor<B, 2> {
        let h = self.encoder.forward(x).tanh();
        let probe = self.probe.forward(h.clone());
        let mut out = h.clone();
        for (i, expert) in self.experts.iter().enumerate() {
            if mask[i] {
                out = out + expert.forward(h.clone());
            }
        }
        if probe_in_loss { out + probe } else { out }
    }
}

/// The experts rank `rank` selects at `step`: experts 0 and 1 rotate over
/// the ranks, `EARLY` is added by rank 1 in the first steps, `IDLE` never.
fn mask(rank: usize, step: usize) -> Vec<bool> {
    let mut mask = vec![false; EXPERTS];
    mask[(rank + step) % 2] = true;
    if rank == 1 && step < EARLY_STEPS {
        mask[EARLY] = true;
    }
    mask
}

/// Whether rank `rank` adds the probe to its loss at `step`: rank 0 in the
/// first steps, nobody afterwards.
fn probe_in_loss(rank: usize, step: usize) -> bool {
    rank == 0 && step < EARLY_STEPS
}

fn expert_paths(expert: usize) -> [String; 2] {
    [
        format!("experts.{expert}.weight"),
        format!("experts.{expert}.bias"),
    ]
}

struct Replica {
    /// Parameter bits right after set-up (rank 0's, broadcast).
    initial: BTreeMap<String, Vec<u32>>,
    /// Parameter bits after each step.
    params: Vec<BTreeMap<String, Vec<u32>>>,
    /// The optimizer's state after each step, serialized, by parameter path
    /// (absent: the optimizer holds no state for that parameter).
    state: Vec<BTreeMap<String, Vec<u8>>>,
    checksum: u64,
}

/// Each entry of an optimizer record, serialized, keyed by parameter path.
fn state_by_path<R: Record<Ad>>(
    record: impl IntoIterator<Item = (ParamId, R)>,
    paths: &HashMap<ParamId, String>,
) -> BTreeMap<String, Vec<u8>> {
    let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
    record
        .into_iter()
        .map(|(id, entry)| {
            let path = paths.get(&id).expect("state for a parameter of the model");
            let bytes = Recorder::<Ad>::record(&recorder, entry, ()).expect("serialize");
            (path.clone(), bytes)
        })
        .collect()
}

fn train<O, R>(make_optimizer: fn() -> O, lr: f64) -> Vec<Replica>
where
    O: Optimizer<LoopMoe<Ad>, Ad> + 'static,
    O::Record: IntoIterator<Item = (ParamId, R)>,
    R: Record<Ad>,
{
    let group = ThreadGroup::with_config(
        WORLD,
        ThreadGroupConfig::default().with_timeout(Duration::from_secs(60)),
    );
    all_ok(run_ranks(group, LIMIT, move |rank, collective| {
        let device = Default::default();
        let model = with_values(LoopMoe::<Ad>::new(&device), 7 + rank as u64);
        let config = ReducerConfig::default().with_bucket_cap_bytes(512);
        let (mut model, mut reducer) = Reducer::new(model, collective, config).unwrap();
        let paths: HashMap<ParamId, String> = ParamLayout::of::<Ad, _>(&model)
            .slots()
            .iter()
            .map(|slot| (slot.id, slot.path.clone()))
            .collect();
        let initial = param_bits(&model);
        let mut optimizer = make_optimizer();
        let mut params = Vec::with_capacity(STEPS);
        let mut state = Vec::with_capacity(STEPS);
        for step in 0..STEPS {
            let (x, target) = batch::<Ad>((step * WORLD + rank) as u64, 4, &device);
            let mask = mask(rank, step);
            let probe = probe_in_loss(rank, step);
            let out = reducer.forward(|| model.forward(x, &mask, probe));
            let grads = GradientsParams::from_grads(loss(out, target).backward(), &model);
            let grads = reducer.reduce(grads).unwrap();
            model = optimizer.step(lr, model, grads);
            params.push(param_bits(&model));
            state.push(state_by_path(optimizer.to_record(), &paths));
        }
        reducer.barrier().unwrap();
        Replica {
            initial,
            params,
            state,
            checksum: parameter_checksum(&model.valid()),
        }
    }))
}

fn check(name: &str, replicas: &[Replica]) {
    let first = &replicas[0];
    for (rank, replica) in replicas.iter().enumerate() {
        assert_eq!(
            replica.checksum, first.checksum,
            "{name}: rank {rank}'s replica differs from rank 0's"
        );
        assert_eq!(
            replica.params[STEPS - 1],
            first.params[STEPS - 1],
            "{name}: rank {rank}"
        );
        let last = &replica.params[STEPS - 1];

        // Never selected by any rank: every bit kept, no optimizer state.
        for path in expert_paths(IDLE) {
            assert_eq!(
                last[&path], replica.initial[&path],
                "{name}: rank {rank}: `{path}` moved although no rank selected it"
            );
            for (step, state) in replica.state.iter().enumerate() {
                assert!(
                    !state.contains_key(&path),
                    "{name}: rank {rank}: the optimizer holds state for `{path}` after step \
                     {step}, although no rank selected it"
                );
            }
        }

        // Selected early only (the expert), or in the loss early only (the
        // probe, run on every path): it trained then, and from then on
        // neither its values nor its optimizer state change.
        let probe = ["probe.weight".to_owned(), "probe.bias".to_owned()];
        for path in expert_paths(EARLY).into_iter().chain(probe) {
            assert_ne!(
                replica.params[EARLY_STEPS - 1][&path],
                replica.initial[&path],
                "{name}: rank {rank}: `{path}` did not train while selected"
            );
            let settled = &replica.state[EARLY_STEPS - 1];
            assert!(settled.contains_key(&path), "{name}: rank {rank}: `{path}`");
            for step in EARLY_STEPS..STEPS {
                assert_eq!(
                    replica.params[step][&path],
                    replica.params[EARLY_STEPS - 1][&path],
                    "{name}: rank {rank}: `{path}` moved at step {step}, after the last \
                     rank stopped using it"
                );
                assert_eq!(
                    replica.state[step].get(&path),
                    settled.get(&path),
                    "{name}: rank {rank}: the optimizer state of `{path}` changed at step \
                     {step}, after the last rank stopped using it"
                );
            }
        }

        // Used throughout: trained.
        let used: BTreeSet<String> = ["encoder.weight", "encoder.bias"]
            .into_iter()
            .map(String::from)
            .chain(expert_paths(0))
            .chain(expert_paths(1))
            .collect();
        for path in &used {
            assert_ne!(
                last[path], replica.initial[path],
                "{name}: rank {rank}: `{path}` did not train"
            );
            assert!(
                replica.state[STEPS - 1].contains_key(path),
                "{name}: {path}"
            );
        }
    }
}

#[test]
fn sgd_with_momentum_leaves_unselected_experts_and_their_state_alone() {
    let replicas = train(
        || {
            SgdConfig::new()
                .with_momentum(Some(MomentumConfig::new().with_momentum(0.9)))
                .init()
        },
        0.05,
    );
    check("sgd with momentum", &replicas);
}

#[test]
fn adam_leaves_unselected_experts_and_their_state_alone() {
    let replicas = train(|| AdamConfig::new().init(), 0.01);
    check("adam", &replicas);
}
