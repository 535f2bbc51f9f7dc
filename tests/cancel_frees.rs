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

/// One training run started, stepped once and dropped: `(in use while it runs, in use after)`.
fn train_and_drop(sd: &pseudoword::pipeline::StableDiffusion, device: &Device) -> (u64, u64) {
    let photos: Vec<_> = ["chelsea_1_center.jpg", "chelsea_5_right.png"]
        .iter()
        .map(|n| prepare_photo(&std::fs::read(fixtures().join("photos").join(n)).unwrap(), n, 256).unwrap())
        .collect();
    let settings = TrainSettings { token: "<cat-toy>".into(), init_word: "cat".into(), steps: Some(2), ..TrainSettings::default() };
    let StartedTraining { mut run, .. } = pollster::block_on(start_training(sd.clone(), &settings, TrainData::Photos(photos), None, serde_json::Value::Null)).unwrap();
    pollster::block_on(run.step()).unwrap();
    let running = in_use(device);
    drop(run);
    (running, in_use(device))
}

#[test]
fn dropping_a_training_run_or_a_generation_releases_its_memory() {
    let device = wgpu();
    let sd = pseudoword::native::load_stable_diffusion(&tiny_sd1(), None, &device).unwrap();
    let model = in_use(&device);

    // a training run holds the concatenated token-embedding copy, the latent cache and the
    // optimizer state; dropping it (the page's cancel_training) gives all of it back
    let (training, after1) = train_and_drop(&sd, &device);
    let (_, after2) = train_and_drop(&sd, &device);
    eprintln!("memory in use: model {model} B, training run {training} B, after dropping it {after1} B, after a second run {after2} B");
    assert!(training > model, "the run holds memory of its own ({training} vs {model})");
    assert_eq!(after2, after1, "a second run leaves exactly what the first left: nothing of a run stays behind");
    // what stays is the device's own small state from the first kernel launches, not the run
    assert!(after1.saturating_sub(model) < (training - model) / 20, "after dropping: {after1} B, the model alone {model} B, the run {training} B");

    // a SuppressEOT generation keeps two branches, both embeddings and heatmap sums
    let gen_settings = GenerateSettings { prompt: "a cat wearing glasses".into(), steps: 2, ..GenerateSettings::default() };
    let suppress = SuppressSettings { suppress: Some("glasses".into()), suppress_opt_off: true, ..SuppressSettings::default() };
    let mut job = pollster::block_on(Generation::start(&sd, &gen_settings, &suppress, true, None, 1)).unwrap();
    pollster::block_on(job.step(&sd)).unwrap();
    let generating = in_use(&device);
    drop(job);
    let after_generation = in_use(&device);
    eprintln!("memory in use: generation {generating} B, after dropping it (the page's cancel_generation) {after_generation} B");
    assert!(generating > after2, "the generation holds memory ({generating} vs {after2})");
    assert!(after_generation.saturating_sub(after2) < (generating - after2) / 20, "generation {generating} B, after {after_generation} B, before {after2} B");
}
