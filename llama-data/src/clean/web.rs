//! Placeholder: being written.
use serde::{Deserialize, Serialize};
use super::Stage;
use crate::error::DataError;
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebSettings {}
pub fn stages(_s: &WebSettings) -> Result<Vec<Box<dyn Stage>>, DataError> { Ok(Vec::new()) }
