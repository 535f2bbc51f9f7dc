//! What runs between user input and the models: prompt encoding (tokenizer + text encoder +
//! textual-inversion tokens). Generation, training and suppression build on it.

mod prompt;

pub use prompt::{PromptEncoder, Tokenized};
