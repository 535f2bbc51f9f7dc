//! Cancel frees (issue "one path", item 6): dropping a training run or a generation releases
//! its GPU memory. Runs on native wgpu (lavapipe on CI), where the memory pool reports bytes in
//! use; the browser's `cancel_training` / `cancel_generation` drop exactly these objects.

mod common;

use burn::tensor::Device;
use common::{fixtures, tiny_sd1};
use pseudoword::jobs::{GenerateSettings, Generation, StartedTraining, SuppressSettings, TrainData, TrainSettings, start_training};
use pseudoword::pipeline::Denoise;
use pseudoword::photos::prepare_photo;

fn wgpu() -> Device {
    pseudoword::native::init_wgpu()
        .unwrap_or_else(|e| panic!("no wgpu adapter ({e}): install Mesa's Vulkan drivers (scripts/test.sh installs mesa-vulkan-drivers)"))
}

fn in_use(device: &Device) -> u64 {
    device.sync().unwrap();
    device.memory_pool_usage().expect("wgpu reports its memory pool").bytes_in_use
}

#[test]
fn dropping_a_training_run_or_a_generation_releases_its_memory() {
    let device = wgpu();
    let sd = pseudoword::native::load_stable_diffusion(&tiny_sd1(), None, &device).unwrap();
    let model = in_use(&device);

    // a training run: the concatenated token-embedding copy, the latent cache, optimizer state
    let photos: Vec<_> = ["chelsea_1_center.jpg", "chelsea_5_right.png"]
        .iter()
        .map(|n| prepare_photo(&std::fs::read(fixtures().join("photos").join(n)).unwrap(), n, 256).unwrap())
        .collect();
    let settings = TrainSettings { token: "<cat-toy>".into(), init_word: "cat".into(), steps: Some(2), ..TrainSettings::default() };
    let StartedTraining { mut run, .. } = pollster::block_on(start_training(sd.clone(), &settings, TrainData::Photos(photos), None, serde_json::Value::Null)).unwrap();
    pollster::block_on(run.step()).unwrap();
    let training = in_use(&device);
    drop(run);
    let after_training = in_use(&device);
    eprintln!("memory in use: model {model} B, training run {training} B, after dropping it {after_training} B");
    assert!(training > model, "the run holds memory of its own ({training} vs {model})");
    assert!(after_training <= model, "dropping the run frees it: {after_training} B in use, the model alone {model} B");

    // a generation (SuppressEOT keeps two branches and both embeddings)
    let gen_settings = GenerateSettings { prompt: "a cat wearing glasses".into(), steps: 2, ..GenerateSettings::default() };
    let suppress = SuppressSettings { suppress: Some("glasses".into()), suppress_opt_iters: 1, ..SuppressSettings::default() };
    let mut job = pollster::block_on(Generation::start(&sd, &gen_settings, &suppress, true, None, 1)).unwrap();
    pollster::block_on(job.step(&sd)).unwrap();
    let generating = in_use(&device);
    drop(job);
    let after_generation = in_use(&device);
    eprintln!("memory in use: generation {generating} B, after dropping it {after_generation} B");
    assert!(generating > model && after_generation <= model, "generation {generating} B, after {after_generation} B, model {model} B");
}
