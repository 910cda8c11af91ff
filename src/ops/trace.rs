//! A per-thread record of the arithmetic the ops perform, for checking the roofline's model of
//! a step and of the decode against what the engine really runs (model::roofline). Off unless
//! a [`Recorder`] is alive on the calling thread; then every GEMM, attention and convolution
//! entry adds one [`OpRecord`] with its multiply-add count (FLOPs = 2 x MACs), before it runs.
use std::cell::RefCell;

/// The classes the roofline distinguishes (the memory-bound ops are not recorded).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpClass {
    /// A linear layer (dense or W8A16): 2 M N K.
    Gemm,
    /// softmax(Q K^T) V: 4 B H Sq Sk d (two GEMMs).
    Attention,
    /// A 3D convolution (implicit GEMM): 2 x output elements x Cin x kt x kh x kw.
    Conv,
}

/// One recorded op call.
#[derive(Clone, Debug, PartialEq)]
pub struct OpRecord {
    pub class: OpClass,
    pub flops: f64,
}

thread_local! {
    static ACTIVE: RefCell<Option<Vec<OpRecord>>> = const { RefCell::new(None) };
}

/// Records the ops of this thread while alive (not nested: a second one is an error).
pub struct Recorder(());

impl Recorder {
    pub fn start() -> crate::error::Result<Recorder> {
        ACTIVE.with(|a| {
            let mut a = a.borrow_mut();
            if a.is_some() {
                return Err(crate::error::Error::Other(
                    "ops::trace: a recorder is already active on this thread".into(),
                ));
            }
            *a = Some(Vec::new());
            Ok(Recorder(()))
        })
    }

    /// The records so far (the recorder stays active).
    pub fn records(&self) -> Vec<OpRecord> {
        ACTIVE.with(|a| a.borrow().clone().unwrap_or_default())
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        ACTIVE.with(|a| *a.borrow_mut() = None);
    }
}

/// Called by the ops at entry.
pub(crate) fn record(class: OpClass, flops: f64) {
    ACTIVE.with(|a| {
        if let Some(v) = a.borrow_mut().as_mut() {
            v.push(OpRecord { class, flops });
        }
    });
}
