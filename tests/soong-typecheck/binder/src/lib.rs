//! Type-only stand-in for AOSP libbinder_rs (crate `binder`), transcribing the signatures of
//! yaap/frameworks_native libs/binder/rust @ 4cdda61bb6c6e97322d2b93369191609378d286f.
//! Bodies are `unimplemented!()`: this crate is only ever type-checked (`tests/soong-typecheck/run`
//! runs `cargo rustc` on ipc; nothing is linked or executed), so no body can be reached.
//! Deliberately no extra impls (e.g. Status is not Clone, SpIBinder has no Default) so misuse
//! fails to compile.
#![allow(missing_docs, dead_code, clippy::all, non_camel_case_types, clippy::undocumented_unsafe_blocks)]

use std::any::Any;
use std::ffi::CStr;
use std::fmt;
use std::ops::Deref;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd, RawFd};

// ---- sys (bindgen, --default-enum-style=rust_non_exhaustive) ----
#[derive(Debug, Copy, Clone, Hash, PartialEq, Eq)]
#[non_exhaustive]
#[repr(i32)]
pub enum StatusCode {
    OK = 0,
    UNKNOWN_ERROR = -2147483648,
    NO_MEMORY = -12,
    INVALID_OPERATION = -38,
    BAD_VALUE = -22,
    BAD_TYPE = -2147483647,
    NAME_NOT_FOUND = -2,
    PERMISSION_DENIED = -1,
    NO_INIT = -19,
    ALREADY_EXISTS = -17,
    DEAD_OBJECT = -32,
    FAILED_TRANSACTION = -2147483646,
    BAD_INDEX = -75,
    NOT_ENOUGH_DATA = -61,
    WOULD_BLOCK = -11,
    TIMED_OUT = -110,
    UNKNOWN_TRANSACTION = -74,
    FDS_NOT_ALLOWED = -2147483641,
    UNEXPECTED_NULL = -2147483640,
}
impl std::error::Error for StatusCode {}
impl fmt::Display for StatusCode {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "StatusCode::{:?}", self)
    }
}

#[derive(Debug, Copy, Clone, Hash, PartialEq, Eq)]
#[non_exhaustive]
#[repr(i32)]
pub enum ExceptionCode {
    NONE = 0,
    SECURITY = -1,
    BAD_PARCELABLE = -2,
    ILLEGAL_ARGUMENT = -3,
    NULL_POINTER = -4,
    ILLEGAL_STATE = -5,
    NETWORK_MAIN_THREAD = -6,
    UNSUPPORTED_OPERATION = -7,
    SERVICE_SPECIFIC = -8,
    PARCELABLE = -9,
    TRANSACTION_FAILED = -129,
}

// ---- error.rs ----
pub struct Status(std::ptr::NonNull<u8>);
unsafe impl Sync for Status {}
unsafe impl Send for Status {}
impl Status {
    pub fn ok() -> Self {
        unimplemented!()
    }
    pub fn new_service_specific_error(_err: i32, _message: Option<&CStr>) -> Status {
        unimplemented!()
    }
    pub fn new_service_specific_error_str<T: AsRef<str>>(_err: i32, _message: Option<T>) -> Status {
        unimplemented!()
    }
    pub fn new_exception(_exception: ExceptionCode, _message: Option<&CStr>) -> Status {
        unimplemented!()
    }
    pub fn new_exception_str<T: AsRef<str>>(
        _exception: ExceptionCode,
        _message: Option<T>,
    ) -> Status {
        unimplemented!()
    }
    pub fn is_ok(&self) -> bool {
        unimplemented!()
    }
    pub fn get_description(&self) -> String {
        unimplemented!()
    }
    pub fn exception_code(&self) -> ExceptionCode {
        unimplemented!()
    }
    pub fn transaction_error(&self) -> StatusCode {
        unimplemented!()
    }
    pub fn service_specific_error(&self) -> i32 {
        unimplemented!()
    }
}
impl std::error::Error for Status {}
impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.get_description())
    }
}
impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.get_description())
    }
}
impl PartialEq for Status {
    fn eq(&self, _other: &Status) -> bool {
        unimplemented!()
    }
}
impl Eq for Status {}
impl From<StatusCode> for Status {
    fn from(_status: StatusCode) -> Status {
        unimplemented!()
    }
}
impl From<i32> for Status {
    fn from(_status: i32) -> Status {
        unimplemented!()
    }
}
impl From<ExceptionCode> for Status {
    fn from(_code: ExceptionCode) -> Status {
        unimplemented!()
    }
}

/// lib.rs: `Result<T> = Result<T, Status>`; error.rs' own `Result<T>` (StatusCode) is crate-private.
pub type Result<T> = std::result::Result<T, Status>;
type SResult<T> = std::result::Result<T, StatusCode>;

// ---- proxy.rs ----
pub struct SpIBinder(std::ptr::NonNull<u8>);
unsafe impl Send for SpIBinder {}
unsafe impl Sync for SpIBinder {}
impl fmt::Debug for SpIBinder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad("SpIBinder")
    }
}
impl SpIBinder {
    pub fn is_remote(&self) -> bool {
        unimplemented!()
    }
    pub fn into_interface<I: FromIBinder + Interface + ?Sized>(self) -> SResult<Strong<I>> {
        FromIBinder::try_from(self)
    }
}
impl Ord for SpIBinder {
    fn cmp(&self, _other: &Self) -> std::cmp::Ordering {
        unimplemented!()
    }
}
impl PartialOrd for SpIBinder {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl PartialEq for SpIBinder {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}
impl Eq for SpIBinder {}
impl Clone for SpIBinder {
    fn clone(&self) -> Self {
        unimplemented!()
    }
}

pub struct DeathRecipient {
    cookie: *mut u8,
}
unsafe impl Send for DeathRecipient {}
unsafe impl Sync for DeathRecipient {}
impl DeathRecipient {
    pub fn new<F>(_callback: F) -> DeathRecipient
    where
        F: Fn() + Send + Sync + 'static,
    {
        unimplemented!()
    }
}

// ---- binder.rs ----
pub trait Interface: Send + Sync + Any {
    fn as_binder(&self) -> SpIBinder {
        panic!("This object was not a Binder object and cannot be converted into an SpIBinder.")
    }
    fn dump(&self, _writer: &mut dyn std::io::Write, _args: &[&CStr]) -> SResult<()> {
        Ok(())
    }
}

pub trait IBinder {
    fn link_to_death(&mut self, recipient: &mut DeathRecipient) -> SResult<()>;
    fn unlink_to_death(&mut self, recipient: &mut DeathRecipient) -> SResult<()>;
    fn ping_binder(&mut self) -> SResult<()>;
}
// AOSP: impl<T: AsNative<sys::AIBinder>> IBinder for T (SpIBinder and every Proxy).
impl IBinder for SpIBinder {
    fn link_to_death(&mut self, _recipient: &mut DeathRecipient) -> SResult<()> {
        unimplemented!()
    }
    fn unlink_to_death(&mut self, _recipient: &mut DeathRecipient) -> SResult<()> {
        unimplemented!()
    }
    fn ping_binder(&mut self) -> SResult<()> {
        unimplemented!()
    }
}

pub trait FromIBinder: Interface {
    fn try_from(ibinder: SpIBinder) -> SResult<Strong<Self>>;
}

pub struct Strong<I: FromIBinder + ?Sized>(Box<I>);
impl<I: FromIBinder + ?Sized> Strong<I> {
    pub fn new(binder: Box<I>) -> Self {
        Self(binder)
    }
}
impl<I: FromIBinder + ?Sized> Clone for Strong<I> {
    fn clone(&self) -> Self {
        FromIBinder::try_from(self.0.as_binder()).unwrap()
    }
}
impl<I: FromIBinder + ?Sized> AsRef<I> for Strong<I> {
    fn as_ref(&self) -> &I {
        &self.0
    }
}
impl<I: FromIBinder + ?Sized> Deref for Strong<I> {
    type Target = I;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}
impl<I: FromIBinder + fmt::Debug + ?Sized> fmt::Debug for Strong<I> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}
impl<I: FromIBinder + ?Sized> PartialEq for Strong<I> {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_binder().eq(&other.0.as_binder())
    }
}
impl<I: FromIBinder + ?Sized> Eq for Strong<I> {}

#[derive(Clone, Debug, Default, Eq, PartialEq)]
pub struct BinderFeatures {
    pub set_requesting_sid: bool,
    pub set_inherit_rt: bool,
    #[doc(hidden)]
    pub _non_exhaustive: (),
}

// ---- state.rs ----
pub struct ProcessState;
impl ProcessState {
    pub fn start_thread_pool() {
        unimplemented!()
    }
    pub fn set_thread_pool_max_thread_count(_num_threads: u32) {
        unimplemented!()
    }
    pub fn join_thread_pool() {
        unimplemented!()
    }
}
pub struct ThreadState;
impl ThreadState {
    pub fn get_calling_uid() -> libc::uid_t {
        unimplemented!()
    }
    pub fn get_calling_pid() -> libc::pid_t {
        unimplemented!()
    }
}

// ---- service.rs ----
pub fn add_service(_identifier: &str, _binder: SpIBinder) -> SResult<()> {
    unimplemented!()
}
pub fn check_service(_name: &str) -> Option<SpIBinder> {
    unimplemented!()
}
pub fn wait_for_service(_name: &str) -> Option<SpIBinder> {
    unimplemented!()
}
pub fn check_interface<T: FromIBinder + ?Sized>(_name: &str) -> SResult<Strong<T>> {
    unimplemented!()
}
pub fn wait_for_interface<T: FromIBinder + ?Sized>(_name: &str) -> SResult<Strong<T>> {
    unimplemented!()
}
#[deprecated = "this polls 5s, use wait_for_interface or check_interface"]
pub fn get_interface<T: FromIBinder + ?Sized>(_name: &str) -> SResult<Strong<T>> {
    unimplemented!()
}

// ---- parcel/file_descriptor.rs (std) ----
#[derive(Debug)]
pub struct ParcelFileDescriptor(OwnedFd);
impl ParcelFileDescriptor {
    pub fn new<F: Into<OwnedFd>>(fd: F) -> Self {
        Self(fd.into())
    }
    pub fn try_clone(&self) -> std::result::Result<Self, std::io::Error> {
        Ok(Self(self.0.try_clone()?))
    }
}
impl AsRef<OwnedFd> for ParcelFileDescriptor {
    fn as_ref(&self) -> &OwnedFd {
        &self.0
    }
}
impl From<ParcelFileDescriptor> for OwnedFd {
    fn from(fd: ParcelFileDescriptor) -> OwnedFd {
        fd.0
    }
}
impl AsRawFd for ParcelFileDescriptor {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}
impl IntoRawFd for ParcelFileDescriptor {
    fn into_raw_fd(self) -> RawFd {
        self.0.into_raw_fd()
    }
}
impl AsFd for ParcelFileDescriptor {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}
impl PartialEq for ParcelFileDescriptor {
    fn eq(&self, other: &Self) -> bool {
        self.as_raw_fd() == other.as_raw_fd()
    }
}
impl Eq for ParcelFileDescriptor {}
