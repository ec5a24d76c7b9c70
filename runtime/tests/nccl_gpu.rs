//! The NCCL collective on a real GPU (cargo feature `nccl`). Run by
//! `scripts/gpu-check.sh`; in CI it is only built. Without a CUDA driver,
//! a GPU or libnccl it prints `SKIP: …` and exits 0: a skip, not a pass.
//!
//! One process, world size 1 (no launcher variables): burn's CUDA buckets
//! reach NCCL in place (f32 and bf16), and one reducer step on a small
//! conditional model on the GPU equals the same step on the CPU.
//!
//! Several processes (torchrun-style variables, e.g. two ranks on one GPU
//! with distinct `NCCL_HOSTID`s): sums of every rank's values, equal bits on
//! every rank, and the bucket all-reduce throughput.

mod common;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use burn::backend::cuda::CudaDevice;
use burn::backend::{Autodiff, Cuda, Flex};
use burn::module::{Module, ModuleMapper, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, FloatDType, Tensor, TensorData, TensorPrimitive};
use common::{Moe, Route, grads_by_slot, input, param_values};
use maskddp_runtime::{
    Collective, LaunchEnv, NcclCollective, NcclConfig, NcclEnv, Op, Reducer, ReducerConfig, Tag,
    ThreadGroup,
};

type Gpu = Autodiff<Cuda>;
type Cpu = Autodiff<Flex>;

const EXPERTS: usize = 3;

/// Why the checks cannot run here, if they cannot.
fn skip_reason() -> Option<String> {
    // SAFETY: loads NVIDIA's driver library to see whether it exists.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Some("no CUDA driver (libcuda)".to_owned());
    }
    match cudarc::driver::CudaContext::device_count() {
        Ok(count) if count > 0 => {}
        _ => return Some("no CUDA device".to_owned()),
    }
    // SAFETY: as above, for libnccl.
    if !unsafe { cudarc::nccl::sys::is_culib_present() } {
        return Some("libnccl.so not found on LD_LIBRARY_PATH".to_owned());
    }
    None
}

fn main() -> ExitCode {
    if let Some(reason) = skip_reason() {
        println!("SKIP: {reason}");
        return ExitCode::SUCCESS;
    }
    let config = NcclConfig::default().with_timeout(Duration::from_secs(60));
    let outcome = match LaunchEnv::from_env() {
        Ok(LaunchEnv::Torchrun { .. }) => NcclEnv::from_env()
            .map_err(|err| err.to_string())
            .and_then(|env| NcclCollective::init_rank(&env, config).map_err(|err| err.to_string()))
            .and_then(|mut nccl| {
                let device = CudaDevice::new(nccl.device());
                check_sums(&mut nccl, &device)?;
                throughput(&mut nccl, &device)
            }),
        _ => NcclCollective::for_devices(&[0], config)
            .map_err(|err| err.to_string())
            .and_then(|mut group| {
                let mut nccl = group.remove(0);
                let device = CudaDevice::new(0);
                check_sums(&mut nccl, &device)?;
                reducer_matches_the_cpu(nccl, &device)?;
                let mut nccl = NcclCollective::for_devices(&[0], config)
                    .map_err(|err| err.to_string())?
                    .remove(0);
                throughput(&mut nccl, &device)
            }),
    };
    match outcome {
        Ok(()) => {
            println!("ok: NCCL checks passed");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("FAIL: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Sums `values` (one per element) over the ranks on the GPU, in `dtype`.
fn reduce(
    nccl: &mut NcclCollective,
    device: &CudaDevice,
    step: u64,
    values: Vec<f32>,
    dtype: FloatDType,
) -> Result<Vec<f32>, String> {
    let len = values.len();
    let tensor = Tensor::<Cuda, 1>::from_data(TensorData::new(values, [len]), device).cast(dtype);
    let mut primitive = tensor.into_primitive().tensor();
    nccl.all_reduce_device(Tag::new(step, Op::Bucket(0)), &mut primitive)
        .map_err(|err| err.to_string())?;
    let summed = Tensor::<Cuda, 1>::from_primitive(TensorPrimitive::Float(primitive));
    Ok(summed.cast(DType::F32).into_data().to_vec::<f32>().unwrap())
}

/// f32 and bf16 buckets summed in place: rank `r` holds `r + 1 + i % 7`
/// at element `i`; the counts and the gathered bytes agree.
fn check_sums(nccl: &mut NcclCollective, device: &CudaDevice) -> Result<(), String> {
    let (rank, world) = (nccl.rank(), nccl.world_size());
    let len = 1 << 20;
    let values: Vec<f32> = (0..len).map(|i| (rank + 1 + i % 7) as f32).collect();
    let expected: Vec<f32> = (0..len)
        .map(|i| (0..world).map(|r| (r + 1 + i % 7) as f32).sum())
        .collect();
    for (step, dtype) in [(1, FloatDType::F32), (2, FloatDType::BF16)] {
        let summed = reduce(nccl, device, step, values.clone(), dtype)?;
        if summed != expected {
            return Err(format!("{dtype:?} in-place all-reduce: wrong sums"));
        }
        println!("ok: {dtype:?} in-place all-reduce of {len} elements on {world} rank(s)");
    }
    let mut counts = vec![rank as u32 + 1; 5];
    nccl.all_reduce_counts(Tag::new(3, Op::Usage), &mut counts)
        .map_err(|err| err.to_string())?;
    let total = (1..=world as u32).sum::<u32>();
    if counts != vec![total; 5] {
        return Err(format!("usage counts: {counts:?}, expected {total} each"));
    }
    let gathered = nccl
        .all_gather_bytes(Tag::new(0, Op::Layout), &vec![rank as u8; rank + 1])
        .map_err(|err| err.to_string())?;
    if gathered != (0..world).map(|r| vec![r as u8; r + 1]).collect::<Vec<_>>() {
        return Err(format!("all_gather_bytes: {gathered:?}"));
    }
    println!("ok: usage counts and byte gather on {world} rank(s)");
    Ok(())
}

/// Gives each float parameter the next of the values, in visit order.
struct Assign(std::vec::IntoIter<Vec<f32>>);

impl<B: Backend> ModuleMapper<B> for Assign {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let values = self.0.next().expect("one value vector per parameter");
        param.map(|tensor| {
            let data = TensorData::new(values, tensor.shape());
            Tensor::from_data(data, &tensor.device()).require_grad()
        })
    }
}

/// One reducer step on the GPU against the same step on the CPU (world 1).
fn reducer_matches_the_cpu(nccl: NcclCollective, device: &CudaDevice) -> Result<(), String> {
    let gpu_model = Moe::<Gpu>::new(EXPERTS, device);
    let cpu_model = Moe::<Cpu>::new(EXPERTS, &Default::default())
        .map(&mut Assign(param_values::<Gpu, _>(&gpu_model).into_iter()));
    let route = Route {
        experts: vec![1],
        head: true,
        ..Route::default()
    };
    let config = ReducerConfig::default().with_bucket_cap_bytes(256);

    let (gpu_model, mut reducer) =
        Reducer::new(gpu_model, nccl, config).map_err(|err| err.to_string())?;
    let y = reducer.forward(|| gpu_model.forward(input::<Gpu>(7, 5, device), &route));
    let grads = GradientsParams::from_grads((y.clone() * y).mean().backward(), &gpu_model);
    let grads = reducer.reduce(grads).map_err(|err| err.to_string())?;
    let gpu = grads_by_slot::<Gpu, _>(&gpu_model, &grads);

    let cpu_collective = ThreadGroup::new(1).remove(0);
    let (cpu_model, mut cpu_reducer) =
        Reducer::new(cpu_model, cpu_collective, config).map_err(|err| err.to_string())?;
    let y =
        cpu_reducer.forward(|| cpu_model.forward(input::<Cpu>(7, 5, &Default::default()), &route));
    let grads = GradientsParams::from_grads((y.clone() * y).mean().backward(), &cpu_model);
    let grads = cpu_reducer.reduce(grads).map_err(|err| err.to_string())?;
    let cpu = grads_by_slot::<Cpu, _>(&cpu_model, &grads);

    for (slot, (gpu, cpu)) in gpu.iter().zip(&cpu).enumerate() {
        match (gpu, cpu) {
            (None, None) => {}
            (Some(gpu), Some(cpu)) => {
                let scale = cpu.iter().fold(1e-6f32, |m, x| m.max(x.abs()));
                if let Some(i) = (0..cpu.len()).find(|&i| (gpu[i] - cpu[i]).abs() > 1e-4 * scale) {
                    return Err(format!(
                        "slot {slot} element {i}: GPU {} CPU {}",
                        gpu[i], cpu[i]
                    ));
                }
            }
            _ => return Err(format!("slot {slot}: gradient on one side only")),
        }
    }
    println!(
        "ok: one reducer step on the GPU (buckets of 256 B, {} buckets) equals the CPU reference",
        reducer.last_stats().buckets
    );
    Ok(())
}

/// Bucket all-reduce throughput: 25 MiB f32 buckets, in place.
fn throughput(nccl: &mut NcclCollective, device: &CudaDevice) -> Result<(), String> {
    let len = 25 << 18; // 25 MiB of f32
    let world = nccl.world_size();
    let mut primitive = Tensor::<Cuda, 1>::zeros([len], device)
        .into_primitive()
        .tensor();
    let rounds = 20;
    let mut step = 10;
    for _ in 0..3 {
        step += 1;
        nccl.all_reduce_device(Tag::new(step, Op::Bucket(0)), &mut primitive)
            .map_err(|err| err.to_string())?;
    }
    let start = Instant::now();
    for _ in 0..rounds {
        step += 1;
        nccl.all_reduce_device(Tag::new(step, Op::Bucket(0)), &mut primitive)
            .map_err(|err| err.to_string())?;
    }
    let per_call = start.elapsed() / rounds;
    let bytes = (len * 4) as f64;
    // NCCL's "bus bandwidth" for an all-reduce: 2 (w - 1) / w of the data.
    let bus = bytes * 2.0 * (world as f64 - 1.0) / world as f64;
    println!(
        "throughput: 25 MiB f32 bucket all-reduce on {world} rank(s): {per_call:.2?} per call \
         (tag agreement, sync and watchdog included), algorithm {:.1} GB/s, bus {:.1} GB/s",
        bytes / per_call.as_secs_f64() / 1e9,
        bus / per_call.as_secs_f64() / 1e9
    );
    Ok(())
}
