//! The reducer's device path (buckets packed, checked, reduced and unpacked
//! as tensors on the gradients' device, what NCCL gets) run on the CPU: a
//! collective that says it sums device memory and sums the Flex bucket
//! through a thread group. Its results must equal the host path's bit for
//! bit, and its checks must report alike.

mod common;

use std::any::Any;
use std::sync::Mutex;
use std::time::Duration;

use burn::backend::flex::FlexTensor;
use burn::optim::GradientsParams;
use burn::tensor::{Tensor, TensorPrimitive};
use common::{Ad, Inner, Moe, Route, all_ok, grads_by_slot, input, run_ranks};
use maskddp_runtime::{
    Averaging, Collective, CollectiveError, NonFinite, Reducer, ReducerConfig, Tag,
    ThreadCollective, ThreadGroup, WireBuf,
};

const EXPERTS: usize = 4;
const LIMIT: Duration = Duration::from_secs(60);

/// A thread-group rank that takes buckets as device tensors.
#[derive(Debug)]
struct DeviceSim(ThreadCollective);

impl Collective for DeviceSim {
    crate::forward_to_thread_group!();
    fn sums_on_device(&self) -> bool {
        true
    }
    fn all_reduce_device(&mut self, tag: Tag, bucket: &mut dyn Any) -> Result<(), CollectiveError> {
        let primitive = bucket.downcast_mut::<FlexTensor>().expect("a Flex bucket");
        let tensor = Tensor::<Inner, 1>::from_primitive(TensorPrimitive::Float(primitive.clone()));
        let mut data = tensor.into_data();
        self.0
            .all_reduce_sum(tag, WireBuf::F32(data.as_mut_slice().unwrap()))?;
        *primitive = Tensor::<Inner, 1>::from_data(data, &Default::default())
            .into_primitive()
            .tensor();
        Ok(())
    }
}

type Grads = Vec<Option<Vec<f32>>>;

/// What one path gave a rank: its reduced gradients per step, or its error.
type Outcome = Result<Vec<Grads>, String>;

/// Three steps on `world` ranks, each rank reducing the same gradients on
/// two groups: the host path, then the device path. Rank `r` uses expert
/// `(step + r) % EXPERTS` and the head on odd ranks; `nan` puts a NaN into
/// rank 1's first router gradient element at step 2. Per rank, the two
/// paths' outcomes.
fn run(world: usize, config: ReducerConfig, nan: bool) -> Vec<(Outcome, Outcome)> {
    let device_group = Mutex::new(
        ThreadGroup::new(world)
            .into_iter()
            .map(Some)
            .collect::<Vec<_>>(),
    );
    all_ok(run_ranks(
        ThreadGroup::new(world),
        LIMIT,
        move |rank, host| {
            let dev = Default::default();
            let device = DeviceSim(device_group.lock().unwrap()[rank].take().unwrap());
            let model = Moe::<Ad>::new(EXPERTS, &dev);
            // Rank 0's parameters everywhere, then the same model on both paths.
            let host: Box<dyn Collective> = Box::new(host);
            let device: Box<dyn Collective> = Box::new(device);
            let (model, mut host) = Reducer::new(model, host, config).unwrap();
            let (model, mut device) =
                Reducer::new(model, device, config.with_broadcast_parameters(false)).unwrap();
            let mut outcomes = (Ok(Vec::new()), Ok(Vec::new()));
            for step in 1..=3u64 {
                let route = Route {
                    experts: vec![(step as usize + rank) % EXPERTS],
                    head: rank % 2 == 1,
                    ..Route::default()
                };
                for (reducer, outcome) in
                    [(&mut host, &mut outcomes.0), (&mut device, &mut outcomes.1)]
                {
                    let Ok(steps) = outcome else { continue };
                    let x = input::<Ad>(step * 10 + rank as u64, 3, &dev);
                    let y = reducer.forward(|| model.forward(x, &route));
                    let mut grads =
                        GradientsParams::from_grads((y.clone() * y).mean().backward(), &model);
                    if nan && rank == 1 && step == 2 {
                        let id = model.router.weight.id;
                        let mut data = grads.remove::<Inner, 2>(id).unwrap().into_data();
                        data.as_mut_slice::<f32>().unwrap()[0] = f32::NAN;
                        grads.register::<Inner, 2>(id, Tensor::from_data(data, &dev));
                    }
                    match reducer.reduce(grads) {
                        Ok(grads) => steps.push(grads_by_slot::<Ad, _>(&model, &grads)),
                        Err(err) => *outcome = Err(err.to_string()),
                    }
                }
            }
            outcomes
        },
    ))
}

/// `Debug` text: NaN compares equal to NaN there.
fn text(outcome: &Outcome) -> String {
    format!("{outcome:?}")
}

#[test]
fn the_device_path_equals_the_host_path_bit_for_bit() {
    for world in [1, 2, 3] {
        for cap in [16, 400, 1 << 20] {
            for averaging in [Averaging::WorldSize, Averaging::Contributors] {
                let config = ReducerConfig::default()
                    .with_bucket_cap_bytes(cap)
                    .with_averaging(averaging);
                for (host, device) in run(world, config, false) {
                    assert!(host.is_ok(), "{host:?}");
                    assert_eq!(
                        text(&host),
                        text(&device),
                        "world {world} cap {cap} {averaging}"
                    );
                }
            }
        }
    }
}

#[test]
fn the_device_path_reports_non_finite_gradients_like_the_host_path() {
    let results = run(3, ReducerConfig::default(), true);
    let (host, device) = &results[1];
    assert_eq!(text(host), text(device));
    let message = device.as_ref().unwrap_err();
    assert!(
        message.starts_with("step 2: rank 1's gradient of `router.weight` holds NaN (element 0)"),
        "{message}"
    );

    // Warn: reduced as usual, the NaN sums alike on both paths.
    let config = ReducerConfig::default().with_non_finite(NonFinite::Warn);
    for (host, device) in run(3, config, true) {
        assert!(text(&host).contains("NaN"), "{host:?}");
        assert_eq!(text(&host), text(&device));
    }
}
