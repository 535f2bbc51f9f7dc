//! The jobs a user runs, one way in for each, shared by the CLI and the page: their settings
//! ([`settings`]: serde + `Default` + `validate`, clap natively), generation / SuppressEOT /
//! photo edits as one step-driven [`Generation`], the start of a training run, and the one
//! builder of PNG `parameters`. Sits above `pipeline`, `suppress` and `train`; below the
//! front ends (`crate::native` + the CLI, `crate::web`).

pub mod generation;
pub mod png;
pub mod settings;
pub mod training;

pub use generation::{EditedPhoto, Finished, Generation};
pub use png::png_parameters;
pub use settings::{EditSettings, GenerateSettings, SuppressSettings, Templates, TrainSettings, defaults_json};
pub use training::{StartedTraining, TrainData, start_training, training_preview};
