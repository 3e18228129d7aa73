//! [`PytorchCheckpoint`]: the tensors of a PyTorch `state_dict` saved by `torch.save`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use burn::tensor::{bf16, f16, TensorData};

use super::pickle::{unpickle, TensorRef, Value};
use crate::Error;

/// Why a checkpoint could not be imported. Every variant names the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportError {
    /// The file could not be opened or read.
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        message: String,
    },
    /// The file is not a PyTorch checkpoint this reader understands, or it is truncated or corrupt.
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The checkpoint's tensors do not fit the model: missing, unexpected or misshapen keys.
    Mismatch {
        /// The file.
        path: PathBuf,
        /// One line per problem, naming the key and, for shapes, the expected and found shape.
        problems: Vec<String>,
    },
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImportError::Io { path, message } => {
                write!(f, "cannot read {}: {message}", path.display())
            }
            ImportError::Format { path, message } => write!(
                f,
                "{} is not a readable PyTorch checkpoint: {message}",
                path.display()
            ),
            ImportError::Mismatch { path, problems } => {
                write!(
                    f,
                    "{} does not fit the model ({} problems):",
                    path.display(),
                    problems.len()
                )?;
                for problem in problems {
                    write!(f, "\n  - {problem}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ImportError {}

/// The tensors of a PyTorch checkpoint's `state_dict`, by key, as saved (float tensors as
/// float32, integer tensors as int64).
///
/// Reads a checkpoint of the paper's training script (a dict whose `state_dict` entry holds the
/// model, next to an optimizer state whose Python objects are skipped) and a bare `state_dict`
/// (torchvision's weights, for example), in the zip format of `torch.save` (PyTorch ≥ 1.6).
#[derive(Debug, Clone)]
pub struct PytorchCheckpoint {
    path: PathBuf,
    tensors: BTreeMap<String, TensorData>,
}

impl PytorchCheckpoint {
    /// Reads every tensor of the file's `state_dict`; the error is an [`Error::Import`].
    pub fn read(path: impl AsRef<Path>) -> Result<Self, Error> {
        Self::read_file(path.as_ref()).map_err(Error::Import)
    }

    fn read_file(path: &Path) -> Result<Self, ImportError> {
        let path = path.to_path_buf();
        let format = |message: String| ImportError::Format {
            path: path.clone(),
            message,
        };
        let file = std::fs::File::open(&path).map_err(|error| ImportError::Io {
            path: path.clone(),
            message: error.to_string(),
        })?;
        let mut archive = zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|error| {
            format(format!(
                "not a zip archive as torch.save writes ({error}); files of PyTorch before 1.6 \
                 must be re-saved with a recent PyTorch"
            ))
        })?;
        let pickle_name = (0..archive.len())
            .filter_map(|i| archive.name_for_index(i).map(str::to_string))
            .find(|name| name == "data.pkl" || name.ends_with("/data.pkl"))
            .ok_or_else(|| format("no data.pkl in the archive".to_string()))?;
        let prefix = pickle_name.trim_end_matches("data.pkl").to_string();
        let mut read_entry = |name: &str| -> Result<Vec<u8>, ImportError> {
            let mut entry = archive
                .by_name(name)
                .map_err(|error| format(format!("entry {name}: {error}")))?;
            let mut bytes = Vec::with_capacity(entry.size() as usize);
            entry
                .read_to_end(&mut bytes)
                .map_err(|error| format(format!("entry {name}: {error}")))?;
            Ok(bytes)
        };
        if let Ok(order) = read_entry(&format!("{prefix}byteorder")) {
            if order != b"little" {
                return Err(format(format!(
                    "byte order {:?} (only little-endian files are supported)",
                    String::from_utf8_lossy(&order)
                )));
            }
        }
        let root = unpickle(&read_entry(&pickle_name)?)
            .map_err(|message| format(format!("{pickle_name}: {message}")))?;
        let state_dict = match root {
            Value::Dict(entries) => match entries
                .iter()
                .find(|(k, _)| matches!(k, Value::Str(k) if k == "state_dict"))
            {
                Some((_, Value::Dict(state))) => state.clone(),
                Some(_) => return Err(format("its state_dict is not a dict".to_string())),
                None => entries,
            },
            _ => return Err(format("the pickled object is not a dict".to_string())),
        };
        let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
        let mut tensors = BTreeMap::new();
        for (key, value) in state_dict {
            let (Value::Str(key), Value::Tensor(tensor)) = (key, value) else {
                continue;
            };
            if !storages.contains_key(&tensor.storage.key) {
                let bytes = read_entry(&format!("{prefix}data/{}", tensor.storage.key))?;
                storages.insert(tensor.storage.key.clone(), bytes);
            }
            let data = materialise(&tensor, &storages[&tensor.storage.key])
                .map_err(|message| format(format!("tensor {key}: {message}")))?;
            tensors.insert(key, data);
        }
        if tensors.is_empty() {
            return Err(format("no tensors in its state_dict".to_string()));
        }
        Ok(Self { path, tensors })
    }

    /// A state dict held in memory (for example, tensors assembled by a program of one's own),
    /// reported under `name` in errors.
    pub fn from_tensors(name: impl Into<PathBuf>, tensors: BTreeMap<String, TensorData>) -> Self {
        Self {
            path: name.into(),
            tensors,
        }
    }

    /// The file it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tensors by `state_dict` key.
    pub fn tensors(&self) -> &BTreeMap<String, TensorData> {
        &self.tensors
    }
}

/// The element type of a storage class: its size in bytes, and whether it is a float type.
fn element(class: &str) -> Result<(usize, bool), String> {
    Ok(match class {
        "FloatStorage" => (4, true),
        "DoubleStorage" => (8, true),
        "HalfStorage" | "BFloat16Storage" => (2, true),
        "LongStorage" => (8, false),
        "IntStorage" => (4, false),
        "ShortStorage" => (2, false),
        "CharStorage" | "ByteStorage" | "BoolStorage" => (1, false),
        other => return Err(format!("unsupported storage type {other}")),
    })
}

/// Gathers a (possibly strided) tensor view out of its storage bytes.
fn materialise(tensor: &TensorRef, bytes: &[u8]) -> Result<TensorData, String> {
    let class = tensor.storage.class.as_str();
    let (size, is_float) = element(class)?;
    let available = bytes.len() / size;
    if tensor.shape.len() != tensor.stride.len() {
        return Err(format!(
            "shape {:?} and stride {:?} differ in rank",
            tensor.shape, tensor.stride
        ));
    }
    let count: usize = tensor.shape.iter().product();
    let mut indices = Vec::with_capacity(count);
    if count > 0 {
        let mut index = vec![0usize; tensor.shape.len()];
        loop {
            let at = tensor.offset
                + index
                    .iter()
                    .zip(&tensor.stride)
                    .map(|(i, s)| i * s)
                    .sum::<usize>();
            if at >= available {
                return Err(format!(
                    "element {at} is past the end of its storage ({available} elements): the file is truncated"
                ));
            }
            indices.push(at);
            // Row-major increment.
            let mut dim = tensor.shape.len();
            loop {
                if dim == 0 {
                    break;
                }
                dim -= 1;
                index[dim] += 1;
                if index[dim] < tensor.shape[dim] {
                    break;
                }
                index[dim] = 0;
            }
            if index.iter().all(|&i| i == 0) {
                break;
            }
        }
    }
    let raw = |i: usize| &bytes[i * size..(i + 1) * size];
    let shape = tensor.shape.clone();
    Ok(if is_float {
        let value = |i: usize| -> f32 {
            let b = raw(i);
            match class {
                "FloatStorage" => f32::from_le_bytes(b.try_into().unwrap()),
                "DoubleStorage" => f64::from_le_bytes(b.try_into().unwrap()) as f32,
                "HalfStorage" => f16::from_bits(u16::from_le_bytes(b.try_into().unwrap())).to_f32(),
                _ => bf16::from_bits(u16::from_le_bytes(b.try_into().unwrap())).to_f32(),
            }
        };
        TensorData::new(indices.into_iter().map(value).collect::<Vec<f32>>(), shape)
    } else {
        let value = |i: usize| -> i64 {
            let b = raw(i);
            match size {
                8 => i64::from_le_bytes(b.try_into().unwrap()),
                4 => i32::from_le_bytes(b.try_into().unwrap()).into(),
                2 => i16::from_le_bytes(b.try_into().unwrap()).into(),
                _ if class == "CharStorage" => (b[0] as i8).into(),
                _ => b[0].into(),
            }
        };
        TensorData::new(indices.into_iter().map(value).collect::<Vec<i64>>(), shape)
    })
}
