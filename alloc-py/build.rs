//! Tells the crate which Python it is built for: `cfg(Py_GIL_DISABLED)` on free-threaded ones.
fn main() {
    pyo3_build_config::use_pyo3_cfgs();
}
