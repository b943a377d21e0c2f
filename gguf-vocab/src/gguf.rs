//! The key-value header of a GGUF file: all a tensor-mode guest needs to
//! build its tokenizer and template, read without the weights.
//!
//! Base wasi-nn gives a guest no way to ask the host what vocabulary a graph
//! uses, so the guest reads the model file itself (the operator shares it
//! read-only). Only the header is read, streaming: the tensor data after it
//! (hundreds of MB) never enters guest memory.
//!
//! Format: <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

/// A metadata value; arrays of scalars are kept as their own variants so a
/// 262k-entry score table is one `Vec<f32>`, not 262k enums.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    Strings(Vec<String>),
    Ints(Vec<i64>),
    Floats(Vec<f32>),
    /// Arrays of other kinds (bools, nested arrays): skipped, never needed here.
    Other,
}

/// The metadata of one GGUF file.
#[derive(Debug, Default)]
pub struct Metadata {
    values: HashMap<String, Value>,
}

/// Value type codes of the format.
const U8: u32 = 0;
const I8: u32 = 1;
const U16: u32 = 2;
const I16: u32 = 3;
const U32: u32 = 4;
const I32: u32 = 5;
const F32: u32 = 6;
const BOOL: u32 = 7;
const STRING: u32 = 8;
const ARRAY: u32 = 9;
const U64: u32 = 10;
const I64: u32 = 11;
const F64: u32 = 12;

/// Bounds that keep a corrupt header from asking for absurd allocations.
const MAX_STRING: u64 = 1 << 24;
const MAX_ARRAY: u64 = 1 << 24;

impl Metadata {
    /// Read the header of the GGUF file at `path`.
    pub fn read(path: &Path) -> io::Result<Self> {
        let mut r = BufReader::with_capacity(1 << 20, File::open(path)?);
        let mut magic = [0; 4];
        r.read_exact(&mut magic)?;
        if &magic != b"GGUF" {
            return Err(invalid(format!("{} is not a GGUF file", path.display())));
        }
        let version = read_u32(&mut r)?;
        if !(2..=3).contains(&version) {
            return Err(invalid(format!("GGUF version {version} is not supported (2 and 3 are)")));
        }
        let _tensors = read_u64(&mut r)?;
        let count = read_u64(&mut r)?;
        let mut values = HashMap::new();
        for _ in 0..count {
            let key = read_string(&mut r)?;
            let ty = read_u32(&mut r)?;
            values.insert(key, read_value(&mut r, ty)?);
        }
        Ok(Self { values })
    }

    /// A value by key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.values.get(key)
    }

    /// A string value.
    pub fn str(&self, key: &str) -> Option<&str> {
        match self.get(key)? {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// An integer value (of any width).
    pub fn int(&self, key: &str) -> Option<i64> {
        match self.get(key)? {
            Value::Int(n) => Some(*n),
            _ => None,
        }
    }

    /// A boolean value.
    pub fn bool(&self, key: &str) -> Option<bool> {
        match self.get(key)? {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// An array of strings.
    pub fn strings(&self, key: &str) -> Option<&[String]> {
        match self.get(key)? {
            Value::Strings(s) => Some(s),
            _ => None,
        }
    }

    /// An array of integers.
    pub fn ints(&self, key: &str) -> Option<&[i64]> {
        match self.get(key)? {
            Value::Ints(n) => Some(n),
            _ => None,
        }
    }

    /// An array of floats.
    pub fn floats(&self, key: &str) -> Option<&[f32]> {
        match self.get(key)? {
            Value::Floats(f) => Some(f),
            _ => None,
        }
    }

    /// A float value (an integer one too).
    pub fn float(&self, key: &str) -> Option<f64> {
        match self.get(key)? {
            Value::Float(f) => Some(*f),
            Value::Int(n) => Some(*n as f64),
            _ => None,
        }
    }

    /// A scalar value written as text, as llama.cpp's `meta_val_str` does.
    pub fn text(&self, key: &str) -> Option<String> {
        match self.get(key)? {
            Value::Str(s) => Some(s.clone()),
            Value::Int(n) => Some(n.to_string()),
            Value::Float(f) => Some(f.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn read_value(r: &mut impl Read, ty: u32) -> io::Result<Value> {
    Ok(match ty {
        U8 | I8 | U16 | I16 | U32 | I32 | U64 | I64 => Value::Int(read_int(r, ty)?),
        F32 => Value::Float(f32::from_le_bytes(read_array(r)?) as f64),
        F64 => Value::Float(f64::from_le_bytes(read_array(r)?)),
        BOOL => Value::Bool(read_array::<1>(r)?[0] != 0),
        STRING => Value::Str(read_string(r)?),
        ARRAY => {
            let item = read_u32(r)?;
            let len = read_u64(r)?;
            if len > MAX_ARRAY {
                return Err(invalid(format!("an array of {len} items is beyond this reader's bound")));
            }
            match item {
                STRING => Value::Strings((0..len).map(|_| read_string(r)).collect::<io::Result<_>>()?),
                F32 => {
                    Value::Floats((0..len).map(|_| read_array(r).map(f32::from_le_bytes)).collect::<io::Result<_>>()?)
                }
                U8 | I8 | U16 | I16 | U32 | I32 | U64 | I64 => {
                    Value::Ints((0..len).map(|_| read_int(r, item)).collect::<io::Result<_>>()?)
                }
                _ => {
                    for _ in 0..len {
                        read_value(r, item)?;
                    }
                    Value::Other
                }
            }
        }
        other => return Err(invalid(format!("unknown GGUF value type {other}"))),
    })
}

fn read_int(r: &mut impl Read, ty: u32) -> io::Result<i64> {
    Ok(match ty {
        U8 => read_array::<1>(r)?[0] as i64,
        I8 => read_array::<1>(r)?[0] as i8 as i64,
        U16 => u16::from_le_bytes(read_array(r)?) as i64,
        I16 => i16::from_le_bytes(read_array(r)?) as i64,
        U32 => read_u32(r)? as i64,
        I32 => i32::from_le_bytes(read_array(r)?) as i64,
        U64 => read_u64(r)? as i64,
        I64 => i64::from_le_bytes(read_array(r)?),
        other => return Err(invalid(format!("GGUF value type {other} is not an integer"))),
    })
}

fn read_array<const N: usize>(r: &mut impl Read) -> io::Result<[u8; N]> {
    let mut b = [0; N];
    r.read_exact(&mut b)?;
    Ok(b)
}

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    read_array(r).map(u32::from_le_bytes)
}

fn read_u64(r: &mut impl Read) -> io::Result<u64> {
    read_array(r).map(u64::from_le_bytes)
}

fn read_string(r: &mut impl Read) -> io::Result<String> {
    let len = read_u64(r)?;
    if len > MAX_STRING {
        return Err(invalid(format!("a string of {len} bytes is beyond this reader's bound")));
    }
    let mut bytes = vec![0; len as usize];
    r.read_exact(&mut bytes)?;
    // GGUF strings are UTF-8; vocabularies may still hold stray bytes.
    Ok(String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
}
