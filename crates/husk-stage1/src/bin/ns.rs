#![forbid(unsafe_code)] // only husk-sys may use `unsafe` (STYLE.md)
fn main() {
    std::process::exit(husk_stage1::ns::main(std::env::args_os().collect()));
}
