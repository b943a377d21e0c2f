//! `wasi_ephemeral_nn` as WasmEdge's guests import it: every argument an
//! i32 (address, length or handle), every result an errno. Declared here
//! rather than through the peer's SDK crate so that the bad-input matrix can
//! pass any address at all.

#[link(wasm_import_module = "wasi_ephemeral_nn")]
unsafe extern "C" {
    pub fn load(builders: i32, count: i32, encoding: i32, target: i32, graph: i32) -> i32;
    pub fn load_by_name(name: i32, len: i32, graph: i32) -> i32;
    pub fn load_by_name_with_config(name: i32, len: i32, config: i32, config_len: i32, graph: i32) -> i32;
    pub fn init_execution_context(graph: i32, context: i32) -> i32;
    pub fn set_input(context: i32, index: i32, tensor: i32) -> i32;
    pub fn get_output(context: i32, index: i32, buffer: i32, max: i32, written: i32) -> i32;
    pub fn get_output_single(context: i32, index: i32, buffer: i32, max: i32, written: i32) -> i32;
    pub fn compute(context: i32) -> i32;
    pub fn compute_single(context: i32) -> i32;
    pub fn fini_single(context: i32) -> i32;
    pub fn unload(graph: i32) -> i32;
    pub fn finalize_execution_context(context: i32) -> i32;
}

/// The end of sequence `compute_single` reports.
pub const END_OF_SEQUENCE: i32 = 100;

/// The ABI's 20-byte tensor: dimensions, type, data.
#[repr(C)]
pub struct Tensor {
    pub dims: i32,
    pub rank: i32,
    pub ty: i32,
    pub data: i32,
    pub len: i32,
}

/// Tensor type u8.
pub const U8: i32 = 3;

/// A guest address as the ABI takes it (wasm32: addresses fit an i32).
pub fn addr<T: ?Sized>(p: *const T) -> i32 {
    p as *const u8 as usize as i32
}

/// The address of a place the host writes to.
pub fn out<T: ?Sized>(p: *mut T) -> i32 {
    p as *mut u8 as usize as i32
}

/// A u8 tensor of `bytes`, its dimensions `[len]` as current guests pass
/// them; the caller keeps `bytes` and `dims` alive while the tensor is used.
pub fn text_tensor(bytes: &[u8], dims: &[u32; 1]) -> Tensor {
    Tensor { dims: addr(dims.as_ptr()), rank: 1, ty: U8, data: addr(bytes.as_ptr()), len: bytes.len() as i32 }
}
