//! Errors from building or driving a scheduler (`crate::schedulers`), and the names their
//! messages list.

/// The scheduler names users choose from (`SchedulerKind::CLI_NAMES`).
pub const SCHEDULER_NAMES: [&str; 7] = ["ddim", "pndm", "euler", "euler-a", "dpm++2m", "dpm++2m-karras", "lms"];

/// The diffusers scheduler classes a model's `scheduler_config.json` may name.
pub const SUPPORTED_CLASSES: [&str; 6] = [
    "DDIMScheduler",
    "PNDMScheduler",
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "LMSDiscreteScheduler",
];

/// Errors from building or driving a scheduler. Every message says what to change.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum SchedulerError {
    #[error("unknown scheduler `{name}`; choose one of: {}", SCHEDULER_NAMES.join(", "))]
    UnknownScheduler { name: String },

    #[error("scheduler class `{class}` is not supported; supported classes are {}. Choose a scheduler explicitly (e.g. euler).", SUPPORTED_CLASSES.join(", "))]
    UnsupportedClass { class: String },

    #[error("scheduler_config.json has no `_class_name`; choose a scheduler explicitly (one of: {})", SCHEDULER_NAMES.join(", "))]
    MissingClass,

    #[error("{file}: cannot parse the scheduler config: {reason}. The file must be a diffusers scheduler_config.json.")]
    Json { file: String, reason: String },

    #[error("{class}: `{key}` = {value} is not usable: {reason}. Fix scheduler_config.json or override it.")]
    InvalidConfig { class: &'static str, key: &'static str, value: String, reason: String },

    #[error("{class} has no option `{key}`; drop that override or choose a scheduler that has it")]
    OverrideNotApplicable { class: &'static str, key: &'static str },

    #[error("{steps} inference steps are not possible: use 1 to {max} (num_train_timesteps of the scheduler config)")]
    InvalidSteps { steps: usize, max: usize },
}
