//! Naming a test of the running test binary, for tests that run their own binary again
//! as a child process (`current_exe()` with `--exact <name>`).

/// The name libtest (and nextest) give the test function `function` defined in the module
/// `module_path` (what `module_path!()` says there): the module path without the crate
/// name, then the function, e.g. `ttlmap::child_process` for `module_path` `it::ttlmap`
/// in the test binary `it`. Use [`test_name!`](crate::test_name), which fills in the
/// module and checks that the function exists.
pub fn libtest_name(module_path: &str, function: &str) -> String {
    match module_path.split_once("::") {
        Some((_crate, module)) => format!("{module}::{function}"),
        None => function.to_owned(),
    }
}

/// The full libtest name of the test function `$test` of the calling module, to run it
/// alone in a child process: `current_exe()` with `[test_name!(f), "--exact"]`. A test
/// binary made of modules (`tests/it/main.rs` with `mod ttlmap;`) names `ttlmap.rs`'s
/// `f` `ttlmap::f`, so a bare `"f"` with `--exact` would run nothing; this macro follows
/// the module the call is in, and fails to compile if `$test` is not a function there.
///
/// ```
/// fn child_process() {}
///
/// // In a doctest the crate is the doctest itself, with no module above the function.
/// assert_eq!(fredkit_testkit::test_name!(child_process), "child_process");
/// ```
#[macro_export]
macro_rules! test_name {
    ($test:ident) => {{
        let _ = $test as fn();
        $crate::libtest_name(::core::module_path!(), ::core::stringify!($test))
    }};
}
