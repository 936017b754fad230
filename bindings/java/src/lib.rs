//! The native side of the Java API `dev.edgepatch` (JNI): thin functions over
//! [`edgepatch::app`] and the patch store. Every rule stays in the runtime; this crate turns
//! Java values into Rust ones and runtime errors into `dev.edgepatch.EdgepatchException`.
//!
//! **Handles.** Java objects hold a `long` that names a native object in a registry
//! ([`registry::Registry`]), not a pointer: a closed, forged or reused handle is refused with an
//! exception instead of touching freed memory, and the crate needs no `unsafe`.
//!
//! **Errors.** A runtime error throws `EdgepatchException` with the runtime's message and its
//! kind (the C ABI's status numbers); a panic is caught here and thrown as `INTERNAL`; an
//! exception thrown by a Java progress listener stops the fit and is what the caller sees.
//!
//! **Threads.** A runtime predicts on any number of threads at once; a trainer takes one call at
//! a time (`BUSY` otherwise) except `cancel`; a store's calls wait for each other.

use std::panic::{catch_unwind, AssertUnwindSafe};

use jni::objects::{JByteArray, JObject, JObjectArray, JString, JValue};
use jni::JNIEnv;

mod registry;
mod runtime;
mod store;
mod trainer;

/// `EdgepatchException` kinds (`EdgepatchException.Kind.code()`): the C ABI's status numbers.
pub(crate) mod kind {
    pub const ARGUMENT: i32 = 1;
    pub const MODEL: i32 = 2;
    pub const PATCH: i32 = 3;
    pub const IMAGE: i32 = 4;
    pub const IO: i32 = 5;
    pub const TRAIN: i32 = 6;
    pub const DEVICE: i32 = 7;
    pub const BUSY: i32 = 8;
    pub const CANCELLED: i32 = 9;
    pub const INTERNAL: i32 = 99;
}

/// A failed call: the exception's kind and message.
pub(crate) struct Failure {
    kind: i32,
    message: String,
}

impl Failure {
    pub(crate) fn new(kind: i32, message: impl Into<String>) -> Self {
        Failure { kind, message: message.into() }
    }

    pub(crate) fn argument(message: impl Into<String>) -> Self {
        Failure::new(kind::ARGUMENT, message)
    }
}

impl From<edgepatch::Error> for Failure {
    fn from(e: edgepatch::Error) -> Self {
        use edgepatch::Error as E;
        let k = match &e {
            E::Argument(_) => kind::ARGUMENT,
            E::OnnxParse(_) | E::UnsupportedOp { .. } | E::InvalidNode { .. } | E::InvalidModel(_) => kind::MODEL,
            E::Patch(_) => kind::PATCH,
            E::Image { .. } | E::Input(_) => kind::IMAGE,
            E::Io { .. } => kind::IO,
            E::Dataset { .. } | E::Train(_) => kind::TRAIN,
            E::Gpu(_) => kind::DEVICE,
            E::Cancelled(_) => kind::CANCELLED,
        };
        Failure::new(k, e.to_string())
    }
}

impl From<jni::errors::Error> for Failure {
    fn from(e: jni::errors::Error) -> Self {
        Failure::new(kind::INTERNAL, format!("JNI: {e}"))
    }
}

pub(crate) type Res<T> = Result<T, Failure>;

/// Runs `f`; on an error or a caught panic throws `EdgepatchException` (unless a Java exception
/// is already pending, which then propagates) and returns `default`.
pub(crate) fn run<'l, T>(env: &mut JNIEnv<'l>, default: T, f: impl FnOnce(&mut JNIEnv<'l>) -> Res<T>) -> T {
    let failure = match catch_unwind(AssertUnwindSafe(|| f(env))) {
        Ok(Ok(v)) => return v,
        Ok(Err(failure)) => failure,
        Err(_) => Failure::new(kind::INTERNAL, "internal error (a panic was caught at the JNI boundary)"),
    };
    if !env.exception_check().unwrap_or(true) {
        throw(env, failure);
    }
    default
}

fn throw(env: &mut JNIEnv<'_>, failure: Failure) {
    let thrown = (|| -> jni::errors::Result<()> {
        let message = env.new_string(&failure.message)?;
        let e = env.new_object(
            "dev/edgepatch/EdgepatchException",
            "(ILjava/lang/String;)V",
            &[JValue::Int(failure.kind), JValue::Object(&message)],
        )?;
        env.throw(jni::objects::JThrowable::from(e))
    })();
    if thrown.is_err() && !env.exception_check().unwrap_or(true) {
        let _ = env.throw_new("java/lang/RuntimeException", &failure.message);
    }
}

/// A Java string argument (null refused).
pub(crate) fn string(env: &mut JNIEnv<'_>, s: &JString<'_>, what: &str) -> Res<String> {
    if s.is_null() {
        return Err(Failure::argument(format!("{what} is null")));
    }
    Ok(env.get_string(s)?.into())
}

/// A Java string that may be null.
pub(crate) fn optional_string(env: &mut JNIEnv<'_>, s: &JString<'_>) -> Res<Option<String>> {
    if s.is_null() {
        return Ok(None);
    }
    Ok(Some(env.get_string(s)?.into()))
}

/// A Java byte array argument (null refused).
pub(crate) fn byte_array(env: &mut JNIEnv<'_>, a: &JByteArray<'_>, what: &str) -> Res<Vec<u8>> {
    if a.is_null() {
        return Err(Failure::argument(format!("{what} is null")));
    }
    Ok(env.convert_byte_array(a)?)
}

/// A `String[]` argument (null, or a null element, refused).
pub(crate) fn string_array(env: &mut JNIEnv<'_>, a: &JObjectArray<'_>, what: &str) -> Res<Vec<String>> {
    if a.is_null() {
        return Err(Failure::argument(format!("{what} is null")));
    }
    let n = env.get_array_length(a)?;
    (0..n)
        .map(|i| {
            let s = JString::from(env.get_object_array_element(a, i)?);
            let value = string(env, &s, what);
            env.delete_local_ref(s)?;
            value
        })
        .collect()
}

/// A new `String[]`.
pub(crate) fn new_string_array<'l>(env: &mut JNIEnv<'l>, items: &[String]) -> Res<JObjectArray<'l>> {
    let len = i32::try_from(items.len()).map_err(|_| Failure::argument("too many strings"))?;
    let class = env.find_class("java/lang/String")?;
    let array = env.new_object_array(len, &class, JObject::null())?;
    for (i, s) in items.iter().enumerate() {
        // One local reference at a time: a thousand labels stay within the JVM's local frame.
        let js = env.new_string(s)?;
        env.set_object_array_element(&array, i as i32, &js)?;
        env.delete_local_ref(js)?;
    }
    Ok(array)
}

/// An RGB8 image of `width × height` from a Java byte array of `width·height·3` bytes.
pub(crate) fn rgb8(
    env: &mut JNIEnv<'_>,
    rgb: &JByteArray<'_>,
    width: i32,
    height: i32,
) -> Res<edgepatch::data::image::Rgb8> {
    let data = byte_array(env, rgb, "rgb")?;
    let (Ok(w), Ok(h)) = (u32::try_from(width), u32::try_from(height)) else {
        return Err(Failure::argument(format!("bad image size {width}×{height}")));
    };
    Ok(edgepatch::data::image::Rgb8::new(w, h, data)?)
}
