//! A small reader of the pickle programs inside PyTorch checkpoints.
//!
//! It understands what `torch.save` writes (protocol 2 to 5): containers, scalars, strings,
//! tensors rebuilt from persistent storages. Any other Python object (a `numpy.float64` learning
//! rate in an optimizer state, for example) becomes an opaque [`Value::Object`] instead of an
//! error, so that a checkpoint whose `state_dict` is plain tensors always reads.

use std::collections::HashMap;

/// A value of the pickle program.
#[derive(Debug, Clone)]
pub(crate) enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    /// A class or function named by `module.name`.
    Global(String, String),
    /// A reference to a storage record of the archive.
    Storage(StorageRef),
    /// `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, …)`.
    Tensor(TensorRef),
    /// Any other object: what built it is kept for error messages only.
    Object(String),
}

/// A storage record: its element type (the storage class name, e.g. `FloatStorage`) and its
/// key (the file name under `data/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StorageRef {
    pub class: String,
    pub key: String,
}

/// A tensor view of a storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TensorRef {
    pub storage: StorageRef,
    pub offset: usize,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}

/// Runs a pickle program and returns the value it leaves.
pub(crate) fn unpickle(data: &[u8]) -> Result<Value, String> {
    Machine {
        data,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    }
    .run()
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    /// Stack heights at each MARK.
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
}

impl Machine<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.data.len());
        let end = end.ok_or_else(|| format!("truncated pickle at byte {}", self.pos))?;
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }

    fn line(&mut self) -> Result<String, String> {
        let rest = &self.data[self.pos..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| format!("truncated pickle at byte {}", self.pos))?;
        let line = String::from_utf8_lossy(&rest[..end]).into_owned();
        self.pos += end + 1;
        Ok(line)
    }

    fn string(&mut self, len: usize) -> Result<Value, String> {
        let bytes = self.take(len)?;
        Ok(Value::Str(String::from_utf8_lossy(bytes).into_owned()))
    }

    fn pop(&mut self) -> Result<Value, String> {
        self.stack
            .pop()
            .ok_or_else(|| format!("pickle stack underflow at byte {}", self.pos))
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| format!("pickle MARK missing at byte {}", self.pos))?;
        if mark > self.stack.len() {
            return Err(format!("corrupt pickle stack at byte {}", self.pos));
        }
        Ok(self.stack.split_off(mark))
    }

    fn top(&mut self) -> Result<&mut Value, String> {
        let pos = self.pos;
        self.stack
            .last_mut()
            .ok_or_else(|| format!("pickle stack underflow at byte {pos}"))
    }

    fn memo_get(&self, key: u32) -> Result<Value, String> {
        self.memo
            .get(&key)
            .cloned()
            .ok_or_else(|| format!("pickle memo {key} missing at byte {}", self.pos))
    }

    fn set_items(&mut self, items: Vec<Value>) -> Result<(), String> {
        if !items.len().is_multiple_of(2) {
            return Err(format!("odd SETITEMS at byte {}", self.pos));
        }
        match self.top()? {
            Value::Dict(entries) => {
                let mut items = items.into_iter();
                while let (Some(k), Some(v)) = (items.next(), items.next()) {
                    entries.push((k, v));
                }
                Ok(())
            }
            // Items set on an opaque object are of no use here.
            Value::Object(_) => Ok(()),
            other => Err(format!("SETITEM on {}", describe(other))),
        }
    }

    fn append(&mut self, items: Vec<Value>) -> Result<(), String> {
        match self.top()? {
            Value::List(list) => {
                list.extend(items);
                Ok(())
            }
            Value::Object(_) => Ok(()),
            other => Err(format!("APPEND on {}", describe(other))),
        }
    }

    fn run(mut self) -> Result<Value, String> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?; // PROTO
                }
                0x95 => {
                    self.u64()?; // FRAME
                }
                b'.' => return self.pop(), // STOP
                b'(' => self.marks.push(self.stack.len()),
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(v.into()))
                }
                b'M' => {
                    let v = self.u16()?;
                    self.stack.push(Value::Int(v.into()))
                }
                b'J' => {
                    let v = self.u32()? as i32;
                    self.stack.push(Value::Int(v.into()))
                }
                0x8a => {
                    // LONG1: a little-endian two's complement integer of n bytes.
                    let n = self.u8()? as usize;
                    let bytes = self.take(n)?;
                    if n > 8 {
                        return Err(format!("integer of {n} bytes in pickle"));
                    }
                    let mut buf = if bytes.last().is_some_and(|b| b & 0x80 != 0) {
                        [0xff; 8]
                    } else {
                        [0; 8]
                    };
                    buf[..n].copy_from_slice(bytes);
                    self.stack.push(Value::Int(i64::from_le_bytes(buf)))
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into().unwrap());
                    self.stack.push(Value::Float(v))
                }
                b'X' => {
                    let len = self.u32()? as usize;
                    let v = self.string(len)?;
                    self.stack.push(v)
                }
                0x8c => {
                    let len = self.u8()? as usize;
                    let v = self.string(len)?;
                    self.stack.push(v)
                }
                0x8d => {
                    let len = self.u64()? as usize;
                    let v = self.string(len)?;
                    self.stack.push(v)
                }
                b'U' => {
                    let len = self.u8()? as usize;
                    let v = self.string(len)?;
                    self.stack.push(v)
                }
                b'T' => {
                    let len = self.u32()? as usize;
                    let v = self.string(len)?;
                    self.stack.push(v)
                }
                b'C' => {
                    let len = self.u8()? as usize;
                    let v = self.take(len)?.to_vec();
                    self.stack.push(Value::Bytes(v))
                }
                b'B' => {
                    let len = self.u32()? as usize;
                    let v = self.take(len)?.to_vec();
                    self.stack.push(Value::Bytes(v))
                }
                b')' => self.stack.push(Value::Tuple(Vec::new())),
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(items))
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err(format!("pickle stack underflow at byte {}", self.pos));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Value::Tuple(items))
                }
                b']' => self.stack.push(Value::List(Vec::new())),
                b'l' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(items))
                }
                b'}' => self.stack.push(Value::Dict(Vec::new())),
                b'd' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Dict(Vec::new()));
                    self.set_items(items)?
                }
                0x8f => self.stack.push(Value::List(Vec::new())), // EMPTY_SET, as a list
                0x90 => {
                    let items = self.pop_mark()?; // ADDITEMS
                    self.append(items)?
                }
                b'a' => {
                    let item = self.pop()?;
                    self.append(vec![item])?
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.append(items)?
                }
                b's' => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    self.set_items(vec![key, value])?
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?
                }
                b'q' => {
                    let key = self.u8()?.into();
                    let top = self.top()?.clone();
                    self.memo.insert(key, top);
                }
                b'r' => {
                    let key = self.u32()?;
                    let top = self.top()?.clone();
                    self.memo.insert(key, top);
                }
                0x94 => {
                    let key = self.memo.len() as u32; // MEMOIZE
                    let top = self.top()?.clone();
                    self.memo.insert(key, top);
                }
                b'h' => {
                    let key = self.u8()?.into();
                    let v = self.memo_get(key)?;
                    self.stack.push(v)
                }
                b'j' => {
                    let key = self.u32()?;
                    let v = self.memo_get(key)?;
                    self.stack.push(v)
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let top = self.top()?.clone();
                    self.stack.push(top)
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.stack.push(Value::Global(module, name))
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(module), Value::Str(name)) => {
                            self.stack.push(Value::Global(module, name))
                        }
                        _ => {
                            return Err(format!("STACK_GLOBAL without names at byte {}", self.pos))
                        }
                    }
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let value = reduce(callable, args)?;
                    self.stack.push(value)
                }
                0x81 => {
                    let _args = self.pop()?; // NEWOBJ
                    let class = self.pop()?;
                    self.stack.push(Value::Object(describe(&class)))
                }
                b'b' => {
                    let _state = self.pop()?; // BUILD: the state of tensors and objects is not needed
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let storage = persistent_load(pid)?;
                    self.stack.push(storage)
                }
                other => {
                    return Err(format!(
                        "unsupported pickle opcode 0x{other:02x} at byte {}",
                        self.pos - 1
                    ))
                }
            }
        }
    }
}

/// A short description of a value, for error messages.
fn describe(value: &Value) -> String {
    match value {
        Value::None => "None".to_string(),
        Value::Bool(v) => v.to_string(),
        Value::Int(v) => v.to_string(),
        Value::Float(v) => v.to_string(),
        Value::Str(v) => format!("{v:?}"),
        Value::Bytes(v) => format!("{} bytes", v.len()),
        Value::Tuple(v) => format!("a tuple of {}", v.len()),
        Value::List(v) => format!("a list of {}", v.len()),
        Value::Dict(v) => format!("a dict of {}", v.len()),
        Value::Global(module, name) => format!("{module}.{name}"),
        Value::Storage(storage) => format!("a {} storage", storage.class),
        Value::Tensor(tensor) => format!("a tensor of shape {:?}", tensor.shape),
        Value::Object(what) => format!("a {what} object"),
    }
}

fn int(value: &Value, what: &str) -> Result<usize, String> {
    match value {
        Value::Int(v) if *v >= 0 => Ok(*v as usize),
        other => Err(format!(
            "{what} is {}, not a non-negative integer",
            describe(other)
        )),
    }
}

fn ints(value: &Value, what: &str) -> Result<Vec<usize>, String> {
    match value {
        Value::Tuple(items) | Value::List(items) => items.iter().map(|v| int(v, what)).collect(),
        other => Err(format!("{what} is {}, not a tuple", describe(other))),
    }
}

/// `callable(*args)` for the few callables a state dict needs; anything else is opaque.
fn reduce(callable: Value, args: Value) -> Result<Value, String> {
    let Value::Global(module, name) = &callable else {
        return Ok(Value::Object(describe(&callable)));
    };
    let args = match args {
        Value::Tuple(args) => args,
        other => vec![other],
    };
    match (module.as_str(), name.as_str()) {
        ("collections", "OrderedDict") => Ok(Value::Dict(Vec::new())),
        ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => {
            let [storage, offset, shape, stride, ..] = args.as_slice() else {
                return Err(format!("{module}.{name} with {} arguments", args.len()));
            };
            let Value::Storage(storage) = storage else {
                return Err(format!("{module}.{name} of {}", describe(storage)));
            };
            Ok(Value::Tensor(TensorRef {
                storage: storage.clone(),
                offset: int(offset, "tensor offset")?,
                shape: ints(shape, "tensor shape")?,
                stride: ints(stride, "tensor stride")?,
            }))
        }
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => args
            .into_iter()
            .next()
            .ok_or_else(|| format!("{module}.{name} without arguments")),
        _ => Ok(Value::Object(format!("{module}.{name}"))),
    }
}

/// `('storage', storage_class, key, location, numel)` → a storage reference.
fn persistent_load(pid: Value) -> Result<Value, String> {
    let Value::Tuple(items) = &pid else {
        return Err(format!("persistent id {}", describe(&pid)));
    };
    match items.as_slice() {
        [Value::Str(kind), class, Value::Str(key), ..] if kind == "storage" => {
            let class = match class {
                Value::Global(_, name) => name.clone(),
                other => describe(other),
            };
            Ok(Value::Storage(StorageRef {
                class,
                key: key.clone(),
            }))
        }
        _ => Err(format!("persistent id {}", describe(&pid))),
    }
}
