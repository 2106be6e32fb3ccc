//! Hugging Face `datasets` folders written by `save_to_disk`: `state.json` lists the data files,
//! each an Arrow IPC stream. Rows become the same [`Record`]s as JSONL lines, so every task reads
//! either form; a row's "line" is its 1-based position in the split.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type, UInt16Type,
    UInt32Type, UInt64Type,
};
use arrow_array::{Array, RecordBatch};
use arrow_ipc::reader::StreamReader;
use arrow_schema::DataType;
use serde_json::{Map, Value};

use super::records::Record;

/// The data files of a `save_to_disk` folder, in order (from `state.json`, else every `*.arrow`).
pub fn data_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let state = dir.join("state.json");
    if state.is_file() {
        let text = std::fs::read_to_string(&state)?;
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", state.display()))?;
        let Some(files) = v.get("_data_files").and_then(Value::as_array) else {
            bail!("{}: no `_data_files` list", state.display());
        };
        return files
            .iter()
            .map(|f| match f.get("filename").and_then(Value::as_str) {
                Some(name) => Ok(dir.join(name)),
                None => bail!("{}: a data file without `filename`", state.display()),
            })
            .collect();
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "arrow"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!(
            "{} holds neither state.json nor .arrow files",
            dir.display()
        );
    }
    Ok(files)
}

/// Every row of a `save_to_disk` folder (or of one `.arrow` stream file) as a record.
pub fn read_dataset(path: &Path) -> Result<Vec<Record>> {
    let files = if path.is_dir() {
        data_files(path)?
    } else {
        vec![path.to_path_buf()]
    };
    let mut out = Vec::new();
    for file in files {
        let reader = StreamReader::try_new(
            BufReader::new(
                File::open(&file).with_context(|| format!("cannot read {}", file.display()))?,
            ),
            None,
        )
        .with_context(|| format!("{} is not an Arrow IPC stream", file.display()))?;
        for batch in reader {
            let batch =
                batch.with_context(|| format!("{}: a corrupt record batch", file.display()))?;
            rows(&batch, &file, &mut out)?;
        }
    }
    Ok(out)
}

fn rows(batch: &RecordBatch, file: &Path, out: &mut Vec<Record>) -> Result<()> {
    let schema = batch.schema();
    for i in 0..batch.num_rows() {
        let mut fields = Map::new();
        for (f, col) in schema.fields().iter().zip(batch.columns()) {
            fields.insert(f.name().clone(), value(col.as_ref(), i, file)?);
        }
        out.push(Record {
            source: format!("{}:{}", file.display(), out.len() + 1),
            fields,
        });
    }
    Ok(())
}

/// One cell as JSON: numbers, booleans, strings, lists and structs (what `datasets` writes for
/// benchmark splits: class labels are integers, `Sequence` features are lists or structs of lists).
fn value(a: &dyn Array, i: usize, file: &Path) -> Result<Value> {
    if a.is_null(i) {
        return Ok(Value::Null);
    }
    macro_rules! num {
        ($t:ty) => {
            serde_json::json!(a.as_primitive::<$t>().value(i))
        };
    }
    Ok(match a.data_type() {
        DataType::Null => Value::Null,
        DataType::Boolean => Value::Bool(a.as_boolean().value(i)),
        DataType::Int8 => num!(Int8Type),
        DataType::Int16 => num!(Int16Type),
        DataType::Int32 => num!(Int32Type),
        DataType::Int64 => num!(Int64Type),
        DataType::UInt8 => num!(UInt8Type),
        DataType::UInt16 => num!(UInt16Type),
        DataType::UInt32 => num!(UInt32Type),
        DataType::UInt64 => num!(UInt64Type),
        DataType::Float32 => num!(Float32Type),
        DataType::Float64 => num!(Float64Type),
        DataType::Utf8 => Value::String(a.as_string::<i32>().value(i).to_string()),
        DataType::LargeUtf8 => Value::String(a.as_string::<i64>().value(i).to_string()),
        DataType::Utf8View => Value::String(a.as_string_view().value(i).to_string()),
        DataType::List(_) => list(a.as_list::<i32>().value(i).as_ref(), file)?,
        DataType::LargeList(_) => list(a.as_list::<i64>().value(i).as_ref(), file)?,
        DataType::Struct(fields) => {
            let s = a.as_struct();
            let mut m = Map::new();
            for (f, col) in fields.iter().zip(s.columns()) {
                m.insert(f.name().clone(), value(col.as_ref(), i, file)?);
            }
            Value::Object(m)
        }
        other => bail!("{}: unsupported Arrow type {other}", file.display()),
    })
}

fn list(a: &dyn Array, file: &Path) -> Result<Value> {
    (0..a.len())
        .map(|j| value(a, j, file))
        .collect::<Result<Vec<_>>>()
        .map(Value::Array)
}
