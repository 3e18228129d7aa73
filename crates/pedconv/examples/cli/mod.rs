//! Argument helpers shared by the examples.

/// Prints `{program}: {message}` and exits with status 2.
pub fn fail(program: &str, message: &str) -> ! {
    eprintln!("{program}: {message}");
    std::process::exit(2)
}

/// Parses a flag's value, or exits naming the flag and the value.
pub fn parse<T: std::str::FromStr>(program: &str, flag: &str, value: &str) -> T {
    value
        .parse()
        .unwrap_or_else(|_| fail(program, &format!("{flag}: `{value}` is not a valid value")))
}
