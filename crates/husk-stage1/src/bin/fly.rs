#![forbid(unsafe_code)] // only husk-sys may use `unsafe` (STYLE.md)
fn main() {
    std::process::exit(husk_stage1::fly::main(std::env::args_os().collect()));
}
