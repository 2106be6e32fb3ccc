//! Run-time opt-in of backend-specific operations for generic code.
//!
//! The model is generic over `B: Backend`; operations that need to know the concrete backend (an
//! autodiff operation with its own backward, [`crate::sdpa`] and [`crate::loss`]) are registered by
//! the program that picks the backend, keyed by the backend's `TypeId`, and looked up from generic
//! code. A backend-extension trait would put a new bound on every generic function of the toolkit
//! and its users; this keeps `B: Backend` and falls back to the plain tensor-op path when nothing is
//! registered.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorPrimitive};

/// A `TypeId → V` table behind a lock (written at start-up, read on every call).
pub(crate) struct Registry<V>(OnceLock<RwLock<HashMap<TypeId, V>>>);

impl<V: Clone> Registry<V> {
    pub(crate) const fn new() -> Self {
        Self(OnceLock::new())
    }

    fn map(&self) -> &RwLock<HashMap<TypeId, V>> {
        self.0.get_or_init(Default::default)
    }

    pub(crate) fn insert(&self, key: TypeId, value: V) {
        self.map()
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, value);
    }

    pub(crate) fn get(&self, key: TypeId) -> Option<V> {
        self.map()
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned()
    }
}

/// A backend's native form of an operation (`sdpa::NativeAttention<I>`, `loss::NativeLoss<I>`),
/// type-erased so that it can sit beside a non-generic registry entry.
impl Registry<ErasedNative> {
    /// The native form `T` registered under `key`, if any.
    pub(crate) fn native<T: Any + Copy>(&self, key: TypeId) -> Option<T> {
        self.get(key).and_then(|n| n.get::<T>())
    }
}

#[derive(Clone, Default)]
pub(crate) struct ErasedNative(Option<Arc<dyn Any + Send + Sync>>);

impl ErasedNative {
    pub(crate) fn new<T: Any + Send + Sync>(native: T) -> Self {
        Self(Some(Arc::new(native)))
    }

    /// The native form registered for the type `T` asks for, if any.
    pub(crate) fn get<T: Any + Copy>(&self) -> Option<T> {
        self.0.as_ref().and_then(|n| n.downcast_ref::<T>()).copied()
    }
}

/// `Clone` and `Copy` for a backend's native form of an operation (a struct of function pointers
/// generic over the backend), by hand: a derive would ask `I: Clone + Copy` of the backend type.
macro_rules! copy_native {
    ($name:ident) => {
        impl<I: Backend> Clone for $name<I> {
            fn clone(&self) -> Self {
                *self
            }
        }
        impl<I: Backend> Copy for $name<I> {}
    };
}
pub(crate) use copy_native;

/// A backend's float primitive as a tensor (autodiff operations work on primitives).
pub(crate) fn float<B: Backend, const D: usize>(p: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(p))
}

/// A float tensor's primitive.
pub(crate) fn prim<B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<B> {
    t.into_primitive().tensor()
}
