//! `llama train`: pretraining with the paper's recipe (section 2.3).

pub mod adamw;
pub mod config;
pub mod metrics;
pub mod optim;
pub mod run;
pub mod schedule;

pub use config::RunConfig;
pub use run::{TrainJob, TrainSummary, init_inference_model, init_model};
