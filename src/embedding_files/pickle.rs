//! A restricted unpickler for PyTorch files, and the few pickle ops `torch.save` writes.
//!
//! Only what `torch.save` emits for tensors and plain containers is understood: dicts,
//! `collections.OrderedDict`, lists, tuples, sets, str, bytes, int, float, bool, None, tensors
//! rebuilt by `torch._utils._rebuild_tensor_v2` / `_rebuild_tensor` / `_rebuild_parameter` from
//! persistent storage ids `('storage', torch.FloatStorage, key, location, numel[, view])`, and
//! `torch.nn.ParameterDict` objects (the original textual-inversion files). Any other global is
//! refused with [`PickleError::Forbidden`] naming it: nothing in a file is ever executed or
//! imported. Every read is bounds-checked, the stack and memo are checked, and nothing is
//! allocated from a declared length before the bytes are known to be there.
//!
//! Objects live in an arena and values refer to them by index, so shared and even cyclic
//! references cost nothing and dropping never recurses; [`Unpickler::to_value`] turns the result
//! into an owned [`PickleValue`] tree with a depth and node budget.

use std::collections::HashMap;
use std::fmt;

/// Element type of a torch storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageDtype {
    F32,
    F16,
    BF16,
    F64,
    I64,
    I32,
}

impl StorageDtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            StorageDtype::F32 | StorageDtype::I32 => 4,
            StorageDtype::F16 | StorageDtype::BF16 => 2,
            StorageDtype::F64 | StorageDtype::I64 => 8,
        }
    }
    /// The legacy storage class name torch pickles (`FloatStorage`, ...).
    pub fn class_name(self) -> &'static str {
        match self {
            StorageDtype::F32 => "FloatStorage",
            StorageDtype::F16 => "HalfStorage",
            StorageDtype::BF16 => "BFloat16Storage",
            StorageDtype::F64 => "DoubleStorage",
            StorageDtype::I64 => "LongStorage",
            StorageDtype::I32 => "IntStorage",
        }
    }
    fn from_class(name: &str) -> Option<Self> {
        [Self::F32, Self::F16, Self::BF16, Self::F64, Self::I64, Self::I32].into_iter().find(|d| d.class_name() == name)
    }
    /// Whether values of this type can be read as embedding vectors.
    pub fn is_float(self) -> bool {
        matches!(self, StorageDtype::F32 | StorageDtype::F16 | StorageDtype::BF16 | StorageDtype::F64)
    }
}

/// A tensor as the pickle describes it: which storage, and the view into it (in elements).
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub dtype: StorageDtype,
    /// Storage key: the file `data/<key>` in a zip archive.
    pub storage_key: String,
    /// Device the tensor was saved from (`cpu`, `cuda:0`); ignored when loading.
    pub location: String,
    /// Elements in the whole storage.
    pub storage_numel: u64,
    pub offset: u64,
    pub size: Vec<u64>,
    pub stride: Vec<u64>,
    pub requires_grad: bool,
}

/// A value read from a pickle.
#[derive(Clone, Debug, PartialEq)]
pub enum PickleValue {
    None,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<PickleValue>),
    Tuple(Vec<PickleValue>),
    /// A dict or `OrderedDict`, in insertion order (a repeated key: the last one counts).
    Dict(Vec<(PickleValue, PickleValue)>),
    Tensor(TensorInfo),
    /// A `torch.nn.Module` subclass allowed here (`torch.nn.ParameterDict`) with its state.
    Module {
        class: String,
        state: Box<PickleValue>,
    },
}

impl PickleValue {
    /// Looks a string key up in a dict (the last occurrence counts, as in Python).
    pub fn get(&self, key: &str) -> Option<&PickleValue> {
        match self {
            PickleValue::Dict(items) => items.iter().rev().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            PickleValue::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_int(&self) -> Option<i128> {
        match self {
            PickleValue::Int(i) => Some(*i),
            PickleValue::Bool(b) => Some(*b as i128),
            _ => None,
        }
    }
    /// A dict's items with repeated keys collapsed (last wins), in first-insertion order.
    /// Scalar and string keys are compared through a hash map (a file can hold 10^5 keys:
    /// comparing each with all others took minutes); other keys (NaN, tuples, tensors) are
    /// never merged.
    pub fn dict_items(&self) -> Option<Vec<(&PickleValue, &PickleValue)>> {
        let PickleValue::Dict(items) = self else { return None };
        let mut out: Vec<(&PickleValue, &PickleValue)> = Vec::with_capacity(items.len());
        let mut index: HashMap<DictKey<'_>, usize> = HashMap::with_capacity(items.len());
        for (k, v) in items {
            let slot = DictKey::of(k).and_then(|key| match index.entry(key) {
                std::collections::hash_map::Entry::Occupied(e) => Some(*e.get()),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(out.len());
                    None
                }
            });
            match slot {
                Some(i) => out[i].1 = v,
                None => out.push((k, v)),
            }
        }
        Some(out)
    }
    /// Short type name for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            PickleValue::None => "None",
            PickleValue::Bool(_) => "bool",
            PickleValue::Int(_) => "int",
            PickleValue::Float(_) => "float",
            PickleValue::Str(_) => "str",
            PickleValue::Bytes(_) => "bytes",
            PickleValue::List(_) => "list",
            PickleValue::Tuple(_) => "tuple",
            PickleValue::Dict(_) => "dict",
            PickleValue::Tensor(_) => "tensor",
            PickleValue::Module { .. } => "module",
        }
    }
}

/// A dict key that can be hashed, equal exactly when the [`PickleValue`]s are (`==`).
#[derive(Hash, PartialEq, Eq)]
enum DictKey<'a> {
    None,
    Bool(bool),
    Int(i128),
    /// Bits of a non-NaN float, with -0.0 as 0.0.
    Float(u64),
    Str(&'a str),
    Bytes(&'a [u8]),
}

impl<'a> DictKey<'a> {
    fn of(v: &'a PickleValue) -> Option<Self> {
        Some(match v {
            PickleValue::None => Self::None,
            PickleValue::Bool(b) => Self::Bool(*b),
            PickleValue::Int(i) => Self::Int(*i),
            PickleValue::Float(f) if f.is_nan() => return None,
            PickleValue::Float(f) => Self::Float(if *f == 0.0 { 0 } else { f.to_bits() }),
            PickleValue::Str(s) => Self::Str(s),
            PickleValue::Bytes(b) => Self::Bytes(b),
            _ => return None,
        })
    }
}

/// Why a pickle was not read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PickleError {
    /// The pickle references a global (class or function) that is not on the allow list.
    Forbidden { module: String, name: String },
    /// The bytes are not a well-formed pickle of the supported kind.
    Malformed(String),
}

impl fmt::Display for PickleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PickleError::Forbidden { module, name } => write!(f, "forbidden global `{module}.{name}`"),
            PickleError::Malformed(m) => f.write_str(m),
        }
    }
}

fn bad<T>(msg: impl Into<String>) -> Result<T, PickleError> {
    Err(PickleError::Malformed(msg.into()))
}

/// Globals the unpickler can stand for (none of them is ever called: each is rebuilt here).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Global {
    OrderedDict,
    Set,
    RebuildTensorV2,
    RebuildTensor,
    RebuildParameter,
    RebuildParameterWithState,
    Storage(StorageDtype),
    ParameterDict,
}

fn allowed_global(module: &str, name: &str) -> Option<Global> {
    Some(match (module, name) {
        ("collections", "OrderedDict") => Global::OrderedDict,
        ("builtins" | "__builtin__", "set") => Global::Set,
        ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
        ("torch._utils", "_rebuild_tensor") => Global::RebuildTensor,
        ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
        ("torch._utils", "_rebuild_parameter_with_state") => Global::RebuildParameterWithState,
        ("torch", cls) => Global::Storage(StorageDtype::from_class(cls)?),
        ("torch.nn.modules.container", "ParameterDict") => Global::ParameterDict,
        _ => return None,
    })
}

/// A value on the stack or in the memo: scalars inline, everything else an arena index.
#[derive(Clone, Copy, Debug)]
enum V {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Obj(usize),
}

#[derive(Debug)]
struct StorageObj {
    dtype: StorageDtype,
    key: String,
    location: String,
    numel: u64,
}

#[derive(Debug)]
struct TensorObj {
    storage: usize,
    offset: u64,
    size: Vec<u64>,
    stride: Vec<u64>,
    requires_grad: bool,
}

/// Kept small (32 bytes): the arena grows with every opcode of a hostile file.
#[derive(Debug)]
enum Obj {
    /// An integer that does not fit i64 (LONG1/LONG4 up to 16 bytes).
    BigInt(i128),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<V>),
    Tuple(Vec<V>),
    Dict(Vec<(V, V)>),
    Global(Global),
    Storage(Box<StorageObj>),
    Tensor(Box<TensorObj>),
    /// A `torch.nn.ParameterDict` and its state.
    ParameterDict {
        state: V,
    },
}

const _: () = assert!(std::mem::size_of::<Obj>() <= 32 && std::mem::size_of::<V>() <= 16);

const PARAMETER_DICT: &str = "torch.nn.modules.container.ParameterDict";

/// Most objects (and opcodes) one pickle may create; far above any embedding file's count.
const MAX_OBJECTS: usize = 1_000_000;
/// Nodes [`Unpickler::to_value`] may produce (shared objects are expanded each time they occur).
const MAX_NODES: usize = 1_000_000;
/// Nesting depth [`Unpickler::to_value`] accepts.
const MAX_DEPTH: usize = 200;
const BUDGET: &str = "node budget exhausted";
/// Container slots (list/tuple items, dict keys and values) all objects together may hold: a
/// few opcodes can copy a big list again and again (`OrderedDict(l)`, `set(l)`, `APPENDS`).
const MAX_CELLS: usize = 4_000_000;
/// Tensor rank accepted.
const MAX_RANK: usize = 16;

/// The restricted unpickler. [`Unpickler::load`] reads one pickle (up to its STOP) from `data`
/// starting at `pos`.
pub struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<V>,
    marks: Vec<usize>,
    memo: HashMap<u32, V>,
    arena: Vec<Obj>,
    /// Container slots allocated so far (bounded by [`MAX_CELLS`]).
    cells: usize,
    /// String bytes [`Unpickler::to_value`] may still copy (a shared string is copied each time
    /// it occurs).
    text_budget: std::cell::Cell<usize>,
}

impl<'a> Unpickler<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        let text_budget = std::cell::Cell::new(0);
        Self { data, pos: 0, stack: Vec::new(), marks: Vec::new(), memo: HashMap::new(), arena: Vec::new(), cells: 0, text_budget }
    }

    /// Byte offset after the last STOP read.
    pub fn position(&self) -> usize {
        self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let data: &'a [u8] = self.data;
        match end {
            Some(end) => {
                let s = &data[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => bad(format!(
                "truncated pickle: {n} bytes needed at offset {} but only {} remain",
                self.pos,
                self.data.len().saturating_sub(self.pos)
            )),
        }
    }
    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N], PickleError> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }
    fn line(&mut self) -> Result<&'a str, PickleError> {
        let data: &'a [u8] = self.data;
        let rest = &data[self.pos..];
        let Some(n) = rest.iter().take(4096).position(|&b| b == b'\n') else {
            return bad(format!("unterminated GLOBAL name at offset {}", self.pos));
        };
        let s = std::str::from_utf8(&rest[..n]).map_err(|_| PickleError::Malformed("GLOBAL name is not UTF-8".into()))?;
        self.pos += n + 1;
        Ok(s)
    }

    fn alloc(&mut self, o: Obj) -> Result<V, PickleError> {
        if self.arena.len() >= MAX_OBJECTS {
            return bad(format!("more than {MAX_OBJECTS} objects: not an embedding file"));
        }
        self.grow(match &o {
            Obj::List(l) | Obj::Tuple(l) => l.len(),
            Obj::Dict(d) => 2 * d.len(),
            _ => 0,
        })?;
        self.arena.push(o);
        Ok(V::Obj(self.arena.len() - 1))
    }
    fn push(&mut self, v: V) -> Result<(), PickleError> {
        if self.stack.len() >= MAX_OBJECTS {
            return bad("pickle stack too deep");
        }
        self.stack.push(v);
        Ok(())
    }
    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }
    fn pop(&mut self, op: &str) -> Result<V, PickleError> {
        if self.stack.len() <= self.floor() {
            return bad(format!("stack underflow at {op} (offset {})", self.pos));
        }
        Ok(self.stack.pop().expect("checked"))
    }
    fn top(&self, op: &str) -> Result<V, PickleError> {
        if self.stack.len() <= self.floor() {
            return bad(format!("stack underflow at {op} (offset {})", self.pos));
        }
        Ok(*self.stack.last().expect("checked"))
    }
    fn pop_mark(&mut self, op: &str) -> Result<Vec<V>, PickleError> {
        let Some(m) = self.marks.pop() else {
            return bad(format!("{op} without a MARK (offset {})", self.pos));
        };
        Ok(self.stack.split_off(m))
    }
    fn obj(&self, v: V) -> Option<&Obj> {
        match v {
            V::Obj(i) => self.arena.get(i),
            _ => None,
        }
    }
    fn str_of(&self, v: V) -> Option<&str> {
        match self.obj(v) {
            Some(Obj::Str(s)) => Some(s),
            _ => None,
        }
    }
    fn tuple_of(&self, v: V, what: &str) -> Result<Vec<V>, PickleError> {
        match self.obj(v) {
            Some(Obj::Tuple(t)) => Ok(t.clone()),
            _ => bad(format!("{what}: expected a tuple")),
        }
    }
    fn uint_of(&self, v: V, what: &str) -> Result<u64, PickleError> {
        match v {
            V::Int(i) if i >= 0 => Ok(i as u64),
            _ => bad(format!("{what}: expected a non-negative integer")),
        }
    }
    fn uints_of(&self, v: V, what: &str) -> Result<Vec<u64>, PickleError> {
        let items = self.tuple_of(v, what)?;
        if items.len() > MAX_RANK {
            return bad(format!("{what}: rank {} is too large", items.len()));
        }
        items.into_iter().map(|x| self.uint_of(x, what)).collect()
    }
    fn memo_put(&mut self, idx: u32) -> Result<(), PickleError> {
        let v = self.top("PUT")?;
        self.memo.insert(idx, v);
        Ok(())
    }
    fn memo_get(&mut self, idx: u32) -> Result<(), PickleError> {
        match self.memo.get(&idx) {
            Some(&v) => self.push(v),
            None => bad(format!("memo entry {idx} read before it was written (offset {})", self.pos)),
        }
    }
    fn new_str(&mut self, bytes: &[u8]) -> Result<V, PickleError> {
        let s = std::str::from_utf8(bytes).map_err(|_| PickleError::Malformed(format!("string at offset {} is not UTF-8", self.pos)))?;
        self.alloc(Obj::Str(s.to_string()))
    }
    fn len_prefixed(&mut self, width: usize) -> Result<&'a [u8], PickleError> {
        let n = match width {
            1 => self.u8()? as u64,
            4 => u32::from_le_bytes(self.arr()?) as u64,
            _ => u64::from_le_bytes(self.arr()?),
        };
        // `take` checks the length against the bytes that are actually there before anything is copied.
        let n = usize::try_from(n).map_err(|_| PickleError::Malformed(format!("declared length {n} is too large")))?;
        self.take(n)
    }

    /// Counts `n` more container slots against [`MAX_CELLS`].
    fn grow(&mut self, n: usize) -> Result<(), PickleError> {
        self.cells = self.cells.saturating_add(n);
        if self.cells > MAX_CELLS {
            return bad(format!("containers with more than {MAX_CELLS} items in all: not an embedding file"));
        }
        Ok(())
    }
    fn append(&mut self, list: V, items: Vec<V>, op: &str) -> Result<(), PickleError> {
        self.grow(items.len())?;
        match list {
            V::Obj(i) => match self.arena.get_mut(i) {
                Some(Obj::List(l)) => {
                    l.extend(items);
                    Ok(())
                }
                _ => bad(format!("{op} on something that is not a list")),
            },
            _ => bad(format!("{op} on something that is not a list")),
        }
    }
    fn set_items(&mut self, dict: V, items: Vec<V>, op: &str) -> Result<(), PickleError> {
        if items.len() % 2 != 0 {
            return bad(format!("{op} with an odd number of items"));
        }
        self.grow(items.len())?;
        let pairs = items.chunks_exact(2).map(|c| (c[0], c[1]));
        let target = match dict {
            V::Obj(i) => self.arena.get_mut(i),
            _ => None,
        };
        match target {
            Some(Obj::Dict(d)) => {
                d.extend(pairs);
                Ok(())
            }
            _ => bad(format!("{op} on something that is not a dict")),
        }
    }

    /// Calls an allowed global with `args` (a tuple) - by rebuilding what it would return.
    fn call(&mut self, func: V, args: V) -> Result<V, PickleError> {
        let g = match self.obj(func) {
            Some(Obj::Global(g)) => *g,
            _ => return bad("REDUCE/NEWOBJ on something that is not an allowed class or function"),
        };
        let args = self.tuple_of(args, "call arguments")?;
        match g {
            Global::OrderedDict => {
                if args.is_empty() {
                    self.alloc(Obj::Dict(Vec::new()))
                } else if let [a] = args[..] {
                    // OrderedDict(iterable of pairs)
                    let items = match self.obj(a) {
                        Some(Obj::List(l)) | Some(Obj::Tuple(l)) => l.clone(),
                        Some(Obj::Dict(d)) => d.iter().flat_map(|&(k, v)| [k, v]).collect(),
                        _ => return bad("OrderedDict(...) with an argument that is not a list of pairs"),
                    };
                    let mut pairs = Vec::new();
                    for it in items {
                        match self.obj(it) {
                            Some(Obj::Tuple(p)) | Some(Obj::List(p)) if p.len() == 2 => pairs.push((p[0], p[1])),
                            _ => return bad("OrderedDict(...) with an item that is not a pair"),
                        }
                    }
                    self.alloc(Obj::Dict(pairs))
                } else {
                    bad("OrderedDict(...) with more than one argument")
                }
            }
            Global::Set => {
                let items = match args[..] {
                    [] => Vec::new(),
                    [a] => match self.obj(a) {
                        Some(Obj::List(l)) | Some(Obj::Tuple(l)) => l.clone(),
                        _ => return bad("set(...) with an argument that is not a list"),
                    },
                    _ => return bad("set(...) with more than one argument"),
                };
                self.alloc(Obj::List(items))
            }
            Global::RebuildTensorV2 | Global::RebuildTensor => {
                if args.len() < 4 || (g == Global::RebuildTensor && args.len() != 4) || args.len() > 7 {
                    return bad(format!("tensor rebuild with {} arguments", args.len()));
                }
                let storage = match args[0] {
                    V::Obj(i) if matches!(self.arena.get(i), Some(Obj::Storage(_))) => i,
                    _ => return bad("tensor rebuild: the first argument is not a storage"),
                };
                let offset = self.uint_of(args[1], "tensor storage offset")?;
                let size = self.uints_of(args[2], "tensor size")?;
                let stride = self.uints_of(args[3], "tensor stride")?;
                if size.len() != stride.len() {
                    return bad(format!("tensor size {size:?} and stride {stride:?} differ in rank"));
                }
                let requires_grad = match args.get(4) {
                    None | Some(V::None) => false,
                    Some(V::Bool(b)) => *b,
                    Some(V::Int(i)) => *i != 0,
                    Some(_) => return bad("tensor rebuild: requires_grad is not a bool"),
                };
                self.alloc(Obj::Tensor(Box::new(TensorObj { storage, offset, size, stride, requires_grad })))
            }
            Global::RebuildParameter | Global::RebuildParameterWithState => {
                let (data, rg) = match args[..] {
                    [d, rg, ..] if args.len() <= 4 => (d, rg),
                    _ => return bad(format!("parameter rebuild with {} arguments", args.len())),
                };
                let requires_grad = matches!(rg, V::Bool(true)) || matches!(rg, V::Int(i) if i != 0);
                match self.obj(data) {
                    Some(Obj::Tensor(t)) => {
                        let t = TensorObj {
                            storage: t.storage,
                            offset: t.offset,
                            size: t.size.clone(),
                            stride: t.stride.clone(),
                            requires_grad,
                        };
                        self.alloc(Obj::Tensor(Box::new(t)))
                    }
                    _ => bad("parameter rebuild: the data is not a tensor"),
                }
            }
            Global::ParameterDict => {
                let empty = self.alloc(Obj::Dict(Vec::new()))?;
                self.alloc(Obj::ParameterDict { state: empty })
            }
            Global::Storage(_) => bad("a storage class called directly (storages come from persistent ids)"),
        }
    }

    fn persistent_load(&mut self, pid: V) -> Result<V, PickleError> {
        let t = self.tuple_of(pid, "persistent id")?;
        if !(t.len() == 5 || t.len() == 6) || self.str_of(t[0]) != Some("storage") {
            return bad("persistent id is not ('storage', type, key, location, numel)");
        }
        let dtype = match self.obj(t[1]) {
            Some(Obj::Global(Global::Storage(d))) => *d,
            _ => return bad("persistent id: the storage type is not a torch storage class"),
        };
        let key = match (self.str_of(t[2]), t[2]) {
            (Some(s), _) => s.to_string(),
            (None, V::Int(i)) => i.to_string(),
            _ => return bad("persistent id: the storage key is not a string"),
        };
        let location = self.str_of(t[3]).unwrap_or("cpu").to_string();
        let numel = self.uint_of(t[4], "storage size")?;
        if t.len() == 6 && !matches!(t[5], V::None) {
            return bad("legacy storage views (view_metadata) are not supported; re-save the file with a recent torch");
        }
        self.alloc(Obj::Storage(Box::new(StorageObj { dtype, key, location, numel })))
    }

    fn build(&mut self, target: V, state: V) -> Result<(), PickleError> {
        let empty_state = match state {
            V::None => true,
            V::Obj(i) => matches!(self.arena.get(i), Some(Obj::Dict(d)) if d.is_empty()),
            _ => false,
        };
        match target {
            V::Obj(i) => match self.arena.get_mut(i) {
                Some(Obj::ParameterDict { state: s }) => {
                    *s = state;
                    Ok(())
                }
                _ if empty_state => Ok(()),
                Some(Obj::Tensor(_)) => Ok(()), // tensor subclass state (e.g. `_rebuild_from_type`): not needed here
                _ => bad("BUILD (setting object state) on an object that does not take state"),
            },
            _ => bad("BUILD on a scalar"),
        }
    }

    /// Reads one pickle up to its STOP and returns the index of the result in the arena
    /// (or the scalar). Call [`Unpickler::to_value`] on it.
    pub fn load(&mut self) -> Result<PickleValue, PickleError> {
        self.stack.clear();
        self.marks.clear();
        self.memo.clear();
        let v = self.run()?;
        self.to_value(v)
    }

    fn run(&mut self) -> Result<V, PickleError> {
        loop {
            if self.arena.len() >= MAX_OBJECTS {
                return bad(format!("more than {MAX_OBJECTS} objects: not an embedding file"));
            }
            let at = self.pos;
            let op = match self.data.get(self.pos) {
                Some(&b) => b,
                None => return bad(format!("pickle ends at offset {at} without STOP: the file is truncated")),
            };
            self.pos += 1;
            match op {
                0x80 => {
                    // PROTO
                    let p = self.u8()?;
                    if p > 5 {
                        return bad(format!("unsupported pickle protocol {p}"));
                    }
                }
                0x95 => {
                    // FRAME: a length hint only
                    self.arr::<8>()?;
                }
                b'.' => {
                    // STOP
                    let v = self.pop("STOP")?;
                    if !self.marks.is_empty() {
                        return bad("STOP inside an unclosed MARK");
                    }
                    return Ok(v);
                }
                b'(' => {
                    if self.marks.len() >= MAX_OBJECTS {
                        return bad("too many MARKs");
                    }
                    self.marks.push(self.stack.len());
                }
                b'0' => {
                    self.pop("POP")?;
                }
                b'1' => {
                    self.pop_mark("POP_MARK")?;
                }
                b'2' => {
                    let v = self.top("DUP")?;
                    self.push(v)?;
                }
                b'}' => {
                    let v = self.alloc(Obj::Dict(Vec::new()))?;
                    self.push(v)?;
                }
                b']' => {
                    let v = self.alloc(Obj::List(Vec::new()))?;
                    self.push(v)?;
                }
                b')' => {
                    let v = self.alloc(Obj::Tuple(Vec::new()))?;
                    self.push(v)?;
                }
                0x8f => {
                    // EMPTY_SET (kept as a list)
                    let v = self.alloc(Obj::List(Vec::new()))?;
                    self.push(v)?;
                }
                b't' => {
                    let items = self.pop_mark("TUPLE")?;
                    let v = self.alloc(Obj::Tuple(items))?;
                    self.push(v)?;
                }
                0x85..=0x87 => {
                    // TUPLE1..3
                    let n = (op - 0x84) as usize;
                    let mut items = vec![V::None; n];
                    for slot in items.iter_mut().rev() {
                        *slot = self.pop("TUPLEn")?;
                    }
                    let v = self.alloc(Obj::Tuple(items))?;
                    self.push(v)?;
                }
                b'l' => {
                    let items = self.pop_mark("LIST")?;
                    let v = self.alloc(Obj::List(items))?;
                    self.push(v)?;
                }
                0x91 => {
                    // FROZENSET
                    let items = self.pop_mark("FROZENSET")?;
                    let v = self.alloc(Obj::List(items))?;
                    self.push(v)?;
                }
                b'd' => {
                    let items = self.pop_mark("DICT")?;
                    if items.len() % 2 != 0 {
                        return bad("DICT with an odd number of items");
                    }
                    let pairs = items.chunks_exact(2).map(|c| (c[0], c[1])).collect();
                    let v = self.alloc(Obj::Dict(pairs))?;
                    self.push(v)?;
                }
                b'a' => {
                    let item = self.pop("APPEND")?;
                    let list = self.top("APPEND")?;
                    self.append(list, vec![item], "APPEND")?;
                }
                b'e' | 0x90 => {
                    // APPENDS, ADDITEMS
                    let items = self.pop_mark("APPENDS")?;
                    let list = self.top("APPENDS")?;
                    self.append(list, items, "APPENDS")?;
                }
                b's' => {
                    let v = self.pop("SETITEM")?;
                    let k = self.pop("SETITEM")?;
                    let d = self.top("SETITEM")?;
                    self.set_items(d, vec![k, v], "SETITEM")?;
                }
                b'u' => {
                    let items = self.pop_mark("SETITEMS")?;
                    let d = self.top("SETITEMS")?;
                    self.set_items(d, items, "SETITEMS")?;
                }
                b'X' | 0x8c | 0x8d => {
                    // BINUNICODE, SHORT_BINUNICODE, BINUNICODE8
                    let width = match op {
                        b'X' => 4,
                        0x8c => 1,
                        _ => 8,
                    };
                    let bytes = self.len_prefixed(width)?;
                    let v = self.new_str(bytes)?;
                    self.push(v)?;
                }
                b'T' | b'U' => {
                    // BINSTRING, SHORT_BINSTRING (Python 2 str): text when UTF-8, else bytes
                    let bytes = self.len_prefixed(if op == b'T' { 4 } else { 1 })?;
                    let v = match std::str::from_utf8(bytes) {
                        Ok(s) => self.alloc(Obj::Str(s.to_string()))?,
                        Err(_) => self.alloc(Obj::Bytes(bytes.to_vec()))?,
                    };
                    self.push(v)?;
                }
                b'B' | b'C' | 0x8e => {
                    // BINBYTES, SHORT_BINBYTES, BINBYTES8
                    let width = match op {
                        b'B' => 4,
                        b'C' => 1,
                        _ => 8,
                    };
                    let bytes = self.len_prefixed(width)?.to_vec();
                    let v = self.alloc(Obj::Bytes(bytes))?;
                    self.push(v)?;
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.arr()?);
                    self.push(V::Int(v as i64))?;
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(V::Int(v as i64))?;
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.arr()?);
                    self.push(V::Int(v as i64))?;
                }
                0x8a | 0x8b => {
                    // LONG1, LONG4: little-endian two's complement
                    let n = if op == 0x8a { self.u8()? as usize } else { u32::from_le_bytes(self.arr()?) as usize };
                    if n > 16 {
                        return bad(format!("integer of {n} bytes is too large"));
                    }
                    let bytes = self.take(n)?;
                    let mut v: i128 = 0;
                    for (i, &b) in bytes.iter().enumerate() {
                        v |= (b as i128) << (8 * i);
                    }
                    if n > 0 && n < 16 && bytes[n - 1] & 0x80 != 0 {
                        v -= 1i128 << (8 * n);
                    }
                    let v = match i64::try_from(v) {
                        Ok(small) => V::Int(small),
                        Err(_) => self.alloc(Obj::BigInt(v))?,
                    };
                    self.push(v)?;
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.arr()?);
                    self.push(V::Float(v))?;
                }
                0x88 => self.push(V::Bool(true))?,
                0x89 => self.push(V::Bool(false))?,
                b'N' => self.push(V::None)?,
                b'q' => {
                    let i = self.u8()? as u32;
                    self.memo_put(i)?;
                }
                b'r' => {
                    let i = u32::from_le_bytes(self.arr()?);
                    self.memo_put(i)?;
                }
                0x94 => {
                    // MEMOIZE
                    let i = u32::try_from(self.memo.len()).map_err(|_| PickleError::Malformed("memo too large".into()))?;
                    self.memo_put(i)?;
                }
                b'h' => {
                    let i = self.u8()? as u32;
                    self.memo_get(i)?;
                }
                b'j' => {
                    let i = u32::from_le_bytes(self.arr()?);
                    self.memo_get(i)?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = self.global(module, name)?;
                    self.push(g)?;
                }
                0x93 => {
                    // STACK_GLOBAL
                    let name = self.pop("STACK_GLOBAL")?;
                    let module = self.pop("STACK_GLOBAL")?;
                    let (Some(m), Some(n)) = (self.str_of(module).map(str::to_string), self.str_of(name).map(str::to_string)) else {
                        return bad("STACK_GLOBAL with module or name that is not a string");
                    };
                    let g = self.global(&m, &n)?;
                    self.push(g)?;
                }
                b'R' => {
                    let args = self.pop("REDUCE")?;
                    let func = self.pop("REDUCE")?;
                    let v = self.call(func, args)?;
                    self.push(v)?;
                }
                0x81 => {
                    // NEWOBJ: cls.__new__(cls, *args)
                    let args = self.pop("NEWOBJ")?;
                    let cls = self.pop("NEWOBJ")?;
                    let v = self.call(cls, args)?;
                    self.push(v)?;
                }
                0x92 => {
                    // NEWOBJ_EX: cls.__new__(cls, *args, **kwargs)
                    let kwargs = self.pop("NEWOBJ_EX")?;
                    let args = self.pop("NEWOBJ_EX")?;
                    let cls = self.pop("NEWOBJ_EX")?;
                    if !matches!(self.obj(kwargs), Some(Obj::Dict(d)) if d.is_empty()) {
                        return bad("NEWOBJ_EX with keyword arguments");
                    }
                    let v = self.call(cls, args)?;
                    self.push(v)?;
                }
                b'b' => {
                    let state = self.pop("BUILD")?;
                    let target = self.top("BUILD")?;
                    self.build(target, state)?;
                }
                b'Q' => {
                    let pid = self.pop("BINPERSID")?;
                    let v = self.persistent_load(pid)?;
                    self.push(v)?;
                }
                other => {
                    let name = match other {
                        b'I' => "INT",
                        b'L' => "LONG",
                        b'F' => "FLOAT",
                        b'S' => "STRING",
                        b'V' => "UNICODE",
                        b'p' => "PUT",
                        b'g' => "GET",
                        b'P' => "PERSID",
                        b'i' => "INST",
                        b'o' => "OBJ",
                        b'\x82'..=b'\x84' => "EXT",
                        0x96..=0x98 => "out-of-band buffer",
                        _ => "unknown",
                    };
                    return bad(format!(
                        "unsupported pickle opcode 0x{other:02x} ({name}) at offset {at}: not a file torch.save writes (protocol 0/1 text pickles are not read)"
                    ));
                }
            }
        }
    }

    fn global(&mut self, module: &str, name: &str) -> Result<V, PickleError> {
        match allowed_global(module, name) {
            Some(g) => self.alloc(Obj::Global(g)),
            None => Err(PickleError::Forbidden { module: module.to_string(), name: name.to_string() }),
        }
    }

    fn to_value(&self, v: V) -> Result<PickleValue, PickleError> {
        // Shared references are expanded each time they occur: bound the result by the objects
        // actually in the file (legitimate files share little), so `(x, x)` nested 64 deep fails fast.
        let limit = MAX_NODES.min(self.arena.len().saturating_mul(8).saturating_add(10_000));
        let mut budget = limit;
        self.text_budget.set(self.data.len().saturating_add(1 << 20));
        self.convert(v, 0, &mut budget).map_err(|e| match e {
            PickleError::Malformed(m) if m == BUDGET => PickleError::Malformed(format!(
                "more than {limit} values after expanding shared references (from {} objects)",
                self.arena.len()
            )),
            e => e,
        })
    }

    /// Counts `n` string bytes copied by [`Unpickler::convert`].
    fn text(&self, n: usize) -> Result<(), PickleError> {
        let left = self.text_budget.get();
        if n > left {
            return bad(format!(
                "more than {} bytes of strings after expanding shared references (the pickle has {})",
                self.data.len().saturating_add(1 << 20),
                self.data.len()
            ));
        }
        self.text_budget.set(left - n);
        Ok(())
    }

    fn convert(&self, v: V, depth: usize, budget: &mut usize) -> Result<PickleValue, PickleError> {
        if depth > MAX_DEPTH {
            return bad(format!("containers nested deeper than {MAX_DEPTH} levels (or a reference cycle)"));
        }
        if *budget == 0 {
            return bad(BUDGET);
        }
        *budget -= 1;
        let list = |items: &[V], budget: &mut usize| -> Result<Vec<PickleValue>, PickleError> {
            items.iter().map(|&x| self.convert(x, depth + 1, budget)).collect()
        };
        Ok(match v {
            V::None => PickleValue::None,
            V::Bool(b) => PickleValue::Bool(b),
            V::Int(i) => PickleValue::Int(i as i128),
            V::Float(f) => PickleValue::Float(f),
            V::Obj(i) => match self.arena.get(i) {
                None => return bad("dangling reference"),
                Some(Obj::Str(s)) => {
                    self.text(s.len())?;
                    PickleValue::Str(s.clone())
                }
                Some(Obj::Bytes(b)) => {
                    self.text(b.len())?;
                    PickleValue::Bytes(b.clone())
                }
                Some(Obj::List(l)) => PickleValue::List(list(l, budget)?),
                Some(Obj::Tuple(t)) => PickleValue::Tuple(list(t, budget)?),
                Some(Obj::Dict(d)) => {
                    let mut out = Vec::with_capacity(d.len().min(*budget));
                    for &(k, val) in d {
                        out.push((self.convert(k, depth + 1, budget)?, self.convert(val, depth + 1, budget)?));
                    }
                    PickleValue::Dict(out)
                }
                Some(Obj::Global(g)) => return bad(format!("a bare class or function reference ({g:?}) as a value")),
                Some(Obj::BigInt(i)) => PickleValue::Int(*i),
                Some(Obj::Storage(_)) => return bad("a bare storage as a value (expected tensors)"),
                Some(Obj::Tensor(t)) => {
                    let Some(Obj::Storage(st)) = self.arena.get(t.storage) else {
                        return bad("tensor without a storage");
                    };
                    self.text(st.key.len() + st.location.len())?;
                    PickleValue::Tensor(TensorInfo {
                        dtype: st.dtype,
                        storage_key: st.key.clone(),
                        location: st.location.clone(),
                        storage_numel: st.numel,
                        offset: t.offset,
                        size: t.size.clone(),
                        stride: t.stride.clone(),
                        requires_grad: t.requires_grad,
                    })
                }
                Some(Obj::ParameterDict { state }) => {
                    PickleValue::Module { class: PARAMETER_DICT.to_string(), state: Box::new(self.convert(*state, depth + 1, budget)?) }
                }
            },
        })
    }
}

/// Reads one pickle from the start of `data`: the value and the number of bytes it took.
pub fn unpickle(data: &[u8]) -> Result<(PickleValue, usize), PickleError> {
    let mut u = Unpickler::new(data);
    let v = u.load()?;
    Ok((v, u.position()))
}

/// Emits pickle protocol 2 the way CPython's pickler does for the values `torch.save` writes:
/// every str, dict, tuple, global and reduce result is memoized with BINPUT/LONG_BINPUT.
pub struct PickleWriter {
    pub out: Vec<u8>,
    memo: u32,
}

impl Default for PickleWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl PickleWriter {
    /// Starts a protocol-2 pickle (`PROTO 2`).
    pub fn new() -> Self {
        Self { out: vec![0x80, 2], memo: 0 }
    }
    /// Memoizes the top of the stack; returns its memo index.
    pub fn put(&mut self) -> u32 {
        let i = self.memo;
        if i < 256 {
            self.out.extend([b'q', i as u8]);
        } else {
            self.out.push(b'r');
            self.out.extend(i.to_le_bytes());
        }
        self.memo += 1;
        i
    }
    pub fn get(&mut self, i: u32) {
        if i < 256 {
            self.out.extend([b'h', i as u8]);
        } else {
            self.out.push(b'j');
            self.out.extend(i.to_le_bytes());
        }
    }
    pub fn mark(&mut self) {
        self.out.push(b'(');
    }
    /// A str (BINUNICODE), memoized.
    pub fn str(&mut self, s: &str) -> u32 {
        self.out.push(b'X');
        self.out.extend((s.len() as u32).to_le_bytes());
        self.out.extend(s.as_bytes());
        self.put()
    }
    /// An int, as CPython picks BININT1 / BININT2 / BININT / LONG1.
    pub fn int(&mut self, v: i64) {
        if (0..=0xff).contains(&v) {
            self.out.extend([b'K', v as u8]);
        } else if (0..=0xffff).contains(&v) {
            self.out.push(b'M');
            self.out.extend((v as u16).to_le_bytes());
        } else if (i32::MIN as i64..=i32::MAX as i64).contains(&v) {
            self.out.push(b'J');
            self.out.extend((v as i32).to_le_bytes());
        } else {
            let bytes = v.to_le_bytes();
            // shortest two's complement encoding
            let mut n = 8;
            while n > 1 && ((bytes[n - 1] == 0 && bytes[n - 2] & 0x80 == 0) || (bytes[n - 1] == 0xff && bytes[n - 2] & 0x80 != 0)) {
                n -= 1;
            }
            self.out.extend([0x8a, n as u8]);
            self.out.extend(&bytes[..n]);
        }
    }
    pub fn bool(&mut self, b: bool) {
        self.out.push(if b { 0x88 } else { 0x89 });
    }
    pub fn none(&mut self) {
        self.out.push(b'N');
    }
    pub fn opt_str(&mut self, s: Option<&str>) {
        match s {
            Some(s) => {
                self.str(s);
            }
            None => self.none(),
        }
    }
    /// `GLOBAL module\nname\n`, memoized.
    pub fn global(&mut self, module: &str, name: &str) -> u32 {
        self.out.push(b'c');
        self.out.extend(module.as_bytes());
        self.out.push(b'\n');
        self.out.extend(name.as_bytes());
        self.out.push(b'\n');
        self.put()
    }
    pub fn empty_dict(&mut self) -> u32 {
        self.out.push(b'}');
        self.put()
    }
    pub fn empty_tuple(&mut self) {
        self.out.push(b')');
    }
    /// Closes a tuple of `n` items pushed since the last mark (n > 3) or TUPLE1..3, memoized.
    pub fn tuple(&mut self, n: usize) -> u32 {
        match n {
            1..=3 => self.out.push(0x84 + n as u8),
            _ => self.out.push(b't'),
        }
        self.put()
    }
    /// A tuple of ints (sizes, strides), as CPython writes it.
    pub fn int_tuple(&mut self, v: &[i64]) {
        if v.is_empty() {
            self.empty_tuple();
            return;
        }
        if v.len() > 3 {
            self.mark();
        }
        for &x in v {
            self.int(x);
        }
        self.tuple(v.len());
    }
    pub fn op(&mut self, op: u8) {
        self.out.push(op);
    }
    pub fn reduce(&mut self) -> u32 {
        self.out.push(b'R');
        self.put()
    }
    pub fn stop(mut self) -> Vec<u8> {
        self.out.push(b'.');
        self.out
    }
}
